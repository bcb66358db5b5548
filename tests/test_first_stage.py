"Tests of diffexplore.first_stage, including huggingface/diffusers #6923 and #6753 (VAE scale_factor 0.18215 vs 0.13025)."
import warnings

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from diffexplore.core import instantiate_from_config
from diffexplore.first_stage import (SD_SCALE_FACTOR, SDXL_SCALE_FACTOR, AutoencoderKLFirstStage,
                                     AutoencoderTinyFirstStage, IdentityFirstStage, check_scale_factor,
                                     estimate_scale_factor, scale_latents, unscale_latents)


def tiny_kl(scaling_factor=SD_SCALE_FACTOR, **kw):
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                         sample_size=16, scaling_factor=scaling_factor, **kw)


def tiny_taesd():
    torch.manual_seed(0)
    return AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 16, 16, generator=g) * 2 - 1


@pytest.fixture
def saved_kl(tmp_path):
    vae = tiny_kl(scaling_factor=SDXL_SCALE_FACTOR)
    vae.save_pretrained(tmp_path / "vae")
    return vae, tmp_path


def spy_decoder(stage):
    "Record what the VAE decoder receives."
    seen = []
    orig = stage.vae.decode

    def decode(z, *a, **kw):
        seen.append(z.detach().clone())
        return orig(z, *a, **kw)
    stage.vae.decode = decode
    return seen


def exact_std(t, std):
    return (t - t.mean()) / t.std() * std


# ---------------------------------------------------------------- scale_factor: huggingface/diffusers #6923, #6753
def test_scale_factor_encode_multiplies_decode_divides_same_factor():
    raw = torch.tensor([7.6775])
    torch.testing.assert_close(scale_latents(raw, SDXL_SCALE_FACTOR), torch.tensor([1.0000]), atol=1e-4, rtol=0)
    torch.testing.assert_close(unscale_latents(torch.tensor([1.0]), SDXL_SCALE_FACTOR), raw, atol=1e-3, rtol=0)


def test_scale_factor_decoding_one_passes_raw_latent_to_decoder():
    stage = AutoencoderKLFirstStage(tiny_kl(), scale_factor=SDXL_SCALE_FACTOR)
    seen = spy_decoder(stage)
    stage.decode(torch.ones(1, 4, 2, 2))
    torch.testing.assert_close(seen[0], torch.full((1, 4, 2, 2), 7.6775), atol=1e-3, rtol=0)


def test_scale_factor_mismatch_ratios():
    raw = torch.tensor(7.6775)
    torch.testing.assert_close(unscale_latents(scale_latents(raw, SDXL_SCALE_FACTOR), SD_SCALE_FACTOR) / raw,
                               torch.tensor(0.71507), atol=1e-5, rtol=0)
    torch.testing.assert_close(unscale_latents(scale_latents(raw, SD_SCALE_FACTOR), SDXL_SCALE_FACTOR) / raw,
                               torch.tensor(1.3985), atol=1e-4, rtol=0)


def test_scale_factor_mismatch_between_two_stages_reaches_the_decoder(images):
    "encode with 0.13025, decode with 0.18215: the decoder receives 0.71507 x the raw latent"
    vae = tiny_kl()
    enc, dec = AutoencoderKLFirstStage(vae, SDXL_SCALE_FACTOR), AutoencoderKLFirstStage(vae, SD_SCALE_FACTOR)
    raw = vae.encode(images).latent_dist.mode().detach()
    seen = spy_decoder(dec)
    dec.decode(enc.encode(images))
    torch.testing.assert_close(seen[0] / raw, torch.full_like(raw, 0.71507), atol=1e-5, rtol=1e-5)
    # the same stage always decodes with its own factor: the decoder gets the raw latent back
    seen_ok = spy_decoder(enc)
    enc.decode(enc.encode(images))
    torch.testing.assert_close(seen_ok[0], raw, atol=1e-5, rtol=1e-5)


def test_scale_factor_training_latent_std_and_detection():
    g = torch.Generator().manual_seed(0)
    sdxl_raw = exact_std(torch.randn(256, 4, 8, 8, generator=g), 7.6775)  # raw SDXL-VAE latents
    wrong = scale_latents(sdxl_raw, SD_SCALE_FACTOR)
    right = scale_latents(sdxl_raw, SDXL_SCALE_FACTOR)
    assert abs(float(wrong.std()) - 1.3985) < 1e-4
    assert abs(float(right.std()) - 1.0000) < 1e-4
    with pytest.raises(ValueError, match="latent std 1.398"):
        check_scale_factor(wrong, action="raise")
    with pytest.raises(ValueError, match="latent std 0.715"):
        check_scale_factor(right * 0.71507, action="raise")
    with pytest.warns(UserWarning, match="multiply it by 0.715"):
        check_scale_factor(wrong)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert abs(check_scale_factor(right) - 1.0) < 1e-4  # no warning at std 1


def test_scale_factor_loader_reads_the_vaes_own_factor(saved_kl):
    "a loader must not force one fixed factor on every VAE (diffusers #6923, #6753)"
    _, path = saved_kl
    assert AutoencoderKLFirstStage.from_pretrained(path / "vae").scale_factor == SDXL_SCALE_FACTOR
    assert AutoencoderKLFirstStage.from_pretrained(path, subfolder="vae").scale_factor == SDXL_SCALE_FACTOR
    assert AutoencoderKLFirstStage.from_pretrained(path / "vae", scale_factor=0.5).scale_factor == 0.5
    assert AutoencoderKLFirstStage(tiny_kl()).scale_factor == SD_SCALE_FACTOR  # diffusers' AutoencoderKL default


