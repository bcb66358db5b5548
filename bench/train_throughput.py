#!/usr/bin/env python
"""Training throughput on one GPU: a hand-written EDM loop against diffexplore's `DiffusionEngine` under
Lightning's `Trainer`, and the engine's fast switches one at a time (issue 5).

Models (the same diffusers `UNet2DModel` and the same batch for every row of a model):
  cifar10   DDPM-CIFAR-10 U-Net (35.7M parameters), 32×32×3, batch 256, preset "ddpm-cifar10"
  latent64  a 64×64×4 latent U-Net (189.6M parameters), channels (192, 384, 576, 768), attention at 32×32
            and 16×16 (64 channels per head), batch 64

Rows: (a) the hand-written loop (EDM σ, preconditioning, weighting, fused AdamW, EMA); (b) the engine, eager,
in the same precision; (c) the engine with one fast switch each, and the fastest combination.
Each row: img/s and ms/step (median of 3 timed windows, warm-up and compilation excluded), achieved TFLOP/s
from `torch.utils.flop_counter.FlopCounterMode` (one training step, forward + backward), MFU against an
8192³ bf16 matmul measured in the same run, peak memory.

GPU:  python bench/train_throughput.py --out $OUT                      (both models, all rows)
      python bench/train_throughput.py --out $OUT --models cifar10 --rows a-bf16,b-bf16
CPU smoke test (tiny U-Nets, a few steps): python bench/train_throughput.py --smoke --out /tmp/bench
Writes results.json, results.md, profile.txt (torch.profiler tables) and log lines to stdout.
"""
from __future__ import annotations
import argparse, gc, json, math, os, platform, statistics, sys, time, traceback
from datetime import date
from pathlib import Path

import torch
import lightning.pytorch as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffexplore.networks import build_unet, count_params, OpenAIWrapper
from diffexplore.engine import DiffusionEngine
from diffexplore.denoiser import Denoiser
from diffexplore.scalings import EDMScaling
from diffexplore.weightings import EDMWeighting
from diffexplore.sigma_sampling import EDMSampling
from diffexplore.loss import StandardDiffusionLoss

P_MEAN, P_STD, SIGMA_DATA, LR, EMA = -1.2, 1.2, 0.5, 1e-4, 0.9999

def _attn_types(levels, n=4):
    return dict(down_block_types=tuple("AttnDownBlock2D" if i in levels else "DownBlock2D" for i in range(n)),
                up_block_types=tuple("AttnUpBlock2D" if i in levels else "UpBlock2D" for i in reversed(range(n))))

MODELS = {
    "cifar10": dict(channels=3, size=32, batch=256, big_batch=512,
                    unet=lambda: build_unet("ddpm-cifar10", in_channels=3, sample_size=32)),
    "latent64": dict(channels=4, size=64, batch=64, big_batch=128,
                     unet=lambda: build_unet("ddpm-cifar10", in_channels=4, sample_size=64, dropout=0.0,
                                             block_out_channels=(192, 384, 576, 768), attention_head_dim=64,
                                             **_attn_types((1, 2)))),
}
SMOKE = {
    "cifar10": dict(channels=3, size=8, batch=4, big_batch=8, unet=lambda: build_unet("tiny", in_channels=3, sample_size=8)),
    "latent64": dict(channels=4, size=8, batch=4, big_batch=8, unet=lambda: build_unet("tiny", in_channels=4, sample_size=8)),
}

