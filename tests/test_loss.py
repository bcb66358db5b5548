"Loss cases that don't belong in the tutorial: statistics and bit-identity of offset noise (bugcase BC12)."
import torch
from diffexplore.loss import StandardDiffusionLoss
from diffexplore.sigma_sampling import EDMSampling
from diffexplore.weightings import EDMWeighting
from diffexplore.scalings import EDMScaling
from diffexplore.denoiser import Denoiser


def test_offset_noise_std():
    torch.manual_seed(0)
    n = StandardDiffusionLoss(EDMSampling(), EDMWeighting(), offset_noise_level=0.1).noise(torch.zeros(4000, 4, 8, 8))
    # per-element std sqrt(1 + 0.1^2) = 1.0050; 1M elements but only 16000 offsets: se of std ~ 0.0011
    assert abs(n.std().item() - 1.0050) < 0.004


def test_offset_zero_is_bit_identical_and_draws_nothing_extra():
    x0 = torch.randn(3, 2, 4, 4)
    net = lambda x, c, cond: torch.tanh(x)
    a = StandardDiffusionLoss(EDMSampling(), EDMWeighting(), offset_noise_level=0.0)
    torch.manual_seed(5); la = a(net, Denoiser(EDMScaling()), None, x0, {}); after_a = torch.rand(1)
    torch.manual_seed(5)
    sig = EDMSampling()(3); noise = torch.randn_like(x0); after_b = torch.rand(1)
    lb = a(net, Denoiser(EDMScaling()), None, x0, {}, sigmas=sig, noise=noise)
    assert torch.equal(la, lb) and torch.equal(after_a, after_b)


def test_batch2model_keys_reach_network():
    seen = {}
    def net(x, c, cond, **kw): seen.update(kw); return torch.zeros_like(x)
    lf = StandardDiffusionLoss(EDMSampling(), EDMWeighting(), batch2model_keys=["image_only_indicator"])
    lf(net, Denoiser(EDMScaling()), None, torch.zeros(2, 1, 2, 2), {"image_only_indicator": 7, "other": 1})
    assert seen == {"image_only_indicator": 7}


def test_l1_loss():
    lf = StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5), loss_type="l1")
    x0 = torch.full((1, 1, 2, 2), 0.3)
    l = lf(lambda x, c, cond: torch.zeros_like(x), Denoiser(EDMScaling(0.5)), None, x0, {},
           sigmas=torch.tensor([1.0]), noise=torch.full_like(x0, -0.4))
    # D = c_skip * x_t = 0.2 * -0.1 = -0.02; |D - x0| = 0.32; w = 5
    assert abs(l.item() - 5 * 0.32) < 1e-6


def test_add_noise_is_the_forward_process():
    "x_t = x_0 + σ·ε with σ [B] broadcast over the data dims; float64 σ widens the result."
    from diffexplore.loss import add_noise
    x0, eps = torch.ones(2, 3, 4, 4), torch.full((2, 3, 4, 4), 2.0)
    xt = add_noise(x0, eps, torch.tensor([0.5, 3.0]))
    assert torch.equal(xt[0], torch.full((3, 4, 4), 2.0)) and torch.equal(xt[1], torch.full((3, 4, 4), 7.0))
    assert add_noise(x0, eps, torch.tensor([1.0, 1.0], dtype=torch.float64)).dtype == torch.float64
