#!/usr/bin/env python
"""Issue 5, part 6: row (b) of `bench/train_throughput.py` (DiffusionEngine under Lightning's Trainer, bf16-mixed) on
1 and on N GPUs with Lightning's DDP, the same per-GPU batch (weak scaling). Scaling efficiency = N-GPU img/s over
1-GPU img/s; target ≥ 1.8× on 2 GPUs.

    python bench/ddp_scaling.py --devices 2 --out DIR [--model cifar10] [--engine-kw '{"compile_step": true}']

Run once per device count (Lightning's DDP launcher re-runs this script for every other rank; only rank 0 writes).
Writes DIR/ddp_<model>_<N>gpu<tag>.json: img/s over all GPUs (median of the timed windows), ms/step, peak memory.
"""
import argparse, json, os, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
from train_throughput import MODELS, SMOKE, Windows, run_engine  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=2); ap.add_argument("--model", default="cifar10", choices=list(MODELS))
    ap.add_argument("--out", required=True); ap.add_argument("--engine-kw", default="{}", help="JSON DiffusionEngine switches")
    ap.add_argument("--warm", type=int, default=10); ap.add_argument("--steps", type=int, default=20); ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny U-Net on the CPU (1 device): checks the script runs")
    args = ap.parse_args(argv)
    engine_kw = dict(dict(compile_step=False, cuda_graphs=False), **json.loads(args.engine_kw))
    spec = (SMOKE if args.smoke else MODELS)[args.model]
    rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cpu") if args.smoke else torch.device("cuda", rank)
    if args.smoke: args.devices, args.warm, args.steps, args.windows = 1, 2, 2, 2
    torch.set_float32_matmul_precision("high")
    pl.seed_everything(0, verbose=False)
    unet = spec["unet"]().to(device)
    x = torch.randn(spec["batch"], spec["channels"], spec["size"], spec["size"], device=device).clamp(-1, 1)
    w = Windows(args.warm, args.steps, args.windows, device)
    t0 = time.perf_counter()
    run_engine(unet, x, w, "bf16", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto", **engine_kw)
    if rank != 0: return
    per_step = statistics.median(s / args.steps for s in w.seconds())
    res = dict(model=args.model, devices=args.devices, batch_per_gpu=spec["batch"], engine_kw=engine_kw,
               img_s=round(args.devices * spec["batch"] / per_step, 1), ms_step=round(1e3 * per_step, 2),
               windows_ms_step=[round(1e3 * s / args.steps, 2) for s in w.seconds()], warmup_s=round(w.t_warm_end - t0, 1),
               peak_mem_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
               gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", date=time.strftime("%Y-%m-%d"),
               command="python bench/ddp_scaling.py " + " ".join(sys.argv[1:]))
    tag = "".join(f"_{k}" for k, v in json.loads(args.engine_kw).items() if v)
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / f"ddp_{args.model}_{args.devices}gpu{tag}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
