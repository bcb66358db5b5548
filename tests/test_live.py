"LiveTrainingView and fit_in_background on real (toy) training runs; the pure functions behind the widget."
import glob, json, math, os, time, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from diffexplore.live import (LiveTrainingView, BackgroundFit, fit_in_background, ema_smooth, should_push, push_interval,
                              append_row, thin, image_grid, sample_class_labels, _num_classes, _to_floats)
from diffexplore.engine import DiffusionEngine, NonFiniteLossError
from diffexplore.scalings import EDMScaling
from diffexplore.weightings import EDMWeighting
from diffexplore.sigma_sampling import EDMSampling
from diffexplore.denoiser import Denoiser
from diffexplore.loss import StandardDiffusionLoss
from diffexplore.sampling import EulerEDMSampler


# --- the toy engine of nbs/11_engine.ipynb: trains in about a second on CPU ---------------------------------------
class TinyNet(nn.Module):
    "An MLP with sgm's network call F(x, c_noise, cond) for x of shape [B, 1, 2, 2]."
    def __init__(self, width=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, width), nn.SiLU(), nn.Linear(width, 4))
    def forward(self, x, c_noise, cond):
        return self.net(torch.cat([x.flatten(1), c_noise[:, None].to(x.dtype)], dim=1)).view_as(x)

class NaNNet(TinyNet):
    def forward(self, x, c_noise, cond): return super().forward(x, c_noise, cond) * float("nan")

def toy_batches(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.5, 0.5, -0.5, -0.5], [-0.5, 0.5, 0.5, -0.5]])
    x = centers[torch.randint(0, 2, (n,), generator=g)] + 0.05 * torch.randn(n, 4, generator=g)
    return torch.utils.data.DataLoader([{"jpg": xi.view(1, 2, 2)} for xi in x], batch_size=64)

def toy_engine(net=None, **kw):
    return DiffusionEngine(net or TinyNet(), Denoiser(EDMScaling(0.5)), StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)),
                           lr=3e-3, warmup_steps=10, ema_decay_rate=0.99, **kw)

def trainer(max_steps, *callbacks, **kw):
    kw = {"enable_checkpointing": False, **kw}
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=list(callbacks), **kw)

class LossRecorder(pl.Callback):
    def __init__(self): self.losses = []
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx): self.losses.append(outputs["loss"].item())

@pytest.fixture(autouse=True)
def one_thread():
    "Tiny models: one thread is fastest and keeps a shared 2-core machine usable."
    old = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

def wait_for(cond, timeout=60.0):
    t = time.monotonic()
    while not cond() and time.monotonic() - t < timeout: time.sleep(0.01)
    return cond()


# --- pure functions -------------------------------------------------------------------------------------------------
def test_ema_smooth_is_the_debiased_weighted_mean():
    x = np.random.default_rng(1).normal(size=50)
    beta = 0.8
    got, _ = ema_smooth(list(x), beta)
    for t in [0, 1, 9, 49]:
        w = beta ** np.arange(t, -1, -1)                # weights β^(t-i) of x_0 … x_t
        assert math.isclose(got[t], float((w * x[:t + 1]).sum() / w.sum()), rel_tol=1e-12)

def test_ema_smooth_state_and_errors():
    a, st = ema_smooth([1.0, 2.0], 0.5)
    b, _ = ema_smooth([3.0], 0.5, st)
    assert a + b == ema_smooth([1.0, 2.0, 3.0], 0.5)[0]
    for beta in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="beta"): ema_smooth([1.0], beta)

def test_throttle():
    assert should_push(0.0, None, 0.25) and not should_push(1.2, 1.0, 0.25) and should_push(1.25, 1.0, 0.25)
    assert push_interval(0.25, 0.002, 0.01) == 0.25 and push_interval(0.25, 0.02, 0.01) == pytest.approx(2.0)
    last, n = None, 0
    for now in np.arange(0, 10, 0.001):                 # 10 s of 1 ms steps
        if should_push(now, last, 0.25): last, n = now, n + 1
    assert n == 40

def test_append_row_aligns_series():
    cols = {}
    for i, row in enumerate([{"a": 1.0}, {"b": 2.0}, {}, {"a": 3.0, "b": 4.0}]): append_row(cols, row, i)
    np.testing.assert_array_equal(cols["a"], [1.0, np.nan, np.nan, 3.0])
    np.testing.assert_array_equal(cols["b"], [np.nan, 2.0, np.nan, 4.0])

