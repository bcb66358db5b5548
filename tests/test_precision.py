"""Lightning's precision modes on the CPU (issue 15, item 2): `16-true` refused before the first step with what to
use instead; `16-mixed` with the fused AdamW and gradient clipping (the GradScaler path, run on the CPU through
Lightning's `MixedPrecision` plugin) clips the true, unscaled gradients; `bf16-mixed`/`bf16-true`/`32-true` train with
the EMA moving in float32; a module-wide cast of an engine, a denoiser or the model a sampler runs leaves the σ table,
the σ schedule and the EMA exact. The CUDA runs of every mode: `bench/precision_modes.py`."""
import warnings
from pathlib import Path
import pytest
import torch
import lightning.pytorch as pl
from lightning.pytorch.plugins.precision import MixedPrecision
from diffexplore.engine import LitEma, PRECISION_REFUSED, PRECISION_WARNED, PrecisionWarning
from diffexplore.denoiser import DiscreteDenoiser
from diffexplore.discretizer import EDMDiscretization, LegacyDDPMDiscretization
from diffexplore.sampling import EulerEDMSampler
from diffexplore.scalings import EpsScaling
from _toy import tiny_engine, toy_data, cpu_trainer as _trainer


def _engine(denoiser=None, **kw):
    torch.manual_seed(0)
    return tiny_engine(denoiser, **kw)


def _data(n=12, batch_size=4): return toy_data(n, batch_size)


def test_16_true_is_refused_before_the_first_step():
    "float16 weights: refused in `setup`, before Lightning casts the module, with one line naming what to use instead."
    e = _engine()
    t = _trainer(2, precision="16-true")
    with pytest.raises(ValueError) as err: t.fit(e, _data())
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("precision='16-true'") and "'16-mixed'" in msg and "'bf16-mixed'" in msg
    assert t.global_step == 0 and next(e.model.parameters()).dtype == torch.float32   # nothing cast, nothing trained
    assert set(PRECISION_REFUSED) == {"16-true"}


def test_16_true_would_write_inf_into_the_weights():
    "Why it is refused: one AdamW step on a float16 weight with a gradient of 1e-3 (second moment 1e-9 → 0, eps → 0)."
    p = torch.nn.Parameter(torch.ones(1, dtype=torch.float16))
    p.grad = torch.full((1,), 1e-3, dtype=torch.float16)
    torch.optim.AdamW([p], lr=1e-4).step()
    assert not torch.isfinite(p).all()


def _clip_norms(fused: bool, clip_val: float, steps: int = 3):
    "Total gradient norms after the engine's clipping under a 16-mixed GradScaler (CPU), and the trained engine."
    e, norms = _engine(fused_optimizer=fused), []
    clip = e.configure_gradient_clipping
    def recording(opt, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip(opt, gradient_clip_val, gradient_clip_algorithm)
        gs = [p.grad.float() for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in gs])).item())
    e.configure_gradient_clipping = recording
    t = _trainer(steps, gradient_clip_val=clip_val, plugins=[MixedPrecision("16-mixed", "cpu")])
    t.fit(e, _data())
    assert t.global_step == steps and t.precision_plugin.scaler is not None
    return norms, e


def test_16_mixed_fused_adamw_clips_the_unscaled_gradients():
    """The fault of 2026-12-04: `16-mixed` + fused AdamW + `gradient_clip_val` stopped at step 1 (Lightning refuses to
    clip for an optimizer that unscales inside its step). The engine unscales first: the norms it clips are the true
    ones, the same as with the non-fused AdamW that Lightning unscales (not 2¹⁶ times larger), and a limit bites."""
    fused, e = _clip_norms(True, 1e6)
    plain, _ = _clip_norms(False, 1e6)
    assert all(0 < n < 1e3 for n in fused), fused              # unscaled: a scaled norm would be ~65536× these
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(plain), rtol=1e-3, atol=0)
    assert all(torch.isfinite(p).all() for p in e.model.parameters())
    clipped, _ = _clip_norms(True, 1e-3)
    assert all(n <= 1e-3 * (1 + 1e-4) for n in clipped) and min(fused) > 1e-2


