"""Training step time with and without `LiveTrainingView` attached at its default update rate.

Two models on CPU: the toy engine of `nbs/11_engine.ipynb` (an MLP on 4-pixel data: a step is mostly Lightning's
own overhead, the hardest case for a per-step callback) and a small diffusers `UNet2DModel` on 16×16 digits
(a step of real work). Runs with and without the view are interleaved (off, on, on, off, ...) so that a drift in
machine load hits both alike; the first `--warmup` steps of each run are excluded. Reported per model: mean
ms/step of each variant (median over repeats), the overhead from those two, the paired overhead (median of the
per-repeat ratios; noisy on a shared machine) and the view's own time inside its hooks per step (direct, not
noisy), redraws per run. The view runs as in a notebook except that nothing displays it: `--in-kernel` runs the
measurement inside a real IPython kernel (jupyter_client), where every redraw is also sent as comm messages.

Prints markdown rows; `--append FILE` adds them to FILE under the heading "Live view overhead" (created, with
the table header, if missing). Target: ≤ 2 % on this CPU machine.

    python bench/live_view_overhead.py [--models toy,unet] [--steps 300] [--warmup 40] [--repeats 8] [--append BENCHMARKS.md]

`--panel full` makes the runs log every per-σ-bucket metric the view draws: the engine trains with EDM2's
`LearnedWeightingLoss` (it logs `logvar_sigma/*` and `weighted_error_sigma/*`) and a stand-in callback logs
`floor_sigma/*` and `excess_ema_sigma/*` every step and `eval_loss_sigma/*` every 50 steps (constants: what
they cost the view does not depend on their values), in the runs with and without the view alike.

`--grid-cost` measures instead what a sample grid costs on this machine for the main job (`configs/digits.yaml`:
16 digits, Heun 18 steps with CFG 2 = 35 evaluations of a doubled batch) against its training step, and how often
`LiveTrainingView`'s defaults then draw one; rows go under "Live view: sample grids on the CPU".

    python bench/live_view_overhead.py --grid-cost [--threads 2] [--append BENCHMARKS.md]
"""
import argparse, datetime, json, shlex, statistics, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench this checkout's diffexplore
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, append_rows  # noqa: E402

HEADING = "## Live view overhead"
HEADER = ("| date | machine | command | model | where | steps × runs | wall ms/step off / on | wall overhead | CPU ms/step off / on "
          "| CPU overhead (paired min…max) | view hooks ms/step | redraws/run |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
INTRO = ("Training step time with and without `LiveTrainingView()` (its defaults: redraws ≥ `min_interval_s` apart, 1 s\n"
         "since 2026-11-30 and 0.25 s before, and ≤ 1 % of the time; no sample grid: the engines have no sampler), CPU,\n"
         "one torch thread, runs interleaved, warm-up excluded.\n"
         "Overheads compare the medians over runs of the mean step time, wall-clock and process CPU time (CPU time is\n"
         "less disturbed by other processes on a shared machine); `view hooks` is the wall time spent inside the\n"
         "view's per-step hooks (collecting + redraws), the most direct measure. Target: ≤ 2 %.\n\n"
         "    python bench/live_view_overhead.py --append BENCHMARKS.md\n")


def gpu_name() -> str:
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


# --- the two training set-ups ----------------------------------------------------------------------------------------
def make_engine(model: str, **engine_kw):
    "(engine, dataloader) for 'toy' (MLP, 4 pixels, batch 64) or 'unet' (UNet2DModel 16/32 channels, 16×16, batch 16)."
    import torch
    from torch import nn
    from diffexplore.engine import DiffusionEngine
    from diffexplore.scalings import EDMScaling
    from diffexplore.weightings import EDMWeighting
    from diffexplore.sigma_sampling import EDMSampling
    from diffexplore.denoiser import Denoiser
    from diffexplore.loss import StandardDiffusionLoss, LearnedWeightingLoss

    class TinyNet(nn.Module):
        def __init__(self, width=64):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(5, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 4))
        def forward(self, x, c_noise, cond):
            return self.net(torch.cat([x.flatten(1), c_noise[:, None].to(x.dtype)], dim=1)).view_as(x)

    class SmallUNet(nn.Module):
        def __init__(self):
            super().__init__()
            from diffusers import UNet2DModel
            self.unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                    layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
        def forward(self, x, c_noise, cond): return self.unet(x, c_noise).sample

    g = torch.Generator().manual_seed(0)
    if model == "toy":
        centers = torch.tensor([[0.5, 0.5, -0.5, -0.5], [-0.5, 0.5, 0.5, -0.5]])
        x = (centers[torch.randint(0, 2, (512,), generator=g)] + 0.05 * torch.randn(512, 4, generator=g)).view(-1, 1, 2, 2)
        net, batch_size = TinyNet(), 64
    elif model == "unet":
        from sklearn.datasets import load_digits
        x = torch.nn.functional.interpolate(torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1, size=16)
        net, batch_size = SmallUNet(), 16
    else: raise ValueError(f"model must be 'toy' or 'unet'; got model={model!r}")
    panel = engine_kw.pop("panel", "loss") if engine_kw else "loss"
    loss = (LearnedWeightingLoss if panel == "full" else StandardDiffusionLoss)(EDMSampling(), EDMWeighting(0.5))
    engine = DiffusionEngine(net, Denoiser(EDMScaling(0.5)), loss, lr=1e-3, warmup_steps=10, ema_decay_rate=0.999, **(engine_kw or {}))
    loader = torch.utils.data.DataLoader([{"jpg": xi} for xi in x], batch_size=batch_size, shuffle=True, drop_last=True)
    return engine, loader


