"""The shipped recipe configs (rectified flow, Min-SNR) train from the CLI as the main job does, and build the
components they name. The learned-weighting config (digits_edm2) has its own tests in test_learned_weighting.py."""
import json
from pathlib import Path
import pytest
import torch
from diffexplore.cli import main, load_config, build_engine, load_engine, shipped_configs
from _runs import TINY, NO_FLOOR

CONFIGS = Path(__file__).parent.parent / "configs"
TINY = [*TINY, *NO_FLOOR]   # the floor evaluations are tested in test_excess_loss.py
# name -> the (scaling, σ sampler, weighting) classes the config must build
RECIPES = {"digits_flow": ("RectifiedFlowScaling", "LogitNormalSampling", "RectifiedFlowWeighting"),
           "digits_minsnr": ("EDMScaling", "EDMSampling", "MinSNRWeighting")}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_config_builds_its_components(name):
    assert name in shipped_configs()
    engine = build_engine(load_config(name, TINY))
    parts = (engine.denoiser.scaling, engine.loss_fn.sigma_sampler, engine.loss_fn.loss_weighting)
    assert tuple(type(p).__name__ for p in parts) == RECIPES[name]


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_config_trains_twenty_steps(name, tmp_path):
    run = tmp_path / name
    rc = main(["train", "--config", name, "--run-dir", str(run), "trainer.max_steps=20", "lightning.sample_every_n_steps=0",
               "lightning.checkpoint_every_n_steps=0", "lightning.judge_samples=0", *TINY])
    assert rc == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 20 and 0 < s["final_loss"] < float("inf")
    engine = load_engine(run / "checkpoints" / "last.ckpt")
    x = engine.generate(4, class_labels=torch.arange(4), seed=0)
    assert x.shape == (4, 1, 8, 8) and bool(torch.isfinite(x).all())


def test_weighting_infinite_where_the_sigma_sampler_draws_is_refused_before_training(tmp_path, capsys):
    "k-diffusion's untruncated cosine σ sampler can draw σ = 0, where EDMWeighting is infinite: one line, no run dir."
    key = "model.params.loss_fn_config.params.sigma_sampler_config"
    run = tmp_path / "r"
    rc = main(["train", "--config", "digits", "--run-dir", str(run), f"{key}.target=diffexplore.sigma_sampling.CosineSampling",
               f"{key}.params={{sigma_data: 0.5, sigma_min: 0.0}}", "trainer.max_steps=2", *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "infinite at sigma=0.0" in err and "CosineSampling" in err
    assert not run.exists()


@pytest.mark.parametrize("name", ["digits", "digits_flow", "digits_minsnr", "digits_edm2", "mnist_toy_sgm"])
def test_shipped_digits_configs_do_not_warn_about_sigma_data(name):
    "Every component's σ_data (VScaling's implicit 1 included) is within 25 % of the digits' measured std."
    import warnings
    from diffexplore.cli import build_data, measure_sigma_data, check_sigma_data, SigmaDataWarning
    cfg = load_config(name, TINY if name != "mnist_toy_sgm" else [])
    dm = build_data(cfg)
    data_sigma = measure_sigma_data(cfg, dm)["value"]
    engine = build_engine(cfg, dm)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SigmaDataWarning)
        comps = check_sigma_data(engine, data_sigma)
    assert all(abs(v / data_sigma - 1) <= 0.25 for v in comps.values()), comps
    assert abs(data_sigma - 0.7521) < 1e-3
