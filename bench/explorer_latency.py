"""Latency of a σ-slider move in `ScalingExplorer`: slider value set → every marker trace and the readout updated.

Runs in a plain Python process (no browser, no kernel): it measures the Python side of a move (the observer,
the marker values at the new σ for 5 scalings, one `fig.batch_update()` and the readout HTML), over the
default 5 scalings × 400 σ points. Prints a markdown table row; `--append FILE` also adds it to FILE under
the heading "Explorer latency" (created, with the table header, if missing).

    python bench/explorer_latency.py [--moves 100] [--append BENCHMARKS.md]
"""
import argparse, datetime, shlex, statistics, sys, time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench this checkout's diffexplore
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, append_rows  # noqa: E402

HEADING = "## Explorer latency"
HEADER = ("| date | machine | command | σ moves | median ms | p90 ms |\n"
          "|---|---|---|---|---|---|")
INTRO = ("σ-slider move in `ScalingExplorer()` (5 scalings × 400 σ points) → all marker traces and the readout\n"
         "updated, in a plain Python process (no browser). Target: median ≤ 20 ms.\n\n"
         "    python bench/explorer_latency.py --moves 100 --append BENCHMARKS.md\n")


def measure(moves: int = 100, seed: int = 0) -> list:
    "Seconds per σ move, `moves` moves to log-uniform random σ in [1e-3, 1e3], each checked to have moved every marker."
    from diffexplore.explorers import PANELS, ScalingExplorer
    ex = ScalingExplorer()
    sigmas = 10 ** np.random.default_rng(seed).uniform(-3, 3, moves + 5)
    times = []
    for i, s in enumerate(sigmas):
        t0 = time.perf_counter()
        ex.sigma_slider.value = float(s)
        dt = time.perf_counter() - t0
        assert all(ex.marker(p).x[0] == float(s) for p in PANELS) and f"σ = {float(s):.4g}" in ex.readout.value
        if i >= 5: times.append(dt)  # the first moves warm up caches
    return times


def row(times: list, command: str) -> str:
    ms = sorted(t * 1e3 for t in times)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"| {date} | {machine()} | `{command}` | {len(ms)} | {statistics.median(ms):.2f} | {p90:.2f} |"



if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moves", type=int, default=100)
    ap.add_argument("--append", metavar="FILE", help="add the row to FILE under 'Explorer latency'")
    args = ap.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    r = row(measure(args.moves), command)
    print(HEADER); print(r)
    if args.append: append_rows(args.append, HEADING, INTRO, HEADER, [r])
