"""Tests for diffexplore.sampling: the initial noise scale (Stability-AI/generative-models PR #263), DPM++(2M) into σ = 0
(huggingface/diffusers #9007), σ = 0 never reaching the denoiser, CFG batching,
known-answer sampling on the Gaussian toy denoiser, input checks, sgm configs, host reads per sampling call
(none per step) and the float64 schedule."""
import math

import pytest
import torch

from diffexplore.core import instantiate_from_config
from diffexplore.discretizer import EDMDiscretization, LegacyDDPMDiscretization
from diffexplore.sampling import (BaseDiffusionSampler, DPMPP2MSampler, EulerAncestralSampler, EulerEDMSampler,
                                  GaussianDenoiser, HeunEDMSampler, IdentityGuider, VanillaCFG, _dpmpp_2m_denoised,
                                  _lam, dpmpp_2m_step, get_ancestral_step, to_d)

F64 = torch.float64
SAMPLERS = [EulerEDMSampler, HeunEDMSampler, EulerAncestralSampler, DPMPP2MSampler]
toy = GaussianDenoiser(1.0)  # the toy Gaussian denoiser x / (1 + σ²), exact for data ~ N(0, 1)


class Recorder:
    "Wraps a denoiser; records (batch size, σ values) of every call."
    def __init__(self, denoiser): self.denoiser, self.calls = denoiser, []
    def __call__(self, x, sigma, cond):
        assert sigma.shape == (x.shape[0],)
        self.calls.append((x.shape[0], sigma.tolist()))
        return self.denoiser(x, sigma, cond)
    @property
    def sigmas(self): return [s for _, ss in self.calls for s in ss]


# ---------------------------------------------------------------- initial noise scale: Stability-AI/generative-models PR #263
@pytest.mark.parametrize("sigma_0, expected", [(14.6146, 14.649), (80.0, 80.006), (3.6758, 3.8094), (1.0, 1.4142)])
def test_init_noise_sgm_convention(sigma_0, expected):
    "sgm: unit noise 1.0 is multiplied by sqrt(1 + σ_0²) before the first denoiser call."
    seen = []
    def den(x, s, c): seen.append((x.item(), s.item())); return toy(x, s, c)
    EulerEDMSampler()(den, torch.ones(1, 1, dtype=F64), None, sigmas=torch.tensor([sigma_0, 0.0], dtype=F64))
    assert seen[0] == pytest.approx((expected, sigma_0), abs=6e-4)
    assert BaseDiffusionSampler().init_noise_scale(torch.tensor(sigma_0, dtype=F64)).item() == pytest.approx(expected, abs=6e-4)


def test_init_noise_first_denoiser_input():
    "The value the denoiser sees first is the scaled noise, for the sgm, EDM-paper and σ_data = 0.5 conventions."
    seen = []
    def den(x, s, c): seen.append(x.clone()); return toy(x, s, c)
    for init_sd, expected in [(1.0, 80.006), (0.0, 80.0), (0.5, 80.002)]:
        seen.clear()
        DPMPP2MSampler(init_sigma_data=init_sd)(den, torch.ones(1, dtype=F64), None, sigmas=torch.tensor([80.0, 0.0], dtype=F64))
        assert seen[0].item() == pytest.approx(expected, abs=6e-4)
    assert BaseDiffusionSampler(init_sigma_data=0).init_noise_scale(80.0).item() == 80.0  # EDM paper: exactly σ_0


def test_init_noise_discretization_start_and_no_scaling():
    "With the default discretization the first σ is σ_max = 80; scale_initial_noise=False leaves x untouched."
    rec = Recorder(toy)
    EulerEDMSampler(num_steps=3)(rec, torch.ones(2, 1), None)
    assert rec.calls[0][1] == pytest.approx([80.0, 80.0])
    seen = []
    EulerEDMSampler()(lambda x, s, c: seen.append(x.clone()) or toy(x, s, c), torch.full((1,), 2.0), None,
                      sigmas=[2.0, 0.0], scale_initial_noise=False)
    assert seen[0].item() == 2.0


# ---------------------------------------------------------------- DPM++(2M) into σ = 0: huggingface/diffusers #9007
def test_dpmpp_2m_into_zero_dpmpp_2m_values_and_sigmas():
    rec, trace = Recorder(toy), []
    out = DPMPP2MSampler()(rec, torch.tensor([2.0], dtype=F64), None, sigmas=torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=F64),
                           scale_initial_noise=False, callback=lambda d: trace.append(d["x"].item()))
    assert trace == pytest.approx([1.2000, 0.95000, 0.76000], abs=5e-6)
    assert out.item() == toy(torch.tensor([0.95], dtype=F64), torch.tensor([0.5], dtype=F64)).item()  # exactly D(0.95, 0.5)
    assert rec.sigmas == [2.0, 1.0, 0.5]


