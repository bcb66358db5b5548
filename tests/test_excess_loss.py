"""The excess loss over the exact floor while training (`engine.ExcessLoss`): a short digits run through the CLI writes
floor.json, logs floor/eval/excess per σ bucket and reports them in summary.json; the floor lies below the trained
loss; a resumed run reuses the cached floor; `lightning.floor_every_n_steps=0` turns it off; the evaluation runs only
every N steps."""
import contextlib, csv, io, json, shutil
from pathlib import Path
import pytest
import torch
import lightning.pytorch as pl
import diffexplore.engine as engine_mod
from diffexplore.engine import ExcessLoss, DiffusionEngine, weighted_errors, sigma_bucket_names
from diffexplore.cli import main
from diffexplore.denoiser import Denoiser
from diffexplore.scalings import EDMScaling
from diffexplore.weightings import EDMWeighting
from diffexplore.sigma_sampling import EDMSampling
from diffexplore.loss import StandardDiffusionLoss, LearnedWeightingLoss
from diffexplore.networks import build_unet, OpenAIWrapper
from _runs import TINY

CONFIG = Path(__file__).parent.parent / "configs" / "digits.yaml"
QUICK = [*TINY, "lightning.sample_every_n_steps=0", "lightning.judge_samples=0", "lightning.checkpoint_every_n_steps=15"]
BUCKETS = sigma_bucket_names()


def _train(run, *overrides):
    err = io.StringIO()
    with contextlib.redirect_stderr(err): rc = main(["train", "--config", str(CONFIG), "--run-dir", str(run), *QUICK, *overrides])
    assert rc == 0, err.getvalue()[-2000:]
    return json.loads((run / "summary.json").read_text())


def _rows(run): return list(csv.DictReader((run / "metrics.csv").open()))


@pytest.fixture(scope="module")
def run40(tmp_path_factory):
    run = tmp_path_factory.mktemp("excess") / "run"
    return run, _train(run, "trainer.max_steps=30", "lightning.floor_every_n_steps=15", "model.params.lr=3e-3")


def test_floor_json_and_logged_columns(run40):
    run, _ = run40
    floor = json.loads((run / "floor.json").read_text())
    assert floor["key"]["n_images"] == 1438 and floor["key"]["conditional"] and floor["key"]["p_uncond"] == 0.1
    assert floor["key"]["sigma_sampler"] == "EDMSampling(p_mean=-1.2, p_std=1.2)" and floor["key"]["n_per_bucket"] == 2000
    assert list(floor["buckets"]) == BUCKETS
    rows = _rows(run)
    for name in ("floor", "eval_loss", "eval_loss_ema", "excess", "excess_ema", "excess_stderr", "excess_ema_stderr"):
        for b in BUCKETS: assert f"{name}_sigma/{b}" in rows[0], f"{name}_sigma/{b}"
    steps = [int(r["step"]) for r in rows if r.get(f"excess_sigma/{BUCKETS[2]}")]
    assert steps == [0, 15, 30]   # a new run is scored untrained, then every 15 steps (the last one once)
    assert any(r.get(f"loss_sigma/{BUCKETS[2]}") for r in rows)   # the training-batch buckets stay


def test_excess_is_eval_minus_floor_and_falls(run40):
    run, _ = run40
    rows = [r for r in _rows(run) if r.get(f"excess_sigma/{BUCKETS[3]}")]
    for r in rows:
        for b in BUCKETS:
            assert float(r[f"excess_sigma/{b}"]) == pytest.approx(float(r[f"eval_loss_sigma/{b}"]) - float(r[f"floor_sigma/{b}"]), abs=1e-6)
    for b in BUCKETS[2:]:   # σ >= 0.1, where 30 steps teach something: the excess falls from the untrained model's
        assert float(rows[-1][f"excess_sigma/{b}"]) < float(rows[0][f"excess_sigma/{b}"]), b


def test_floor_is_below_the_trained_training_loss(run40):
    "The issue's check: per bucket, floor ≤ trained training loss (the last logged `loss_sigma/…` values), within error."
    run, summary = run40
    rows = _rows(run)
    for b in BUCKETS:
        train = [float(r[f"loss_sigma/{b}"]) for r in rows if r.get(f"loss_sigma/{b}") and int(r["step"]) >= 15]
        s = summary["excess_loss"]["buckets"][b]
        if len(train) >= 2:
            mean, se = sum(train) / len(train), torch.tensor(train).std().item() / len(train) ** 0.5
            assert s["floor"] <= mean + 2 * se + 2 * s["floor_stderr"], (b, s["floor"], train)
        assert s["floor"] <= s["eval_loss"] + 2 * s["excess_stderr"], (b, s)
        assert s["floor"] <= s["eval_loss_ema"] + 2 * s["excess_ema_stderr"], (b, s)


