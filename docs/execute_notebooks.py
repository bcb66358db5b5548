"""Re-execute the notebooks in place and keep the outputs that teach: the book's pictures and values.

    python docs/execute_notebooks.py                      # every notebook in nbs/ (about 6 min on 2 cores)
    python docs/execute_notebooks.py 01_scalings 13_judge  # some of them (names with or without .ipynb)

Run it whenever the code a notebook shows changes, then commit the notebooks. What it does:
- runs each notebook top to bottom in a fresh kernel (cwd `nbs/`), two at a time; `#| eval: false` cells are
  skipped, as `nbdev_test` skips them, and keep no output;
- plotly figures become PNG images (plotly's `png` renderer: kaleido driving Debian's chromium, one browser per
  kernel), matplotlib figures PNGs (the inline backend), so a git host and the docs site show them;
- drops what does not teach or does not survive: widget views and saved widget state, stderr (library warnings,
  progress bars); then runs `nbdev_clean` (execution counts, metadata);
- fails (exit status 1, naming the notebook and cell) on any cell error, and on a notebook left without a picture.
Needs the dev install (`pip install -e ".[dev]"`: nbclient, kaleido, matplotlib) and Debian's chromium
(`apt-get install chromium`); it says so in one line when either is missing.
"""
from __future__ import annotations

import argparse, json, os, re, shutil, subprocess, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
CHROMIUM = os.environ.get("BROWSER_PATH", "/usr/bin/chromium")
EVAL_FALSE = re.compile(r"^\s*#\s*\|\s*eval\s*:\s*false\s*$", re.M)
WIDGET_VIEW, WIDGET_STATE = "application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")

# Runs in every kernel before the notebook's first cell (an IPython startup file in a private IPYTHONDIR).
STARTUP = """
import plotly.io as _pio, kaleido as _kaleido, atexit as _atexit
_pio.renderers.default = "png"           # plotly figures display as PNG images
_kaleido.start_sync_server(silence_warnings=True)   # one chromium per kernel, reused by every figure
_atexit.register(_kaleido.stop_sync_server)
import matplotlib as _mpl
_mpl.rcParams["figure.dpi"] = 80
"""


def missing_tools() -> str | None:
    "Why this machine cannot run the book, or None."
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no browser at {CHROMIUM} for plotly's PNG export: apt-get install chromium (or set BROWSER_PATH)"
    for mod in ("nbclient", "kaleido", "matplotlib"):
        try: __import__(mod)
        except ImportError: return f"{mod} is not installed: pip install -e '.[dev]' (with torch pinned, see README)"
    return None


def notebook_paths(names: list[str]) -> list[Path]:
    "The notebooks to run: all of nbs/*.ipynb (not `_scratch` ones) or those named. Raises SystemExit for an unknown name."
    if not names: return sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith("_"))
    paths = [NBS / (n if n.endswith(".ipynb") else n + ".ipynb") for n in (Path(n).name for n in names)]
    bad = [p.name for p in paths if not p.is_file()]
    if bad: raise SystemExit(f"no such notebook in nbs/: {', '.join(bad)}")
    return paths


def keep_teaching_outputs(nb: dict) -> dict:
    "Drop widget views and state and stderr streams from an executed notebook (a parsed .ipynb dict), in place."
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb["cells"]:
        if cell["cell_type"] != "code": continue
        cell["outputs"] = [o for o in cell.get("outputs", [])
                           if not (o["output_type"] == "stream" and o.get("name") == "stderr")
                           and WIDGET_VIEW not in o.get("data", {}) and WIDGET_STATE not in o.get("data", {})]
    return nb


def image_count(nb: dict) -> int:
    "How many image outputs (PNG, JPEG, SVG) the notebook's code cells hold."
    return sum(any(t in o.get("data", {}) for t in IMAGE_TYPES)
               for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))


def execute(path: Path, ipython_dir: str, timeout: int) -> tuple[str, float, int, str | None]:
    "Run one notebook in place. Returns (name, seconds, images, error or None); the file is written only on success."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    class BookClient(NotebookClient):
        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            if cell.cell_type == "code" and EVAL_FALSE.search(cell.source):
                cell.outputs = []; return cell
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)

    os.environ["IPYTHONDIR"] = ipython_dir
    t0 = time.time()
    nb = nbformat.read(path, as_version=4)
    try: BookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NBS)}}).execute()
    except CellExecutionError as e:
        return path.name, time.time() - t0, 0, str(e).strip().splitlines()[-1][:300]
    d = keep_teaching_outputs(json.loads(nbformat.writes(nb)))
    path.write_text(json.dumps(d, indent=1, ensure_ascii=False) + "\n")
    return path.name, time.time() - t0, image_count(d), None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebooks to run (default: all of nbs/)")
    ap.add_argument("--jobs", type=int, default=2, help="notebooks run at once (default 2)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run (default 1800)")
    args = ap.parse_args(argv)
    why = missing_tools()
    if why: print(f"execute_notebooks: {why}", file=sys.stderr); return 1
    paths = notebook_paths(args.names)
    os.environ.setdefault("BROWSER_PATH", CHROMIUM)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    failed, t0 = [], time.time()
    with tempfile.TemporaryDirectory() as ipy:
        Path(ipy, "profile_default", "startup").mkdir(parents=True)
        Path(ipy, "profile_default", "startup", "00_book.py").write_text(STARTUP)
        with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futs = [pool.submit(execute, p, ipy, args.timeout) for p in paths]
            for f in futs:
                name, secs, images, err = f.result()
                if err: failed.append(f"{name}: {err}")
                elif images == 0: failed.append(f"{name}: ran, but shows no picture")
                print(f"{name:32s} {secs:6.1f} s  {images:3d} images  {'FAILED: ' + err if err else 'ok'}", flush=True)
    for p in paths: subprocess.run(["nbdev_clean", "--fname", str(p)], cwd=ROOT, check=True)
    print(f"{len(paths)} notebooks in {time.time() - t0:.0f} s; {len(failed)} failed")
    for f in failed: print("FAILED", f, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
