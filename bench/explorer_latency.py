"""Latency of a σ-slider move in the explorers: slider value set → every marker trace and the readout updated.

Runs in a plain Python process (no browser, no kernel): it measures the Python side of a move (the observer,
the values at the new σ, one restyle message and the readout HTML) for
- `ScalingExplorer()`: all eight scalings of `SCALINGS` × 6 panels, 400 σ points (target: median ≤ 20 ms);
- `DesignSpaceExplorer(RECIPES)`: every preset recipe shown, 6 panels, 300 σ points (target: median ≤ 50 ms).
Prints one markdown table row per explorer; `--append FILE` also adds them to FILE under the heading
"Explorer latency" (created, with the table header, if missing).

    python bench/explorer_latency.py [--moves 100] [--append BENCHMARKS.md]
"""
import argparse, datetime, math, os, shlex, statistics, sys, time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench this checkout's diffexplore
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, append_rows  # noqa: E402

HEADING = "## Explorer latency"
HEADER = ("| date | machine | command | explorer | σ moves | median ms | p90 ms | target ms | load (1 min) |\n"
          "|---|---|---|---|---|---|---|---|---|")
INTRO = ("σ-slider move → all marker traces and the readout updated, in a plain Python process (no browser).\n"
         "`ScalingExplorer()`: every scaling of `SCALINGS` × 400 σ points, target median ≤ 20 ms;\n"
         "`DesignSpaceExplorer(RECIPES)`: every preset recipe × 300 σ points, target median ≤ 50 ms. The load column\n"
         "is the machine's 1-minute load average when the run ended (other jobs share its cores).\n\n"
         "    python bench/explorer_latency.py --moves 100 --append BENCHMARKS.md\n")
TARGET_MS = {"ScalingExplorer": 20, "DesignSpaceExplorer": 50}


def _scaling_explorer():
    from diffexplore.explorers import PANELS, ScalingExplorer
    ex = ScalingExplorer()
    def moved(s): return all(ex.marker(p).x[0] == s for p in PANELS) and f"σ = {s:.4g}" in ex.readout.value
    return ex, f"ScalingExplorer ({len(ex.names)} scalings)", moved


def _design_space_explorer():
    from diffexplore.explorers import DESIGN_PANELS, DesignSpaceExplorer
    from diffexplore.recipes import RECIPES
    ex = DesignSpaceExplorer(tuple(RECIPES))
    def moved(s):
        return (all(math.isclose(ex.marker(p, n).x[0], math.log(s / ex.recipes[n].sigma_data), rel_tol=1e-12, abs_tol=1e-12)
                    for p in DESIGN_PANELS for n in ex.selected) and f"σ = {s:.4g}" in ex.readout.value)
    return ex, f"DesignSpaceExplorer ({len(ex.selected)} recipes)", moved


def measure(make, moves: int = 100, seed: int = 0) -> tuple:
    "(label, seconds per σ move): `moves` moves to log-uniform random σ in [1e-3, 1e3], each checked to have moved every marker."
    ex, label, moved = make()
    sigmas = 10 ** np.random.default_rng(seed).uniform(-3, 3, moves + 5)
    times = []
    for i, s in enumerate(sigmas):
        t0 = time.perf_counter()
        ex.sigma_slider.value = float(s)
        dt = time.perf_counter() - t0
        assert moved(float(s)), f"{label}: a marker or the readout did not follow sigma={float(s)}"
        if i >= 5: times.append(dt)  # the first moves warm up caches
    return label, times


def row(label: str, times: list, command: str, target: int) -> str:
    ms = sorted(t * 1e3 for t in times)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f"| {date} | {machine()} | `{command}` | {label} | {len(ms)} | {statistics.median(ms):.2f} | {p90:.2f} | "
            f"{target} | {os.getloadavg()[0]:.1f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moves", type=int, default=100)
    ap.add_argument("--append", metavar="FILE", help="add the rows to FILE under 'Explorer latency'")
    args = ap.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    rows = []
    for make, target in ((_scaling_explorer, TARGET_MS["ScalingExplorer"]), (_design_space_explorer, TARGET_MS["DesignSpaceExplorer"])):
        label, times = measure(make, args.moves)
        rows.append(row(label, times, command, target))
    print(HEADER); print("\n".join(rows))
    if args.append: append_rows(args.append, HEADING, INTRO, HEADER, rows)