def test_summary_reports_the_final_excess(run40):
    _, summary = run40
    ex = summary["excess_loss"]
    assert ex["step"] == 30 and ex["floor_source"] == "computed" and ex["evaluations"] == 3 and ex["floor_seconds"] > 0
    assert list(ex["buckets"]) == BUCKETS
    for b in BUCKETS:
        assert {"floor", "floor_stderr", "eval_loss", "eval_loss_stderr", "excess", "excess_stderr",
                "eval_loss_ema", "eval_loss_ema_stderr", "excess_ema", "excess_ema_stderr"} <= set(ex["buckets"][b])
        assert ex["buckets"][b]["excess_stderr"] > 0


def test_resume_reuses_the_cached_floor(run40, tmp_path, monkeypatch):
    run, _ = run40
    copy = tmp_path / "run"; shutil.copytree(run, copy)
    def no_floor(*a, **k): raise AssertionError("the floor was computed again on resume")
    monkeypatch.setattr(engine_mod, "bucket_floor", no_floor)
    summary = _train(copy, "trainer.max_steps=45", "lightning.floor_every_n_steps=15", "model.params.lr=3e-3",
                     "--resume", str(copy / "checkpoints" / "last.ckpt"))
    ex = summary["excess_loss"]
    assert ex["floor_source"] == "checkpoint" and ex["step"] == 45
    old = json.loads((run / "floor.json").read_text())["buckets"]
    assert {b: r["floor"] for b, r in ex["buckets"].items()} == {b: r["floor"] for b, r in old.items()}
    steps = [int(r["step"]) for r in _rows(copy) if r.get(f"excess_sigma/{BUCKETS[2]}")]
    assert steps == [0, 15, 30, 45]   # the first run's rows before step 30 kept; the resumed run scored at its start


def test_setting_zero_turns_it_off(tmp_path):
    run = tmp_path / "off"
    summary = _train(run, "trainer.max_steps=2", "lightning.floor_every_n_steps=0", "trainer.log_every_n_steps=1")
    assert summary["excess_loss"] == {"off": "lightning.floor_every_n_steps=0"}
    assert not (run / "floor.json").exists()
    assert not any(k.startswith(("floor_sigma/", "excess_sigma/")) for k in _rows(run)[0])


def _engine(loss_fn=None):
    return DiffusionEngine(OpenAIWrapper(build_unet("tiny", in_channels=1, sample_size=8)), Denoiser(EDMScaling(0.5)),
                           loss_fn or StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)), lr=1e-3)


def _images(n=48): return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5


def test_evaluation_runs_only_every_n_steps(monkeypatch):
    "The training step gains nothing: `evaluate` (the only work with host reads) runs at the start, every 2 steps and at the end."
    calls, real = [], ExcessLoss.evaluate
    def counting(self, engine): calls.append(self._trainer_step); return real(self, engine)
    monkeypatch.setattr(ExcessLoss, "evaluate", counting)
    cb = ExcessLoss(every_n_steps=2, n_per_bucket=50, k_per_bucket=4, images=_images())
    class Step(pl.Callback):
        def on_train_batch_end(self, trainer, *a): cb._trainer_step = trainer.global_step
        def on_train_start(self, trainer, *a): cb._trainer_step = trainer.global_step
    data = torch.utils.data.DataLoader([{"jpg": x} for x in _images()], batch_size=8)
    t = pl.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[Step(), cb])
    t.fit(_engine(), data)
    assert calls == [0, 2, 4, 5]


def test_learned_weighting_is_scored_on_its_plain_weighted_error():
    lw = LearnedWeightingLoss(EDMSampling(), EDMWeighting(0.5), logvar_channels=8)
    with torch.no_grad(): lw.logvar.weight.fill_(0.3)   # u ≠ 0: the learned objective differs from λ·mean((D − x0)²)
    e = _engine(lw)
    g = torch.Generator().manual_seed(1)
    x0, s, n = _images(6), torch.logspace(-1.5, 1.5, 6), torch.randn(6, 1, 8, 8, generator=g)
    plain = StandardDiffusionLoss.loss(lw, e.model, e.denoiser, x0, s, {}, noise=n)
    torch.testing.assert_close(weighted_errors(e, x0, s, n).float(), plain.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(lw.loss(e.model, e.denoiser, x0, s, {}, noise=n).detach(), plain.detach())


def test_an_l1_loss_is_refused_by_name():
    e = _engine(StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5), loss_type="l1"))
    t = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[ExcessLoss(images=_images())])
    with pytest.raises(ValueError, match="ExcessLoss: loss_type='l1'"):
        t.fit(e, torch.utils.data.DataLoader([{"jpg": x} for x in _images(8)], batch_size=4))


def test_bf16_true_training_is_scored_in_the_network_dtype():
    "Under Lightning's bf16-true (bf16 weights) the evaluation runs, with images and noise in the network's dtype as in training."
    cb = ExcessLoss(every_n_steps=0, n_per_bucket=20, k_per_bucket=4, images=_images())
    t = pl.Trainer(max_steps=2, accelerator="cpu", precision="bf16-true", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])
    t.fit(_engine(), torch.utils.data.DataLoader([{"jpg": x} for x in _images(16)], batch_size=8))
    assert [h["step"] for h in cb.history] == [0, 2]
    assert all(r["eval_loss"] > 0 for r in cb.history[-1]["buckets"].values())
