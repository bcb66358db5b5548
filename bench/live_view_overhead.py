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

    python bench/live_view_overhead.py [--models toy,unet] [--steps 400] [--warmup 40] [--repeats 4] [--append BENCHMARKS.md]
"""
import argparse, datetime, fcntl, json, os, platform, shlex, statistics, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench this checkout's diffexplore

HEADING = "## Live view overhead"
HEADER = ("| date | machine | command | model | where | steps × runs | ms/step off | ms/step on | overhead | paired overhead "
          "(min…max) | view hooks ms/step | redraws/run |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
INTRO = ("Training step time with and without `LiveTrainingView()` (defaults: redraw ≥ 0.25 s apart and ≤ 1 % of the\n"
         "time; no sample grid: the engines have no sampler), CPU, one torch thread, runs interleaved, warm-up excluded.\n"
         "`overhead` compares the medians of the runs' mean step times; `view hooks` is the time spent inside the\n"
         "view's per-step hook (collecting + redraws). Target: ≤ 2 %.\n\n"
         "    python bench/live_view_overhead.py --append BENCHMARKS.md\n")


def machine() -> str:
    "`uname -m`, `nproc` and the CPU model from /proc/cpuinfo."
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): model = line.split(":", 1)[1].strip(); break
    except OSError: pass
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {model}"


# --- the two training set-ups ----------------------------------------------------------------------------------------
def make_engine(model: str):
    "(engine, dataloader) for 'toy' (MLP, 4 pixels, batch 64) or 'unet' (UNet2DModel 16/32 channels, 16×16, batch 16)."
    import torch
    from torch import nn
    from diffexplore.engine import DiffusionEngine
    from diffexplore.scalings import EDMScaling
    from diffexplore.weightings import EDMWeighting
    from diffexplore.sigma_sampling import EDMSampling
    from diffexplore.denoiser import Denoiser
    from diffexplore.loss import StandardDiffusionLoss

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
    engine = DiffusionEngine(net, Denoiser(EDMScaling(0.5)), StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)),
                             lr=1e-3, warmup_steps=10, ema_decay_rate=0.999)
    loader = torch.utils.data.DataLoader([{"jpg": xi} for xi in x], batch_size=batch_size, shuffle=True, drop_last=True)
    return engine, loader


def run(model: str, with_view: bool, steps: int, warmup: int, seed: int = 0) -> dict:
    "One fit of `warmup + steps` steps; mean seconds per step after warm-up, the view's hook seconds per step, redraws."
    import torch, lightning.pytorch as pl
    from diffexplore.live import LiveTrainingView

    class StepTimer(pl.Callback):
        def __init__(self): self.t = []
        def on_train_batch_end(self, *args): self.t.append(time.perf_counter())

    pl.seed_everything(seed, verbose=False)
    engine, loader = make_engine(model)
    timer, callbacks, hook = StepTimer(), [], {"s": 0.0, "n": 0, "pushes0": None}
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
    trainer = pl.Trainer(max_steps=warmup + steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(engine, train_dataloaders=loader)
    assert len(timer.t) == warmup + steps
    out = {"s_per_step": (timer.t[-1] - timer.t[warmup - 1]) / steps}
    if with_view:
        assert len(view.steps) == warmup + steps and view.errors == 0, (len(view.steps), view.errors, view.last_error)
        out.update(hook_s_per_step=hook["s"] / max(hook["n"], 1), redraws=view.pushes - 1 - (hook["pushes0"] or 0))
    return out


def measure(models, steps: int, warmup: int, repeats: int, threads: int) -> list:
    "Interleaved runs (off, on, on, off, ...) per model; one result dict per model."
    import torch
    torch.set_num_threads(threads)
    results = []
    for model in models:
        run(model, False, 5, 5)  # import and first-call costs outside the measurement
        off, on = [], []
        for r in range(repeats):
            order = (False, True) if r % 2 == 0 else (True, False)
            for v in order: (on if v else off).append(run(model, v, steps, warmup, seed=r))
        results.append({"model": model, "off": off, "on": on})
        print(f"{model}: off {[round(x['s_per_step'] * 1e3, 3) for x in off]} ms, on {[round(x['s_per_step'] * 1e3, 3) for x in on]} ms",
              file=sys.stderr)
    return results


def rows(results, steps, repeats, where, command) -> list:
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = []
    for r in results:
        off = [x["s_per_step"] * 1e3 for x in r["off"]]; on = [x["s_per_step"] * 1e3 for x in r["on"]]
        m_off, m_on = statistics.median(off), statistics.median(on)
        paired = [b / a - 1 for a, b in zip(off, on)]
        hook = statistics.median(x["hook_s_per_step"] * 1e3 for x in r["on"])
        redraws = statistics.median(x["redraws"] for x in r["on"])
        out.append(f"| {date} | {machine()} | `{command}` | {r['model']} | {where} | {steps} × {repeats} | {m_off:.3f} | {m_on:.3f} | "
                   f"{100 * (m_on / m_off - 1):+.2f} % | {100 * statistics.median(paired):+.2f} % "
                   f"({100 * min(paired):+.1f}…{100 * max(paired):+.1f}) | {hook:.3f} ({100 * hook / m_on:.2f} %) | {redraws:g} |")
    return out


def measure_in_kernel(argv: list) -> list:
    "Run `measure` inside a fresh IPython kernel (comm messages really sent) and return its results."
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        code = (f"import sys, json, importlib.util; sys.path.insert(0, {str(ROOT)!r})\n"
                f"spec = importlib.util.spec_from_file_location('live_view_overhead', {__file__!r})\n"
                f"b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b); a = b.parse({argv!r})\n"
                f"print('RESULTS' + json.dumps(b.measure(a.models.split(','), a.steps, a.warmup, a.repeats, a.threads)))")
        chunks = []
        def hook(msg):
            if msg["msg_type"] == "stream": chunks.append(msg["content"]["text"])
            if msg["msg_type"] == "error": chunks.append("\n".join(msg["content"]["traceback"]))
        reply = kc.execute_interactive(code, output_hook=hook, timeout=3600)
        text = "".join(chunks)
        if reply["content"]["status"] != "ok": raise RuntimeError(text[-3000:])
        return json.loads(text.split("RESULTS", 1)[1].split("\n", 1)[0])
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)


def append(path: str, lines_to_add: list):
    "Add rows to the table under HEADING in `path` (creating file, heading and table as needed), keeping other sections."
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another bench may append at the same time
        f.seek(0); text = f.read() or "# Benchmarks\n"
        lines = text.rstrip("\n").split("\n")
        if HEADING not in lines:
            lines += ["", HEADING, "", *INTRO.rstrip("\n").split("\n"), "", *HEADER.split("\n"), *lines_to_add]
        else:
            start = lines.index(HEADING)
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
            last_row = max((i for i in range(start, end) if lines[i].startswith("|")), default=None)
            at = last_row + 1 if last_row is not None else end
            lines[at:at] = lines_to_add if last_row is not None else [*HEADER.split("\n"), *lines_to_add]
        f.seek(0); f.truncate(); f.write("\n".join(lines) + "\n")


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="toy,unet", help="comma-separated: toy, unet")
    ap.add_argument("--steps", type=int, default=400, help="timed steps per run (after warm-up)")
    ap.add_argument("--warmup", type=int, default=40, help="steps per run excluded from timing")
    ap.add_argument("--repeats", type=int, default=4, help="runs per variant (interleaved)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--in-kernel", action="store_true", help="measure inside an IPython kernel (comm messages sent)")
    ap.add_argument("--append", metavar="FILE", help="add the rows to FILE under 'Live view overhead'")
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if args.in_kernel:
        results = measure_in_kernel([a for a in sys.argv[1:] if a != "--in-kernel"])
    else:
        results = measure(args.models.split(","), args.steps, args.warmup, args.repeats, args.threads)
    rs = rows(results, args.steps, args.repeats, "IPython kernel" if args.in_kernel else "plain process", command)
    print(HEADER); print("\n".join(rs))
    if args.append: append(args.append, rs)
