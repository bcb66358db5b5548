"The engine's GPU fast path, exercised on the CPU: compiled step (traced with the aot_eager backend), EMA counter, CLI switches."
import pytest
import torch
import lightning.pytorch as pl
from diffexplore.engine import DiffusionEngine, LitEma, fast_gpu_settings, FAST_SWITCHES
from diffexplore.denoiser import Denoiser
from diffexplore.scalings import EDMScaling
from diffexplore.weightings import EDMWeighting
from diffexplore.sigma_sampling import EDMSampling
from diffexplore.loss import StandardDiffusionLoss
from diffexplore.networks import build_unet, OpenAIWrapper
from diffexplore import cli


def _engine(**kw):
    return DiffusionEngine(OpenAIWrapper(build_unet("tiny", in_channels=3, sample_size=8)), Denoiser(EDMScaling(0.5)),
                           StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)), **kw)


def test_compiled_step_first_shape_only(monkeypatch):
    "compile_step compiles `_loss_on_device` once, for the first batch shape; a short last batch runs eagerly."
    calls = []
    real = torch.compile
    def fake_compile(fn, **kw):
        calls.append(kw)
        return real(fn, backend="aot_eager", dynamic=kw.get("dynamic"))   # no C++/Triton build on the CPU
    monkeypatch.setattr(torch, "compile", fake_compile)
    e = _engine(sync_checks=False, fused_optimizer=True, compile_step=True, cuda_graphs=False)
    data = torch.utils.data.DataLoader([{"jpg": x} for x in torch.randn(6, 3, 8, 8)], batch_size=4)  # batches of 4 and 2
    t = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, log_every_n_steps=2)
    t.fit(e, data)
    assert len(calls) == 1 and calls[0]["mode"] is None and calls[0]["dynamic"] is False
    assert e._compiled_shape == (4, 3, 8, 8)
    assert int(e.model_ema.num_updates) == 4
    assert {"train/loss", "train/lr", "train/ema_decay"} <= set(t.logged_metrics)


def test_fast_path_needs_standard_components():
    class MyLoss(StandardDiffusionLoss):
        def loss_and_sigmas(self, *a, **k): return super().loss_and_sigmas(*a, **k)
    e = DiffusionEngine(torch.nn.Identity(), Denoiser(EDMScaling(0.5)), MyLoss(EDMSampling(), EDMWeighting(0.5)), sync_checks=False)
    assert not e.fast_path                      # an overridden loss_and_sigmas keeps the checked path
    assert _engine(sync_checks=False).fast_path


def test_checked_sigmas_raise_on_the_cpu():
    class ZeroSampler:
        def __call__(self, n, rand=None): return torch.zeros(n)
    e = DiffusionEngine(torch.nn.Identity(), Denoiser(EDMScaling(0.5)), StandardDiffusionLoss(ZeroSampler(), EDMWeighting(0.5)),
                        sync_checks=False)
    with pytest.raises(ValueError, match="sigma"): e._checked_sigmas(4)   # EDMScaling rejects σ = 0, as the checked path does


def test_ema_host_counter_resets_on_load():
    net = torch.nn.Linear(2, 2)
    ema = LitEma(net, decay=0.99)
    for _ in range(3): ema(net)
    other = LitEma(net, decay=0.99)
    other._n = 123                              # a stale host copy
    other.load_state_dict(ema.state_dict())
    assert other._n is None and other._count() == 3


def test_cli_no_fast_switches():
    args = cli._parser().parse_args(["train", "--config", "c.yaml", "--no-fast", "compile", "--no-fast", "cuda_graphs"])
    assert args.no_fast == ["compile", "cuda_graphs"]
    assert cli._parser().parse_args(["train", "--config", "c.yaml"]).no_fast == []
    with pytest.raises(SystemExit): cli._parser().parse_args(["train", "--no-fast", "turbo"])
    assert set(FAST_SWITCHES) == {"bf16", "tf32", "benchmark", "compile", "cuda_graphs", "async_checks"}


def test_fast_gpu_settings_progress_bar_refresh():
    kw = fast_gpu_settings({"log_every_n_steps": 25, "precision": "32-true", "benchmark": False}, off=["tf32"], cuda=True)
    bars = [c for c in kw["callbacks"] if isinstance(c, pl.callbacks.TQDMProgressBar)]
    assert len(bars) == 1 and bars[0].refresh_rate == 25
    assert kw["precision"] == "32-true" and kw["benchmark"] is False        # explicit settings win
    assert "callbacks" not in fast_gpu_settings({}, off=["async_checks", "tf32"], cuda=True)
