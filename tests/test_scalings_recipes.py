"""The rectified-flow, TrigFlow and consistency-boundary scalings as sgm builds and uses them: from a config (our path and
sgm's), inside a `Denoiser`, with the values their published formulas give (written out by hand below)."""
import math

import pytest
import torch

from diffexplore.core import append_dims, instantiate_from_config
from diffexplore.denoiser import Denoiser, ideal_network_output
from diffexplore.scalings import (SCALINGS, ConsistencyBoundaryScaling, EDMScaling, RectifiedFlowScaling,
                                  TrigFlowScaling)

f64 = lambda v: torch.tensor(v, dtype=torch.float64)
NEW = [RectifiedFlowScaling(), TrigFlowScaling(0.5), ConsistencyBoundaryScaling(0.5, 0.002)]
IDS = [type(s).__name__ for s in NEW]
SIGMAS = f64([0.002, 0.01, 0.5, 1.0, 3.0, 80.0])   # ≥ the consistency model's σ_min = 0.002


@pytest.mark.parametrize("target, params, want", [
    ("diffexplore.scalings.RectifiedFlowScaling", {"multiplier": 1.0}, RectifiedFlowScaling(1.0)),
    ("diffexplore.scalings.TrigFlowScaling", {"sigma_data": 1.0}, TrigFlowScaling(1.0)),
    ("diffexplore.scalings.ConsistencyBoundaryScaling", {"sigma_data": 0.5, "sigma_min": 0.002}, ConsistencyBoundaryScaling()),
    ("sgm.modules.diffusionmodules.denoiser_scaling.RectifiedFlowScaling", {}, RectifiedFlowScaling()),
    ("sgm.modules.diffusionmodules.denoiser_scaling.TrigFlowScaling", {}, TrigFlowScaling()),
    ("sgm.modules.diffusionmodules.denoiser_scaling.ConsistencyBoundaryScaling", {"sigma_min": 0.0}, ConsistencyBoundaryScaling(sigma_min=0.0)),
])
def test_instantiate_from_config(target, params, want):
    got = instantiate_from_config({"target": target, "params": params})
    assert type(got) is type(want) and repr(got) == repr(want)
    for a, b in zip(got(SIGMAS), want(SIGMAS)): assert torch.equal(a, b)


def test_config_errors_name_the_parameter():
    with pytest.raises(ValueError, match="multiplier=-5"):
        instantiate_from_config({"target": "diffexplore.scalings.RectifiedFlowScaling", "params": {"multiplier": -5}}, path="model")
    with pytest.raises(ValueError, match="sigma_min=-1"):
        instantiate_from_config({"target": "diffexplore.scalings.ConsistencyBoundaryScaling", "params": {"sigma_min": -1}})


def test_short_names():
    assert list(SCALINGS)[:5] == ["EDM", "Eps", "V", "VWithEDMcNoise", "Score"]
    assert (SCALINGS["RectifiedFlow"], SCALINGS["TrigFlow"], SCALINGS["ConsistencyBoundary"]) == \
           (RectifiedFlowScaling, TrigFlowScaling, ConsistencyBoundaryScaling)


@pytest.mark.parametrize("scaling", NEW, ids=IDS)
def test_denoiser_with_ideal_network_gives_x0(scaling):
    torch.manual_seed(0)
    sigma = SIGMAS[1:]                                  # σ > σ_min: at σ_min c_out = 0 and F* is undefined
    x0 = 0.5 * torch.randn(len(sigma), 3, 4, 4, dtype=torch.float64)
    x_t = x0 + append_dims(sigma, 4) * torch.randn_like(x0)
    F_star = ideal_network_output(scaling, x_t, sigma, x0)
    seen = {}
    def oracle(x, c_noise, cond):                       # the network that knows the answer
        seen.update(x=x, c_noise=c_noise); return F_star
    D = Denoiser(scaling)(oracle, x_t, sigma, {})
    torch.testing.assert_close(D, x0, rtol=0, atol=1e-10)
    _, _, c_in, c_noise = scaling(sigma)
    torch.testing.assert_close(seen["c_noise"], c_noise)
    torch.testing.assert_close(seen["x"], append_dims(c_in, 4) * x_t)


