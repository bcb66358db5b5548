#!/usr/bin/env python
"""Fuzzed input for the `diffexplore` command line (issue 15, item 6): hypothesis draws YAML configs (the shipped
configs with keys dropped, renamed, retyped, set out of range, or the file turned into garbage YAML), dotted
`key=value` overrides, and argument vectors of every subcommand (train, sample, posthoc-ema, export, study), and runs
each through `diffexplore.cli.main(argv)` in-process, its stdout and stderr captured. Each case must end in one of:

- **accepted**: every check passed and `train` reached its first step (the bench stops it there: `cli._fit` raises a
  sentinel), or `--help` printed;
- **accepted-and-ran**: `main` returned 0 — every accepted `sample`/`export`/`posthoc-ema` case (bounded by the
  strategies: ≤ 6 samples of ≤ 6 steps), and a few accepted `train` cases chosen at random (by a hash of the argv and config text),
  run again for real for 2 steps with `--no-judge`;
- **refused-one-line**: exit status 2 and the last line of stderr is `diffexplore: error: ...` (ours) or
  `diffexplore CMD: error: ...` (argparse), no `Traceback` anywhere in stderr, and that line names the case's culprit:
  it contains (case-insensitively) one of the keys the case changed (its dotted path, last component, or
  `parent.last`), a value it set (of ≥ 3 characters), the option or value it passed, or the config file's path.

Anything else is a finding and must be 0: **traceback** (an exception escaped `main`), **refused-unclear** (exit 2,
but the message spans lines or names no culprit), **other-exit** (another exit status).

    OMP_NUM_THREADS=1 python bench/fuzz_inputs.py --cases 2000 [--seed 0] [--append BENCHMARKS.md]
    python bench/fuzz_inputs.py --smoke                      # 60 cases, a few seconds (after the fixtures' 2-step run)
Prints a markdown table of counts per input kind and outcome, and every finding with its argv and traceback.
"""
import argparse, contextlib, copy, datetime, io, logging, os, shlex, sys, tempfile, time, traceback, zlib
from collections import Counter
from pathlib import Path

import yaml
from hypothesis import HealthCheck, Phase, given, seed as hseed, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # fuzz this checkout's diffexplore
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, append_rows  # noqa: E402
from diffexplore import cli  # noqa: E402

HEADING = "## Reliability: fuzzed input"
INTRO = ("`bench/fuzz_inputs.py`: hypothesis cases (mutated shipped YAML configs, dotted overrides, argument vectors of\n"
         "every subcommand) through `diffexplore.cli.main` in-process; the outcomes are defined in its docstring.\n")
OUTCOMES = ("accepted", "accepted-and-ran", "refused-one-line", "refused-unclear", "other-exit", "traceback")
OK = ("accepted", "accepted-and-ran", "refused-one-line")
HEADER = ("| date | machine | command | cases | " + " | ".join(OUTCOMES) + " | seconds |\n|---|---|---|" + "---:|" * (len(OUTCOMES) + 2))
KINDS = ("yaml", "overrides", "argv")
BASES = ("digits", "digits_edm2", "digits_flow", "digits_minsnr", "mnist_toy_sgm")
"Shipped train configs whose data is on every machine (scikit-learn's digits); the MNIST/CIFAR ones need downloads."
BOUNDED = {"num_workers": 1, "devices": 1, "num_nodes": 1, "prefetch_factor": 2}
"Keys whose value becomes processes: ints above the bound are clamped (no 300 worker processes)."
RUN_EVERY = 15
"About one accepted `train` case in RUN_EVERY (a hash of its argv) is run again for real, for 2 steps."
REAL_RUN = ["--no-judge", "trainer.max_steps=2", "lightning.sample_every_n_steps=0", "lightning.floor_every_n_steps=0",
            "lightning.sigma_data_batches=2", "trainer.enable_progress_bar=false", "data.params.num_workers=0"]
"Appended to an accepted `train` case run for real: 2 steps, no sample grids, floor or judge."