def test_thin_bounds_and_keeps_ends():
    for n in range(2, 300):
        for m in (2, 3, 7, 100):
            t = thin(list(range(n)), m)
            assert len(t) <= m and t[0] == 0 and t[-1] == n - 1 and t == sorted(set(t))
    with pytest.raises(ValueError, match="max_points"): thin([1, 2, 3], 1)

def test_image_grid_values_and_layout():
    imgs = torch.stack([torch.full((3, 2, 3), v) for v in (-1.0, 0.0, 1.0)])   # 3 RGB images 2×3
    g = image_grid(imgs, nrow=2, pad=1)
    assert g.dtype == np.uint8 and g.shape == (2 * 3 + 1, 2 * 4 + 1, 3)
    assert (g[1:3, 1:4] == 0).all() and (g[1:3, 5:8] == 128).all() and (g[4:6, 1:4] == 255).all()
    assert (g[4:6, 5:8] == 0).all() and (g[0] == 0).all()             # empty 4th tile and padding are black
    gray = image_grid(torch.linspace(-1, 1, 4).view(1, 1, 2, 2), pad=0)
    assert gray.shape == (2, 2, 3) and (gray[..., 0] == gray[..., 2]).all() and gray.ravel()[[0, -1]].tolist() == [0, 255]
    with pytest.raises(ValueError, match="inf"): image_grid(torch.full((1, 1, 2, 2), float("inf")))
    with pytest.raises(ValueError, match="C=2"): image_grid(torch.zeros(1, 2, 2, 2))

def test_to_floats_and_labels():
    assert _to_floats([torch.tensor(1.5, dtype=torch.bfloat16), 2, torch.tensor([0.25])]) == [1.5, 2.0, 0.25]
    assert sample_class_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0] and sample_class_labels(3, None) is None

def test_bad_parameters_name_themselves():
    for kw, name in [({"min_interval_s": -1}, "min_interval_s"), ({"smoothing": 1.5}, "beta"), ({"max_points": 1}, "max_points"),
                     ({"sample_every_n_steps": -3}, "sample_every_n_steps"), ({"n_samples": 0}, "n_samples"),
                     ({"max_draw_fraction": 0}, "max_draw_fraction")]:
        with pytest.raises(ValueError, match=name): LiveTrainingView(**kw)
    with pytest.raises(TypeError, match="trainer"): fit_in_background("not a trainer", toy_engine())


# --- the view on real training runs ----------------------------------------------------------------------------------
def test_view_records_every_step_and_draws_them():
    pl.seed_everything(0, verbose=False)
    view, rec = LiveTrainingView(sample_every_n_steps=None), LossRecorder()
    trainer(60, view, rec).fit(toy_engine(), train_dataloaders=toy_batches())
    n = 60
    assert view.steps == list(range(1, n + 1)) and view.errors == 0
    assert 1 <= view.pushes <= n
    assert view.series["train/loss"] == rec.losses                                   # exactly what was logged
    assert len(view.loss_smooth) == n
    traces = [t for t in view.fig.data if t.type == "scatter"]
    assert len(traces) == 3 + 5                                                      # loss, smoothed, lr + 5 σ buckets
    for t in traces: assert len(t.y) == n and len(t.x) == n, t.name
    np.testing.assert_array_equal(view.traces["loss"].y, rec.losses)
    assert view.series["train/lr"][:3] == pytest.approx([3e-4, 6e-4, 9e-4])           # warm-up, as logged before each step
    assert not view.training and view.button.disabled

def test_collecting_adds_no_metric_recomputation_and_no_item_calls(monkeypatch):
    "Per step the view neither reads the `callback_metrics` property (Lightning would recompute all metrics) nor calls `.item()`."
    counts = {"cm": 0, "item": 0}
    cm, item = pl.Trainer.callback_metrics, torch.Tensor.item
    monkeypatch.setattr(pl.Trainer, "callback_metrics", property(lambda self: (counts.__setitem__("cm", counts["cm"] + 1), cm.fget(self))[1]))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: (counts.__setitem__("item", counts["item"] + 1), item(self))[1])
    def run(*cbs):
        counts.update(cm=0, item=0); pl.seed_everything(0, verbose=False)
        trainer(40, *cbs).fit(toy_engine(), train_dataloaders=toy_batches())
        return dict(counts)
    without, view = run(), LiveTrainingView(sample_every_n_steps=None, min_interval_s=0)
    with_view = run(view)
    assert len(view.steps) == 40 and view.pushes >= 2 and view._metrics_live
    assert with_view["cm"] - without["cm"] <= 2                  # on_train_start + the one check that the dict is live
    assert with_view["item"] - without["item"] <= 2              # only what those two reads make Lightning do; none per step

