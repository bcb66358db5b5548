#!/usr/bin/env python
"""Soak: a long Fashion-MNIST training run with the live view, in a notebook executed headless (nbclient, a real
IPython kernel), measuring every few seconds whether GPU memory, host memory and throughput stay flat.

The script writes a small notebook and executes it: the kernel builds data, engine and Trainer as `diffexplore train`
does (`load_config`, `build_data`, `build_engine`, `make_trainer` with its checkpoints, sample grids and `ExcessLoss`),
adds a `LiveTrainingView` (its defaults, or `--view-kw`), displays it and trains with `fit_in_background` for
`--minutes` (`trainer.max_time`; `max_steps` off), as a user of `nbs/18_live_gpu.ipynb` would. Two samplers run
beside the training, every `--every` seconds: one in the kernel (global step, `torch.cuda.memory_allocated` and
`memory_reserved`, the kernel's RSS, the view's updates and grids), one in this process (the kernel's RSS and the
proportional set size of the kernel with its children, from /proc; the GPU memory `nvidia-smi` reports; this
client's RSS). After `--warmup-s` seconds of training, each memory series gets a least-squares slope (MiB per
minute), and the throughput of the first third of the rest is set against the last third.

    bash bench/gpu.sh soak OUT --minutes 8          # on the GPU machine (FASHION_MNIST_ROOT, DEADLINE as gpu.sh says)
    python bench/soak_gpu.py --out DIR [--minutes 8] [--every 5] [--warmup-s 60] [--deadline S] [--view-kw '{...}'] [--append FILE]
    python bench/soak_gpu.py --out DIR --smoke      # the quick check: configs/digits.yaml for 12 s (tests/test_soak_smoke.py, on the CPU)
    bash bench/gpu.sh soak OUT --smoke --minutes 1 --warmup-s 20    # the same on the GPU machine: its GPU, nvidia-smi, the wheels

FASHION_MNIST_ROOT, when set, becomes a Fashion-MNIST config's `data.params.root`. Writes DIR/soak_gpu.json (the
summary, with both samplers' rows) and DIR/soak_executed.ipynb; prints a markdown row; `--append FILE` adds it to FILE
under "Soak on the GPU". The run's checkpoints go to a temporary folder (`--run-dir` keeps them). When the fit raises
or the kernel dies (out of memory, say) after training started, the figures of the rows so far are still written,
with the error, and the script exits 1.
"""
import argparse, datetime, json, os, shlex, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path

ROOT, BENCH = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _machine import machine, append_rows  # noqa: E402

HEADING = "### Soak on the GPU: Fashion-MNIST with the live view"
INTRO = ("`bench/soak_gpu.py` (issue 15, item 8): `diffexplore train`'s trainer for `configs/fashion_mnist.yaml` (checkpoints,\n"
         "sample grids, `ExcessLoss`) with a `LiveTrainingView` (its defaults), fitted with `fit_in_background` in a notebook\n"
         "executed under nbclient, sampled every 5 s from inside the kernel and from outside. Slopes are least-squares fits\n"
         "over the samples after the first minute of training, in MiB per minute: `torch.cuda.memory_allocated` at a step's\n"
         "end, the caching allocator's reserved memory, the process's memory as nvidia-smi shows it; the kernel's RSS, the\n"
         "PSS of the kernel with its DataLoader and compile workers, nbclient's RSS. Throughput: images/s over the first and\n"
         "the last third of that window.\n")
HEADER = ("| date | machine | command | minutes trained | steps | img/s first / last third | GPU MiB/min allocated at step end / reserved / nvidia-smi "
          "| host MiB/min kernel RSS / with children (PSS) / client RSS | view updates | grids drawn / skipped |\n"
          "|---|---|---|---:|---:|---:|---|---|---:|---|")

DEFAULTS = dict(config="fashion_mnist", minutes=8.0, every=5.0, warmup_s=60.0)
SMOKE = dict(config="digits", minutes=0.2, every=0.5, warmup_s=3.0, view_kw={"sample_every_n_steps": 5},
             overrides=["data.params.batch_size=32", "lightning.checkpoint_every_n_steps=20", "lightning.samples_per_class=1"])