# Each row: (id, kind, what it is, settings). kind "hand": the hand-written loop; "engine": DiffusionEngine + Trainer.
ROWS = [
    ("a-fp32", "hand", "(a) hand-written loop, fp32 (TF32 matmuls/convs)", dict(precision="32")),
    ("b-fp32", "engine", "(b) DiffusionEngine + Trainer, 32-true, eager", dict(precision="32")),
    ("a-bf16", "hand", "(a) hand-written loop, bf16 autocast", dict(precision="bf16")),
    ("b-bf16", "engine", "(b) DiffusionEngine + Trainer, bf16-mixed, eager", dict(precision="bf16", profile=True)),
    ("b-bf16-sync", "engine", "(c switch off) engine with sync_checks=True: the checked path, host syncs each step", dict(precision="bf16", sync_checks=True)),
    ("c-nofused", "engine", "(c switch off) engine with fused_optimizer=False (foreach AdamW)", dict(precision="bf16", fused_optimizer=False)),
    ("c-channels-last", "engine", "(c) + channels_last", dict(precision="bf16", channels_last=True)),
    ("a-bf16-compile", "hand", "(a) hand-written loop, bf16 + torch.compile(unet)", dict(precision="bf16", compile=True)),
    ("c-compile", "engine", "(c) + compile_step (whole loss: preconditioning, network, loss; fwd+bwd)", dict(precision="bf16", compile_step=True, profile=True)),
    ("c-cudagraphs", "engine", "(c) + compile_step + cuda_graphs (mode reduce-overhead)", dict(precision="bf16", compile_step=True, cuda_graphs=True)),
    ("c-big-batch", "engine", "(c) fastest: compile_step + cuda_graphs, 2× batch", dict(precision="bf16", compile_step=True, cuda_graphs=True, big_batch=True)),
    ("c-big-batch-nocg", "engine", "(c) compile_step, 2× batch, no CUDA graphs", dict(precision="bf16", compile_step=True, big_batch=True)),
    ("c-cudagraphs-cl", "engine", "(c) compile_step + cuda_graphs + channels_last", dict(precision="bf16", compile_step=True, cuda_graphs=True, channels_last=True, profile=True)),
    ("c-big-batch-cl", "engine", "(c) compile_step + cuda_graphs + channels_last, 2× batch", dict(precision="bf16", compile_step=True, cuda_graphs=True, channels_last=True, big_batch=True)),
    ("a-bf16-compile-cl", "hand", "(a) hand-written loop, bf16 + torch.compile(unet) + channels_last", dict(precision="bf16", compile=True, channels_last=True)),
]

def log(*a): print(time.strftime("%H:%M:%S"), *a, flush=True)

# ------------------------------------------------------------------------------------------------------------
# timing

class Windows:
    "Marks after steps warm, warm+n, ..., warm+k·n (a sync at each mark only): k window durations in seconds."
    def __init__(self, warm, n, k, device):
        self.warm, self.n, self.k, self.device, self.marks = warm, n, k, device, []
        self.total = warm + n * k
    def sync(self):
        if self.device.type == "cuda": torch.cuda.synchronize()
    def after_step(self, step):      # step = number of steps done
        if step >= self.warm and (step - self.warm) % self.n == 0 and len(self.marks) <= self.k:
            self.sync(); self.marks.append(time.perf_counter())
            if len(self.marks) == 1: self.t_warm_end = self.marks[0]
    def seconds(self): return [b - a for a, b in zip(self.marks[:-1], self.marks[1:])]

class WindowCallback(pl.Callback):
    def __init__(self, w: Windows, profile_steps=0):
        self.w, self.profile_steps, self.prof = w, profile_steps, None
        self.t0 = None
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.t0 is None: self.t0 = time.perf_counter()
        if self.profile_steps and trainer.global_step == self.w.total and self.prof is None:
            self.prof = _profiler(); self.prof.__enter__()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.fast_path = pl_module.fast_path   # read while training: after fit Lightning moves the module to the CPU
        if self.prof is None: self.w.after_step(trainer.global_step)
    def on_train_end(self, trainer, pl_module):
        if self.prof is not None: self.w.sync(); self.prof.__exit__(None, None, None)

def _profiler():
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return torch.profiler.profile(activities=acts)

class Repeat:
    "An endless iterable of the same batch dict (already on the device)."
    def __init__(self, x): self.x = x
    def __iter__(self):
        while True: yield {"jpg": self.x}

# ------------------------------------------------------------------------------------------------------------
# (a) the hand-written loop

def edm_loss(unet, x, amp):
    "EDM (Karras et al. 2022): σ ~ lognormal, c_skip/c_out/c_in/c_noise, w(σ) = (σ²+σd²)/(σσd)²; mean loss."
    s = (torch.randn(x.shape[0], device=x.device) * P_STD + P_MEAN).exp()[:, None, None, None]
    noised = x + torch.randn_like(x) * s
    norm2 = s**2 + SIGMA_DATA**2
    c_skip, c_out, c_in, c_noise = SIGMA_DATA**2 / norm2, s * SIGMA_DATA / norm2.sqrt(), 1 / norm2.sqrt(), s.flatten().log() / 4
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        F = unet(noised * c_in, c_noise, return_dict=False)[0]
    D = F.float() * c_out + noised * c_skip
    return (norm2 / (s * SIGMA_DATA)**2 * (D - x)**2).mean()

def run_hand(unet, x, w: Windows, precision, compile=False, profile_steps=0):
    amp = precision == "bf16"
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, fused=True)
    ema = [p.detach().clone().float() for p in params]
    net = torch.compile(unet) if compile else unet
    def step():
        loss = edm_loss(net, x, amp)
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - EMA)
    for i in range(w.total):
        step(); w.after_step(i + 1)
    prof = None
    if profile_steps:
        with _profiler() as prof:
            for _ in range(profile_steps): step()
            w.sync()
    return prof

