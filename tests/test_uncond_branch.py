"""The unconditional branch of sampling is the null the model was trained with (huggingface/diffusers #7920,
apple/ml-stable-diffusion PR #357): `DiffusionEngine.conditionings` (used by `generate`, `log_images` and
`diffexplore sample`) must give, for every embedder kind, what the conditioner's ucg dropout gives at ucg_rate 1."""
import pytest
import torch
from torch import nn

import diffexplore.cli as cli
from diffexplore.conditioning import CharEmbedder, ClassEmbedder, ConcatEmbedder, GeneralConditioner, IdentityEncoder
from diffexplore.denoiser import Denoiser
from diffexplore.engine import DiffusionEngine
from diffexplore.loss import StandardDiffusionLoss
from diffexplore.sampling import EulerEDMSampler, VanillaCFG
from diffexplore.scalings import EDMScaling
from diffexplore.sigma_sampling import EDMSampling
from diffexplore.weightings import EDMWeighting


def table(emb):
    "Set an embedding table to row i = 0.1 + 0.01·i (every column)."
    w = emb.embedding.weight
    with torch.no_grad(): w.copy_(0.1 + 0.01 * torch.arange(len(w))[:, None].expand_as(w))
    return emb


class RecordingNet(nn.Module):
    "Network F(x, c_noise, cond) = 0 that keeps every cond it is called with."
    def __init__(self):
        super().__init__()
        self.w, self.conds = nn.Parameter(torch.zeros(())), []
    def forward(self, x, t, c):
        self.conds.append({k: v.clone() for k, v in c.items()})
        return x[:, :1] * self.w


class RecordingSampler:
    "A sampler with sgm's call that keeps (cond, uc) and returns its noise."
    def __init__(self): self.calls = []
    def __call__(self, denoiser, x, cond, uc=None):
        self.calls.append((cond, uc))
        return x


def engine_for(conditioner, sampler=None):
    return DiffusionEngine(RecordingNet(), Denoiser(EDMScaling(0.5)), StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)),
                           conditioner=conditioner, sampler=sampler or RecordingSampler(), sample_shape=(1, 2, 2), use_ema=False)


def forced_dropout(cond, batch):
    "What training's ucg dropout gives with every embedder dropped: ucg_rate 1, training mode."
    rates = [e.ucg_rate for e in cond.embedders]
    try:
        for e in cond.embedders: e.ucg_rate = 1.0
        with torch.no_grad(): return cond.train()(batch)
    finally:
        for e, r in zip(cond.embedders, rates): e.ucg_rate = r


def assert_same(a, b):
    assert set(a) == set(b), (set(a), set(b))
    for k in a: assert torch.equal(a[k], b[k]), (k, a[k], b[k])


# ---------------------------------------------------------------- the case from the bug report, values by hand
def test_bc33_nulls_by_hand():
    "(a) caption with legacy '' → 0.10 (padding row 0); (b) caption, no legacy → 0; (c) learned null → row 3; (d) DiT null label 3."
    torch.manual_seed(0)
    a = table(CharEmbedder(2, max_length=3, input_key="txt", ucg_rate=1.0, legacy_ucg_value=""))
    b = table(CharEmbedder(2, max_length=3, input_key="txt2", ucg_rate=1.0))
    c = table(ClassEmbedder(2, n_classes=3, input_key="cls", ucg_rate=1.0, learned_null=True))
    d = table(ClassEmbedder(2, n_classes=4, input_key="cls", legacy_ucg_value=3))
    batch = {"txt": ["a cat", "dog"], "txt2": ["red", "blue"], "cls": torch.tensor([0, 2])}
    _, uc = engine_for(GeneralConditioner([a, b, c])).conditionings(batch, 2)
    _, uc_d = engine_for(GeneralConditioner([d])).conditionings(batch, 2)
    torch.testing.assert_close(uc["crossattn"][..., :2], torch.full((2, 3, 2), 0.10), rtol=0, atol=1e-7)
    assert torch.equal(uc["crossattn"][..., 2:], torch.zeros(2, 3, 2))
    torch.testing.assert_close(uc["vector"], torch.full((2, 2), 0.13), rtol=0, atol=1e-7)
    torch.testing.assert_close(uc_d["vector"], torch.full((2, 2), 0.13), rtol=0, atol=1e-7)


# ---------------------------------------------------------------- one per embedder kind: uc == forced dropout
KINDS = {
    "class, zeros": lambda: ClassEmbedder(3, n_classes=5, input_key="cls", ucg_rate=0.1),
    "class, learned null": lambda: ClassEmbedder(3, n_classes=5, input_key="cls", ucg_rate=0.1, learned_null=True, is_trainable=True),
    "class, legacy label": lambda: ClassEmbedder(3, n_classes=5, input_key="cls", ucg_rate=0.1, legacy_ucg_value=4),
    "class crossattn, learned null": lambda: ClassEmbedder(3, n_classes=5, input_key="cls", add_sequence_dim=True, learned_null=True),
    "text, zeros": lambda: CharEmbedder(3, max_length=4, input_key="txt", ucg_rate=0.2, return_pooled=True),
    "text, legacy ''": lambda: CharEmbedder(3, max_length=4, input_key="txt", ucg_rate=0.2, return_pooled=True, legacy_ucg_value=""),
    "identity vector, zeros": lambda: IdentityEncoder(input_key="emb", ucg_rate=0.1),
    "identity vector, legacy 0.5": lambda: IdentityEncoder(input_key="emb", ucg_rate=0.1, legacy_ucg_value=0.5),
    "concat, zeros": lambda: ConcatEmbedder(2, input_key="lowres", ucg_rate=0.1),
    "concat, legacy -1": lambda: ConcatEmbedder(2, input_key="lowres", ucg_rate=0.1, legacy_ucg_value=-1.0),
}