def test_cpu_16_mixed_runs_as_bf16_mixed():
    "On the CPU Lightning replaces `precision='16-mixed'` by `bf16-mixed` (with a warning); it trains, EMA included."
    e = _engine()
    with pytest.warns(UserWarning, match="bf16-mixed"): t = _trainer(2, precision="16-mixed", gradient_clip_val=1.0)
    assert t.precision == "bf16-mixed"
    t.fit(e, _data())
    assert t.global_step == 2 and int(e.model_ema.num_updates) == 2


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_modes_train_and_the_ema_moves(precision):
    "Each mode the CPU runs: 3 steps with the configs' clipping, a finite loss, float32 shadows that moved from the start."
    e = _engine()
    start = [s.clone() for s in e.model_ema.shadows()]
    losses = []
    class Rec(pl.Callback):
        def on_train_batch_end(self, trainer, m, outputs, batch, i): losses.append(float(outputs["loss"]))
    t = _trainer(3, precision=precision, gradient_clip_val=1.0, callbacks=[Rec()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(e, _data())
    said = [str(w.message) for w in caught if issubclass(w.category, PrecisionWarning)]
    assert len(said) == (precision in PRECISION_WARNED), said   # bf16-true trains, and says once what it costs
    assert all("'bf16-mixed' keeps float32 weights" in m for m in said), said
    assert t.global_step == 3 and len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert {s.dtype for s in e.model_ema.shadows()} == {torch.float32}
    assert sum(int((s != s0).sum()) for s, s0 in zip(e.model_ema.shadows(), start)) > 0.9 * sum(s.numel() for s in start)


def test_ema_update_below_bf16_resolution_still_lands():
    "A bf16 network, the average 1.0 and the weight 2.0, decay 0.999: the shadow moves by 1e-3 (bf16's step at 1.0 is 2⁻⁷)."
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad(): net.weight.fill_(1.0)
    ema = LitEma(net, decay=0.999, use_num_updates=False).to(torch.bfloat16)
    net.to(torch.bfloat16)
    with torch.no_grad(): net.weight.fill_(2.0)
    ema(net)
    assert ema.shadows()[0].dtype == torch.float32
    assert abs(ema.shadows()[0].item() - 1.001) < 1e-6
    assert torch.tensor(1.001).to(torch.bfloat16).item() == 1.0        # where a bf16 shadow would have stayed


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_module_cast_keeps_tables_schedules_and_ema(dtype):
    """`.to(dtype)` of a whole engine (a DiscreteDenoiser, EMA, a sampler): the σ table stays float32 and every table σ
    snaps to its own timestep, the EMA stays float32, the sampler's σ schedule is the float32 one, and generation gives
    finite float32 images."""
    den = DiscreteDenoiser(EpsScaling(), 1000, LegacyDDPMDiscretization())
    table = den.sigmas.clone()
    sampler = EulerEDMSampler(discretization=EDMDiscretization(), num_steps=3)
    e = _engine(denoiser=den, sampler=sampler, sample_shape=(3, 8, 8))
    schedule = sampler.discretization(3)
    e = e.half() if dtype == torch.float16 else e.to(dtype)
    assert next(e.model.parameters()).dtype == dtype
    assert e.denoiser.sigmas.dtype == torch.float32 and torch.equal(e.denoiser.sigmas, table)
    assert torch.equal(e.denoiser.sigma_to_idx(table), torch.arange(1000))
    assert {s.dtype for s in e.model_ema.shadows()} == {torch.float32}
    assert torch.equal(e.sampler.discretization(3), schedule) and schedule.dtype == torch.float32
    x = e.generate(2, seed=0)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


def test_precision_modes_bench_smoke():
    "`bench/precision_modes.py --smoke`: every mode trains or is refused in one line; 16-mixed runs as bf16-mixed on the CPU."
    import importlib.util, contextlib, io
    path = Path(__file__).parent.parent / "bench" / "precision_modes.py"
    spec = importlib.util.spec_from_file_location("precision_modes", path); bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = io.StringIO()
    with contextlib.redirect_stdout(out): rc = bench.main(["--smoke"])
    rows = [l.split(" | ") for l in out.getvalue().splitlines() if l.startswith("| 20")][-5:]
    assert rc == 0 and [r[5] for r in rows] == list(bench.MODES), out.getvalue()[-3000:]
    outcome = {r[5]: (r[6], r[7]) for r in rows}
    assert outcome["16-mixed"] == ("bf16-mixed", "trained") and outcome["16-true"][1].startswith("refused: precision='16-true'")
    assert all(outcome[m][1] == "trained" for m in ("32-true", "bf16-mixed", "bf16-true"))


def test_cli_refuses_16_true_before_building_anything(tmp_path, capsys):
    "`diffexplore train ... trainer.precision=16-true`: one line naming the key and what to use instead, exit 2, no run dir."
    from diffexplore.cli import main
    run = tmp_path / "run"
    assert main(["train", "--config", "digits", "--run-dir", str(run), "trainer.precision=16-true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffexplore: error: trainer.precision='16-true': ") and "'16-mixed'" in err[0]
    assert not run.exists()
