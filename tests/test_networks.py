"Tests of diffexplore.networks: OpenAIWrapper routing of concat/vector/crossattn, presets, errors."
import pytest
import torch

from diffexplore.core import instantiate_from_config
from diffexplore.networks import (OpenAIWrapper, IdentityWrapper, UNET_PRESETS, build_unet, count_params,
                                  time_embed_dim, unet_config)

B, H = 2, 8


@pytest.fixture
def xt():
    torch.manual_seed(0)
    return torch.randn(B, 1, H, H), torch.tensor([-0.7, 0.4])


def tiny(**kw):
    torch.manual_seed(0)
    return OpenAIWrapper(build_unet("tiny", sample_size=H, **{"in_channels": 1, **kw}))


def test_output_shape_equals_input_shape(xt):
    x, t = xt
    assert tiny()(x, t, {}).shape == x.shape


def test_scalar_t_is_broadcast(xt):
    x, _ = xt
    net = tiny()
    torch.testing.assert_close(net(x, torch.tensor(0.3), {}), net(x, torch.tensor([0.3, 0.3]), {}))


def test_t_changes_output(xt):
    x, t = xt
    net = tiny()
    assert not torch.allclose(net(x, t, {}), net(x, t + 1.0, {}))


def test_concat_path(xt):
    x, t = xt
    net = tiny(in_channels=2, out_channels=1)
    lo, lo2 = torch.randn(B, 1, H, H), torch.randn(B, 1, H, H)
    out = net(x, t, {"concat": lo})
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, t, {"concat": lo2}))
    # the wrapper feeds exactly cat(x, concat) to the U-Net
    direct = net.diffusion_model(torch.cat([x, lo], 1), t).sample
    torch.testing.assert_close(out, direct)


def test_vector_path_changes_output(xt):
    x, t = xt
    D = time_embed_dim("tiny")
    net = tiny(class_embed_dim=D)
    v1, v2 = torch.randn(B, D), torch.randn(B, D)
    o1, o2 = net(x, t, {"vector": v1}), net(x, t, {"vector": v2})
    assert o1.shape == x.shape
    assert (o1 - o2).abs().max() > 1e-4
    torch.testing.assert_close(o1, net.diffusion_model(x, t, class_labels=v1).sample)  # vector -> class_labels


def test_vector_per_sample(xt):
    "changing the vector of sample 1 only changes sample 1's output"
    x, t = xt
    D = time_embed_dim("tiny")
    net = tiny(class_embed_dim=D).eval()
    v = torch.randn(B, D)
    v2 = v.clone(); v2[1] += 1.0
    o1, o2 = net(x, t, {"vector": v}), net(x, t, {"vector": v2})
    torch.testing.assert_close(o1[0], o2[0])
    assert not torch.allclose(o1[1], o2[1])


def test_crossattn_path(xt):
    x, t = xt
    net = tiny(cross_attention_dim=12)
    ctx = torch.randn(B, 5, 12)
    out = net(x, t, {"crossattn": ctx})
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, t, {"crossattn": torch.randn(B, 5, 12)}))
    torch.testing.assert_close(out, net.diffusion_model(x, t, encoder_hidden_states=ctx).sample)


def test_crossattn_with_vector_of_any_size(xt):
    x, t = xt
    net = tiny(cross_attention_dim=12, class_embed_dim=7)
    ctx = torch.randn(B, 3, 12)
    o1 = net(x, t, {"crossattn": ctx, "vector": torch.randn(B, 7)})
    o2 = net(x, t, {"crossattn": ctx, "vector": torch.randn(B, 7)})
    assert not torch.allclose(o1, o2)


def test_all_three_paths_together(xt):
    x, t = xt
    net = tiny(in_channels=2, out_channels=1, cross_attention_dim=12, class_embed_dim=5)
    out = net(x, t, {"concat": torch.randn(B, 1, H, H), "crossattn": torch.randn(B, 4, 12), "vector": torch.randn(B, 5)})
    assert out.shape == x.shape


