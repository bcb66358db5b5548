"""σ_data from the data: `data.estimate_sigma_data` (float64 std after the first stage), `data.implied_sigma_data`,
and the CLI's `sigma_data: auto` (resolved once, saved, reused on resume and by `sample`) and its mismatch warning."""
import contextlib, io, json, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from lightning.pytorch import LightningDataModule
from omegaconf import OmegaConf
from diffexplore import scalings, weightings
from diffexplore.data import (DigitsDataModule, DictDataset, FashionMNISTDataModule, data_moments, estimate_sigma_data,
                              implied_sigma_data)
from diffexplore.first_stage import IdentityFirstStage
from diffexplore.cli import (ConfigError, SigmaDataWarning, build_engine, check_sigma_data, load_config, main,
                             sigma_data_auto_keys)
from _runs import TINY, NO_FLOOR

CONFIG = Path(__file__).parent.parent / "configs" / "digits.yaml"
TINY = [*TINY, *NO_FLOOR]   # the floor evaluations are tested in test_excess_loss.py
SHORT = ["trainer.max_steps=2", "lightning.sample_every_n_steps=0", "lightning.checkpoint_every_n_steps=0",
         "lightning.judge_samples=0", "trainer.enable_progress_bar=false", *TINY]
AUTO_KEYS = ["model.params.denoiser_config.params.scaling_config.params.sigma_data",
             "model.params.loss_fn_config.params.loss_weighting_config.params.sigma_data"]
DIGITS_STD = 0.7521100014517953   # torch.std (float64) of DigitsDataModule().train_images()


class DoublingFirstStage(nn.Module):
    "A fake VAE first stage: encode multiplies by its scale_factor 2 (as a real one applies its own), decode divides."
    scale_factor = 2.0
    def encode(self, x): return x * self.scale_factor
    def decode(self, z): return z / self.scale_factor


class LoaderOnlyDataModule(LightningDataModule):
    "A data module that only has a train_dataloader (not an ImageDataModule): batches {'jpg', 'cls'}."
    def __init__(self, x): super().__init__(); self.x = x
    def train_dataloader(self): return DataLoader(DictDataset(self.x, torch.zeros(len(self.x), dtype=torch.int64)), batch_size=97)


def _run(argv):
    "main(argv) with warnings recorded and stdout/stderr captured: (rc, [SigmaDataWarning messages], stdout)."
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        rc = main(argv)
    assert rc == 0, err.getvalue()[-2000:]
    return rc, [str(w.message) for w in caught if issubclass(w.category, SigmaDataWarning)], out.getvalue()


# --- the estimate -----------------------------------------------------------------------------------------------

def test_synthetic_std_is_recovered_and_equals_torch_std():
    x = 3 * torch.randn(50_000, 1, 4, 4, generator=torch.Generator().manual_seed(0)) + 1
    m = data_moments(x, batch_size=777)   # batches that do not divide N
    assert m["n"] == x.numel()
    assert abs(m["std"] - 3) < 5 * 3 / np.sqrt(2 * x.numel())                     # within 5 standard errors
    assert m["std"] == pytest.approx(float(x.double().std()), rel=1e-12)         # torch.std, divisor n − 1
    assert m["mean"] == pytest.approx(float(x.double().mean()), rel=1e-10, abs=1e-12)
    assert m["rms"] == pytest.approx(float(x.double().pow(2).mean().sqrt()), rel=1e-12)
    assert estimate_sigma_data(x.numpy()) == pytest.approx(m["std"], rel=1e-12)   # numpy arrays too
    assert estimate_sigma_data(x, statistic="rms") == pytest.approx(m["rms"], rel=1e-12)


