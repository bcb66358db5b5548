#!/usr/bin/env python
"""Training throughput on one GPU: a hand-written EDM loop against diffexplore's `DiffusionEngine` under
Lightning's `Trainer`, and the engine's fast switches one at a time.

Models (the same diffusers `UNet2DModel` and the same batch for every row of a model):
  cifar10   DDPM-CIFAR-10 U-Net (35.7M parameters), 32×32×3, batch 256, preset "ddpm-cifar10"
  latent64  a 64×64×4 latent U-Net (189.6M parameters), channels (192, 384, 576, 768), attention at 32×32
            and 16×16 (64 channels per head), batch 64

Rows: (a) the hand-written loop (EDM σ, preconditioning, weighting, fused AdamW, EMA); (b) the engine, eager,
in the same precision; (c) the engine with one fast switch each, and the fastest combination (`c-big-batch`:
compiled step replayed as CUDA graphs, fused AdamW, no host syncs, bf16, 2× batch); `a-fastest` is the
hand-written loop with every trick of `c-big-batch` (the whole step compiled with mode "reduce-overhead").
Each row: img/s and ms/step (median of 3 timed windows, warm-up and compilation excluded), achieved TFLOP/s
from `torch.utils.flop_counter.FlopCounterMode` (one training step, forward + backward), MFU against an
8192³ bf16 matmul measured in the same run, peak memory.

Pairs (`pair-*` ids in `--rows`): both loops built once on their own copy of the model, warmed up, then timed in
alternating windows of `--steps` steps, a, b, a, b, ... (`--pairs` of each, default 7); the hand-written windows run
inside a Lightning callback between the engine's steps, so both see the same machine state. Reported: every
pair's ratio engine/hand (img/s) and their median, against the target.
  pair-bf16     a-bf16 vs b-bf16 (eager, bf16 autocast / bf16-mixed)   target ≥ 0.97
  pair-fp32     a-fp32 vs b-fp32 (eager, TF32)                        target ≥ 0.97
  pair-fastest  a-fastest vs c-big-batch, then a profile of both       target ≥ 0.98

GPU:  bash bench/gpu.sh cifar10 $OUT        (CIFAR-10 U-Net: pair-bf16, pair-fastest, pair-fp32, then a-fastest and
                                             c-big-batch alone, as many as fit gpu.sh's deadline)
      bash bench/gpu.sh latent $OUT         (the same for the latent U-Net)
      bash bench/gpu.sh throughput $OUT --models cifar10 --rows a-bf16,b-bf16     (any rows)
      (inside gpu.sh's environment: python bench/train_throughput.py --out DIR [--models M] [--rows R,...])
CPU smoke test (tiny U-Nets, a few steps; compiled hand-written rows use backend "aot_eager", compiled engine
rows run eagerly): python bench/train_throughput.py --smoke --out /tmp/bench [--rows a-bf16,pair-fastest]
Writes results.json, results.md, profile.txt (torch.profiler tables) and log lines to stdout.
"""
from __future__ import annotations
import argparse, functools, gc, json, os, platform, statistics, sys, time, traceback
from datetime import date
from pathlib import Path

import torch
import lightning.pytorch as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffexplore.networks import build_unet, count_params, OpenAIWrapper
from diffexplore.engine import DiffusionEngine, fast_gpu_settings
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

FASTEST_ENGINE = dict(sync_checks=False, fused_optimizer=True, compile_step=True, cuda_graphs=True)   # c-big-batch's switches

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
    ("c-big-batch", "engine", "(c) fastest: compile_step + cuda_graphs + fused AdamW, no host syncs, 2× batch", dict(precision="bf16", big_batch=True, **FASTEST_ENGINE)),
    ("a-fastest", "hand", "(a) hand-written, c-big-batch's tricks: whole step compiled (reduce-overhead: CUDA graphs), fused AdamW, bf16, 2× batch",
     dict(precision="bf16", compile_step=True, cuda_graphs=True, big_batch=True)),
    ("c-big-batch-nocg", "engine", "(c) compile_step, 2× batch, no CUDA graphs", dict(precision="bf16", compile_step=True, big_batch=True)),
    ("c-cudagraphs-cl", "engine", "(c) compile_step + cuda_graphs + channels_last", dict(precision="bf16", compile_step=True, cuda_graphs=True, channels_last=True, profile=True)),
    ("c-big-batch-cl", "engine", "(c) compile_step + cuda_graphs + channels_last, 2× batch", dict(precision="bf16", compile_step=True, cuda_graphs=True, channels_last=True, big_batch=True)),
    ("a-bf16-compile-cl", "hand", "(a) hand-written loop, bf16 + torch.compile(unet) + channels_last", dict(precision="bf16", compile=True, channels_last=True)),
]
ROW_BY_ID = {r[0]: r for r in ROWS}

