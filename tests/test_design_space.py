"Design space of training recipes (`diffexplore.recipes`): densities, effective weights, input/target variance, presets, configs, errors."
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffexplore.data import DigitsDataModule
from diffexplore.discretizer import LegacyDDPMDiscretization
from diffexplore.recipes import (DISCRETE_BIN, RECIPE_CURVES, RECIPES, Recipe, check_recipe, densities_on_axis, density,
                                 expectation, get_recipe, input_std_curve, io_variance, log_sigma_moments, recipe_curves,
                                 recipe_from_config, recipe_values, recipe_x, sigma_grid, target_std_curve, weight_curves,
                                 weight_norms)
from diffexplore.scalings import EDMScaling, EpsScaling, RectifiedFlowScaling, VScaling
from diffexplore.sigma_sampling import CosineSampling, DiscreteSampling, EDMSampling, LogitNormalSampling, LogUniformSampling
from diffexplore.weightings import (EDMWeighting, EpsWeighting, MinSNRWeighting, RectifiedFlowWeighting, SoftMinSNRWeighting,
                                    UnitWeighting, VWeighting)

f64 = torch.float64
CONFIGS = Path(__file__).parent.parent / "configs"
WIDE = sigma_grid(20001, 1e-12, 1e8)
SD3 = "SD3 (logit-normal, shift 3)"


@pytest.fixture(scope="module")
def digits(): return DigitsDataModule().train_images()[:256]


# ---------------------------------------------------------------- densities
@pytest.mark.parametrize("sampling", [EDMSampling(-1.2, 1.2), EDMSampling(-1.1, 2.0), LogitNormalSampling(0.0, 1.0, shift=3.0),
                                      LogitNormalSampling(0.5, 0.7), CosineSampling(1.0), CosineSampling(0.5, 0.0, math.inf),
                                      LogUniformSampling(0.002, 80.0), DiscreteSampling(LegacyDDPMDiscretization(), 1000)],
                         ids=repr)
def test_density_integrates_to_one_over_log_sigma(sampling):
    assert float(torch.trapezoid(density(sampling, WIDE), WIDE.log())) == pytest.approx(1.0, abs=2e-4)
    assert expectation(sampling, torch.ones_like) == pytest.approx(1.0, abs=1e-8)


def test_discrete_density_is_the_table_histogram():
    d = DiscreteSampling(LegacyDDPMDiscretization(), 1000)
    table = LegacyDDPMDiscretization()(1000, do_append_zero=False, flip=True).double()
    k = torch.arange(-60, 40, dtype=f64)
    centres = ((k + 0.5) * DISCRETE_BIN).exp()                      # one σ inside each ln σ bin
    dens = density(d, centres)
    assert float((dens * DISCRETE_BIN).sum()) == pytest.approx(1.0, abs=1e-12)   # bin by bin: exactly the table's mass
    in_bin = (torch.floor(table.log() / DISCRETE_BIN) == 10).double().mean()   # bin [1.0, 1.1) in ln σ
    assert float(density(d, [math.exp(1.05)])[0]) == pytest.approx(float(in_bin) / DISCRETE_BIN, rel=1e-12)
    assert float(density(d, [1e-3, 100.0]).abs().sum()) == 0.0    # outside [0.029, 14.6]: nothing
    assert expectation(d, lambda s: s ** -2) == pytest.approx(float((table ** -2).mean()), rel=1e-12)   # exact sum over the table


def test_density_matches_closed_forms():
    x = torch.linspace(-4, 4, 17, dtype=f64)
    edm = density(EDMSampling(-1.2, 1.2), x.exp())
    torch.testing.assert_close(edm, torch.exp(-(x + 1.2) ** 2 / (2 * 1.44)) / (1.2 * math.sqrt(2 * math.pi)))
    sd3 = density(LogitNormalSampling(0.0, 1.0, shift=3.0), x.exp())      # ln σ ~ N(ln 3, 1)
    torch.testing.assert_close(sd3, torch.exp(-(x - math.log(3)) ** 2 / 2) / math.sqrt(2 * math.pi))
    cos = density(CosineSampling(0.5, 0.0, math.inf), 0.5 * x.exp())    # untruncated: sech(x)/π on x = ln(σ/σ_d)
    torch.testing.assert_close(cos, 1 / (math.pi * x.cosh()))
    with pytest.raises(ValueError, match="sigmas"): density(EDMSampling(), [-1.0])


