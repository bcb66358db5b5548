"The main job end to end on CPU: a 20-step run through the CLI, sampling from its checkpoint, exact resume, bad input."
import contextlib, io, json, csv, warnings
from pathlib import Path
import pytest
import numpy as np
import torch
from diffexplore.cli import main, load_config, train, load_engine, read_metrics, ConfigError
from _runs import TINY, NO_FLOOR

CONFIG = Path(__file__).parent.parent / "configs" / "digits.yaml"
TINY = [*TINY, *NO_FLOOR]   # the floor evaluations are tested in test_excess_loss.py


@pytest.fixture(scope="module")
def run20(tmp_path_factory):
    run = tmp_path_factory.mktemp("run20")
    err = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        rc = main(["train", "--config", str(CONFIG), "--run-dir", str(run), "trainer.max_steps=20",
                   "lightning.sample_every_n_steps=10", "lightning.checkpoint_every_n_steps=10", "lightning.judge_samples=50", *TINY])
    assert rc == 0, err.getvalue()[-2000:]
    RUN20_WARNINGS[:] = [str(w.message) for w in caught]
    RUN20_STDERR[:] = [err.getvalue()]
    return run

RUN20_WARNINGS, RUN20_STDERR = [], []


def test_the_judge_shows_its_progress(run20):
    "After training, the judge is not silent: a bar counts the samples it generates (50 asked: 5 per class)."
    assert "judge: generating samples:   0%|          | 0/50 [" in RUN20_STDERR[0], RUN20_STDERR[0][-1500:]  # total and ETA

def test_a_fresh_run_does_not_warn_about_missing_checkpoints(run20):
    # Lightning reads ckpt_path=None as "last" when an on-exception checkpoint is set; a fresh run has none
    assert not [w for w in RUN20_WARNINGS if "ckpt_path" in w], RUN20_WARNINGS


