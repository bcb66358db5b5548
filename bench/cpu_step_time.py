#!/usr/bin/env python
"""CPU seconds per training step of the main job (`configs/digits.yaml`), and the same for an older commit.

One run: a fresh process builds the run as `diffexplore train` does (`diffexplore.cli`: `load_config`, `build_data`,
`build_engine`, `make_trainer` with its checkpoints, sample-grid callback and CSV logger, in a temporary run
directory), fits `--warmup` + `--steps` optimizer steps on the CPU and times the last `--steps` (between the ends
of steps `--warmup` and `--warmup + --steps`): wall-clock and process CPU seconds per step. No judge, no sample
grid (the config's first is at step 1000). The process imports `diffexplore` from the tree being measured
(PYTHONPATH); each run reports the file it imported, so a mix-up shows.

`--compare OLD_COMMIT`: `git worktree add --detach` of OLD_COMMIT in a temporary folder, then `--rounds` rounds of
one run of the old tree and one of this working tree (uncommitted changes included), alternating old, new, old,
new, ... so that a change in machine load hits both; every round and the medians are reported, with new / old.
The worktree is removed at the end (also after an error or Ctrl-C).

    python bench/cpu_step_time.py --out DIR [--steps 60] [--warmup 10]                     # this tree only
    python bench/cpu_step_time.py --out DIR --compare OLD_COMMIT [--rounds 5] [--steps 60]  # old vs new
    python bench/cpu_step_time.py --out /tmp/c --compare HEAD --steps 5 --warmup 2 --rounds 1   # a quick check
Writes DIR/cpu_step_time.json (every run, medians) and prints a markdown table. A CPU benchmark: no GPU task.
"""
import argparse, json, os, platform, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(tree: Path, steps: int, warmup: int, threads: int):
    """One run in this process, on the tree's own config and its `diffexplore` (imported through PYTHONPATH). Prints
    `RESULT {json}` at the end of the last timed step and exits there: the final sample grid and `last.ckpt` that
    `make_trainer`'s callbacks would write after it are not what this measures."""
    import torch, lightning.pytorch as pl
    import diffexplore
    from diffexplore.cli import load_config, build_data, build_engine, make_trainer
    if threads: torch.set_num_threads(threads)
    total, marks, run_dir = warmup + steps, {}, tempfile.mkdtemp(prefix="cpu_step_time_run_")

    class Timer(pl.Callback):   # first in the list: marks each step before the run's own callbacks (checkpoints) act on it
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step not in (warmup, total): return
            marks[trainer.global_step] = (time.perf_counter(), time.process_time())
            if trainer.global_step < total: return
            (w0, c0), (w1, c1) = marks[warmup], marks[total]
            res = dict(wall_s_per_step=round((w1 - w0) / steps, 5), cpu_s_per_step=round((c1 - c0) / steps, 5), steps=steps, warmup=warmup,
                       torch_threads=torch.get_num_threads(), diffexplore=diffexplore.__file__)
            print("\nRESULT " + json.dumps(res), flush=True)   # on a line of its own, after the progress bar's
            shutil.rmtree(run_dir, ignore_errors=True); os._exit(0)

    cfg = load_config(tree / "configs" / "digits.yaml", [f"trainer.max_steps={total}", "trainer.accelerator=cpu"])
    pl.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    dm, engine = build_data(cfg), build_engine(cfg)
    trainer = make_trainer(cfg, Path(run_dir), num_classes=getattr(dm, "num_classes", None), engine=engine)
    trainer.callbacks.insert(0, Timer())
    trainer.fit(engine, datamodule=dm)
    raise RuntimeError(f"the fit ended at global step {trainer.global_step} before step {total}")


