"Explorers: the pure functions numerically, then each widget driven through its controls (no browser)."
import math

import numpy as np
import pytest
import torch

from diffexplore.data import DigitsDataModule
from diffexplore.discretizer import EDMDiscretization, LegacyDDPMDiscretization
from diffexplore.explorers import (DESIGN_PANELS, FP16_MAX, batch_restyle, NOISING_PANELS, PANELS, DesignSpaceExplorer, NoisingExplorer,
                                   ScalingExplorer, SigmaSamplingExplorer, log10_histogram, make_scalings, make_weighting,
                                   noising_panels, optimal_denoiser, panel_values, posterior_weights, readout_table,
                                   readout_values, sampling_summary, takes_sigma_data,
                                   SAMPLER_CLASSES, TRAJECTORY_PANELS, ExactDenoiser, TrajectoryExplorer, denoiser_gap, make_sampler,
                                   model_classes, nearest_training_image, sampling_path, step_panels, trajectory)
from diffexplore.recipes import RECIPES, Recipe, recipe_curves, recipe_values, recipe_x, sigma_grid, target_std_curve
from diffexplore.scalings import SCALINGS, EDMScaling, EpsScaling, ScoreScaling, VScaling
from diffexplore.sigma_sampling import DiscreteSampling, EDMSampling
from diffexplore.weightings import WEIGHTINGS, EDMWeighting, EpsWeighting, VWeighting
from _runs import TINY_NET
from test_floor import _brute_force   # the same brute-force posterior mean test_floor checks optimal_denoiser with

f64 = torch.float64


@pytest.fixture(scope="module")
def digits(): return DigitsDataModule().train_images()[:128]


# ---------------------------------------------------------------- optimal denoiser

def test_optimal_denoiser_is_the_floor_modules():
    "The explorers re-export `floor.optimal_denoiser`; tests/test_floor.py checks it against a brute-force sum."
    from diffexplore import floor
    assert optimal_denoiser is floor.optimal_denoiser and posterior_weights is floor.posterior_weights


def test_optimal_denoiser_limits():
    g = torch.Generator().manual_seed(2)
    data = torch.randn(30, 2, 4, 4, generator=g, dtype=f64)
    x_t = data[[3, 17]] + 0.01 * torch.randn(2, 2, 4, 4, generator=g, dtype=f64)  # near, not on, two images
    assert torch.equal(optimal_denoiser(x_t, 1e-4, data), data[[3, 17]])            # σ → 0: nearest image
    torch.testing.assert_close(optimal_denoiser(x_t, math.inf, data), data.mean(0).expand(2, -1, -1, -1))  # σ → ∞: mean
    torch.testing.assert_close(optimal_denoiser(x_t, 1e5, data), data.mean(0).expand(2, -1, -1, -1), rtol=0, atol=1e-8)


def test_optimal_denoiser_per_sample_sigma_and_float32_stability():
    data = DigitsDataModule().train_images()[:200]
    x_t = data[:3] + 0.2
    out = optimal_denoiser(x_t, torch.tensor([1e-3, 1.0, 1e3]), data)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out[0], data[0])                      # tiny σ: nearest (itself, shifted by 0.2 everywhere)
    torch.testing.assert_close(out[2], data.mean(0), rtol=0, atol=1e-3)
    for i, s in enumerate([1e-3, 1.0, 1e3]):                 # row i equals the single-σ call
        torch.testing.assert_close(out[i], optimal_denoiser(x_t[i:i + 1], s, data)[0])
    w = posterior_weights(x_t, 1e-3, data)
    assert w.shape == (3, 200) and torch.allclose(w.sum(1), torch.ones(3))


def test_optimal_denoiser_errors():
    data = torch.zeros(4, 1, 2, 2)
    with pytest.raises(ValueError, match="sigma=0"): optimal_denoiser(torch.zeros(1, 1, 2, 2), 0.0, data)
    with pytest.raises(ValueError, match="sigma=-1"): optimal_denoiser(torch.zeros(1, 1, 2, 2), -1.0, data)
    with pytest.raises(ValueError, match=r"x_t.shape=\(1, 1, 3, 2\)"): optimal_denoiser(torch.zeros(1, 1, 3, 2), 1.0, data)
    with pytest.raises(ValueError, match="sigma.shape=\\(3,\\)"): optimal_denoiser(torch.zeros(2, 1, 2, 2), torch.ones(3), data)


# ---------------------------------------------------------------- effective target, readout values
def test_target_std_edm_formula_and_score_explosion(digits):
    sig = sigma_grid(60)
    s = float(digits.std())
    for sd in (0.5, 1.0, s):
        expected = ((sig**2 * s**2 + sd**4) / ((sig**2 + sd**2) * sd**2)).sqrt()
        torch.testing.assert_close(target_std_curve(EDMScaling(sd), digits, sig), expected, rtol=0.03, atol=0)
    torch.testing.assert_close(target_std_curve(EDMScaling(s), digits, sig), torch.ones(60, dtype=f64), rtol=0, atol=0.03)
    score = target_std_curve(ScoreScaling(), digits, sig)
    torch.testing.assert_close(score * sig, torch.ones(60, dtype=f64), rtol=0, atol=0.03)  # std = 1/σ
    assert score[0] > 900 and score[-1] < 2e-3
    torch.testing.assert_close(target_std_curve(EpsScaling(), digits, sig), torch.ones(60, dtype=f64), rtol=0, atol=0.03)


def test_target_std_uses_one_noise_draw_and_checks_sigma(digits):
    sig = sigma_grid(130)  # more than one chunk of 64
    full = target_std_curve(VScaling(), digits, sig, seed=3)
    assert torch.equal(target_std_curve(VScaling(), digits, sig[[7, 100]], seed=3), full[[7, 100]])
    assert not torch.equal(target_std_curve(VScaling(), digits, sig, seed=4), full)
    with pytest.raises(ValueError, match="sigma"): target_std_curve(EDMScaling(), digits, [0.5, -1.0])


