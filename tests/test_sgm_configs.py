"""sgm's own toy configs (Stability-AI/generative-models, configs/example_training/toy/*.yaml, copied unchanged into
configs/sgm_toy/) train here from the CLI with only what this machine lacks overridden: the device, the data root,
the step count and the batch size. Their `lightning:` keys take effect as in sgm's main.py, or are refused by name."""
import json, sys
from pathlib import Path
import pytest
import torch
from omegaconf import OmegaConf
from diffexplore.cli import main, load_config, build_engine, build_data, make_trainer, learning_rate, load_engine, ConfigError, shipped_configs

sys.path.insert(0, str(Path(__file__).parent))
from test_data import write_mnist, write_cifar   # tiny MNIST-format and CIFAR-format files

TOY = Path(__file__).parent.parent / "configs" / "sgm_toy"
SGM_HEAD = "# Stability-AI/generative-models (sgm) configs/example_training/toy/"


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {"mnist": write_mnist(d / "mnist", n_train=8, n_test=4), "cifar10": write_cifar(d / "cifar", per_batch=2)}


def allowed(name, roots, steps=3, batch=2):
    "The overrides this machine needs, and only those: device, data root, step count, batch size."
    root = roots["cifar10" if name.startswith("cifar10") else "mnist"]
    return ["lightning.trainer.accelerator=cpu", "lightning.trainer.devices=1", f"data.params.root={root}",
            f"lightning.trainer.max_steps={steps}", f"data.params.batch_size={batch}"]


def run(name, roots, tmp_path, *extra):
    out = tmp_path / name
    rc = main(["train", "--config", f"sgm_toy/{name}", "--run-dir", str(out), *allowed(name, roots), *extra])
    return rc, out


def test_the_copies_are_sgms_files_unchanged():
    "Each copy is sgm's file below a header that says where it came from (the header lines are comments only)."
    names = sorted(p.stem for p in TOY.glob("*.yaml"))
    assert names == ["cifar10_cond", "mnist", "mnist_cond", "mnist_cond_discrete_eps", "mnist_cond_l1_loss", "mnist_cond_with_ema"]
    for p in TOY.glob("*.yaml"):
        lines = p.read_text().splitlines()
        assert lines[0].startswith(SGM_HEAD + p.name) and "MIT License" in lines[1]
        body = lines[next(i for i, l in enumerate(lines) if not l.startswith("#")):]
        assert body[0] == "model:" and not any(l.startswith("#") for l in body)
        assert f"sgm_toy/{p.stem}" in shipped_configs()


# name, image-logger grids expected after 3 steps (increase_log_steps: True logs steps 1 and 2), channels
TRAINABLE = [("mnist", [], 1), ("mnist_cond", [1, 2], 1), ("mnist_cond_l1_loss", [1, 2], 1),
             ("mnist_cond_with_ema", [1, 2], 1), ("cifar10_cond", [1, 2], 3)]


@pytest.mark.parametrize("name, grid_steps, channels", TRAINABLE, ids=[t[0] for t in TRAINABLE])
def test_toy_config_trains_three_steps(name, grid_steps, channels, roots, tmp_path):
    rc, out = run(name, roots, tmp_path)
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["global_step"] == 3 and s["final_loss"] > 0
    assert s["lr"] == 1e-4 and "model.base_learning_rate" in s["lr_rule"]            # sgm: lr = base_learning_rate without --scale_lr
    # lightning.callbacks.image_logger: grids of inputs and samples at the steps sgm's ImageLogger picks, N = min(batch, N)
    grids = sorted((out / "images" / "train").glob("*.png")) if (out / "images").exists() else []
    assert [p.name for p in grids] == sorted(f"{k}_gs-{s_:06}_e-000000_b-{s_ - 1:06}.png" for k in ("inputs", "samples") for s_ in grid_steps)
    assert not (out / "samples").exists()                                             # the image logger replaces diffexplore's grids
    # lightning.modelcheckpoint every 5000 steps and metrics_over_trainsteps_checkpoint every 25000: none after 3 steps
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]
    engine = load_engine(out / "checkpoints" / "last.ckpt")
    assert type(engine.model).__name__ == "OpenAIWrapper" and engine.model.diffusion_model.config.in_channels == channels
    assert engine.loss_fn.loss_type == ("l1" if name.endswith("l1_loss") else "l2")


def test_discrete_eps_config_stops_with_the_explanation(roots, tmp_path, capsys):
    "sgm quantizes EDMScaling's c_noise (ln σ / 4) as if it were σ, silently; here the run stops before training."
    rc, out = run("mnist_cond_discrete_eps", roots, tmp_path)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "quantize_c_noise=True maps c_noise to a table index" in err
    assert not out.exists()


def test_lightning_keys_take_effect(roots, tmp_path):
    "sgm's lightning.modelcheckpoint and metrics_over_trainsteps_checkpoint, at an interval a 3-step run reaches."
    rc, out = run("mnist_cond", roots, tmp_path, "lightning.modelcheckpoint.params.every_n_train_steps=2",
                  "lightning.callbacks.metrics_over_trainsteps_checkpoint.params.every_n_train_steps=2",
                  "lightning.callbacks.image_logger.params.disabled=true")
    assert rc == 0
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt", "trainstep_checkpoints"}
    kept = list((out / "checkpoints" / "trainstep_checkpoints").iterdir())
    assert [p.name for p in kept] == ["epoch=000000-step=000000002.ckpt"]
    assert "optimizer_states" not in torch.load(kept[0], map_location="cpu", weights_only=False)   # save_weights_only: True
    assert not (out / "images").exists()                                                       # image_logger.disabled


