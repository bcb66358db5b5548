"Tests of diffexplore.conditioning, including lucidrains/DALLE2-pytorch #144 (CFG dropout must act on every conditioning)."
import math

import pytest
import torch
from omegaconf import OmegaConf

from diffexplore.core import seed_everything
from diffexplore.conditioning import (AbstractEmbModel, CharEmbedder, ClassEmbedder, ConcatEmbedder,
                                      GeneralConditioner, IdentityEmbedder, IdentityEncoder)

N_STAT, RATE = 100_000, 0.1


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def dropped_rows(t):
    "True for samples whose embedding is exactly zero."
    return (t.reshape(t.shape[0], -1) == 0).all(1)


@pytest.fixture
def batch():
    return {"cls": torch.tensor([0, 3, 7, 9]), "txt": ["a cat", "a dog", "", "two birds"],
            "img_emb": torch.randn(4, 6), "lowres": torch.randn(4, 1, 4, 4)}


# ---------------------------------------------------------------- CFG dropout: rate 1, rate 0, legacy value
def test_cfg_dropout_rate_one_zeroes_every_output_of_every_embedder(batch):
    torch.manual_seed(0)
    cond = GeneralConditioner([CharEmbedder(5, max_length=8, return_pooled=True, input_key="txt", ucg_rate=1.0),
                               ClassEmbedder(3, input_key="cls", ucg_rate=1.0),
                               IdentityEncoder(input_key="img_emb", ucg_rate=1.0),
                               ConcatEmbedder(8, input_key="lowres", ucg_rate=1.0)])
    c = cond(batch)
    assert set(c) == {"vector", "crossattn", "concat"}
    assert c["vector"].shape == (4, 5 + 3 + 6) and c["crossattn"].shape == (4, 8, 5) and c["concat"].shape == (4, 1, 8, 8)
    for key, t in c.items():
        assert torch.equal(t, torch.zeros_like(t)), key


def test_cfg_dropout_legacy_value_is_encoded_not_zeroed(batch):
    torch.manual_seed(0)
    txt = CharEmbedder(5, max_length=8, return_pooled=True)
    cond = GeneralConditioner([{"target": "diffexplore.conditioning.CharEmbedder",
                                "params": {"embed_dim": 5, "max_length": 8, "return_pooled": True},
                                "input_key": "txt", "ucg_rate": 1.0, "legacy_ucg_value": ""}])
    cond.embedders[0].load_state_dict(txt.state_dict())
    captions = list(batch["txt"])
    c = cond(batch)
    z_empty, pooled_empty = txt([""] * 4)
    torch.testing.assert_close(c["crossattn"], z_empty, rtol=0, atol=0)
    torch.testing.assert_close(c["vector"], pooled_empty, rtol=0, atol=0)
    assert c["crossattn"].abs().sum() > 0  # the embedding of "", not zeros
    assert batch["txt"] == captions  # the caller's batch is not modified (sgm writes into it)


def test_cfg_dropout_legacy_value_for_tensor_inputs(batch):
    "legacy_ucg_value also replaces tensor inputs before encoding (here: class 0 as 'no class')"
    torch.manual_seed(0)
    emb = ClassEmbedder(3, input_key="cls", ucg_rate=1.0, legacy_ucg_value=0)
    c = GeneralConditioner([emb])(batch)
    torch.testing.assert_close(c["vector"], emb.embedding.weight[[0, 0, 0, 0]], rtol=0, atol=0)


def test_cfg_dropout_rate_zero_is_bit_identical_and_draws_nothing(batch):
    torch.manual_seed(0)
    emb = ClassEmbedder(3, input_key="cls", ucg_rate=0.0)
    txt = CharEmbedder(4, input_key="txt", ucg_rate=0.0)
    cond = GeneralConditioner([emb, txt])
    state = torch.get_rng_state()
    c = cond(batch)
    assert torch.equal(torch.get_rng_state(), state)  # no random draws for rate 0
    assert torch.equal(c["vector"], emb(batch["cls"]))
    assert torch.equal(c["crossattn"], txt(batch["txt"]))


