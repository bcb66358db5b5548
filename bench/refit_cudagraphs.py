#!/usr/bin/env python
"""Reproduce (or rule out) the failure seen in the first live-view GPU run (BENCHMARKS.md, "The live view during GPU training"): a second `fit` of the same
`DiffusionEngine` with the compiled step replayed as CUDA graphs stopped with "CUDA error: operation failed due to
a previous error during capture". There the first fit ran in a background thread (`fit_in_background`) and the
second on the main thread, after Lightning's teardown had moved the engine to the CPU and back.

Each variant runs in its own process (fresh compiler and CUDA-graph state) with a tiny U-Net and two fits of
`--steps` steps each, and reports ok or the error:
  main-main        both fits on the main thread
  worker-worker    both fits on one long-lived worker thread
  bg-bg            two `fit_in_background` calls (one thread since the fix; two threads before)
  bg-main          `fit_in_background`, then the main thread (the failing case)
  bg-main-nograph  the same with cuda_graphs=False
  bg-main-stay     bg-main, with the engine kept on the GPU between the fits (no CPU round trip)

GPU:   bash bench/gpu.sh refit $OUT [--variants bg-main,bg-bg,main-main,worker-worker] [--timeout 150]
       (inside gpu.sh's environment: python bench/refit_cudagraphs.py --out DIR [--variants bg-main,main-main] [--steps 30])
CPU (no CUDA graphs there, so a check that the script runs): python bench/refit_cudagraphs.py --out /tmp/r --variants bg-main --steps 3
Writes DIR/refit_cudagraphs.json (after each variant) and prints one line per variant.
"""
import argparse, json, subprocess, sys, time, traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("bg-main", "bg-main-stay", "worker-worker", "main-main", "bg-main-nograph", "bg-bg")


def child(variant: str, steps: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch, lightning.pytorch as pl
    from diffexplore.networks import build_unet, OpenAIWrapper
    from diffexplore.engine import DiffusionEngine, fast_gpu_settings
    from diffexplore.denoiser import Denoiser
    from diffexplore.scalings import EDMScaling
    from diffexplore.weightings import EDMWeighting
    from diffexplore.sigma_sampling import EDMSampling
    from diffexplore.loss import StandardDiffusionLoss
    from diffexplore.live import fit_in_background
    pl.seed_everything(0, verbose=False)
    engine = DiffusionEngine(OpenAIWrapper(build_unet("tiny", in_channels=1, sample_size=16)), Denoiser(EDMScaling(0.5)),
                             StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)), lr=1e-3,
                             cuda_graphs=False if variant.endswith("nograph") else None)
    data = [{"jpg": x} for x in torch.randn(256, 1, 16, 16).clamp(-1, 1)]
    loader = lambda: torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, drop_last=True)
    if variant.endswith("stay"):   # keep the module on the GPU after fit (skip Lightning's move to the CPU)
        from lightning.pytorch.strategies import SingleDeviceStrategy
        SingleDeviceStrategy.teardown = lambda self: None
    def trainer():
        return pl.Trainer(**fast_gpu_settings(dict(max_steps=steps, devices=1, logger=False, enable_checkpointing=False,
                                                   enable_progress_bar=False, enable_model_summary=False)))
    def fit():
        t = trainer(); t.fit(engine, train_dataloaders=loader()); return t.global_step
    def in_background():
        h = fit_in_background(trainer(), engine, train_dataloaders=loader()); h.join()
        if h.exception is not None: raise h.exception
        return h.trainer.global_step
    worker = ThreadPoolExecutor(max_workers=1)
    first, second = {"main-main": (fit, fit), "worker-worker": (lambda: worker.submit(fit).result(),) * 2,
                     "bg-bg": (in_background, in_background)}.get(variant, (in_background, fit))
    out = {"variant": variant, "cuda": torch.cuda.is_available()}
    for i, f in enumerate((first, second)):
        t = time.perf_counter()
        try: out[f"fit{i + 1}_steps"] = f(); out[f"fit{i + 1}_s"] = round(time.perf_counter() - t, 1)
        except Exception as e:
            out["error"] = f"fit {i + 1}: {type(e).__name__}: {e}"[:400]; out["traceback"] = traceback.format_exc()[-2000:]; break
    out["ok"] = "error" not in out
    out["graphs_last_fit"] = getattr(engine.compiled_step, "graphs", False)   # False: the engine compiled that fit without CUDA graphs
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True); ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=30); ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1: ap.error(f"--steps must be >= 1; got --steps {args.steps}")
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.steps)), flush=True); return
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad: ap.error(f"--variants: unknown {', '.join(map(repr, bad))}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    results = []
    for v in args.variants.split(","):
        try:
            p = subprocess.run([sys.executable, __file__, "--out", args.out, "--child", v, "--steps", str(args.steps)],
                               capture_output=True, text=True, timeout=args.timeout)
            line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
            res = json.loads(line[7:]) if line else {"variant": v, "ok": False, "error": f"exit {p.returncode}: {p.stderr[-600:]}"}
        except subprocess.TimeoutExpired: res = {"variant": v, "ok": False, "error": f"timed out after {args.timeout} s"}
        results.append(res); print(json.dumps({k: res.get(k) for k in ("variant", "ok", "error", "fit1_s", "fit2_s", "graphs_last_fit")}), flush=True)
        (out / "refit_cudagraphs.json").write_text(json.dumps(results, indent=1))   # after each variant: a timeout keeps the rest


if __name__ == "__main__":
    main()
