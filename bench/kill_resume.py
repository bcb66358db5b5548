#!/usr/bin/env python
"""SIGKILL a CPU training run at random steps, `--resume` it, and compare with the run that was never killed.

One `diffexplore train` run of the tiny digits config goes straight to `--max-steps`, checkpointing every `--every`
steps. Then, for each of `--kills` kill steps k (drawn with `--seed` from 1 … max-steps − 1), the same run is started
in a subprocess and killed with SIGKILL (no handler runs, nothing is saved) once k steps are done, and continued with
`diffexplore train --resume RUN/checkpoints/last.ckpt` to the end (started anew when no checkpoint was written yet).
For about half of the kills (a seeded coin) k is rounded up to the next checkpoint step (or the final step) and the
kill comes in the middle of writing that checkpoint (half its bytes written): the previous checkpoint must be the
one left, whole. The child is killed by a hook that this script adds to the child's
`make_trainer` (a callback at the start of step k + 1, or `torch.save` wrapped to stop half-way), so the kill step is
exact; the CLI itself is unchanged. Checked per kill: the checkpoint left after the kill loads, is at the last
completed interval (steps redone = k − its step; the interrupted write loses at most one interval), no temporary
file is left after the resume, and the final `last.ckpt` equals the straight run's bit for bit in the model weights,
the EMA weights (and its update count), the optimizer state, the LR schedule and the step; `metrics.csv`'s losses
equal the straight run's, every step once.

    OMP_NUM_THREADS=1 python bench/kill_resume.py                     # 20 kills, 120 steps, a checkpoint every 8
    OMP_NUM_THREADS=1 python bench/kill_resume.py --smoke             # 2 kills (one mid-write) of a 12-step run
Prints a markdown table and a summary row; `--append FILE` adds the row to FILE under "Reliability: kill and resume".
Exit status 1 when any kill did not resume exactly.
"""
import argparse, datetime, io, os, random, shlex, signal, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's diffexplore
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, append_rows  # noqa: E402

HEADING = "### 5. Faults"   # in BENCHMARKS.md's "Reliability (issue 15)"
INTRO = ("`bench/kill_resume.py`: a tiny digits run on the CPU killed with SIGKILL at random steps (mid-write where the\n"
         "step is a checkpoint step) and continued with `diffexplore train --resume`; its final `last.ckpt` compared with\n"
         "an uninterrupted run's, bit for bit.\n")
HEADER = ("| date | machine | command | steps | checkpoint every | kills (mid-write) | steps redone (max) | exact: model / EMA / optimizer | s |\n"
          "|---|---|---|---:|---:|---:|---:|---|---:|")
TINY = ["model.params.network_config.params.diffusion_model.params.preset=tiny",
        "model.params.network_config.params.diffusion_model.params.class_embed_dim=64",
        "model.params.conditioner_config.params.emb_models.0.params.embed_dim=64",
        "model.params.sampler_config.params.num_steps=4"]
MAIN = "import sys; from diffexplore.cli import main; sys.exit(main(sys.argv[1:]))"