def run_tree(tree: Path, args) -> dict:
    "One run of `tree` in a fresh process with PYTHONPATH=tree; the child's result, or an `error`."
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree), "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    p = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, timeout=args.timeout)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None: return dict(error=f"exit {p.returncode}: {p.stderr[-1500:]}")
    res = json.loads(line[7:])
    if not Path(res["diffexplore"]).resolve().is_relative_to(tree.resolve()): res["error"] = f"imported {res['diffexplore']}, not the tree {tree}"
    return res


def git(*a) -> str: return subprocess.run(["git", *a], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def compare(args) -> dict:
    "Alternating runs of OLD_COMMIT (a temporary worktree) and this tree; rounds and medians."
    old_sha = git("rev-parse", "--verify", args.compare + "^{commit}")
    tmp = Path(tempfile.mkdtemp(prefix="cpu_step_time_"))
    old_tree = tmp / old_sha[:12]
    git("worktree", "add", "--detach", str(old_tree), old_sha)
    rounds = []
    try:
        for i in range(args.rounds):
            r = {}
            for name, tree in (("old", old_tree), ("new", ROOT)):
                r[name] = run_tree(tree, args); print(f"round {i + 1} {name}: {json.dumps(r[name])}", flush=True)
            rounds.append(r)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {name: {k: statistics.median(r[name][k] for r in rounds if "error" not in r[name]) if any("error" not in r[name] for r in rounds) else None
                  for k in ("wall_s_per_step", "cpu_s_per_step")} for name in ("old", "new")}
    ratio = {k: round(med["new"][k] / med["old"][k], 4) if med["new"][k] and med["old"][k] else None for k in med["new"]}
    return dict(old_commit=old_sha, new=f"working tree at {git('rev-parse', 'HEAD')[:12]} (uncommitted changes included)",
                rounds=rounds, median=med, new_over_old=ratio)


def markdown(res) -> str:
    if "rounds" not in res:
        r = res["run"]
        return f"this tree: {r.get('wall_s_per_step', 'failed')} s/step wall, {r.get('cpu_s_per_step', '')} s/step CPU ({r.get('error', '')})"
    fmt = lambda d, k: f"{d[k]:.4f}" if "error" not in d else "failed"
    lines = ["| round | old wall s/step | new wall s/step | old CPU s/step | new CPU s/step |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {i + 1} | {fmt(r['old'], 'wall_s_per_step')} | {fmt(r['new'], 'wall_s_per_step')} | {fmt(r['old'], 'cpu_s_per_step')} | "
              f"{fmt(r['new'], 'cpu_s_per_step')} |" for i, r in enumerate(res["rounds"])]
    m, q = res["median"], res["new_over_old"]
    lines.append(f"| median | {m['old']['wall_s_per_step']} | {m['new']['wall_s_per_step']} | {m['old']['cpu_s_per_step']} | {m['new']['cpu_s_per_step']} |")
    return "\n".join(lines + ["", f"new / old: wall {q['wall_s_per_step']}, CPU {q['cpu_s_per_step']} (old = {res['old_commit'][:12]}, new = {res['new']})"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out"); ap.add_argument("--steps", type=int, default=60); ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--compare", metavar="OLD_COMMIT"); ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, as `diffexplore train`)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if min(args.steps, args.warmup, args.rounds) < 1: ap.error(f"--steps, --warmup and --rounds must be >= 1; got {args.steps}, {args.warmup}, {args.rounds}")
    if args.child:
        child(Path(args.child), args.steps, args.warmup, args.threads)
    if not args.out: ap.error("--out is required")
    res = compare(args) if args.compare else dict(run=run_tree(ROOT, args))
    res.update(date=time.strftime("%Y-%m-%d %H:%M"), machine=f"{platform.machine()}, {os.cpu_count()} CPUs", load_avg=os.getloadavg(),
               command="python bench/cpu_step_time.py " + " ".join(sys.argv[1:] if argv is None else argv))
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_step_time.json").write_text(json.dumps(res, indent=1))
    print(markdown(res))
    runs = [res["run"]] if "run" in res else [r[k] for r in res["rounds"] for k in ("old", "new")]
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