# Interleaved pairs: (id, hand-written row, engine row, target for the median of engine img/s / hand img/s, profile both).
PAIRS = [
    ("pair-bf16", "a-bf16", "b-bf16", 0.97, False),
    ("pair-fastest", "a-fastest", "c-big-batch", 0.98, True),
    ("pair-fp32", "a-fp32", "b-fp32", 0.97, False),
]
PAIR_BY_ID = {p[0]: p for p in PAIRS}

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
        self.state = engine_state(pl_module)   # read while training: after fit Lightning moves the module to the CPU
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

def _sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)

class HandLoop:
    """(a): the hand-written step on one model and batch: `edm_loss`, backward, fused AdamW, a float32 EMA
    (`torch._foreach_lerp_`). `compile`: `torch.compile(unet)`; `compile_step`: the whole loss (σ, noise,
    preconditioning, network, weighting), forward and backward, compiled as one graph, replayed as CUDA graphs
    with `cuda_graphs` (mode "reduce-overhead", as the engine's `compile_step` + `cuda_graphs`). On the CPU a
    compiled variant uses backend "aot_eager" (no C++ compiler needed; smoke tests only)."""
    def __init__(self, unet, x, precision, compile=False, compile_step=False, cuda_graphs=False, **_):
        self.x, self.device = x, x.device
        self.params = [p for p in unet.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=LR, fused=True)
        self.ema = [p.detach().clone().float() for p in self.params]
        self.graphs = bool(compile_step and cuda_graphs and x.is_cuda)
        net = _compile(unet, None, x.device) if compile else unet
        loss = functools.partial(edm_loss, net, amp=precision == "bf16")
        self.loss = _compile(loss, "reduce-overhead" if self.graphs else None, x.device) if compile_step else loss

    def step(self):
        if self.graphs: torch.compiler.cudagraph_mark_step_begin()
        self.loss(self.x).backward()
        self.opt.step(); self.opt.zero_grad(set_to_none=True)
        torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - EMA)

    def window(self, n) -> float:
        "Seconds for `n` steps, between device syncs."
        _sync(self.device); t = time.perf_counter()
        for _ in range(n): self.step()
        _sync(self.device); return time.perf_counter() - t

    def profile(self, n):
        with _profiler() as prof:
            for _ in range(n): self.step()
            _sync(self.device)
        return prof

def _compile(fn, mode, device):
    if device.type != "cuda": return torch.compile(fn, backend="aot_eager", dynamic=False)
    return torch.compile(fn, mode=mode, dynamic=False)

def run_hand(unet, x, w: Windows, precision, profile_steps=0, **settings):
    hand = HandLoop(unet, x, precision, **settings)
    for i in range(w.total):
        hand.step(); w.after_step(i + 1)
    return hand.profile(profile_steps) if profile_steps else None

# ------------------------------------------------------------------------------------------------------------
# (b), (c): DiffusionEngine under Lightning's Trainer

ENGINE_SWITCHES = ("sync_checks", "fused_optimizer", "compile_step", "cuda_graphs", "channels_last")   # DiffusionEngine's fast-path arguments


def make_engine(unet, **engine_kw) -> DiffusionEngine:
    "The engine of rows (b) and (c): EDM σ sampling, scaling and weighting, as `edm_loss`; `engine_kw` from `ENGINE_SWITCHES`."
    return DiffusionEngine(OpenAIWrapper(unet), Denoiser(EDMScaling(SIGMA_DATA)),
                           StandardDiffusionLoss(EDMSampling(P_MEAN, P_STD), EDMWeighting(SIGMA_DATA)),
                           lr=LR, ema_decay_rate=EMA, **engine_kw)

def make_trainer(x, precision, max_steps, callbacks, devices=1, strategy="auto", **kw) -> pl.Trainer:
    "A bare `Trainer` (no logger, checkpoints, progress bar), the fast GPU settings for what is not set here."
    return pl.Trainer(**fast_gpu_settings(dict(accelerator="gpu" if x.is_cuda else "cpu", devices=devices, strategy=strategy,
                                               max_steps=max_steps, precision="bf16-mixed" if precision == "bf16" else "32-true",
                                               logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                               enable_model_summary=False, benchmark=x.is_cuda, callbacks=callbacks,
                                               num_sanity_val_steps=0, **kw), cuda=x.is_cuda))

