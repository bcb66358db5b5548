"""Faults a run must survive (issue 15, item 5): a SIGKILL at any step (`bench/kill_resume.py --smoke`), a checkpoint
write that fails half-way, a run directory that cannot be written or fills up, and a live view that raises mid-training."""
import errno, io, os, subprocess, sys, warnings
from pathlib import Path

import pytest
import torch

from diffexplore.cli import main, atomic_save, check_run_dir, RunDirError, PARTIAL
from _runs import TINY, NO_FLOOR

ROOT = Path(__file__).resolve().parents[1]
RUN = [*TINY, *NO_FLOOR, "lightning.sample_every_n_steps=0", "trainer.enable_progress_bar=false", "data.params.batch_size=32"]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_kill_and_resume_smoke(tmp_path):
    "Two SIGKILLs (one in the middle of a checkpoint write), each resumed: the end equals the run never killed, bit for bit."
    p = subprocess.run([sys.executable, "bench/kill_resume.py", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [l for l in p.stdout.splitlines() if l.startswith("| 8 |") or l.startswith("| 5 |")]
    assert rows == ["| 5 | between steps | 4 | 1 | 0 | 0 | equal | equal | equal | equal | equal |",
                    "| 8 | mid-write | 4 | 4 | 1 | 0 | equal | equal | equal | equal | equal |"], p.stdout
    assert "| 2/2 |" in p.stdout


def _fail_half_way(monkeypatch, after: int = 0):
    "torch.save writes half of its bytes and then finds the disk full, from the `after`-th call on; returns the call count."
    save, calls = torch.save, []
    def full_disk(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) <= after or not hasattr(f, "write"): return save(obj, f, *a, **kw)
        buf = io.BytesIO(); save(obj, buf, *a, **kw)
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2]); f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", full_disk)
    return calls


def test_a_write_that_fails_half_way_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    ck = tmp_path / "checkpoints" / "last.ckpt"
    atomic_save({"w": torch.arange(1000.0), "global_step": 4}, ck)
    before = ck.read_bytes()
    _fail_half_way(monkeypatch)
    with pytest.raises(RunDirError, match=f"could not write checkpoint {ck}: No space left on device; the previous last.ckpt, if any, is unchanged"):
        atomic_save({"w": torch.zeros(1000), "global_step": 8}, ck)
    assert ck.read_bytes() == before and os.listdir(ck.parent) == ["last.ckpt"]   # no temporary file left
    assert torch.load(ck, weights_only=True)["global_step"] == 4


def test_a_full_disk_mid_run_stops_with_one_line_and_a_whole_checkpoint(tmp_path, monkeypatch, capsys):
    "The disk fills after the first checkpoint (best.ckpt and last.ckpt at step 2): the run stops at the step-4 write."
    run = tmp_path / "run"
    _fail_half_way(monkeypatch, after=2)
    rc = main(["train", "--config", "digits", "--run-dir", str(run), "--no-judge", *RUN, "trainer.max_steps=6",
               "lightning.checkpoint_every_n_steps=2"])
    err = [l for l in capsys.readouterr().err.splitlines() if not l.startswith("INFO: ")]   # Lightning's device lines
    assert rc == 2 and err == [f"diffexplore: error: could not write checkpoint {run / 'checkpoints' / 'best.ckpt'}: No space left on device; "
                               "the previous best.ckpt, if any, is unchanged"], err
    monkeypatch.undo()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]   # no partial file, no interrupted.ckpt


def test_a_kills_partial_file_is_removed_by_the_next_run(tmp_path):
    ck = tmp_path / "checkpoints"; ck.mkdir(parents=True)
    (ck / ".last.ckpt.abc123.part").write_bytes(b"PK\x03\x04 half a checkpoint")
    rc = main(["train", "--config", "digits", "--run-dir", str(tmp_path), "--no-judge", *RUN, "trainer.max_steps=1"])
    assert rc == 0 and not list(ck.glob(PARTIAL)) and (ck / "last.ckpt").is_file()