def test_readout_values_sigma_data_mismatch():  # huggingface/diffusers PR #9563
    v = readout_values(make_scalings(["EDM"], 0.5), 0.5)["EDM"]
    assert [round(v[k], 5) for k in ("c_skip", "c_out", "c_in")] == [0.5, 0.35355, 1.41421]
    assert math.isclose(v["c_noise"], 0.25 * math.log(0.5), rel_tol=1e-12)
    v1 = readout_values(make_scalings(["EDM"], 1.0), 0.5)["EDM"]
    assert [round(v1[k], 5) for k in ("c_skip", "c_out", "c_in")] == [0.8, 0.44721, 0.89443]
    v80 = readout_values(make_scalings(["EDM"], 0.5), 80.0)["EDM"]
    assert math.isclose(v80["c_skip"], 3.9061e-05, rel_tol=1e-4) and math.isclose(v80["c_noise"], 1.0955, rel_tol=1e-4)


def test_readout_values_match_scalings_everywhere():
    scalings = make_scalings()
    for sigma in (1e-3, 0.037, 2.0, 999.0):
        got = readout_values(scalings, sigma)
        for name, s in scalings.items():
            want = [float(c) for c in s(torch.tensor(sigma, dtype=f64))]
            assert [got[name][k] for k in ("c_skip", "c_out", "c_in", "c_noise")] == want


def test_panel_values_matched_pairs_have_unit_effective_weight(digits):  # crowsonkb/k-diffusion #45
    sig = sigma_grid(50)
    for scaling, weighting in ((EDMScaling(0.5), EDMWeighting(0.5)), (VScaling(), VWeighting()), (EpsScaling(), EpsWeighting())):
        pv = panel_values({"s": scaling}, weighting, digits, sig)
        torch.testing.assert_close(pv["w·c_out²"]["s"], torch.ones(50, dtype=f64))
    assert list(panel_values(make_scalings(), make_weighting(), digits, sig)) == list(PANELS)


def test_sigma_data_goes_to_every_constructor_that_takes_it():
    takers = {n for n, c in SCALINGS.items() if takes_sigma_data(c)}
    assert takers == {"EDM", "TrigFlow", "ConsistencyBoundary"} and len(SCALINGS) == 8
    for n, s in make_scalings(sigma_data=0.7).items(): assert (getattr(s, "sigma_data", None) == 0.7) == (n in takers), n
    w_takers = {n for n, c in WEIGHTINGS.items() if takes_sigma_data(c)}
    assert {"EDM", "SoftMinSNR"} <= w_takers and "V" not in w_takers      # VWeighting is EDM's with σ_data fixed at 1
    for n in WEIGHTINGS: assert (getattr(make_weighting(n, 0.7), "sigma_data", None) == 0.7) == (n in w_takers), n


def test_names_checked():
    with pytest.raises(ValueError, match="Karras"): make_scalings(["EDM", "Karras"])
    with pytest.raises(ValueError, match="SNR"): make_weighting("SNR")
    with pytest.raises(ValueError, match="Karras"): ScalingExplorer(scalings=("Karras",))
    with pytest.raises(ValueError, match="SNR"): ScalingExplorer(weighting="SNR")
    with pytest.raises(ValueError, match="x_axis='log'"): ScalingExplorer(x_axis="log")


def test_readout_table_escapes_and_formats():
    t = readout_table({"<b>": {"x": 1 / 3, "n": 7}}, "σ < 1")
    assert "&lt;b&gt;" in t and "σ &lt; 1" in t and ">0.3333<" in t and ">7<" in t


# ---------------------------------------------------------------- ScalingExplorer widget
@pytest.fixture(scope="module")
def scaling_explorer(digits): return ScalingExplorer(x0=digits)


def _markers_match(ex, sigma):
    "Every marker sits at σ, at the values of the scalings/weighting/target at σ; the readout shows them."
    at = panel_values(ex.scalings, ex.weighting, ex.x0, torch.tensor([sigma], dtype=f64), ex.seed)
    coefs = readout_values(ex.scalings, sigma)
    for p in PANELS:
        m = ex.marker(p)
        assert list(m.x) == [sigma] * len(ex.names)
        np.testing.assert_allclose(m.y, [float(at[p][n]) for n in ex.names], rtol=1e-12)
    np.testing.assert_allclose(ex.marker("c_skip").y, [coefs[n]["c_skip"] for n in ex.names], rtol=1e-12)
    np.testing.assert_allclose(ex.marker("|c_out|").y, [abs(coefs[n]["c_out"]) for n in ex.names], rtol=1e-12)
    np.testing.assert_allclose(ex.marker("c_noise").y, [coefs[n]["c_noise"] for n in ex.names], rtol=1e-12)
    html = ex.readout.value
    assert f"σ = {sigma:.4g}" in html
    for n in ex.names:
        assert f">{n}</th>" in html
        for k in ("c_skip", "c_out", "c_in", "c_noise"): assert f">{coefs[n][k]:.4g}</td>" in html


@pytest.mark.parametrize("sigma", [1e-3, 0.02, 0.5, 1.0, 7.3, 1e3])
def test_scaling_explorer_sigma_moves_markers_and_readout(scaling_explorer, sigma):
    scaling_explorer.sigma_slider.value = sigma
    _markers_match(scaling_explorer, sigma)


def test_scaling_explorer_marker_on_curve(scaling_explorer):
    ex = scaling_explorer
    i = 123
    ex.sigma_slider.value = float(ex.sigmas[i])
    for p in PANELS:
        for j, n in enumerate(ex.names):
            assert math.isclose(ex.marker(p).y[j], ex.curve(p, n).y[i], rel_tol=1e-12), (p, n)


