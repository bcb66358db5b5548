#!/usr/bin/env python
"""The live view's cost during GPU training: execute `nbs/18_live_gpu.ipynb` headless on a GPU (nbclient, a real IPython kernel), every cell
including the `#| eval: false` GPU cells, and collect what its last cell measured: the live run's view updates and
the throughput with and without `LiveTrainingView` (see the notebook's section 3).

    bash bench/gpu.sh live $OUT [--blocks 20] [--view-kw '{"min_interval_s": 1}']
    (inside gpu.sh's environment: FASHION_MNIST_ROOT=/usr/share/datasets/fashion-mnist python bench/live_view_gpu.py --out DIR [--blocks 10] [--block 200] [--warmup 100])

Writes DIR/live_view_gpu.json (the notebook's results) and DIR/18_live_gpu_executed.ipynb; prints a markdown row.
"""
import argparse, json, os, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True); ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--block", type=int, default=200); ap.add_argument("--warmup", type=int, default=100); ap.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    ap.add_argument("--view-kw", default="{}", help='JSON LiveTrainingView arguments for the GPU run, e.g. \'{"min_interval_s": 5}\'')
    args = ap.parse_args(argv)
    import nbformat
    from nbclient import NotebookClient
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    results = out / "live_view_gpu.json"
    os.environ.update(LIVE_GPU_BLOCKS=str(args.blocks), LIVE_GPU_BLOCK=str(args.block), LIVE_GPU_WARMUP=str(args.warmup), LIVE_RESULTS=str(results.resolve()), LIVE_GPU_VIEW_KW=args.view_kw,
                      PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    nb = nbformat.read(ROOT / "nbs" / "18_live_gpu.ipynb", as_version=4)
    t0 = time.perf_counter()
    try:
        NotebookClient(nb, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "nbs")}}).execute()
    finally:
        nbformat.write(nb, out / "18_live_gpu_executed.ipynb")
    res = json.loads(results.read_text())
    res["notebook_seconds"] = round(time.perf_counter() - t0, 1)
    results.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    c = res
    print(f"| {time.strftime('%Y-%m-%d')} | {c['gpu']}; {machine()} | `python bench/live_view_gpu.py --out DIR --blocks {args.blocks} --block {args.block} --warmup {args.warmup}{'' if args.view_kw.strip() == '{}' else ' --view-kw ' + repr(args.view_kw)}` "
          f"| {c['batch']} | {c['steps']} | {c['img_s_off']:,.0f} / {c['img_s_on']:,.0f} | {c['cost_pct']:+.2f} % (mean {c['cost_pct_mean']:+.2f} %) "
          f"| {c['hook_ms_per_step']:.3f} | {c['view_updates']} | {c['sample_grids']} |")


if __name__ == "__main__":
    main()