def test_check_scale_factor_args():
    with pytest.raises(ValueError, match="tol=0.9"):
        check_scale_factor(torch.randn(10), tol=0.9)
    with pytest.raises(ValueError, match="action='ignore'"):
        check_scale_factor(torch.randn(10), action="ignore")


# ---------------------------------------------------------------- from_pretrained on a tiny saved VAE
def test_from_pretrained_roundtrip_shapes_and_exact_scaling(saved_kl, images):
    vae, path = saved_kl
    stage = AutoencoderKLFirstStage.from_pretrained(path / "vae", scale_factor=0.4, shift_factor=0.1)
    assert (stage.latent_channels, stage.downsample_factor) == (4, 2)
    z = stage.encode(images)
    assert z.shape == (4, 4, 8, 8) and z.dtype == torch.float32
    with torch.no_grad():
        raw = vae.encode(images).latent_dist.mode()
        manual = (raw - 0.1) * 0.4
        torch.testing.assert_close(z, manual, rtol=0, atol=1e-6)
        x_hat = stage.decode(z)
        torch.testing.assert_close(x_hat, vae.decode(z / 0.4 + 0.1).sample, rtol=0, atol=1e-5)
    assert x_hat.shape == images.shape


def test_from_pretrained_autoencoder_tiny(tmp_path, images):
    vae = tiny_taesd()
    vae.save_pretrained(tmp_path)
    stage = AutoencoderTinyFirstStage.from_pretrained(tmp_path)
    assert (stage.scale_factor, stage.shift_factor) == (1.0, 0.0)
    assert (stage.latent_channels, stage.downsample_factor) == (4, 2)
    z = stage.encode(images)
    with torch.no_grad():
        torch.testing.assert_close(z, vae.encode(images).latents, rtol=0, atol=1e-6)
    assert stage.decode(z).shape == images.shape
    stage2 = AutoencoderTinyFirstStage(vae, scale_factor=2.0)
    torch.testing.assert_close(stage2.encode(images), 2.0 * z, rtol=0, atol=1e-6)


def test_frozen_and_no_grad(images):
    stage = AutoencoderKLFirstStage(tiny_kl())
    assert not any(p.requires_grad for p in stage.parameters())
    assert not stage.train().vae.training
    z = stage.encode(images)
    assert not z.requires_grad
    zz = z.clone().requires_grad_(True)
    stage.decode(zz, grad=True).sum().backward()  # guidance through the decoder: grad to z, not to the VAE
    assert zz.grad is not None and zz.grad.abs().sum() > 0
    assert all(p.grad is None for p in stage.parameters())


def test_sample_mode(images):
    stage = AutoencoderKLFirstStage(tiny_kl(), sample=True)
    torch.manual_seed(0); z1 = stage.encode(images)
    torch.manual_seed(0); z2 = stage.encode(images)
    z3 = stage.encode(images)
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)
    mean = AutoencoderKLFirstStage(tiny_kl()).encode(images)
    assert not torch.equal(z1, mean)


def test_errors(images):
    with pytest.raises(ValueError, match="scale_factor=0"):
        AutoencoderKLFirstStage(tiny_kl(), scale_factor=0)
    with pytest.raises(ValueError, match="scale_factor=-0.18"):
        AutoencoderTinyFirstStage(tiny_taesd(), scale_factor=-0.18)
    with pytest.raises(ValueError, match="scale_factor=0.0"):
        scale_latents(torch.ones(1), 0.0)
    with pytest.raises(TypeError, match="AutoencoderKL; got AutoencoderTiny"):
        AutoencoderKLFirstStage(tiny_taesd())
    with pytest.raises(ValueError, match="images in \\[-1, 1\\]"):
        AutoencoderKLFirstStage(tiny_kl()).encode((images + 1) * 127.5)
    with pytest.raises(TypeError, match="Linear"):
        estimate_scale_factor(torch.nn.Linear(2, 2), images)


def test_estimate_scale_factor_gives_unit_std(images):
    vae = tiny_kl()
    s = estimate_scale_factor(vae, images)
    with torch.no_grad():
        raw = vae.encode(images).latent_dist.mode()
    assert abs(s - 1 / float(raw.std())) < 1e-6
    assert abs(float(AutoencoderKLFirstStage(vae, s).encode(images).std()) - 1.0) < 1e-4
    assert abs(estimate_scale_factor(AutoencoderKLFirstStage(vae, 0.3), images) - s) < 1e-9  # independent of the stage's factor


def test_identity_first_stage(images):
    fs = IdentityFirstStage(3)
    assert fs.encode(images) is images and fs.decode(images) is images
    assert (fs.scale_factor, fs.shift_factor, fs.downsample_factor, fs.latent_channels) == (1.0, 0.0, 1, 3)
    built = instantiate_from_config({"target": "sgm.models.autoencoder.IdentityFirstStage"})
    assert type(built).__name__ == "IdentityFirstStage"


def test_repr_is_readable():
    r = repr(AutoencoderKLFirstStage(tiny_kl(), SDXL_SCALE_FACTOR))
    assert "0x" not in r and r.startswith("AutoencoderKLFirstStage(vae=AutoencoderKL(latent_channels=4, downsample_factor=2")
    assert "scale_factor=0.13025, shift_factor=0.0, sample=False" in r
