"""`bench/soak_gpu.py` (issue 15, item 8: the soak on the GPU) end to end in its CPU smoke mode: a notebook executed
under nbclient trains configs/digits.yaml with the live view for 12 s while both samplers record; and its analysis
(least-squares slopes, the training window, throughput by thirds) on rows with known answers."""
import json, os, subprocess, sys, time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import soak_gpu  # noqa: E402


def test_soak_smoke(tmp_path):
    p = subprocess.run([sys.executable, "bench/soak_gpu.py", "--smoke", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    res = json.loads((tmp_path / "soak_gpu.json").read_text())
    k = res["kernel"]
    assert k["exception"] is None and k["done"] and k["max_time_s"] == 12 and "last.ckpt" in k["checkpoints"]
    assert k["steps"] == res["steps"] > 0 and k["batch"] == 32
    assert k["view"]["updates"] == res["view_updates"] > 0 and res["view_updates_in_window"] > 0
    assert k["view"]["grids"] >= 1 and k["view"]["errors"] == 0 == res["view_errors"]   # the smoke view has a grid due every 5 steps (the first is drawn)
    assert res["samples_in_window"] >= 3 and len(res["kernel_rows"]) > res["samples_in_window"]
    assert all("error" not in r for r in res["kernel_rows"] + res["client_rows"])
    mem = res["memory"]
    assert {"rss_mib", "kernel_rss_mib", "kernel_tree_pss_mib", "client_rss_mib"} <= set(mem) and "gpu_alloc_mib" not in mem   # no GPU here
    assert all(isinstance(m["slope_mib_per_min"], float) and m["n"] >= 3 and m["min"] <= m["max"] for m in mem.values())
    assert abs(mem["rss_mib"]["max"] / mem["kernel_rss_mib"]["max"] - 1) < 0.1   # the kernel's RSS, read inside and from outside, agree
    assert res["img_s_first_third"] > 0 and res["img_s_last_third"] > 0 and res["last_over_first"] > 0
    assert (tmp_path / "soak_executed.ipynb").exists() and sorted(f.name for f in tmp_path.iterdir()) == ["soak_executed.ipynb", "soak_gpu.json"]
    assert "| `python bench/soak_gpu.py --smoke --out OUT` | 0.20 |" in p.stdout


def test_slope_per_min():
    ts = [5.0 * i for i in range(60)]
    assert soak_gpu.slope_per_min(ts, [100 + 2 * t / 60 for t in ts]) == pytest.approx(2.0)
    assert soak_gpu.slope_per_min(ts, [7.0] * 60) == pytest.approx(0.0)
    assert soak_gpu.slope_per_min(ts[:2], [1.0, 2.0]) is None and soak_gpu.slope_per_min([1.0] * 3, [1.0, 2.0, 3.0]) is None
    assert soak_gpu.slope_per_min(ts[:4], [1.0, None, 2.0, 3.0]) == pytest.approx(60 * 45 / 350)   # the None is left out: (0, 1), (10, 2), (15, 3)


def test_summarize_window_and_thirds():
    """Steps at 10/s, then 5/s from t = 120 s, the last step at t = 180 s, then 10 s of end-of-fit work (host memory up
    300 MiB, from the first row at the last step on); memory grows 1 MiB/min only during the warm-up: flat in the
    window, which ends at the row before the last step."""
    rows, step = [], 0
    for i in range(0, 201):   # t = 0 .. 200 s, one row a second; the fit runs from t = 1 to t = 190
        t = float(i)
        rows.append(dict(t=t, step=step, training=1 <= t <= 190, rss_mib=500 + min(t, 20) / 60 + 300 * (t >= 180), pushes=i,
                         grids=0, grids_skipped=0, view_errors=0))
        if t < 180: step += 10 if t < 120 else 5
    s = soak_gpu.summarize(rows, [dict(t=r["t"], client_rss_mib=50.0) for r in rows], warmup_s=20.0, batch=4)
    assert s["window_s"] == 158.0 and s["samples_in_window"] == 159   # from the first row past step 0 (t = 1) + 20 s, to t = 179
    assert s["memory"]["rss_mib"]["slope_mib_per_min"] == pytest.approx(0.0) and s["memory"]["rss_mib"]["max"] < 501
    assert s["memory"]["client_rss_mib"]["slope_mib_per_min"] == pytest.approx(0.0) and "gpu_alloc_mib" not in s["memory"]
    assert s["img_s_first_third"] == pytest.approx(40.0) and s["img_s_last_third"] == pytest.approx(20.0)
    assert s["last_over_first"] == pytest.approx(0.5) and s["view_updates"] == 200 and s["view_updates_in_window"] == 158
    with pytest.raises(ValueError, match="warmup_s=500"): soak_gpu.summarize(rows, [], warmup_s=500.0, batch=4)


def test_sampler_keeps_going_and_refuses_bad_interval(tmp_path):
    calls = iter([{"a": 1}, ZeroDivisionError("x")])
    def read():
        v = next(calls, {"a": 2})
        if isinstance(v, Exception): raise v
        return v
    s = soak_gpu.Sampler(tmp_path / "rows.jsonl", 0.01, read).start()
    while len(soak_gpu.read_rows(tmp_path / "rows.jsonl")) < 3: time.sleep(0.01)
    s.stop()
    rows = soak_gpu.read_rows(tmp_path / "rows.jsonl")
    assert rows[0]["a"] == 1 and "ZeroDivisionError" in rows[1]["error"] and rows[-1]["a"] == 2 and all(r["t"] > 0 for r in rows)
    with pytest.raises(ValueError, match="every_s=0"): soak_gpu.Sampler(tmp_path / "x", 0, dict)


def test_bad_arguments_named():
    p = subprocess.run([sys.executable, "bench/soak_gpu.py", "--out", "/tmp/unused", "--every", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--every must be > 0; got --every=0.0" in p.stderr
    p = subprocess.run([sys.executable, "bench/soak_gpu.py", "--out", "/tmp/unused", "--view-kw", "[1]"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--view-kw must be a JSON object; got --view-kw='[1]'" in p.stderr


def test_readings_of_processes_and_kernel():
    "The /proc readings see a child process; the kernel's reading carries the step-end allocation and the fit's state."
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in soak_gpu.descendants(os.getpid())
        assert soak_gpu.tree_pss_mib(os.getpid()) > 0 and soak_gpu.rss_mib(child.pid) > 0
    finally: child.kill(); child.wait()
    assert soak_gpu.rss_mib(child.pid) is None and soak_gpu.tree_pss_mib(child.pid) is None   # gone: None, not an error
    view = SimpleNamespace(pushes=3, samples_drawn=1, samples_skipped=2, errors=0)
    r = soak_gpu.kernel_reading(SimpleNamespace(global_step=7), view, SimpleNamespace(started=True, done=False), SimpleNamespace(mib=12.5))
    assert (r["step"], r["training"], r["pushes"], r["grids"], r["grids_skipped"], r["gpu_alloc_step_end_mib"]) == (7, True, 3, 1, 2, 12.5)
    assert r["rss_mib"] > 0


def test_max_time_is_what_lightning_reads():
    "An 8-minute soak once wrote max_time=00:00:00:480, which Lightning's Timer refuses (the 12 s smoke did not show it)."
    from lightning.pytorch.callbacks import Timer
    for s in (12, 59, 60, 480, 3599, 3600, 90061):
        assert Timer(duration=soak_gpu.max_time(s))._duration == s, s
    assert soak_gpu.max_time(480) == "00:00:08:00"
    with pytest.raises(ValueError, match="seconds=-1"): soak_gpu.max_time(-1)