class Case:
    "One fuzz case: `argv` for `cli.main` (placeholders `{F}` = the fixture folder, `{T}` = a fresh folder), the names a refusal may cite."
    def __init__(self, kind, argv, names, files=None):
        self.kind, self.argv, self.names, self.files = kind, list(argv), [str(n) for n in names if str(n).strip()], files or {}
    def __repr__(self): return f"Case({self.kind}, {shlex.join(self.argv)}, names={self.names[:6]})"


# --- values ------------------------------------------------------------------------------------------------------
INTS = st.one_of(st.integers(-3, 40), st.sampled_from([0, -1, 300, 1000]))
FLOATS = st.one_of(st.floats(-10, 10, allow_nan=False), st.sampled_from([0.0, -0.0, -1e-3, 1e30, -1e30, float("nan"), float("inf"), float("-inf")]))
TEXTS = st.one_of(st.sampled_from(["abc", "", "auto", "None", "cuda", "gpu", "cpu", "1e-3", "digits", "${nope}", "???", "16-mixed", "bf16-true",
                                   "diffexplore.scalings.EDMScaling", "os.system", "builtins.eval", "torch.hub.load", "no.such.Module"]),
                  st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=12))
SCALARS = st.one_of(INTS, FLOATS, TEXTS, st.booleans(), st.none())
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.sampled_from(["a", "target", "params", "x"]), SCALARS, max_size=2))
OVERRIDE_TEXT = st.one_of(st.sampled_from(["3e-4", "1.0e-3", "[64, 128]", "{a: 1}", "{a:1}", "[1, 2", "null", "true", "", "'q'", "nan", ".inf", "-1",
                                           "0", "2", "1e9", "${oops}", "{target: os.system}", "{target: diffexplore.scalings.EDMScaling}",
                                           "{sigma_rels: [0.05, 0.1], every_n_steps: 1}", "[0.5, 2]", "{", "]", "a: b", "- x"]),
                          INTS.map(str), FLOATS.map(repr), TEXTS)


def _clamp(key: str, v):
    lim = BOUNDED.get(str(key).rsplit(".", 1)[-1])
    return min(v, lim) if lim is not None and isinstance(v, int) and not isinstance(v, bool) else v


def _names_of(path, value=None) -> list:
    "What a refusal of a change at `path` (a tuple of keys) may name: the dotted path, its last key, `parent.last`, the value."
    p = [str(k) for k in path]
    last = p[-1] if not p[-1].isdigit() or len(p) < 2 else f"{p[-2]}.{p[-1]}"
    out = [".".join(p), last, ".".join(p[-2:])]
    if value is not None:
        for v in (str(value), repr(value)):
            if len(v) >= 3: out.append(v)
    return out


def _paths(node, prefix=()):
    "Every key path of a plain config (list indices included)."
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    out = []
    for k, v in items: out += [prefix + (k,)] + _paths(v, prefix + (k,))
    return out


def _get_parent(cfg, path):
    node = cfg
    for k in path[:-1]: node = node[k]
    return node


_BASE_CACHE = {}
def base_config(name):
    "A shipped config as a plain dict (and its text)."
    if name not in _BASE_CACHE:
        p = cli.resolve_config(name); _BASE_CACHE[name] = (yaml.safe_load(p.read_text()), p.read_text())
    return copy.deepcopy(_BASE_CACHE[name][0]), _BASE_CACHE[name][1]


def _typo(draw, k: str) -> str:
    k = str(k)
    op = draw(st.sampled_from(["drop", "double", "upper", "suffix", "swap"]))
    i = draw(st.integers(0, max(len(k) - 1, 0)))
    if op == "drop" and len(k) > 1: return k[:i] + k[i + 1:]
    if op == "double": return k[:i] + k[i:i + 1] * 2 + k[i + 1:]
    if op == "upper": return k.upper() if k.upper() != k else k + "X"
    if op == "swap" and len(k) > 2 and i < len(k) - 1 and k[i] != k[i + 1]: return k[:i] + k[i + 1] + k[i] + k[i + 2:]
    return k + "s"


