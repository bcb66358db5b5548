"""Every design-space component stays finite on σ ∈ [1e-6, 1e4] in float32 and under fp16 and bf16 autocast, with σ
given in float32, float16 or bfloat16: coefficients, weights and densities come out in float32, and the learned
weighting's loss is a finite float32 per sample."""
import pytest
import torch
from diffexplore.scalings import RectifiedFlowScaling, TrigFlowScaling, ConsistencyBoundaryScaling
from diffexplore.weightings import MinSNRWeighting, SoftMinSNRWeighting, RectifiedFlowWeighting, weighting_in_space
from diffexplore.sigma_sampling import LogitNormalSampling, CosineSampling, LogUniformSampling
from diffexplore.denoiser import Denoiser
from diffexplore.loss import LearnedWeightingLoss
from diffexplore.weightings import EDMWeighting
from diffexplore.scalings import EDMScaling

SCALINGS = [RectifiedFlowScaling(), TrigFlowScaling(0.5), ConsistencyBoundaryScaling(0.5, 0.002)]
WEIGHTINGS = [MinSNRWeighting(5.0), SoftMinSNRWeighting(0.5), RectifiedFlowWeighting()]
SAMPLERS = [LogitNormalSampling(0.0, 1.0, 3.0), CosineSampling(0.5), LogUniformSampling(0.002, 80.0)]
AUTOCAST = [None, torch.float16, torch.bfloat16]
SIGMA_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def sigmas(dtype):
    "σ from 1e-6 to 1e4 in `dtype`; in float16 1e-6 is subnormal and 1e4 is near the top, both still > 0 and finite."
    s = torch.logspace(-6, 4, 81).to(dtype)
    assert bool((s > 0).all() and torch.isfinite(s).all())
    return s


def autocast(dtype):
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)


@pytest.mark.parametrize("ac", AUTOCAST, ids=str)
@pytest.mark.parametrize("sdt", SIGMA_DTYPES, ids=str)
def test_components_finite_in_float32(ac, sdt):
    s = sigmas(sdt)
    with autocast(ac):
        for sc in SCALINGS:
            for c in sc(s): assert c.dtype == torch.float32 and bool(torch.isfinite(c).all()), (sc, ac, sdt)
        for w in WEIGHTINGS:
            for space in ("x0", "eps", "v"):
                v = weighting_in_space(w, s, space)
                assert v.dtype == torch.float32 and bool(torch.isfinite(v).all() and (v >= 0).all()), (w, space, ac, sdt)
        for p in SAMPLERS:
            for wrt in ("sigma", "log_sigma"):
                d = p.pdf(s, wrt=wrt)
                assert bool(torch.isfinite(d).all() and (d >= 0).all()), (p, wrt, ac, sdt)
            draws = p(256)
            assert draws.dtype == torch.float32 and bool(torch.isfinite(draws).all() and (draws > 0).all()), p


class Net(torch.nn.Module):
    "A tiny network F(x, c_noise, cond) with weights, so autocast has a matmul to lower."
    def __init__(self):
        super().__init__(); self.lin = torch.nn.Linear(4, 4)
    def forward(self, x, c_noise, cond=None, **kw):
        return self.lin(x.flatten(1)).view_as(x) + 1e-3 * c_noise.view(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("ac", AUTOCAST, ids=str)
@pytest.mark.parametrize("scaling", SCALINGS + [EDMScaling(0.5)], ids=lambda s: type(s).__name__)
def test_learned_weighting_loss_finite(ac, scaling):
    torch.manual_seed(0)
    s = sigmas(torch.float32)
    s = s[s >= getattr(scaling, "sigma_min", 0.0)]             # a consistency model is defined from its σ_min on
    x0 = torch.randn(len(s), 1, 2, 2) * 0.5
    lf = LearnedWeightingLoss(LogitNormalSampling(), EDMWeighting(0.5))
    with torch.no_grad(): lf.logvar.weight.normal_(std=lf.logvar_channels ** -0.5)   # a trained-looking u ~ N(0, 1), not the zero start
    with autocast(ac):
        loss = lf(Net(), Denoiser(scaling), None, x0, {}, sigmas=s)
    assert loss.shape == (len(s),) and loss.dtype == torch.float32 and bool(torch.isfinite(loss).all()), (scaling, ac)
