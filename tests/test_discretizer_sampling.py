"""Checks of `diffexplore.discretizer` and `diffexplore.sigma_sampling` that do not belong in the tutorial:
every bad input, agreement with sgm's own formulas over many n, exact end points for many parameters,
and the rare-tail frequencies of lucidrains/alphafold3-pytorch #68 and huggingface/diffusers #6041 measured with enough draws to see them."""
import math
import random
import re

import numpy as np
import pytest
import torch

from diffexplore.core import instantiate_from_config
from diffexplore.discretizer import (Discretization, EDMDiscretization, LegacyDDPMDiscretization,
                                     generate_roughly_equally_spaced_steps)
from diffexplore.sigma_sampling import DiscreteSampling, EDMSampling


# ---------- sgm's code, as written in sgm/modules/diffusionmodules/discretizer.py (reference only) ----------
def _sgm_edm(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def _sgm_legacy(n, linear_start=0.00085, linear_end=0.012, num_timesteps=1000):
    betas = (torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2).numpy()
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    if n < num_timesteps:
        alphas_cumprod = alphas_cumprod[np.linspace(num_timesteps - 1, 0, n, endpoint=False).astype(int)[::-1]]
    sigmas = torch.tensor((1 - alphas_cumprod) / alphas_cumprod, dtype=torch.float32) ** 0.5
    return torch.flip(sigmas, (0,))


# ---------------------------------------------- discretizer ----------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 5, 40, 1000])
def test_edm_matches_sgm(n):
    torch.testing.assert_close(EDMDiscretization()(n, do_append_zero=False), _sgm_edm(n), rtol=1e-5, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40, 999, 1000])
def test_legacy_matches_sgm(n):
    torch.testing.assert_close(LegacyDDPMDiscretization()(n, do_append_zero=False), _sgm_legacy(n), rtol=1e-6, atol=0)


@pytest.mark.parametrize("kw", [dict(), dict(linear_start=1e-4, linear_end=2e-2, num_timesteps=500)])
def test_legacy_other_schedules_match_sgm(kw):
    for n in [1, 10, kw.get("num_timesteps", 1000)]:
        torch.testing.assert_close(LegacyDDPMDiscretization(**kw)(n, do_append_zero=False), _sgm_legacy(n, **kw), rtol=1e-6, atol=0)


def test_edm_end_points_exact_for_any_parameters():
    "The power of a rounded sum misses sigma_min/sigma_max by an ulp for ~1 % of parameters; ours must not."
    rng = random.Random(0)
    for _ in range(3000):
        smin, smax = 10 ** rng.uniform(-5, 0), 10 ** rng.uniform(0.1, 4)
        d, n = EDMDiscretization(smin, smax, rng.uniform(0.5, 10)), rng.randint(2, 50)
        for dtype in (torch.float32, torch.float64):
            s = d(n, do_append_zero=False, dtype=dtype)
            assert s[0].item() == torch.tensor(smax, dtype=dtype).item()
            assert s[-1].item() == torch.tensor(smin, dtype=dtype).item()
            assert bool((s.diff() < 0).all())


def test_edm_rho_limits():
    "rho = 1 is linear in sigma; a large rho is close to geometric (even in log sigma)."
    lin = EDMDiscretization(0.1, 10.0, rho=1.0)(5, do_append_zero=False, dtype=torch.float64)
    torch.testing.assert_close(lin, torch.linspace(10.0, 0.1, 5, dtype=torch.float64))
    geo = EDMDiscretization(0.01, 100.0, rho=1e4)(5, do_append_zero=False, dtype=torch.float64)
    torch.testing.assert_close(geo.log10(), torch.linspace(2.0, -2.0, 5, dtype=torch.float64), rtol=0, atol=1e-3)


@pytest.mark.parametrize("disc", [EDMDiscretization(), LegacyDDPMDiscretization()])
def test_call_options(disc):
    s = disc(10)
    assert s.shape == (11,) and s.dtype == torch.float32 and s.device.type == "cpu" and s[-1].item() == 0.0
    assert bool((s[:-1] > 0).all()) and bool((s.diff() < 0).all())
    assert torch.equal(disc(10, flip=True), s.flip(0))
    assert torch.equal(disc(10, do_append_zero=False), s[:-1])
    assert torch.equal(disc(10, do_append_zero=False, flip=True), s[:-1].flip(0))
    assert disc(10, dtype=torch.float64).dtype == torch.float64
    assert disc(10, device=torch.device("cpu")).device.type == "cpu"
    assert torch.equal(disc(np.int64(10)), s)  # numpy integers are integers
    assert disc(1).shape == (2,)


@pytest.mark.parametrize("disc", [EDMDiscretization(), LegacyDDPMDiscretization()])
@pytest.mark.parametrize("n", [0, -3, 2.5, 40.0, True, "5", None])
def test_bad_n(disc, n):
    with pytest.raises(ValueError, match=re.escape(f"n={n!r}")):
        disc(n)


