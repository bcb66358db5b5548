"""Checks of the σ samplers in `diffexplore.sigma_sampling` that do not belong in the tutorial: building each from
an sgm-style config, and agreement in distribution with the published draw formulas (SD3's logit-normal with
shift as in diffusers `training_utils.py` / sd3.5 `sd3_impls.py`; k-diffusion `k_diffusion/utils.py`
rand_v_diffusion and rand_log_uniform, restated below) on 200k seeded draws."""
import math

import pytest
import torch

from diffexplore.core import instantiate_from_config
from diffexplore.discretizer import LegacyDDPMDiscretization
from diffexplore.sigma_sampling import (CosineSampling, DiscreteSampling, EDMSampling, LogitNormalSampling,
                                        LogUniformSampling)

N = 200_000
QS = [0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999]
f64 = torch.float64


# ---------- the published draws, restated (reference only) ----------
def _sd3_logit_normal(n, m, s, shift, gen):
    "SD3: u ~ N(m, s²), t = sigmoid(u), shifted t' = α·t/(1 + (α − 1)·t) (sd3_impls.py), σ = t'/(1 − t'); in float64."
    t = torch.sigmoid(torch.randn(n, generator=gen, dtype=f64) * s + m)
    t = shift * t / (1 + (shift - 1) * t)
    return t / (1 - t)


def _kdiff_v_diffusion(n, sigma_data, min_value, max_value, gen):
    "k_diffusion/utils.py rand_v_diffusion, as written there (float32)."
    min_cdf = math.atan(min_value / sigma_data) * 2 / math.pi
    max_cdf = math.atan(max_value / sigma_data) * 2 / math.pi
    u = torch.rand(n, generator=gen) * (max_cdf - min_cdf) + min_cdf
    return torch.tan(u * math.pi / 2) * sigma_data


def _kdiff_log_uniform(n, min_value, max_value, gen):
    "k_diffusion/utils.py rand_log_uniform, as written there."
    min_value, max_value = math.log(min_value), math.log(max_value)
    return (torch.rand(n, generator=gen) * (max_value - min_value) + min_value).exp()


def _same_distribution(a, b, qs=QS, k=5.0):
    """Two-sample quantile comparison: for each q, the empirical cdf of `b` at `a`'s q-quantile is q up to sampling
    noise. `a`'s quantile has cdf value q ± √(q(1−q)/n) and `b`'s empirical cdf adds the same again, independently:
    the gap has standard deviation √(2·q(1−q)/n) (0.0016 at q = ½ for n = 200k); `k` of them is the tolerance."""
    a, b = a.double().sort().values, b.double().sort().values
    for q in qs:
        x = torch.quantile(a, q, interpolation="lower") if a.numel() <= 16_000_000 else a[int(q * a.numel())]
        fb = torch.searchsorted(b, x, right=True).item() / b.numel()
        tol = k * math.sqrt(2 * q * (1 - q) / min(a.numel(), b.numel())) + 1 / b.numel()
        assert abs(fb - q) < tol, (q, fb, tol)


def _ks(a, b):
    a, b = a.double().sort().values, b.double().sort().values
    both = torch.cat([a, b])
    return (torch.searchsorted(a, both, right=True) / a.numel() - torch.searchsorted(b, both, right=True) / b.numel()).abs().max().item()


# ---------- configs ----------
@pytest.mark.parametrize("prefix", ["diffexplore.sigma_sampling", "sgm.modules.diffusionmodules.sigma_sampling"])
@pytest.mark.parametrize("name, params, want", [
    ("LogitNormalSampling", {"m": 0.0, "s": 1.0, "shift": 3.0}, "LogitNormalSampling(m=0.0, s=1.0, shift=3.0)"),
    ("CosineSampling", {"sigma_data": 0.5, "sigma_min": 0.0, "sigma_max": math.inf}, "CosineSampling(sigma_data=0.5, sigma_min=0.0, sigma_max=inf)"),
    ("LogUniformSampling", {"sigma_min": 0.002, "sigma_max": 80.0}, "LogUniformSampling(sigma_min=0.002, sigma_max=80.0)"),
])
def test_instantiate_from_config(prefix, name, params, want):
    obj = instantiate_from_config({"target": f"{prefix}.{name}", "params": params})
    assert type(obj).__module__ == "diffexplore.sigma_sampling" and type(obj).__name__ == name
    assert repr(obj) == want
    x = obj(1000)
    assert x.shape == (1000,) and x.dtype == torch.float32


