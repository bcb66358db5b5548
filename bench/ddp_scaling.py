#!/usr/bin/env python
"""Data-parallel scaling: row (b) of `bench/train_throughput.py` (DiffusionEngine under Lightning's Trainer, bf16-mixed) on
1 and on N GPUs with Lightning's DDP, the same per-GPU batch (weak scaling). Scaling efficiency = N-GPU img/s over
1-GPU img/s; target ≥ 1.8× on 2 GPUs.

    bash bench/gpu.sh ddp $OUT             (2 GPUs: 1 and 2 GPUs, eager, then compiled step + CUDA graphs)
    bash bench/gpu.sh ddp $OUT --devices 2 --static-graph --bucket-view      (one run with these arguments)
    python bench/ddp_scaling.py --devices 2 --out DIR [--model cifar10] [--engine-kw '{"compile_step": true}']
        [--static-graph] [--bucket-view] [--comm-hook bf16] [--bucket-mb 100] [--profile-steps 3]
    python bench/ddp_scaling.py --smoke --devices 2 --out /tmp/d      (CPU, gloo, tiny U-Net: checks the script runs)

DDP options (Lightning's `DDPStrategy`, passed to torch's DistributedDataParallel): `--static-graph`,
`--bucket-view` (gradient_as_bucket_view), `--comm-hook bf16|fp16` (all-reduce compressed gradients),
`--bucket-mb` (bucket_cap_mb). `--profile-steps K` profiles K more steps on rank 0 (torch.profiler) and writes
the GPU time by kernel category, NCCL included, to DIR/ddp_<...>_profile.txt. Run with NCCL_DEBUG=INFO to see
which transport NCCL picks between the GPUs.

Run once per device count (Lightning's DDP launcher re-runs this script for every other rank; only rank 0 writes).
Writes DIR/ddp_<model>_<N>gpu<tag>.json: img/s over all GPUs (median of the timed windows), ms/step, peak memory.
"""
import argparse, json, os, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
from train_throughput import MODELS, SMOKE, ENGINE_SWITCHES, Windows, run_engine, profile_summary  # noqa: E402


def ddp_options(args) -> dict:
    "The DDP options asked for, by `DDPStrategy` keyword (comm_hook by name)."
    opts = dict(static_graph=args.static_graph or None, gradient_as_bucket_view=args.bucket_view or None,
                comm_hook=args.comm_hook, bucket_cap_mb=args.bucket_mb)
    return {k: v for k, v in opts.items() if v is not None}


def strategy(args):
    "'auto' on one device; else Lightning's `DDPStrategy` with the options asked for."
    if args.devices == 1: return "auto"
    from lightning.pytorch.strategies import DDPStrategy
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    kw = ddp_options(args)
    hook = kw.pop("comm_hook", None)
    if hook: kw["ddp_comm_hook"] = {"bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook}[hook]
    return DDPStrategy(**kw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=2); ap.add_argument("--model", default="cifar10", choices=list(MODELS))
    ap.add_argument("--out", required=True); ap.add_argument("--engine-kw", default="{}", help="JSON DiffusionEngine switches")
    ap.add_argument("--warm", type=int, default=10); ap.add_argument("--steps", type=int, default=20); ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--static-graph", action="store_true"); ap.add_argument("--bucket-view", action="store_true")
    ap.add_argument("--comm-hook", choices=["bf16", "fp16"]); ap.add_argument("--bucket-mb", type=float)
    ap.add_argument("--profile-steps", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny U-Net on the CPU (gloo for 2 devices): checks the script runs")
    args = ap.parse_args(argv)
    if args.devices < 1: ap.error(f"--devices must be >= 1; got --devices {args.devices}")
    try: asked = json.loads(args.engine_kw)
    except json.JSONDecodeError as e: ap.error(f"--engine-kw must be a JSON object; got --engine-kw {args.engine_kw!r} ({e})")
    if not isinstance(asked, dict) or set(asked) - set(ENGINE_SWITCHES):
        ap.error(f"--engine-kw takes a JSON object with keys from {ENGINE_SWITCHES}; got --engine-kw {args.engine_kw!r}")
    if args.devices == 1 and ddp_options(args): ap.error(f"DDP options ({', '.join(ddp_options(args))}) need --devices >= 2")
    engine_kw = dict(dict(compile_step=False, cuda_graphs=False), **asked)
    spec = (SMOKE if args.smoke else MODELS)[args.model]
    rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cpu") if args.smoke else torch.device("cuda", rank)
    if args.smoke: args.warm, args.steps, args.windows, args.profile_steps = 2, 2, 2, min(args.profile_steps, 1)
    torch.set_float32_matmul_precision("high")
    pl.seed_everything(0, verbose=False)
    unet = spec["unet"]().to(device)
    x = torch.randn(spec["batch"], spec["channels"], spec["size"], spec["size"], device=device).clamp(-1, 1)
    w = Windows(args.warm, args.steps, args.windows, device)
    t0 = time.perf_counter()
    prof = run_engine(unet, x, w, "bf16", devices=args.devices, strategy=strategy(args), profile_steps=args.profile_steps, **engine_kw)
    if rank != 0: return
    per_step = statistics.median(s / args.steps for s in w.seconds())
    res = dict(model=args.model, devices=args.devices, batch_per_gpu=spec["batch"], engine_kw=engine_kw,
               img_s=round(args.devices * spec["batch"] / per_step, 1), ms_step=round(1e3 * per_step, 2),
               windows_ms_step=[round(1e3 * s / args.steps, 2) for s in w.seconds()], warmup_s=round(w.t_warm_end - t0, 1),
               peak_mem_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
               gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", date=time.strftime("%Y-%m-%d"),
               command="python bench/ddp_scaling.py " + " ".join(sys.argv[1:]))
    res["ddp"] = ddp_options(args)
    tag = "".join(f"_{k}" for k, v in json.loads(args.engine_kw).items() if v) + "".join(f"_{k}{'' if v is True else v}" for k, v in res["ddp"].items())
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / f"ddp_{args.model}_{args.devices}gpu{tag}.json").write_text(json.dumps(res, indent=1))
    if prof is not None: (out / f"ddp_{args.model}_{args.devices}gpu{tag}_profile.txt").write_text(profile_summary(prof, f"{args.devices} GPU(s){tag}", args.profile_steps))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
