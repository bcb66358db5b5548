"""The engine's one training path, exercised on the CPU: the compiled step and its CUDA-graph policy, sgm-contract
components written by a user, deferred checks, bf16-true, gradient accumulation (BC26), the CLI switches."""
import threading
import pytest
import torch
import lightning.pytorch as pl
from diffexplore.engine import DiffusionEngine, LitEma, CompiledStep, fast_gpu_settings, FAST_SWITCHES, ema_decay
from diffexplore.denoiser import Denoiser
from diffexplore.scalings import EDMScaling
from diffexplore.weightings import EDMWeighting
from diffexplore.sigma_sampling import EDMSampling
from diffexplore.loss import StandardDiffusionLoss
from diffexplore.networks import build_unet, OpenAIWrapper
from diffexplore import cli
from _toy import tiny_engine as _engine, toy_data as _data, cpu_trainer as _trainer


def _aot_eager(monkeypatch, calls):
    real = torch.compile
    def fake_compile(fn, **kw):
        calls.append(kw)
        return real(fn, backend="aot_eager", dynamic=kw.get("dynamic"))   # no C++/Triton build on the CPU
    monkeypatch.setattr(torch, "compile", fake_compile)


def test_compiled_step_first_shape_only(monkeypatch):
    "compile_step compiles `loss_fn.loss` once, for the first batch shape; a short last batch runs eagerly."
    calls = []
    _aot_eager(monkeypatch, calls)
    e = _engine(sync_checks=False, fused_optimizer=True, compile_step=True, cuda_graphs=False)
    t = _trainer(4, log_every_n_steps=2)
    t.fit(e, _data())                                         # batches of 4 and 2
    assert len(calls) == 1 and calls[0]["mode"] is None and calls[0]["dynamic"] is False
    assert e.compiled_step.shape == (4, 3, 8, 8) and e.compiled_step.graphs is False
    assert int(e.model_ema.num_updates) == 4
    assert {"train/loss", "train/lr", "train/ema_decay"} <= set(t.logged_metrics)


def test_cuda_graph_policy_main_thread_and_no_accumulation(monkeypatch):
    "CUDA graphs only on the main thread, and never with gradient accumulation (BC26): one policy, in CompiledStep."
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, dynamic=None: fn)
    step = CompiledStep(lambda z: z.sum(), cuda_graphs=True)
    out = []
    th = threading.Thread(target=lambda: out.append((step(torch.ones(2)), step.graphs))); th.start(); th.join()
    assert out[0][1] is False
    e = _engine(compile_step=True, cuda_graphs=True)
    e.trainer = _trainer(1, accumulate_grad_batches=2)
    e.on_fit_start()
    assert e.compiled_step.cuda_graphs is False
    e.trainer = _trainer(1)
    e.on_fit_start()
    assert e.compiled_step.cuda_graphs is True


def test_compiled_step_compiles_again_with_graphs_on_the_main_thread(monkeypatch):
    "A worker thread's first call compiles without graphs; the main thread's next call compiles again, with them."
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, dynamic=None: calls.append((mode, dynamic)) or fn)   # records, runs eagerly
    step = CompiledStep(lambda z: z.sum(1), cuda_graphs=True)
    worker = []
    th = threading.Thread(target=lambda: (step(torch.ones(4, 3)), worker.append((step.graphs, step.shape)))); th.start(); th.join()
    assert worker == [(False, (4, 3))]
    step(torch.ones(4, 3))
    assert step.graphs is True and calls == [(None, False), ("reduce-overhead", False)]


def test_engine_wraps_a_raw_network_once():
    "sgm's DiffusionEngine wraps its network (OpenAIWrapper by default); a wrapper is not wrapped again, so its keys stay."
    from diffexplore.networks import IdentityWrapper
    wrapped = _engine()
    assert type(wrapped.model) is OpenAIWrapper and list(wrapped.state_dict())[0].startswith("model.diffusion_model.")
    raw = DiffusionEngine(build_unet("tiny", in_channels=3, sample_size=8), Denoiser(EDMScaling(0.5)),
                          StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)))
    assert type(raw.model) is OpenAIWrapper and list(raw.state_dict()) == list(wrapped.state_dict())   # same keys either way
    ident = DiffusionEngine(build_unet("tiny", in_channels=3, sample_size=8), Denoiser(EDMScaling(0.5)),
                            StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)), network_wrapper="sgm.modules.diffusionmodules.wrappers.IdentityWrapper")
    assert type(ident.model) is IdentityWrapper
    e = _engine()
    _trainer(2).fit(e, _data(8))                                             # the wrapped network trains through the cond dict


