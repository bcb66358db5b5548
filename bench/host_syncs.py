#!/usr/bin/env python
"""Where a training step waits for the GPU, and what the host spends per step: the engine against the hand-written
loop of `train_throughput.py`, on the GPU.

For each variant, after `--warm` steps: `--steps` steps under `torch.cuda.set_sync_debug_mode("warn")` (every
synchronizing CUDA call the step makes, counted by the Python line that made it), then `--steps` steps under
torch.profiler (host-side CUDA API calls per step — `cudaStreamSynchronize`, `cudaEventSynchronize`,
`cudaHostAlloc`, … — and the ops with the most host time per step). Variants:
  hand-eager     the hand-written EDM step, bf16 autocast, fused AdamW, EMA            (row a-bf16)
  engine-eager   DiffusionEngine under Lightning, bf16-mixed, deferred checks, fused AdamW (row b-bf16)
  engine-graphs  the same with compile_step + cuda_graphs, on a small U-Net (its compile takes seconds)

GPU:   bash bench/gpu.sh syncs $OUT          (python bench/host_syncs.py --out DIR)
Smoke: python bench/host_syncs.py --smoke --out /tmp/hs   (CPU, tiny U-Net: checks the script runs)
Writes DIR/host_syncs.json and DIR/host_syncs.txt (the tables).
"""
import argparse, collections, json, sys, traceback, warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
from diffexplore.networks import build_unet  # noqa: E402
from train_throughput import MODELS, SMOKE, HandLoop, Repeat, make_engine, make_trainer  # noqa: E402

API = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize", "cudaHostAlloc", "cudaMemcpyAsync",
       "cudaGraphLaunch", "cudaLaunchKernel")


def sync_sites(run, steps) -> dict:
    "Synchronizing CUDA calls in `run(steps)`, by the innermost diffexplore/lightning/bench line that made them."
    sites = collections.Counter()
    def show(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-2] if any(k in f.filename for k in ("diffexplore", "lightning", "bench"))]
        f = frames[-1] if frames else None
        sites[f"{Path(f.filename).name}:{f.lineno} {f.line}" if f else f"{filename}:{lineno}"] += 1
    old, warnings.showwarning = warnings.showwarning, show
    if torch.cuda.is_available(): torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always"); warnings.showwarning = show
            run(steps)
    finally:
        if torch.cuda.is_available(): torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = old
    return {k: round(v / steps, 2) for k, v in sites.most_common()}


def profile(run, steps) -> dict:
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=acts) as prof:
        run(steps)
        if torch.cuda.is_available(): torch.cuda.synchronize()
    ka = prof.key_averages()
    api = {e.key: dict(calls=round(e.count / steps, 2), ms=round(e.self_cpu_time_total / 1e3 / steps, 3)) for e in ka if e.key in API}
    top = sorted(ka, key=lambda e: -e.self_cpu_time_total)[:25]
    return dict(api_per_step=api, host_ms_per_step=round(sum(e.self_cpu_time_total for e in ka) / 1e3 / steps, 2),
                top_host_ops=[(e.key[:80], e.count // steps, round(e.self_cpu_time_total / 1e3 / steps, 3)) for e in top])


def engine_variant(spec, x, compile_step, args):
    "Measure inside one fit: warm-up, then the sync-debug steps, then the profiled steps (callbacks switch modes)."
    out, steps = {}, args.steps
    class Phases(pl.Callback):
        def __init__(self): self.mode, self.n, self.prof, self.sites = None, 0, None, collections.Counter()
        def on_train_batch_start(self, trainer, m, batch, i):
            s = trainer.global_step
            if s == args.warm:
                if torch.cuda.is_available(): torch.cuda.synchronize(); torch.cuda.set_sync_debug_mode("warn")
                self.catcher = warnings.catch_warnings(); self.catcher.__enter__(); warnings.simplefilter("always")
                self.old, warnings.showwarning = warnings.showwarning, self.show
            if s == args.warm + steps:
                if torch.cuda.is_available(): torch.cuda.set_sync_debug_mode("default")
                warnings.showwarning = self.old; self.catcher.__exit__(None, None, None)
                out["sync_sites_per_step"] = {k: round(v / steps, 2) for k, v in self.sites.most_common()}
                acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                self.prof = torch.profiler.profile(activities=acts); self.prof.__enter__()
        def show(self, message, category, filename, lineno, file=None, line=None):
            frames = [f for f in traceback.extract_stack()[:-2] if any(k in f.filename for k in ("diffexplore", "lightning", "bench"))]
            f = frames[-1] if frames else None
            self.sites[f"{Path(f.filename).name}:{f.lineno} {f.line}" if f else f"{filename}:{lineno}"] += 1
        def on_train_end(self, trainer, m):
            if self.prof is None: return
            if torch.cuda.is_available(): torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            ka = self.prof.key_averages()
            out["api_per_step"] = {e.key: dict(calls=round(e.count / steps, 2), ms=round(e.self_cpu_time_total / 1e3 / steps, 3)) for e in ka if e.key in API}
            top = sorted(ka, key=lambda e: -e.self_cpu_time_total)[:25]
            out["top_host_ops"] = [(e.key[:80], e.count // steps, round(e.self_cpu_time_total / 1e3 / steps, 3)) for e in top]
    kw = dict(sync_checks=False, fused_optimizer=True, compile_step=compile_step, cuda_graphs=compile_step)
    if not x.is_cuda: kw.update(compile_step=False, cuda_graphs=False)
    engine = make_engine(spec["unet"]().to(x.device), **kw)
    trainer = make_trainer(x, "bf16", args.warm + 2 * steps, [Phases()])
    trainer.fit(engine, train_dataloaders=Repeat(x))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True); p.add_argument("--smoke", action="store_true")
    p.add_argument("--warm", type=int, default=10); p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    models = SMOKE if args.smoke else MODELS
    cifar = models["cifar10"]
    small = dict(cifar, unet=lambda: build_unet("tiny", in_channels=3, sample_size=cifar["size"]))
    x = torch.randn(cifar["batch"], cifar["channels"], cifar["size"], cifar["size"], device=device).clamp(-1, 1)
    res = {}
    hand = HandLoop(cifar["unet"]().to(device), x, "bf16")
    for _ in range(args.warm): hand.step()
    run = lambda n: [hand.step() for _ in range(n)]
    res["hand-eager"] = dict(sync_sites_per_step=sync_sites(run, args.steps), **profile(run, args.steps))
    res["engine-eager"] = engine_variant(cifar, x, False, args)
    res["engine-graphs"] = engine_variant(small, x, True, args)
    (out / "host_syncs.json").write_text(json.dumps(res, indent=1))
    lines = []
    for name, r in res.items():
        lines.append(f"## {name}: sync sites per step {r.get('sync_sites_per_step')}")
        lines.append(f"CUDA API per step: {r.get('api_per_step')}")
        lines += [f"  {k:80s} {c:5d} {ms:8.3f} ms" for k, c, ms in r.get("top_host_ops", [])]
    (out / "host_syncs.txt").write_text("\n".join(lines)); print("\n".join(lines))


if __name__ == "__main__":
    main()