# --- (a) YAML configs ------------------------------------------------------------------------------------------------
GARBAGE = ["", "null", "42", "- a\n- b\n", "model: [\n", "model:\n\t target: x\n", "{{{", "model: {target: a, target: b}\n",
           "a: &x [*x]\n", "!!python/object/apply:os.system ['true']\n", "model: !!binary QUJD\n", "%YAML 9.9\n---\na: 1\n", "'unterminated\n"]

@st.composite
def yaml_cases(draw):
    "A shipped config with 1-3 mutations (drop, rename, retype, out of range, unknown key), or its text made garbage."
    name = draw(st.sampled_from(BASES))
    cfg, text = base_config(name)
    names = ["config.yaml"]
    if draw(st.integers(0, 7)) == 0:   # garbage YAML: truncated, a stray character, or a known-bad document
        how = draw(st.sampled_from(["truncate", "insert", "known", "random"]))
        i = draw(st.integers(0, len(text)))
        text = (text[:i] if how == "truncate" else text[:i] + draw(st.sampled_from(list(":{}[]-\t\"'&*!%@`|>#,?"))) + text[i:] if how == "insert"
                else draw(st.sampled_from(GARBAGE)) if how == "known" else draw(st.text(max_size=40)))
        names += [".".join(map(str, p)) for p in _paths(cfg)] + [str(p[-1]) for p in _paths(cfg) if not str(p[-1]).isdigit()]
    else:
        for _ in range(draw(st.integers(1, 3))):
            paths = _paths(cfg)
            if not paths: break
            path = draw(st.sampled_from(paths))
            parent, key, old = _get_parent(cfg, path), path[-1], _get_parent(cfg, path)[path[-1]]
            op = draw(st.sampled_from(["drop", "rename", "retype", "range", "add"]))
            if op == "drop" and isinstance(parent, dict): del parent[key]; names += _names_of(path)
            elif op == "rename" and isinstance(parent, dict):
                new = _typo(draw, key); parent[new] = parent.pop(key); names += _names_of(path) + _names_of(path[:-1] + (new,))
            elif op == "range" and isinstance(old, (int, float)) and not isinstance(old, bool):
                v = _clamp(key, draw(st.sampled_from([0, -1, -7, 1000, 0.0, -0.5, 1e30, float("nan"), float("inf"), 2.5])))
                parent[key] = v; names += _names_of(path, v)
            elif op == "add" and isinstance(old, dict):
                k = draw(st.sampled_from(["extra", "lr", "target", "params", "sigma_data", "max_step", "seed"])) 
                old[k] = v = draw(SCALARS); names += _names_of(path + (k,), v)
            else:
                v = _clamp(key, draw(VALUES)); parent[key] = v; names += _names_of(path, v)
        text = yaml.safe_dump(cfg, sort_keys=False)
    return Case("yaml", ["train", "--config", "{T}/config.yaml", "--run-dir", "{T}/run"], names, files={"config.yaml": text})


# --- (b) dotted overrides --------------------------------------------------------------------------------------------
TRAINER_KEYS = ("max_steps", "max_epochs", "accelerator", "devices", "precision", "gradient_clip_val", "accumulate_grad_batches",
                "log_every_n_steps", "enable_progress_bar", "val_check_interval", "strategy", "callbacks", "logger", "no_such_arg")