def _user_components():
    "A scaling, weighting and σ sampler as plain functions with sgm's calls: no diffexplore class, no `check`/`unchecked`."
    def scaling(sigma):
        n = (sigma**2 + 0.25).sqrt()
        return 0.25 / n**2, sigma * 0.5 / n, 1 / n, sigma.log() / 4
    def weighting(sigma): return (sigma**2 + 0.25) / (sigma * 0.5)**2
    def sigma_sampler(n, rand=None): return (torch.randn(n) * 1.2 - 1.2).exp()
    return scaling, weighting, sigma_sampler


def _train_user(**switches):
    scaling, weighting, sigma_sampler = _user_components()
    pl.seed_everything(0, verbose=False)
    e = _engine(Denoiser(scaling), StandardDiffusionLoss(sigma_sampler, weighting), **switches)
    losses = []
    class Rec(pl.Callback):
        def on_train_batch_end(self, trainer, m, outputs, batch, i): losses.append(outputs["loss"].detach().clone())
    _trainer(5, callbacks=[Rec()]).fit(e, _data(8))
    return torch.stack(losses), [p.detach().clone() for p in e.model.parameters()], e


def test_user_components_train_bit_identical_on_both_paths():
    "sgm-contract callables train with deferred checks (sync_checks off, eager) to the same bits as with host checks."
    fast_l, fast_w, fast_e = _train_user(sync_checks=False, fused_optimizer=True)
    ref_l, ref_w, ref_e = _train_user(sync_checks=True, fused_optimizer=True)
    assert fast_e.deferred_checks and not ref_e.deferred_checks
    assert torch.equal(fast_l, ref_l)
    assert all(torch.equal(a, b) for a, b in zip(fast_w, ref_w))


def test_user_components_train_compiled(monkeypatch):
    "The same components through the compiled step (aot_eager on the CPU): they train, with the same first loss."
    _aot_eager(monkeypatch, [])
    comp_l, _, comp_e = _train_user(sync_checks=False, fused_optimizer=True, compile_step=True, cuda_graphs=False)
    ref_l, _, _ = _train_user(sync_checks=True, fused_optimizer=True)
    assert comp_e.compiled_step.shape == (4, 3, 8, 8)
    torch.testing.assert_close(comp_l, ref_l, rtol=1e-4, atol=1e-6)


def test_user_loss_callable_trains():
    "A loss that is a plain callable with sgm's call trains; its σ is unknown, so no per-σ buckets are logged."
    inner = StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5))
    def my_loss(network, denoiser, conditioner, input, batch): return inner(network, denoiser, conditioner, input, batch)
    e = _engine(loss_fn=my_loss, compile_step=True)
    t = _trainer(2)
    t.fit(e, _data())
    assert t.global_step == 2 and e.compiled_step is None
    assert not any(k.startswith("loss_sigma/") for k in t.logged_metrics)


def test_sigma_checks_run_on_the_host():
    "σ is checked where it is drawn: EDMScaling rejects σ = 0 in `prepare`, before anything reaches the network."
    class ZeroSampler:
        def __call__(self, n, rand=None): return torch.zeros(n)
    e = _engine(loss_fn=StandardDiffusionLoss(ZeroSampler(), EDMWeighting(0.5)), sync_checks=False)
    with pytest.raises(ValueError, match="sigma"): e(torch.zeros(4, 3, 8, 8), {})


def test_bf16_true_trains_and_ema_stays_float32():
    "Lightning's bf16-true: the network gets bf16 input, the loss is float32, the EMA shadows stay float32 and average."
    e = _engine()
    t = _trainer(3, precision="bf16-true")
    t.fit(e, _data(12))
    assert t.global_step == 3 and int(e.model_ema.num_updates) == 3
    assert next(e.model.parameters()).dtype == torch.bfloat16
    assert {s.dtype for s in e.model_ema.shadows()} == {torch.float32}


def test_gradient_accumulation_one_ema_update_per_optimizer_step():
    "BC26: accumulate_grad_batches=2, 4 micro-batches -> 2 optimizer steps -> 2 EMA updates, shadow as the formula says."
    e = _engine(ema_decay_rate=0.9999)
    params = []
    class Snap(pl.Callback):
        def on_train_start(self, trainer, m): params.append([p.detach().float().clone() for p in m.model.parameters()])
        def on_train_batch_end(self, trainer, m, *a):
            if len(params) <= trainer.global_step: params.append([p.detach().float().clone() for p in m.model.parameters()])
    t = _trainer(2, accumulate_grad_batches=2, callbacks=[Snap()])
    t.fit(e, _data(16))
    assert t.global_step == 2 and int(e.model_ema.num_updates) == 2 and len(params) == 3
    d1, d2 = ema_decay(0.9999, 1), ema_decay(0.9999, 2)
    assert abs(d1 - 0.18182) < 1e-5 and abs(d2 - 0.25) < 1e-12 and abs(e.model_ema.current_decay() - 0.30769) < 1e-5
    for s, p0, p1, p2 in zip(e.model_ema.shadows(), *params):
        torch.testing.assert_close(s, d2 * (d1 * p0 + (1 - d1) * p1) + (1 - d2) * p2, rtol=0, atol=1e-6)


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
    assert cli.NO_FAST == FAST_SWITCHES      # the CLI's copy of the names, kept so that parsing imports no torch