def stand_in_metrics():
    "A callback that logs the per-bucket floor, excess (every step) and eval loss (every 50 steps) the view draws."
    import lightning.pytorch as pl
    from diffexplore.engine import sigma_bucket_names
    class StandIn(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            for i, b in enumerate(sigma_bucket_names(pl_module.sigma_bucket_edges)):
                pl_module.log(f"floor_sigma/{b}", 0.01 * (i + 1), on_step=True, on_epoch=False)
                pl_module.log(f"excess_ema_sigma/{b}", 0.1, on_step=True, on_epoch=False)
                if trainer.global_step % 50 == 0: pl_module.log(f"eval_loss_sigma/{b}", 0.2, on_step=True, on_epoch=False)
    return StandIn()


def run(model: str, with_view: bool, steps: int, warmup: int, seed: int = 0, accelerator: str = "cpu",
        precision: str = "32-true", count_syncs: bool = False, engine_kw: dict = None, panel: str = "loss") -> dict:
    """One fit of `warmup + steps` steps; mean seconds per step after warm-up, the view's hook seconds per step, redraws.

    `count_syncs` (CUDA): count host-device synchronisations per timed step instead (`torch.cuda.set_sync_debug_mode`)."""
    import torch, lightning.pytorch as pl
    from diffexplore.live import LiveTrainingView

    class StepTimer(pl.Callback):
        def __init__(self): self.t = []
        def on_train_batch_end(self, *args):
            if accelerator == "gpu" and not count_syncs and len(self.t) + 1 in (warmup, warmup + steps):
                torch.cuda.synchronize()  # the timed window holds all of its steps' GPU work
            self.t.append((time.perf_counter(), time.process_time()))
            if count_syncs and len(self.t) == warmup: torch.cuda.set_sync_debug_mode("warn")

    pl.seed_everything(seed, verbose=False)
    engine, loader = make_engine(model, **(engine_kw or {}), panel=panel)
    timer, callbacks, hook = StepTimer(), [stand_in_metrics()] if panel == "full" else [], {"s": 0.0, "n": 0, "pushes0": None}
    if with_view:
        view = LiveTrainingView(sample_every_n_steps=None)
        def timed(inner, counts_step):
            def hook_fn(trainer, *args):
                t = time.perf_counter(); inner(trainer, *args)
                if trainer.global_step >= warmup + (1 if counts_step else 0):
                    hook["s"] += time.perf_counter() - t; hook["n"] += counts_step
                if counts_step and trainer.global_step == warmup: hook["pushes0"] = view.pushes
            return hook_fn
        # the view's per-step work: recording (next batch start) and stop/sample/redraw (batch end)
        view.on_train_batch_start = timed(view.on_train_batch_start, False)
        view.on_train_batch_end = timed(view.on_train_batch_end, True)
        callbacks.append(view)
    callbacks.append(timer)  # last: its time stamp includes the view's hook
    trainer = pl.Trainer(max_steps=warmup + steps, accelerator=accelerator, devices=1, precision=precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    if count_syncs:
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try: trainer.fit(engine, train_dataloaders=loader)
            finally: torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        return {"syncs_per_step": len(syncs) / steps, "sync_sites": sorted({str(w.message)[:80] + f" @ {w.filename.split('/')[-1]}:{w.lineno}" for w in syncs})}
    trainer.fit(engine, train_dataloaders=loader)
    assert len(timer.t) == warmup + steps
    (w0, c0), (w1, c1) = timer.t[warmup - 1], timer.t[-1]
    out = {"s_per_step": (w1 - w0) / steps, "cpu_s_per_step": (c1 - c0) / steps}
    if with_view:
        assert len(view.steps) == warmup + steps and view.errors == 0, (len(view.steps), view.errors, view.last_error)
        out.update(hook_s_per_step=hook["s"] / max(hook["n"], 1), redraws=view.pushes - 1 - (hook["pushes0"] or 0),
                   traces=sum(t.type == "scatter" for t in view.fig.data))
    return out


def measure(models, steps: int, warmup: int, repeats: int, threads: int, accelerator: str = "cpu", precision: str = "32-true",
            engine_kw: dict = None, panel: str = "loss") -> list:
    "Interleaved runs (off, on, on, off, ...) per model; one result dict per model (on CUDA also host syncs per step)."
    import torch
    torch.set_num_threads(threads)
    kw = dict(accelerator=accelerator, precision=precision, engine_kw=engine_kw, panel=panel)
    results = []
    for model in models:
        run(model, False, 5, 5, **kw)  # import and first-call costs outside the measurement
        off, on = [], []
        for r in range(repeats):
            order = (False, True) if r % 2 == 0 else (True, False)
            for v in order: (on if v else off).append(run(model, v, steps, warmup, seed=r, **kw))
        results.append({"model": model if panel == "loss" else f"{model}, all bucket metrics ({on[0]['traces']} curves)", "off": off, "on": on})
        if accelerator == "gpu":
            results[-1]["syncs"] = {v: run(model, v == "on", 50, warmup, **kw, count_syncs=True) for v in ("off", "on")}
            print(f"{model} host syncs per step: {json.dumps(results[-1]['syncs'], indent=1)}", file=sys.stderr)
        for k in ("s_per_step", "cpu_s_per_step"):
            print(f"{model} {k}: off {[round(x[k] * 1e3, 3) for x in off]} ms, on {[round(x[k] * 1e3, 3) for x in on]} ms", file=sys.stderr)
    return results


def rows(results, steps, repeats, where, command) -> list:
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    med = lambda runs, k: statistics.median(x[k] * 1e3 for x in runs)
    out = []
    for r in results:
        off, on = r["off"], r["on"]
        paired = [b["cpu_s_per_step"] / a["cpu_s_per_step"] - 1 for a, b in zip(off, on)]
        hook = med(on, "hook_s_per_step")
        syncs = "" if "syncs" not in r else f"; host syncs/step off/on: {r['syncs']['off']['syncs_per_step']:.2f}/{r['syncs']['on']['syncs_per_step']:.2f}"
        out.append(f"| {date} | {machine()} | `{command}` | {r['model']} | {where}{syncs} | {steps} × {repeats} | "
                   f"{med(off, 's_per_step'):.3f} / {med(on, 's_per_step'):.3f} | {100 * (med(on, 's_per_step') / med(off, 's_per_step') - 1):+.2f} % | "
                   f"{med(off, 'cpu_s_per_step'):.3f} / {med(on, 'cpu_s_per_step'):.3f} | "
                   f"{100 * (med(on, 'cpu_s_per_step') / med(off, 'cpu_s_per_step') - 1):+.2f} % ({100 * min(paired):+.1f}…{100 * max(paired):+.1f}) | "
                   f"{hook:.3f} ({100 * hook / med(on, 's_per_step'):.2f} %) | {statistics.median(x['redraws'] for x in on):g} |")
    return out


def measure_in_kernel(argv: list) -> list:
    "Run `measure` inside a fresh IPython kernel (comm messages really sent) and return its results."
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        code = (f"import sys, json, importlib.util; sys.path.insert(0, {str(ROOT)!r})\n"
                f"spec = importlib.util.spec_from_file_location('live_view_overhead', {__file__!r})\n"
                f"b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b); a = b.parse({argv!r})\n"
                f"print('RESULTS' + json.dumps(b.measure(a.models.split(','), a.steps, a.warmup, a.repeats, a.threads, a.accelerator, a.precision, json.loads(a.engine_kw), a.panel)))")
        chunks = []
        def hook(msg):
            if msg["msg_type"] == "stream": chunks.append(msg["content"]["text"])
            if msg["msg_type"] == "error": chunks.append("\n".join(msg["content"]["traceback"]))
        reply = kc.execute_interactive(code, output_hook=hook, timeout=3600)
        text = "".join(chunks)
        if reply["content"]["status"] != "ok": raise RuntimeError(text[-3000:])
        before, after = text.split("RESULTS", 1)
        print("\n".join(l for l in before.split("\n") if "_per_step" in l), file=sys.stderr)
        return json.loads(after.split("\n", 1)[0])
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)



GRID_HEADING = "## Live view: sample grids on the CPU"
GRID_HEADER = ("| date | machine | command | torch threads | grid s (first / median of the rest) | step s (median) | grid every 200 steps: "
               "seconds apart / share of the time | 5 % budget: grids at least … apart | load (1 min) |\n|---|---|---|---|---|---|---|---|---|")
GRID_INTRO = ("What one sample grid of `LiveTrainingView` costs for the main job (`configs/digits.yaml`: 16 digits, Heun 18 steps\n"
              "with CFG 2, EMA weights) against a training step of the same run (batch 128), after 12 steps; grids 2–6 are\n"
              "timed. The view's defaults (a grid due every 200 steps, drawn while grids take ≤ 5 % of the time) follow from\n"
              "these numbers. `grid every 200 steps` is 200 steps plus the grid; the budget column is grid / 0.05.\n\n"
              "    python bench/live_view_overhead.py --grid-cost --threads 2 --append BENCHMARKS.md\n")


def grid_cost(threads: int, reps: int = 6, steps: int = 12) -> dict:
    "Seconds of the digits main job's sample grid (first, then the median of `reps − 1`) and of its training step."
    import os, statistics, torch, lightning.pytorch as pl
    from diffexplore.cli import load_config, build_engine, build_data, quiet_libraries
    torch.set_num_threads(threads)
    cfg = load_config(ROOT / "configs" / "digits.yaml", ["trainer.enable_progress_bar=false"])
    pl.seed_everything(0, verbose=False)
    dm, engine = build_data(cfg), build_engine(cfg)
    class StepTimer(pl.Callback):
        def __init__(self): self.t = []
        def on_train_batch_end(self, *args): self.t.append(time.perf_counter())
    timer = StepTimer()
    with quiet_libraries():
        pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[timer]).fit(engine, datamodule=dm)
    labels = torch.arange(16) % 10
    grid = []
    for _ in range(reps):
        t = time.perf_counter(); engine.generate(16, class_labels=labels, seed=0); grid.append(time.perf_counter() - t)
    step = statistics.median(b - a for a, b in zip(timer.t[2:], timer.t[3:]))
    return dict(grid_first_s=grid[0], grid_s=statistics.median(grid[1:]), step_s=step, threads=threads, load=os.getloadavg()[0],
                sampler=repr(engine.sampler)[:80])