def engine_state(engine) -> dict:
    """What the engine did while training, read through its public attributes: `deferred_checks` (the loss checked
    on the device, no host sync a step; None where the engine has no such property), `compiled` (a compiled step
    exists) and `graphs` (it replays CUDA graphs: `engine.compiled_step.graphs`)."""
    step = getattr(engine, "compiled_step", None)
    return dict(deferred_checks=getattr(engine, "deferred_checks", None), compiled=step is not None, graphs=bool(getattr(step, "graphs", False)))

def check_engine_state(x, state: dict, engine_kw: dict):
    "On the GPU, raise `RuntimeError` when the engine did not run the path its switches ask for (the row would be mislabelled)."
    if not x.is_cuda: return
    want = dict(deferred_checks=not engine_kw.get("sync_checks", False), compiled=bool(engine_kw.get("compile_step")),
                graphs=bool(engine_kw.get("compile_step") and engine_kw.get("cuda_graphs")))
    bad = {k: state[k] for k in want if state.get(k) is not None and state[k] != want[k]}
    if bad: raise RuntimeError(f"the engine ran with {bad} during training; its switches ask for {want}")

def run_engine(unet, x, w: Windows, precision, profile_steps=0, devices=1, strategy="auto", **engine_kw):
    engine = make_engine(unet, **engine_kw)
    cb = WindowCallback(w, profile_steps)
    trainer = make_trainer(x, precision, w.total + profile_steps, [cb], devices=devices, strategy=strategy)
    trainer.fit(engine, train_dataloaders=Repeat(x))
    check_engine_state(x, cb.state, engine_kw)
    return cb.prof

def engine_switches(settings: dict, smoke=False) -> dict:
    "The row's `ENGINE_SWITCHES` (compile_step and cuda_graphs off unless set; both off in smoke tests on the CPU)."
    kw = dict(dict(compile_step=False, cuda_graphs=False), **{k: v for k, v in settings.items() if k in ENGINE_SWITCHES})
    if smoke: kw.update(compile_step=False, cuda_graphs=False)
    return kw

# ------------------------------------------------------------------------------------------------------------
# interleaved pairs: (a) and (b) windows alternating on the same warm models

class Interleave(pl.Callback):
    """Runs inside the engine's fit: after `warm` engine steps, `warm` steps of `hand` (its compilation), then
    windows of `n` steps, hand (a) then engine (b), `pairs` times each; then `profile_steps` engine steps under
    torch.profiler. The hand-written windows run between two engine steps, timed between device syncs."""
    def __init__(self, hand: HandLoop, warm, n, pairs, profile_steps=0):
        self.hand, self.warm, self.n, self.pairs, self.profile_steps = hand, warm, n, pairs, profile_steps
        self.a, self.b, self.prof, self.t, self.t0 = [], [], None, None, None
        self.total = warm + n * pairs + profile_steps   # engine steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.t0 is None: self.t0 = time.perf_counter()
        if self.profile_steps and self.prof is None and trainer.global_step == self.warm + self.n * self.pairs:
            self.prof = _profiler(); self.prof.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.warm:
            self.engine_warmup_s = time.perf_counter() - self.t0
            t = time.perf_counter(); self.hand.window(self.warm); self.hand_warmup_s = time.perf_counter() - t
        elif step > self.warm and (step - self.warm) % self.n == 0 and len(self.b) < self.pairs:
            _sync(self.hand.device); self.b.append(time.perf_counter() - self.t)
            self.state = engine_state(pl_module)   # read while training
        else: return
        if len(self.a) < self.pairs:
            self.a.append(self.hand.window(self.n)); self.t = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        if self.prof is not None: _sync(self.hand.device); self.prof.__exit__(None, None, None)

def _side(secs, n, batch, flops, peak) -> dict:
    "img/s, ms/step, TFLOP/s and MFU of the median window; `flops` per step at this batch."
    med = statistics.median(s / n for s in secs)
    return dict(img_s=round(batch / med, 1), ms_step=round(1e3 * med, 2), tflops=round(flops / med / 1e12, 1), mfu=round(flops / med / 1e12 / peak, 4))