# ------------------------------------------------------------------------------------------------------------
# (b), (c): DiffusionEngine under Lightning's Trainer

ENGINE_SWITCHES = ("sync_checks", "fused_optimizer", "compile_step", "cuda_graphs", "channels_last")   # DiffusionEngine's fast-path arguments


def run_engine(unet, x, w: Windows, precision, profile_steps=0, devices=1, strategy="auto", **engine_kw):
    engine = DiffusionEngine(OpenAIWrapper(unet), Denoiser(EDMScaling(SIGMA_DATA)),
                             StandardDiffusionLoss(EDMSampling(P_MEAN, P_STD), EDMWeighting(SIGMA_DATA)),
                             lr=LR, ema_decay_rate=EMA, **engine_kw)
    cb = WindowCallback(w, profile_steps)
    trainer = pl.Trainer(accelerator="gpu" if x.is_cuda else "cpu", devices=devices, strategy=strategy, max_steps=w.total + profile_steps,
                         precision="bf16-mixed" if precision == "bf16" else "32-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         benchmark=x.is_cuda, callbacks=[cb], num_sanity_val_steps=0)
    trainer.fit(engine, train_dataloaders=Repeat(x))
    if x.is_cuda and cb.fast_path != (not engine_kw.get("sync_checks", False)): raise RuntimeError(f"fast_path={cb.fast_path} during training")
    return cb.prof

# ------------------------------------------------------------------------------------------------------------
# FLOPs, matmul ceiling

def count_flops(unet, x, precision) -> int:
    "FLOPs of one training step (forward + backward) counted by FlopCounterMode (matmuls, convolutions, attention)."
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        edm_loss(unet, x, precision == "bf16").backward()
    unet.zero_grad(set_to_none=True)
    return fc.get_total_flops()

def matmul_tflops(device, n=8192, reps=20) -> float:
    "Median TFLOP/s of an n×n×n bf16 matmul on random data (3 warm-ups)."
    if device.type != "cuda": n, reps = 512, 3
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3): a @ b
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record(); a @ b; e1.record(); e1.synchronize(); times.append(e0.elapsed_time(e1) / 1e3)
        else:
            t = time.perf_counter(); a @ b; times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e12

# ------------------------------------------------------------------------------------------------------------
# profile summary

CATEGORIES = [("nccl (DDP all-reduce)", ("nccl",)),
              ("gemm/conv", ("gemm", "conv", "cutlass", "sm90", "xmma", "cudnn", "implicit", "wgrad", "dgrad", "fprop", "nchw", "nhwc")),
              ("attention", ("flash", "fmha", "attention", "sdpa", "efficient")),
              ("optimizer/EMA", ("adam", "foreach", "lerp", "multi_tensor")),
              ("groupnorm", ("group_norm", "groupnorm")),
              ("triton fused", ("triton",)),
              ("copy/cast", ("copy", "cast", "to_copy", "memcpy", "memset", "fill"))]