def test_scaling_explorer_values_at_half(scaling_explorer):
    ex = scaling_explorer
    ex.sigma_data_slider.value = 0.5; ex.weighting_dropdown.value = "EDM"; ex.sigma_slider.value = 0.5
    assert ex.names == tuple(SCALINGS)   # all eight by default
    at = lambda panel: dict(zip(ex.names, ex.marker(panel).y))
    cb = 0.25 / (0.498**2 + 0.25)        # consistency boundary: σ_d²/((σ − σ_min)² + σ_d²), σ_min = 0.002
    np.testing.assert_allclose([at("c_skip")[n] for n in SCALINGS], [0.5, 1.0, 0.8, 0.8, 1.0, 1 / 1.5, 0.5, cb], rtol=1e-12)
    np.testing.assert_allclose([at("|c_out|")[n] for n in SCALINGS],
                               [0.353553, 0.5, 0.447214, 0.447214, 0.25, 1 / 3, 0.353553, 0.498 * 0.5 / math.sqrt(0.5)], rtol=1e-5)
    np.testing.assert_allclose([at("c_in")[n] for n in SCALINGS], [1.414214, 0.894427, 0.894427, 0.894427, 1.0, 1 / 1.5, 1.414214, 1.414214], rtol=1e-5)
    assert at("c_noise")["RectifiedFlow"] == pytest.approx(1000 / 3) and at("c_noise")["ConsistencyBoundary"] == pytest.approx(250 * math.log(0.5))
    assert ex.marker("w·c_out²").y[0] == pytest.approx(1.0)
    assert ">0.3536</td>" in ex.readout.value and ">-0.1733</td>" in ex.readout.value


def test_scaling_explorer_sigma_data_changes_edm_only(scaling_explorer):
    ex = scaling_explorer
    ex.weighting_dropdown.value = "EDM"; ex.sigma_data_slider.value = 0.5
    before = {n: np.array(ex.curve("c_skip", n).y) for n in ex.names}
    ex.sigma_data_slider.value = 1.0
    np.testing.assert_allclose(ex.curve("c_skip", "EDM").y, EDMScaling(1.0).c_skip(ex.sigmas).numpy(), rtol=1e-12)
    np.testing.assert_allclose(ex.curve("c_in", "EDM").y, ex.curve("c_in", "V").y, rtol=1e-12)  # EDM(1) = V but c_noise
    np.testing.assert_allclose(ex.curve("w·c_out²", "EDM").y, 1.0, rtol=1e-9)          # weighting follows σ_data (huggingface/diffusers PR #9563)
    for n in ex.names:   # the scalings that take σ_data follow it; the others stay
        assert np.array_equal(ex.curve("c_skip", n).y, before[n]) != takes_sigma_data(SCALINGS[n]), n
    np.testing.assert_allclose(ex.curve("c_skip", "TrigFlow").y, ex.curve("c_skip", "EDM").y, rtol=1e-12)   # TrigFlow's = EDM's
    _markers_match(ex, ex.sigma_slider.value)
    assert "σ_data = 1" in ex.readout.value and "EDMWeighting(sigma_data=1.0)" in ex.readout.value
    ex.sigma_data_slider.value = 0.5


def test_scaling_explorer_weighting_dropdown(scaling_explorer):
    ex = scaling_explorer
    ex.weighting_dropdown.value = "Eps"
    sig = ex.sigmas.numpy()
    np.testing.assert_allclose(ex.curve("w·c_out²", "Eps").y, 1.0, rtol=1e-9)
    np.testing.assert_allclose(ex.curve("w·c_out²", "Score").y, sig**2, rtol=1e-9)   # σ⁻²·σ⁴
    ex.weighting_dropdown.value = "Unit"
    np.testing.assert_allclose(ex.curve("w·c_out²", "Eps").y, sig**2, rtol=1e-9)     # c_out² = σ²
    _markers_match(ex, ex.sigma_slider.value)
    ex.weighting_dropdown.value = "EDM"


def test_scaling_explorer_subset_and_display(digits):
    ex = ScalingExplorer(scalings=("Score", "EDM"), weighting="V", n_points=50, sigma=0.1, x0=digits)
    assert len(ex.fig.data) == len(PANELS) * 2 + len(PANELS) and len(ex.curve("c_in", "EDM").y) == 50
    _markers_match(ex, 0.1)
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()
    assert repr(ex) == "ScalingExplorer(scalings=('Score', 'EDM'), weighting='V', sigma=0.1, sigma_data=0.5)"


def test_scaling_explorer_log_sigma_over_sigma_data_axis(digits):
    "On x = ln(σ/σ_data) the σ_data-built scalings coincide whatever σ_data: c_skip = 1/(1 + e^{2x}) for EDM, TrigFlow and V (σ_data 1)."
    ex = ScalingExplorer(x0=digits, n_points=60, sigma=0.3, sigma_data=0.3, x_axis="log_sigma_over_sigma_data")
    for n in ("EDM", "TrigFlow", "V"):
        x = np.array(ex.curve("c_skip", n).x)
        np.testing.assert_allclose(ex.curve("c_skip", n).y, 1 / (1 + np.exp(2 * x)), rtol=1e-12)
    np.testing.assert_allclose(ex.curve("c_in", "EDM").x, np.log(ex.sigmas.numpy() / 0.3), rtol=1e-12)
    np.testing.assert_allclose(ex.curve("c_in", "Eps").x, np.log(ex.sigmas.numpy()), rtol=1e-12)
    m = dict(zip(ex.names, ex.marker("c_skip").x))
    assert m["EDM"] == pytest.approx(0.0, abs=1e-12) and m["V"] == pytest.approx(math.log(0.3))
    assert ex.fig.layout.xaxis.type == "linear" and ex.fig.layout.xaxis4.title.text == "ln(σ/σ_data)"
    ex.sigma_data_slider.value = 1.0        # the σ_data-built curves shift on the axis
    np.testing.assert_allclose(ex.curve("c_in", "EDM").x, np.log(ex.sigmas.numpy()), rtol=1e-12)
    ex.x_axis_dropdown.value = "sigma"      # back to σ on a log axis
    assert ex.fig.layout.xaxis.type == "log" and list(ex.marker("c_skip").x) == [0.3] * 8
    np.testing.assert_allclose(ex.curve("c_in", "EDM").x, ex.sigmas.numpy(), rtol=1e-12)
    _markers_match(ex, 0.3)
    assert repr(ScalingExplorer(scalings=("V",), x0=digits, n_points=5, x_axis="log_sigma_over_sigma_data")).endswith("x_axis='log_sigma_over_sigma_data')")