def test_bucket_values_match_the_engine_and_gaps_are_nan():
    "Compare with what the engine passed to self.log, step by step."
    class LoggingEngine(DiffusionEngine):
        logged = {}
        def log(self, name, value, *args, **kw):
            if name.startswith("loss_sigma/"): self.logged.setdefault(self.global_step + 1, {})[name] = float(value)
            return super().log(name, value, *args, **kw)
    pl.seed_everything(1, verbose=False)
    m = LoggingEngine(TinyNet(), Denoiser(EDMScaling(0.5)), StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)), lr=3e-3)
    class Nosy(pl.Callback):   # reads the metrics property (Lightning then refreshes its dict) before the view's hooks
        def on_train_batch_start(self, trainer, *a): trainer.callback_metrics
        def on_train_batch_end(self, trainer, *a): trainer.callback_metrics
    view = LiveTrainingView(sample_every_n_steps=None)
    trainer(80, Nosy(), view).fit(m, train_dataloaders=toy_batches())     # 8 batches an epoch: crosses epoch ends
    assert sorted(m.logged) == view.steps == list(range(1, 81))
    for k, col in view.series.items():
        if k.startswith("loss_sigma/"):
            np.testing.assert_array_equal(col, [m.logged[s].get(k, math.nan) for s in view.steps], err_msg=k)
    assert np.isnan(view.series["loss_sigma/sigma_0-0.01"]).any()                     # σ < 0.01 is missing in some batches

def test_figure_update_errors_never_stop_training(monkeypatch):
    def broken(self, *args, **kw): raise RuntimeError("boom in plotly_restyle")
    view = LiveTrainingView(sample_every_n_steps=None, min_interval_s=0)
    monkeypatch.setattr(type(view.fig), "plotly_restyle", broken)        # the real figure-update path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = trainer(25, view); t.fit(toy_engine(), train_dataloaders=toy_batches())
    assert t.global_step == 25 and len(view.steps) == 25
    assert view.pushes == 0 and view.errors >= 2 and "boom" in str(view.last_error)
    assert len([w for w in caught if "LiveTrainingView" in str(w.message)]) == 1

def test_redraw_errors_never_stop_training():
    "The view's own redraw fails every time (moved here from nbs/17_live.ipynb): counted, warned once, training goes on."
    view = LiveTrainingView(sample_every_n_steps=None, min_interval_s=0)
    def fail(): raise RuntimeError("figure update failed")
    view._draw = fail
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = trainer(10, view); t.fit(toy_engine(), train_dataloaders=toy_batches())
    assert t.global_step == 10 and len(view.steps) == 10 and view.pushes == 0
    assert 2 <= view.errors <= 11, view.errors     # the first redraw (step 1), the final one, and any in between
    assert isinstance(view.last_error, RuntimeError) and "figure update failed" in str(view.last_error)
    assert len([w for w in caught if "LiveTrainingView" in str(w.message)]) == 1

def test_recording_errors_never_stop_training():
    class Exploding(LiveTrainingView):
        def _record(self, trainer): raise KeyError("no metrics")
    view = Exploding(sample_every_n_steps=None)
    with pytest.warns(RuntimeWarning, match="no metrics"):
        t = trainer(10, view); t.fit(toy_engine(), train_dataloaders=toy_batches())
    assert t.global_step == 10 and view.errors >= 10

def test_sample_grid_every_n_steps_does_not_change_training():
    def run(*cbs):
        pl.seed_everything(3, verbose=False)
        m = toy_engine(sampler=EulerEDMSampler(num_steps=4))
        trainer(20, *cbs).fit(m, train_dataloaders=toy_batches())
        return torch.cat([p.detach().flatten() for p in m.parameters()])
    view = LiveTrainingView(sample_every_n_steps=5, n_samples=6, min_interval_s=0, max_sample_fraction=None)
    assert torch.equal(run(), run(view))
    assert view.samples_drawn == 4 and view.errors == 0
    assert view._grid.shape == (2 * 3 + 1, 3 * 3 + 1, 3)                                # 6 samples of 2×2, 3 per row
    assert view.traces["samples"].source.startswith("data:image/png;base64,")

def test_background_fits_share_one_thread_and_run_in_turn():
    a = fit_in_background(trainer(15), toy_engine(), train_dataloaders=toy_batches())
    b = fit_in_background(trainer(10), toy_engine(), train_dataloaders=toy_batches())   # queued behind a
    assert b.join(60) and a.done and a.thread is b.thread and a.thread.daemon
    assert (a.exception, b.exception, a.trainer.global_step, b.trainer.global_step) == (None, None, 15, 10)

