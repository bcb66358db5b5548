"""`lightning.posthoc_ema` in `diffexplore train` and `diffexplore posthoc-ema`: a tiny digits run writes snapshots
and reports them; the reconstructed checkpoint holds `posthoc_state_dict`'s weights in its raw and EMA slots and
`diffexplore sample` uses it; bad runs and widths end in one line with exit status 2."""
import contextlib, io, json
from pathlib import Path

import pytest
import torch

from diffexplore.cli import main, load_engine
from diffexplore.phema import SIGMA_REL_RANGE, posthoc_state_dict
from _runs import TINY, NO_FLOOR

CONFIG = Path(__file__).parent.parent / "configs" / "digits.yaml"


def _main(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("phema") / "run"
    rc, out, err = _main("train", "--config", CONFIG, "--run-dir", run, *TINY, *NO_FLOOR, "trainer.max_steps=24",
                         "lightning.sample_every_n_steps=0", "lightning.judge_samples=0", "lightning.checkpoint_every_n_steps=12",
                         "lightning.posthoc_ema={sigma_rels: [0.05, 0.10], every_n_steps: 8}", "model.params.lr=3e-3")
    assert rc == 0, err[-2000:]
    return run


def test_train_writes_snapshots_and_reports_them(run):
    summary = json.loads((run / "summary.json").read_text())
    assert summary["posthoc_ema"] == {"dir": str(run / "phema"), "snapshots": [8, 16, 24], "sigma_rels": [0.05, 0.1]}
    assert sorted(p.name for p in (run / "phema").iterdir()) == [f"phema-{t:08d}.safetensors" for t in (8, 16, 24)]


def test_posthoc_checkpoint_holds_the_reconstruction_and_samples(run, tmp_path):
    rc, out, err = _main("posthoc-ema", "--run", run, "--sigma-rel", 0.07, "--out", tmp_path / "p07.ckpt")
    assert rc == 0, err
    assert out.count("\n") == 1 and "sigma_rel=0.07" in out and "step 24" in out and "from 3 snapshots" in out, out
    sd, engine = posthoc_state_dict(run, 0.07), load_engine(tmp_path / "p07.ckpt")
    assert set(sd) == set(engine.model.state_dict())
    for k, v in engine.model.state_dict().items(): assert torch.equal(v, sd[k]), k
    for name, shadow in zip(engine.model_ema._names, engine.model_ema.shadows()): assert torch.equal(shadow, sd[name]), name
    last = load_engine(run / "checkpoints" / "last.ckpt")   # the reconstruction is neither the raw weights nor sgm's EMA
    assert not torch.equal(last.model.state_dict()[name], sd[name]) and not torch.equal(last.model_ema.shadows()[-1], sd[name])
    ck = torch.load(tmp_path / "p07.ckpt", weights_only=False)
    assert ck["posthoc_ema"]["step"] == 24 and ck["posthoc_ema"]["gamma"] == pytest.approx(11.0, abs=1.0) and "optimizer_states" not in ck
    grids = {}
    for flag in ([], ["--no-ema"]):   # both slots hold the reconstruction: the same samples with and without EMA
        png = tmp_path / f"s{len(flag)}.png"
        rc, out, err = _main("sample", "--ckpt", tmp_path / "p07.ckpt", "--n", 4, "--out", png, *flag)
        assert rc == 0 and png.is_file(), err
        grids[len(flag)] = png.read_bytes()
    assert grids[0] == grids[1]


def test_stored_width_and_earlier_step(run, tmp_path):
    "σ_rel 0.10 at step 16 is the step-16 snapshot's own average (to float32 rounding of the solve)."
    from safetensors import safe_open
    rc, _, err = _main("posthoc-ema", "--run", run, "--sigma-rel", 0.1, "--step", 16, "--out", tmp_path / "p10.ckpt")
    assert rc == 0, err
    engine = load_engine(tmp_path / "p10.ckpt")
    with safe_open(str(run / "phema" / "phema-00000016.safetensors"), "pt") as f:
        for k, v in engine.model.named_parameters(): torch.testing.assert_close(v.detach(), f.get_tensor(f"ema1/{k}"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args, needle", [
    (["--sigma-rel", "0.5"], "--sigma-rel must be in [0.01, 0.25]; got --sigma-rel 0.5"),
    (["--sigma-rel", "0.07", "--step", "10"], "step must be a snapshot's step (8, 16, 24); got step=10"),
])
def test_bad_width_or_step(run, tmp_path, args, needle):
    rc, out, err = _main("posthoc-ema", "--run", run, "--out", tmp_path / "x.ckpt", *args)
    assert rc == 2 and needle in err and err.count("\n") == 1 and not (tmp_path / "x.ckpt").exists(), err


def test_run_without_snapshots(tmp_path):
    rc, _, err = _main("posthoc-ema", "--run", tmp_path, "--sigma-rel", "0.07", "--out", tmp_path / "x.ckpt")
    assert rc == 2 and f"--run {tmp_path} has no post-hoc EMA snapshots" in err and err.count("\n") == 1, err


def test_cli_range_is_the_module_range():
    "`_check_posthoc_args` states the range without importing torch; it must be `phema.SIGMA_REL_RANGE`."
    from types import SimpleNamespace
    from diffexplore.cli import _check_posthoc_args, ConfigError
    lo, hi = SIGMA_REL_RANGE
    for bad in (lo * 0.99, hi * 1.01):
        with pytest.raises(ConfigError, match="--sigma-rel must be in"): _check_posthoc_args(SimpleNamespace(sigma_rel=bad, run="/nonexistent"))
    for ok in (lo, hi):
        with pytest.raises(ConfigError, match="run directory not found: --run /nonexistent"): _check_posthoc_args(SimpleNamespace(sigma_rel=ok, run="/nonexistent"))


# --- the explorer (diffexplore.ema_explorer), headless ---------------------------------------------------------------

def test_explorer_rebuilds_weights_redraws_and_judges(run):
    import numpy as np
    from diffexplore.ema_explorer import PostHocEMAExplorer
    ex = PostHocEMAExplorer(load_engine(run / "checkpoints" / "last.ckpt"), run, sigma_rel=0.10, cfg_scale=2.0, per_class=1, judge_samples=40)
    assert ex.fig.data[0].z.shape == (8, 80, 3)   # one row of the 10 classes, 8×8 digits
    g0 = ex.fig.data[0].z.copy()
    ex.sigma_rel_slider.value = 0.04
    sd = posthoc_state_dict(run, 0.04)
    assert all(torch.equal(v, sd[k]) for k, v in ex.engine.model.state_dict().items())
    assert all(torch.equal(s, sd[n]) for n, s in zip(ex.engine.model_ema._names, ex.engine.model_ema.shadows()))
    g1 = ex.fig.data[0].z.copy(); assert not np.array_equal(g0, g1)
    ex.cfg_slider.value = 4.0
    assert ex.engine.sampler.guider.scale == 4.0 and not np.array_equal(g1, ex.fig.data[0].z)
    with contextlib.redirect_stderr(io.StringIO()):
        ex.judge_button.click(); ex.sigma_rel_slider.value = 0.2; ex.judge_button.click(); ex.sigma_rel_slider.value = 0.02; ex.judge_button.click()
    assert list(ex.fig.data[1].x) == [0.02, 0.04, 0.2] and len(ex.fig.data[2].y) == 3 and len(ex.judged) == 3
    assert [j["accuracy"] for j in sorted(ex.judged, key=lambda j: j["sigma_rel"])] == list(ex.fig.data[1].y)
    ex.cfg_slider.value = 1.0   # points are per CFG scale: none judged at 1.0 yet
    assert len(ex.fig.data[1].x) == 0 and repr(ex) == "PostHocEMAExplorer(sigma_rel=0.02, cfg_scale=1.0, judged=3)"


def test_explorer_refuses_a_run_without_snapshots(tmp_path, run):
    from diffexplore.ema_explorer import PostHocEMAExplorer
    engine = load_engine(run / "checkpoints" / "last.ckpt")
    with pytest.raises(FileNotFoundError, match="no post-hoc EMA snapshots"): PostHocEMAExplorer(engine, tmp_path)
    with pytest.raises(ValueError, match="sigma_rel=0.3"): PostHocEMAExplorer(engine, run, sigma_rel=0.3)