@st.composite
def override_cases(draw):
    "`train --config BASE key=value ...` with 1-3 overrides: existing keys, typos, Trainer and `lightning.` keys, malformed ones."
    name = draw(st.sampled_from(BASES))
    cfg, _ = base_config(name)
    keys = [".".join(map(str, p)) for p in _paths(cfg)]
    overrides, names = [], []
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["existing", "existing", "typo", "trainer", "lightning", "malformed"]))
        if how == "malformed":
            o = draw(st.sampled_from(["model.params.lr", "=3", "a..b=1", "model.params.lr 3", ".x=1", "x.=1", "model params=1", "ä=1", "--x=1", "-1"]))
            overrides.append(o); names += [o, o.split("=")[0]]; continue
        key = draw(st.sampled_from(keys)) if how in ("existing", "typo") else None
        if how == "typo":
            parts = key.split("."); i = draw(st.integers(0, len(parts) - 1)); parts[i] = _typo(draw, parts[i]); key = ".".join(parts)
        if how == "trainer": key = draw(st.sampled_from(["trainer", "lightning.trainer"])) + "." + draw(st.sampled_from(TRAINER_KEYS))
        if how == "lightning":
            key = "lightning." + draw(st.sampled_from([*cli.LIGHTNING_KEYS, "posthoc_ema.sigma_rels", "posthoc_ema.every_n_steps", "logger",
                                                       "callbacks", "modelcheckpoint", "strategy", "callbacks.setup_callback", "unknown"]))
        value = draw(OVERRIDE_TEXT)
        if key.rsplit(".", 1)[-1] in BOUNDED and value.lstrip("-").isdigit(): value = str(_clamp(key, int(value)))
        overrides.append(f"{key}={value}"); names += _names_of(tuple(key.split(".")), value if value else None) + [f"{key}={value}"]
    return Case("overrides", ["train", "--config", name, "--run-dir", "{T}/run", *overrides], names)


# --- (c) argument vectors ---------------------------------------------------------------------------------------------
FILE_NAMES = {"study_bad.yaml": ["recipes.A"], "note.txt": ["not a mapping", "must be a mapping"]}
"What a refusal of a fixture file may name besides its path: the key inside it that is wrong."
GOOD = {"ckpt": "{F}/run/checkpoints/last.ckpt", "out": "{T}/out.png", "run": "{F}/run"}
"The fixture an option wants, drawn half the time so that some cases are accepted and run."
CKPTS = ["{F}/run/checkpoints/last.ckpt", "{F}/w.safetensors", "{F}/w_raw.safetensors", "{F}/missing.ckpt", "{F}/text.ckpt", "{F}/note.txt",
         "{F}/empty", "{F}/plain.safetensors", "", "-"]
OUTS = ["{T}/out.png", "{T}/sub/dir/out.png", "{T}/out.jpg", "{T}/out", "{F}/note.txt/out.png", "/proc/nope/out.png", "{T}/out.PNG",
        "{T}/w.safetensors", "{T}/p.ckpt", "{F}/empty"]
NUMS = st.one_of(st.integers(-3, 6).map(str), st.sampled_from(["abc", "1.5", "", "nan", "inf", "-0", "1e3", "0x10", " 2"]))
FLOATS_TXT = st.one_of(st.sampled_from(["0.05", "0.1", "0.01", "0.25", "0.3", "0", "-1", "nan", "inf", "-inf", "abc", "", "1e-9", "2.0", "1"]),
                       st.floats(-3, 10, allow_nan=False).map(repr))