# --- readings (no torch/lightning at module level: the kernel imports this module, and the client stays small)
def max_time(seconds: int) -> str:
    "`trainer.max_time` for `seconds` as Lightning's Timer reads it: DD:HH:MM:SS, two digits each after the days (480 → '00:00:08:00')."
    if seconds < 0: raise ValueError(f"seconds must be >= 0; got seconds={seconds}")
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

def _proc_kib(path: str, key: str) -> float | None:
    "The value in kB of `key:` in /proc file `path` (None when the process or the key is gone)."
    try:
        for line in open(path):
            if line.startswith(key + ":"): return float(line.split()[1])
    except OSError: pass
    return None

def rss_mib(pid="self") -> float | None:
    "Resident set size of process `pid` in MiB (`VmRSS` of /proc/PID/status); None when it is gone."
    kib = _proc_kib(f"/proc/{pid}/status", "VmRSS")
    return None if kib is None else kib / 1024

def descendants(pid) -> list[int]:
    "The children of `pid`, their children and so on (/proc/PID/task/*/children)."
    out, todo = [], [int(pid)]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try: kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError: continue
            out += kids; todo += kids
    return out

def tree_pss_mib(pid) -> float | None:
    "Proportional set size (MiB, /proc/PID/smaps_rollup `Pss`) of `pid` and its descendants (DataLoader and compile workers): shared pages counted once."
    vals = [_proc_kib(f"/proc/{p}/smaps_rollup", "Pss") for p in [int(pid), *descendants(pid)]]
    return None if vals[0] is None else sum(v for v in vals if v is not None) / 1024

def nvidia_smi_mib(pid) -> tuple[float, str] | None:
    """GPU memory in MiB as nvidia-smi reports it: (used by process `pid`, "process"), or where nvidia-smi does not see
    that pid (a container's own pid namespace) (memory.used of the first GPU in CUDA_VISIBLE_DEVICES, "gpu"); None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None: return None
    q = lambda *a: subprocess.run(["nvidia-smi", *a, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20).stdout
    try:
        apps = [line.split(",") for line in q("--query-compute-apps=pid,used_memory").splitlines() if line.strip()]
        mine = [float(m) for p, m in apps if p.strip() == str(pid)]
        if mine: return sum(mine), "process"
        first = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
        return float(q("--query-gpu=memory.used", "-i", first if first.isdigit() else "0").split()[0]), "gpu"
    except (OSError, subprocess.SubprocessError, ValueError, IndexError): return None

def kernel_reading(trainer, view, handle, step_end=None) -> dict:
    """What the kernel's sampler records: the fit's step and state, the kernel's RSS, the view's counters, and on a GPU the
    caching allocator's MiB now (mid-step, activations included) and at the last step end that `step_end.mib` holds."""
    import torch
    r = dict(step=trainer.global_step, training=bool(handle.started and not handle.done), rss_mib=rss_mib(),
             pushes=view.pushes, grids=view.samples_drawn, grids_skipped=view.samples_skipped, view_errors=view.errors)
    if getattr(step_end, "mib", None) is not None: r["gpu_alloc_step_end_mib"] = step_end.mib
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        r.update(gpu_alloc_mib=torch.cuda.memory_allocated() / 2**20, gpu_reserved_mib=torch.cuda.memory_reserved() / 2**20,
                 gpu_peak_reserved_mib=torch.cuda.max_memory_reserved() / 2**20)
    return r

def client_reading(pid_file: Path) -> dict:
    "What this process's sampler records: its own RSS, and once the kernel wrote its pid, the kernel's RSS, its tree's PSS and nvidia-smi's MiB."
    r = dict(client_rss_mib=rss_mib())
    try: pid = int(pid_file.read_text())
    except (OSError, ValueError): return r
    r.update(kernel_rss_mib=rss_mib(pid), kernel_tree_pss_mib=tree_pss_mib(pid))
    g = nvidia_smi_mib(pid)
    if g is not None: r.update(nvidia_smi_mib=g[0], nvidia_smi_source=g[1])
    return r


