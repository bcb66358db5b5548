"""EDM2's learned weighting (`LearnedWeightingLoss`) in the engine: a CPU run of `configs/digits_edm2.yaml` through the
CLI trains u's head, logs it per σ bucket and samples without the loss; a resumed run is bit-exact, u's head and its
AdamW state included; the config builds it; the loss stays finite over σ and under bf16 autocast; bad input is named."""
import contextlib, csv, io
from pathlib import Path
import pytest
import torch
from diffexplore.cli import main, load_config, train, load_engine, shipped_configs
from diffexplore.core import instantiate_from_config
from diffexplore.engine import sigma_bucket_names
from diffexplore.loss import LearnedWeightingLoss, StandardDiffusionLoss
from diffexplore.denoiser import Denoiser
from diffexplore.scalings import EDMScaling
from diffexplore.weightings import EDMWeighting
from diffexplore.sigma_sampling import EDMSampling
from _runs import TINY, NO_FLOOR

CONFIG = Path(__file__).parent.parent / "configs" / "digits_edm2.yaml"
TINY = [*TINY, *NO_FLOOR]   # the floor evaluations are tested in test_excess_loss.py
U = "loss_fn.logvar.weight"


@pytest.fixture(scope="module")
def run20(tmp_path_factory):
    "20 steps of the shipped config, named as `--config digits_edm2`, through the CLI."
    run = tmp_path_factory.mktemp("edm2")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["train", "--config", "digits_edm2", "--run-dir", str(run), "--no-judge", "trainer.max_steps=20",
                   "trainer.log_every_n_steps=5", "lightning.sample_every_n_steps=0", *TINY])
    assert rc == 0, err.getvalue()[-2000:]
    return run


def test_config_is_digits_with_the_learned_loss():
    "`digits_edm2` is shipped, and differs from `digits` only in the loss target and its `logvar_channels`."
    assert shipped_configs()["digits_edm2"].resolve() == CONFIG.resolve()
    edm2, digits = load_config(CONFIG), load_config(CONFIG.parent / "digits.yaml")
    loss = edm2.model.params.loss_fn_config
    assert loss.target == "diffexplore.loss.LearnedWeightingLoss" and loss.params.logvar_channels == 128
    del edm2.model.params.loss_fn_config.params["logvar_channels"]
    edm2.model.params.loss_fn_config.target = "diffexplore.loss.StandardDiffusionLoss"
    assert edm2 == digits   # sigma_data and everything else as the main job's