def test_a_run_dir_under_a_file_is_refused_before_anything_is_built(tmp_path, monkeypatch, capsys):
    f = tmp_path / "notes.txt"; f.write_text("a file")
    import diffexplore.cli as cli
    monkeypatch.setattr(cli, "build_data", lambda *a: pytest.fail("the data was built before the run dir was checked"))
    assert main(["train", "--config", "digits", "--run-dir", str(f / "run"), *RUN]) == 2
    assert capsys.readouterr().err == f"diffexplore: error: run_dir='{f / 'run'}' cannot be created: {f} is a file, not a folder\n"


def test_a_read_only_run_dir_is_refused_before_anything_is_built(tmp_path, monkeypatch, capsys):
    "chmod 555 where it binds; as root (every permission check passes) the folder refuses new files through a stand-in."
    ro = tmp_path / "ro"; ro.mkdir()
    import diffexplore.cli as cli, tempfile
    monkeypatch.setattr(cli, "build_data", lambda *a: pytest.fail("the data was built before the run dir was checked"))
    if os.geteuid() != 0: ro.chmod(0o555)
    else:
        real = tempfile.TemporaryFile
        def refuse(*a, dir=None, **kw):
            if Path(dir).resolve().is_relative_to(ro): raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return real(*a, dir=dir, **kw)
        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    try: rc = main(["train", "--config", "digits", "--run-dir", str(ro / "run"), *RUN])
    finally: ro.chmod(0o755)
    err = capsys.readouterr().err
    assert rc == 2 and err == f"diffexplore: error: run_dir='{ro / 'run'}' is not writable: Permission denied ({ro})\n", err
    monkeypatch.undo(); check_run_dir(ro / "run")   # writable again: no error


# --- the live view --------------------------------------------------------------------------------------------------
def test_a_view_that_fails_mid_training_changes_nothing_and_recovers():
    "Figure updates fail at steps 5-12 (plotly errors); training ends with the same weights as without the view, one warning."
    import lightning.pytorch as pl
    from diffexplore.live import LiveTrainingView
    from test_live import toy_engine, toy_batches, trainer
    def run(*cbs):
        pl.seed_everything(3, verbose=False)
        m = toy_engine(); t = trainer(30, *cbs); t.fit(m, train_dataloaders=toy_batches())
        return t.global_step, torch.cat([p.detach().flatten() for p in m.parameters()])
    view = LiveTrainingView(sample_every_n_steps=None, min_interval_s=0, max_draw_fraction=1)   # a redraw about every step
    restyle, drawn, refused = view.fig.plotly_restyle, [], []
    def flaky(*a, **kw):
        step = view.steps[-1] if view.steps else 0
        if 5 <= step <= 12: refused.append(step); raise ValueError(f"plotly refused the update at step {step}")
        drawn.append(step); return restyle(*a, **kw)
    view.fig.plotly_restyle = flaky
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with_view = run(view)
    assert with_view[0] == 30 and torch.equal(with_view[1], run()[1])
    assert len(refused) >= 2 and view.errors == len(refused) and str(view.last_error) == f"plotly refused the update at step {refused[-1]}"
    assert len([w for w in caught if "LiveTrainingView" in str(w.message)]) == 1
    assert drawn[-1] == 30 and list(view.traces["loss"].x) == list(range(1, 31))   # drawing again after the failures
    assert f"{view.errors} view errors" in view.status.value


def test_a_grid_that_fails_to_show_is_dropped_once():
    "A sample grid whose image cannot be encoded: one error, and the later redraws (curves, status) go on."
    import numpy as np
    from diffexplore.live import LiveTrainingView
    from test_live import toy_engine, toy_batches, trainer
    view = LiveTrainingView(sample_every_n_steps=None, min_interval_s=0, max_draw_fraction=1)
    class BadGrid(__import__("lightning").pytorch.Callback):
        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step == 3: view._grid, view._grid_dirty = np.zeros((4, 4, 3)), True   # float64 pixels: PIL refuses
    with pytest.warns(RuntimeWarning, match="LiveTrainingView: _draw raised"):
        t = trainer(10, BadGrid(), view); t.fit(toy_engine(), train_dataloaders=toy_batches())
    assert t.global_step == 10 and view.errors == 1 and view.pushes >= 1 and not view._grid_dirty   # not tried again
    assert list(view.traces["loss"].x) == list(range(1, 11)) and "step 10" in view.status.value