def test_dpmpp_2m_into_zero_step_function():
    "The same three steps through the exposed step functions; the last one returns exactly the denoised value."
    x, d0 = torch.tensor(2.0, dtype=F64), toy(torch.tensor(2.0, dtype=F64), 2.0)
    x1 = dpmpp_2m_step(x, d0, 2.0, 1.0)  # first step: first order
    d1 = toy(x1, 1.0)
    x2 = dpmpp_2m_step(x1, d1, 1.0, 0.5, old_denoised=d0, previous_sigma=2.0)
    d2 = toy(x2, 0.5)
    x3 = dpmpp_2m_step(x2, d2, 0.5, 0.0, old_denoised=d1, previous_sigma=1.0)  # into 0: first order despite old_denoised
    assert [x1.item(), x2.item(), x3.item()] == pytest.approx([1.2, 0.95, 0.76], abs=1e-12)
    assert x3.item() == d2.item()
    s = DPMPP2MSampler()
    y1, e0 = s.sampler_step(None, None, 2.0, 1.0, toy, torch.tensor([2.0], dtype=F64), {}, {})
    y2, _ = s.sampler_step(e0, 2.0, 1.0, 0.5, toy, y1, {}, {})
    assert [y1.item(), y2.item()] == pytest.approx([1.2, 0.95], abs=1e-12)


def test_dpmpp_2m_into_zero_forced_second_order_is_nan():
    "Forcing the second-order extrapolation on the step into σ = 0 gives NaN (r = 0, 1/(2r) = inf); ours is finite."
    sigma, nxt, prev = (torch.tensor(v, dtype=F64) for v in (0.5, 0.0, 1.0))
    h, h_last = _lam(nxt) - _lam(sigma), _lam(sigma) - _lam(prev)
    assert math.isinf(h.item()) and (h_last / h).item() == 0.0
    forced_d = _dpmpp_2m_denoised(torch.tensor(0.76, dtype=F64), torch.tensor(0.6, dtype=F64), h, h_last)
    forced_x = (nxt / sigma) * 0.95 - torch.expm1(-h) * forced_d
    assert forced_x.isnan()
    ours = dpmpp_2m_step(torch.tensor(0.95, dtype=F64), torch.tensor(0.76, dtype=F64), sigma, nxt,
                         old_denoised=torch.tensor(0.6, dtype=F64), previous_sigma=prev)
    assert ours.isfinite() and ours.item() == 0.76


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 11])
def test_dpmpp_2m_finite_for_any_step_count(n):
    "The whole kind of fault: every step count ends finite and equals D at the last σ."
    rec = Recorder(toy)
    out = DPMPP2MSampler(num_steps=n)(rec, torch.randn(16, 1, dtype=F64), None)
    assert torch.isfinite(out).all()
    assert 0.0 not in rec.sigmas and len(rec.calls) == n


# ---------------------------------------------------------------- σ = 0 never reaches the denoiser
@pytest.mark.parametrize("cls, kw", [(c, {}) for c in SAMPLERS] + [(EulerEDMSampler, {"s_churn": 5.0}), (HeunEDMSampler, {"s_churn": 5.0})])
@pytest.mark.parametrize("guided", [False, True])
def test_no_denoiser_call_at_sigma_zero(cls, kw, guided):
    B, n = 3, 6
    rec = Recorder(GaussianDenoiser(0.5))
    guider = VanillaCFG(2.0) if guided else None
    c, uc = {"vector": torch.ones(B, 1)}, {"vector": torch.zeros(B, 1)}
    out = cls(num_steps=n, guider=guider, **kw)(rec, torch.randn(B, 1), c, uc)
    assert out.shape == (B, 1) and torch.isfinite(out).all()
    assert rec.sigmas and min(rec.sigmas) > 0
    assert all(b == (2 * B if guided else B) for b, _ in rec.calls)
    expected_calls = 2 * n - 1 if cls is HeunEDMSampler else n
    assert len(rec.calls) == expected_calls
    if not kw:  # without churn the denoiser sees exactly the non-zero schedule
        sched = EDMDiscretization()(n)[:-1].tolist()
        firsts = sorted({ss[0] for _, ss in rec.calls}, reverse=True)
        assert firsts == pytest.approx(sched, rel=1e-6)


def test_denoise_refuses_sigma_zero():
    with pytest.raises(ValueError, match="sigma=0"):
        EulerEDMSampler().denoise(torch.ones(1, 1), toy, 0.0, {}, {})


def test_heun_last_step_is_euler():
    "Heun's step into σ = 0 is a plain Euler step, landing exactly on D(x; σ_{N-1})."
    x = torch.tensor([[0.3]], dtype=F64)
    heun, _ = HeunEDMSampler().sampler_step(0.5, 0.0, toy, x, {}, {})
    assert heun.item() == pytest.approx(toy(x, torch.tensor([0.5], dtype=F64)).item(), abs=1e-15)


