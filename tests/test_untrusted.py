"""Untrusted files (issue 15, item 7): config targets resolve only to allowed components, in a YAML run config and in
the config a checkpoint carries, and are refused before anything is called; a user's own class is built with
`--allow-module`; `load_engine` reads checkpoints with `torch.load(weights_only=True)` and refuses a pickled object."""
import contextlib, io, sys
from pathlib import Path

import pytest
import torch
import yaml

from diffexplore.cli import main, load_engine, load_config, build_engine, ConfigError
from diffexplore.core import TargetNotAllowed, trusted_modules, instantiate_from_config
from _runs import TINY, NO_FLOOR

CONFIG = Path(__file__).parent.parent / "configs" / "digits.yaml"
SCALING = ("model", "params", "denoiser_config", "params", "scaling_config")
CODE_RUNNERS = ["os.system", "builtins.eval", "subprocess.Popen", "torch.hub.load", "torch.utils.cpp_extension.load_inline"]
MODULE = "untrusted_test_mod"   # the user's own module, written to tmp_path
USER_CODE = '''from subprocess import Popen
from diffexplore.scalings import EDMScaling
class MyScaling(EDMScaling):
    "A user's own scaling: EDM's, under another name."
'''


def _main(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _with_scaling(cfg: dict, node: dict) -> dict:
    "`cfg` with the denoiser's `scaling_config` replaced by `node`."
    d = cfg
    for k in SCALING[:-1]: d = d[k]
    d[SCALING[-1]] = node
    return cfg


def _payload(target: str, witness: Path) -> dict:
    "A config node that would leave `witness` behind if its target were ever called."
    params = {"os.system": {"command": f"touch {witness}"}, "builtins.eval": {"source": f"open({str(witness)!r}, 'w')"},
              "subprocess.Popen": {"args": ["touch", str(witness)]}, "torch.hub.load": {"repo_or_dir": str(witness.parent), "model": "x", "source": "local"},
              "torch.utils.cpp_extension.load_inline": {"name": "x", "cpp_sources": ["int x;"]}}[target]
    return {"target": target, "params": params}


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    "A module of the user's own (`MyScaling`) on sys.path for this file's tests."
    root = tmp_path_factory.mktemp("usermod")
    (root / f"{MODULE}.py").write_text(USER_CODE)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root)); sys.modules.pop(MODULE, None)


@pytest.fixture(scope="module")
def user_run(user_module, tmp_path_factory):
    "A tiny digits run whose scaling is the user's class, trained with --allow-module (its checkpoint names the class)."
    tmp = tmp_path_factory.mktemp("userrun")
    cfg = _with_scaling(yaml.safe_load(CONFIG.read_text()), {"target": f"{MODULE}.MyScaling", "params": {"sigma_data": 0.75}})
    (tmp / "mine.yaml").write_text(yaml.safe_dump(cfg))
    rc, out, err = _main("train", "--config", tmp / "mine.yaml", "--run-dir", tmp / "run", "--allow-module", MODULE, *TINY, *NO_FLOOR,
                         "trainer.max_steps=4", "lightning.sample_every_n_steps=0", "lightning.judge_samples=0")
    assert rc == 0, err[-2000:]
    return tmp


@pytest.mark.parametrize("target", CODE_RUNNERS)
def test_yaml_config_refuses_code_runners(target, tmp_path):
    witness = tmp_path / "called"
    cfg = _with_scaling(yaml.safe_load(CONFIG.read_text()), _payload(target, witness))
    (tmp_path / "evil.yaml").write_text(yaml.safe_dump(cfg))
    rc, out, err = _main("train", "--config", tmp_path / "evil.yaml", "--run-dir", tmp_path / "run")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"diffexplore: error: model.params.denoiser_config.params.scaling_config: target {target!r} is not an allowed component"), err
    assert "--allow-module" in err and not witness.exists() and not (tmp_path / "run").exists()
    with pytest.raises(TargetNotAllowed, match=f"target '{target}' is not an allowed component"):   # the Python path too
        build_engine(load_config(tmp_path / "evil.yaml"))
    assert not witness.exists()