def run_pair(model_name, spec, pair, device, flops_base, peak, args):
    "One interleaved pair row: (result dict, profile text or None)."
    pid, hand_id, engine_id, target, profile = pair
    hand_st, engine_st = ROW_BY_ID[hand_id][3], ROW_BY_ID[engine_id][3]
    if hand_st["precision"] != engine_st["precision"] or bool(hand_st.get("big_batch")) != bool(engine_st.get("big_batch")):
        raise ValueError(f"{pid}: {hand_id} and {engine_id} differ in precision or batch")
    batch = spec["big_batch"] if engine_st.get("big_batch") else spec["batch"]
    x = torch.randn(batch, spec["channels"], spec["size"], spec["size"], device=device).clamp(-1, 1)
    pl.seed_everything(0, verbose=False); unet_a = spec["unet"]().to(device)
    pl.seed_everything(0, verbose=False); unet_b = spec["unet"]().to(device)
    hand = HandLoop(unet_a, x, **hand_st)
    prof_steps = args.profile_steps if profile else 0
    cb = Interleave(hand, args.warm, args.steps, args.pairs, prof_steps)
    engine_kw = engine_switches(engine_st, args.smoke)
    trainer = make_trainer(x, engine_st["precision"], cb.total, [cb])
    trainer.fit(make_engine(unet_b, **engine_kw), train_dataloaders=Repeat(x))
    if len(cb.b) < args.pairs: raise RuntimeError(f"only {len(cb.b)} of {args.pairs} pairs timed")
    check_engine_state(x, cb.state, engine_kw)
    flops = flops_base * batch / spec["batch"]
    ratios = [round(a / b, 4) for a, b in zip(cb.a, cb.b)]   # engine img/s over hand img/s = hand seconds over engine seconds
    med = statistics.median(ratios)
    res = dict(model=model_name, row=pid, what=f"{engine_id} / {hand_id}, {args.pairs} interleaved pairs of {args.steps} steps",
               hand=dict(row=hand_id, **_side(cb.a, args.steps, batch, flops, peak), warmup_s=round(cb.hand_warmup_s, 1)),
               engine=dict(row=engine_id, **_side(cb.b, args.steps, batch, flops, peak), warmup_s=round(cb.engine_warmup_s, 1),
                           engine_kw=engine_kw, state=cb.state),
               batch=batch, precision=engine_st["precision"],
               pairs=[dict(hand_img_s=round(batch * args.steps / a, 1), engine_img_s=round(batch * args.steps / b, 1), ratio=r)
                      for a, b, r in zip(cb.a, cb.b, ratios)],
               median_ratio=round(med, 4), target=target, met=med >= target,
               peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
               command=f"python bench/train_throughput.py --models {model_name} --rows {pid}")
    texts = []
    if cb.prof is not None: texts.append(profile_summary(cb.prof, f"{model_name} {pid}: {engine_id} (engine)", prof_steps))
    if prof_steps: texts.append(profile_summary(hand.profile(prof_steps), f"{model_name} {pid}: {hand_id} (hand-written)", prof_steps))
    del hand, unet_a, unet_b, x, trainer, cb
    return res, "\n\n".join(texts) or None

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
        prof = run_hand(unet, x, w, profile_steps=prof_steps, **st)
    else:
        prof = run_engine(unet, x, w, st["precision"], profile_steps=prof_steps, **engine_switches(st, args.smoke))
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

def pairs_markdown(model, pairs) -> list:
    "Markdown lines: one table row per interleaved pair row, each pair's ratio engine/hand and their median."
    if not pairs: return []
    out = [f"#### {model}: interleaved pairs, engine / hand-written img/s", "",
           "| pair | hand-written row: img/s, ms/step, MFU | engine row: img/s, ms/step, MFU | batch | ratio of each pair | median | target |",
           "|---|---|---|---:|---|---:|---|"]
    for r in pairs:
        if "error" in r:
            out.append(f"| {r['row']} | failed: {r['error'][:160]} | | | | | |"); continue
        h, e = r["hand"], r["engine"]
        side = lambda d: f"{d['row']}: {d['img_s']:,.0f}, {d['ms_step']:.1f} ms, {100 * d['mfu']:.1f}%"
        out.append(f"| {r['row']} | {side(h)} | {side(e)} | {r['batch']} | {', '.join(format(p['ratio'], '.3f') for p in r['pairs'])} | "
                   f"**{r['median_ratio']:.3f}** | ≥ {r['target']} ({'met' if r['met'] else 'missed'}) |")
    return out + [""]