def test_updates_send_one_message_with_every_value(digits, monkeypatch):
    "One restyle message per change, a value for every trace (no 'undefined' that the frontend would turn into a deletion)."
    from plotly.basedatatypes import Undefined
    ex = ScalingExplorer(x0=digits, n_points=40)
    sent = _sent(ex.fig, monkeypatch)
    ex.sigma_slider.value = 0.3
    assert [m[0] for m in sent] == ["_send_restyle_msg"]
    data, = sent[0][1]
    assert set(data) == {"x", "y"} and all(len(v) == len(PANELS) and all(e is not Undefined for e in v) for v in data.values())
    sent.clear(); ex.sigma_data_slider.value = 0.7
    assert [m[0] for m in sent] == ["_send_restyle_msg"] and "y" in sent[0][1][0]
    with pytest.raises(ValueError, match="same properties"):
        batch_restyle(ex.fig, {0: dict(y=[1.0]), 1: dict(x=[1.0], y=[1.0])})


# ---------------------------------------------------------------- SigmaSamplingExplorer
def test_log10_histogram_normalised_and_matches_pdf():
    edges = torch.linspace(-4, 3, 71, dtype=f64)
    draws = EDMSampling(-1.2, 1.2)(400_000, rand=torch.randn(400_000, generator=torch.Generator().manual_seed(0)))
    h = log10_histogram(draws, edges)
    assert float((h * edges.diff()).sum()) == pytest.approx(1.0, abs=1e-12)
    centres = 10 ** ((edges[1:] + edges[:-1]) / 2)
    torch.testing.assert_close(h, EDMSampling(-1.2, 1.2).pdf(centres, wrt="log10_sigma"), rtol=0, atol=0.01)
    half = log10_histogram(torch.tensor([1e-6, 1.0]), edges)   # 1e-6 lies outside: counts in the total only
    assert float((half * edges.diff()).sum()) == pytest.approx(0.5)


def test_sampling_summary_reported_cases():
    s = sampling_summary(EDMSampling(-1.2, 1.2), EDMWeighting(0.5))
    assert s["P(w > 65504)"] == pytest.approx(1.4687e-04, rel=1e-4)                       # lucidrains/alphafold3-pytorch #68
    assert s["median σ"] == pytest.approx(0.30119, rel=1e-4) and s["mean σ"] == pytest.approx(0.61878, rel=1e-4)  # huggingface/diffusers #6041
    assert s["P(σ < σ_min)"] == pytest.approx(1.4650e-05, rel=1e-3)                        # huggingface/diffusers #6041: P(σ < 0.002)
    assert sampling_summary(EDMSampling(-1.2, 1.2), EpsWeighting())["P(w > 65504)"] == pytest.approx(
        float(EDMSampling(-1.2, 1.2).cdf(torch.tensor(1 / math.sqrt(FP16_MAX), dtype=f64))), rel=1e-6)
    d = sampling_summary(DiscreteSampling(LegacyDDPMDiscretization(), 1000), EDMWeighting(0.5), 0.1, 10.0)
    table = LegacyDDPMDiscretization().sigmas
    assert d["P(σ < σ_min)"] == pytest.approx(float((table < 0.1).double().mean()))
    assert d["P(σ > σ_max)"] == pytest.approx(float((table > 10).double().mean())) and d["P(w > 65504)"] == 0.0
    with pytest.raises(TypeError, match="sampling="): sampling_summary(EDMDiscretization(), EDMWeighting())


def test_sigma_sampling_explorer_controls():
    ex = SigmaSamplingExplorer(n_samples=5000)
    for p_mean, p_std in ((-1.2, 1.2), (0.5, 0.6), (-3.0, 2.0)):
        ex.p_mean_slider.value, ex.p_std_slider.value = p_mean, p_std
        edm = EDMSampling(p_mean, p_std)
        np.testing.assert_allclose(ex.fig.data[0].y[:-1], log10_histogram(edm(5000, rand=ex.rand), ex.edges).numpy())
        np.testing.assert_allclose(ex.fig.data[1].y, edm.pdf(ex.sigmas, wrt="log10_sigma").numpy())
        assert f"EDMSampling(p_mean={p_mean}, p_std={p_std})" in ex.readout.value
        assert f">{sampling_summary(edm, ex.weighting, 0.002, 80.0)['median σ']:.4g}</td>" in ex.readout.value
    x, y = np.array(ex.fig.data[2].x), np.array(ex.fig.data[2].y)[:-1]   # discrete: only bins touching [0.029167, 14.615]
    assert y[(x[1:] < 0.029167) | (x[:-1] > 14.615)].max() == 0 and y.max() > 0
    for n in (2, 5, 77):
        ex.num_steps_slider.value = n
        np.testing.assert_allclose(ex.fig.data[4].x, EDMDiscretization()(n, do_append_zero=False, dtype=f64).numpy())
    ex.num_steps_slider.value = 5
    np.testing.assert_allclose(ex.fig.data[4].x, [80.0, 17.528, 2.5152, 0.16975, 0.002], rtol=1e-4)   # Stability-AI/generative-models PR #114
    ex.weighting_dropdown.value = "Eps"
    np.testing.assert_allclose(ex.fig.data[3].y, (1 / ex.sigmas**2).numpy())
    assert "EpsWeighting()" in ex.readout.value


