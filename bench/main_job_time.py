#!/usr/bin/env python
"""Wall time of README's main job, `diffexplore train --config configs/digits.yaml --run-dir DIR`, with the load.

Runs the command exactly as README gives it (a fresh process, a temporary run directory), and meanwhile reads
/proc/loadavg every 2 s: the 1-minute load average before the start, its mean and maximum during the run, and the
machine's CPU count. A load near the CPU count means the cores were shared with other work: README quotes the
time with the load it was measured under. Training, sampling grids, checkpoints and the judge are all included.

    python bench/main_job_time.py --out bench/results                 # the main job as README runs it
    python bench/main_job_time.py --out /tmp/m trainer.max_steps=20   # a quick check (overrides pass through)
Writes OUT/main_job_time_<date>[_<tag>].json (`--tag idle`, say, so runs of one day do not overwrite each other) and adds a row to BENCHMARKS.md's "Main job wall time" table
(`--no-append` to skip). A CPU benchmark: no GPU task.
"""
import argparse, datetime, json, os, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, append_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load1() -> float:
    "The 1-minute load average."
    return float(Path("/proc/loadavg").read_text().split()[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the JSON result")
    ap.add_argument("--no-append", action="store_true", help="do not add a row to BENCHMARKS.md")
    ap.add_argument("--tag", default="", help="appended to the result file's name (e.g. idle, loaded)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides passed to `diffexplore train` (a quick check)")
    args = ap.parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="main_job_time_")) / "digits"
    cmd = ["diffexplore", "train", "--config", "configs/digits.yaml", "--run-dir", str(run_dir), *args.overrides]
    loads, done, before = [], threading.Event(), load1()

    def sample():
        while not done.wait(2.0): loads.append(load1())
    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    done.set()
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    res = dict(command=" ".join(cmd[:5]) + " DIR" + "".join(" " + o for o in args.overrides), returncode=proc.returncode,
               wall_s=round(wall, 1), load_before=before, load_mean=round(sum(loads) / max(len(loads), 1), 2),
               load_max=max(loads, default=before), cpus=os.cpu_count(), machine=machine(),
               steps=summary.get("global_step"), train_s=summary.get("train_seconds"),
               judge_accuracy=(summary.get("judge") or {}).get("accuracy"),
               date=datetime.date.today().isoformat(), stderr_tail=proc.stderr[-2000:] if proc.returncode else "")
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / f"main_job_time_{res['date']}{'_' + args.tag if args.tag else ''}.json").write_text(json.dumps(res, indent=1))
    shutil.rmtree(run_dir.parent, ignore_errors=True)
    print(json.dumps(res, indent=1))
    if proc.returncode: return proc.returncode
    if not args.no_append:
        append_rows(str(ROOT / "BENCHMARKS.md"), "## Main job wall time",
                    "`bench/main_job_time.py` runs README's main job as written and times it from start to exit "
                    "(training, sample grids,\ncheckpoints, the judge), reading the 1-minute load average every 2 s. "
                    "Load ≈ CPU count: the cores were shared.",
                    "| date | machine | command | steps | wall | load before / mean / max | judged accuracy |\n"
                    "|---|---|---|---:|---:|---|---:|",
                    [f"| {res['date']} | {res['machine']} | `{res['command']}` | {res['steps']} | {wall / 60:.1f} min | "
                     f"{before:.2f} / {res['load_mean']:.2f} / {res['load_max']:.2f} | {res['judge_accuracy']} |"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