# ---------------------------------------------------------------- CFG dropout: sampling pairs
def test_cfg_dropout_uncond_pairs_have_no_dropout_and_restore_rates():
    torch.manual_seed(0)
    cond = GeneralConditioner([ClassEmbedder(3, input_key="cls", ucg_rate=0.1, is_trainable=True),
                               CharEmbedder(4, input_key="txt", ucg_rate=0.1)]).train()
    b = {"cls": torch.randint(0, 10, (512,)), "txt": ["x"] * 512}
    c1, uc1 = cond.get_unconditional_conditioning(b, force_uc_zero_embeddings=["cls", "txt"])
    c2, _ = cond.get_unconditional_conditioning(b, force_uc_zero_embeddings=["cls", "txt"])
    assert torch.equal(c1["vector"], c2["vector"]) and torch.equal(c1["crossattn"], c2["crossattn"])
    assert not dropped_rows(c1["vector"]).any()  # at rate 0.1 on 512 samples dropout would show
    assert torch.equal(uc1["vector"], torch.zeros_like(uc1["vector"]))
    assert torch.equal(uc1["crossattn"], torch.zeros_like(uc1["crossattn"]))
    assert [e.ucg_rate for e in cond.embedders] == [0.1, 0.1]
    assert dropped_rows(cond(b)["vector"]).any()  # and training dropout is active again


def test_cfg_dropout_rates_restored_on_exception():
    cond = GeneralConditioner([ClassEmbedder(3, input_key="cls", ucg_rate=0.1)])
    with pytest.raises(ValueError, match="class label 12 out of range for n_classes=10"):
        cond.get_unconditional_conditioning({"cls": torch.tensor([12])})
    assert cond.embedders[0].ucg_rate == 0.1


def test_uncond_with_batch_uc_and_force_cond_zero(batch):
    torch.manual_seed(0)
    txt = CharEmbedder(4, input_key="txt", ucg_rate=0.1)
    cond = GeneralConditioner([txt, ClassEmbedder(3, input_key="cls")])
    c, uc = cond.get_unconditional_conditioning(batch, {**batch, "txt": [""] * 4}, force_cond_zero_embeddings=["cls"])
    assert torch.equal(uc["crossattn"], txt([""] * 4))
    assert torch.equal(c["vector"], torch.zeros(4, 3))
    assert torch.equal(c["crossattn"], txt(batch["txt"]))


# ---------------------------------------------------------------- CFG dropout: statistics
def stat_conditioner(ucg_joint=False, rate=RATE):
    torch.manual_seed(0)
    return GeneralConditioner([ClassEmbedder(2, input_key="a", ucg_rate=rate),
                               ClassEmbedder(2, input_key="b", ucg_rate=rate)], ucg_joint=ucg_joint)


def stat_drops(cond, seed=0):
    labels = torch.randint(0, 10, (N_STAT,), generator=gen(seed + 1))
    v = cond({"a": labels, "b": labels}, generator=gen(seed))["vector"]
    return dropped_rows(v[:, :2]), dropped_rows(v[:, 2:])


def within_3se(frac, p, n=N_STAT):
    return abs(frac - p) <= 3 * math.sqrt(p * (1 - p) / n)


def test_cfg_dropout_dropped_fraction_per_embedder():
    da, db = stat_drops(stat_conditioner())
    for d in (da, db):
        f = d.float().mean().item()
        assert abs(f - 0.1) <= 0.0028, f  # 3 standard errors at 1e5 samples


def test_cfg_dropout_two_embedders_are_dropped_independently():
    da, db = stat_drops(stat_conditioner())
    both, any_ = (da & db).float().mean().item(), (da | db).float().mean().item()
    assert within_3se(both, 0.010000), both
    assert within_3se(any_, 0.19000), any_


def test_cfg_dropout_joint_drop_gives_fully_unconditional_at_rate():
    da, db = stat_drops(stat_conditioner(ucg_joint=True))
    assert torch.equal(da, db)
    assert within_3se(da.float().mean().item(), 0.1)


def test_ucg_joint_needs_equal_rates():
    with pytest.raises(ValueError, match="ucg_joint=True needs equal"):
        GeneralConditioner([ClassEmbedder(2, input_key="a", ucg_rate=0.1),
                            ClassEmbedder(2, input_key="b", ucg_rate=0.2)], ucg_joint=True)
    cond = GeneralConditioner([ClassEmbedder(2, input_key="a", ucg_rate=0.1),
                               ClassEmbedder(2, input_key="b", ucg_rate=0.0)], ucg_joint=True)
    lab = torch.randint(0, 10, (2000,))
    v = cond({"a": lab, "b": lab}, generator=gen())["vector"]
    assert dropped_rows(v[:, :2]).any() and not dropped_rows(v[:, 2:]).any()  # rate 0 stays untouched


