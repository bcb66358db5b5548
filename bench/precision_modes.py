#!/usr/bin/env python
"""Lightning's precision modes on a shipped config (issue 15, item 2): for each of `32-true`, `bf16-mixed`, `16-mixed`,
`bf16-true` and `16-true`, a few training steps of the config's engine with the CLI's trainer settings (the config's
`gradient_clip_val: 1.0`, the fast GPU settings `diffexplore train` uses: fused AdamW, checks on the device, the
compiled step), then a few samples. Each mode either trains (every loss finite, the weights and the float32 EMA moved,
samples finite) or is refused before the first step with one line saying what to use instead; anything else is a
failure, and the script exits 1.

    python bench/precision_modes.py --device cuda [--config digits] [--steps 30] [--append BENCHMARKS.md]
    python bench/precision_modes.py --smoke          # CPU, tiny network, 3 steps: Lightning runs 16-mixed as bf16-mixed there
Prints a markdown table, one row per mode; `--append FILE` adds the rows to FILE under "Precision modes".
"""
import argparse, datetime, logging, shlex, sys, time, warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench this checkout's diffexplore
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, append_rows  # noqa: E402

MODES = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")
HEADING = "## Precision modes"
HEADER = ("| date | machine | command | config | device | precision asked | precision run | outcome | steps | first loss | last loss | "
          "weights moved | EMA moved (dtype) | samples finite | s |\n"
          "|---|---|---|---|---|---|---|---|---:|---:|---:|---:|---|---|---:|")
INTRO = ("`bench/precision_modes.py`: a few steps of a shipped config under each Lightning precision, with the CLI's trainer\n"
         "settings (`gradient_clip_val: 1.0`, fused AdamW, device-side checks, compiled step on a GPU). *Weights moved*: the share\n"
         "of the network's parameter elements that differ from their start after the run (updates below half a unit in the\n"
         "last place of the weights' dtype are lost); *EMA moved*: the same for the EMA shadows.\n")
TINY = ["model.params.network_config.params.diffusion_model.params.preset=tiny",
        "model.params.network_config.params.diffusion_model.params.class_embed_dim=64",
        "model.params.conditioner_config.params.emb_models.0.params.embed_dim=64"]


def _engine_and_data(config: str, overrides: list, sample_steps: int):
    "The config's data module and engine (σ_data measured as `diffexplore train` does), with a short sampler."
    from diffexplore.cli import load_config, build_data, build_engine, resolve_sigma_data, sigma_data_auto_keys, measure_sigma_data
    import lightning.pytorch as pl
    cfg = load_config(config, [*overrides, f"model.params.sampler_config.params.num_steps={sample_steps}"])
    pl.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    dm = build_data(cfg)
    keys = sigma_data_auto_keys(cfg)
    if keys: cfg = resolve_sigma_data(cfg, measure_sigma_data(cfg, dm)["value"], keys)
    return cfg, dm, build_engine(cfg, dm)


def _moved(after, before) -> float:
    "Share of elements that changed."
    changed = sum(int((a.detach().float().cpu() != b).sum()) for a, b in zip(after, before))
    return changed / max(1, sum(b.numel() for b in before))