def test_a_wrapped_or_imported_name_is_refused():
    for t in ("diffexplore.cli.os", "diffexplore.cli.Path", "diffexplore.cli.main", "torch.nn.functional.relu", "builtins.exec"):
        with pytest.raises(TargetNotAllowed, match="not an allowed component"): instantiate_from_config({"target": t})


def test_user_class_needs_the_opt_in(user_module, tmp_path):
    node = {"target": f"{MODULE}.MyScaling", "params": {"sigma_data": 0.7}}
    with pytest.raises(TargetNotAllowed, match=f"target '{MODULE}.MyScaling' is not an allowed component"):
        instantiate_from_config(node, path="scaling")
    assert MODULE not in sys.modules   # refused before its module is imported
    with trusted_modules(MODULE): s = instantiate_from_config(node)
    assert type(s).__name__ == "MyScaling" and s.sigma_data == 0.7
    with trusted_modules(MODULE), pytest.raises(TargetNotAllowed, match=f"target '{MODULE}.Popen'"):   # trusted: what it defines, not what it imports
        instantiate_from_config({"target": f"{MODULE}.Popen", "params": {"args": ["true"]}})


def test_cli_opt_in_for_train_and_sample(user_run, tmp_path):
    cfg = user_run / "mine.yaml"
    rc, out, err = _main("train", "--config", cfg, "--run-dir", tmp_path / "r", *TINY, "trainer.max_steps=1")
    assert rc == 2 and f"target '{MODULE}.MyScaling' is not an allowed component" in err and len(err.strip().splitlines()) == 1, err
    ckpt = user_run / "run" / "checkpoints" / "last.ckpt"
    rc, out, err = _main("sample", "--ckpt", ckpt, "--n", 2, "--out", tmp_path / "no.png")
    assert rc == 2 and err.startswith(f"diffexplore: error: diffexplore_config.model.params.denoiser_config.params.scaling_config: target '{MODULE}.MyScaling'"), err
    assert not (tmp_path / "no.png").exists()
    rc, out, err = _main("sample", "--ckpt", ckpt, "--n", 2, "--out", tmp_path / "yes.png", "--allow-module", MODULE)
    assert rc == 0 and (tmp_path / "yes.png").is_file(), err


def test_load_engine_reads_with_weights_only(user_run, monkeypatch):
    ckpt = user_run / "run" / "checkpoints" / "last.ckpt"
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)   # what Lightning's Trainer.fit(ckpt_path) does by default
    assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks", "rng_states", "diffexplore_config"} <= set(ck)
    calls, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real(*a, **k))
    with trusted_modules(MODULE): engine = load_engine(ckpt)
    assert calls == [True] and type(engine.denoiser.scaling).__name__ == "MyScaling"
    sd = engine.state_dict()
    assert set(sd) == set(ck["state_dict"]) and all(torch.equal(sd[k], v) for k, v in ck["state_dict"].items())


class _Payload:
    "What an attacker pickles: unpickling calls `ran.append` (it would be `os.system`)."
    ran = []
    def __reduce__(self): return (_Payload.ran.append, ("ran",))