def test_config_errors_name_the_param():
    with pytest.raises(ValueError, match="shift=0"):
        instantiate_from_config({"target": "sgm.modules.diffusionmodules.sigma_sampling.LogitNormalSampling", "params": {"shift": 0}})
    with pytest.raises(ValueError, match="sigma_min=0"):
        instantiate_from_config({"target": "diffexplore.sigma_sampling.LogUniformSampling", "params": {"sigma_min": 0, "sigma_max": 80}})


# ---------- logit-normal ----------
@pytest.mark.parametrize("m, s, shift", [(0.0, 1.0, 1.0), (0.0, 1.0, 3.0), (0.5, 0.8, 1.0), (-1.0, 1.5, 2.0)])
def test_logit_normal_matches_sd3_formula_and_edm(m, s, shift):
    g = torch.Generator().manual_seed(10)
    ours = LogitNormalSampling(m, s, shift)(N, rand=torch.randn(N, generator=g))
    g = torch.Generator().manual_seed(11)
    edm = EDMSampling(m + math.log(shift), s)(N, rand=torch.randn(N, generator=g))
    sd3 = _sd3_logit_normal(N, m, s, shift, torch.Generator().manual_seed(12))
    _same_distribution(ours, sd3)
    _same_distribution(ours, edm)
    _same_distribution(sd3, edm)
    assert _ks(ours, sd3) < 1.95 * math.sqrt(2 / N)   # two-sample KS at the 0.1 % level: 0.0062 for 200k each
    assert _ks(ours, edm) < 1.95 * math.sqrt(2 / N)


def test_logit_normal_same_eps_same_sigma():
    "With the same ε: ours = SD3's t-space formula (float64, moderate u) = EDMSampling(m + ln α, s), to float rounding."
    eps = torch.randn(N, generator=torch.Generator().manual_seed(13), dtype=f64)
    m, s, shift = 0.3, 0.9, 3.0
    ours = LogitNormalSampling(m, s, shift)(N, rand=eps)
    t = torch.sigmoid(m + s * eps)
    t = shift * t / (1 + (shift - 1) * t)
    torch.testing.assert_close(ours, t / (1 - t), rtol=1e-9, atol=0)
    torch.testing.assert_close(ours, EDMSampling(m + math.log(shift), s)(N, rand=eps), rtol=1e-12, atol=0)
    e32 = eps.float()
    torch.testing.assert_close(LogitNormalSampling(m, s, shift)(N, rand=e32), EDMSampling(m + math.log(shift), s)(N, rand=e32), rtol=2e-6, atol=0)


def test_logit_normal_through_t_would_fail_in_float32():
    "Why σ is exp(u)·shift: via t in float32, u = 20 gives σ = ∞; ours gives e^20."
    u = torch.tensor([20.0])
    t = torch.sigmoid(u)
    assert (t / (1 - t)).isinf().all()
    torch.testing.assert_close(LogitNormalSampling(0.0, 1.0)(1, rand=u), torch.tensor([math.exp(20.0)]))


def test_logit_normal_raises_like_edm():
    for kw in (dict(m=100.0), dict(m=-120.0), dict(m=80.0, shift=1e10)):
        with pytest.raises(ValueError, match="drew sigma="): LogitNormalSampling(**kw)(3)


# ---------- cosine ----------
@pytest.mark.parametrize("sigma_data, lo, hi", [(0.5, 1e-3, 1e3), (1.0, 0.0, math.inf), (0.5, 0.1, 10.0)])
def test_cosine_matches_k_diffusion(sigma_data, lo, hi):
    torch.manual_seed(20)
    ours = CosineSampling(sigma_data, lo, hi)(N)
    ref = _kdiff_v_diffusion(N, sigma_data, lo, hi, torch.Generator().manual_seed(21))
    _same_distribution(ours, ref)
    assert _ks(ours, ref) < 1.95 * math.sqrt(2 / N)
    assert ours.min() >= lo and ours.max() <= hi and torch.isfinite(ours).all()
    # and against the exact cdf
    emp = torch.tensor([(ours <= x).double().mean().item() for x in CosineSampling(sigma_data, lo, hi).quantile(torch.tensor(QS, dtype=f64))])
    assert ((emp - torch.tensor(QS, dtype=f64)).abs() < 5 * (torch.tensor(QS, dtype=f64) * (1 - torch.tensor(QS, dtype=f64)) / N).sqrt() + 1 / N).all()


def test_cosine_float32_tan_past_half_pi():
    "In float32, π/2 rounds up: tan(float32(π/2)) < 0. Ours computes in float64 and stays ≥ 0 right up to u = 1."
    assert torch.tan(torch.tensor(math.pi / 2, dtype=torch.float32)).item() < 0
    u = torch.tensor([1 - 2 ** -24, 1 - 2 ** -23, 1.0])
    x = CosineSampling(0.5, 0.0, math.inf)(3, rand=u)
    assert (x[:2] > 1e6).all() and torch.isfinite(x[:2]).all() and x[2].item() == math.inf