# ---------------------------------------------------------------- NoisingExplorer
def test_noising_panels_values():
    data = DigitsDataModule().train_images()[:50].double()
    x0, eps = data[3], torch.randn(1, 8, 8, dtype=f64, generator=torch.Generator().manual_seed(0))
    p = noising_panels(x0, eps, 2.0, EDMScaling(0.5), data)
    assert list(p) == list(NOISING_PANELS)
    torch.testing.assert_close(p["x_t"], x0 + 2 * eps)
    torch.testing.assert_close(p["c_in·x_t"], (x0 + 2 * eps) / math.sqrt(4.25))
    c_skip, c_out = 0.25 / 4.25, 2 * 0.5 / math.sqrt(4.25)
    torch.testing.assert_close(p["F*"], (x0 - c_skip * (x0 + 2 * eps)) / c_out)
    torch.testing.assert_close(p["D*"], optimal_denoiser((x0 + 2 * eps)[None], 2.0, data)[0])
    with pytest.raises(ValueError, match="sigma"): noising_panels(x0, eps, 0.0, EDMScaling(), data)


def test_noising_explorer_controls():
    ex = NoisingExplorer(sigma=0.3)
    n = ex.n_train
    assert (ex.index_slider.value, n, len(ex.images)) == (1438, 1438, 1797)   # starts on the first held-out digit
    for index, sigma, scaling in ((n, 0.3, "EDM"), (n + 5, 5.0, "V"), (12, 1e-3, "Score"), (1700, 1e3, "Eps")):
        ex.index_slider.value, ex.sigma_slider.value, ex.scaling_dropdown.value = index, sigma, scaling
        want = noising_panels(ex.images[index], ex.noise(index), sigma, make_scalings([scaling])[scaling], ex.train)
        for trace, name in zip(ex.fig.data, NOISING_PANELS):
            np.testing.assert_allclose(trace.z, want[name][0].numpy(), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(ex.fig.data[1].z, (ex.images[index, 0].double() + sigma * ex.noise(index)[0]).numpy())
        html = ex.readout.value
        assert f"σ = {sigma:.4g}" in html and ("held out" in html) == (index >= n) and f"image {index} (" in html
    ex.index_slider.value, ex.sigma_slider.value = 12, 1e-3     # a training digit comes back exactly, weight 1
    np.testing.assert_array_equal(ex.fig.data[4].z, ex.images[12, 0].double().numpy())
    assert ">12</td>" in ex.readout.value and ">1</td>" in ex.readout.value
    ex.index_slider.value = n + 1                               # a held-out digit: D* is a training digit, not x_0
    d = ex.fig.data[4].z
    assert any(np.array_equal(d, t[0].numpy()) for t in ex.train) and not np.array_equal(d, ex.images[n + 1, 0].double().numpy())
    ex.sigma_slider.value = 1e3          # σ → ∞: the training-set mean (weights ∝ exp(x_t·x_i/σ²): off by O(|ε||x_i|/σ))
    np.testing.assert_allclose(ex.fig.data[4].z, ex.train.mean(0)[0].numpy(), atol=0.01)


def test_noising_explorer_other_datamodule():
    from diffexplore.data import ArrayDataModule
    imgs = np.random.default_rng(0).integers(0, 256, (20, 4, 4)).astype(np.uint8)
    ex = NoisingExplorer(ArrayDataModule(imgs, val_fraction=0.25), sigma=1e-3)
    assert ex.images.shape == (20, 1, 4, 4) and ex.n_train == 15 and ex.index_slider.value == 15
    np.testing.assert_allclose(ex.fig.data[0].z, ex.images[15, 0].double().numpy())


# ---------------------------------------------------------------- DesignSpaceExplorer
@pytest.fixture(scope="module")
def design_explorer(digits): return DesignSpaceExplorer(("EDM", "SD3 (logit-normal, shift 3)", "Min-SNR"), x0=digits, n_points=120)


def _design_markers_match(ex, sigma):
    "Every shown recipe's markers sit at (x_of σ, recipe_values at σ); hidden ones are empty; the readout prints the same numbers."
    want = recipe_values([ex.recipes[n] for n in ex.selected], sigma, ex.x0, ex.seed, ex.norms)
    for n in ex.recipes:
        for p in DESIGN_PANELS:
            m = ex.marker(p, n)
            if n in ex.selected:
                assert m.visible is True and m.x[0] == pytest.approx(float(recipe_x(ex.recipes[n], [sigma], ex.x_axis_dropdown.value)[0]), abs=1e-12)
                assert m.y[0] == want[n][p]
                assert f">{want[n][p]:.4g}</td>" in ex.readout.value
            else: assert m.visible is False and tuple(m.x) == ()
    assert f"σ = {sigma:.4g}" in ex.readout.value


@pytest.mark.parametrize("sigma", [1e-4, 0.01, 0.5, 3.0, 1e4])
def test_design_space_explorer_sigma_moves_markers_and_readout(design_explorer, sigma):
    design_explorer.sigma_slider.value = sigma
    _design_markers_match(design_explorer, sigma)


def test_design_space_explorer_curves_are_recipe_curves(design_explorer, digits):
    ex = design_explorer
    for n in ("EDM", "Min-SNR", "cosine (v-diffusion)"):   # shown or not, the stored curves are recipe_curves on the grid
        want = recipe_curves(RECIPES[n], ex.sigmas, digits, 0)
        for p in DESIGN_PANELS: np.testing.assert_allclose(ex.curve(p, n).y, want[p].numpy(), rtol=1e-12, err_msg=f"{n} {p}")
    i = 77
    ex.sigma_slider.value = float(ex.sigmas[i])                 # a grid σ: each marker on its curve
    for n in ex.selected:
        for p in DESIGN_PANELS: assert ex.marker(p, n).y[0] == pytest.approx(ex.curve(p, n).y[i], rel=1e-9, abs=1e-300)


def test_design_space_explorer_select_and_axis(digits):
    ex = DesignSpaceExplorer(("EDM",), x0=digits, n_points=40, sigma=2.0)
    assert ex.selected == ("EDM",) and [ex.curve("p", n).visible for n in ("EDM", "iCT/ECT")] == [True, False]
    np.testing.assert_allclose(ex.curve("p", "EDM").x, np.log(ex.sigmas.numpy() / 0.5), rtol=1e-12)
    ex.recipe_select.value = ("iCT/ECT", "cosine (v-diffusion)")
    assert ex.selected == ("iCT/ECT", "cosine (v-diffusion)") and ex.curve("p", "EDM").visible is False
    _design_markers_match(ex, 2.0)
    ex.x_axis_dropdown.value = "log_sigma"
    np.testing.assert_allclose(ex.curve("var F*", "iCT/ECT").x, np.log(ex.sigmas.numpy()), rtol=1e-12)
    assert ex.fig.layout.xaxis4.title.text == "ln σ"
    _design_markers_match(ex, 2.0)
    ex.recipe_select.value = ()
    assert "no recipe selected" in ex.readout.value and not any(t.visible for t in ex.fig.data)
    assert repr(ex) == "DesignSpaceExplorer(recipes=(), sigma=2.0, x_axis='log_sigma')"
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()


def test_design_space_explorer_user_config_and_errors(digits):
    mine = Recipe("mine", VScaling(), VWeighting(), EDMSampling(0.0, 1.0), 1.0)
    ex = DesignSpaceExplorer(("EDM",), config=mine, x0=digits, n_points=30, sigma=1.0)
    assert list(ex.recipes)[-1] == "mine" and ex.selected == ("EDM", "mine")
    assert ex.marker("p", "mine").y[0] == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-12)   # ln 1 = the mean
    assert ex.marker("λ·c_out²", "mine").y[0] == pytest.approx(1.0)                              # a matched pair
    cfg = DesignSpaceExplorer(config="digits", x0=digits, n_points=30)
    assert cfg.selected[-1] == "digits" and cfg.recipes["digits"].sigma_data == pytest.approx(0.7521, abs=5e-5)
    with pytest.raises(ValueError, match="recipe='DDPM'"): DesignSpaceExplorer(("EDM", "DDPM"), x0=digits)
    with pytest.raises(ValueError, match="x_axis='sigma'"): DesignSpaceExplorer(x_axis="sigma", x0=digits)


