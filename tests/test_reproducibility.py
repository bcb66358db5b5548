"""The same seed gives the same samples for every sampler and guider, whatever ran before in the process, and the same
training on the CPU, bit for bit. A sampler's churn or ancestral noise comes from torch's global RNG (as in sgm's
`sgm/modules/diffusionmodules/sampling.py`), so `generate(seed=…)` must seed that too, not only the initial noise."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffexplore.cli import load_config, read_metrics, train
from diffexplore.conditioning import ClassEmbedder, GeneralConditioner
from diffexplore.denoiser import Denoiser
from diffexplore.engine import DiffusionEngine
from diffexplore.loss import StandardDiffusionLoss
from diffexplore.sampling import DPMPP2MSampler, EulerAncestralSampler, EulerEDMSampler, HeunEDMSampler, VanillaCFG
from diffexplore.scalings import EDMScaling
from diffexplore.sigma_sampling import EDMSampling
from diffexplore.weightings import EDMWeighting
from _runs import TINY, NO_FLOOR

CONFIG = Path(__file__).parent.parent / "configs" / "digits.yaml"


class ClassNet(nn.Module):
    "A small MLP F(x, c_noise, cond) on [B, 1, 2, 2] whose output depends on the class vector, so CFG changes the result."
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4 + 1 + 3, 32), nn.SiLU(), nn.Linear(32, 4))
    def forward(self, x, t, c):
        return self.net(torch.cat([x.flatten(1), t[:, None].to(x.dtype), c["vector"]], 1)).view_as(x)


SAMPLERS = {"EulerEDM": lambda g: EulerEDMSampler(num_steps=5, guider=g),
            "EulerEDM churn": lambda g: EulerEDMSampler(num_steps=5, guider=g, s_churn=2.0),
            "HeunEDM": lambda g: HeunEDMSampler(num_steps=5, guider=g),
            "HeunEDM churn": lambda g: HeunEDMSampler(num_steps=5, guider=g, s_churn=2.0),
            "EulerAncestral": lambda g: EulerAncestralSampler(num_steps=5, guider=g),
            "DPM++2M": lambda g: DPMPP2MSampler(num_steps=5, guider=g)}
GUIDERS = {"no CFG": lambda: None, "CFG 2.5": lambda: VanillaCFG(2.5)}


def engine(sampler: str, guider: str) -> DiffusionEngine:
    "The same weights every time (built under seed 0); the sampler and guider by name."
    torch.manual_seed(0)
    cond = GeneralConditioner([ClassEmbedder(3, n_classes=4, input_key="cls", ucg_rate=0.1, learned_null=True, is_trainable=True)])
    return DiffusionEngine(ClassNet(), Denoiser(EDMScaling(0.5)), StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)),
                           conditioner=cond, sampler=SAMPLERS[sampler](GUIDERS[guider]()), sample_shape=(1, 2, 2), use_ema=False)


LABELS = [0, 1, 2, 3]


@pytest.mark.parametrize("guider", list(GUIDERS))
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_same_seed_same_samples_whatever_ran_before(sampler, guider):
    fresh = engine(sampler, guider).generate(4, class_labels=LABELS, seed=3)
    e = engine(sampler, guider)
    torch.rand(17); np.random.rand(3); random.random()               # other random draws ...
    e.generate(4, class_labels=LABELS, seed=11)                       # ... another seeded generate ...
    e.generate(4, class_labels=LABELS)                                # ... and an unseeded one
    state = torch.get_rng_state()
    again = e.generate(4, class_labels=LABELS, seed=3)
    assert torch.equal(again, fresh)
    assert torch.equal(torch.get_rng_state(), state)                  # a seeded generate leaves the process's RNG alone
    assert not torch.equal(e.generate(4, class_labels=LABELS, seed=4), fresh)   # and the seed matters


def test_cfg_changes_the_samples():
    "The guided and unguided samples differ, so the CFG cases above test the guided path."
    a = engine("EulerEDM", "no CFG").generate(4, class_labels=LABELS, seed=3)
    b = engine("EulerEDM", "CFG 2.5").generate(4, class_labels=LABELS, seed=3)
    assert (a - b).abs().max() > 1e-4


def test_ancestral_noise_is_not_the_initial_noise():
    "Seeding the global RNG with the seed of the initial noise must not replay that noise as the first ancestral noise."
    e = engine("EulerAncestral", "no CFG")
    draws, real = [], torch.randn_like
    def spy(x, *a, **kw):
        out = real(x, *a, **kw); draws.append(out); return out
    torch.randn_like = spy
    try: e.generate(4, class_labels=LABELS, seed=3)
    finally: torch.randn_like = real
    initial = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    assert len(draws) == 4                                            # 5 steps, none into σ = 0
    assert all(not torch.equal(d, initial) for d in draws)


def test_log_images_samples_are_seeded_like_generate():
    e = engine("EulerAncestral", "CFG 2.5")
    ref = e.generate(4, class_labels=LABELS, seed=5)
    torch.rand(9)
    out = e.log_images({"jpg": torch.zeros(4, 1, 2, 2), "cls": torch.tensor(LABELS)}, N=4, seed=5)
    assert torch.equal(out["samples"], ref)


# ---------------------------------------------------------------- training on the CPU, bit for bit
RUN = [*TINY, *NO_FLOOR, "data.params.batch_size=256", "trainer.max_steps=4", "lightning.checkpoint_every_n_steps=4",
       "lightning.judge_samples=0", "trainer.log_every_n_steps=1"]


def weights(run) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


ANCESTRAL = ["model.params.sampler_config.target=diffexplore.sampling.EulerAncestralSampler"]


@pytest.mark.parametrize("sampler", [[], ANCESTRAL], ids=["config's sampler", "ancestral sampler"])
def test_same_seed_same_training_bit_for_bit(tmp_path, sampler):
    """Two tiny CLI runs with one seed, in one process, with other random draws between them: identical weights and losses.
    A sample grid in the middle of the run changes nothing, also with a sampler that draws noise at every step."""
    cfg = lambda *o: load_config(CONFIG, [*RUN, *sampler, *o])
    train(cfg("lightning.sample_every_n_steps=2"), tmp_path / "a", judge=False)
    torch.rand(100); np.random.rand(5); random.random(); torch.manual_seed(1234)
    train(cfg("lightning.sample_every_n_steps=2"), tmp_path / "b", judge=False)
    train(cfg("lightning.sample_every_n_steps=0"), tmp_path / "no_samples", judge=False)
    train(cfg("lightning.sample_every_n_steps=0", "seed=1"), tmp_path / "seed1", judge=False)
    a, b, quiet, other = (weights(tmp_path / r) for r in ("a", "b", "no_samples", "seed1"))
    assert set(a) == set(b) and any(k.startswith("model_ema.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k                             # raw and EMA weights, bit for bit
        assert torch.equal(a[k], quiet[k]), k                         # sample grids during training change nothing
    loss_a, loss_b = read_metrics(tmp_path / "a")["train/loss"][1], read_metrics(tmp_path / "b")["train/loss"][1]
    assert len(loss_a) == 4; np.testing.assert_array_equal(loss_a, loss_b)
    assert any(not torch.equal(a[k], other[k]) for k in a if k.startswith("model."))   # another seed trains differently
    assert (tmp_path / "a/samples/step_000002.png").exists() and not (tmp_path / "no_samples/samples/step_000002.png").exists()  # a grid mid-run


def test_an_engines_trajectory_ends_on_generates_sample():
    "`explorers.trajectory` of an engine with an ancestral, guided sampler ends on `generate(seed)`'s sample, bit for bit."
    from diffexplore.explorers import trajectory
    e = engine("EulerAncestral", "CFG 2.5")
    data, labels = torch.randn(8, 1, 2, 2), torch.arange(8) % 4
    path = trajectory(e, e.sampler, data, labels, class_label=2, n=3, seed=7, use_ema=False)
    assert torch.equal(path["final"].clamp(-1, 1), e.generate(3, class_labels=2, seed=7, use_ema=False))