def test_an_export_that_fails_half_way_leaves_the_old_file(tmp_path, monkeypatch):
    "`atomic_write` (exports, post-hoc checkpoints): a write that fails half-way leaves the previous file and no temporary one."
    from diffexplore.cli import atomic_write
    out = tmp_path / "w.safetensors"
    atomic_write(out, lambda f: f.write(b"old"), "export")
    def half(f): f.write(b"ne"); raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(RunDirError, match=f"could not write export {out}: No space left on device"):
        atomic_write(out, half, "export")
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["w.safetensors"]


def test_a_diverged_run_and_a_stopped_study_end_in_one_line(monkeypatch, capsys):
    "`main`: a NaN loss (`NonFiniteLossError`, naming step and σ) is one line, exit 2; SIGTERM in a study says how to continue."
    import diffexplore.cli as cli
    from diffexplore.engine import NonFiniteLossError
    def diverged(args): raise NonFiniteLossError("non-finite loss at global step 5: nan at sigma=[0.3]")
    monkeypatch.setattr(cli, "_command", diverged)
    assert main(["train", "--config", "digits"]) == 2
    assert capsys.readouterr().err.strip() == "diffexplore: error: non-finite loss at global step 5: nan at sigma=[0.3]"
    SIGTERMException = type("SIGTERMException", (Exception,), {})
    def stopped(args): raise SIGTERMException()
    monkeypatch.setattr(cli, "_command", stopped)
    assert main(["study", "--config", "study_digits", "--allow-module", "mypkg"]) == 143
    assert "run the same command again to continue" in capsys.readouterr().err


def test_metrics_csv_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write of metrics.csv that fails half way (a kill, a full disk) leaves the rows of the last save: Lightning's CSV
    writer appends in place, and rewrites the file in place when a column is added, so a kill there emptied it."""
    from diffexplore.engine import KeepingCSVLogger
    log = KeepingCSVLogger(save_dir=str(tmp_path), name="", version="")
    for s in range(5): log.log_metrics({"train/loss": 1.0 / (s + 1)}, step=s)
    log.save()
    f = tmp_path / "metrics.csv"; before = f.read_text()
    assert len(before.splitlines()) == 6
    log.log_metrics({"train/loss": 0.1, "train/new_column": 2.0}, step=5)     # a new column: the whole file is rewritten
    def dies(fd): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", dies)
    with pytest.raises(RunDirError, match=f"could not write metrics {f}: No space left on device"): log.save()
    monkeypatch.undo()
    assert f.read_text() == before and not list(tmp_path.glob(PARTIAL))
    log.save()                                                                  # the rows not written are written now
    lines = f.read_text().splitlines()
    assert len(lines) == 7 and lines[0] == "step,train/loss,train/new_column" and lines[-1] == "5,0.1,2.0", lines


def test_a_disk_without_room_for_the_first_checkpoints_is_refused_before_step_0(tmp_path, monkeypatch, capsys):
    "The free space is checked against `cli.checkpoint_bytes` before the first step, and the estimate is the real size to 10 %."
    import shutil
    from diffexplore import cli
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=2**20))   # 1 MiB free
    run = tmp_path / "run"
    rc = main(["train", "--config", "digits", "--run-dir", str(run), "--no-judge", *RUN, "trainer.max_steps=2"])
    err = [l for l in capsys.readouterr().err.splitlines() if not l.startswith("INFO: ")]
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"diffexplore: error: run_dir='{run}': its disk has 1.0 MiB free, "
                                                           "and the run's checkpoints need about"), err
    assert not run.exists()
    monkeypatch.undo()
    assert main(["train", "--config", "digits", "--run-dir", str(run), "--no-judge", *RUN, "trainer.max_steps=2"]) == 0
    last = run / "checkpoints" / "last.ckpt"
    assert abs(cli.checkpoint_bytes(cli.load_engine(last)) / last.stat().st_size - 1) < 0.1