def test_design_space_sigma_move_sends_one_restyle(digits, monkeypatch):
    from plotly.basedatatypes import Undefined
    ex = DesignSpaceExplorer(x0=digits, n_points=30)
    sent = _sent(ex.fig, monkeypatch)
    ex.sigma_slider.value = 0.3
    assert [m[0] for m in sent] == ["_send_restyle_msg"]
    data, = sent[0][1]
    n_markers = len(DESIGN_PANELS) * len(ex.recipes)
    assert set(data) in ({"x", "y"}, {"x", "y", "visible"})   # plotly drops a property no trace changed (visible here)
    assert all(len(v) == n_markers and all(e is not Undefined for e in v) for v in data.values())


# ---------------------------------------------------------------- sampling path (TrajectoryExplorer)
from diffexplore.sampling import EulerEDMSampler   # noqa: E402


@pytest.fixture(scope="module")
def labelled():
    dm = DigitsDataModule()
    return dm.train_images()[:300].double(), dm.train_labels()[:300]


def test_exact_denoiser_is_the_class_posterior_mean(labelled):
    data, labels = labelled
    exact = ExactDenoiser(data, labels)
    x = data[:3] + 0.4 * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=f64)
    s = torch.full((3,), 0.4, dtype=f64)
    out = exact(x, s, {"vector": torch.tensor([2, -1, 7])})
    for row, c in enumerate([2, -1, 7]):
        torch.testing.assert_close(out[row], _brute_force(x[row:row + 1], 0.4, data if c < 0 else data[labels == c])[0], rtol=1e-9, atol=1e-12)
    assert exact.classes == model_classes(exact) == 10 and model_classes(ExactDenoiser(data)) is None
    assert repr(exact) == "ExactDenoiser(n=300, image_shape=(1, 8, 8), classes=10)"
    c, uc = exact.conditionings(4, 2)
    assert c["vector"].tolist() == [4, 4] and uc["vector"].tolist() == [-1, -1] and ExactDenoiser(data).conditionings(4, 2) == ({}, {})
    with pytest.raises(ValueError, match="class_label=11"): exact(x, s, {"vector": torch.tensor([11, 0, 0])})
    with pytest.raises(ValueError, match="cond must hold 'vector'"): exact(x, s, None)
    with pytest.raises(ValueError, match=r"labels.shape=\(299,\)"): ExactDenoiser(data, labels[:-1])