def run_mode(mode: str, args) -> dict:
    "Train `args.steps` steps under `mode`; the outcome and what it measured."
    import lightning.pytorch as pl
    from diffexplore.cli import trainer_kwargs
    from diffexplore.engine import fast_gpu_settings, conditioner_classes
    cfg, dm, engine = _engine_and_data(args.config, args.overrides, args.sample_steps)
    w0 = [p.detach().float().cpu().clone() for p in engine.model.parameters()]
    s0 = [s.detach().cpu().clone() for s in engine.model_ema.shadows()] if engine.use_ema else []
    losses = []
    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, m, outputs, batch, i): losses.append(outputs["loss"].detach().float())
    kw = dict(trainer_kwargs(cfg), max_steps=args.steps, precision=mode, accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
              logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()])
    kw.pop("max_epochs", None)
    row = {"asked": mode, "run": None, "outcome": None, "steps": 0, "first": None, "last": None, "weights": None, "ema": None,
           "samples": None, "seconds": None}
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = pl.Trainer(**fast_gpu_settings(kw, engine, cuda=args.device == "cuda"))
            row["run"] = str(trainer.precision)
            trainer.fit(engine, datamodule=dm)
        row["outcome"] = "trained"
        row["notes"] = [str(w.message).splitlines()[0] for w in caught if "precision" in str(w.message)]
    except Exception as e:
        step = locals().get("trainer").global_step if "trainer" in locals() else 0
        first = (str(e).splitlines() or [""])[0]
        row["outcome"] = f"refused: {first}" if step == 0 and "\n" not in str(e).strip() and "use " in first else f"FAILED at step {step}: {type(e).__name__}: {first}"
        row["steps"] = step
        row["seconds"] = round(time.perf_counter() - t0, 1)
        return row
    row["steps"], row["seconds"] = trainer.global_step, round(time.perf_counter() - t0, 1)
    ls = torch.stack(losses).cpu() if losses else torch.empty(0)
    row["first"], row["last"] = (float(ls[0]), float(ls[-5:].mean())) if len(ls) else (None, None)
    row["finite"] = bool(torch.isfinite(ls).all()) and len(ls) == trainer.global_step
    row["weights"] = _moved(list(engine.model.parameters()), w0)
    if engine.use_ema:
        row["ema"] = _moved(engine.model_ema.shadows(), s0)
        row["ema_dtype"] = ",".join(sorted({str(s.dtype).removeprefix("torch.") for s in engine.model_ema.shadows()}))
    k = conditioner_classes(engine.conditioner)
    with torch.no_grad():
        engine.to(trainer.strategy.root_device)
        x = engine.generate(8, class_labels=torch.arange(8) % k if k else None, seed=0)
    row["samples"] = bool(torch.isfinite(x).all())
    if not (row["finite"] and row["weights"] > 0 and (row["ema"] or 0) > 0 and row["samples"]): row["outcome"] = "FAILED: " + ", ".join(
        w for w, ok in (("a non-finite loss", row["finite"]), ("weights did not move", row["weights"] > 0),
                        ("EMA did not move", (row["ema"] or 0) > 0), ("non-finite samples", row["samples"])) if not ok)
    return row


def _fmt(v, f="{:.4g}"): return "—" if v is None else f.format(v)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="digits"); ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=30); ap.add_argument("--sample-steps", type=int, default=4)
    ap.add_argument("--modes", default=",".join(MODES)); ap.add_argument("--data-root", help="data.params.root (fashion_mnist)")
    ap.add_argument("--smoke", action="store_true", help="CPU, the tiny network, 3 steps")
    ap.add_argument("--append", metavar="FILE")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available(): sys.exit("--device cuda: no CUDA device on this machine")
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad: sys.exit(f"--modes must name modes from {MODES}; got {bad}")
    args.overrides = [*(TINY if args.smoke else []), *([f"data.params.root={args.data_root}"] if args.data_root else []),
                      "lightning.sigma_data_batches=2", "data.params.num_workers=0"]
    if args.smoke: args.device, args.steps = "cpu", 3
    from diffexplore.cli import quiet_libraries
    quiet_libraries()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)   # "GPU available …" once per mode
    dev = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    now, cmd = f"{datetime.datetime.now():%Y-%m-%d %H:%M}", f"`python {' '.join(shlex.quote(a) for a in sys.argv)}`"
    lines, failed = [], 0
    for mode in modes:
        r = run_mode(mode, args)
        failed += r["outcome"].startswith("FAILED")
        ema = "—" if r["ema"] is None else f"{r['ema']:.3f} ({r.get('ema_dtype')})"
        lines.append(f"| {now} | {machine()} | {cmd} | {args.config} | {dev} | {mode} | {r['run'] or '—'} | {r['outcome'].replace('|', '/')} | "
                     f"{r['steps']} | {_fmt(r['first'])} | {_fmt(r['last'])} | {_fmt(r['weights'], '{:.3f}')} | {ema} | "
                     f"{'—' if r['samples'] is None else r['samples']} | {r['seconds']} |")
        print(lines[-1], flush=True)
    print(HEADER); print("\n".join(lines))
    if args.append: append_rows(args.append, HEADING, INTRO, HEADER, lines)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