def test_every_embedder_type_is_dropped(batch):
    "the DALLE2 fault: a tensor (image-embedding) conditioning must be dropped like the others"
    torch.manual_seed(0)
    n = 4000
    b = {"cls": torch.randint(0, 10, (n,)), "img_emb": torch.randn(n, 6) + 3, "lowres": torch.randn(n, 1, 4, 4) + 3,
         "txt": ["abc"] * n}
    cond = GeneralConditioner([ClassEmbedder(3, input_key="cls", ucg_rate=0.5), IdentityEncoder(input_key="img_emb", ucg_rate=0.5),
                               ConcatEmbedder(input_key="lowres", ucg_rate=0.5), CharEmbedder(2, input_key="txt", ucg_rate=0.5)])
    c = cond(b, generator=gen())
    parts = [dropped_rows(c["vector"][:, :3]), dropped_rows(c["vector"][:, 3:]), dropped_rows(c["concat"]), dropped_rows(c["crossattn"])]
    for i, d in enumerate(parts):
        assert within_3se(d.float().mean().item(), 0.5, n), i
    # dropped per sample: rows not dropped are untouched
    keep = ~parts[1]
    assert torch.equal(c["vector"][keep, 3:], b["img_emb"][keep])


def test_dropout_deterministic_under_seed():
    cond = stat_conditioner()
    lab = torch.randint(0, 10, (1000,))
    seed_everything(3, verbose=False); v1 = cond({"a": lab, "b": lab})["vector"]
    seed_everything(3, verbose=False); v2 = cond({"a": lab, "b": lab})["vector"]
    assert torch.equal(v1, v2)
    v3 = cond({"a": lab, "b": lab}, generator=gen(5))["vector"]
    assert torch.equal(v3, cond({"a": lab, "b": lab}, generator=gen(5))["vector"])
    assert not torch.equal(v1, v3)


def test_no_dropout_in_eval_mode(batch):
    cond = GeneralConditioner([ClassEmbedder(3, input_key="cls", ucg_rate=1.0)]).eval()
    assert not dropped_rows(cond(batch)["vector"]).any()
    assert dropped_rows(cond.train()(batch)["vector"]).all()


def test_learned_null_class(batch):
    torch.manual_seed(0)
    emb = ClassEmbedder(3, input_key="cls", ucg_rate=1.0, is_trainable=True, learned_null=True)
    cond = GeneralConditioner([emb])
    c = cond(batch)
    null = emb.embedding.weight[10]
    assert torch.equal(c["vector"], null.expand(4, 3))  # the null row, not zeros
    assert null.abs().sum() > 0
    c["vector"].sum().backward()
    assert emb.embedding.weight.grad[10].abs().sum() > 0  # the null class is learned
    assert emb.embedding.weight.grad[:10].abs().sum() == 0
    _, uc = cond.get_unconditional_conditioning(batch, force_uc_zero_embeddings=["cls"])
    assert torch.equal(uc["vector"], null.expand(4, 3).detach())
    assert torch.equal(emb(torch.tensor([10])), null[None])  # label n_classes is the null class


# ---------------------------------------------------------------- routing, building, errors
def test_routing_and_concatenation_dims():
    torch.manual_seed(0)
    cond = GeneralConditioner([ClassEmbedder(3, input_key="a"), ClassEmbedder(2, input_key="b"),
                               ClassEmbedder(4, input_key="a", add_sequence_dim=True), ClassEmbedder(5, input_key="b", add_sequence_dim=True),
                               ConcatEmbedder(input_key="x"), ConcatEmbedder(input_key="y")])
    b = {"a": torch.tensor([1, 2]), "b": torch.tensor([3, 4]), "x": torch.randn(2, 1, 4, 4), "y": torch.randn(2, 2, 4, 4)}
    c = cond(b)
    assert c["vector"].shape == (2, 5)          # dim 1
    assert c["crossattn"].shape == (2, 1, 9)    # dim 2
    assert c["concat"].shape == (2, 3, 4, 4)    # dim 1
    assert torch.equal(c["concat"][:, 1:], b["y"])