def grid_row(r: dict, command: str) -> str:
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    apart = 200 * r["step_s"] + r["grid_s"]
    return (f"| {date} | {machine()} | `{command}` | {r['threads']} | {r['grid_first_s']:.2f} / {r['grid_s']:.2f} | {r['step_s']:.3f} | "
            f"{apart:.0f} s / {100 * r['grid_s'] / apart:.1f} % | {r['grid_s'] / 0.05:.0f} s | {r['load']:.1f} |")


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="toy,unet", help="comma-separated: toy, unet")
    ap.add_argument("--steps", type=int, default=300, help="timed steps per run (after warm-up)")
    ap.add_argument("--warmup", type=int, default=40, help="steps per run excluded from timing")
    ap.add_argument("--repeats", type=int, default=8, help="runs per variant (interleaved)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"], help="gpu: one CUDA device (also counts host syncs)")
    ap.add_argument("--precision", default="32-true", help="Trainer precision, e.g. bf16-mixed on a GPU")
    ap.add_argument("--engine-kw", default="{}", help='JSON keyword arguments for DiffusionEngine, e.g. \'{"compile_step": false}\'')
    ap.add_argument("--panel", default="loss", choices=["loss", "full"], help="full: also log floor, excess, eval loss and EDM2's u per σ bucket")
    ap.add_argument("--grid-cost", action="store_true", help="measure a sample grid of the digits main job against its step instead")
    ap.add_argument("--in-kernel", action="store_true", help="measure inside an IPython kernel (comm messages sent)")
    ap.add_argument("--append", metavar="FILE", help="add the rows to FILE under 'Live view overhead'")
    ap.add_argument("--out", metavar="DIR", help="also write the raw results as DIR/live_view_overhead.json")
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if args.grid_cost:
        r = grid_cost(args.threads)
        row = grid_row(r, command)
        print(GRID_HEADER); print(row)
        if args.append: append_rows(args.append, GRID_HEADING, GRID_INTRO, GRID_HEADER, [row])
        sys.exit(0)
    if args.in_kernel:
        results = measure_in_kernel([a for a in sys.argv[1:] if a != "--in-kernel"])
    else:
        results = measure(args.models.split(","), args.steps, args.warmup, args.repeats, args.threads, args.accelerator,
                          args.precision, json.loads(args.engine_kw), args.panel)
    where = ("IPython kernel" if args.in_kernel else "plain process") + ("" if args.accelerator == "cpu" else f", {gpu_name()} {args.precision}") \
        + ("" if args.engine_kw.strip() in ("", "{}") else f", engine {args.engine_kw}")
    rs = rows(results, args.steps, args.repeats, where, command)
    if args.out: Path(args.out).mkdir(parents=True, exist_ok=True); (Path(args.out) / "live_view_overhead.json").write_text(json.dumps(results, indent=1))
    print(HEADER); print("\n".join(rs))
    if args.append: append_rows(args.append, HEADING, INTRO, HEADER, rs)