def to_markdown(meta, results) -> str:
    out = [f"Measured {meta['date']} on {meta['gpu']} (torch {meta['torch']}, lightning {meta['lightning']}, "
           f"diffusers {meta['diffusers']}); bf16 matmul ceiling {meta['matmul_tflops']:.0f} TFLOP/s (8192³, median of 20).", ""]
    for m in dict.fromkeys(r["model"] for r in results):
        rs = [r for r in results if r["model"] == m and r["row"] not in PAIR_BY_ID]
        out += pairs_markdown(m, [r for r in results if r["model"] == m and r["row"] in PAIR_BY_ID])
        if not rs: continue
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
        hand = [r["img_s"] for r in rs if r["row"].startswith("a-") and r.get("img_s")]
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
    p.add_argument("--pairs", type=int, default=7, help="timed windows of each side in a pair-* row (a, b, a, b, ...)")
    p.add_argument("--deadline", type=float, default=1e9, help="seconds; rows that would not fit are skipped")
    p.add_argument("--compile-estimate", type=float, default=150, help="seconds a compiled row is assumed to take until one is measured")
    p.add_argument("--cache", default=None, help="torch.compiler cache artifacts to load first / save at the end")
    p.add_argument("--smoke", action="store_true", help="tiny U-Nets on the CPU, a few steps, at most 3 pairs: checks the script runs")
    args = p.parse_args(argv)
    if min(args.warm, args.steps, args.windows, args.pairs) < 1: p.error("--warm, --steps, --windows and --pairs must be >= 1")
    unknown = [r for r in (args.rows.split(",") if args.rows else []) if r.split(":")[-1] not in ROW_BY_ID and r.split(":")[-1] not in PAIR_BY_ID]
    if unknown: p.error(f"--rows: unknown {', '.join(map(repr, unknown))}; choose from {', '.join([*ROW_BY_ID, *PAIR_BY_ID])}")
    bad_models = [m for m in args.models.split(",") if m not in MODELS]
    if bad_models: p.error(f"--models: unknown {', '.join(map(repr, bad_models))}; choose from {', '.join(MODELS)}")
    t_start = time.perf_counter()
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke: args.warm, args.steps, args.windows, args.profile_steps, args.pairs = 2, 2, 2, 1, min(args.pairs, 3)
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
        order = [w_.split(":")[-1] for w_ in wanted if ":" not in w_ or w_.startswith(m + ":")] if wanted else list(ROW_BY_ID)
        for rid in order:
            pair = PAIR_BY_ID.get(rid)
            sts = [ROW_BY_ID[pair[1]][3], ROW_BY_ID[pair[2]][3]] if pair else [ROW_BY_ID[rid][3]]
            n_compiled = sum(bool(st.get("compile") or st.get("compile_step")) for st in sts)
            est = n_compiled * compile_cost + (60 if pair else 30)
            what = f"{pair[2]} / {pair[1]}, interleaved" if pair else ROW_BY_ID[rid][2]
            left = args.deadline - (time.perf_counter() - t_start)
            if left < est:
                log(f"skip {m} {rid}: {left:.0f} s left, needs ~{est:.0f} s"); results.append(dict(model=m, row=rid, what=what, error=f"not run: {left:.0f} s left of the deadline")); write(); continue
            log(f"run {m} {rid} ...")
            try:
                if pair:
                    res, text = run_pair(m, spec, pair, device, flops, meta["matmul_tflops"], args)
                    log(f"  {rid}: engine/hand per pair {[p_['ratio'] for p_ in res['pairs']]}, median {res['median_ratio']} (target {res['target']}); "
                        f"hand {res['hand']['img_s']:,.0f} img/s, engine {res['engine']['img_s']:,.0f} img/s; warm-up hand {res['hand']['warmup_s']} s, engine {res['engine']['warmup_s']} s")
                    warm = max(res["hand"]["warmup_s"], res["engine"]["warmup_s"])
                else:
                    res, text = run_row(m, spec, ROW_BY_ID[rid], device, flops, meta["matmul_tflops"], args)
                    log(f"  {rid}: {res['img_s']:,.0f} img/s ({res['img_s_min']:,.0f}-{res['img_s_max']:,.0f}), {res['ms_step']} ms/step, "
                        f"{res['tflops']} TFLOP/s, MFU {100 * res['mfu']:.1f}%, peak {res['peak_mem_gib']} GiB, warm-up {res['warmup_s']} s")
                    warm = res["warmup_s"]
                results.append(res)
                if text: profiles.append(text)
                if n_compiled: compile_cost = max(60.0, 1.3 * warm + 30)
            except Exception as e:
                traceback.print_exc()
                results.append(dict(model=m, row=rid, what=what, error=f"{type(e).__name__}: {e}"))
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