def test_twenty_steps_train_u_and_log_it(run20):
    ck = torch.load(run20 / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    sd = ck["state_dict"]
    assert ck["global_step"] == 20 and sd[U].shape == (128,)
    assert sd[U].abs().max() > 0                                            # AdamW reached the head (it starts at 0)
    assert {"loss_fn.logvar.freqs", "loss_fn.logvar.phases"} <= set(sd)
    assert not any("logvar" in k for k in sd if k.startswith("model_ema.") or k.startswith("model."))   # EMA: network only
    with (run20 / "metrics.csv").open() as f: cols = next(csv.reader(f))
    logged = {c.split("/")[1] for c in cols if c.startswith("loss_sigma/")}
    assert logged and logged <= set(sigma_bucket_names())
    for name in ("logvar", "weighted_error"): assert {f"{name}_sigma/{b}" for b in logged} <= set(cols), (name, cols)


def test_sampling_does_not_need_the_loss(run20):
    engine = load_engine(run20 / "checkpoints/last.ckpt")
    assert isinstance(engine.loss_fn, LearnedWeightingLoss) and torch.equal(engine.loss_fn.logvar.weight,
        torch.load(run20 / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["state_dict"][U])
    engine.loss_fn = None
    imgs = engine.generate(4, class_labels=[0, 1, 2, 3], seed=0)
    assert imgs.shape == (4, 1, 8, 8) and torch.isfinite(imgs).all()


def test_resume_is_exact_with_the_learned_weighting(tmp_path):
    "3 steps + checkpoint + resume to 6 == 6 straight: every state_dict entry (u's head too) and AdamW's state of u's head."
    common = [*TINY, "data.params.batch_size=512", "lightning.sample_every_n_steps=0", "lightning.judge_samples=0",
              "lightning.checkpoint_every_n_steps=3", "model.params.warmup_steps=4", "trainer.log_every_n_steps=1"]
    straight, part = tmp_path / "straight", tmp_path / "part"
    train(load_config(CONFIG, [*common, "trainer.max_steps=6"]), straight, judge=False)
    train(load_config(CONFIG, [*common, "trainer.max_steps=3"]), part, judge=False)
    train(load_config(CONFIG, [*common, "trainer.max_steps=6"]), part, resume=part / "checkpoints/last.ckpt", judge=False)
    c1, c2 = (torch.load(r / "checkpoints/last.ckpt", map_location="cpu", weights_only=False) for r in (straight, part))
    assert c1["global_step"] == c2["global_step"] == 6 and c1["state_dict"].keys() == c2["state_dict"].keys()
    for k in c1["state_dict"]: assert torch.equal(c1["state_dict"][k], c2["state_dict"][k]), k
    assert c1["state_dict"][U].abs().max() > 0
    s1, s2 = c1["optimizer_states"][0]["state"], c2["optimizer_states"][0]["state"]
    u_idx = max(s1)                                   # the loss's parameters come last in `trainable_parameters`
    assert s1[u_idx]["exp_avg"].shape == (128,) and s1[u_idx]["exp_avg"].abs().max() > 0
    assert s1.keys() == s2.keys()
    for i in s1:
        for k in s1[i]: assert torch.equal(torch.as_tensor(s1[i][k]), torch.as_tensor(s2[i][k])), (i, k)


def test_instantiate_from_config():
    lf = instantiate_from_config({"target": "diffexplore.loss.LearnedWeightingLoss", "params": {
        "sigma_sampler_config": {"target": "diffexplore.sigma_sampling.EDMSampling", "params": {"p_mean": -1.2, "p_std": 1.2}},
        "loss_weighting_config": {"target": "diffexplore.weightings.EDMWeighting", "params": {"sigma_data": 0.5}},
        "logvar_channels": 32}})
    assert isinstance(lf, LearnedWeightingLoss) and lf.logvar.weight.shape == (32,) and lf.loss_weighting.sigma_data == 0.5
    assert repr(lf).startswith("LearnedWeightingLoss(sigma_sampler=EDMSampling(") and repr(lf).endswith("logvar_channels=32)")


@pytest.mark.parametrize("autocast", [False, True])
def test_finite_over_sigma(autocast):
    "σ ∈ [1e-6, 1e4], a head with random weights, float32 and bf16 autocast: finite float32 loss; u ≡ 0 gives the plain loss."
    torch.manual_seed(0)
    sig, x0 = torch.logspace(-6, 4, 60), torch.randn(60, 2, 4, 4)
    net = lambda x, c_noise, cond: torch.randn_like(x)
    lf = LearnedWeightingLoss(EDMSampling(), EDMWeighting(0.5))
    noise = torch.randn_like(x0)
    plain = StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5))(lambda x, c, cond: torch.zeros_like(x), Denoiser(EDMScaling(0.5)),
                                                                     None, x0, {}, sigmas=sig, noise=noise)
    assert torch.equal(lf(lambda x, c, cond: torch.zeros_like(x), Denoiser(EDMScaling(0.5)), None, x0, {}, sigmas=sig,
                          noise=noise).detach(), plain)
    with torch.no_grad(): lf.logvar.weight.normal_(0, 0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
        l = lf(net, Denoiser(EDMScaling(0.5)), None, x0, {}, sigmas=sig)
    assert l.dtype == torch.float32 and torch.isfinite(l).all()
    u = lf.logvar(sig)
    assert u.abs().max() > 0.1 and torch.isfinite(u).all()


def test_bad_logvar_channels_is_named(tmp_path, capsys):
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=f"logvar_channels={bad}"): LearnedWeightingLoss(EDMSampling(), EDMWeighting(), logvar_channels=bad)
    assert main(["train", "--config", str(CONFIG), "--run-dir", str(tmp_path / "r"), "--no-judge", *TINY,
                 "model.params.loss_fn_config.params.logvar_channels=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "logvar_channels=0" in err and len(err.splitlines()) == 1, err


def test_the_compiled_step_trains_u_as_eager_does(monkeypatch):
    "`compile_step=True` (torch.compile of `loss_fn.loss`, u's head inside it; aot_eager here, no C++ build) trains u as eager does."
    import lightning.pytorch as pl
    from diffexplore.engine import DiffusionEngine
    from diffexplore.networks import build_unet, OpenAIWrapper
    real, calls = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or real(fn, backend="aot_eager", dynamic=kw.get("dynamic")))
    data = [{"jpg": x} for x in torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))]
    def run(compile_step):
        pl.seed_everything(0, verbose=False)
        e = DiffusionEngine(OpenAIWrapper(build_unet("tiny", in_channels=3, sample_size=8)), Denoiser(EDMScaling(0.5)),
                            LearnedWeightingLoss(EDMSampling(), EDMWeighting(0.5), logvar_channels=16), lr=1e-2, compile_step=compile_step)
        pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False).fit(e, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=4))
        return e
    eager, compiled = run(False), run(True)
    assert calls and compiled.compiled_step is not None and compiled.compiled_step.shape == (4, 3, 8, 8)
    assert eager.loss_fn.logvar.weight.abs().max() > 0
    torch.testing.assert_close(compiled.loss_fn.logvar.weight, eager.loss_fn.logvar.weight, rtol=1e-5, atol=1e-6)