def test_last_checkpoint_is_written_when_modelcheckpoint_keeps_no_last(roots, tmp_path):
    "`save_last: false` in sgm's modelcheckpoint: last.ckpt (what --resume and sampling use) is still written at the end."
    cfg = OmegaConf.merge(OmegaConf.create((TOY / "mnist_cond.yaml").read_text()),
                          {"lightning": {"modelcheckpoint": {"params": {"every_n_train_steps": 3, "save_last": False}}}})
    path, out = tmp_path / "c.yaml", tmp_path / "r"; OmegaConf.save(cfg, path)
    rc = main(["train", "--config", str(path), "--run-dir", str(out), *allowed("mnist_cond", roots),
               "lightning.callbacks.image_logger.params.disabled=true"])
    assert rc == 0 and sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_callback_params_may_be_null(roots, tmp_path):
    "`params:` left empty in YAML (null) means sgm's defaults for that callback."
    cfg = load_config("sgm_toy/mnist_cond", [*allowed("mnist_cond", roots), "lightning.callbacks.image_logger.params=null"])
    logger = next(c for c in make_trainer(cfg, tmp_path / "r").callbacks if type(c).__name__ == "ImageLogger")
    assert (logger.batch_freq, logger.max_images) == (1000, 4)                                  # sgm's defaults


def test_trainer_settings_are_sgms(roots, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)   # restored afterwards
    cfg = load_config("sgm_toy/cifar10_cond", allowed("cifar10_cond", roots))
    t = make_trainer(cfg, tmp_path / "r")
    assert (t.max_epochs, t.max_steps, t.num_sanity_val_steps, t.accumulate_grad_batches) == (20, 3, 0, 1)
    assert torch.backends.cudnn.benchmark is True                                              # lightning.trainer.benchmark


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_sgm_asks_for_a_gpu(roots, tmp_path, capsys):
    rc = main(["train", "--config", "sgm_toy/mnist", "--run-dir", str(tmp_path / "r"), f"data.params.root={roots['mnist']}"])
    err = capsys.readouterr().err
    assert rc == 2 and "lightning.trainer.accelerator='gpu' (sgm's main.py default)" in err and "lightning.trainer.accelerator=cpu" in err


def test_scale_lr_is_sgms_rule(roots, tmp_path):
    "--scale_lr: lr = accumulate_grad_batches · ngpu (1 on the CPU) · batch_size · base_learning_rate (sgm's main.py)."
    for acc, want in ((1, 2e-4), (3, 6e-4)):
        cfg = load_config("sgm_toy/mnist", [*allowed("mnist", roots), f"lightning.trainer.accumulate_grad_batches={acc}"])
        engine, dm = build_engine(cfg), build_data(cfg)
        info = learning_rate(cfg, engine, make_trainer(cfg, tmp_path / "r"), dm, scale_lr=True)
        assert engine.lr == pytest.approx(want) and info["lr"] == engine.lr and "--scale_lr" in info["lr_rule"]
    with pytest.raises(ConfigError, match="--scale-lr scales model.base_learning_rate"):
        learning_rate(load_config("digits"), None, None, None, scale_lr=True)


@pytest.mark.parametrize("extra, named", [
    ({"logger": {"target": "pytorch_lightning.loggers.WandbLogger"}}, "lightning.logger is not supported"),
    ({"callbacks": {"setup_callback": {"target": "main.SetupCallback"}}}, "lightning.callbacks.setup_callback is not supported"),
    ({"callbacks": {"my_logger": {"params": {"x": 1}}}}, "lightning.callbacks.my_logger has no target"),
    ({"callbacks": {"image_logger": {"params": {"log_images_kwargs": {"n_col": 4}}}}}, "log_images_kwargs.n_col"),
    ({"callbacks": {"my_images": {"target": "main.ImageLogger", "params": {"batch_frequency": 10, "max_images": 4,
                                                                         "log_images_kwargs": {"n_col": 4}}}}},
     "lightning.callbacks.my_images.params.log_images_kwargs.n_col"),   # named by its own entry, whatever it is called
    ({"callbacks": {"learning_rate_logger": {"params": 5}}}, "lightning.callbacks.learning_rate_logger.params must be a mapping"),
    ({"modelcheckpoint": {"params": {"every_n_trainsteps": 5}}}, "lightning.modelcheckpoint.params.every_n_trainsteps"),
    ({"trainr": {}}, "lightning.trainr"),
])
def test_lightning_keys_not_honoured_are_named(extra, named, roots, tmp_path, capsys):
    text = (TOY / "mnist_cond.yaml").read_text()
    cfg = OmegaConf.merge(OmegaConf.create(text), {"lightning": extra})
    path = tmp_path / "c.yaml"; OmegaConf.save(cfg, path)
    rc = main(["train", "--config", str(path), "--run-dir", str(tmp_path / "r"), *allowed("mnist_cond", roots)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and named in err, err
    assert not (tmp_path / "r").exists()


def test_missing_data_names_the_root_and_the_key(tmp_path, capsys):
    rc = main(["train", "--config", "sgm_toy/cifar10_cond", "--run-dir", str(tmp_path / "r"), "lightning.trainer.accelerator=cpu",
               "lightning.trainer.devices=1", f"data.params.root={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(tmp_path / "nowhere") in err and "data.params.root=" in err