def kind_batch():
    g = torch.Generator().manual_seed(1)
    return {"cls": torch.tensor([0, 2, 4]), "txt": ["a cat", "", "dog"], "emb": torch.randn(3, 4, generator=g) + 2,
            "lowres": torch.randn(3, 1, 1, 1, generator=g) + 2}


@pytest.mark.parametrize("kind", list(KINDS))
def test_uc_is_the_training_null_for_every_embedder_kind(kind):
    torch.manual_seed(0)
    emb = KINDS[kind]()
    if hasattr(emb, "embedding"): table(emb)
    cond, batch = GeneralConditioner([emb]), kind_batch()
    c, uc = engine_for(cond).conditionings(batch, 3)
    assert_same(uc, forced_dropout(cond, batch))
    assert_same(c, cond.eval()(batch))
    if emb.legacy_ucg_value is not None or getattr(emb, "learned_null", False):
        assert all(v.abs().sum() > 0 for v in uc.values()), kind   # not zeros: the null the model learned
    else:
        assert all(torch.equal(v, torch.zeros_like(v)) for v in uc.values()), kind
    assert emb.ucg_rate == KINDS[kind]().ucg_rate   # rates restored


def test_uc_for_several_embedders_together():
    torch.manual_seed(0)
    cond = GeneralConditioner([table(fn()) if hasattr(fn(), "embedding") else fn()
                               for fn in (KINDS["class, learned null"], KINDS["text, legacy ''"], KINDS["identity vector, zeros"],
                                          KINDS["concat, legacy -1"])])
    batch = kind_batch()
    assert_same(engine_for(cond).conditionings(batch, 3)[1], forced_dropout(cond, batch))


# ---------------------------------------------------------------- generate, log_images and `diffexplore sample` use it
NULLS = ["class, zeros", "class, learned null", "class, legacy label"]


@pytest.mark.parametrize("kind", NULLS)
def test_generate_passes_the_training_null_to_the_sampler(kind):
    torch.manual_seed(0)
    cond = GeneralConditioner([table(KINDS[kind]())])
    e = engine_for(cond)
    e.generate(3, class_labels=[1, 2, 3], seed=0)
    (c, uc), = e.sampler.calls
    assert_same(uc, forced_dropout(cond, {"cls": torch.tensor([1, 2, 3])}))
    assert_same(c, cond.eval()({"cls": torch.tensor([1, 2, 3])}))


@pytest.mark.parametrize("kind", NULLS)
def test_cfg_network_sees_the_training_null(kind):
    "End to end through VanillaCFG: the unconditional half of every network call holds the training null."
    torch.manual_seed(0)
    cond = GeneralConditioner([table(KINDS[kind]())])
    e = engine_for(cond, EulerEDMSampler(num_steps=3, guider=VanillaCFG(2.0)))
    e.generate(2, class_labels=[1, 3], seed=0)
    null = forced_dropout(cond, {"cls": torch.tensor([1, 3])})["vector"]
    calls = e.model.diffusion_model.conds
    assert len(calls) == 3
    for c in calls:
        uc_half, c_half = c["vector"].chunk(2)     # VanillaCFG: (uc, c) on dim 0
        assert torch.equal(uc_half, null)
        assert torch.equal(c_half, cond.eval()({"cls": torch.tensor([1, 3])})["vector"])


def spy_conditionings(monkeypatch):
    "Record every (batch, c, uc) that DiffusionEngine.conditionings returns."
    seen, real = [], DiffusionEngine.conditionings
    def spy(self, batch, n):
        c, uc = real(self, batch, n)
        seen.append((batch, c, uc)); return c, uc
    monkeypatch.setattr(DiffusionEngine, "conditionings", spy)
    return seen


def test_log_images_goes_through_conditionings(monkeypatch):
    torch.manual_seed(0)
    cond = GeneralConditioner([table(KINDS["class, learned null"]())])
    e, seen = engine_for(cond), spy_conditionings(monkeypatch)
    out = e.log_images({"jpg": torch.zeros(4, 1, 2, 2), "cls": torch.tensor([0, 1, 2, 3])}, N=3)
    assert out["samples"].shape == (3, 1, 2, 2)
    (batch, c, uc), = seen
    assert torch.equal(batch["cls"], torch.tensor([0, 1, 2]))
    assert e.sampler.calls[0][1] is uc                       # the sampler got exactly that uc
    assert_same(uc, forced_dropout(cond, {"cls": torch.tensor([0, 1, 2])}))


def test_cli_sample_goes_through_conditionings(monkeypatch, tmp_path):
    torch.manual_seed(0)
    cond = GeneralConditioner([table(KINDS["class, legacy label"]())])
    e, seen = engine_for(cond), spy_conditionings(monkeypatch)
    monkeypatch.setattr(cli, "load_engine", lambda ckpt, map_location="cpu": e)
    path = cli.sample("unused.ckpt", 4, tmp_path / "grid.png", class_label=2, seed=5)
    assert path.exists()
    (batch, c, uc), = seen
    assert torch.equal(batch["cls"], torch.full((4,), 2))
    assert e.sampler.calls[0][1] is uc
    torch.testing.assert_close(uc["vector"], torch.full((4, 3), 0.14), rtol=0, atol=1e-7)   # row 4, the null label
