#!/usr/bin/env python
"""Time of post-hoc EMA for a run's network: reconstruct one σ_rel from the snapshots (`phema.load_posthoc`) and draw a
40-sample grid (the run's sampler: Heun 18 steps with CFG 2.0 for the shipped configs). Target (issue 14): ≤ 10 s on the
H200 for the Fashion-MNIST U-Net.

The snapshots are written by `PostHocEMA` itself for the config's network (the two profiles σ_rel 0.05 and 0.10, one
snapshot every `--every` steps of a stand-in trajectory: the weights moved by small random steps, `--snapshots` files
in all), so the reconstruction reads and sums files of the real size; no training is needed.

    python bench/posthoc_ema_time.py --config fashion_mnist [--device cuda] [--snapshots 12] [--append BENCHMARKS.md]
    python bench/posthoc_ema_time.py --config digits --snapshots 8          # the CPU smoke version
Prints one markdown row; `--append FILE` adds it to FILE under "Post-hoc EMA time".
"""
import argparse, datetime, shlex, sys, tempfile, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench this checkout's diffexplore
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, append_rows  # noqa: E402

HEADING = "## Post-hoc EMA time"
HEADER = ("| date | machine | command | network | device | parameters | snapshots (files × profiles) | reconstruct s | 40-sample grid s | total s | target s |\n"
          "|---|---|---|---|---|---:|---|---:|---:|---:|---:|")
INTRO = ("`bench/posthoc_ema_time.py`: `phema.load_posthoc` (least squares over the snapshots' profiles, then the weighted\n"
         "sum of every snapshot file, read with safetensors) for one σ_rel, then `engine.generate(40, ...)` with the config's\n"
         "sampler, on one device; the median of `--reps` repetitions after one warm-up. Target: ≤ 10 s on the H200 for the\n"
         "Fashion-MNIST U-Net.\n")


def engine_for(config: str, device: str):
    "The config's engine with σ_data set (no data needed), in eval mode on `device`."
    from diffexplore.cli import load_config, build_engine, resolve_sigma_data, sigma_data_auto_keys
    cfg = load_config(config, [])
    cfg = resolve_sigma_data(cfg, 0.7, sigma_data_auto_keys(cfg))
    engine = build_engine(cfg).to(device).eval()
    net = cfg.model.params.network_config.params.diffusion_model.params   # the data's shape, as the network takes it
    engine.sample_shape = (int(net.in_channels), int(net.sample_size), int(net.sample_size))
    return engine


def write_snapshots(engine, out: Path, files: int, every: int) -> int:
    "Average a stand-in trajectory (the weights plus small random steps) with `PostHocEMA`, saving `files` snapshots."
    from diffexplore.phema import PostHocEMA
    cb, g = PostHocEMA(sigma_rels=(0.05, 0.10), every_n_steps=every, dirpath=out), torch.Generator(device="cpu").manual_seed(0)
    params = [p for p in engine.model.parameters() if p.is_floating_point()]
    with torch.no_grad():
        for step in range(1, files * every + 1):
            for p in params: p.add_(1e-4 * torch.randn(p.shape, generator=g).to(p.device))
            cb.update(engine.model, step)
            if step % every == 0: cb.save_snapshot(engine.model, out)
    return sum(p.numel() for p in params)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="fashion_mnist"); ap.add_argument("--device", default="cpu")
    ap.add_argument("--snapshots", type=int, default=12); ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--sigma-rel", type=float, default=0.07); ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--append", metavar="FILE")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available(): sys.exit(f"--device {args.device}: no CUDA device on this machine")
    from diffexplore.phema import load_posthoc
    from diffexplore.engine import conditioner_classes
    engine = engine_for(args.config, args.device)
    k = conditioner_classes(engine.conditioner)
    labels = torch.arange(40) % k if k else None
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        n_params = write_snapshots(engine, Path(tmp), args.snapshots, args.every)
        times = []
        for rep in range(args.reps + 1):   # the first is a warm-up (file cache, kernels, cuDNN)
            sync(); t0 = time.perf_counter(); load_posthoc(engine, tmp, args.sigma_rel); sync(); t1 = time.perf_counter()
            engine.generate(40, class_labels=labels, seed=rep); sync(); t2 = time.perf_counter()
            if rep: times.append((t1 - t0, t2 - t1))
    rec, grid = sorted(t[0] for t in times)[len(times) // 2], sorted(t[1] for t in times)[len(times) // 2]
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    target = 10 if args.config == "fashion_mnist" and args.device.startswith("cuda") else "—"
    line = (f"| {datetime.datetime.now():%Y-%m-%d %H:%M} | {machine()} | `python {' '.join(shlex.quote(a) for a in sys.argv)}` | {args.config} | {dev} | "
            f"{n_params:,} | {args.snapshots} × 2 | {rec:.2f} | {grid:.2f} | {rec + grid:.2f} | {target} |")
    print(HEADER); print(line)
    if args.append: append_rows(args.append, HEADING, INTRO, HEADER, [line])


if __name__ == "__main__":
    main()
