"""The recipe weightings (Min-SNR-γ, soft-min-SNR, rectified flow) built from configs, and Min-SNR-γ's three published
forms fuzzed against each other (Hang et al. 2023, arXiv 2303.09556, §3.4; huggingface/diffusers #5654 / PR #6307;
lucidrains/recurrent-interface-network-pytorch #11)."""
import math
import pytest
import torch
from hypothesis import given, settings, strategies as st
from diffexplore.core import instantiate_from_config
from diffexplore.weightings import (WEIGHTINGS, MinSNRWeighting, RectifiedFlowWeighting, SoftMinSNRWeighting,
                                    d_space_weight, weighting_in_space)

f64 = lambda v: torch.tensor(v, dtype=torch.float64)
SGM = "sgm.modules.diffusionmodules.denoiser_weighting"
# class name, params, σ, λ(σ) by hand
CASES = [("MinSNRWeighting", {"gamma": 3.0}, 0.5, 3.0),            # min(1/0.25, 3) = min(4, 3) = 3
         ("MinSNRWeighting", {}, 2.0, 0.25),                        # min(1/4, 5) = 0.25
         ("SoftMinSNRWeighting", {"sigma_data": 1.0}, 1.0, 0.5),    # 1/(1 + 1)
         ("SoftMinSNRWeighting", {}, 0.5, 2.0),                     # 1/(0.25 + 0.25)
         ("RectifiedFlowWeighting", {}, 0.5, 9.0)]                  # (1 + 1/0.5)² = 3²


@pytest.mark.parametrize("module", ["diffexplore.weightings", SGM])
@pytest.mark.parametrize("name,params,sigma,expected", CASES)
def test_built_from_config(module, name, params, sigma, expected):
    w = instantiate_from_config({"target": f"{module}.{name}", "params": params})
    assert type(w).__name__ == name and type(w).__module__ == "diffexplore.weightings"
    assert math.isclose(w(f64(sigma)).item(), expected, rel_tol=1e-12)


def test_config_errors_name_the_param():
    at = "model.params.loss_fn_config.params.loss_weighting_config"   # where sgm configs put it
    with pytest.raises(ValueError, match=r"^gamma must be finite and > 0; got gamma=-1\.0$"):
        instantiate_from_config({"target": f"{SGM}.MinSNRWeighting", "params": {"gamma": -1.0}})
    with pytest.raises(ValueError, match=rf"^{at}\.params\.gamma: .*gamma=-1\.0"):
        instantiate_from_config({"target": f"{SGM}.MinSNRWeighting", "params": {"gamma": -1.0}}, path=at)
    with pytest.raises(ValueError, match=rf"^{at}\.params\.sigma_data: .*sigma_data=0\.0"):
        instantiate_from_config({"target": "diffexplore.weightings.SoftMinSNRWeighting", "params": {"sigma_data": 0.0}},
                                path=at)
    with pytest.raises(TypeError):
        instantiate_from_config({"target": f"{SGM}.RectifiedFlowWeighting", "params": {"gamma": 5.0}})


def test_registered_after_sgm_names():
    assert list(WEIGHTINGS) == ["Unit", "EDM", "V", "Eps", "MinSNR", "SoftMinSNR", "RectifiedFlow"]


def test_published_values_gamma5():
    "γ = 5 at σ = 0.2, 1, 2 in x0, ε and v space; the two shipped typos give other numbers."
    w, s = MinSNRWeighting(5.0), f64([0.2, 1.0, 2.0])
    expected = {"x0": [5.0, 1.0, 0.25], "eps": [0.2, 1.0, 1.0], "v": [0.19231, 0.5, 0.2]}
    for space, vals in expected.items():
        assert torch.allclose(weighting_in_space(w, s, space), f64(vals), rtol=0, atol=5e-6), space
    snr = s**-2
    v_typo = torch.minimum(snr + 1, f64(5.0)) / (snr + 1)       # huggingface/diffusers #5654
    max_typo = torch.maximum(snr, f64(5.0))                      # recurrent-interface-network-pytorch #11
    assert v_typo[1:].tolist() == [1.0, 1.0] and max_typo[1:].tolist() == [5.0, 5.0]


finite_pos = dict(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(sigma=st.floats(1e-6, 1e6, **finite_pos), gamma=st.floats(1e-3, 1e3, **finite_pos))
def test_min_snr_three_forms_agree(sigma, gamma):
    "The ε form min(SNR, γ)/SNR and v form min(SNR, γ)/(SNR + 1), taken back to D, are min(SNR, γ)."
    s = f64(sigma); snr = 1 / sigma**2
    lam = MinSNRWeighting(gamma)(s)
    assert torch.isfinite(lam) and 0 <= lam.item() <= gamma
    assert math.isclose(lam.item(), min(snr, gamma), rel_tol=1e-12)
    assert math.isclose(d_space_weight(f64(min(snr, gamma) / snr), s, "eps").item(), lam.item(), rel_tol=1e-9)
    assert math.isclose(d_space_weight(f64(min(snr, gamma) / (snr + 1)), s, "v").item(), lam.item(), rel_tol=1e-9)
    for space in ("x0", "eps", "v"):   # and the round trip through our own map
        back = d_space_weight(weighting_in_space(MinSNRWeighting(gamma), s, space), s, space)
        assert math.isclose(back.item(), lam.item(), rel_tol=1e-12)


@settings(max_examples=200, deadline=None)
@given(sigma=st.floats(1e-6, 1e4, **finite_pos), sigma_data=st.floats(1e-2, 1e2, **finite_pos),
       gamma=st.floats(1e-3, 1e3, **finite_pos))
def test_recipes_finite_nonnegative_float32(sigma, sigma_data, gamma):
    s = torch.tensor(sigma, dtype=torch.float32)
    for w in (MinSNRWeighting(gamma), SoftMinSNRWeighting(sigma_data), RectifiedFlowWeighting()):
        for space in ("x0", "eps", "v"):
            lam = weighting_in_space(w, s, space)
            assert lam.dtype == torch.float32 and torch.isfinite(lam) and lam.item() >= 0, (w, space)
