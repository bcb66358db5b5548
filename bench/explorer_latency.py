"""Latency of a slider move in the explorers: slider value set → every marker trace and the readout updated.

Runs in a plain Python process (no browser, no kernel): it measures the Python side of a move (the observer,
the values at the new σ or step, one restyle/update message and the readout HTML) for
- `ScalingExplorer()`: all eight scalings of `SCALINGS` × 6 panels, 400 σ points (target: median ≤ 20 ms);
- `DesignSpaceExplorer(RECIPES)`: every preset recipe shown, 6 panels, 300 σ points (target: median ≤ 50 ms);
- `TrajectoryExplorer("exact", scale=1, scale_b=3, class_label=3)`: two Heun paths of 18 steps of the exact denoiser
  of the 1,438 training digits; a step-slider move (target: median ≤ 50 ms). The paths are computed once, before timing.
Prints one markdown table row per explorer (`--only NAME` for one of them); `--append FILE` also adds them to FILE
under the heading "Explorer latency" (created, with the table header, if missing).

    python bench/explorer_latency.py [--moves 100] [--only TrajectoryExplorer] [--append BENCHMARKS.md]
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
INTRO = ("Slider move → all marker traces and the readout updated, in a plain Python process (no browser).\n"
         "`ScalingExplorer()`: every scaling of `SCALINGS` × 400 σ points, target median ≤ 20 ms;\n"
         "`DesignSpaceExplorer(RECIPES)`: every preset recipe × 300 σ points, target median ≤ 50 ms;\n"
         "`TrajectoryExplorer` (two 18-step Heun paths of the exact denoiser of the training digits): a step-slider move\n"
         "(four images per path, the step line and markers in one message), target median ≤ 50 ms; its \"σ moves\" are step moves.\n"
         "The load column is the machine's 1-minute load average when the run ended (other jobs share its cores).\n\n"
         "    python bench/explorer_latency.py --moves 100 --append BENCHMARKS.md\n")
TARGET_MS = {"ScalingExplorer": 20, "DesignSpaceExplorer": 50, "TrajectoryExplorer": 50}


def _sigmas(moves: int, seed: int) -> list:
    "Log-uniform random σ in [1e-3, 1e3]."
    return [float(s) for s in 10 ** np.random.default_rng(seed).uniform(-3, 3, moves)]


def _scaling_explorer():
    from diffexplore.explorers import PANELS, ScalingExplorer
    ex = ScalingExplorer()
    def moved(s): return all(ex.marker(p).x[0] == s for p in PANELS) and f"σ = {s:.4g}" in ex.readout.value
    return ex, f"ScalingExplorer ({len(ex.names)} scalings)", ex.sigma_slider, _sigmas, moved


def _design_space_explorer():
    from diffexplore.explorers import DESIGN_PANELS, DesignSpaceExplorer
    from diffexplore.recipes import RECIPES
    ex = DesignSpaceExplorer(tuple(RECIPES))
    def moved(s):
        return (all(math.isclose(ex.marker(p, n).x[0], math.log(s / ex.recipes[n].sigma_data), rel_tol=1e-12, abs_tol=1e-12)
                    for p in DESIGN_PANELS for n in ex.selected) and f"σ = {s:.4g}" in ex.readout.value)
    return ex, f"DesignSpaceExplorer ({len(ex.selected)} recipes)", ex.sigma_slider, _sigmas, moved


def _trajectory_explorer():
    from diffexplore.explorers import TrajectoryExplorer
    ex = TrajectoryExplorer("exact", scale=1.0, scale_b=3.0, class_label=3)
    n = ex.num_steps
    def steps(moves, seed):   # random steps, each different from the one before (an unchanged value fires no move)
        jumps = np.random.default_rng(seed).integers(1, n, moves)
        return [int(v) for v in (ex.step_slider.value + np.cumsum(jumps)) % n]
    def moved(i):
        return (ex.fig.layout.shapes[0].x0 == i and f"step {i} of {n}" in ex.readout.value
                and all(ex.marker(p).x == i and ex.marker(p).y == float(ex.paths[p]["gap"][i, 0]) for p in range(ex.P)))
    return ex, f"TrajectoryExplorer ({ex.P} paths × {n} steps, step slider)", ex.step_slider, steps, moved


def measure(make, moves: int = 100, seed: int = 0) -> tuple:
    "(label, seconds per move): `moves` moves of the explorer's slider to random values (σ or step), each checked to have moved every marker."
    ex, label, slider, values, moved = make()
    times = []
    for i, s in enumerate(values(moves + 5, seed)):
        t0 = time.perf_counter()
        slider.value = s
        dt = time.perf_counter() - t0
        assert moved(s), f"{label}: a marker or the readout did not follow the slider to {s!r}"
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
    ap.add_argument("--only", choices=list(TARGET_MS), help="measure this explorer only")
    args = ap.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    rows = []
    makers = {"ScalingExplorer": _scaling_explorer, "DesignSpaceExplorer": _design_space_explorer, "TrajectoryExplorer": _trajectory_explorer}
    for name, make in makers.items():
        if args.only not in (None, name): continue
        target = TARGET_MS[name]
        label, times = measure(make, args.moves)
        rows.append(row(label, times, command, target))
    print(HEADER); print("\n".join(rows))
    if args.append: append_rows(args.append, HEADING, INTRO, HEADER, rows)
