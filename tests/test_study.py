"The equal-budget study (nbs/19_study.ipynb): a study killed mid-way resumes without repeating finished cells; the shipped study config."
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest

from _runs import TINY, NO_FLOOR
from diffexplore.study import load_study_config, cell_config, run_study, cell_dir, student_t_quantile, t_interval
from diffexplore.recipes import recipe_from_config

REPO = Path(__file__).resolve().parents[1]


def _tiny_study(tmp_path, steps=20, sweep_seeds="[]") -> Path:
    shared = [f"trainer.max_steps={steps}", "lightning.checkpoint_every_n_steps=5", "lightning.sample_every_n_steps=0",
              "lightning.judge_samples=20", *NO_FLOOR, *TINY]
    p = tmp_path / "tiny.yaml"
    p.write_text(f"""base: digits
seeds: [0, 1]
shared: [{', '.join(shared)}]
excess: {{sigmas: [0.1, 2.0], n: 32}}
ema_sweep: {{seeds: {sweep_seeds}, every_n_steps: 5, sigma_rels: [0.05, 0.1], judge_samples: 20}}
recipes:
  EDM: {{}}
  RF:
    scaling: {{target: diffexplore.scalings.RectifiedFlowScaling}}
    weighting: {{target: diffexplore.weightings.RectifiedFlowWeighting}}
    sigma_sampler: {{target: diffexplore.sigma_sampling.LogitNormalSampling}}
""")
    return p


def test_a_killed_study_resumes_without_repeating_finished_cells(tmp_path):
    cfg, out = _tiny_study(tmp_path), tmp_path / "out"
    first, killed = cell_dir(out, "EDM", 0) / "cell.json", cell_dir(out, "RF", 0)
    code = f"import sys; from diffexplore.cli import main; sys.exit(main(['study', '--config', {str(cfg)!r}, '--out', {str(out)!r}]))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.time()   # kill it hard once the second cell has its first checkpoint (step 5 of 20)
        while not (first.is_file() and list((killed / "checkpoints").glob("*.ckpt"))):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() - t0 < 300, "the study did not reach its second cell in 300 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait(timeout=30)
    assert not (killed / "cell.json").is_file()
    trained_to_end = (killed / "summary.json").is_file()   # only if the kill came after its judge (a 20-step run is fast)
    before = first.stat().st_mtime_ns, first.read_text()
    lines = []
    res = run_study(cfg, out, log=lines.append)
    assert (res["cells_done"], res["cells_total"]) == (4, 4)
    assert (first.stat().st_mtime_ns, first.read_text()) == before            # the finished cell was read, not repeated
    assert "EDM seed 0: done before" in lines[0] and not any("done before" in l for l in lines[1:]), lines
    cell = json.loads((killed / "cell.json").read_text())
    assert cell["how"] == ("measured" if trained_to_end else "resumed") and cell["steps"] == 20, cell
    summary = json.loads(Path(res["json"]).read_text())
    assert summary["recipes"]["RF"]["images_seen"] == summary["recipes"]["EDM"]["images_seen"] == [20 * 128]
    assert summary["recipes"]["RF"]["metrics"]["accuracy"]["n"] == 2


def test_the_shipped_digits_study_is_seven_recipes_at_one_budget():
    study = load_study_config("study_digits")
    assert list(study.recipes) == ["EDM", "Eps", "V", "Score", "RF", "MinSNR", "EDM2"] and len(study.seeds) >= 3
    cfgs = {r: cell_config(study, r, study.seeds[0]) for r in study.recipes}
    shared = lambda c: (c.trainer, c.data, c.model.params.network_config, c.model.params.sampler_config, c.model.params.lr, c.lightning.judge_samples)
    assert all(shared(c) == shared(cfgs["EDM"]) for c in cfgs.values())
    parts = {r: recipe_from_config(c, sigma_data=0.75, name=r) for r, c in cfgs.items()}
    assert len({(repr(p.scaling), repr(p.weighting), repr(p.sampling)) for r, p in parts.items() if r != "EDM2"}) == 6
    assert cfgs["EDM2"].model.params.loss_fn_config.target.endswith("LearnedWeightingLoss")
    sweep, other = study.ema_sweep.seeds[0], next(s for s in study.seeds if s not in study.ema_sweep.seeds)
    assert "posthoc_ema" in cell_config(study, "EDM", sweep).lightning and "posthoc_ema" not in cell_config(study, "EDM", other).lightning


def test_student_t_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 5, 9, 10, 29, 30, 100):
        for p in (0.6, 0.9, 0.975, 0.995):
            assert student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)
    iv = t_interval([0.91, 0.95, 0.93, 0.90])
    lo, hi = stats.t.interval(0.95, 3, loc=0.9225, scale=stats.sem([0.91, 0.95, 0.93, 0.90]))
    assert (iv["lo"], iv["hi"]) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))