def test_bad_output_rank():
    class Flat(AbstractEmbModel):
        def forward(self, x): return x.flatten()
    with pytest.raises(ValueError, match="returned shape \\(8,\\)"):
        GeneralConditioner([Flat(input_key="x")])({"x": torch.randn(2, 4)})


def test_build_from_sgm_dicts_and_omegaconf():
    cfg = OmegaConf.create([
        {"is_trainable": True, "input_key": "cls", "ucg_rate": 0.2,
         "target": "sgm.modules.encoders.modules.ClassEmbedder", "params": {"embed_dim": 16, "n_classes": 10}},
        {"input_key": "lowres", "target": "diffexplore.conditioning.ConcatEmbedder"}])
    cond = GeneralConditioner(cfg)
    a, b = cond.embedders
    assert (type(a).__name__, a.input_key, a.ucg_rate, a.is_trainable, a.embed_dim) == ("ClassEmbedder", "cls", 0.2, True, 16)
    assert (b.input_key, b.ucg_rate, b.is_trainable, b.legacy_ucg_value) == ("lowres", 0.0, False, None)  # sgm defaults
    assert a.embedding.weight.requires_grad
    mixed = GeneralConditioner([ClassEmbedder(4, input_key="c"), {"input_key": "x", "target": "diffexplore.conditioning.IdentityEncoder"}])
    assert len(mixed.embedders) == 2
    assert IdentityEmbedder is IdentityEncoder


def test_build_errors():
    with pytest.raises(ValueError, match="input_key"):
        GeneralConditioner([{"target": "diffexplore.conditioning.ClassEmbedder", "params": {"embed_dim": 2}}])
    with pytest.raises(ValueError, match="input_key"):
        GeneralConditioner([ClassEmbedder(2)])
    with pytest.raises(TypeError, match="AbstractEmbModel; got Linear"):
        GeneralConditioner([{"target": "torch.nn.Linear", "params": {"in_features": 2, "out_features": 2}, "input_key": "x"}])
    with pytest.raises(ValueError, match="ucg_rate=2"):
        GeneralConditioner([{"target": "diffexplore.conditioning.ClassEmbedder", "params": {"embed_dim": 2}, "input_key": "c", "ucg_rate": 2}])


def test_class_embedder_errors():
    emb = ClassEmbedder(4, n_classes=10)
    with pytest.raises(ValueError, match="class label 10 out of range for n_classes=10"):
        emb(torch.tensor([1, 10]))
    with pytest.raises(ValueError, match="class label -3"):
        emb(torch.tensor([-3]))
    with pytest.raises(ValueError, match="class label 11 out of range for n_classes=10"):
        ClassEmbedder(4, learned_null=True)(torch.tensor([11]))
    with pytest.raises(TypeError, match="dtype=torch.float32"):
        emb(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="shape \\[B\\]"):
        emb(torch.tensor([[1]]))
    with pytest.raises(ValueError, match="ucg_rate=-0.5"):
        emb.ucg_rate = -0.5


def test_frozen_embedders_get_no_grad_and_stay_eval():
    torch.manual_seed(0)
    frozen, trained = ClassEmbedder(3, input_key="a"), ClassEmbedder(3, input_key="b", is_trainable=True)
    cond = GeneralConditioner([frozen, trained]).train()
    assert not frozen.training and trained.training
    v = cond({"a": torch.tensor([1]), "b": torch.tensor([2])})["vector"]
    v.sum().backward()
    assert frozen.embedding.weight.grad is None and not frozen.embedding.weight.requires_grad
    assert trained.embedding.weight.grad[2].abs().sum() > 0


def test_reprs_are_readable():
    cond = GeneralConditioner([ClassEmbedder(4, input_key="cls", ucg_rate=0.1)], ucg_joint=True)
    r = repr(cond)
    assert "0x" not in r
    assert "ClassEmbedder(\n      embed_dim=4, n_classes=10" in r and "ucg_rate=0.1" in r and "ucg_joint=True" in r


def test_missing_batch_key_is_named(batch):
    cond = GeneralConditioner([ClassEmbedder(3, input_key="label")])
    with pytest.raises(ValueError, match="input_key='label'"):
        cond(batch)
    cond.eval()
    with pytest.raises(ValueError, match="input_key='label'"):
        cond(batch)