OPTIONS = {
    "train": {"--config": st.sampled_from([*BASES, "no_such_config", "{F}/note.txt", "{F}/empty", "{F}/text.ckpt", "study_digits", ""]),
              "--run-dir": st.sampled_from(["{T}/run", "{F}/run", "{F}/note.txt", "{F}/empty"]),
              "--resume": st.sampled_from(CKPTS), "--no-judge": None, "--scale-lr": None, "--verbose": None,
              "--no-fast": st.sampled_from([*cli.NO_FAST, "all", "nope", ""]),
              "--allow-module": st.sampled_from(["mypkg", "os", "1bad", "", "a.b", "diffexplore"])},
    "sample": {"--ckpt": st.one_of(st.just(GOOD["ckpt"]), st.sampled_from(CKPTS)), "--n": NUMS, "--out": st.one_of(st.just(GOOD["out"]), st.sampled_from(OUTS)), "--cfg-scale": FLOATS_TXT,
               "--class-label": NUMS, "--sampler": st.sampled_from([*cli.SAMPLERS, "Euler", ""]), "--num-steps": NUMS, "--seed": NUMS,
               "--no-ema": None, "--allow-module": st.sampled_from(["mypkg", "1bad"])},
    "posthoc-ema": {"--run": st.one_of(st.just(GOOD["run"]), st.sampled_from(["{F}/run", "{F}/empty", "{F}/missing", "{F}/note.txt", "{T}"])),
                    "--sigma-rel": FLOATS_TXT, "--out": st.sampled_from([*OUTS, "{T}/p.ckpt", "{T}/p.ckpt"]), "--step": NUMS, "--allow-module": st.sampled_from(["mypkg", "1bad"])},
    "export": {"--ckpt": st.one_of(st.just(GOOD["ckpt"]), st.sampled_from(CKPTS)), "--out": st.sampled_from([*OUTS, "{T}/w.safetensors"]), "--no-ema": None, "--allow-module": st.sampled_from(["mypkg", "1bad"])},
    "study": {"--config": st.sampled_from(["study_digits", "digits", "no_such", "{F}/note.txt", "{F}/text.ckpt", "{F}/study_bad.yaml"]),
              "--out": st.sampled_from(["{T}/study", "{F}/note.txt", "{F}/empty"]), "--report-only": None},
}
REQUIRED = {"train": ("--config",), "sample": ("--ckpt", "--out"), "posthoc-ema": ("--run", "--sigma-rel", "--out"),
            "export": ("--ckpt", "--out"), "study": ("--config",)}

@st.composite
def argv_cases(draw):
    "A subcommand with its required options (each left out now and then), some optional ones, and now and then junk."
    cmd = draw(st.sampled_from([*OPTIONS, "bogus", ""]))
    if cmd not in OPTIONS: return Case("argv", [cmd, "--x"] if cmd else [], ["bogus", "COMMAND"])
    argv, names = [cmd], [cmd]
    for opt, values in OPTIONS[cmd].items():
        if draw(st.floats(0, 1)) < (0.9 if opt in REQUIRED[cmd] else 0.3):
            argv.append(opt); names += [opt, opt.lstrip("-"), opt.lstrip("-").replace("-", "_")]
            if values is not None:
                v = draw(values); names += FILE_NAMES.get(Path(v).name, [])
                if len(v) >= 3: names.append(v.replace("{F}/", "").replace("{T}/", ""))
                argv.append(v)
    if cmd == "train" and "--run-dir" not in argv: argv += ["--run-dir", "{T}/run"]
    if cmd == "sample" and "--num-steps" not in argv: argv += ["--num-steps", "4"]   # bounded: the run's 18 Heun steps otherwise
    if draw(st.integers(0, 9)) == 0:
        junk = draw(st.sampled_from(["--nope", "-x", "extra", "--n=3", "--help", "--out"]))
        at = draw(st.integers(1, len(argv))); argv.insert(at, junk); names.append(junk)
        if at + 1 < len(argv): names.append(argv[at + 1])   # the token it displaced (`--run-dir extra RUN`: RUN becomes a stray override)
    names += [o for o in REQUIRED[cmd] if o not in argv]   # argparse names a missing required option
    return Case("argv", argv, names)


def cases():
    "Every kind of case, in roughly equal shares."
    return st.one_of(yaml_cases(), override_cases(), argv_cases())


# --- running a case -----------------------------------------------------------------------------------------------------
class ReachedFirstStep(BaseException):
    "Raised in place of `trainer.fit`: every check of `train` passed (the bench does not train every accepted case)."


@contextlib.contextmanager
def stop_before_fit(active=True):
    "Within the block, `diffexplore train` stops where training would start (`cli._fit` raises `ReachedFirstStep`)."
    def _stop(*a, **k): raise ReachedFirstStep()
    fit = cli._fit
    if active: cli._fit = _stop
    try: yield
    finally: cli._fit = fit