def test_load_engine_refuses_a_pickled_object(user_run, tmp_path):
    ck = torch.load(user_run / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    torch.save({**ck, "extra": _Payload()}, tmp_path / "pickled.ckpt")
    with pytest.raises(ConfigError, match=r"holds more than weights and plain values.*weights_only=True.*GLOBAL"):
        load_engine(tmp_path / "pickled.ckpt")
    assert _Payload.ran == []
    rc, out, err = _main("sample", "--ckpt", tmp_path / "pickled.ckpt", "--n", 2, "--out", tmp_path / "x.png", "--allow-module", MODULE)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "weights_only=True" in err and _Payload.ran == [], err


@pytest.mark.parametrize("target", CODE_RUNNERS)
def test_checkpoint_config_refuses_code_runners(user_run, tmp_path, target, monkeypatch):
    "A checkpoint whose embedded config names a code runner is refused before anything is built or called."
    witness = tmp_path / "called"
    ck = torch.load(user_run / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    _with_scaling(ck["diffexplore_config"], _payload(target, witness))
    torch.save(ck, tmp_path / "evil.ckpt")
    import diffexplore.cli as cli
    built, orig = [], cli.build_engine
    monkeypatch.setattr(cli, "build_engine", lambda *a, **k: built.append(1) or orig(*a, **k))
    with trusted_modules(MODULE), pytest.raises(TargetNotAllowed, match=f"diffexplore_config.model.params.denoiser_config.params.scaling_config: target '{target}'"):
        load_engine(tmp_path / "evil.ckpt")
    assert built == [] and not witness.exists()


def test_export_safetensors_round_trip(user_run, tmp_path):
    "`diffexplore export` writes EMA weights + config as safetensors; `load_engine`/`sample` read it back without pickle."
    from safetensors import safe_open
    ckpt, out = user_run / "run" / "checkpoints" / "last.ckpt", tmp_path / "model.safetensors"
    rc, stdout, err = _main("export", "--ckpt", ckpt, "--out", out)
    assert rc == 2 and f"target '{MODULE}.MyScaling'" in err and not out.exists(), err   # the opt-in is needed here too
    rc, stdout, err = _main("export", "--ckpt", ckpt, "--out", out, "--allow-module", MODULE)
    assert rc == 0 and out.is_file() and "(EMA weights) at step 4" in stdout, err
    with safe_open(str(out), "pt") as f: meta, keys = f.metadata(), set(f.keys())
    assert meta["format"] == "diffexplore-weights/1" and meta["global_step"] == "4" and not any(k.startswith("model_ema.") for k in keys)
    with trusted_modules(MODULE):
        orig, back = load_engine(ckpt), load_engine(out)
    net = dict(back.model.named_parameters())
    for name, shadow in zip(orig.model_ema._names, orig.model_ema.shadows()):   # the network holds the EMA weights, in both slots
        assert torch.equal(net[name], shadow) and torch.equal(back.model_ema.shadows()[back.model_ema._names.index(name)], shadow), name
    assert back.sample_shape == orig.sample_shape
    labels = torch.arange(2)
    assert torch.equal(back.generate(2, class_labels=labels, seed=0), orig.generate(2, class_labels=labels, seed=0))
    rc, stdout, err = _main("sample", "--ckpt", out, "--n", 2, "--out", tmp_path / "s.png", "--allow-module", MODULE)
    assert rc == 0 and (tmp_path / "s.png").is_file(), err


def test_export_refuses_a_bad_target_in_its_metadata(user_run, tmp_path):
    import json
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    ckpt, out = user_run / "run" / "checkpoints" / "last.ckpt", tmp_path / "model.safetensors"
    assert _main("export", "--ckpt", ckpt, "--out", out, "--allow-module", MODULE)[0] == 0
    with safe_open(str(out), "pt") as f: meta = f.metadata()
    cfg = _with_scaling(json.loads(meta["diffexplore_config"]), _payload("os.system", tmp_path / "called"))
    save_file(load_file(str(out)), str(tmp_path / "evil.safetensors"), metadata={**meta, "diffexplore_config": json.dumps(cfg)})
    rc, stdout, err = _main("sample", "--ckpt", tmp_path / "evil.safetensors", "--n", 2, "--out", tmp_path / "x.png", "--allow-module", MODULE)
    assert rc == 2 and "target 'os.system' is not an allowed component" in err and not (tmp_path / "called").exists(), err
    rc, stdout, err = _main("export", "--ckpt", ckpt, "--out", tmp_path / "w.pt", "--allow-module", MODULE)
    assert rc == 2 and "--out must be a .safetensors file" in err, err