def test_published_densities_on_one_axis():
    "x = ln(σ/σ_data): EDM N(−0.51, 1.2²), EDM2-512 N(0.29, 1.0²), EDM2-64 N(−0.11, 1.6²), iCT/ECT N(−0.41, 2.0²), SD3 shift 3 N(1.10, 1.0²)."
    table = {"EDM": (-0.51, 1.2), "EDM2 ImageNet-512": (0.29, 1.0), "EDM2 ImageNet-64": (-0.11, 1.6), "iCT/ECT": (-0.41, 2.0), SD3: (1.10, 1.0)}
    for name, (mean, std) in table.items():
        r = RECIPES[name]
        got_mean, got_std = log_sigma_moments(r.sampling, r.sigma_data)
        assert round(got_mean, 2) == mean and round(got_std, 2) == std, name
    for name in ("EDM", "EDM2 ImageNet-512", "EDM2 ImageNet-64", "iCT/ECT"):   # exactly P_mean − ln σ_data, P_std
        r = RECIPES[name]
        assert log_sigma_moments(r.sampling, 0.5) == pytest.approx((r.sampling.p_mean + math.log(2), r.sampling.p_std), abs=1e-9)
    assert log_sigma_moments(RECIPES[SD3].sampling, 1.0) == pytest.approx((math.log(3), 1.0), abs=1e-9)
    x = torch.linspace(-6, 6, 1201, dtype=f64)
    dens = densities_on_axis(list(table), x)
    assert list(dens) == list(table)
    for name, (mean, std) in table.items():                          # the same normals, drawn on the axis
        torch.testing.assert_close(dens[name], torch.exp(-(x - mean) ** 2 / (2 * std ** 2)) / (std * math.sqrt(2 * math.pi)), atol=0.004, rtol=0)
    cos_mean, cos_std = log_sigma_moments(CosineSampling(1.0, 0.0, math.inf), 1.0)
    assert cos_mean == pytest.approx(0.0, abs=1e-9) and cos_std == pytest.approx(math.pi / 2, abs=1e-3)   # sech(x)/π


# ---------------------------------------------------------------- effective weights
@pytest.mark.parametrize("name", list(RECIPES))
def test_weight_curves_normalised(name):
    r = RECIPES[name]
    lo, hi = r.sampling.support
    s = sigma_grid(30001, max(lo, 1e-14), min(hi, 1e8))             # the support's ends on the grid (cosine is truncated)
    w = weight_curves(r, s)
    assert list(w) == ["p", "λ·c_out²", "p·λ", "p·λ·c_out²"]
    torch.testing.assert_close(w["λ·c_out²"], r.weighting(s) * r.scaling.c_out(s) ** 2)
    if isinstance(r.sampling, DiscreteSampling): return   # a histogram times a smooth weight: checked below
    for k in ("p·λ", "p·λ·c_out²"): assert float(torch.trapezoid(w[k], s.log())) == pytest.approx(1.0, abs=5e-4), k


def test_weight_norms_closed_forms_and_matched_pairs():
    edm = RECIPES["EDM"]
    assert weight_norms(edm)["p·λ"] == pytest.approx(math.exp(2 * 1.2 + 2 * 1.2 ** 2) + 4, rel=1e-8)   # E[σ⁻²] + 1/σ_d²
    s = sigma_grid(50)
    for name in ("EDM", "EDM2 ImageNet-512", SD3, "cosine (v-diffusion)"):   # λ·c_out² = 1: F-space weight is p itself
        w = weight_curves(RECIPES[name], s)
        torch.testing.assert_close(w["λ·c_out²"], torch.ones(50, dtype=f64))
        torch.testing.assert_close(w["p·λ·c_out²"], w["p"])
    m = RECIPES["Min-SNR"]                                          # ε-prediction with min(1/σ², 5): λ·c_out² = min(1, 5σ²)
    torch.testing.assert_close(weight_curves(m, s)["λ·c_out²"], torch.clamp(5 * s ** 2, max=1.0))
    table = LegacyDDPMDiscretization()(1000, do_append_zero=False, flip=True).double()
    assert weight_norms(m)["p·λ·c_out²"] == pytest.approx(float(torch.clamp(5 * table ** 2, max=1).mean()), rel=1e-12)
    # SD3: v-MSE λ = (1 + 1/σ)², the same weight on F as the rectified-flow loss on v
    torch.testing.assert_close(RECIPES[SD3].weighting(s), (1 + 1 / s) ** 2)