def test_a_queued_fit_can_be_cancelled_and_a_failed_fit_keeps_the_thread():
    long = fit_in_background(trainer(1_000_000), toy_engine(), train_dataloaders=toy_batches())
    queued = fit_in_background(trainer(10), toy_engine(), train_dataloaders=toy_batches())
    assert "queued" in repr(queued) and not queued.started
    queued.stop(); long.stop()
    assert queued.join(60) and long.done
    assert queued.cancelled and queued.trainer.global_step == 0 and "cancelled" in repr(queued)
    bad = fit_in_background(trainer(5), toy_engine(NaNNet()), train_dataloaders=toy_batches())
    after = fit_in_background(trainer(3), toy_engine(), train_dataloaders=toy_batches())
    assert after.join(60) and isinstance(bad.exception, NonFiniteLossError) and after.exception is None
    assert bad.thread is after.thread is long.thread and after.thread.is_alive()

def test_join_from_the_fit_thread_is_refused():
    seen = []
    class JoinsLater(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            inner = fit_in_background(trainer_(2), toy_engine(), train_dataloaders=toy_batches())
            try: inner.join()
            except RuntimeError as e: seen.append(str(e))
            seen.append(inner)
    trainer_ = trainer
    outer = fit_in_background(trainer(2, JoinsLater()), toy_engine(), train_dataloaders=toy_batches())
    assert outer.join(60) and outer.exception is None and "would wait forever" in seen[0]
    assert seen[1].join(60) and seen[1].trainer.global_step == 2

class SlowGrids(pl.Callback):
    "Makes every sample grid take `seconds` (a stand-in for a big sampler) and training steps take `step_s`."
    def __init__(self, seconds, step_s): self.seconds, self.step_s = seconds, step_s
    def on_train_start(self, trainer, pl_module):
        generate = pl_module.generate
        def slow(*a, **kw): time.sleep(self.seconds); return generate(*a, **kw)
        pl_module.generate = slow
    def on_train_batch_start(self, *args): time.sleep(self.step_s)

@pytest.mark.parametrize("fraction, grid_s, drawn", [(0.05, 1.0, 1), (None, 0.05, 6)])
def test_sample_grids_stay_within_their_time_budget(fraction, grid_s, drawn):
    # grids every 5 of 30 steps (5 ms each + Lightning's few ms); with 5 %, a second 1 s grid would need 20 s of
    # training: the first grid is drawn, the other 5 are skipped. Without a budget all 6 are drawn.
    view = LiveTrainingView(sample_every_n_steps=5, n_samples=2, max_sample_fraction=fraction)
    trainer(30, SlowGrids(grid_s, 0.005), view).fit(toy_engine(sampler=EulerEDMSampler(num_steps=2)), train_dataloaders=toy_batches())
    assert view.samples_drawn == drawn and view.samples_skipped == 6 - drawn and view.errors == 0
    assert all(s >= grid_s for s in view.sample_seconds)

def test_failed_grids_count_against_the_budget():
    class Failing(SlowGrids):
        def on_train_start(self, trainer, pl_module):
            def fail(*a, **kw): time.sleep(self.seconds); raise RuntimeError("sampler broke")
            pl_module.generate = fail
    view = LiveTrainingView(sample_every_n_steps=5, n_samples=2, max_sample_fraction=0.05)
    with pytest.warns(RuntimeWarning, match="sampler broke"):
        trainer(30, Failing(1.0, 0.005), view).fit(toy_engine(sampler=EulerEDMSampler(num_steps=2)), train_dataloaders=toy_batches())
    assert (view.errors, view.samples_drawn, view.samples_skipped) == (1, 0, 5)   # tried once, not at every due step

@pytest.mark.parametrize("kw", [{"max_sample_fraction": 0}, {"max_sample_fraction": -0.1}, {"max_sample_fraction": 1.5},
                                {"max_sample_fraction": float("nan")}, {"max_sample_fraction": "0.5"}, {"max_sample_fraction": True},
                                {"sample_every_n_steps": "5"}, {"sample_every_n_steps": 2.5}, {"sample_every_n_steps": True}])
def test_bad_grid_settings_are_named(kw):
    (name, value), = kw.items()
    with pytest.raises(ValueError, match=f"{name}={value!r}".replace("(", r"\(").replace(".", r"\.")): LiveTrainingView(**kw)

def test_no_sampler_no_grid():
    view = LiveTrainingView(sample_every_n_steps=2)
    trainer(6, view).fit(toy_engine(), train_dataloaders=toy_batches())
    assert view.samples_drawn == 0 and view.errors == 0

def test_num_classes_reads_the_module_conditioner():
    "Stand-in modules (moved here from nbs/17_live.ipynb): the classes of a `cls` embedder, None without a conditioner."
    class Emb(nn.Module): input_key, n_classes = "cls", 10
    class Cond(nn.Module):
        def __init__(self): super().__init__(); self.embedders = nn.ModuleList([Emb()])
    assert _num_classes(type("M", (), {"conditioner": Cond()})()) == 10
    assert _num_classes(type("M", (), {"conditioner": None})()) is None
    assert _num_classes(object()) is None                        # no conditioner attribute at all

def test_class_conditional_grid_cycles_through_classes():
    class Emb(nn.Module): input_key, n_classes = "cls", 3
    class Cond(nn.Module):
        def __init__(self): super().__init__(); self.embedders = nn.ModuleList([Emb()])
    class Module:
        conditioner, sampler, device, calls = Cond(), object(), torch.device("cpu"), []
        def generate(self, n, class_labels=None, use_ema=True, seed=None):
            self.calls.append((n, class_labels, seed)); return torch.zeros(n, 1, 4, 4)
    m, view = Module(), LiveTrainingView(n_samples=5, sample_seed=7)
    assert _num_classes(m) == 3
    view._sample(type("T", (), {"global_step": 10})(), m)
    n, labels, seed = m.calls[0]
    assert (n, labels.tolist(), seed) == (5, [0, 1, 2, 0, 1], 7)
    view2 = LiveTrainingView(n_samples=2, class_labels=[4, 4]); view2._sample(type("T", (), {"global_step": 3})(), m)
    assert m.calls[1][1] == [4, 4]


# --- background fits and the Stop button -------------------------------------------------------------------------------
def test_background_fit_finishes():
    view = LiveTrainingView(sample_every_n_steps=None)
    handle = fit_in_background(trainer(40, view), toy_engine(), train_dataloaders=toy_batches())
    assert isinstance(handle, BackgroundFit)
    assert handle.join(timeout=120) is True
    assert handle.done and handle.exception is None and handle.trainer.global_step == 40
    assert len(view.steps) == 40 and "done" in repr(handle)
    assert handle._stop_flag not in handle.trainer.callbacks                               # the trainer is left as it was

def test_stop_button_stops_a_background_fit_and_saves_a_resumable_checkpoint(tmp_path):
    pl.seed_everything(0, verbose=False)
    view = LiveTrainingView(sample_every_n_steps=None, checkpoint_dir=str(tmp_path / "stopped"))
    handle = fit_in_background(trainer(1_000_000, view), toy_engine(), train_dataloaders=toy_batches())
    assert wait_for(lambda: not view.button.disabled and len(view.steps) + len(view._pending) >= 20)
    view.button.click()                                                                    # what a click in the browser does
    assert handle.join(timeout=120) and handle.exception is None
    step = handle.trainer.global_step
    assert 20 <= step < 1_000_000 and view.steps[-1] == step
    path = str(tmp_path / "stopped" / f"stopped-step={step}.ckpt")
    assert view.stopped_checkpoint == path and os.path.isfile(path)
    resumed = trainer(step + 5)
    resumed.fit(toy_engine(), train_dataloaders=toy_batches(), ckpt_path=path, weights_only=False)
    assert resumed.global_step == step + 5

def test_stop_uses_the_model_checkpoint_dir_and_handle_stop(tmp_path):
    view = LiveTrainingView(sample_every_n_steps=None)
    t = trainer(1_000_000, view, ModelCheckpoint(dirpath=str(tmp_path), every_n_train_steps=10_000), enable_checkpointing=True)
    handle = fit_in_background(t, toy_engine(), train_dataloaders=toy_batches())
    assert wait_for(lambda: len(view.steps) + len(view._pending) >= 5)
    handle.stop()
    assert handle.join(timeout=120) and handle.exception is None
    assert glob.glob(str(tmp_path / "stopped-step=*.ckpt")) == [view.stopped_checkpoint]

def test_handle_stop_without_a_view_and_before_training_starts():
    t = trainer(1_000_000)
    handle = fit_in_background(t, toy_engine(), train_dataloaders=toy_batches())
    handle.stop()                                  # possibly before the fit starts (cancelled) or resets should_stop
    assert handle.join(timeout=120) and handle.exception is None
    assert (handle.cancelled and t.global_step == 0) or (not handle.cancelled and 1 <= t.global_step < 1_000_000)

def test_background_fit_reports_the_exception():
    view = LiveTrainingView(sample_every_n_steps=None)
    handle = fit_in_background(trainer(5, view), toy_engine(NaNNet()), train_dataloaders=toy_batches())
    assert handle.join(timeout=120)
    assert isinstance(handle.exception, NonFiniteLossError) and "failed: NonFiniteLossError" in repr(handle)
    assert not view.training and view.button.disabled

def test_progress_bar_warning():
    t = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match="enable_progress_bar=False"):
        handle = fit_in_background(t, toy_engine(), train_dataloaders=toy_batches())
    assert handle.join(timeout=120) and handle.exception is None