@pytest.mark.parametrize("scaling", NEW, ids=IDS)
def test_sigma_from_c_noise_inverts_c_noise(scaling):
    torch.testing.assert_close(scaling.sigma_from_c_noise(scaling.c_noise(SIGMAS)), SIGMAS, rtol=1e-9, atol=0)


def test_rectified_flow_values_by_hand():
    # σ = 3: t = 3/(1+3) = 0.75; c_skip = c_in = 1/(1+3) = 0.25; c_out = −0.75; c_noise = 1000·0.75 = 750
    torch.testing.assert_close(torch.stack(RectifiedFlowScaling()(f64(3.0))), f64([0.25, -0.75, 0.25, 750.0]))
    # σ = 1: t = 0.5; 1/(1+1) = 0.5; c_noise = 500
    torch.testing.assert_close(torch.stack(RectifiedFlowScaling()(f64(1.0))), f64([0.5, -0.5, 0.5, 500.0]))
    # σ = 0.5: t = 0.5/1.5 = 1/3; c_skip = c_in = 1/1.5 = 2/3; c_out = −1/3; multiplier 1 → c_noise = 1/3
    torch.testing.assert_close(torch.stack(RectifiedFlowScaling(1.0)(f64(0.5))), f64([2 / 3, -1 / 3, 2 / 3, 1 / 3]))
    # σ = ∞ is t = 1: 0, −1, 0, 1000 (no NaN); huge finite σ stays finite in float32
    assert [c.item() for c in RectifiedFlowScaling()(math.inf)] == [0.0, -1.0, 0.0, 1000.0]
    assert all(torch.isfinite(c).all() for c in RectifiedFlowScaling()(torch.tensor([1e20, 3e38])))


def test_rectified_flow_is_sd3():
    # SD3 (sd3_impls.py, ModelSamplingDiscreteFlow): x_t = (1−t)·x0 + t·ε, D = x_t − t·v̂, timestep = 1000·t
    torch.manual_seed(1)
    x0, eps, v_hat = (torch.randn(4, 8, dtype=torch.float64) for _ in range(3))
    t = f64([0.05, 0.3, 0.7, 0.95])[:, None]
    sigma = t / (1 - t)
    c_skip, c_out, c_in, c_noise = RectifiedFlowScaling()(sigma)
    x = x0 + sigma * eps
    torch.testing.assert_close(c_in * x, (1 - t) * x0 + t * eps)
    torch.testing.assert_close(c_skip * x + c_out * v_hat, (1 - t) * x0 + t * eps - t * v_hat)
    torch.testing.assert_close(c_skip * x + c_out * (eps - x0), x0)
    torch.testing.assert_close(c_noise, 1000 * t)


def test_trigflow_values_by_hand():
    # σ_d = 0.5, σ = 0.5: c_skip = 0.25/(0.25+0.25) = 0.5; c_out = −0.5·0.5/√0.5; c_in = 1/√0.5; t = arctan(1) = π/4
    want = f64([0.5, -0.25 / math.sqrt(0.5), 1 / math.sqrt(0.5), math.pi / 4])
    torch.testing.assert_close(torch.stack(TrigFlowScaling(0.5)(f64(0.5))), want)
    # σ = 1.5: c_skip = 0.25/(2.25+0.25) = 0.1; c_out = −0.75/√2.5; c_in = 1/√2.5; t = arctan(3)
    want = f64([0.1, -0.75 / math.sqrt(2.5), 1 / math.sqrt(2.5), math.atan(3.0)])
    torch.testing.assert_close(torch.stack(TrigFlowScaling(0.5)(f64(1.5))), want)
    # σ_d = 1, σ = 3: c_skip = 1/10; c_out = −3/√10; c_in = 1/√10; t = arctan(3)
    want = f64([0.1, -3 / math.sqrt(10), 1 / math.sqrt(10), math.atan(3.0)])
    torch.testing.assert_close(torch.stack(TrigFlowScaling(1.0)(f64(3.0))), want)
    cs, co, ci, cn = TrigFlowScaling(0.5)(math.inf)
    assert (cs.item(), co.item(), ci.item()) == (0.0, -0.5, 0.0) and abs(cn.item() - math.pi / 2) < 1e-6