def test_bad_dtype():
    with pytest.raises(TypeError, match="dtype"): EDMDiscretization()(5, dtype=torch.int32)
    with pytest.raises(TypeError, match="dtype"): EDMDiscretization()(5, dtype="float32")


def test_base_is_abstract():
    with pytest.raises(TypeError): Discretization()


@pytest.mark.parametrize("kw, msg", [
    (dict(sigma_min=0.0), "sigma_min=0.0"), (dict(sigma_min=-1.0), "sigma_min=-1.0"),
    (dict(sigma_min=float("nan")), "sigma_min=nan"), (dict(sigma_max=float("inf")), "sigma_max=inf"),
    (dict(sigma_min=80.0), "sigma_min=80.0"), (dict(sigma_min=1.0, sigma_max=0.5), "sigma_max=0.5"),
    (dict(rho=0.0), "rho=0.0"), (dict(rho=-7), "rho=-7")])
def test_edm_bad_params(kw, msg):
    with pytest.raises(ValueError, match=msg): EDMDiscretization(**kw)


@pytest.mark.parametrize("kw, msg", [
    (dict(linear_start=0.0), "linear_start=0.0"), (dict(linear_start=-0.1), "linear_start=-0.1"),
    (dict(linear_end=1.0), "linear_end=1.0"), (dict(linear_end=float("nan")), "linear_end=nan"),
    (dict(linear_start=0.02, linear_end=0.01), "linear_start=0.02"),
    (dict(num_timesteps=0), "num_timesteps=0"), (dict(num_timesteps=10.5), "num_timesteps=10.5")])
def test_legacy_bad_params(kw, msg):
    with pytest.raises(ValueError, match=msg): LegacyDDPMDiscretization(**kw)


def test_legacy_n_above_table():
    with pytest.raises(ValueError, match="n=11"): LegacyDDPMDiscretization(num_timesteps=10)(11)


def test_legacy_table():
    d = LegacyDDPMDiscretization()
    assert d.betas.dtype == d.alphas_cumprod.dtype == d.sigmas.dtype == torch.float64
    assert d.sigmas.shape == d.alphas_cumprod.shape == (1000,)
    torch.testing.assert_close(d.sigmas, ((1 - d.alphas_cumprod) / d.alphas_cumprod).sqrt())
    torch.testing.assert_close(d.betas[[0, -1]], torch.tensor([0.00085, 0.012], dtype=torch.float64))
    # the VP <-> VE identity: alphabar = 1 / (1 + sigma^2)
    torch.testing.assert_close(d.alphas_cumprod, 1 / (1 + d.sigmas ** 2))
    # huggingface/diffusers #3851: a finite top sigma (no zero terminal SNR in this schedule)
    assert math.isfinite(d.sigmas[-1].item()) and d.alphas_cumprod[-1].item() > 0
    # one-step table
    one = LegacyDDPMDiscretization(num_timesteps=1)
    assert one(1).shape == (2,) and one(1)[0].item() > 0


@pytest.mark.parametrize("max_step", [1, 7, 1000])
def test_roughly_equally_spaced_steps(max_step):
    for n in range(1, max_step + 1):
        t = generate_roughly_equally_spaced_steps(n, max_step)
        assert len(t) == n and len(set(t.tolist())) == n, (n, t)
        assert t[-1] == max_step - 1 and t[0] >= 0 and bool((np.diff(t) > 0).all())
    ts = LegacyDDPMDiscretization(num_timesteps=max_step).timesteps(max_step)
    assert torch.equal(ts, torch.arange(max_step))