def make_fixtures(folder) -> Path:
    """A real 2-step `digits` run with post-hoc EMA snapshots (`F/run`), its exports (`F/w.safetensors`, EMA;
    `F/w_raw.safetensors`), and files that are not what an option wants: text, an empty folder, plain safetensors."""
    F = Path(folder); (F / "empty").mkdir(parents=True, exist_ok=True)
    (F / "note.txt").write_text("not a config\n"); (F / "text.ckpt").write_text("not a checkpoint\n")
    (F / "study_bad.yaml").write_text(   # the refusal names `recipes.A` (FILE_NAMES)
        "base: digits\nseeds: [0]\nrecipes: {A: {overrides: [model.params.lr=1]}}\n")
    import torch; from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(F / "plain.safetensors"))
    for argv in (["train", "--config", "digits", "--run-dir", str(F / "run"), *REAL_RUN,
                  "lightning.posthoc_ema={sigma_rels: [0.05, 0.1], every_n_steps: 1}"],
                 ["export", "--ckpt", str(F / "run/checkpoints/last.ckpt"), "--out", str(F / "w.safetensors")],
                 ["export", "--ckpt", str(F / "run/checkpoints/last.ckpt"), "--out", str(F / "w_raw.safetensors"), "--no-ema"]):
        with _captured() as (out, err):
            rc = cli.main(argv)
        assert rc == 0, (argv, err.getvalue()[-2000:])
    return F


@contextlib.contextmanager
def _captured():
    "stdout and stderr into strings; Lightning's info lines (GPU available ...) off."
    out, err = io.StringIO(), io.StringIO()
    lg = logging.getLogger("lightning"); level = lg.level; lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): yield out, err
    finally: lg.setLevel(level)


def _fill(argv, F, T): return [a.replace("{F}", str(F)).replace("{T}", str(T)) for a in argv]