def test_io_variance_on_digits(digits):
    s, s2 = sigma_grid(9), float(digits.var())
    edm_matched = Recipe("EDM, σ_d = s", EDMScaling(float(digits.std())), EDMWeighting(float(digits.std())), EDMSampling(), float(digits.std()))
    for k, v in io_variance(edm_matched, digits, s).items(): torch.testing.assert_close(v, torch.ones(9, dtype=f64), atol=0.04, rtol=0, msg=k)
    io = io_variance(RECIPES[SD3], digits, s)
    torch.testing.assert_close(io["var F*"], torch.full((9,), 1 + s2, dtype=f64), atol=0.06, rtol=0)      # v = ε − x0
    torch.testing.assert_close(io["var c_in·x"], (s2 + s ** 2) / (1 + s) ** 2, atol=0.04, rtol=0)
    torch.testing.assert_close(io["var c_in·x"], input_std_curve(RectifiedFlowScaling(), digits, s) ** 2)
    torch.testing.assert_close(io["var F*"], target_std_curve(RectifiedFlowScaling(), digits, s) ** 2)
    torch.testing.assert_close(io_variance(RECIPES["Min-SNR"], digits, s)["var F*"], torch.ones(9, dtype=f64), atol=0.04, rtol=0)  # ε


def test_recipe_values_are_recipe_curves_at_sigma(digits):
    vals = recipe_values(["EDM", "Min-SNR", RECIPES[SD3]], 0.37, digits)
    assert list(vals) == ["EDM", "Min-SNR", SD3] and all(list(v) == list(RECIPE_CURVES) for v in vals.values())
    for name, v in vals.items():
        want = recipe_curves(RECIPES[name], torch.tensor([0.37], dtype=f64), digits)
        assert v == {k: float(t[0]) for k, t in want.items()}
    assert float(recipe_x(RECIPES["EDM"], [0.5])[0]) == 0.0 and float(recipe_x(RECIPES["EDM"], [0.5], "log_sigma")[0]) == math.log(0.5)


# ---------------------------------------------------------------- presets, configs, errors
def test_presets():
    kinds = {n: (type(r.scaling).__name__, type(r.weighting).__name__, type(r.sampling).__name__, r.sigma_data) for n, r in RECIPES.items()}
    assert kinds == {"EDM": ("EDMScaling", "EDMWeighting", "EDMSampling", 0.5),
                     "EDM2 ImageNet-512": ("EDMScaling", "EDMWeighting", "EDMSampling", 0.5),
                     "EDM2 ImageNet-64": ("EDMScaling", "EDMWeighting", "EDMSampling", 0.5),
                     "iCT/ECT": ("EDMScaling", "EDMWeighting", "EDMSampling", 0.5),
                     SD3: ("RectifiedFlowScaling", "RectifiedFlowWeighting", "LogitNormalSampling", 1.0),
                     "cosine (v-diffusion)": ("VScaling", "VWeighting", "CosineSampling", 1.0),
                     "Min-SNR": ("EpsScaling", "MinSNRWeighting", "DiscreteSampling", 1.0)}
    assert [(r.sampling.p_mean, r.sampling.p_std) for n, r in RECIPES.items() if isinstance(r.sampling, EDMSampling)] == \
        [(-1.2, 1.2), (-0.4, 1.0), (-0.8, 1.6), (-1.1, 2.0)]
    assert (RECIPES[SD3].sampling.m, RECIPES[SD3].sampling.s, RECIPES[SD3].sampling.shift) == (0.0, 1.0, 3.0)
    assert RECIPES["Min-SNR"].weighting.gamma == 5.0 and RECIPES["Min-SNR"].sampling.num_idx == 1000
    assert get_recipe("EDM") is RECIPES["EDM"] and get_recipe(RECIPES[SD3]) is RECIPES[SD3]
    assert repr(RECIPES["EDM"]) == "Recipe('EDM', EDMScaling(sigma_data=0.5), EDMWeighting(sigma_data=0.5), EDMSampling(p_mean=-1.2, p_std=1.2), sigma_data=0.5)"
    for r in RECIPES.values(): assert r.source


