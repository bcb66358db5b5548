#!/usr/bin/env python
"""Gradient accumulation on the engine's default fast path: does `pl.Trainer(accumulate_grad_batches=2)` train?

A small U-Net (preset "tiny", 32×32×3, batch 64 from a DataLoader of random images) in `DiffusionEngine` built as in
`bench/train_throughput.py`, with its GPU switches left at their defaults (on with CUDA: no host syncs, fused AdamW,
compiled step, CUDA graphs) and the Trainer from `fast_gpu_settings` (bf16-mixed, cuDNN autotuning, TF32), fitted
for `--steps` optimizer steps with `accumulate_grad_batches=--accumulate`. On the H200 this once stopped with
"accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run" (two forward replays before
one backward). Reported: whether `fit` raised (and the error), `trainer.global_step`, `engine.model_ema.num_updates`
(one EMA update per optimizer step: it must equal global_step), whether the last logged loss is finite, whether the
compiled step replayed CUDA graphs, the wall time of the fit.

GPU:   bash bench/gpu.sh accumulation $OUT     (also the second half of `bash bench/gpu.sh sampling $OUT`)
       (inside gpu.sh's environment: python bench/grad_accumulation.py --out DIR [--steps 40] [--accumulate 2]
        [--precision bf16-true]: the same check for Lightning's true-bf16 mode)
Smoke: python bench/grad_accumulation.py --smoke --out /tmp/acc     (CPU, 8×8 images, batch 8, 4 steps)
Writes DIR/grad_accumulation.json and prints it; exits 1 when a check failed (it raised, step or EMA count off,
loss not finite).
"""
import argparse, json, math, sys, time, traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
from train_throughput import make_engine, engine_state  # noqa: E402  (also puts this checkout's diffexplore first on sys.path)
from diffexplore.engine import fast_gpu_settings  # noqa: E402
from diffexplore.networks import build_unet  # noqa: E402


def loader(n, size, batch):
    "A shuffled DataLoader of `n` random images [3, size, size] in [-1, 1], as `{'jpg': x}` batches."
    data = [{"jpg": x} for x in torch.randn(n, 3, size, size).clamp(-1, 1)]
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)


def run(steps: int, accumulate: int, size: int, batch: int, cuda: bool, precision: str | None = None) -> dict:
    "Fit on the GPU (`cuda`) or the CPU and report (see the module docstring); never raises for a failed fit."
    pl.seed_everything(0, verbose=False)
    engine = make_engine(build_unet("tiny", in_channels=3, sample_size=size))   # switches left None: the defaults
    seen = {}
    class State(pl.Callback):   # read while training: after fit Lightning moves the module to the CPU
        def on_train_batch_end(self, trainer, m, *a): seen.update(engine_state(m))
    trainer = pl.Trainer(**fast_gpu_settings(dict(accelerator="gpu" if cuda else "cpu", devices=1, max_steps=steps, accumulate_grad_batches=accumulate,
                                                  logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                                  callbacks=[State()], **({"precision": precision} if precision else {})), cuda=cuda))
    out = dict(steps=steps, accumulate_grad_batches=accumulate, batch=batch, image_size=size, cuda=cuda,
               precision=str(trainer.precision))
    t = time.perf_counter()
    try: trainer.fit(engine, train_dataloaders=loader(steps * accumulate * batch, size, batch))
    except Exception as e:
        out.update(error=f"{type(e).__name__}: {e}"[:600], traceback=traceback.format_exc()[-3000:])
    loss = trainer.callback_metrics.get("train/loss")
    out.update(raised="error" in out, fit_s=round(time.perf_counter() - t, 1), global_step=trainer.global_step,
               ema_updates=int(engine.model_ema.num_updates), loss=None if loss is None else float(loss), engine=seen or engine_state(engine))
    out["checks"] = dict(no_error=not out["raised"], all_steps=out["global_step"] == steps,
                         one_ema_update_per_step=out["ema_updates"] == out["global_step"],
                         loss_finite=out["loss"] is not None and math.isfinite(out["loss"]))
    out["ok"] = all(out["checks"].values())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True); ap.add_argument("--steps", type=int, default=40, help="optimizer steps")
    ap.add_argument("--accumulate", type=int, default=2, help="accumulate_grad_batches")
    ap.add_argument("--precision", default=None, help="Lightning precision (default: fast_gpu_settings' bf16-mixed on the GPU), e.g. bf16-true")
    ap.add_argument("--smoke", action="store_true", help="CPU, 8×8 images, batch 8, 4 steps (overrides --steps)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.accumulate < 1: ap.error(f"--steps and --accumulate must be >= 1; got {args.steps}, {args.accumulate}")
    cuda = torch.cuda.is_available() and not args.smoke
    res = run(4 if args.smoke else args.steps, args.accumulate, 8 if args.smoke else 32, 8 if args.smoke else 64, cuda, args.precision)
    res.update(date=time.strftime("%Y-%m-%d"), device=torch.cuda.get_device_name() if cuda else "cpu",
               torch=torch.__version__, command="python bench/grad_accumulation.py " + " ".join(sys.argv[1:] if argv is None else argv))
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / "grad_accumulation.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "traceback"}, indent=1))
    if "traceback" in res: print(res["traceback"], file=sys.stderr)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