def train_args(run: Path, steps: int, every: int) -> list:
    "A tiny digits run of `steps` steps into `run`, a checkpoint every `every` steps, no grids, floor or judge."
    return ["train", "--config", "digits", "--run-dir", str(run), "--no-judge", *TINY, f"trainer.max_steps={steps}",
            f"lightning.checkpoint_every_n_steps={every}", "lightning.sample_every_n_steps=0", "lightning.floor_every_n_steps=0",
            "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "data.params.batch_size=32"]


def child(kill_step: int, mid_write: bool, argv: list):
    "Run `diffexplore train argv` in this process and SIGKILL it once `kill_step` steps are done (mid-write: in a checkpoint's write)."
    import torch, lightning.pytorch as pl
    from diffexplore import cli
    class KillAt(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == kill_step: os.kill(os.getpid(), signal.SIGKILL)
    make_trainer, save = cli.make_trainer, torch.save
    def make_killing_trainer(*a, **kw):
        trainer = make_trainer(*a, **kw, extra_callbacks=() if mid_write else (KillAt(),))
        def half_then_kill(obj, f, *args, **kwargs):   # the first checkpoint write at kill_step stops half-way
            if trainer.global_step != kill_step or not hasattr(f, "write"): return save(obj, f, *args, **kwargs)
            buf = io.BytesIO(); save(obj, buf, *args, **kwargs); data = buf.getvalue()
            f.write(data[:len(data) // 2]); f.flush(); os.fsync(f.fileno()); os.kill(os.getpid(), signal.SIGKILL)
        if mid_write: torch.save = half_then_kill
        return trainer
    cli.make_trainer = make_killing_trainer
    sys.exit(cli.main(argv))


def run(args: list, env: dict, killed: bool = False):
    p = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    if killed and p.returncode != -signal.SIGKILL: raise RuntimeError(f"the child was not killed (exit {p.returncode}): {p.stderr[-2000:]}")
    if not killed and p.returncode != 0: raise RuntimeError(f"exit {p.returncode}: {p.stderr[-2000:]}")


def state(ckpt: Path) -> dict:
    "The parts of a checkpoint a resume must restore: model, EMA, optimizer, LR schedule, step."
    import torch
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    sd = ck["state_dict"]
    return {"model": {k: v for k, v in sd.items() if not k.startswith("model_ema.")},
            "ema": {k: v for k, v in sd.items() if k.startswith("model_ema.")},
            "optimizer": ck["optimizer_states"], "schedule": ck["lr_schedulers"], "step": ck["global_step"]}


def equal(a, b) -> bool:
    "Bit-for-bit equality of nested dicts/lists of tensors and numbers (NaN equal to NaN, dtypes must match)."
    import torch
    if isinstance(a, torch.Tensor):
        bits = lambda t: t.detach().reshape(-1).view(torch.uint8)   # the bytes: NaN == NaN, -0.0 != 0.0
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))
    if isinstance(a, dict): return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(equal, a, b))
    return a == b or (a != a and b != b)


def losses(run: Path) -> list:
    import csv
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [(int(r["step"]), r["train/loss"]) for r in rows if r.get("train/loss")]


def kill_plan(steps: int, every: int, n: int, seed: int) -> list:
    """`n` distinct (kill step, mid-write) pairs, seeded: a step drawn from 1 … steps − 1 and a coin; heads, the kill
    comes in the write of the next checkpoint (step rounded up to a multiple of `every`, or the final one at `steps`)."""
    rng, plan = random.Random(seed), []
    while len(plan) < n:
        k, mid_write = rng.randrange(1, steps), rng.random() < 0.5
        if mid_write: k = min(-(-k // every) * every, steps)
        if (k, mid_write) not in plan: plan.append((k, mid_write))
    return sorted(plan)


def one_kill(base: list, run_dir: Path, k: int, mid_write: bool, every: int, env: dict, straight: dict, straight_losses: list) -> dict:
    "Kill once k steps are done (mid-write: in the write of step k's checkpoint), resume to the end, compare. Returns the table row's values."
    run([__file__, "--child", str(k), str(int(mid_write)), "--", *base], env, killed=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    ck_step = state(last)["step"] if last.is_file() else 0   # loads: the kill left no partial last.ckpt
    partial = sorted(p.name for p in (run_dir / "checkpoints").glob(".*.part")) if (run_dir / "checkpoints").is_dir() else []
    if last.is_file(): run(["-c", MAIN, "train", "--resume", str(last), "--no-judge"], env)
    else: run(["-c", MAIN, *base], env)
    end = state(last)
    left = sorted(p.name for p in (run_dir / "checkpoints").glob(".*.part"))
    eq = {part: equal(straight[part], end[part]) for part in ("model", "ema", "optimizer", "schedule", "step")}
    expected = (k - 1) // every * every if mid_write else k // every * every   # the last checkpoint a kill cannot touch
    return {"k": k, "mid_write": mid_write, "ckpt": ck_step, "redone": k - ck_step, "partial": len(partial), "left": len(left),
            "interval_ok": ck_step == expected, "metrics": losses(run_dir) == straight_losses, **eq}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20); ap.add_argument("--max-steps", type=int, default=120)
    ap.add_argument("--every", type=int, default=8); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="2 kills (one mid-write) of a 12-step run, a checkpoint every 4")
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temporary folder, removed)")
    ap.add_argument("--append", default=None, help="add the summary row to this markdown file")
    ap.add_argument("--child", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args(argv)
    if args.child: return child(args.child[0], bool(args.child[1]), [a for a in rest if a != "--"])
    steps, every = (12, 4) if args.smoke else (args.max_steps, args.every)
    kills = [(5, False), (8, True)] if args.smoke else kill_plan(steps, every, args.kills, args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0, tmp = time.time(), tempfile.TemporaryDirectory()
    out = Path(args.out or tmp.name)
    straight_run = out / "straight"
    run(["-c", MAIN, *train_args(straight_run, steps, every)], env)
    straight, straight_losses = state(straight_run / "checkpoints" / "last.ckpt"), losses(straight_run)
    assert straight["step"] == steps and [s for s, _ in straight_losses] == list(range(steps)), "the straight run is incomplete"
    rows = []
    print("| kill at step | killed | last checkpoint left | steps redone | partial file left by the kill | left after resume | model | EMA | optimizer | LR schedule, step | metrics.csv |")
    print("|---:|---|---:|---:|---:|---:|---|---|---|---|---|")
    yes = lambda b: "equal" if b else "**DIFFERENT**"
    for i, (k, mid_write) in enumerate(kills):
        r = one_kill(train_args(out / f"kill{i:02}_{k}", steps, every), out / f"kill{i:02}_{k}", k, mid_write, every, env, straight, straight_losses)
        rows.append(r)
        print(f"| {k} | {'mid-write' if r['mid_write'] else 'between steps'} | {r['ckpt']}{'' if r['interval_ok'] else ' **!**'} | {r['redone']} | "
              f"{r['partial']} | {r['left']} | {yes(r['model'])} | {yes(r['ema'])} | {yes(r['optimizer'])} | {yes(r['schedule'] and r['step'])} | {yes(r['metrics'])} |", flush=True)
    ok = [all(r[p] for p in ("model", "ema", "optimizer", "schedule", "step", "metrics", "interval_ok")) and r["left"] == 0 for r in rows]
    secs = time.time() - t0
    shown = list(sys.argv[1:] if argv is None else argv)
    shown = [a for i, a in enumerate(shown) if a != "--append" and (i == 0 or shown[i - 1] != "--append")]
    cmd = " ".join(["OMP_NUM_THREADS=1 python bench/kill_resume.py", *map(shlex.quote, shown)])
    row = (f"| {datetime.date.today()} | {machine()} | `{cmd.strip()}` | {steps} | {every} | {len(rows)} ({sum(r['mid_write'] for r in rows)}) | "
           f"{max(r['redone'] for r in rows)} | {sum(ok)}/{len(rows)} | {secs:.0f} |")
    print(); print(HEADER); print(row)
    if args.append: append_rows(args.append, HEADING, INTRO, HEADER, [row])
    tmp.cleanup()
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