def test_channel_mismatch_names_both_numbers(xt):
    x, t = xt
    net = tiny(in_channels=3)
    with pytest.raises(ValueError, match=r"= 1, but the network's in_channels=3"):
        net(x, t, {})
    net1 = tiny()
    with pytest.raises(ValueError, match=r"x has 1 channels \+ c\['concat'\] 2 = 3, but the network's in_channels=1"):
        net1(x, t, {"concat": torch.randn(B, 2, H, H)})


def test_concat_spatial_mismatch(xt):
    x, t = xt
    with pytest.raises(ValueError, match="c\\['concat'\\] of shape \\(2, 1, 4, 4\\)"):
        tiny(in_channels=2)(x, t, {"concat": torch.randn(B, 1, 4, 4)})


def test_condition_errors(xt):
    x, t = xt
    D = time_embed_dim("tiny")
    with pytest.raises(ValueError, match="has no class embedding"):
        tiny()(x, t, {"vector": torch.randn(B, D)})
    with pytest.raises(ValueError, match="c\\['vector'\\] is required"):
        tiny(class_embed_dim=D)(x, t, {})
    with pytest.raises(ValueError, match=f"size 3 but the network's time_embed_dim={D}"):
        tiny(class_embed_dim=D)(x, t, {"vector": torch.randn(B, 3)})
    with pytest.raises(ValueError, match="no cross-attention"):
        tiny()(x, t, {"crossattn": torch.randn(B, 2, 8)})
    with pytest.raises(ValueError, match="needs c\\['crossattn'\\]"):
        tiny(cross_attention_dim=8)(x, t, {})
    with pytest.raises(ValueError, match="cross_attention_dim=8"):
        tiny(cross_attention_dim=8)(x, t, {"crossattn": torch.randn(B, 2, 9)})
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        tiny()(x, torch.zeros(3), {})


def test_config_errors():
    with pytest.raises(ValueError, match="preset='nope'"):
        unet_config("nope")
    with pytest.raises(ValueError, match="class_embed_dim=10 must equal time_embed_dim=64"):
        unet_config("tiny", class_embed_dim=10)
    with pytest.raises(ValueError, match="sample_size=12"):
        unet_config("ddpm-cifar10", sample_size=12)  # 4 levels need a multiple of 8


def test_ddpm_cifar10_param_count():
    n = count_params(build_unet("ddpm-cifar10", in_channels=3, sample_size=32))
    assert abs(n / 35.7e6 - 1) < 0.02, n


def test_presets_build_and_run_on_meta():
    for name in UNET_PRESETS:
        size = 8 if name in ("tiny", "digits") else 32
        m = build_unet(name, in_channels=3, sample_size=size, device="meta")
        assert count_params(m) > 0
        assert tuple(m.config.block_out_channels) == UNET_PRESETS[name]["block_out_channels"]


def test_digits_preset_fits_8x8():
    torch.manual_seed(0)
    net = OpenAIWrapper(build_unet("digits", in_channels=1, sample_size=8, class_embed_dim=time_embed_dim("digits")))
    out = net(torch.randn(2, 1, 8, 8), torch.zeros(2), {"vector": torch.randn(2, time_embed_dim("digits"))})
    assert out.shape == (2, 1, 8, 8)