def test_discretizer_reprs_and_configs():
    assert repr(EDMDiscretization()) == "EDMDiscretization(sigma_min=0.002, sigma_max=80.0, rho=7.0)"
    assert repr(LegacyDDPMDiscretization()) == "LegacyDDPMDiscretization(linear_start=0.00085, linear_end=0.012, num_timesteps=1000)"
    d = instantiate_from_config({"target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization",
                                 "params": {"sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}})
    assert type(d) is EDMDiscretization and torch.equal(d(5), EDMDiscretization()(5))


# ---------------------------------------------- sigma_sampling ----------------------------------------------
def test_edm_sampling_rand_dtypes():
    s = EDMSampling()
    assert s(3).dtype == torch.float32 and s(3).shape == (3,)
    r64 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert s(2, rand=r64).dtype == torch.float64
    assert s(2, rand=r64.half()).dtype == torch.float32
    torch.testing.assert_close(s(2, rand=[0, 1]), torch.tensor([math.exp(-1.2), 1.0]))  # ints and lists accepted
    # the drawn sigma is always finite and > 0, even for extreme parameters' typical draws
    torch.manual_seed(0)
    x = EDMSampling(p_mean=2.0, p_std=3.0)(10_000)
    assert bool((x > 0).all()) and bool(torch.isfinite(x).all())


@pytest.mark.parametrize("kw, msg", [(dict(p_std=0.0), "p_std=0.0"), (dict(p_std=-1.2), "p_std=-1.2"),
                                     (dict(p_std=float("nan")), "p_std=nan"), (dict(p_mean=float("inf")), "p_mean=inf")])
def test_edm_sampling_bad_params(kw, msg):
    with pytest.raises(ValueError, match=msg): EDMSampling(**kw)


def test_edm_sampling_bad_calls():
    s = EDMSampling()
    for n in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n_samples="): s(n)
    with pytest.raises(ValueError, match=r"rand.shape=\(3,\)"): s(4, rand=torch.zeros(3))
    with pytest.raises(ValueError, match=r"rand.shape=\(2, 2\)"): s(4, rand=torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"rand.shape=\(\)"): s(1, rand=torch.tensor(0.0))
    with pytest.raises(ValueError, match="rand"): s(2, rand=torch.tensor([0.0, float("inf")]))
    with pytest.raises(TypeError, match="rand"): s(2, rand=torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"q must be in \[0, 1\]"): s.quantile(1.5)
    with pytest.raises(ValueError, match="sigma=nan"): s.pdf(float("nan"))


def test_edm_sampling_analytic_consistency():
    s = EDMSampling(p_mean=0.3, p_std=0.7)
    q = torch.tensor([1e-6, 0.01, 0.25, 0.5, 0.9, 1 - 1e-6], dtype=torch.float64)
    torch.testing.assert_close(s.cdf(s.quantile(q)), q, rtol=1e-9, atol=1e-12)
    assert s.quantile(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist() == [0.0, math.inf]
    # pdf is the derivative of cdf
    x = torch.tensor([0.05, 0.5, 1.0, 3.0], dtype=torch.float64)
    h = 1e-6 * x
    torch.testing.assert_close(s.pdf(x), (s.cdf(x + h) - s.cdf(x - h)) / (2 * h), rtol=1e-6, atol=0)
    # the three densities are one density in three variables
    torch.testing.assert_close(s.pdf(x, wrt="log_sigma"), s.pdf(x) * x)
    torch.testing.assert_close(s.pdf(x, wrt="log10_sigma"), s.pdf(x) * x * math.log(10))
    assert s.median == pytest.approx(math.exp(0.3)) and s.mean == pytest.approx(math.exp(0.3 + 0.49 / 2))
    assert s.cdf(s.median).item() == pytest.approx(0.5, abs=1e-7)


def test_edm_tail_below_sigma_min_measured():
    "P(sigma < 0.002) = 1.4650e-05: too rare for 1e5 draws; 1e7 draws see ~146 of them (3 binomial std ~ 36)."
    torch.manual_seed(1)
    s, n, p = EDMSampling(), 10_000_000, 1.4650e-05
    assert s.cdf(torch.tensor(0.002, dtype=torch.float64)).item() == pytest.approx(p, rel=1e-4)
    count = (s(n) < 0.002).sum().item()
    assert abs(count - n * p) < 3 * math.sqrt(n * p * (1 - p)), count


def test_edm_statistics_other_seeds():
    "mean/std of ln sigma within 3 standard errors, for a few seeds and non-default parameters."
    for seed, (pm, ps) in enumerate([(-1.2, 1.2), (0.0, 0.5), (1.0, 2.0)]):
        torch.manual_seed(seed)
        ln, n = EDMSampling(pm, ps)(100_000).double().log(), 100_000
        assert abs(ln.mean().item() - pm) < 3 * ps / math.sqrt(n)
        assert abs(ln.std().item() - ps) < 3 * ps / math.sqrt(2 * n)


def test_fp16_overflow_frequency_measured():
    "P(sigma < 0.0039073) = 1.4687e-04 per sample; 3.6904e-02 of batches of 256 contain one."
    s, p, pb = EDMSampling(), 1.4687e-04, 3.6904e-02
    assert s.cdf(torch.tensor(0.0039073, dtype=torch.float64)).item() == pytest.approx(p, rel=1e-4)
    torch.manual_seed(2)
    batches = 20_000
    hit = (s(batches * 256).view(batches, 256) < 0.0039073).any(dim=1).double().mean().item()
    assert abs(hit - pb) < 3 * math.sqrt(pb * (1 - pb) / batches), hit


def test_discrete_sampling_table_and_indices():
    ds = DiscreteSampling(LegacyDDPMDiscretization(), 1000)
    assert ds.sigmas.dtype == torch.float32 and ds.sigmas.shape == (1000,)
    assert torch.equal(ds.sigmas, LegacyDDPMDiscretization().sigmas.float())
    torch.testing.assert_close(ds(3, rand=torch.tensor([0, 354, 999])), torch.tensor([0.029167, 1.0004, 14.615]), rtol=1e-4, atol=0)
    assert ds.idx_to_sigma(torch.tensor([[0, 1], [2, 3]])).shape == (2, 2)
    assert ds.idx_to_sigma(torch.tensor([], dtype=torch.long)).shape == (0,)
    assert ds(2, rand=[5, 7]).shape == (2,) and ds.idx_to_sigma(np.array([5]))[0] == ds.sigmas[5]
    # seeded uniform draws: every index 0..999 appears, roughly equally often, never anything else
    torch.manual_seed(3)
    draws = ds(200_000)
    idx = torch.searchsorted(ds.sigmas, draws)
    assert torch.equal(ds.sigmas[idx], draws)
    counts = torch.bincount(idx, minlength=1000)
    assert counts.shape == (1000,) and bool((counts > 0).all())
    assert abs(counts.double().mean().item() - 200.0) < 1e-9 and counts.max().item() < 200 + 6 * math.sqrt(200)


def test_discrete_sampling_bad_input():
    ds = DiscreteSampling(EDMDiscretization(), 10)
    for bad in (10, -1, 1000):
        with pytest.raises(ValueError, match=f"idx={bad}"): ds.idx_to_sigma(torch.tensor([0, bad]))
    with pytest.raises(TypeError, match="idx"): ds.idx_to_sigma(torch.tensor([0.0]))
    with pytest.raises(TypeError, match="rand"): ds(1, rand=torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"rand.shape=\(2,\)"): ds(3, rand=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="n_samples=0"): ds(0)
    with pytest.raises(ValueError, match="num_idx=0"): DiscreteSampling(EDMDiscretization(), 0)
    with pytest.raises(ValueError, match="num_timesteps=1000; got n=2000"): DiscreteSampling(LegacyDDPMDiscretization(), 2000)
    with pytest.raises(TypeError, match="discretization"):
        DiscreteSampling({"target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization"}, 10)


def test_discrete_sampling_never_draws_zero():
    "sigma = 0 must never reach the weighting (its weight is infinite); the appended zero is refused where it would be drawn."
    with pytest.raises(ValueError, match="do_append_zero=True"):
        DiscreteSampling(EDMDiscretization(), 10, do_append_zero=True, flip=True)
    ds = DiscreteSampling(EDMDiscretization(), 10, do_append_zero=True, flip=False)
    assert ds.sigmas.shape == (11,) and ds.sigmas[-1].item() == 0.0
    torch.manual_seed(4)
    assert bool((ds(10_000) > 0).all())
    with pytest.raises(ValueError, match="idx=10"): ds.idx_to_sigma(torch.tensor([10]))


def test_discrete_sampling_from_sgm_config():
    ds = instantiate_from_config({"target": "sgm.modules.diffusionmodules.sigma_sampling.DiscreteSampling",
                                  "params": {"num_idx": 1000, "discretization_config": {
                                      "target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}}})
    assert type(ds) is DiscreteSampling and type(ds.discretization) is LegacyDDPMDiscretization
    assert torch.equal(ds.sigmas, DiscreteSampling(LegacyDDPMDiscretization(), 1000).sigmas)
    assert repr(ds) == ("DiscreteSampling(discretization=LegacyDDPMDiscretization(linear_start=0.00085, linear_end=0.012, "
                        "num_timesteps=1000), num_idx=1000, do_append_zero=False, flip=True)")
    edm = instantiate_from_config({"target": "sgm.modules.diffusionmodules.sigma_sampling.EDMSampling",
                                   "params": {"p_mean": -1.2, "p_std": 1.2}})
    assert type(edm) is EDMSampling and repr(edm) == "EDMSampling(p_mean=-1.2, p_std=1.2)"
    with pytest.raises(TypeError, match="discretization"):
        instantiate_from_config({"target": "sgm.modules.diffusionmodules.sigma_sampling.DiscreteSampling", "params": {"num_idx": 10}})


@pytest.mark.parametrize("name", ["EulerEDMSampler", "HeunEDMSampler", "EulerAncestralSampler", "DPMPP2MSampler"])
def test_sampler_loops_do_not_check_each_step(monkeypatch, name):
    # the schedule is checked once; per-step checks (a host sync each on a GPU) are for the public step functions
    import diffexplore.sampling as S
    def refuse(*a, **kw): raise AssertionError("per-step check inside a sampler loop")
    monkeypatch.setattr(S, "_check_step", refuse)
    out = getattr(S, name)(num_steps=4)(lambda x, s, c: x / (1 + s[:, None] ** 2), torch.randn(3, 2), None)
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    with pytest.raises(AssertionError, match="per-step"): S.to_d(torch.ones(1, 2), torch.ones(1), torch.zeros(1, 2))
