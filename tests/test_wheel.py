"""The wheel works on its own: built from the checkout, installed into a fresh venv, run from a folder outside it.

`pip wheel --no-deps . -w DIR`, then `python -m venv --system-site-packages VENV` (torch and the other
requirements come from this interpreter; nothing is downloaded) and `VENV/bin/pip install --no-deps WHEEL`.
From a temp folder, `diffexplore` must import from the venv (not this checkout, not the editable install), the
wheel must hold every `configs/**/*.yaml` under `diffexplore/configs/`, and `VENV/bin/diffexplore train --config digits`
(a shipped config, found through `importlib.resources`) must train 3 steps and write its run directory.
"""
import json, os, subprocess, sys, zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, timeout=600, **env):
    "Run `cmd`; its output in the assertion message when it fails."
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env})
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_wheel_in_fresh_venv(tmp_path):
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", REPO, "-w", wheels], cwd=tmp_path, PIP_DISABLE_PIP_VERSION_CHECK="1")
    (whl,) = wheels.glob("diffexplore-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    shipped = {"diffexplore/" + p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert "diffexplore/configs/digits.yaml" in shipped and shipped <= names, sorted(shipped - names)

    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], cwd=tmp_path)
    py = venv / "bin" / "python"
    _run([py, "-m", "pip", "install", "-q", "--no-deps", whl], cwd=tmp_path, PIP_DISABLE_PIP_VERSION_CHECK="1")
    where = json.loads(_run([py, "-c", "import json, diffexplore; from importlib.resources import files; "
                             "print(json.dumps([diffexplore.__file__, str(files('diffexplore.configs') / 'digits.yaml')]))"], cwd=work))
    site = str(venv.resolve())
    assert all(p.startswith(site) for p in where), f"diffexplore imported from {where}, not from the venv {site}"

    run_dir = work / "runs" / "digits"
    _run([venv / "bin" / "diffexplore", "train", "--config", "digits", "--run-dir", run_dir, "trainer.max_steps=3",
          "lightning.judge_samples=0", "lightning.samples_per_class=1"], cwd=work, OMP_NUM_THREADS="1")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 3 and (run_dir / "checkpoints" / "last.ckpt").is_file(), summary