# ---------------------------------------------------------------- guidance
def cond_denoiser(x, sigma, cond):
    "Depends on cond: the Gaussian denoiser for data N(μ, 0.5²) with μ = cond['vector']."
    return GaussianDenoiser(0.5)(x, sigma, cond)


def test_vanilla_cfg_prepare_inputs_order_and_passthrough():
    x, s = torch.randn(2, 3), torch.tensor([1.0, 2.0])
    c = {"vector": torch.ones(2, 4), "crossattn": torch.ones(2, 5, 6), "concat": torch.ones(2, 1, 3), "mode": "t2i"}
    uc = {"vector": torch.zeros(2, 4), "crossattn": torch.zeros(2, 5, 6), "concat": torch.zeros(2, 1, 3), "mode": "t2i"}
    x_in, s_in, c_in = VanillaCFG(5.0).prepare_inputs(x, s, c, uc)
    assert torch.equal(x_in, torch.cat([x, x])) and torch.equal(s_in, torch.tensor([1.0, 2.0, 1.0, 2.0]))
    for k in ("vector", "crossattn", "concat"):
        assert torch.equal(c_in[k], torch.cat([uc[k], c[k]]))  # unconditional half first, as in sgm
    assert c_in["mode"] == "t2i"
    with pytest.raises(ValueError, match="mode"):
        VanillaCFG(5.0).prepare_inputs(x, s, c, {**uc, "mode": "other"})
    x_i, s_i, c_i = IdentityGuider().prepare_inputs(x, s, c, uc)
    assert x_i is x and s_i is s and c_i == c
    # the two halves the samplers call: the merge once per sampling call, the doubling per step
    merged = VanillaCFG(5.0).prepare_cond(c, uc)
    assert merged.keys() == c_in.keys() and all(torch.equal(merged[k], c_in[k]) for k in ("vector", "crossattn", "concat"))
    x2, s2 = VanillaCFG(5.0).prepare_x(x, s)
    assert torch.equal(x2, x_in) and torch.equal(s2, s_in)
    with pytest.raises(ValueError, match="mode"): VanillaCFG(5.0).prepare_cond(c, {**uc, "mode": "other"})


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0, -1.0])
def test_vanilla_cfg_combination(scale):
    out = VanillaCFG(scale)(torch.tensor([[1.0], [2.0], [5.0], [3.0]]), None)
    assert torch.allclose(out, torch.tensor([[1.0], [2.0]]) + scale * torch.tensor([[4.0], [1.0]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_vanilla_cfg_scale_must_be_finite(bad):
    with pytest.raises(ValueError, match="scale"): VanillaCFG(bad)
    with pytest.raises(TypeError, match="scale"): VanillaCFG("big")


@pytest.mark.parametrize("cls", SAMPLERS)
def test_cfg_one_call_per_step_and_scale_one_is_conditional(cls):
    B, n = 64, 10
    c, uc = {"vector": torch.full((B, 1), 2.0, dtype=F64)}, {"vector": torch.zeros(B, 1, dtype=F64)}
    x = torch.randn(B, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    rec = Recorder(cond_denoiser)
    torch.manual_seed(3); guided = cls(num_steps=n, guider=VanillaCFG(1.0))(rec, x, c, uc)
    torch.manual_seed(3); plain = cls(num_steps=n)(cond_denoiser, x, c)
    torch.manual_seed(3); uncond = cls(num_steps=n)(cond_denoiser, x, uc)
    assert len(rec.calls) == (2 * n - 1 if cls is HeunEDMSampler else n)
    assert all(b == 2 * B for b, _ in rec.calls)
    assert torch.allclose(guided, plain, atol=1e-10)
    assert not torch.allclose(guided, uncond, atol=1e-2)  # the cond actually matters


def test_cfg_scale_moves_the_mean():
    "Guided Gaussian denoiser D_u + s(D_c − D_u) is the exact denoiser of N(s·μ, σ_data²)."
    B = 4000
    c, uc = {"vector": torch.ones(B, 1, dtype=F64)}, {"vector": torch.zeros(B, 1, dtype=F64)}
    z = torch.randn(B, 1, dtype=F64, generator=torch.Generator().manual_seed(1))
    for scale in (0.0, 1.0, 2.5):
        out = HeunEDMSampler(num_steps=32, guider=VanillaCFG(scale), init_sigma_data=0.5)(cond_denoiser, z, c, uc)
        assert out.mean().item() == pytest.approx(scale, abs=0.03)


def test_cfg_missing_uc_key():
    with pytest.raises(ValueError, match="uc"):
        EulerEDMSampler(num_steps=2, guider=VanillaCFG(2.0))(cond_denoiser, torch.randn(2, 1), {"vector": torch.ones(2, 1)}, {})


# ---------------------------------------------------------------- known answer: Gaussian data
SD = 0.5
Z = torch.randn(20_000, 1, dtype=F64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("cls, steps, tol", [(HeunEDMSampler, 50, 0.03), (DPMPP2MSampler, 50, 0.03),
                                             (EulerEDMSampler, 100, 0.03), (EulerAncestralSampler, 400, 0.03)])
def test_gaussian_std(cls, steps, tol):
    """Samples from N(0, SD²) have std SD. First-order samplers need more steps for the same accuracy
    (Euler: 2.8 % short at 100 steps; Euler-ancestral: ~6 % at 100, ~1.5 % at 400)."""
    torch.manual_seed(0)
    out = cls(num_steps=steps, init_sigma_data=SD)(GaussianDenoiser(SD), Z, None)
    assert abs(out.std().item() / SD - 1) < tol
    assert abs(out.mean().item()) < 4 * SD / math.sqrt(len(Z))


@pytest.mark.parametrize("cls", [EulerEDMSampler, HeunEDMSampler, DPMPP2MSampler])
def test_ode_samplers_hit_the_exact_solution(cls):
    "x(σ) = z·sqrt(SD² + σ²) solves the ODE; started at z·sqrt(SD² + σ_0²), every path must end at SD·z."
    out = cls(num_steps=400, init_sigma_data=SD)(GaussianDenoiser(SD), Z[:500], None)
    assert torch.allclose(out, SD * Z[:500], rtol=0.02, atol=1e-6)


def test_heun_converges_faster_than_euler():
    "Error against the exact answer (and against a 1000-step reference) at 16 and 32 steps: Heun and DPM++ beat Euler."
    den, z = GaussianDenoiser(SD), Z[:2000]
    ref = HeunEDMSampler(num_steps=1000, init_sigma_data=SD)(den, z, None)
    assert torch.allclose(ref, SD * z, rtol=1e-4)
    for n in (16, 32):
        e = {cls: (cls(num_steps=n, init_sigma_data=SD)(den, z, None) - ref).abs().mean().item()
             for cls in (EulerEDMSampler, HeunEDMSampler, DPMPP2MSampler)}
        assert e[HeunEDMSampler] < e[EulerEDMSampler] / 2
        assert e[DPMPP2MSampler] < e[EulerEDMSampler] / 2
    # order of convergence: doubling N divides Heun's error by ~4 and Euler's by ~2
    err = lambda cls, n: (cls(num_steps=n, init_sigma_data=SD)(den, z, None) - ref).abs().mean().item()
    assert err(HeunEDMSampler, 32) / err(HeunEDMSampler, 64) > 3.0
    assert 1.5 < err(EulerEDMSampler, 32) / err(EulerEDMSampler, 64) < 2.5


def test_churn_keeps_the_distribution():
    "Heun with churn (stochastic, Algorithm 2) still samples N(0, SD²)."
    torch.manual_seed(0)
    out = HeunEDMSampler(num_steps=64, init_sigma_data=SD, s_churn=20.0, s_tmin=0.05, s_tmax=50.0)(GaussianDenoiser(SD), Z, None)
    assert abs(out.std().item() / SD - 1) < 0.03
    torch.manual_seed(0)
    det = HeunEDMSampler(num_steps=64, init_sigma_data=SD)(GaussianDenoiser(SD), Z, None)
    assert not torch.allclose(out, det)  # churn did add noise


def test_churn_gamma_and_noise():
    s = EulerEDMSampler(s_churn=4.0, s_tmin=0.1, s_tmax=10.0)
    assert s.gamma(1.0, 10) == pytest.approx(0.4)
    assert s.gamma(100.0, 10) == 0.0 and s.gamma(0.05, 10) == 0.0
    assert EulerEDMSampler(s_churn=100.0).gamma(1.0, 10) == pytest.approx(math.sqrt(2) - 1)
    # σ̂ = σ(1 + γ) is what the denoiser sees
    rec = Recorder(toy)
    EulerEDMSampler(s_churn=4.0)(rec, torch.randn(2, 1), None, sigmas=torch.tensor([2.0, 1.0, 0.0]))
    assert [ss[0] for _, ss in rec.calls] == pytest.approx([2.0 * 1.4142135, 1.0 * 1.4142135], rel=1e-6)  # min(4/2, √2−1)


def test_ancestral_step():
    down, up = get_ancestral_step(torch.tensor(2.0), torch.tensor(1.0))
    assert (down**2 + up**2).item() == pytest.approx(1.0) and up.item() == pytest.approx(math.sqrt(0.75))
    down, up = get_ancestral_step(torch.tensor(2.0), torch.tensor(1.0), eta=0.0)
    assert down.item() == 1.0 and up.item() == 0.0
    down, up = get_ancestral_step(torch.tensor(1.0), torch.tensor(0.0))
    assert down.item() == 0.0 and up.item() == 0.0
    # the last step into 0 adds no noise: it lands exactly on D
    x = torch.tensor([[0.3]], dtype=F64)
    out, _ = EulerAncestralSampler().sampler_step(0.5, 0.0, toy, x, {}, {})
    assert out.item() == pytest.approx(toy(x, torch.tensor([0.5])).item(), abs=1e-15)


def test_ancestral_eta_zero_is_euler():
    x = torch.randn(8, 1, dtype=F64)
    assert torch.allclose(EulerAncestralSampler(num_steps=7, eta=0.0)(toy, x, None), EulerEDMSampler(num_steps=7)(toy, x, None))


def test_to_d():
    assert to_d(torch.tensor([[3.0]]), torch.tensor([2.0]), torch.tensor([[1.0]])).item() == 1.0


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, name", [
    (lambda: EulerEDMSampler(num_steps=0), "num_steps=0"),
    (lambda: HeunEDMSampler(num_steps=-3), "num_steps=-3"),
    (lambda: EulerEDMSampler(s_churn=-1.0), "s_churn=-1.0"),
    (lambda: HeunEDMSampler(s_noise=-0.1), "s_noise=-0.1"),
    (lambda: EulerAncestralSampler(s_noise=-1.0), "s_noise=-1.0"),
    (lambda: EulerAncestralSampler(eta=float("nan")), "eta=nan"),
    (lambda: EulerEDMSampler(s_tmin=2.0, s_tmax=1.0), "s_tmax"),
    (lambda: DPMPP2MSampler(init_sigma_data=-0.5), "init_sigma_data=-0.5"),
    (lambda: DPMPP2MSampler(init_sigma_data=float("inf")), "init_sigma_data=inf"),
])
def test_bad_constructor_args(make, name):
    with pytest.raises(ValueError) as e: make()
    assert name in str(e.value)


@pytest.mark.parametrize("cls", SAMPLERS)
def test_bad_call_args(cls):
    s = cls()
    x = torch.randn(2, 1)
    with pytest.raises(ValueError, match="num_steps=0"): s(toy, x, None, num_steps=0)
    with pytest.raises(ValueError, match="num_steps"): s(toy, x, None)  # neither num_steps nor sigmas
    with pytest.raises(TypeError, match="num_steps"): s(toy, x, None, num_steps=2.5)
    for bad in (torch.tensor([[float("nan")], [0.0]]), torch.tensor([[float("inf")], [0.0]])):
        with pytest.raises(ValueError, match="x must be finite"): s(toy, bad, None, num_steps=2)
    with pytest.raises(TypeError, match="x"): s(toy, [0.0, 1.0], None, num_steps=2)
    with pytest.raises(TypeError, match="x.dtype"): s(toy, torch.ones(2, 1, dtype=torch.int64), None, num_steps=2)


@pytest.mark.parametrize("sigmas, msg", [
    ([2.0, 1.0, 0.5], "sigmas[-1]=0.5"),  # must end in 0
    ([1.0, 2.0, 0.0], "sigmas[0]=1.0"),  # must descend
    ([2.0, 2.0, 0.0], "strictly descending"),
    ([2.0, -1.0, 0.0], "sigmas=-1.0"),
    ([float("nan"), 0.0], "sigmas=nan"),
    ([float("inf"), 1.0, 0.0], "sigmas=inf"),
    ([0.0], "sigmas"),
    ([[2.0, 0.0]], "sigmas"),
])
def test_bad_sigmas(sigmas, msg):
    with pytest.raises(ValueError) as e: DPMPP2MSampler()(toy, torch.randn(2, 1), None, sigmas=torch.tensor(sigmas))
    assert msg in str(e.value)


def test_sigmas_and_num_steps_must_agree():
    with pytest.raises(ValueError, match="num_steps=3"):
        EulerEDMSampler()(toy, torch.randn(2, 1), None, num_steps=3, sigmas=[2.0, 1.0, 0.0])
    out = EulerEDMSampler()(toy, torch.randn(2, 1), None, num_steps=2, sigmas=[2.0, 1.0, 0.0])
    assert out.shape == (2, 1)


def test_wrong_denoiser_output_shape():
    with pytest.raises(ValueError, match="denoiser output"):
        EulerEDMSampler(num_steps=2)(lambda x, s, c: x[:1], torch.randn(2, 1), None)


# ---------------------------------------------------------------- loop details
def test_input_not_modified_and_shapes_kept():
    x = torch.randn(2, 3, 4, 4)
    x0 = x.clone()
    out = HeunEDMSampler(num_steps=4)(toy, x, {})
    assert torch.equal(x, x0)  # sgm scales x in place; we do not
    assert out.shape == x.shape and out.dtype == torch.float32
    assert HeunEDMSampler(num_steps=4)(toy, x.double(), {}).dtype == F64
    assert HeunEDMSampler(num_steps=4)(toy, x.half(), {}).dtype == torch.float32


def test_call_num_steps_overrides_constructor_and_legacy_discretization():
    rec = Recorder(toy)
    EulerEDMSampler(num_steps=10)(rec, torch.randn(1, 1), None, num_steps=4)
    assert len(rec.calls) == 4
    rec = Recorder(toy)
    s = DPMPP2MSampler(discretization=LegacyDDPMDiscretization(), num_steps=5)
    out = s(rec, torch.randn(3, 1), None)
    assert torch.isfinite(out).all() and len(rec.calls) == 5
    assert rec.calls[0][1][0] == pytest.approx(LegacyDDPMDiscretization()(5)[0].item())


def test_callback_sees_every_step():
    seen = []
    out = EulerEDMSampler(num_steps=5)(toy, torch.randn(2, 1), None, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(5))
    assert seen[-1]["next_sigma"].item() == 0.0 and torch.equal(seen[-1]["x"], out)
    assert set(seen[0]) == {"i", "sigma", "next_sigma", "x", "denoised"}


def test_verbose_progress_bar(capsys):
    EulerEDMSampler(num_steps=3, verbose=True)(toy, torch.randn(1, 1), None)
    assert "Sampling with EulerEDMSampler for 3 steps" in capsys.readouterr().err
    EulerEDMSampler(num_steps=3)(toy, torch.randn(1, 1), None)
    assert capsys.readouterr().err == ""


def test_reprs():
    assert repr(VanillaCFG(7.5)) == "VanillaCFG(scale=7.5)"
    assert repr(IdentityGuider()) == "IdentityGuider()"
    r = repr(HeunEDMSampler(num_steps=20, s_churn=1.0))
    assert r.startswith("HeunEDMSampler(discretization=EDMDiscretization(") and "num_steps=20" in r and "s_churn=1.0" in r
    assert "0x" not in repr(EulerAncestralSampler()) + repr(DPMPP2MSampler())


def test_sgm_config_instantiation():
    "sgm's YAML sampler section builds our classes (discretization_config/guider_config → objects)."
    cfg = {"target": "sgm.modules.diffusionmodules.sampling.EulerEDMSampler",
           "params": {"num_steps": 7, "s_churn": 0.5, "device": "cpu",
                      "discretization_config": {"target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization",
                                                "params": {"sigma_max": 14.6}},
                      "guider_config": {"target": "sgm.modules.diffusionmodules.guiders.VanillaCFG", "params": {"scale": 5.0}}}}
    s = instantiate_from_config(cfg)
    assert isinstance(s, EulerEDMSampler) and isinstance(s.guider, VanillaCFG) and s.guider.scale == 5.0
    assert s.discretization.sigma_max == 14.6 and s.num_steps == 7 and s.s_churn == 0.5
    rec = Recorder(cond_denoiser)
    s(rec, torch.randn(2, 1), {"vector": torch.ones(2, 1)}, {"vector": torch.zeros(2, 1)})
    assert len(rec.calls) == 7 and rec.calls[0][0] == 4
    for name in ("HeunEDMSampler", "EulerAncestralSampler", "DPMPP2MSampler"):
        obj = instantiate_from_config({"target": f"sgm.modules.diffusionmodules.sampling.{name}", "params": {"num_steps": 3}})
        assert type(obj).__name__ == name


# ---------------------------------------------------------------- no host reads per step
HOST_READS = ("item", "__float__", "__bool__", "tolist")


def count_host_reads(monkeypatch, fn) -> int:
    "Run `fn()` with every tensor → host read (`item`, `float`, `bool`, `tolist`) and `torch.equal` counted."
    n = [0]
    def counting(f):
        def wrapper(*a, **k):
            n[0] += 1
            return f(*a, **k)
        return wrapper
    for name in HOST_READS: monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "equal", counting(torch.equal))
    try: fn()
    finally: monkeypatch.undo()
    return n[0]


@pytest.mark.parametrize("cls, kw", [(c, {}) for c in SAMPLERS] + [(EulerEDMSampler, {"s_churn": 5.0}), (HeunEDMSampler, {"s_churn": 5.0})])
@pytest.mark.parametrize("guided", [False, True])
def test_host_reads_do_not_grow_with_steps(monkeypatch, cls, kw, guided):
    """A sampler call reads the host a fixed number of times (the checks of x and σ, one `tolist()` of the step plan),
    never per step: on a GPU each read waits for the network. With CFG, cond and uc (a batched `vector` and a
    non-batched tensor key that must be equal) are merged once per call, not per step. Before: 3 reads per step
    (Euler, Euler-ancestral, DPM++ 2M), 6 (Heun), one more `torch.equal` per evaluation with CFG."""
    B, same = 3, {"mode": torch.tensor([1.0])}
    c, uc = {"vector": torch.ones(B, 1), **same}, {"vector": torch.zeros(B, 1), **same}
    den = lambda x, s, c: x / (1 + s[:, None] ** 2)  # reads nothing itself
    sampler = cls(guider=VanillaCFG(2.0) if guided else None, **kw)
    x = torch.randn(B, 2)
    reads = {n: count_host_reads(monkeypatch, lambda: sampler(den, x, c, uc if guided else None, num_steps=n)) for n in (4, 12)}
    assert reads[4] == reads[12], reads
    assert count_host_reads(monkeypatch, lambda: float(torch.ones(()))) == 1  # the counter counts


def test_cfg_merges_cond_once_per_call():
    merges, rec = [], Recorder(cond_denoiser)
    class CountingCFG(VanillaCFG):
        def prepare_cond(self, c, uc): merges.append(1); return super().prepare_cond(c, uc)
    c, uc = {"vector": torch.ones(2, 1)}, {"vector": torch.zeros(2, 1)}
    HeunEDMSampler(num_steps=6, guider=CountingCFG(2.0))(rec, torch.randn(2, 1), c, uc)
    assert len(merges) == 1 and len(rec.calls) == 11


def test_denoiser_gets_sigma_on_x_device_as_batch():
    "σ reaches the denoiser as a `[B]` tensor on x's device and dtype (built from host floats); the callback's σ are 0-d CPU tensors."
    seen, steps = [], []
    def den(x, s, c): seen.append((s.shape, s.device, s.dtype)); return toy(x, s, c)
    EulerAncestralSampler(num_steps=3)(den, torch.randn(4, 2, dtype=F64), None, callback=steps.append)
    assert seen == [((4,), torch.device("cpu"), F64)] * 3
    assert all(d["sigma"].shape == () and d["sigma"].device.type == "cpu" for d in steps)


# ---------------------------------------------------------------- float64 schedule
def edm_formula_f64(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    "Karras et al. 2022, eq. 5, in float64."
    ramp = torch.arange(n, dtype=F64) / (n - 1)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


@pytest.mark.parametrize("cls", SAMPLERS)
def test_float64_schedule_from_num_steps(cls):
    "float64 x: σ from `num_steps` is the float64 formula to 1e-14 (not float32 rounded: 5e-8 off); samples stay float64."
    n, seen = 9, []
    out = cls(num_steps=n)(toy, torch.randn(2, 1, dtype=F64), None, callback=lambda d: seen.append(d["sigma"]))
    sigmas = torch.stack(seen)
    assert out.dtype == F64 and sigmas.dtype == F64
    torch.testing.assert_close(sigmas, edm_formula_f64(n), rtol=1e-14, atol=0)
    torch.testing.assert_close(cls(num_steps=n).get_sigmas(dtype=F64)[:-1], edm_formula_f64(n), rtol=1e-14, atol=0)
    assert cls(num_steps=n).get_sigmas().dtype == torch.float32  # other inputs keep a float32 schedule


# ---------------------------------------------------------------- a guider with sgm's API only
class SgmStyleCFG:
    "A user guider with only sgm's `prepare_inputs` and `__call__` (no `prepare_cond`/`prepare_x`)."
    def __init__(self, scale): self.scale, self.calls = scale, 0
    def prepare_inputs(self, x, s, c, uc):
        self.calls += 1
        return torch.cat([x, x]), torch.cat([s, s]), {"vector": torch.cat([uc["vector"], c["vector"]])}
    def __call__(self, x, sigma):
        x_u, x_c = x.chunk(2)
        return x_u + self.scale * (x_c - x_u)


@pytest.mark.parametrize("cls", SAMPLERS)
def test_sgm_style_guider_still_works(cls):
    "It is called per evaluation and gives the same samples as VanillaCFG."
    B, n = 8, 5
    c, uc = {"vector": torch.full((B, 1), 2.0, dtype=F64)}, {"vector": torch.zeros(B, 1, dtype=F64)}
    x, g = torch.randn(B, 1, dtype=F64, generator=torch.Generator().manual_seed(0)), SgmStyleCFG(2.5)
    torch.manual_seed(0); theirs = cls(num_steps=n, guider=g)(cond_denoiser, x, c, uc)
    torch.manual_seed(0); ours = cls(num_steps=n, guider=VanillaCFG(2.5))(cond_denoiser, x, c, uc)
    assert torch.equal(theirs, ours)
    assert g.calls == (2 * n - 1 if cls is HeunEDMSampler else n)


SAMPLER_CASES = [(EulerEDMSampler, {}), (EulerEDMSampler, dict(s_churn=2.0)), (HeunEDMSampler, {}),
                 (HeunEDMSampler, dict(s_churn=2.0)), (EulerAncestralSampler, {}), (DPMPP2MSampler, {})]


@pytest.mark.parametrize("guided", [False, True])
def test_engine_sampling_reads_do_not_grow_with_steps(monkeypatch, guided):
    """The same count through `DiffusionEngine.sample`, i.e. with the engine's own `Denoiser` (in its unchecked form)
    and a network, for every sampler, with and without CFG and churn. Before: 6 reads per step (12 for Heun)."""
    from diffexplore.engine import DiffusionEngine
    from diffexplore.denoiser import Denoiser
    from diffexplore.scalings import EDMScaling
    from diffexplore.weightings import EDMWeighting
    from diffexplore.sigma_sampling import EDMSampling
    from diffexplore.loss import StandardDiffusionLoss
    class Net(torch.nn.Module):                     # sgm's network call; uses c_noise and the class vector
        def __init__(self): super().__init__(); self.lin = torch.nn.Linear(4, 4)
        def forward(self, x, c_noise, cond): return self.lin(x) * c_noise[:, None].cos() + cond["vector"]
    engine = DiffusionEngine(Net(), Denoiser(EDMScaling(0.5)), StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)), use_ema=True)
    c, uc = {"vector": torch.randn(3, 4)}, {"vector": torch.zeros(3, 4)}
    def reads_(cls, kw, n):
        engine.sampler = cls(num_steps=n, guider=VanillaCFG(3.0) if guided else None, **kw)
        return count_host_reads(monkeypatch, lambda: engine.sample(c, uc, batch_size=3, shape=(4,)))
    for cls, kw in SAMPLER_CASES:
        reads = {n: reads_(cls, kw, n) for n in (4, 12)}
        assert reads[4] == reads[12], (cls.__name__, kw, reads)


def test_sgm_step_hook_overrides_are_refused_not_ignored():
    "sgm's per-step hooks are not called by the planned loop: overriding them is a TypeError naming the hook, not silently ignored."
    class MyEuler(EulerEDMSampler):
        def sampler_step(self, *a, **k): raise AssertionError("never called")
    class MyHeun(HeunEDMSampler):
        def possible_correction_step(self, euler_step, x, d, dt, next_sigma, denoiser, cond, uc): return euler_step
    den = lambda x, s, c: x / (1 + s[:, None] ** 2)
    for cls, name in ((MyEuler, "sampler_step"), (MyHeun, "possible_correction_step")):
        with pytest.raises(TypeError, match=name): cls(num_steps=3)(den, torch.randn(2, 2), None)


def test_cfg_subclass_prepare_inputs_is_honoured():
    "A VanillaCFG subclass overriding sgm's prepare_inputs gets it called at every evaluation."
    seen = []
    class MyCFG(VanillaCFG):
        def prepare_inputs(self, x, s, c, uc): seen.append(1); return super().prepare_inputs(x, s, c, uc)
    den = lambda x, s, c: x / (1 + s[:, None] ** 2) + c["vector"]
    EulerEDMSampler(num_steps=3, guider=MyCFG(2.0))(den, torch.randn(2, 2), {"vector": torch.ones(2, 2)}, {"vector": torch.zeros(2, 2)})
    assert len(seen) == 3


def test_dpmpp_2m_adjacent_float32_sigmas_stay_finite():
    "Two adjacent float32 σ whose logs round equal: the weights go to inf/0 in tensor form, as before, never ZeroDivisionError."
    a = torch.tensor(1000.0); b = torch.nextafter(a, torch.tensor(0.0))
    den = lambda x, s, c: x / (1 + s[:, None] ** 2)
    out = DPMPP2MSampler()(den, torch.randn(3, 2), {}, sigmas=torch.stack([torch.tensor(2000.0), a, b, torch.tensor(0.0)]))
    assert torch.isfinite(out).all()


def test_sgm_style_discretization_without_dtype():
    "A discretization with sgm's call `disc(n, do_append_zero=True, device=..., flip=False)` (no dtype) still works."
    class SgmDisc:
        def __call__(self, n, do_append_zero=True, device="cpu", flip=False):
            return torch.cat([torch.linspace(10.0, 0.1, n), torch.zeros(1)]).to(device)
    s = EulerEDMSampler(discretization=SgmDisc(), num_steps=4).get_sigmas()
    assert s.shape == (5,) and s[-1] == 0
    out = EulerEDMSampler(discretization=SgmDisc(), num_steps=4)(lambda x, s, c: x * 0, torch.randn(2, 2, dtype=torch.float64), None)
    assert out.dtype == torch.float64