def test_recipe_from_config_files_and_mappings():
    path = recipe_from_config(CONFIGS / "digits.yaml", sigma_data=0.5)
    assert repr(path) == repr(RECIPES["EDM"]).replace("'EDM'", "'digits'")
    auto = recipe_from_config("digits")                               # `sigma_data: auto`: the digits' measured std
    assert auto.sigma_data == pytest.approx(0.7521, abs=5e-5) and auto.scaling.sigma_data == auto.weighting.sigma_data == auto.sigma_data
    flow = recipe_from_config("digits_flow")
    assert (type(flow.scaling), type(flow.weighting), type(flow.sampling), flow.sigma_data) == \
        (RectifiedFlowScaling, RectifiedFlowWeighting, LogitNormalSampling, 1.0)   # no sigma_data anywhere: 1
    sgm = recipe_from_config("sgm_toy/mnist_cond_discrete_eps", name="sgm eps")   # sgm class paths, DiscreteSampling from a config
    assert sgm.name == "sgm eps" and isinstance(sgm.sampling, DiscreteSampling) and sgm.sampling.num_idx == 1000 and sgm.sigma_data == 0.5
    cfg = OmegaConf.load(CONFIGS / "digits_minsnr.yaml")
    for c in (cfg, OmegaConf.to_container(cfg)):
        r = recipe_from_config(c, sigma_data=0.5)
        assert r.name == "config" and type(r.weighting) is MinSNRWeighting and r.weighting.gamma == 5.0


def test_recipe_from_config_errors():
    with pytest.raises(ValueError, match=r"model.params.loss_fn_config.params.sigma_sampler_config \(missing key 'model.params.loss_fn_config'\)"):
        recipe_from_config({"model": {"params": {"denoiser_config": {"params": {"scaling_config": {"target": "diffexplore.scalings.VScaling"}}}}}})
    with pytest.raises(ValueError, match="no_such_config"): recipe_from_config("no_such_config")
    with pytest.raises(TypeError, match="config=3"): recipe_from_config(3)
    bad = OmegaConf.to_container(OmegaConf.load(CONFIGS / "digits_flow.yaml"))
    bad["model"]["params"]["loss_fn_config"]["params"]["sigma_sampler_config"] = {"target": "diffexplore.sigma_sampling.CosineSampling",
                                                                                   "params": {"sigma_data": 1.0, "sigma_min": 0.0}}
    with pytest.raises(ValueError, match=r"RectifiedFlowWeighting\(\) is infinite at sigma=0.0"): recipe_from_config(bad)


def test_recipe_errors():
    with pytest.raises(ValueError, match=r"recipe='EDM3'.*"):
        get_recipe("EDM3")
    msg = None
    try: get_recipe("EDM3")
    except ValueError as e: msg = str(e)
    assert "\n" not in msg and all(n in msg for n in RECIPES)          # one line, listing the presets
    with pytest.raises(TypeError, match="recipe=3"): get_recipe(3)
    zero = CosineSampling(1.0, 0.0)                                   # support starts at 0: σ = 0 can be drawn
    for w in (EDMWeighting(), VWeighting(), EpsWeighting(), RectifiedFlowWeighting(), SoftMinSNRWeighting(0.5)):
        if not w.finite_at_zero:
            with pytest.raises(ValueError, match="infinite at sigma=0.0"): Recipe("r", VScaling(), w, zero, 1.0)
    for w in (UnitWeighting(), MinSNRWeighting(5.0)): check_recipe(w, zero)   # finite at 0: allowed
    check_recipe(EDMWeighting(), EDMSampling())                       # a log-normal never draws 0
    with pytest.raises(ValueError, match="sigma_data=-1"): Recipe("r", EpsScaling(), EpsWeighting(), EDMSampling(), -1)
    with pytest.raises(ValueError, match="x_axis='sigma'"): recipe_x(RECIPES["EDM"], [1.0], "sigma")
    with pytest.raises(ValueError, match="recipe='nope'"): densities_on_axis(["EDM", "nope"])