def test_two_jobs_compute_the_cells_of_one(tmp_path, monkeypatch):
    "`run_study(jobs=2)` runs cells in two processes; with the same torch threads (1) every cell equals the one-process run."
    import torch
    cfg, old = _tiny_study(tmp_path, steps=6), torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 2)             # each of the two workers gets 2 // 2 = 1 thread
    torch.set_num_threads(1)
    try:
        one, two = run_study(cfg, tmp_path / "one", log=lambda s: None), run_study(cfg, tmp_path / "two", log=lambda s: None, jobs=2)
    finally: torch.set_num_threads(old)
    times = ("train_seconds", "run_seconds", "measure_seconds")
    cells = lambda r: [{k: v for k, v in c.items() if k not in times} for c in json.loads(Path(r["json"]).read_text())["cells"]]
    assert (one["cells_done"], two["cells_done"]) == (4, 4) and cells(one) == cells(two)
    # cell.json or summary.json cut short (a crash mid-write, before they were written atomically): redone, not a traceback
    edm, rf = cell_dir(tmp_path / "one", "EDM", 0), cell_dir(tmp_path / "one", "RF", 0)
    for f in (edm / "cell.json", rf / "cell.json", rf / "summary.json"): f.write_text(f.read_text()[:40])
    torch.set_num_threads(1)
    try: again = run_study(cfg, tmp_path / "one", log=lambda s: None)
    finally: torch.set_num_threads(old)
    redone = {(c["recipe"], c["seed"]): c["how"] for c in json.loads(Path(again["json"]).read_text())["cells"]}
    assert redone == {("EDM", 0): "measured", ("RF", 0): "resumed", ("EDM", 1): "trained", ("RF", 1): "trained"}, redone
    same = lambda r: [{k: v for k, v in c.items() if k != "how"} for c in cells(r)]
    assert same(again) == same(one)   # the same weights, measured again with the same seeds
    with pytest.raises(ValueError, match="jobs=0"): run_study(cfg, tmp_path / "zero", jobs=0)


def test_a_recipe_typo_stops_the_study_before_any_cell_trains(tmp_path):
    "A recipe whose engine cannot be built is refused up front, naming the recipe, also with two jobs."
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(_tiny_study(tmp_path).read_text().replace("RectifiedFlowScaling", "RectifiedFlowScalng"))
    with pytest.raises(ValueError, match=r"^recipes\.RF: model\.params\.denoiser_config\.params\.scaling_config\.target: unknown target='diffexplore\.scalings\.RectifiedFlowScalng'"):
        run_study(cfg, tmp_path / "out", jobs=2)
    assert not (tmp_path / "out" / "cells").exists()


def _alive(pid: int) -> bool:
    "Whether `pid` runs (a zombie, left for a PID 1 that does not reap, counts as ended)."
    try: return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError): return False


def _spawned_workers(parent: int) -> list[int]:
    "The multiprocessing workers (spawn_main) whose parent is `parent`, from /proc."
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit(): continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"spawn_main" in (d / "cmdline").read_bytes(): pids.append(int(d.name))
        except (OSError, IndexError, ValueError): pass
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_a_killed_parent_takes_its_workers_with_it(tmp_path):
    """SIGKILL of `diffexplore study --jobs 2` mid-cell: its two workers end within a minute instead of training on unseen
    (they once finished their cells and idled), each cut cell with its `interrupted.ckpt` for the next run to resume."""
    cfg, out = _tiny_study(tmp_path, steps=2000), tmp_path / "out"
    cells = [cell_dir(out, r, 0) for r in ("EDM", "RF")]
    code = f"import sys; from diffexplore.cli import main; sys.exit(main(['study', '--config', {str(cfg)!r}, '--out', {str(out)!r}, '--jobs', '2']))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = []
    try:
        t0 = time.time()   # both cells of seed 0 training, past their first checkpoint
        while not all(list((c / "checkpoints").glob("*.ckpt")) for c in cells):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() - t0 < 300, "the two cells did not start in 300 s"
            time.sleep(0.1)
        workers = _spawned_workers(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait(timeout=30)
    assert len(workers) == 2, workers
    t0 = time.time()
    while any(_alive(w) for w in workers) and time.time() - t0 < 90: time.sleep(0.5)
    try: assert not any(_alive(w) for w in workers), f"workers still running {time.time() - t0:.0f} s after their parent was killed"
    finally:
        for w in workers:
            if _alive(w): os.kill(w, signal.SIGKILL)
    assert all((c / "checkpoints" / "interrupted.ckpt").is_file() and not (c / "cell.json").is_file() for c in cells)