# --- the σ-bucket panel: floor, excess, eval loss, EDM2's u (fake metrics until the engine logs them) ---------------
import diffexplore.live
from diffexplore.live import bucket_curve, last_finite, gpu_or_skip
from diffexplore.engine import sigma_bucket_names
from diffexplore.loss import LearnedWeightingLoss

class FakeTrainer:
    "What the view reads from a Trainer: the global step, the metrics dict Lightning keeps, the checkpoint callback."
    def __init__(self): self.global_step, self.callback_metrics, self.checkpoint_callback, self.should_stop = 0, {}, None, False

class FakeModule: sigma_bucket_edges = (0.01, 0.1, 1.0, 10.0)

def fake_run(view, steps=40, eval_every=10, with_u=True):
    "Drive the view's hooks as Lightning does, with the per-bucket metrics the engine logs (floors constant per run)."
    t, m, names = FakeTrainer(), FakeModule(), sigma_bucket_names()
    view.on_train_start(t, m)
    for s in range(1, steps + 1):
        view.on_train_batch_start(t, m, None, s - 1)                      # keeps the previous step's values, as in a fit
        t.global_step, d = s, {"train/loss": torch.tensor(1.0 / s), "train/lr": torch.tensor(1e-3)}
        for i, b in enumerate(names):
            floor = 0.1 * (i + 1)
            d[f"loss_sigma/{b}"] = torch.tensor(floor + 1.0 / s)
            if s % eval_every == 0:        # `engine.ExcessLoss` evaluates every few steps; the floor comes along
                d |= {f"eval_loss_sigma/{b}": torch.tensor(floor + 1.5 / s), f"floor_sigma/{b}": torch.tensor(floor),
                      f"excess_sigma/{b}": torch.tensor(1.5 / s), f"excess_ema_sigma/{b}": torch.tensor(1.2 / s),
                      f"excess_stderr_sigma/{b}": torch.tensor(0.01)}     # not drawn
            if with_u: d |= {f"logvar_sigma/{b}": torch.tensor(math.log(floor) - 1.0 / s), f"weighted_error_sigma/{b}": torch.tensor(floor)}
        t.callback_metrics = d     # a new dict and new tensors every step: every value is logged in its step
        view.on_train_batch_end(t, m, {"loss": d["train/loss"]}, None, s - 1)
    view.on_train_end(t, m)
    return names