def test_gradient_flows(xt):
    x, t = xt
    D = time_embed_dim("tiny")
    net = tiny(in_channels=2, out_channels=1, class_embed_dim=D)
    v = torch.randn(B, D, requires_grad=True)
    lo = torch.randn(B, 1, H, H, requires_grad=True)
    x = x.clone().requires_grad_(True)
    net(x, t, {"vector": v, "concat": lo}).pow(2).mean().backward()
    for name, g in [("x", x.grad), ("vector", v.grad), ("concat", lo.grad)]:
        assert g is not None and g.abs().sum() > 0, name
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_generic_module_gets_x_t_c(xt):
    x, t = xt
    seen = {}

    class Net(torch.nn.Module):
        def forward(self, x, t, c, **kw):
            seen.update(x=x, t=t, c=c, kw=kw)
            return x[:, :1]
    c = {"concat": torch.ones(B, 1, H, H), "vector": torch.randn(B, 4)}
    out = OpenAIWrapper(Net())(x, t, c, extra=1)
    assert seen["x"].shape == (B, 2, H, H) and torch.equal(seen["x"][:, 1], c["concat"][:, 0])
    assert seen["c"] is c and seen["t"] is t and seen["kw"] == {"extra": 1}
    torch.testing.assert_close(out, x)


def test_sgm_target_resolves_to_ours(xt):
    x, t = xt
    w = instantiate_from_config({"target": "sgm.modules.diffusionmodules.wrappers.OpenAIWrapper",
                                 "params": {"diffusion_model": {"target": "diffexplore.networks.build_unet",
                                                                "params": {"preset": "tiny", "in_channels": 1, "sample_size": H}},
                                            "compile_model": False}})
    assert type(w) is OpenAIWrapper
    assert w(x, t, {}).shape == x.shape
    assert "0x" not in repr(w) and "UNet2DModel(in_channels=1" in repr(w)


def test_identity_wrapper_passes_through():
    m = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    torch.testing.assert_close(IdentityWrapper(m)(x), m(x))


def test_sgm_unetmodel_config_builds_a_diffusers_unet(xt):
    "the network_config of sgm's configs/example_training/toy/cifar10_cond.yaml"
    torch.manual_seed(0)
    net = instantiate_from_config({"target": "sgm.modules.diffusionmodules.openaimodel.UNetModel",
                                   "params": {"in_channels": 3, "out_channels": 3, "model_channels": 32,
                                              "attention_resolutions": [], "num_res_blocks": 4, "channel_mult": [1, 2, 2],
                                              "num_head_channels": 32, "num_classes": "sequential", "adm_in_channels": 128}})
    assert type(net).__name__ == "UNet2DModel"
    assert tuple(net.config.block_out_channels) == (32, 64, 64) and net.config.layers_per_block == 4
    w = OpenAIWrapper(net)
    assert w.time_embed_dim == 128
    x = torch.randn(2, 3, 8, 8)
    v = torch.randn(2, 128)
    assert not torch.allclose(w(x, xt[1], {"vector": v}), w(x, xt[1], {"vector": -v}))


def test_sgm_unetmodel_mapping_and_errors():
    from diffexplore.networks import UNetModel
    m = UNetModel(1, 32, 1, 1, attention_resolutions=[2], channel_mult=[1, 2], use_scale_shift_norm=True, use_checkpoint=True)
    assert m.config.down_block_types == ("DownBlock2D", "AttnDownBlock2D")  # ds=2 is level 1
    assert m.config.resnet_time_scale_shift == "scale_shift"
    xa = UNetModel(1, 32, 1, 1, [1], channel_mult=[1, 2], context_dim=16, num_head_channels=16,
                   num_classes="sequential", adm_in_channels=5)
    assert type(xa).__name__ == "UNet2DConditionModel" and xa.config.cross_attention_dim == 16
    assert xa.config.projection_class_embeddings_input_dim == 5
    with pytest.raises(TypeError, match="bogus"):
        UNetModel(1, 32, 1, 1, bogus=True)
    with pytest.raises(ValueError, match="num_classes=10"):
        UNetModel(1, 32, 1, 1, num_classes=10)
    with pytest.raises(ValueError, match="adm_in_channels"):
        UNetModel(1, 32, 1, 1, num_classes="sequential")
    with pytest.raises(ValueError, match="class_embed_dim=100 must equal time_embed_dim=128"):
        UNetModel(1, 32, 1, 1, num_classes="sequential", adm_in_channels=100)