# ---------- log-uniform ----------
@pytest.mark.parametrize("lo, hi", [(0.002, 80.0), (1e-4, 1e4), (0.5, 0.6)])
def test_log_uniform_matches_k_diffusion(lo, hi):
    torch.manual_seed(30)
    ours = LogUniformSampling(lo, hi)(N)
    ref = _kdiff_log_uniform(N, lo, hi, torch.Generator().manual_seed(31))
    _same_distribution(ours, ref)
    assert _ks(ours, ref) < 1.95 * math.sqrt(2 / N)
    assert ours.min() >= torch.tensor(lo).item() and ours.max() <= torch.tensor(hi).item()


def test_same_distribution_can_fail():
    "The comparison is sharp enough to see a 5 % change of scale, or a missing shift."
    torch.manual_seed(40)
    a = LogUniformSampling(0.002, 80.0)(N)
    with pytest.raises(AssertionError): _same_distribution(a, a * 1.05)
    with pytest.raises(AssertionError): _same_distribution(LogitNormalSampling(0, 1, 3)(N), LogitNormalSampling(0, 1, 1)(N))


# ---------- densities, discrete, support ----------
@pytest.mark.parametrize("smp", [LogitNormalSampling(0.5, 0.8, 2.0), CosineSampling(0.5), CosineSampling(1.0, 0.0, math.inf),
                                 LogUniformSampling(0.002, 80.0)], ids=repr)
def test_pdf_is_derivative_of_cdf(smp):
    x = torch.tensor([0.1, 0.3, 1.0, 7.0], dtype=f64)
    h = 1e-6 * x
    torch.testing.assert_close(smp.pdf(x), (smp.cdf(x + h) - smp.cdf(x - h)) / (2 * h), rtol=1e-6, atol=0)
    torch.testing.assert_close(smp.pdf(x, "log_sigma"), smp.pdf(x) * x, rtol=1e-12, atol=0)
    torch.testing.assert_close(smp.pdf(x, "log10_sigma"), smp.pdf(x) * x * math.log(10), rtol=1e-12, atol=0)
    q = torch.tensor([1e-6, 0.01, 0.5, 0.99, 1 - 1e-6], dtype=f64)
    torch.testing.assert_close(smp.cdf(smp.quantile(q)), q, rtol=1e-9, atol=1e-12)


def test_discrete_pmf_and_cdf_match_draws():
    ds = DiscreteSampling(LegacyDDPMDiscretization(), 1000)
    sig, p = ds.pmf()
    assert sig.shape == p.shape == (1000,) and p.dtype == f64 and p.sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.manual_seed(50)
    d = ds(N)
    for x in [0.03, 0.1, 0.5, 1.0, 3.0, 10.0]:
        pc = ds.cdf(torch.tensor(x, dtype=f64)).item()
        assert pc == pytest.approx(p[sig <= x].sum().item(), abs=1e-12)
        assert abs((d <= x).double().mean().item() - pc) < 5 * math.sqrt(pc * (1 - pc) / N) + 1 / N
    assert ds.support == (d.min().item(), d.max().item())


def test_support_bounds_draws():
    samplers = [EDMSampling(), LogitNormalSampling(0, 1, 3), CosineSampling(0.5), CosineSampling(0.5, 0.0, math.inf),
                LogUniformSampling(0.002, 80.0), DiscreteSampling(LegacyDDPMDiscretization(), 1000)]
    assert [s.support[0] == 0 for s in samplers] == [False, False, False, True, False, False]
    torch.manual_seed(60)
    for s in samplers:
        d, (lo, hi) = s(N), s.support
        assert isinstance(lo, float) and isinstance(hi, float)
        assert bool(((d >= lo) & (d <= hi)).all()), s
    assert CosineSampling(0.5, 0.0)(1, rand=torch.zeros(1)).item() == 0.0   # support[0] == 0 is real: σ = 0 is drawn


def test_cdf_far_lower_tail_is_relative_exact():
    "Φ(−10) = 7.6198530241605e-24 (not the 0 of torch.special.ndtr in float64), for EDM and logit-normal alike."
    for smp in (EDMSampling(0.0, 1.0), LogitNormalSampling(0.0, 1.0)):
        assert smp.cdf(torch.tensor(math.exp(-10.0), dtype=f64)).item() == pytest.approx(7.6198530241605e-24, rel=1e-12)