def invoke(argv, stop=True) -> dict:
    "Run `cli.main(argv)` in-process: {outcome-ish status, rc, stderr, traceback}."
    tb, rc, status = None, None, None
    with _captured() as (out, err), stop_before_fit(stop):
        try: rc = cli.main(argv)
        except ReachedFirstStep: status = "accepted"
        except SystemExit as e: rc = e.code
        except BaseException: status, tb = "traceback", traceback.format_exc()
    return {"status": status, "rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "traceback": tb}


def refusal_problem(stderr: str, names) -> str | None:
    """None when `stderr` is a clean one-line refusal naming one of `names` (see the module docstring), else what is wrong."""
    if "Traceback (most recent call last)" in stderr: return "a traceback in stderr"
    lines = [l for l in stderr.splitlines() if l.strip()]
    if not lines: return "no message"
    last = lines[-1]
    if any(l.startswith("usage:") for l in lines): return "argparse's usage lines before the error"
    prefix = next((p for p in ("diffexplore: error: ", *(f"diffexplore {c}: error: " for c in OPTIONS)) if last.startswith(p)), None)
    if prefix is None: return f"the last line is not `diffexplore: error: ...` (the message spans lines?): {last[:200]!r}"
    if not any(n.lower() in last.lower() for n in names): return f"the message names none of {names[:8]}: {last[:300]!r}"
    return None


def judge(case: Case, F, T, real=None) -> dict:
    """Run `case` with fixtures in `F` and a fresh folder `T`; returns {outcome, detail, argv}. An accepted `train` case
    is run again for real (2 steps) when `real` says so (default: about one in `RUN_EVERY`, by a hash of the argv)."""
    T = Path(T); T.mkdir(parents=True, exist_ok=True)
    for name, text in case.files.items(): (T / name).write_text(text)
    argv = _fill(case.argv, F, T)
    names = [n.replace("{T}", str(T)).replace("{F}", str(F)) for n in case.names] + ([str(T / n) for n in case.files])
    r = invoke(argv)
    if r["status"] == "accepted":
        if real is None: real = zlib.crc32((shlex.join(case.argv) + "".join(case.files.values())).encode()) % RUN_EVERY == 0
        if not real: return {"outcome": "accepted", "detail": "", "argv": argv}
        argv = [a if a != str(T / "run") else str(T / "run_real") for a in argv] + REAL_RUN
        r = invoke(argv, stop=False)
    if r["status"] == "traceback": return {"outcome": "traceback", "detail": r["traceback"], "argv": argv}
    if r["rc"] == 0: return {"outcome": "accepted" if "--help" in argv else "accepted-and-ran", "detail": "", "argv": argv}
    if r["rc"] == 2:
        why = refusal_problem(r["stderr"], names)
        return {"outcome": "refused-unclear" if why else "refused-one-line", "detail": why or r["stderr"].strip().splitlines()[-1], "argv": argv}
    return {"outcome": "other-exit", "detail": f"exit status {r['rc']}: {r['stderr'][-500:]}", "argv": argv}


# --- the campaign -----------------------------------------------------------------------------------------------------
def campaign(n: int, seed: int = 0, folder=None, log=None, fixtures=None) -> dict:
    """Judge `n` cases drawn by hypothesis (seeded) in `folder`, with `fixtures` (`make_fixtures`; made in `folder` when
    None); returns {counts: Counter((kind, outcome)), findings, seconds, cases}."""
    folder = Path(folder or tempfile.mkdtemp(prefix="fuzz_inputs_"))
    F = Path(fixtures) if fixtures else make_fixtures(folder / "fixtures")
    counts, findings, t0, done = Counter(), [], time.time(), [0]

    @hseed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(cases())
    def one(case):
        if done[0] >= n: return
        r = judge(case, F, folder / f"case{done[0]}"); done[0] += 1
        counts[case.kind, r["outcome"]] += 1
        if r["outcome"] not in OK: findings.append({"case": repr(case), **r})
        if log and done[0] % 100 == 0: log(f"{done[0]} cases, {time.time() - t0:.0f} s, {len(findings)} findings")

    while done[0] < n: one()
    return {"counts": counts, "findings": findings, "seconds": time.time() - t0, "cases": done[0]}


def table(counts: Counter) -> str:
    "Counts per input kind (rows) and outcome (columns), with totals."
    rows = ["| input | " + " | ".join(OUTCOMES) + " | total |", "|---|" + "---:|" * (len(OUTCOMES) + 1)]
    for k in (*KINDS, "all"):
        c = [sum(v for (kk, o), v in counts.items() if o == out and k in (kk, "all")) for out in OUTCOMES]
        rows.append(f"| {k} | " + " | ".join(map(str, c)) + f" | {sum(c)} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=2000, help="number of cases (default 2000)")
    ap.add_argument("--smoke", action="store_true", help="60 cases")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    ap.add_argument("--out", default=None, help="folder for the fixtures and the cases' files (default: a temporary one)")
    ap.add_argument("--fixtures", default=None, help="a folder `make_fixtures` filled before (default: made under --out)")
    ap.add_argument("--append", default=None, metavar="FILE", help=f"add the table to FILE under {HEADING!r}")
    a = ap.parse_args(argv)
    n = 60 if a.smoke else a.cases
    r = campaign(n, a.seed, a.out, log=lambda s: print(s, file=sys.stderr, flush=True), fixtures=a.fixtures)
    cmd = "python bench/fuzz_inputs.py " + (" ".join(argv if argv is not None else sys.argv[1:]))
    print(f"{r['cases']} cases in {r['seconds']:.0f} s ({datetime.date.today()}, {machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}): `{cmd.strip()}`\n")
    print(table(r["counts"]))
    for f in r["findings"]: print(f"\n### {f['outcome']}: {f['case']}\nargv: {shlex.join(f['argv'])}\n{f['detail']}")
    if a.append:
        c = [sum(v for (_, o), v in r["counts"].items() if o == out) for out in OUTCOMES]
        append_rows(a.append, HEADING, INTRO, HEADER, [f"| {datetime.date.today()} | {machine()} | `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
                                                      f"{cmd.strip()}` | {r['cases']} | " + " | ".join(map(str, c)) + f" | {r['seconds']:.0f} |"])
    bad = sum(v for (k, o), v in r["counts"].items() if o not in OK)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