def test_bucket_curve_floor_level_and_exp_u():
    x, y = bucket_curve("floor", [3, 4, 5], [math.nan, 0.2, math.nan])
    assert x.tolist() == [3.0, 5.0] and y.tolist() == [0.2, 0.2]
    assert bucket_curve("exp_u", [1, 2], [0.0, math.log(3.0)])[1] == pytest.approx([1.0, 3.0])
    assert bucket_curve("excess", list(range(10)), list(range(10)), 4)[0].tolist() == [0, 3, 6, 9]
    assert math.isnan(last_finite([math.nan, math.inf])) and last_finite([1, 2, math.nan]) == 2

def test_bucket_panel_draws_floor_excess_eval_and_u_per_bucket():
    view = LiveTrainingView(sample_every_n_steps=None, min_interval_s=0)
    titles = [a.text for a in view.fig.layout.annotations]
    assert sum("(not logged)" in t for t in titles) == 2                      # excess and EDM2 panels, until logged
    names = fake_run(view, steps=40)
    assert view.errors == 0 and view.steps == list(range(1, 41))
    assert not any("(not logged)" in a.text for a in view.fig.layout.annotations)
    tr = view.traces
    for i, b in enumerate(names):
        floor, loss = tr[f"floor_sigma/{b}"], tr[f"loss_sigma/{b}"]
        assert f"excess_stderr_sigma/{b}" not in tr
        assert list(floor.x) == [1, 40] and list(floor.y) == pytest.approx([0.1 * (i + 1)] * 2) and floor.line.dash == "dash"
        assert floor.line.color == loss.line.color == tr[f"logvar_sigma/{b}"].line.color        # one colour per bucket
        assert (floor.xaxis, floor.yaxis) == (loss.xaxis, loss.yaxis)                          # the floor sits beside the loss
        assert np.all(np.asarray(loss.y) > floor.y[0])                                          # here the loss stays above it
        ev = np.asarray(tr[f"eval_loss_sigma/{b}"].y, float)
        assert tr[f"eval_loss_sigma/{b}"].mode == "markers" and np.flatnonzero(np.isfinite(ev)).tolist() == [9, 19, 29, 39]
        np.testing.assert_allclose(tr[f"logvar_sigma/{b}"].y, [0.1 * (i + 1) * math.exp(-1.0 / s) for s in range(1, 41)], rtol=1e-6)
        assert tr[f"weighted_error_sigma/{b}"].yaxis == tr[f"logvar_sigma/{b}"].yaxis != loss.yaxis   # e^u beside the weighted error
        ex, ex_ema = (np.asarray(tr[f"{k}_sigma/{b}"].y, float) for k in ("excess", "excess_ema"))
        np.testing.assert_allclose(ex[9::10], [1.5 / s for s in (10, 20, 30, 40)], rtol=1e-6)
        np.testing.assert_allclose(ex_ema[9::10], [1.2 / s for s in (10, 20, 30, 40)], rtol=1e-6)
        assert np.isnan(ex[:9]).all() and tr[f"excess_sigma/{b}"].connectgaps and tr[f"excess_ema_sigma/{b}"].line.dash == "dot"
        assert tr[f"excess_sigma/{b}"].yaxis != loss.yaxis
    assert sum(t.showlegend is not False for t in view.fig.data if t.type == "scatter") == 2 + len(names)   # loss, smoothed, one per bucket