def profile_summary(prof, title, steps) -> str:
    ka = prof.key_averages()
    attr = "self_device_time_total" if hasattr(next(iter(ka)), "self_device_time_total") else "self_cuda_time_total"
    # GPU kernels only: no CPU time of their own; not aten ops, not user ranges such as "Optimizer.step#AdamW.step",
    # not the ranges NCCL and DDP put around their kernels ("nccl:all_reduce", "DistributedDataParallel.forward")
    kernels = [e for e in ka if getattr(e, attr, 0) > 0 and e.self_cpu_time_total == 0 and "#" not in e.key
               and not e.key.startswith(("aten::", "ProfilerStep", "Optimizer", "autograd::", "nccl:", "DistributedDataParallel"))]
    total = sum(getattr(e, attr) for e in kernels)
    cats = {}
    for e in kernels:
        name = e.key.lower()
        cat = next((c for c, pats in CATEGORIES if any(p in name for p in pats)), "other elementwise")
        cats[cat] = cats.get(cat, 0) + getattr(e, attr)
    lines = [f"=== {title}: {steps} profiled steps; GPU kernel time {total / 1e3 / max(steps, 1):.1f} ms/step "
             f"(compare with the unprofiled ms/step: the rest is GPU idle) ===",
             "GPU time by kernel category (ms/step, share):"]
    for c, v in sorted(cats.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {c:20s} {v / 1e3 / max(steps, 1):8.2f} ms  {100 * v / max(total, 1):5.1f}%")
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    lines.append(ka.table(sort_by=sort, row_limit=25, max_name_column_width=70))
    return "\n".join(lines)

# ------------------------------------------------------------------------------------------------------------

def free_memory():
    gc.collect()
    try: torch._dynamo.reset()
    except Exception: pass
    if torch.cuda.is_available(): torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()

def run_row(model_name, spec, row, device, flops_base, peak, args):
    rid, kind, what, st = row
    batch = spec["big_batch"] if st.get("big_batch") else spec["batch"]
    pl.seed_everything(0, verbose=False)
    unet = spec["unet"]().to(device)
    x = torch.randn(batch, spec["channels"], spec["size"], spec["size"], device=device).clamp(-1, 1)
    w = Windows(args.warm, args.steps, args.windows, device)
    prof_steps = args.profile_steps if st.get("profile") else 0
    t0 = time.perf_counter()
    if kind == "hand":
        if st.get("channels_last"): unet, x = unet.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        prof = run_hand(unet, x, w, st["precision"], compile=st.get("compile", False), profile_steps=prof_steps)
    else:
        kw = {k: v for k, v in st.items() if k in ENGINE_SWITCHES}
        kw.setdefault("compile_step", False); kw.setdefault("cuda_graphs", False)
        prof = run_engine(unet, x, w, st["precision"], profile_steps=prof_steps, **kw)
    secs = w.seconds()
    if len(secs) < args.windows: raise RuntimeError(f"only {len(secs)} timing windows recorded")
    per_step = sorted(s / args.steps for s in secs)
    med = statistics.median(per_step)
    flops = flops_base * batch / spec["batch"]
    res = dict(model=model_name, row=rid, what=what, precision=st["precision"], batch=batch,
               img_s=round(batch / med, 1), img_s_min=round(batch / per_step[-1], 1), img_s_max=round(batch / per_step[0], 1),
               ms_step=round(med * 1e3, 2), tflops=round(flops / med / 1e12, 1), mfu=round(flops / med / 1e12 / peak, 4),
               peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
               warmup_s=round(w.t_warm_end - t0, 1), settings={k: v for k, v in st.items() if k != "profile"},
               command=f"python bench/train_throughput.py --models {model_name} --rows {rid}")
    text = profile_summary(prof, f"{model_name} {rid}", prof_steps) if prof is not None else None
    del unet, x, prof
    return res, text

def to_markdown(meta, results) -> str:
    out = [f"Measured {meta['date']} on {meta['gpu']} (torch {meta['torch']}, lightning {meta['lightning']}, "
           f"diffusers {meta['diffusers']}); bf16 matmul ceiling {meta['matmul_tflops']:.0f} TFLOP/s (8192³, median of 20).", ""]
    for m in dict.fromkeys(r["model"] for r in results):
        rs = [r for r in results if r["model"] == m]
        info = meta["models"][m]
        out += [f"#### {m}: {info['params'] / 1e6:.1f}M parameters, input {info['shape']}, "
                f"{info['tflop_per_step']:.2f} TFLOP per training step at batch {info['batch']} (FlopCounterMode)", "",
                "| row | what | batch | img/s (min–max) | ms/step | TFLOP/s | MFU | peak GiB | warm-up s |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rs:
            if "error" in r:
                out.append(f"| {r['row']} | {r['what']} | | failed: {r['error'][:120]} | | | | | |"); continue
            out.append(f"| {r['row']} | {r['what']} | {r['batch']} | {r['img_s']:,.0f} ({r['img_s_min']:,.0f}–{r['img_s_max']:,.0f}) | "
                       f"{r['ms_step']:.1f} | {r['tflops']:.0f} | {100 * r['mfu']:.1f}% | {r['peak_mem_gib']} | {r['warmup_s']} |")
        get = {r["row"]: r.get("img_s") for r in rs}
        ratios = []
        for a, b in (("b-fp32", "a-fp32"), ("b-bf16", "a-bf16")):
            if get.get(a) and get.get(b): ratios.append(f"{a}/{b} = {get[a] / get[b]:.3f}")
        hand = [get[k] for k in ("a-fp32", "a-bf16", "a-bf16-compile") if get.get(k)]
        fast = [r["img_s"] for r in rs if r["row"].startswith("c-") and r.get("img_s")]
        if hand and fast: ratios.append(f"best (c) / best (a) = {max(fast) / max(hand):.2f}")
        out += ["", "Ratios: " + "; ".join(ratios) if ratios else "", ""]
    return "\n".join(out)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    p.add_argument("--models", default="cifar10,latent64")
    p.add_argument("--rows", default=None, help="comma-separated row ids, run in this order; MODEL:ROW for one model only (default: all)")
    p.add_argument("--warm", type=int, default=8); p.add_argument("--steps", type=int, default=15)
    p.add_argument("--windows", type=int, default=3); p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--deadline", type=float, default=1e9, help="seconds; rows that would not fit are skipped")
    p.add_argument("--compile-estimate", type=float, default=150, help="seconds a compiled row is assumed to take until one is measured")
    p.add_argument("--cache", default=None, help="torch.compiler cache artifacts to load first / save at the end")
    p.add_argument("--smoke", action="store_true", help="tiny U-Nets on the CPU, a few steps: checks the script runs")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke: args.warm, args.steps, args.windows, args.profile_steps = 2, 2, 2, 1
    torch.set_float32_matmul_precision("high"); torch.backends.cudnn.benchmark = True
    if args.cache and Path(args.cache).exists():
        try: torch.compiler.load_cache_artifacts(Path(args.cache).read_bytes()); log("loaded compile cache", args.cache)
        except Exception as e: log("could not load compile cache:", e)
    import diffusers, lightning
    meta = dict(date=str(date.today()), gpu=torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
                torch=torch.__version__, lightning=lightning.__version__, diffusers=diffusers.__version__, models={})
    meta["matmul_tflops"] = matmul_tflops(device); log(f"bf16 matmul: {meta['matmul_tflops']:.0f} TFLOP/s")
    specs = SMOKE if args.smoke else MODELS
    wanted = args.rows.split(",") if args.rows else None
    results, profiles = [], []
    compile_cost = args.compile_estimate
    def write():
        (out / "results.json").write_text(json.dumps(dict(meta=meta, results=results), indent=2))
        (out / "results.md").write_text(to_markdown(meta, results))
        if profiles: (out / "profile.txt").write_text("\n\n".join(profiles))
    for m in args.models.split(","):
        spec = specs[m]
        unet = spec["unet"]().to(device)
        x = torch.randn(spec["batch"], spec["channels"], spec["size"], spec["size"], device=device)
        flops = count_flops(unet, x, "bf16")
        meta["models"][m] = dict(params=count_params(unet), shape=[spec["channels"], spec["size"], spec["size"]],
                                 batch=spec["batch"], tflop_per_step=flops / 1e12)
        log(f"{m}: {count_params(unet):,} parameters, {flops / 1e12:.2f} TFLOP per step at batch {spec['batch']}")
        del unet, x; free_memory()
        by_id = {r[0]: r for r in ROWS}
        order = [w_.split(":")[-1] for w_ in wanted if ":" not in w_ or w_.startswith(m + ":")] if wanted else list(by_id)
        for rid in order:
            row = by_id[rid]
            compiled = bool(row[3].get("compile") or row[3].get("compile_step"))
            est = compile_cost if compiled else 30
            left = args.deadline - (time.perf_counter() - t_start)
            if left < est:
                log(f"skip {m} {rid}: {left:.0f} s left, needs ~{est:.0f} s"); results.append(dict(model=m, row=rid, what=row[2], error=f"not run: {left:.0f} s left of the deadline")); write(); continue
            log(f"run {m} {rid} ...")
            try:
                res, text = run_row(m, spec, row, device, flops, meta["matmul_tflops"], args)
                results.append(res)
                if text: profiles.append(text)
                log(f"  {rid}: {res['img_s']:,.0f} img/s ({res['img_s_min']:,.0f}-{res['img_s_max']:,.0f}), {res['ms_step']} ms/step, "
                    f"{res['tflops']} TFLOP/s, MFU {100 * res['mfu']:.1f}%, peak {res['peak_mem_gib']} GiB, warm-up {res['warmup_s']} s")
                if compiled: compile_cost = max(60.0, 1.3 * res["warmup_s"] + 30)
            except Exception as e:
                traceback.print_exc()
                results.append(dict(model=m, row=rid, what=row[2], error=f"{type(e).__name__}: {e}"))
            free_memory(); write()
    if args.cache:
        try:
            art = torch.compiler.save_cache_artifacts()
            if art: (out / Path(args.cache).name).write_bytes(art[0]); log(f"saved compile cache ({len(art[0]) / 2**20:.1f} MiB)")
        except Exception as e: log("could not save compile cache:", e)
    write()
    print(to_markdown(meta, results))
    return results

if __name__ == "__main__":
    main()