def test_twenty_step_run_writes_everything(run20):
    for f in ("config.yaml", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "samples/step_000010.png",
              "samples/step_000020.png", "metrics.csv", "loss.html", "judge.json", "summary.json"):
        assert (run20 / f).is_file(), f
    summary = json.loads((run20 / "summary.json").read_text())
    assert summary["global_step"] == 20 and summary["final_loss"] > 0
    rows = list(csv.DictReader((run20 / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 2 and all(l == l for l in losses)   # logged every 10 steps, finite
    assert any(k.startswith("loss_sigma/") for k in rows[0])
    judge = json.loads((run20 / "judge.json").read_text())
    assert judge["n"] >= 50 and 0 <= judge["accuracy"] <= 1 and judge["real_accuracy"] > 0.95


def test_sample_from_checkpoint(run20, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(run20 / "checkpoints/last.ckpt"), "--n", "6", "--class-label", "3",
                 "--cfg-scale", "2.5", "--sampler", "DPMPP2MSampler", "--num-steps", "5", "--out", str(out)]) == 0
    from PIL import Image
    assert Image.open(out).size[0] > 64
    assert main(["sample", "--ckpt", str(run20 / "checkpoints/last.ckpt"), "--n", "2", "--class-label", "10",
                 "--out", str(tmp_path / "x.png")]) == 2   # class label out of range: a clear error, exit 2


def test_sample_in_batches(run20, tmp_path, monkeypatch):
    "`cli.sample` draws in batches of `batch_size`, batch i with seed + i: 5 in batches of 2 are 5 images, the first two those of `n=2`."
    import torch
    from diffexplore import cli, data
    grids = []
    monkeypatch.setattr(data, "save_image_grid", lambda imgs, out, nrow: grids.append(imgs) or Path(out))
    ck = run20 / "checkpoints/last.ckpt"
    cli.sample(ck, 5, tmp_path / "a.png", num_steps=2, batch_size=2, progress=True)
    cli.sample(ck, 2, tmp_path / "b.png", num_steps=2, batch_size=2)
    assert grids[0].shape[0] == 5 and torch.equal(grids[0][:2], grids[1]) and not torch.equal(grids[0][2:4], grids[1])


def test_class_label_out_of_range_message(run20, capsys, tmp_path):
    main(["sample", "--ckpt", str(run20 / "checkpoints/last.ckpt"), "--n", "2", "--class-label", "-1", "--out", str(tmp_path / "x.png")])
    assert "class_label must be in [0, 9]; got class_label=-1" in capsys.readouterr().err


def test_unknown_config_key_is_named(capsys):
    assert main(["train", "--config", str(CONFIG), "trainer.max_stepz=3"]) == 2
    assert "trainer.max_stepz" in capsys.readouterr().err and "trainer.max_steps" in "trainer.max_steps"


def test_bad_override_value_is_named_by_its_key_and_leaves_no_run_dir(tmp_path, capsys):
    "A value a constructor refuses is named by the key the user typed; nothing is written for a run that never started."
    key = "model.params.loss_fn_config.params.sigma_sampler_config.params.p_mean"
    assert main(["train", "--config", str(CONFIG), "--run-dir", str(tmp_path / "run"), f"{key}=abc"]) == 2
    assert f"{key}: could not convert string to float: 'abc'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_channel_mismatch_caught_before_training(tmp_path):
    cfg = load_config(CONFIG, [*TINY, "model.params.network_config.params.diffusion_model.params.in_channels=3"])
    with pytest.raises(ConfigError, match="in_channels=3"):
        train(cfg, tmp_path, judge=False)
    assert not (tmp_path / "checkpoints").exists()


def _state(ckpt):
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    sd = ck["state_dict"]
    raw = {k: v for k, v in sd.items() if k.startswith("model.")}
    ema = {k: v for k, v in sd.items() if k.startswith("model_ema.")}
    opt_steps = [s["step"] for s in ck["optimizer_states"][0]["state"].values()]
    return ck["global_step"], raw, ema, opt_steps, ck["lr_schedulers"][0]


@pytest.mark.parametrize("half", [3, 4])   # 2 batches/epoch: resume mid-epoch (3), and at an epoch's end (4)
def test_resume_is_exact(tmp_path, half):
    "half steps + save/resume + the rest == 6 straight steps: raw weights, EMA weights and counter, optimizer, schedule."
    # At an epoch's end the resumed run used to start the next epoch's data loader once more than the straight run,
    # and each start drew its base seed from the global RNG: the noise of every later step differed.
    common = [*TINY, "data.params.batch_size=512", "lightning.sample_every_n_steps=0", "lightning.judge_samples=0",
              f"lightning.checkpoint_every_n_steps={half}", "model.params.warmup_steps=4", "trainer.log_every_n_steps=1"]
    straight, part = tmp_path / "straight", tmp_path / "part"
    train(load_config(CONFIG, [*common, "trainer.max_steps=6"]), straight, judge=False)
    train(load_config(CONFIG, [*common, f"trainer.max_steps={half}"]), part, judge=False)
    train(load_config(CONFIG, [*common, "trainer.max_steps=6"]), part, resume=part / "checkpoints/last.ckpt", judge=False)
    s1, s2 = _state(straight / "checkpoints/last.ckpt"), _state(part / "checkpoints/last.ckpt")
    assert s1[0] == s2[0] == 6
    for k in s1[1]: assert torch.equal(s1[1][k], s2[1][k]), k
    for k in s1[2]: assert torch.equal(s1[2][k], s2[2][k]), k
    assert int(s1[2]["model_ema.num_updates"]) == 6
    assert [float(x) for x in s1[3]] == [float(x) for x in s2[3]] == [6.0] * len(s1[3])
    assert s1[4]["last_epoch"] == s2[4]["last_epoch"]
    m1, m2 = read_metrics(straight), read_metrics(part)   # the resumed run's metrics.csv holds the whole run
    np.testing.assert_array_equal(m1["train/loss"][0], m2["train/loss"][0]); assert len(m1["train/loss"][0]) == 6
    np.testing.assert_array_equal(m1["train/loss"][1], m2["train/loss"][1])


@pytest.mark.parametrize("max_steps, every, expected", [(4, 2, [2, 4]), (5, 2, [2, 4, 5])])
def test_last_checkpoint_is_written_once_per_step(tmp_path, monkeypatch, max_steps, every, expected):
    # ModelCheckpoint(save_last=True) writes last.ckpt on multiples of checkpoint_every_n_steps; FinalCheckpoint
    # only at a last step that is not one
    import lightning.pytorch as pl
    saves, save = [], pl.Trainer.save_checkpoint
    def recording(self, filepath, *a, **kw):
        if Path(filepath).name == "last.ckpt": saves.append(self.global_step)
        return save(self, filepath, *a, **kw)
    monkeypatch.setattr(pl.Trainer, "save_checkpoint", recording)
    rc = main(["train", "--config", str(CONFIG), "--run-dir", str(tmp_path / "r"), f"trainer.max_steps={max_steps}",
               f"lightning.checkpoint_every_n_steps={every}", "lightning.sample_every_n_steps=0", "lightning.judge_samples=0", *TINY])
    assert rc == 0 and saves == expected

def test_existing_run_dir_is_not_overwritten(run20, capsys):
    assert main(["train", "--config", str(CONFIG), "--run-dir", str(run20), "trainer.max_steps=2", *TINY]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_keeps_a_checkpoint_that_resumes(tmp_path, sig):
    "Ctrl-C (SIGINT) or a kill (SIGTERM) mid-run leaves interrupted.ckpt; --resume continues from its step."
    import signal, subprocess, sys, time
    run = tmp_path / "run"
    args = [sys.executable, "-c", "import sys; from diffexplore.cli import main; sys.exit(main(sys.argv[1:]))",
            "train", "--config", str(CONFIG), "--run-dir", str(run), "--no-judge", *TINY, "trainer.max_steps=100000",
            "lightning.sample_every_n_steps=0", "lightning.checkpoint_every_n_steps=100000", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false"]
    # A shell starts background jobs with SIGINT ignored, and the child would inherit that (`... &` in a script):
    # give the run the default disposition, as a terminal's Ctrl-C finds it.
    err = (tmp_path / "stderr.txt").open("w")
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline, m = time.time() + 240, run / "metrics.csv"
        while time.time() < deadline:   # wait until a few steps are logged
            if m.exists() and len(m.read_text().splitlines()) > 4: break
            time.sleep(0.5)
        assert m.exists() and len(m.read_text().splitlines()) > 4, "the run logged no steps within 240 s"
        p.send_signal(getattr(signal, sig))
        p.wait(timeout=120)
    finally:
        if p.poll() is None: p.kill()
    ck = run / "checkpoints" / "interrupted.ckpt"
    assert ck.is_file()
    err.close(); last = (tmp_path / "stderr.txt").read_text().strip().splitlines()[-1]   # Ctrl-C once ended in Lightning's lines, exit 1
    how, rc = ("Ctrl-C", 130) if sig == "SIGINT" else ("SIGTERM", 143)
    assert (p.returncode, last) == (rc, f"diffexplore: stopped by {how}; continue with --resume {ck}"), (p.returncode, last)
    step = torch.load(ck, map_location="cpu", weights_only=True)["global_step"]
    assert step >= 1
    summary = train(load_config(run / "config.yaml", [f"trainer.max_steps={step + 2}"]), run, resume=ck, judge=False)
    assert summary["global_step"] == step + 2


def test_log_images_like_sgm(run20):
    engine = load_engine(run20 / "checkpoints" / "last.ckpt")
    from diffexplore.data import DigitsDataModule
    batch = next(iter(DigitsDataModule(batch_size=16).train_dataloader()))
    imgs = engine.log_images(batch, N=4)
    assert set(imgs) == {"inputs", "samples"}       # pixel space: no reconstructions
    assert imgs["inputs"].shape == imgs["samples"].shape == (4, 1, 8, 8)
    assert imgs["samples"].min() >= -1 and imgs["samples"].max() <= 1


def test_train_output_has_no_library_noise(tmp_path, capfd, caplog):
    "`diffexplore train` prints no Lightning tip, skipped-val-loop notice or library deprecation; `--verbose` keeps them."
    import logging
    from diffexplore.cli import quiet_libraries, QUIETED
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        assert main(["train", "--config", str(CONFIG), "--run-dir", str(tmp_path / "q"), "--no-judge", "trainer.max_steps=3", *TINY]) == 0
    lines = [r.getMessage() for r in caplog.records] + capfd.readouterr().err.splitlines()
    assert any("GPU available" in l for l in lines)                        # Lightning's device lines stay
    assert not [l for l in lines if any(t in l for t in ("Tip:", "validation_step", "set_vital", "LeafSpec"))], lines
    log, seen = logging.getLogger("lightning.pytorch.utilities.rank_zero"), []
    handler = logging.Handler(); handler.emit = lambda r: seen.append(r.getMessage()); log.addHandler(handler)
    try:
        for verbose in (False, True):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with quiet_libraries(verbose): log.warning("💡 Tip: try our cloud"); warnings.warn(QUIETED[0], UserWarning)
            seen.append(len(caught))
    finally: log.removeHandler(handler)
    assert seen == [0, "💡 Tip: try our cloud", 1], seen


def test_every_cli_option_has_help():
    "`diffexplore train --help` and `diffexplore sample --help` describe every option."
    import argparse
    from diffexplore.cli import _parser
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("train", "sample"):
        missing = [a.dest for a in sub.choices[name]._actions if not a.help]
        assert not missing, (name, missing)


def test_interrupt_before_the_first_step_saves_nothing(tmp_path):
    "InterruptCheckpoint keeps nothing for a run stopped before its first step (a trainer stand-in that must not save)."
    import types
    from diffexplore.engine import InterruptCheckpoint
    def no_save(*args, **kwargs): raise AssertionError("saved a checkpoint before the first step")
    InterruptCheckpoint(dirpath=str(tmp_path)).on_exception(types.SimpleNamespace(global_step=0, save_checkpoint=no_save), None, RuntimeError())
    assert list(tmp_path.iterdir()) == []


def test_summary_explains_the_ema_warm_up(run20):
    "20 steps: the last EMA update used min(0.999, 21/30) = 0.7; the summary says why, beside the configured 0.999."
    s = json.loads((run20 / "summary.json").read_text())
    assert s["ema_decay"] == pytest.approx(21 / 30) and s["ema_decay_rate"] == 0.999
    assert "EMA warm-up" in s["ema_decay_note"] and "LitEma" in s["ema_decay_note"] and "8990" in s["ema_decay_note"]
    assert s["lr"] == 1e-3 and s["lr_rule"] == "model.params.lr"
    rows = list(csv.DictReader((run20 / "metrics.csv").open()))
    logged = [float(r["train/ema_decay"]) for r in rows if r.get("train/ema_decay")]
    assert logged[-1] == pytest.approx(s["ema_decay"])                       # the value the run logged last


def test_progress_bar_counts_the_runs_steps(tmp_path):
    "The bar's total is max_steps (not one epoch's batches), it ends at max_steps, and it names the epoch."
    import contextlib, io
    from diffexplore.cli import make_trainer, build_engine, build_data
    from diffexplore.engine import LossProgressBar
    cfg = load_config(CONFIG, [*TINY, "data.params.batch_size=512", "trainer.max_steps=5", "lightning.sample_every_n_steps=0"])
    trainer = make_trainer(cfg, tmp_path, num_classes=10)
    bar = next(c for c in trainer.callbacks if isinstance(c, LossProgressBar))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        trainer.fit(build_engine(cfg), datamodule=build_data(cfg))             # 2 batches an epoch: 3 epochs
    assert (bar.train_progress_bar.total, bar.train_progress_bar.n) == (5, 5)
    assert "Epoch 2" in str(bar.train_progress_bar) and "5/5" in str(bar.train_progress_bar)
    assert "/5 [" in out.getvalue() and "/2 [" not in out.getvalue()          # never a per-epoch total; with an ETA ("<")
    assert "<" in str(bar.train_progress_bar)


def test_config_by_name(tmp_path, capsys, monkeypatch):
    "`--config digits` names the shipped config (the package diffexplore.configs, else the checkout's configs/)."
    import importlib.resources
    from diffexplore import cli
    assert load_config("digits") == load_config(CONFIG)
    assert main(["train", "--config", "digitz"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'digitz'" in err and "shipped: digits, digits_edm2, digits_flow, digits_minsnr, fashion_mnist" in err
    installed = tmp_path / "pkg"; installed.mkdir(); (installed / "mine.yaml").write_text(CONFIG.read_text())
    monkeypatch.setattr(importlib.resources, "files", lambda pkg: installed)   # an installed package's folder
    assert list(cli.shipped_configs()) == ["mine"] and cli.resolve_config("mine") == installed / "mine.yaml"
    def not_installed(pkg): raise ModuleNotFoundError(pkg)
    monkeypatch.setattr(importlib.resources, "files", not_installed)          # a checkout: configs/ beside the package
    assert cli.resolve_config("digits") == CONFIG.resolve()


@pytest.mark.parametrize("argv", [["train", "--config", "/nonexistent.yaml"], ["train", "--config", "digitz"],
                                  ["train", "--config", "digits", "trainer.max_steps"]])
def test_cli_errors_come_before_torch_is_imported(argv):
    "A bad config path or name, or an override without `=`, is reported without importing torch (0.2-0.3 s here, was ~11 s)."
    import subprocess, sys
    code = "import sys; from diffexplore.cli import main; rc = main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(rc)"
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout.strip() == "False" and p.stderr.startswith("diffexplore: error: "), (p.stdout, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1