def test_without_u_the_edm2_panel_says_not_logged():
    view = LiveTrainingView(sample_every_n_steps=None, min_interval_s=0)
    fake_run(view, steps=5, eval_every=5, with_u=False)
    assert [a.text for a in view.fig.layout.annotations if "(not logged)" in a.text] == ["EDM2: weighted error, ··· e^u(σ) (not logged)"]
    assert not any(k.startswith("logvar_sigma/") for k in view.traces)

def test_edm2_learned_weighting_logs_reach_the_panel():
    "A real fit with `LearnedWeightingLoss`: u per bucket is drawn as e^u, beside the weighted error."
    pl.seed_everything(0, verbose=False)
    m = DiffusionEngine(TinyNet(), Denoiser(EDMScaling(0.5)), LearnedWeightingLoss(EDMSampling(), EDMWeighting(0.5), logvar_channels=8), lr=3e-3)
    view = LiveTrainingView(sample_every_n_steps=None)
    trainer(20, view).fit(m, train_dataloaders=toy_batches())
    u = np.asarray(view.series["logvar_sigma/sigma_0.1-1"])
    assert view.errors == 0 and np.isfinite(u).all()
    np.testing.assert_allclose(view.traces["logvar_sigma/sigma_0.1-1"].y, np.exp(u), rtol=1e-6)
    assert np.isfinite(view.traces["weighted_error_sigma/sigma_0.1-1"].y).all()

def test_redrawing_all_bucket_metrics_stays_cheap():
    "38 curves of up to 2,000 points: a redraw costs milliseconds, and `push_interval` spaces redraws so that they take ≤ 1 % of the time."
    view = LiveTrainingView(sample_every_n_steps=None, min_interval_s=0)
    fake_run(view, steps=3000, eval_every=50)
    assert len([t for t in view.fig.data if t.type == "scatter"]) == 3 + 7 * 5 and view.errors == 0
    t = time.perf_counter()
    for _ in range(5): view._draw()
    per_draw = (time.perf_counter() - t) / 5
    assert per_draw < 0.1, per_draw                  # ~3 ms here; even 0.1 s would be redrawn only every 10 s (`push_interval`)


# --- the grid budget: visible, changeable --------------------------------------------------------------------------
def test_grid_budget_is_in_the_status_line_and_changeable():
    view = LiveTrainingView()
    assert (view.sample_every_n_steps, view.max_sample_fraction) == (200, 0.05)
    assert "grids: every 200 steps, ≤ 5 % of the time" in view.status.value and "view.max_sample_fraction" in view.status.value
    view.max_sample_fraction, view.sample_every_n_steps = 0.2, 50
    assert "grids: every 50 steps, ≤ 20 % of the time" in view._status_text()
    view.max_sample_fraction = None
    assert "no time limit" in view._grid_text()
    with pytest.raises(ValueError, match="max_sample_fraction=2"): view.max_sample_fraction = 2
    with pytest.raises(ValueError, match="sample_every_n_steps=-1"): view.sample_every_n_steps = -1
    assert view.max_sample_fraction is None and view.sample_every_n_steps == 50          # a refused value changes nothing
    view.sample_every_n_steps = 0
    assert "grids: off" in view._grid_text()