class Sampler:
    """Every `every_s` seconds (> 0) on a daemon thread, append `{"t": time.time(), **read()}` as a JSON line to `path`
    (flushed: a run cut short keeps its rows), until `stop()`, which takes a last reading. A reading that raises is
    written as `{"t", "error"}` and sampling goes on. Raises `ValueError` for `every_s` <= 0."""
    def __init__(self, path, every_s: float, read):
        if not every_s > 0: raise ValueError(f"every_s must be > 0; got every_s={every_s!r}")
        self.path, self.every_s, self.read = Path(path), float(every_s), read
        self._stop, self._thread = threading.Event(), threading.Thread(target=self._run, daemon=True, name="soak-sampler")

    def start(self): self._thread.start(); return self

    def stop(self): self._stop.set(); self._thread.join()

    def _row(self) -> str:
        try: row = {"t": time.time(), **self.read()}
        except Exception as e: row = {"t": time.time(), "error": repr(e)}
        return json.dumps(row) + "\n"

    def _run(self):
        with open(self.path, "a") as f:
            while True:
                f.write(self._row()); f.flush()
                if self._stop.wait(self.every_s): break
            f.write(self._row())


# --- the analysis
def slope_per_min(ts, ys) -> float | None:
    "Least-squares slope of `ys` over `ts` (seconds), in units per minute; None for fewer than 3 points or no spread in time."
    pts = [(t, y) for t, y in zip(ts, ys) if y is not None]
    if len(pts) < 3: return None
    mt, my = sum(t for t, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    var = sum((t - mt) ** 2 for t, _ in pts)
    return None if var == 0 else 60 * sum((t - mt) * (y - my) for t, y in pts) / var

def read_rows(path) -> list[dict]:
    "The JSON lines of a sampler's file (a torn last line, from a kill mid-write, is dropped)."
    out = []
    for line in Path(path).read_text().splitlines() if Path(path).exists() else []:
        try: out.append(json.loads(line))
        except json.JSONDecodeError: pass
    return out

def throughput(rows, t0: float, t1: float, batch: int) -> float | None:
    "Images/s between the first kernel row at or after `t0` and the last at or before `t1` (None with fewer than two)."
    inside = [r for r in rows if t0 <= r["t"] <= t1 and "step" in r]
    if len(inside) < 2 or inside[-1]["t"] == inside[0]["t"]: return None
    return batch * (inside[-1]["step"] - inside[0]["step"]) / (inside[-1]["t"] - inside[0]["t"])

def summarize(kernel_rows: list[dict], client_rows: list[dict], warmup_s: float, batch: int) -> dict:
    """The soak's figures from both samplers' rows: the training window (from the first row past step 0 plus `warmup_s`,
    to the last row before the last step, while the fit was still stepping: the fit's end-of-training work, a final
    sample grid, checkpoint and the allocator's release, is left out; on the H100 the first row at the last step already
    showed 600 of 3,304 MiB reserved), each memory series' slope (MiB/min) and range over it, images/s over its first
    and last third, and the view's updates. Raises `ValueError` when the window holds fewer than 3 kernel rows."""
    k = [r for r in kernel_rows if "step" in r]
    started, training = [r["t"] for r in k if r["step"] > 0], [r for r in k if r.get("training")]
    if not started or not training: raise ValueError(f"no training rows in the kernel sampler's {len(kernel_rows)} rows")
    last_step = max(r["step"] for r in training)
    t0, t1 = started[0] + warmup_s, max((r["t"] for r in training if r["step"] < last_step), default=started[0])
    win = [r for r in k if t0 <= r["t"] <= t1]
    if len(win) < 3: raise ValueError(f"{len(win)} kernel rows after warmup_s={warmup_s!r}; train longer or sample more often")
    cwin = [r for r in client_rows if t0 <= r["t"] <= t1]
    series = {"gpu_alloc_step_end_mib": win, "gpu_alloc_mib": win, "gpu_reserved_mib": win, "rss_mib": win,
              "nvidia_smi_mib": cwin, "kernel_rss_mib": cwin, "kernel_tree_pss_mib": cwin, "client_rss_mib": cwin}
    mem = {}
    for name, rows in series.items():
        ys = [r.get(name) for r in rows]
        if all(y is None for y in ys): continue
        vals = [y for y in ys if y is not None]
        mem[name] = dict(slope_mib_per_min=slope_per_min([r["t"] for r in rows], ys), first=round(vals[0], 1), last=round(vals[-1], 1),
                         min=round(min(vals), 1), max=round(max(vals), 1), n=len(vals))
    third = (t1 - t0) / 3
    first, last = throughput(k, t0, t0 + third, batch), throughput(k, t1 - third, t1, batch)
    return dict(window_s=round(t1 - t0, 1), warmup_s=warmup_s, samples_in_window=len(win), memory=mem,
                img_s_first_third=first, img_s_last_third=last, img_s_window=throughput(k, t0, t1, batch),
                last_over_first=None if not (first and last) else last / first,
                steps=k[-1]["step"], view_updates=k[-1]["pushes"], view_updates_in_window=win[-1]["pushes"] - win[0]["pushes"],
                grids=k[-1]["grids"], grids_skipped=k[-1]["grids_skipped"], view_errors=k[-1]["view_errors"],
                nvidia_smi_source=next((r["nvidia_smi_source"] for r in cwin if "nvidia_smi_source" in r), None))


# --- the notebook the kernel runs (P: the parameters this script passes in SOAK_PARAMS)
CELLS = [
    "import json, logging, os, re, time, warnings\nfrom pathlib import Path\nimport torch\nimport lightning.pytorch as pl\n"
    "from IPython.display import display",
    "from diffexplore.cli import QUIETED, load_config, build_data, build_engine, check_compatible, make_trainer, learning_rate\n"
    "from diffexplore.live import LiveTrainingView, fit_in_background\nfrom soak_gpu import Sampler, kernel_reading, max_time",
    "logging.getLogger('lightning.pytorch.utilities.rank_zero').setLevel(logging.WARNING)\n"
    "for text in QUIETED: warnings.filterwarnings('ignore', message='.*' + re.escape(text))\n"
    "P = json.loads(os.environ['SOAK_PARAMS'])\nPath(P['pid_file']).write_text(str(os.getpid()))",
    "# data and engine as `diffexplore train` builds them (sigma_data: auto measured on the data)\n"
    "cfg = load_config(P['config'], P['overrides'])\npl.seed_everything(int(cfg.seed), verbose=False)\n"
    "dm = build_data(cfg)\nengine = build_engine(cfg, dm)\ncheck_compatible(engine, dm)",
    "class AllocatedAtStepEnd(pl.Callback):\n"
    "    \"torch.cuda.memory_allocated() in MiB at the end of every 10th step: between steps it holds weights, gradients, optimizer and EMA state, and anything leaked.\"\n"
    "    mib = None\n"
    "    def on_train_batch_end(self, trainer, pl_module, *args):\n"
    "        if pl_module.device.type == 'cuda' and trainer.global_step % 10 == 0: self.mib = torch.cuda.memory_allocated(pl_module.device) / 2**20",
    "# the trainer of `diffexplore train` (checkpoints, sample grids, ExcessLoss), for the time left, with the view\n"
    "max_time_s = int(min(60 * P['minutes'], P['deadline_epoch'] - time.time() - P['reserve_s']))\n"
    "assert max_time_s > 0, f'no time left to train: {max_time_s} s'\n"
    "cfg = load_config(P['config'], [*P['overrides'], 'trainer.max_time=' + max_time(max_time_s), 'trainer.max_steps=-1', 'trainer.enable_progress_bar=false'])\n"
    "view, step_end = LiveTrainingView(**P['view_kw']), AllocatedAtStepEnd()\n"
    "trainer = make_trainer(cfg, Path(P['run_dir']), num_classes=getattr(dm, 'num_classes', None), extra_callbacks=[view, step_end], engine=engine)\n"
    "info = dict(max_time_s=max_time_s, batch=dm.batch_size, **learning_rate(cfg, engine, trainer, dm), torch=torch.__version__, lightning=pl.__version__,\n"
    "            device=torch.cuda.get_device_name() if torch.cuda.is_available() else f'cpu, {torch.get_num_threads()} threads')\n"
    "Path(P['kernel_results']).write_text(json.dumps(info, indent=1))   # completed after the fit; what a dead kernel leaves",
    "display(view)\nt_fit = time.time()\nhandle = fit_in_background(trainer, engine, datamodule=dm)\n"
    "sampler = Sampler(P['kernel_rows'], P['every_s'], lambda: kernel_reading(trainer, view, handle, step_end)).start()",
    "if not handle.join(timeout=max(P['deadline_epoch'] - time.time() - 15, 1)): handle.stop(); handle.join(30)\n"
    "sampler.stop()\n"
    "res = dict(info, steps=trainer.global_step, fit_seconds=round(time.time() - t_fit, 1),\n"
    "           exception=None if handle.exception is None else repr(handle.exception), done=handle.done,\n"
    "           view=dict(updates=view.pushes, grids=view.samples_drawn, grids_skipped=view.samples_skipped, errors=view.errors,\n"
    "                     grid_seconds=[round(s, 3) for s in view.sample_seconds]),\n"
    "           checkpoints=sorted(p.name for p in Path(P['run_dir'], 'checkpoints').glob('*.ckpt')))\n"
    "Path(P['kernel_results']).write_text(json.dumps(res, indent=1))\nres",
]

def soak_notebook():
    "The notebook of `CELLS` (nbformat 4, python3 kernel)."
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, help="training time (trainer.max_time), cut to what --deadline leaves; default 8")
    ap.add_argument("--every", type=float, help="seconds between samples; default 5")
    ap.add_argument("--warmup-s", type=float, help="seconds of training left out of the slopes (compilation, first epoch); default 60")
    ap.add_argument("--deadline", type=float, default=None, help="seconds from now by which this script must end (the fit is shortened to fit)")
    ap.add_argument("--reserve-s", type=float, default=30.0, help="seconds kept after the fit for its teardown, the results and the kernel's shutdown")
    ap.add_argument("--config", help="a config file or a shipped config's name; default fashion_mnist"); ap.add_argument("--override", action="append", default=[], help="dotted key=value, repeatable")
    ap.add_argument("--view-kw", default="{}", help="JSON LiveTrainingView arguments, e.g. '{\"min_interval_s\": 5}'")
    ap.add_argument("--run-dir", default=None, help="keep the run's checkpoints here (default: a temporary folder)")
    ap.add_argument("--smoke", action="store_true", help="the quick check: by default configs/digits.yaml (batch 32) for 12 s, sampled every 0.5 s, "
                    "a grid due every 5 steps (on the GPU where there is one)")
    ap.add_argument("--append", metavar="FILE")
    args = ap.parse_args(argv)
    for name, default in (SMOKE if args.smoke else DEFAULTS).items():
        if name in DEFAULTS and getattr(args, name) is None: setattr(args, name, default)
    for name in ("minutes", "every"):
        if not getattr(args, name) > 0: ap.error(f"--{name} must be > 0; got --{name}={getattr(args, name)!r}")
    if not args.warmup_s >= 0: ap.error(f"--warmup-s must be >= 0; got --warmup-s={args.warmup_s!r}")
    try: args.view_kw_dict = json.loads(args.view_kw); assert isinstance(args.view_kw_dict, dict)
    except (json.JSONDecodeError, AssertionError): ap.error(f"--view-kw must be a JSON object; got --view-kw={args.view_kw!r}")
    if args.smoke and not args.view_kw_dict: args.view_kw_dict = SMOKE["view_kw"]
    return args