def test_a_cpu_run_on_a_gpu_machine_gets_no_gpu_settings(tmp_path, monkeypatch):
    "`trainer.accelerator=cpu` where CUDA is present: `make_trainer` leaves precision and cuDNN benchmark as configured."
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    t = cli.make_trainer(cli.load_config("digits", ["trainer.accelerator=cpu"]), tmp_path)
    assert str(t.precision) == "32-true" and not any(isinstance(c, pl.callbacks.TQDMProgressBar) and c.refresh_rate > 1 for c in t.callbacks)


def test_fast_gpu_settings_progress_bar_refresh():
    kw = fast_gpu_settings({"log_every_n_steps": 25, "precision": "32-true", "benchmark": False}, off=["tf32"], cuda=True)
    bars = [c for c in kw["callbacks"] if isinstance(c, pl.callbacks.TQDMProgressBar)]
    assert len(bars) == 1 and bars[0].refresh_rate == 25
    assert kw["precision"] == "32-true" and kw["benchmark"] is False        # explicit settings win
    assert "callbacks" not in fast_gpu_settings({}, off=["async_checks", "tf32"], cuda=True)


def test_overrides_of_the_call_are_honoured():
    "A subclass that overrides the checked call (Denoiser.forward, a weighting's __call__, loss_and_sigmas) is run as it is."
    from diffexplore.sampling import EulerEDMSampler
    calls = {"forward": 0}
    class ClampDen(Denoiser):
        def forward(self, *a, **k): calls["forward"] += 1; return super().forward(*a, **k).clamp(-1, 1)
    class Double(EDMWeighting):
        def __call__(self, sigma): return 2 * super().__call__(sigma)
    class Forced(StandardDiffusionLoss):
        def loss_and_sigmas(self, *a, **k):
            loss, sigmas = super().loss_and_sigmas(*a, **k)
            return loss * 0 + 7.0, sigmas
    e = _engine(ClampDen(EDMScaling(0.5)), Forced(EDMSampling(), Double(0.5)), sampler=EulerEDMSampler(num_steps=2))
    t = _trainer(2)
    t.fit(e, _data())
    assert calls["forward"] == 2 and float(t.logged_metrics["train/loss"]) == 7.0
    e.sample({}, batch_size=2, shape=(3, 8, 8))
    assert calls["forward"] == 4                                  # 2 sampling steps, through the override
    x, s = torch.zeros(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    torch.manual_seed(0); doubled = StandardDiffusionLoss(EDMSampling(), Double(0.5))(e.model, Denoiser(EDMScaling(0.5)), None, x, {}, sigmas=s)
    torch.manual_seed(0); plain = StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5))(e.model, Denoiser(EDMScaling(0.5)), None, x, {}, sigmas=s)
    torch.testing.assert_close(doubled, 2 * plain)


def test_foreign_sampler_gets_the_checked_denoiser():
    "A sampler of the user's own (no `checks_sigmas`) calls the checked denoiser: σ = 0 with EDMScaling is a ValueError, not NaN."
    e = _engine()
    e.sampler = lambda den, x, c, uc=None: den(x, torch.zeros(x.shape[0]), c)
    with pytest.raises(ValueError, match="sigma=0"): e.sample({}, batch_size=2, shape=(3, 8, 8))


def test_deferred_checks_read_the_loss_only_on_logging_steps(monkeypatch):
    "With deferred checks the loss is not in Lightning's progress-bar metrics (read back every step): 100 steps, one read."
    from diffexplore.engine import LossProgressBar
    reads = [0]
    real = torch.Tensor.item
    e = _engine(sync_checks=False, fused_optimizer=True)
    kw = fast_gpu_settings(dict(max_steps=100, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_model_summary=False, log_every_n_steps=50), cuda=True)
    kw.pop("precision"); kw.pop("benchmark")
    bar = next(c for c in kw["callbacks"] if isinstance(c, LossProgressBar))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: (reads.__setitem__(0, reads[0] + 1), real(self))[1])
    t = pl.Trainer(**kw); t.fit(e, _data(400))
    monkeypatch.undo()
    assert t.global_step == 100 and reads[0] <= 2, reads           # b1a179a: one per step (prog_bar=True)
    assert e.host_loss is not None and bar.get_metrics(t, e)["loss"] == f"{e.host_loss:.4g}"