@pytest.mark.parametrize("name", list(SAMPLER_CLASSES))
def test_sampling_path_records_every_step_and_changes_nothing(labelled, name):
    "Recorded σ_i are the schedule, D_i is the denoiser at the recorded (x_i, σ_i), and the final sample is the sampler's own."
    data, labels = labelled
    exact, sampler = ExactDenoiser(data, labels), make_sampler(name, 7, scale=2.0)
    c, uc = exact.conditionings(5, 2)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=f64)
    path = sampling_path(exact, sampler, x, c, uc, seed=11)
    schedule = sampler.get_sigmas(dtype=f64)
    assert torch.equal(path["sigma"], schedule[:-1]) and torch.equal(path["next_sigma"], schedule[1:]) and torch.equal(path["schedule"], schedule)
    assert path["x"].shape == path["D"].shape == (7, 2, 1, 8, 8) and path["final"].shape == (2, 1, 8, 8)
    torch.testing.assert_close(path["x"][0], x * sampler.init_noise_scale(schedule[0]), rtol=0, atol=0)
    guided = sampler.guided_denoiser(exact, c, uc)
    for x_i, s_i, d_i in zip(path["x"], path["sigma"], path["D"]): assert torch.equal(d_i, guided(x_i, float(s_i)))
    torch.manual_seed(11); torch.randn(x.shape)                    # the stream after x's draw, as `generate(seed=11)` leaves it
    assert torch.equal(path["final"], sampler(exact, x, c, uc))   # the same run as without recording (same seed)


def test_sampling_path_records_the_churned_point():
    "With churn, D is evaluated at σ̂_i = σ_i(1 + γ_i) on x̂_i = x_i + noise: that is what the path holds."
    data = torch.randn(50, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=f64)
    sampler = EulerEDMSampler(num_steps=6, s_churn=3.0)
    path = sampling_path(ExactDenoiser(data), sampler, torch.randn(1, 1, 4, 4, dtype=f64, generator=torch.Generator().manual_seed(1)))
    plan = sampler.plan(sampler.get_sigmas(dtype=f64))
    assert path["sigma"].tolist() == pytest.approx([p.sigma_hat for p in plan], rel=1e-15)
    assert (path["sigma"] > sampler.get_sigmas(dtype=f64)[:-1]).all() and all(p.gamma > 0 for p in plan)
    for x_i, s_i, d_i in zip(path["x"], path["sigma"], path["D"]): assert torch.equal(d_i, ExactDenoiser(data)(x_i, s_i))


def test_trajectory_of_the_exact_model(labelled):
    data, labels = labelled
    exact = ExactDenoiser(data, labels)
    plain = trajectory(exact, make_sampler("HeunEDMSampler", 12), data, labels, class_label=6, n=2, seed=4)
    assert torch.equal(plain["gap"], torch.zeros(12, 2, dtype=f64))                       # D is D* at every step
    index, dist = plain["nearest"], plain["nearest_distance"]
    brute = [int(((f - data) ** 2).flatten(1).sum(1).argmin()) for f in plain["final"]]
    assert index.tolist() == brute and (labels[index] == 6).all() and dist.max() < 1e-3   # D* lands on a class-6 training image
    s = 2.5
    cfg = trajectory(exact, make_sampler("HeunEDMSampler", 12, scale=s), data, labels, class_label=6, n=2, seed=4)
    D_u = torch.stack([exact(x_i, s_i, {"vector": torch.tensor([-1, -1])}) for x_i, s_i in zip(cfg["x"], cfg["sigma"])])
    torch.testing.assert_close(cfg["gap"], (s - 1) * denoiser_gap(cfg["D*"], D_u), rtol=1e-9, atol=1e-12)
    assert cfg["gap"][0].min() > 0.05 and cfg["class_label"] == 6


def test_trajectory_errors(labelled):
    data, labels = labelled
    exact = ExactDenoiser(data, labels)
    with pytest.raises(ValueError, match=r"b samples images of shape \(1, 8, 8\).*b.sample_shape=\(1, 8, 8\)"):
        trajectory(exact, make_sampler(), data[:, :, :4], class_label=0, name="b")
    with pytest.raises(ValueError, match="class_label=None"): trajectory(exact, make_sampler(), data, labels)
    with pytest.raises(ValueError, match="class_label=10"): trajectory(exact, make_sampler(), data, labels, class_label=10)
    with pytest.raises(ValueError, match="class_label=3"): trajectory(ExactDenoiser(data), make_sampler(), data, class_label=3)
    with pytest.raises(TypeError, match="model of type function"): trajectory(lambda x, s, c: x, make_sampler(), data)
    with pytest.raises(ValueError, match="sampler='DDIM'"): make_sampler("DDIM")
    with pytest.raises(ValueError, match="step=12"): step_panels(trajectory(exact, make_sampler(num_steps=12), data, labels, class_label=1), 12, data)
    with pytest.raises(ValueError, match=r"D_star.shape=\(2,\)"): denoiser_gap(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"x.shape=\(1, 1, 4, 4\)"): nearest_training_image(torch.zeros(1, 1, 4, 4), data)


@pytest.fixture(scope="module")
def two_paths(labelled):
    data, labels = labelled
    return TrajectoryExplorer("exact", data=data, labels=labels, scale=1.0, scale_b=3.0, class_label=3, num_steps=10, step=2)


def _sent(fig, monkeypatch) -> list:
    "The list each message `fig` sends to the browser (restyle, update, relayout) is appended to, as (kind, args, kwargs)."
    sent = []
    for name in ("_send_restyle_msg", "_send_update_msg", "_send_relayout_msg"):
        monkeypatch.setattr(fig, name, lambda *a, _n=name, **k: sent.append((_n, a, k)))
    return sent


