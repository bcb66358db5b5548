#!/usr/bin/env python
"""Generation speed: Heun with 18 steps (35 network evaluations) on 256 samples of the
Fashion-MNIST model (`configs/fashion_mnist.yaml`; speed does not depend on the weights, so the model is freshly
initialised unless `--ckpt` is given), with and without CFG, for each way of running the network:
  eager-fp32, eager-bf16 (autocast), compile-bf16 (`torch.compile` of the network), graphs-bf16
  (`torch.compile(mode="reduce-overhead")`: CUDA graphs).
One warm-up call (compilation included, reported), then the mean of `--reps` calls.

GPU: bash bench/gpu.sh sampling $OUT     (eager-bf16 and graphs-bf16, 256 samples; then bench/grad_accumulation.py)
     (inside gpu.sh's environment: python bench/sampling_speed.py --out DIR [--ckpt RUN/checkpoints/last.ckpt] [--variants eager-bf16,graphs-bf16])
     python bench/sampling_speed.py --smoke --out /tmp/s      # CPU, tiny network: checks the script runs
Writes DIR/sampling_speed.json (one row per variant and guidance) and prints each row.
"""
import argparse, contextlib, json, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402
from diffexplore.cli import load_config, build_engine, load_engine, set_sampler  # noqa: E402
from diffexplore.sampling import IdentityGuider  # noqa: E402

VARIANTS = ("eager-fp32", "eager-bf16", "compile-bf16", "graphs-bf16")


def engine_for(args, device):
    if args.ckpt: return set_sampler(load_engine(args.ckpt, map_location=device), "HeunEDMSampler", 18).to(device)
    over = ["model.params.network_config.params.diffusion_model.params.preset=tiny",
            "model.params.network_config.params.diffusion_model.params.class_embed_dim=64",
            "model.params.conditioner_config.params.emb_models.0.params.embed_dim=64"] if args.smoke else []
    engine = build_engine(load_config(ROOT / "configs" / "fashion_mnist.yaml", over))
    engine.sample_shape = (1, 32, 32)
    return set_sampler(engine, "HeunEDMSampler", 18).to(device).eval()


def measure(engine, variant, n, cfg_scale, reps, device):
    "(seconds of the first call, mean seconds of the next `reps`) for `n` samples."
    net = engine.model   # its forward is compiled in place: parameter names (EMA swap) stay as they are
    if variant.startswith(("compile", "graphs")):
        net.forward = torch.compile(net.forward, mode="reduce-overhead" if variant.startswith("graphs") else None, dynamic=False)
    set_sampler(engine, cfg_scale=cfg_scale) if cfg_scale else setattr(engine.sampler, "guider", IdentityGuider())
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if variant.endswith("bf16") else contextlib.nullcontext()
    labels = torch.arange(10).repeat(n // 10 + 1)[:n]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        with amp:
            t = time.perf_counter(); engine.generate(n, class_labels=labels, seed=0); sync(); first = time.perf_counter() - t
            t = time.perf_counter()
            for i in range(reps): engine.generate(n, class_labels=labels, seed=i + 1)
            sync(); return first, (time.perf_counter() - t) / reps
    finally: net.__dict__.pop("forward", None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True); ap.add_argument("--ckpt"); ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5); ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark=True, as in training on the GPU defaults")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny network, 10 samples, 1 repetition (overrides --n, --reps)")
    args = ap.parse_args(argv)
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad: ap.error(f"--variants: unknown {', '.join(map(repr, bad))}; choose from {', '.join(VARIANTS)}")
    if args.n < 1 or args.reps < 1: ap.error(f"--n and --reps must be >= 1; got --n {args.n}, --reps {args.reps}")
    if args.ckpt and not Path(args.ckpt).is_file(): ap.error(f"--ckpt: no such file: {args.ckpt}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke: args.n, args.reps = 10, 1
    torch.set_float32_matmul_precision("high"); torch.backends.cudnn.benchmark = args.cudnn_benchmark
    engine = engine_for(args, device)
    rows = []
    for variant in args.variants.split(","):
        for cfg_scale in (None, 2.0):
            try:
                first, dt = measure(engine, variant, args.n, cfg_scale, args.reps, device)
                rows.append(dict(variant=variant, cfg=cfg_scale, n=args.n, nfe=35, network_batch=args.n * (2 if cfg_scale else 1),
                                 first_call_s=round(first, 2), seconds=round(dt, 4), img_s=round(args.n / dt, 1)))
            except Exception as e:
                rows.append(dict(variant=variant, cfg=cfg_scale, error=f"{type(e).__name__}: {e}"[:300]))
            print(json.dumps(rows[-1]), flush=True)
            if device.type == "cuda": torch._dynamo.reset()
    meta = dict(date=time.strftime("%Y-%m-%d"), device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                torch=torch.__version__, ckpt=args.ckpt, command="python bench/sampling_speed.py " + " ".join(sys.argv[1:]))
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / "sampling_speed.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
