"""Fuzzed input (issue 15, item 6): a few hundred hypothesis cases of `bench/fuzz_inputs.py` through `cli.main`, each
accepted or refused with a one-line error naming its key (the bench runs ≥ 2,000), and one regression test for every
fault the campaign found: each once ended in a traceback or in a message that named no key."""
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fuzz_inputs as fz  # noqa: E402

OK = fz.OK


@pytest.fixture(scope="module")
def F(tmp_path_factory):
    "A real 2-step run with post-hoc EMA snapshots, its exports, and files that are not what an option wants."
    return fz.make_fixtures(tmp_path_factory.mktemp("fuzz_fixtures"))


def test_campaign(F, tmp_path):
    """300 derandomized cases of all three kinds: none ends in a traceback, an unclear refusal or another exit status.
    Accepted `train` cases stop before their first step here (test_accepted_case_runs trains one)."""
    seen, n = [], [0]

    @settings(max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(fz.cases())
    def one(case):
        r = fz.judge(case, F, tmp_path / f"case{n[0]}", real=False); n[0] += 1
        seen.append((case.kind, r["outcome"]))
        assert r["outcome"] in OK, f"{r['outcome']}: {case}\n{r['detail']}"

    one()
    kinds, outcomes = {k for k, _ in seen}, {o for _, o in seen}
    assert n[0] == 300 and kinds == set(fz.KINDS) and {"accepted", "refused-one-line"} <= outcomes, (n[0], kinds, outcomes)   # runs: test_accepted_case_runs


def refusal(F, tmp_path, argv, files=None):
    "The last stderr line of `argv` (placeholders `{F}`, `{T}`) once `cli.main` refused it with exit status 2, no traceback."
    for name, text in (files or {}).items(): (tmp_path / name).write_text(text)
    r = fz.invoke(fz._fill(argv, F, tmp_path))
    assert r["status"] is None and r["rc"] == 2, r
    assert "Traceback" not in r["stderr"]
    return r["stderr"].strip().splitlines()[-1]


BAD_YAML = {   # a change to the shipped digits config, and what the refusal must say (each was a traceback or named no key)
    "target_int": (("model", "params", "first_stage_config", "target"), 5, "model.params.first_stage_config.target must be a dotted path"),
    "target_list": (("model", "params", "first_stage_config", "target"), ["a"], "model.params.first_stage_config.target must be a dotted path"),
    "lr_list": (("model", "params", "lr"), [1, 2], "model.params.lr=[1, 2] is of the wrong type"),
    "samples_dict": (("lightning", "samples_per_class"), {"a": 1}, "lightning.samples_per_class must be an int >= 0"),
    "interpolation": (("model", "params", "lr"), "${nope}", "config key model.params.lr: Interpolation key 'nope' not found"),
    "seed_text": (("seed",), "abc", "seed must be an int in [0, 2**32)"),
    "denoiser_null": (("model", "params", "denoiser_config"), None, "model.params.denoiser_config is null, but DiffusionEngine needs its denoiser"),
    "sigma_sampler_null": (("model", "params", "loss_fn_config", "params", "sigma_sampler_config"), None,
                           "model.params.loss_fn_config.params.sigma_sampler_config is null, but StandardDiffusionLoss needs its sigma_sampler"),
    "model_not_an_engine": (("model",), {"target": "diffexplore.scalings.EDMScaling"}, "model.target must be a DiffusionEngine"),   # was AttributeError 'first_stage'
    "data_seed_inf": (("data", "params", "seed"), float("inf"), "seed must be an integer >= 0; got seed=inf"),   # was OverflowError
    "scaling_target_empty": (("model", "params", "denoiser_config", "params", "scaling_config", "target"), "",
                             "model.params.denoiser_config.params.scaling_config.target: target must be a dotted path"),
    "interpolation_in_list": (("model", "params", "conditioner_config", "params", "emb_models", 0, "params"), "${nope}",
                              "config key model.params.conditioner_config.params.emb_models.0.params: Interpolation key 'nope' not found"),
    "emb_input_key_dict": (("model", "params", "conditioner_config", "params", "emb_models", 0, "input_key"), {},
                           "emb_models.0: input_key must be a string, the batch entry it embeds (e.g. 'cls'); got input_key={}"),   # was "unhashable type: 'dict'"
    "net_negative": (("model", "params", "network_config", "params", "diffusion_model", "params", "in_channels"), -3,
                     "model.params.network_config.params.diffusion_model.params.in_channels"),
}


@pytest.mark.parametrize("name", BAD_YAML)
def test_bad_yaml_named(F, tmp_path, name):
    path, value, says = BAD_YAML[name]
    cfg, _ = fz.base_config("digits")
    fz._get_parent(cfg, path)[path[-1]] = value
    line = refusal(F, tmp_path, ["train", "--config", "{T}/c.yaml", "--run-dir", "{T}/run"], {"c.yaml": fz.yaml.safe_dump(cfg)})
    assert line.startswith("diffexplore: error: ") and says in line, line


def test_missing_param_named_as_written(F, tmp_path):
    "sgm's `sigma_sampler_config` left out: the refusal names the key as the config spells it."
    cfg, _ = fz.base_config("digits")
    del cfg["model"]["params"]["loss_fn_config"]["params"]["sigma_sampler_config"]
    line = refusal(F, tmp_path, ["train", "--config", "{T}/c.yaml", "--run-dir", "{T}/run"], {"c.yaml": fz.yaml.safe_dump(cfg)})
    assert "model.params.loss_fn_config.params: bad params" in line and "sigma_sampler_config" in line, line


@pytest.mark.parametrize("argv,says", [
    (["train", "--config", "digits", "--run-dir", "{T}/run", "model=3e-4"], "model must be a mapping (target, params); got model=0.0003"),
    (["train", "--config", "digits", "--run-dir", "{T}/run", "model.params=[64, 128]"], "model.params must be a mapping of constructor arguments"),
    (["train", "--config", "digits", "--run-dir", "{T}/run", "model.params.first_stage_config=cuda"], "model.params.first_stage_config must be a mapping with a target"),
    (["study", "--config", "study_digits", "--out", "{F}/note.txt"], "--out {F}/note.txt is a file"),
    (["train", "--config", "digits", "--run-dir", "{T}/run", "lightning.sample_every_n_steps="], "lightning.sample_every_n_steps must be an int >= 0; got lightning.sample_every_n_steps=None"),
    (["train", "--config", "digits", "--run-dir", "{T}/run", "model.params.first_stage_config.target="], "model.params.first_stage_config.target must be a dotted path"),
    (["train", "--config", "digits", "--run-dir", "{T}/run", "model.params.conditioner_config.params.emb_models.0s.params.embed_dim=11"],
     "config key 'model.params.conditioner_config.params.emb_models.0s.params.embed_dim' does not exist; did you mean model.params.conditioner_config.params.emb_models.0.params.embed_dim"),
    (["train", "--config", "digits", "--resume", "{F}/note.txt", "--run-dir", "{T}/run"], "--resume {F}/note.txt is not a training checkpoint"),
    (["train", "--resume", "{F}/w.safetensors"], "is not a training checkpoint"),
    (["train", "--resume", "{T}/last.ckpt"], "--config is required: --resume {T}/last.ckpt is not in a run dir"),
    (["train", "--config", "digits", "--run-dir", "{F}/note.txt"], "--run-dir {F}/note.txt is a file"),
    (["posthoc-ema", "--run", "{F}/run", "--sigma-rel", "0.05", "--out", "/proc/nope/out.ckpt"], "--out /proc/nope/out.ckpt: its folder cannot be created"),
    (["sample", "--ckpt", "{F}/run/checkpoints/last.ckpt", "--out", "{F}/note.txt/x.png", "--n", "2"], "--out {F}/note.txt/x.png: its folder cannot be created"),
    (["export", "--ckpt", "{F}/run/checkpoints/last.ckpt", "--out", "{F}/empty"], "--out must be a .safetensors file"),
    (["sample", "--ckpt", "{F}/run/checkpoints/last.ckpt", "--out", "{T}", "--n", "2"], "--out must be a .png file"),
    (["sample", "--ckpt", "{T}/hello.ckpt", "--out", "{T}/g.png"], "{T}/hello.ckpt is not a checkpoint, or is cut short"),
    (["sample", "--ckpt", "{F}/w.safetensors", "--out", "/proc/x.png"], "--out /proc/x.png: its folder cannot be created or written"),
    (["export", "--ckpt", "{T}/half.ckpt", "--out", "{T}/w.safetensors"], "{T}/half.ckpt is not a checkpoint, or is cut short"),
])
def test_argv_refused_in_one_line(F, tmp_path, argv, says):
    if "{T}/last.ckpt" in argv: (tmp_path / "last.ckpt").write_bytes((F / "run/checkpoints/last.ckpt").read_bytes())   # a checkpoint outside a run dir
    (tmp_path / "hello.ckpt").write_bytes(b"hello")                                  # a file that is no checkpoint (torch's unpickler: KeyError)
    whole = (F / "run/checkpoints/last.ckpt").read_bytes(); (tmp_path / "half.ckpt").write_bytes(whole[:len(whole) // 2])   # cut short
    line = refusal(F, tmp_path, argv)
    assert says.replace("{F}", str(F)).replace("{T}", str(tmp_path)) in line, line


def test_accepted_case_runs(F, tmp_path):
    "An accepted config runs for real (2 steps) and writes its checkpoint; an accepted sample writes its grid."
    r = fz.judge(fz.Case("overrides", ["train", "--config", "digits_flow", "--run-dir", "{T}/run", "seed=3"], ["seed"]), F, tmp_path, real=True)
    assert r["outcome"] == "accepted-and-ran", r
    assert (tmp_path / "run_real" / "checkpoints" / "last.ckpt").is_file()
    r = fz.judge(fz.Case("argv", ["sample", "--ckpt", "{F}/w.safetensors", "--out", "{T}/g.png", "--n", "3", "--num-steps", "2"], []), F, tmp_path)
    assert r["outcome"] == "accepted-and-ran" and (tmp_path / "g.png").is_file(), r


def test_emb_models_entry_named(F, tmp_path):
    "A bad value inside an `emb_models` entry is refused naming the entry's key (torch's size error, no traceback)."
    cfg, _ = fz.base_config("digits")
    cfg["model"]["params"]["conditioner_config"]["params"]["emb_models"][0]["params"]["embed_dim"] = -3
    line = refusal(F, tmp_path, ["train", "--config", "{T}/c.yaml", "--run-dir", "{T}/run"], {"c.yaml": fz.yaml.safe_dump(cfg)})
    assert "emb_models.0.params.embed_dim" in line, line


def test_bench_smoke(F, tmp_path, capsys):
    "`bench/fuzz_inputs.py --smoke`: 60 cases, the counts table printed and its summary row appended."
    md = tmp_path / "B.md"
    assert fz.main(["--smoke", "--out", str(tmp_path / "o"), "--fixtures", str(F), "--append", str(md)]) == 0
    out = capsys.readouterr().out
    assert "60 cases in" in out and "| all |" in out
    row = [l for l in md.read_text().splitlines() if l.startswith("| 20")]
    assert fz.HEADING in md.read_text() and len(row) == 1 and "| 60 |" in row[0], md.read_text()


def test_sampler_without_steps_refused_before_training(F, tmp_path):
    line = refusal(F, tmp_path, ["train", "--config", "digits_edm2", "--run-dir", "{T}/run", "model.params.sampler_config.params="])
    assert "model.params.sampler_config.params.num_steps" in line, line


def test_trainer_arg_of_wrong_type_named(F, tmp_path):
    line = refusal(F, tmp_path, ["train", "--config", "digits", "--run-dir", "{T}/run", "trainer.accelerator=[1, 2]"])
    assert "trainer.accelerator" in line, line


def test_embedder_setting_of_wrong_type_named(F, tmp_path):
    "An `emb_models` entry's own setting (next to its target) of the wrong type names the setting, not only the entry."
    cfg, _ = fz.base_config("digits")
    cfg["model"]["params"]["conditioner_config"]["params"]["emb_models"][0]["ucg_rate"] = [1000]
    line = refusal(F, tmp_path, ["train", "--config", "{T}/c.yaml", "--run-dir", "{T}/run"], {"c.yaml": fz.yaml.safe_dump(cfg)})
    assert "emb_models.0" in line and "ucg_rate=[1000]" in line, line


@pytest.mark.parametrize("argv,says", [   # found by the fresh-clone pass of 2026-12-05: each was accepted, or refused unclearly
    (["train", "--config", "digits", "--run-dir", "{T}/run", "model.params.lr=fast"], "lr must be a number; got lr='fast'"),
    (["train", "--config", "digits", "--run-dir", ""], "--run-dir must name a folder; got --run-dir ''"),
    (["study", "--config", "study_digits", "--out", " "], "--out must name a folder; got --out ' '"),
    (["train", "--config", "digits", "--run-dir", "{T}/run", "--allow-module", "no_such_module_xyz"],
     "--allow-module no_such_module_xyz: no module of that name can be imported"),
    (["train", "--config", "digits", "--run-dir", "{T}/run", "--allow-module", "no_such_pkg_xyz.models"],
     "--allow-module no_such_pkg_xyz.models: no module of that name can be imported"),
    (["train", "--resume", "{F}/run/checkpoints/last.ckpt", "trainer.max_steps=2"],
     "trainer.max_steps=2 is not above the global step of --resume {F}/run/checkpoints/last.ckpt (2): nothing is left to train"),
    (["train", "--resume", "{T}/ph/post.ckpt"], "--resume {T}/ph/post.ckpt is a posthoc-ema checkpoint"),
    (["study", "--config", "study_digits", "--jobs", "abc"], "diffexplore study: error: argument --jobs: invalid int value: 'abc'; see diffexplore study --help"),
    ([], "diffexplore: error: the following arguments are required: COMMAND; see diffexplore --help"),
])
def test_fresh_clone_mistakes_refused_in_one_line(F, tmp_path, argv, says):
    if "{T}/ph/post.ckpt" in argv:   # a post-hoc EMA checkpoint, not in a run dir: once looked for config.yaml two folders up
        assert fz.cli.main(["posthoc-ema", "--run", str(F / "run"), "--sigma-rel", "0.05", "--out", str(tmp_path / "ph" / "post.ckpt")]) == 0
    r = fz.invoke(fz._fill(argv, F, tmp_path))
    assert r["status"] is None and r["rc"] == 2 and "Traceback" not in r["stderr"], r
    lines = r["stderr"].strip().splitlines()
    assert len(lines) == 1 and says.replace("{F}", str(F)).replace("{T}", str(tmp_path)) in lines[0], lines   # argparse's usage lines too


def test_precision_choices_leave_out_the_refused(F, tmp_path):
    "`trainer.precision=fp13` lists what Lightning takes, less what diffexplore refuses (16-true: `engine.PRECISION_REFUSED`)."
    line = refusal(F, tmp_path, ["train", "--config", "digits", "--run-dir", "{T}/run", "trainer.precision=fp13"])
    assert "trainer.precision must be" in line and "'bf16-mixed'" in line and "'16-true'" not in line, line


BAD_YAML_RUN = {   # found by a 10,000-case campaign (seed 1): each was accepted and failed at the first step, unnamed
    "target_typo": (("model", "params", "network_config", "params", "diffusion_model"), "taget",
                    "model.params.network_config.params.diffusion_model has 'taget' (a misspelt target?) but no target"),
    "no_target": (("model", "params", "denoiser_config", "params", "scaling_config"), "arams",
                    "model.params.denoiser_config.params.scaling_config is a component's config (sgm's foo_config) but has no target"),
    "no_conditioner": (("model", "params", "conditioner_config"), None, "no conditioner to feed it: set model.params.conditioner_config"),
}


@pytest.mark.parametrize("name", BAD_YAML_RUN)
def test_components_without_their_target_named(F, tmp_path, name):
    "A component config that lost its target ('dict' object is not callable at step 0) or a conditioner the network needs."
    path, key, says = BAD_YAML_RUN[name]
    cfg, _ = fz.base_config("digits")
    parent = fz._get_parent(cfg, path)
    if key is None: del parent[path[-1]]
    elif key == "taget": node = parent[path[-1]]; node[key] = node.pop("target")   # the misspelt key
    else: parent[path[-1]] = {key: {}}                                                # a config left with neither
    line = refusal(F, tmp_path, ["train", "--config", "{T}/c.yaml", "--run-dir", "{T}/run"], {"c.yaml": fz.yaml.safe_dump(cfg)})
    assert says in line, line


@pytest.mark.parametrize("override,says", [
    ("model.params.network_config.params.diffusion_model=-0.001", "diffusion_model must be a network"),
    ("model.params.input_key=9", "input_key must be a string, the batch key of the images (sgm's 'jpg'); got input_key=9"),   # was KeyError: 9
    ("model.params.input_key=img", "input_key='img' is not a key of the training batches; they have ['cls', 'jpg']"),
])
def test_network_and_input_key_named_before_or_at_step_0(F, tmp_path, override, says):
    r = fz.invoke(fz._fill(["train", "--config", "digits", "--run-dir", "{T}/run", override, *fz.REAL_RUN], F, tmp_path), stop=False)
    assert r["rc"] == 2 and "Traceback" not in r["stderr"], r
    assert says in r["stderr"].strip().splitlines()[-1], r["stderr"][-500:]


@pytest.mark.parametrize("argv,says", [   # found by the fresh-clone pass of 2026-12-05 (second session)
    (["sample", "--ckpt", "{T}/text.safetensors", "--out", "{T}/x.png"], "{T}/text.safetensors is not a .safetensors file written by `diffexplore export`, or is cut short"),
    (["export", "--ckpt", "{T}/half.safetensors", "--out", "{T}/z.safetensors"], "{T}/half.safetensors is not a .safetensors file written by `diffexplore export`, or is cut short"),
    (["train", "--config", "study_digits"], "this is a study config (base, recipes): run it with `diffexplore study --config`"),
    (["study", "--config", "digits"], "is a run config (model, data): train it with `diffexplore train --config`"),
    (["study", "--config", "{T}/typo.yaml", "--out", "{T}/o"], "config key 'trainer.max_stesp' does not exist"),
    (["study", "--config", "{T}/ok.yaml", "--out", "{T}/o", "--report-only"], "--report-only: {T}/o holds no finished cells"),   # was exit 0, an empty table
])
def test_second_fresh_clone_mistakes_refused_in_one_line(F, tmp_path, argv, says):
    (tmp_path / "text.safetensors").write_text("hello")                                  # safetensors' own SafetensorError traceback
    whole = (F / "w.safetensors").read_bytes(); (tmp_path / "half.safetensors").write_bytes(whole[:len(whole) // 2])
    study = "base: digits\nseeds: [0]\nshared: [SHARED]\nrecipes: {EDM: {}}\n"
    (tmp_path / "typo.yaml").write_text(study.replace("SHARED", "trainer.max_stesp=5")); (tmp_path / "ok.yaml").write_text(study.replace("SHARED", "trainer.max_steps=5"))
    r = fz.invoke(fz._fill(argv, F, tmp_path))
    assert r["status"] is None and r["rc"] == 2 and "Traceback" not in r["stderr"], r
    lines = r["stderr"].strip().splitlines()
    assert len(lines) == 1 and says.replace("{F}", str(F)).replace("{T}", str(tmp_path)) in lines[0], lines