def test_trajectory_explorer_step_move_is_one_message(two_paths, monkeypatch, labelled):
    ex, data = two_paths, labelled[0]
    assert ex.P == 2 and len(ex.fig.data) == 2 * len(TRAJECTORY_PANELS) + 2
    assert repr(ex) == "TrajectoryExplorer(samplers=('HeunEDMSampler', 'HeunEDMSampler'), step=2, scales=(1.0, 3.0), class_label=3)"
    sent = _sent(ex.fig, monkeypatch)
    before = [np.array(ex.fig.data[ex._image(p, "x_i")].z) for p in range(2)]
    ex.step_slider.value = 7
    assert [m[0] for m in sent] == ["_send_update_msg"]               # images and markers: one message, one redraw
    msg = sent[0][2]
    assert set(msg["restyle_data"]) == {"z"} and len(msg["trace_indexes"]) == 8
    assert msg["relayout_data"]["shapes[0].x0"] == 7 and ex.fig.layout.shapes[0].x0 == ex.fig.layout.shapes[0].x1 == 7
    for p in range(2):
        path = ex.paths[p]
        assert ex.marker(p).x == 7 and ex.marker(p).y == pytest.approx(float(path["gap"][7, 0]), rel=1e-12)
        want = step_panels(path, 7, data)
        for t in TRAJECTORY_PANELS: np.testing.assert_allclose(ex.fig.data[ex._image(p, t)].z, want[t][0].numpy(), rtol=0, atol=0)
        assert not np.array_equal(before[p], ex.fig.data[ex._image(p, "x_i")].z)
    np.testing.assert_allclose(ex.curve(0).y, 0.0, atol=1e-12); assert max(ex.curve(1).y) > 0.05   # scale 1: D = D*
    assert "step 7 of 10" in ex.readout.value and "class 3" in ex.readout.value


def test_trajectory_explorer_sampler_change_recomputes_one_path(two_paths):
    ex = two_paths
    a_before, b_before = ex.paths
    ex.sampler_dropdowns[1].value = "EulerEDMSampler"
    assert ex.paths[0] is a_before and ex.paths[1] is not b_before
    assert "EulerEDMSampler" in ex.curve(1).name and ex.curve(1).y == pytest.approx(ex.paths[1]["gap"][:, 0].tolist(), rel=1e-12)
    ex.scale_sliders[0].value = 2.0
    assert max(ex.curve(0).y) > 0.05 and ex.marker(0).y == pytest.approx(float(ex.paths[0]["gap"][ex.step_slider.value, 0]))
    ex.class_dropdown.value = 8
    assert all(p["class_label"] == 8 for p in ex.paths) and int(ex.labels[int(ex.paths[0]["nearest"][0])]) == 8   # D* lands in class 8


def test_trajectory_explorer_errors(labelled):
    data, labels = labelled
    with pytest.raises(ValueError, match="sampler='DDIM'"): TrajectoryExplorer("exact", data=data, labels=labels, sampler_b="DDIM")
    with pytest.raises(ValueError, match="step=10"): TrajectoryExplorer("exact", data=data, labels=labels, num_steps=10, step=10)
    with pytest.raises(ValueError, match="step=-1"): TrajectoryExplorer("exact", data=data, labels=labels, step=-1)
    with pytest.raises(ValueError, match="class_label=12"): TrajectoryExplorer("exact", data=data, labels=labels, class_label=12)
    with pytest.raises(ValueError, match=r"b.sample_shape=\(1, 4, 4\)"):
        TrajectoryExplorer("exact", ExactDenoiser(data[:, :, :4, :4]), data=data, labels=labels)


# ---------------------------------------------------------------- a checkpoint through load_engine
TINY = [*TINY_NET, "model.params.sampler_config.params.num_steps=5"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from pathlib import Path
    from diffexplore.cli import load_config, train
    cfg = load_config(Path(__file__).parent.parent / "configs" / "digits.yaml",
                      [*TINY, "trainer.max_steps=3", "lightning.sample_every_n_steps=0", "lightning.judge_samples=0"])
    run = tmp_path_factory.mktemp("tiny") / "run"
    train(cfg, run, judge=False)
    return run / "checkpoints" / "last.ckpt"


def test_trajectory_of_a_checkpoint_is_the_engines_own_sample(tiny_ckpt):
    from diffexplore.cli import load_engine
    engine = load_engine(tiny_ckpt)
    dm = DigitsDataModule()
    data, labels = dm.train_images(), dm.train_labels()
    assert engine.sample_shape == (1, 8, 8) and model_classes(engine) == 10
    path = trajectory(engine, engine.sampler, data, labels, class_label=4, seed=9)
    assert torch.equal(path["final"].clamp(-1, 1), engine.generate(1, class_labels=[4], seed=9))   # sampling_path changes nothing
    assert torch.equal(path["sigma"], engine.sampler.get_sigmas()[:-1]) and (path["gap"] > 0).all()
    assert torch.equal(path["D*"][2], ExactDenoiser(data, labels)(path["x"][2], path["sigma"][2], {"vector": torch.tensor([4])}))
    ex = TrajectoryExplorer(engine, "exact", data=data, labels=labels, num_steps=5, scale=1.0, class_label=4)
    assert ex.P == 2 and (ex.paths[0]["gap"] > 0).all() and (ex.paths[1]["gap"] < 1e-6).all()
    assert ex.label(0).startswith("a: engine") and ex.label(1).startswith("b: exact D*")
    with pytest.raises(ValueError, match=r"a samples images of shape \(1, 8, 8\)"):
        TrajectoryExplorer(engine, data=torch.zeros(10, 1, 16, 16), labels=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="class_label=10"): TrajectoryExplorer(engine, data=data, labels=labels, class_label=10)


def test_trajectory_explorer_unconditional_model(labelled):
    "An unconditional model: no class, no guidance, D* over all images (labels given or not), and 'exact' follows a."
    data, labels = labelled
    ex = TrajectoryExplorer(ExactDenoiser(data), "exact", data=data, labels=labels, num_steps=6, scale=3.0)
    assert ex.classes is None and ex.class_label is None and model_classes(ex.models[1]) is None
    assert all((p["gap"] == 0).all() and p["class_label"] is None for p in ex.paths)   # scale ignored: D is D* of all images
    assert repr(ex) == "TrajectoryExplorer(samplers=('HeunEDMSampler', 'HeunEDMSampler'), step=5)"
    with pytest.raises(ValueError, match="class_label=2"): trajectory(ExactDenoiser(data), make_sampler(), data, labels, class_label=2)