def _execute(nb, out: Path, params: dict, timeout: float) -> str | None:
    """Execute `nb` in a fresh kernel with `params` in SOAK_PARAMS and this checkout and bench/ on PYTHONPATH; save it
    executed in `out`. Returns None, or one line saying why the notebook stopped (a cell's error, a timeout, the kernel's death)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    os.environ.update(SOAK_PARAMS=json.dumps(params), PYTHONPATH=os.pathsep.join([str(ROOT), str(BENCH), *filter(None, [os.environ.get("PYTHONPATH")])]))
    try: NotebookClient(nb, timeout=int(timeout), kernel_name="python3", resources={"metadata": {"path": str(out)}}).execute()
    except CellExecutionError as e: return f"{e.ename}: {e.evalue} (the cell and its traceback: {out / 'soak_executed.ipynb'})"
    except (CellTimeoutError, DeadKernelError) as e: return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        nb.metadata.pop("widgets", None)   # the view's widget state (MBs of figure data) stays out of the saved copy
        nbformat.write(nb, out / "soak_executed.ipynb")


def main(argv=None):
    t_start = time.time()
    args = _args(argv)
    out = Path(args.out).resolve(); out.mkdir(parents=True, exist_ok=True)
    cfg = Path(args.config)
    config = str(cfg.resolve()) if cfg.exists() else args.config
    overrides = (SMOKE["overrides"] if args.smoke else []) + args.override
    if os.environ.get("FASHION_MNIST_ROOT") and "fashion" in config: overrides = [f"data.params.root={os.environ['FASHION_MNIST_ROOT']}", *overrides]
    files = {k: out / f"soak_{k}" for k in ("kernel_rows.jsonl", "client_rows.jsonl", "kernel_results.json", "kernel.pid")}
    for f in files.values(): f.unlink(missing_ok=True)
    deadline = t_start + (args.deadline if args.deadline else 60 * args.minutes + 600)
    tmp = tempfile.TemporaryDirectory(prefix="soak_run_") if args.run_dir is None else None
    params = dict(config=config, overrides=overrides, minutes=args.minutes, every_s=args.every, view_kw=args.view_kw_dict,
                  deadline_epoch=deadline, reserve_s=args.reserve_s, run_dir=args.run_dir or tmp.name, pid_file=str(files["kernel.pid"]),
                  kernel_rows=str(files["kernel_rows.jsonl"]), kernel_results=str(files["kernel_results.json"]))
    client = Sampler(files["client_rows.jsonl"], args.every, lambda: client_reading(files["kernel.pid"])).start()
    try: failed = _execute(soak_notebook(), out, params, timeout=max(deadline - time.time(), 60))
    finally:
        client.stop()
        if tmp is not None: tmp.cleanup()
    if not files["kernel_results.json"].exists(): sys.exit(f"soak_gpu: the notebook stopped before training: {failed}")
    kernel = json.loads(files["kernel_results.json"].read_text())
    k_rows, c_rows = read_rows(files["kernel_rows.jsonl"]), read_rows(files["client_rows.jsonl"])
    res = dict(command=_command(argv), config=config, overrides=overrides, minutes_asked=args.minutes, every_s=args.every, machine=machine(),
               kernel=kernel, notebook_error=failed)
    try: res.update(summarize(k_rows, c_rows, args.warmup_s, kernel["batch"]))
    except ValueError as e: res["summary_error"] = str(e)
    res.update(script_seconds=round(time.time() - t_start, 1), kernel_rows=k_rows, client_rows=c_rows)
    (out / "soak_gpu.json").write_text(json.dumps(res, indent=1))
    for f in files.values(): f.unlink(missing_ok=True)   # their content is in soak_gpu.json
    if "summary_error" in res: sys.exit(f"soak_gpu: no figures: {res['summary_error']} (notebook: {failed or 'ran'}; the rows: {out / 'soak_gpu.json'})")
    line = row(res)
    print(json.dumps({k: v for k, v in res.items() if not k.endswith("_rows")}, indent=1)); print(HEADER); print(line)
    if args.append: append_rows(args.append, HEADING, INTRO, HEADER, [line])
    if failed or kernel.get("exception"): print(f"soak_gpu: {failed or 'the fit raised ' + kernel['exception']}", file=sys.stderr); return 1
    return 0


def _command(argv) -> str:
    "This run's command line, with --out's folder as OUT."
    a = list(sys.argv[1:] if argv is None else argv)
    a = ["OUT" if i and a[i - 1] == "--out" else (x.replace(x.split("=", 1)[1], "OUT") if x.startswith("--out=") else x) for i, x in enumerate(a)]
    return "python bench/soak_gpu.py " + " ".join(shlex.quote(x) for x in a)


def row(res: dict) -> str:
    "The markdown row of a soak's summary (`HEADER`'s columns)."
    f = lambda x, d=1: "—" if x is None else f"{x:+.{d}f}"
    m = {k: v["slope_mib_per_min"] for k, v in res["memory"].items()}
    img = lambda x: "—" if x is None else f"{x:,.0f}"
    k = res["kernel"]
    return (f"| {datetime.date.today()} | {k['device']}; {res['machine']} | `{res['command']}` | {k['max_time_s'] / 60:.2f} | {res['steps']:,} "
            f"| {img(res['img_s_first_third'])} / {img(res['img_s_last_third'])} ({f(res['last_over_first'] and 100 * (res['last_over_first'] - 1))} %) "
            f"| {f(m.get('gpu_alloc_step_end_mib'), 2)} / {f(m.get('gpu_reserved_mib'), 2)} / {f(m.get('nvidia_smi_mib'), 2)} "
            f"| {f(m.get('kernel_rss_mib'))} / {f(m.get('kernel_tree_pss_mib'))} / {f(m.get('client_rss_mib'))} "
            f"| {res['view_updates']} | {res['grids']} / {res['grids_skipped']} |")


if __name__ == "__main__":
    sys.exit(main())