def test_changing_the_budget_during_a_fit_takes_effect():
    "Grids (0.3 s each, toy steps of ~5 ms) over 5 % are skipped; raising the budget mid-fit lets the next ones through."
    view = LiveTrainingView(sample_every_n_steps=5, n_samples=2, max_sample_fraction=0.05)
    class Raise(pl.Callback):
        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step == 20: view.max_sample_fraction = None
    trainer(30, SlowGrids(0.3, 0.005), Raise(), view).fit(toy_engine(sampler=EulerEDMSampler(num_steps=2)), train_dataloaders=toy_batches())
    # step 5 drawn (a fit's first grid always is); 10 and 15 skipped (0.3 s of < 1 s); from step 20 on (`Raise` runs
    # before the view) no limit: 20, 25, 30 drawn
    assert (view.samples_drawn, view.samples_skipped, view.errors) == (4, 2, 0)
    assert "4 drawn, 2 skipped" in view.status.value


# --- quiet background fits -----------------------------------------------------------------------------------------
def _datamodule_with_val():
    "A datamodule with a validation split and no validation_step: Lightning warns about it at every fit."
    class DM(pl.LightningDataModule):
        def train_dataloader(self): return toy_batches()
        def val_dataloader(self): return toy_batches(64)
    return DM()

@pytest.mark.parametrize("quiet", [True, False])
def test_background_fit_is_quiet(capfd, caplog, tmp_path, quiet):
    "Nothing from the libraries under the view: no val-loop warning, no deprecations, no tips, no model-summary table."
    from lightning.pytorch.callbacks import OnExceptionCheckpoint   # as in `diffexplore train`: Lightning then warns of no "last" checkpoint
    with warnings.catch_warnings(record=True) as caught:             # the fit thread's warnings land here when shown
        if not quiet: warnings.simplefilter("always")                # shown even where an earlier quiet fit hid it for good
        t = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=True, enable_progress_bar=False,
                       enable_model_summary=True, default_root_dir=str(tmp_path),
                       callbacks=[LiveTrainingView(sample_every_n_steps=None), OnExceptionCheckpoint(str(tmp_path))])
        capfd.readouterr(); caplog.clear(); caught.clear()           # Trainer(...)'s own lines are not the fit's
        handle = fit_in_background(t, toy_engine(), datamodule=_datamodule_with_val(), quiet=quiet)
        assert handle.join(120) and handle.exception is None
    out = "".join(capfd.readouterr()) + caplog.text + "\n".join(str(w.message) for w in caught)
    noisy = ["validation_step", "Total params", "no last checkpoint"]   # Lightning's val-loop warning, summary table, "last" warning
    if quiet: assert not any(s in out for s in noisy) and "Tip:" not in out and "deprecated" not in out, out
    else: assert all(s in out for s in noisy), out                   # the same fit, not quiet, shows them: the check can fail
    assert any(type(c).__name__ == "ModelSummary" for c in t.callbacks)   # the trainer's callbacks are left as they were


# --- GPU cells on a CPU: one line each, no traceback -----------------------------------------------------------------
NBS = Path(__file__).resolve().parents[1] / "nbs"

def _cells(name):
    return [("".join(c["source"])) for c in json.loads((NBS / name).read_text())["cells"] if c["cell_type"] == "code"]

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what the GPU cells do without a GPU")
@pytest.mark.parametrize("name", ["17_live.ipynb", "18_live_gpu.ipynb"])
def test_gpu_cells_say_in_one_line_that_they_need_a_gpu(name, capsys):
    "Run All in JupyterLab also runs the `#| eval: false` cells: on a CPU each must print one line and raise nothing."
    cells = _cells(name)
    gpu = [c for c in cells if c.startswith("#| eval: false")]
    assert len(gpu) == 2 and all("gpu_or_skip(" in c for c in gpu)
    imports = [c for c in cells if all(l.startswith(("import ", "from ")) or not l.strip() or l.startswith("#")
                                       for l in c.splitlines()) and ("import" in c)]
    ns = dict(vars(diffexplore.live))                               # what 17_live defines (it is the module's notebook)
    for c in imports: exec(c, ns)
    for c in gpu:
        capsys.readouterr()
        exec(c, ns)                                                   # raises on CPU if a cell is not guarded
        assert capsys.readouterr().out.splitlines() == ["the GPU run needs a CUDA GPU; skipped on this CPU machine"], c[:80]

def test_gpu_or_skip(capsys):
    assert gpu_or_skip("x") == torch.cuda.is_available()
    assert capsys.readouterr().out == ("" if torch.cuda.is_available() else "x needs a CUDA GPU; skipped on this CPU machine\n")