def test_trigflow_is_edm_with_f_sign_flipped():
    edm, trig = EDMScaling(0.5)(SIGMAS), TrigFlowScaling(0.5)(SIGMAS)
    torch.testing.assert_close(trig[0], edm[0]); torch.testing.assert_close(trig[2], edm[2])
    torch.testing.assert_close(trig[1], -edm[1])


def test_consistency_boundary_values_by_hand():
    cb = ConsistencyBoundaryScaling(0.5, 0.002)
    # σ = σ_min = 0.002: c_skip = 0.25/(0 + 0.25) = 1, c_out = 0, c_in = 1/√(0.002² + 0.25) = 1/√0.250004
    want = f64([1.0, 0.0, 1 / math.sqrt(0.250004), 250 * math.log(0.002)])
    torch.testing.assert_close(torch.stack(cb(f64(0.002))), want)
    # σ = 0.502: σ−σ_min = 0.5; c_skip = 0.25/0.5 = 0.5; c_out = 0.25/√(0.252004 + 0.25); c_noise = 250·ln 0.502
    want = f64([0.5, 0.25 / math.sqrt(0.502004), 1 / math.sqrt(0.502004), 250 * math.log(0.502)])
    torch.testing.assert_close(torch.stack(cb(f64(0.502))), want)
    # σ = 3.002: σ−σ_min = 3; c_skip = 0.25/9.25; c_out = 1.5/√(9.012004 + 0.25)
    want = f64([0.25 / 9.25, 1.5 / math.sqrt(9.262004), 1 / math.sqrt(9.262004), 250 * math.log(3.002)])
    torch.testing.assert_close(torch.stack(cb(f64(3.002))), want)


def test_consistency_boundary_is_identity_at_sigma_min():
    x = torch.randn(2, 3, 8, 8)
    D = Denoiser(ConsistencyBoundaryScaling())(lambda x, c, cond: torch.randn_like(x), x, torch.full((2,), 0.002), {})
    assert torch.equal(D, x)


def test_consistency_boundary_computes_below_sigma_min_as_the_source_does():
    "Below σ_min the formulas still compute (c_out < 0), as openai/consistency_models' do; σ = ∞ is refused."
    c_skip, c_out, c_in, c_noise = ConsistencyBoundaryScaling()(f64([0.001, 0.0]))
    assert torch.allclose(c_out, f64([-0.001 * 0.5 / math.sqrt(0.001**2 + 0.25), -0.002]), rtol=1e-12, atol=0)
    assert torch.allclose(c_skip, 0.25 / (f64([0.001, 0.002])**2 + 0.25), rtol=1e-12) and bool(torch.isfinite(c_noise).all())
    D = Denoiser(ConsistencyBoundaryScaling())(lambda x, c, cond: x, torch.zeros(1, 2), torch.tensor([1e-4]), {})
    assert bool(torch.isfinite(D).all())
    with pytest.raises(ValueError, match="sigma=inf"):
        ConsistencyBoundaryScaling()(math.inf)


@pytest.mark.parametrize("make, name, value", [
    (lambda: RectifiedFlowScaling(0.0), "multiplier", "0.0"),
    (lambda: RectifiedFlowScaling(-1.0), "multiplier", "-1.0"),
    (lambda: RectifiedFlowScaling(math.nan), "multiplier", "nan"),
    (lambda: RectifiedFlowScaling(math.inf), "multiplier", "inf"),
    (lambda: TrigFlowScaling(0.0), "sigma_data", "0.0"),
    (lambda: TrigFlowScaling(-0.5), "sigma_data", "-0.5"),
    (lambda: ConsistencyBoundaryScaling(sigma_data=0.0), "sigma_data", "0.0"),
    (lambda: ConsistencyBoundaryScaling(sigma_min=-0.002), "sigma_min", "-0.002"),
    (lambda: ConsistencyBoundaryScaling(sigma_min=math.inf), "sigma_min", "inf"),
])
def test_bad_parameters(make, name, value):
    with pytest.raises(ValueError, match=f"{name}={value}") as e: make()
    assert "\n" not in str(e.value)