def test_merging_batches_is_stable_far_from_zero():
    "Values 1e6 + N(0, 1) in 1,000 small batches: the float64 merge keeps the std where E[x²] − E[x]² would lose it."
    x = 1e6 + torch.randn(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert estimate_sigma_data(x, batch_size=100) == pytest.approx(float(x.std()), rel=1e-9)


def test_digits_datamodule_loader_and_tensor_agree():
    dm = DigitsDataModule()
    x = dm.train_images()
    assert estimate_sigma_data(dm) == pytest.approx(float(x.double().std()), rel=1e-12) == pytest.approx(DIGITS_STD, rel=1e-12)
    assert estimate_sigma_data(dm) == pytest.approx(dm.data_std(), rel=1e-12)
    shuffled = DataLoader(DictDataset(x, dm.train_labels()), batch_size=50, shuffle=True)        # any order, dict batches
    assert estimate_sigma_data(shuffled) == pytest.approx(DIGITS_STD, rel=1e-12)
    assert estimate_sigma_data(LoaderOnlyDataModule(x)) == pytest.approx(DIGITS_STD, rel=1e-12)  # a plain LightningDataModule
    assert estimate_sigma_data([(x[:100],), (x[100:],)]) == pytest.approx(DIGITS_STD, rel=1e-12)  # tuples: the first item


def test_first_stage_scale_factor_is_applied_once():
    x = DigitsDataModule().train_images()
    assert estimate_sigma_data(x, first_stage=IdentityFirstStage()) == pytest.approx(DIGITS_STD, rel=1e-12)
    assert estimate_sigma_data(x, first_stage=DoublingFirstStage()) == pytest.approx(2 * DIGITS_STD, rel=1e-12)  # not 4×
    assert estimate_sigma_data(x, scale_factor=2.0) == pytest.approx(2 * DIGITS_STD, rel=1e-12)   # raw latents, no first stage
    with pytest.raises(ValueError, match="scale_factor=2.0 with a first_stage"):
        estimate_sigma_data(x, first_stage=DoublingFirstStage(), scale_factor=2.0)
    with pytest.raises(ValueError, match="scale_factor"): estimate_sigma_data(x, scale_factor=-1.0)


def test_max_batches_caps_the_read():
    x = torch.arange(1000, dtype=torch.float64)[:, None]
    capped = data_moments(x, max_batches=2, batch_size=100)
    assert capped["n"] == 200 and capped["mean"] != pytest.approx(99.5)          # a random subset, not the first 200
    assert data_moments(x, max_batches=2, batch_size=100) == capped               # seeded: the same subset each time
    assert data_moments(x, max_batches=20, batch_size=100)["n"] == 1000           # a cap above the data reads it all
    batches = [x[i:i + 10] for i in range(0, 1000, 10)]
    assert data_moments(batches, max_batches=3)["mean"] == pytest.approx(14.5)    # loaders: their first batches
    with pytest.raises(ValueError, match="max_batches"): data_moments(x, max_batches=0)


def test_bad_data_is_named():
    with pytest.raises(ValueError, match="empty"): estimate_sigma_data(torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match="empty"): estimate_sigma_data([])
    x = torch.zeros(10, 1, 2, 2); x[3, 0, 1, 1] = float("nan"); x[4] = float("inf")
    with pytest.raises(ValueError, match=r"1 NaN and 4 inf values"): estimate_sigma_data(x)
    with pytest.raises(ValueError, match="input_key='jpg'"): estimate_sigma_data([{"image": x}])
    with pytest.raises(ValueError, match="statistic='var'"): estimate_sigma_data(x, statistic="var")


def test_fashion_mnist_full_training_set():
    dm = FashionMNISTDataModule(pad_to_32=True)
    try: dm.setup()
    except FileNotFoundError as e: pytest.skip(str(e))
    m = data_moments(dm)
    assert m["n"] == 60_000 * 32 * 32
    assert (round(m["std"], 4), round(m["mean"], 4), round(m["rms"], 4)) == (0.6636, -0.562, 0.8696)
    assert estimate_sigma_data(dm, max_batches=100) == pytest.approx(m["std"], abs=0.005)   # the CLI's default cap


# --- the σ_data a component assumes -----------------------------------------------------------------------------

def test_implied_sigma_data():
    assert implied_sigma_data(scalings.EDMScaling(0.5)) == 0.5
    assert implied_sigma_data(weightings.EDMWeighting(0.7)) == 0.7
    for unit in (scalings.VScaling(), scalings.VScalingWithEDMcNoise(), scalings.EpsScaling(), weightings.VWeighting()):
        assert implied_sigma_data(unit) == 1.0, unit
    for none in (scalings.ScoreScaling(), weightings.UnitWeighting(), weightings.EpsWeighting(), nn.Linear(1, 1)):
        assert implied_sigma_data(none) is None, none


@pytest.mark.parametrize("name", ["TrigFlowScaling", "ConsistencyBoundaryScaling", "SoftMinSNRWeighting", "CosineSampling"])
def test_implied_sigma_data_of_newer_components(name):
    "Components built on a data std report their `sigma_data` attribute."
    from diffexplore import sigma_sampling
    cls = next(getattr(m, name) for m in (scalings, weightings, sigma_sampling) if hasattr(m, name))
    obj = cls(sigma_data=0.66)
    assert implied_sigma_data(obj) == pytest.approx(0.66)


# --- the CLI: auto, the warning, resume and sample --------------------------------------------------------------

def test_shipped_configs_take_sigma_data_from_the_data():
    for name in ("digits", "fashion_mnist"):
        assert sigma_data_auto_keys(load_config(name)) == AUTO_KEYS, name


def test_warning_threshold_and_unit_variance_scalings():
    "EDM's 0.5 and VScaling's implicit 1 are > 25 % off digits' 0.752 and warn; 0.5 against Fashion-MNIST's 0.664 does not."
    edm05 = build_engine(load_config(CONFIG, [*TINY, *(f"{k}=0.5" for k in AUTO_KEYS)]))
    v = load_config(CONFIG, TINY)
    v.model.params.denoiser_config.params.scaling_config = {"target": "diffexplore.scalings.VScaling"}
    v.model.params.loss_fn_config.params.loss_weighting_config = {"target": "diffexplore.weightings.VWeighting"}
    vpred = build_engine(v)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_sigma_data(edm05, 0.664) == {"denoiser.scaling": 0.5, "loss_fn.loss_weighting": 0.5}
        assert not caught                                                               # 24.7 % off: no warning
        check_sigma_data(vpred, DIGITS_STD)
    assert len(caught) == 1 and caught[0].category is SigmaDataWarning
    msg = str(caught[0].message)
    assert "denoiser.scaling (VScaling, c_in = 1/√(σ²+1) assumes unit-variance data) assumes sigma_data = 1 (+33 %)" in msg, msg
    assert "loss_fn.loss_weighting (VWeighting) assumes sigma_data = 1 (+33 %)" in msg and "the data's is 0.7521" in msg


def test_old_sigma_data_warns_once_per_run(tmp_path):
    _, warned, _ = _run(["train", "--config", str(CONFIG), "--run-dir", str(tmp_path / "old"), *SHORT, *(f"{k}=0.5" for k in AUTO_KEYS)])
    assert len(warned) == 1, warned
    assert "denoiser.scaling (EDMScaling) assumes sigma_data = 0.5 (-34 %)" in warned[0] and "the data's is 0.7521" in warned[0]
    assert "\n" not in warned[0]
    s = json.loads((tmp_path / "old" / "summary.json").read_text())
    assert s["sigma_data"] == 0.7521 and s["sigma_data_components"] == {"denoiser.scaling": 0.5, "loss_fn.loss_weighting": 0.5}


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("auto") / "run"
    _, warned, out = _run(["train", "--config", str(CONFIG), "--run-dir", str(run), *SHORT])
    return run, warned, out


def test_auto_is_resolved_printed_and_saved(auto_run):
    from diffexplore.cli import load_engine
    run, warned, out = auto_run
    assert warned == []                                              # the shipped config does not warn
    assert [l for l in out.splitlines() if l.startswith("sigma_data: auto = 0.7521")] != []
    assert out.count("sigma_data: auto") == 1                       # printed once
    s = json.loads((run / "summary.json").read_text())
    assert s["sigma_data"] == 0.7521 and s["sigma_data_source"].startswith("auto = ")
    assert s["sigma_data_components"] == {"denoiser.scaling": 0.7521, "loss_fn.loss_weighting": 0.7521}
    saved = OmegaConf.load(run / "config.yaml")
    assert [OmegaConf.select(saved, k) for k in AUTO_KEYS] == [0.7521, 0.7521]
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert [OmegaConf.select(OmegaConf.create(ck["diffexplore_config"]), k) for k in AUTO_KEYS] == [0.7521, 0.7521]
    assert load_engine(run / "checkpoints" / "last.ckpt").denoiser.scaling.sigma_data == 0.7521


def test_resume_and_sample_do_not_estimate_again(auto_run, monkeypatch, tmp_path):
    "Resuming with the auto config reuses the checkpoint's value; `sample` never measures."
    from diffexplore import cli
    run, _, _ = auto_run
    ckpt = run / "checkpoints" / "last.ckpt"
    def refuse(*a, **k): raise AssertionError("sample must not estimate sigma_data")
    monkeypatch.setattr(cli, "measure_sigma_data", refuse)
    _run(["sample", "--ckpt", str(ckpt), "--n", "2", "--out", str(tmp_path / "s.png")])
    assert (tmp_path / "s.png").is_file()
    monkeypatch.setattr(cli, "measure_sigma_data", lambda cfg, dm=None: {"value": 0.3, "statistic": "std", "elements": 1, "max_batches": 100})
    _, warned, out = _run(["train", "--config", str(CONFIG), "--resume", str(ckpt), "--run-dir", str(run), *SHORT[1:], "trainer.max_steps=3"])
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 3 and s["sigma_data"] == 0.7521 and "resumed checkpoint" in s["sigma_data_source"]
    assert "sigma_data: auto" not in out
    assert [OmegaConf.select(OmegaConf.load(run / "config.yaml"), k) for k in AUTO_KEYS] == [0.7521, 0.7521]
    assert len(warned) == 1 and "the data's is 0.3" in warned[0]   # a changed data set is still reported


def test_auto_without_an_estimate_is_an_error(tmp_path, capsys):
    assert main(["train", "--config", str(CONFIG), "--run-dir", str(tmp_path / "r"), *SHORT, "lightning.sigma_data_batches=0"]) == 2
    assert "lightning.sigma_data_batches=0" in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="sigma_data_batches=-2"):
        build_engine(load_config(CONFIG, [*TINY, "lightning.sigma_data_batches=-2"]))
