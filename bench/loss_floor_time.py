"""Time of the per-σ-bucket loss floor (`diffexplore.floor.bucket_floor`) for a main job's settings.

The floor of the training objective in each of the engine's σ buckets (`DEFAULT_SIGMA_EDGES`): class-conditional
D* with label dropout (sgm's `ucg_rate`) 0.1, `EDMSampling(-1.2, 1.2)`, `EDMWeighting(σ_data)` with σ_data the
training images' standard deviation (0.7521 for the digits), as in `configs/digits.yaml`. Targets: the 1,438 digits
with 2,000 draws per bucket in ≤ 30 s on 2 CPU cores; the 60,000 Fashion-MNIST images on one H200 in ≤ 60 s.
Prints one markdown table row (with each bucket's floor ± standard error); `--append FILE` also adds it to FILE
under the heading "Loss floor" (created, with the table header, if missing).

    python bench/loss_floor_time.py [--n-per-bucket 2000] [--append BENCHMARKS.md]
    python bench/loss_floor_time.py --data fashion_mnist --device cuda --append BENCHMARKS.md
    python bench/loss_floor_time.py --data fashion_mnist --subset 2000      # the CPU smoke version
"""
import argparse, datetime, os, shlex, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench this checkout's diffexplore
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, append_rows  # noqa: E402

HEADING = "## Loss floor"
HEADER = ("| date | machine | command | data | device | draws per bucket | seconds | target s | load (1 min) | floor ± stderr per σ bucket |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
INTRO = ("`bucket_floor`: the exact optimal denoiser's l2 loss per σ bucket, the floor of the training objective, for the\n"
         "main job's settings: class labels with dropout 0.1, `EDMSampling(-1.2, 1.2)`, `EDMWeighting(σ_data = the data's\n"
         "std)`, the engine's buckets (0, 0.01), [0.01, 0.1), [0.1, 1), [1, 10), [10, ∞). Seconds: the `bucket_floor` call\n"
         "alone (data loaded before). Targets: digits, 2,000 draws per bucket, ≤ 30 s on 2 CPU cores; Fashion-MNIST\n"
         "(60,000 images), ≤ 60 s on one H200. The load column is the 1-minute load average when the run ended.\n\n"
         "    python bench/loss_floor_time.py --append BENCHMARKS.md\n"
         "    python bench/loss_floor_time.py --data fashion_mnist --device cuda --append BENCHMARKS.md\n")
TARGET_S = {("digits", "cpu"): 30, ("fashion_mnist", "cuda"): 60}


def load(data: str, subset: int | None, root: str | None = None):
    "(training images, labels) of `data`, the first `subset` of them if given; Fashion-MNIST from `root` (default Debian's)."
    from diffexplore.data import DigitsDataModule, FashionMNISTDataModule
    dm = DigitsDataModule() if data == "digits" else FashionMNISTDataModule(subset=subset, **({"root": root} if root else {}))
    x, y = dm.train_images(), dm.train_labels()
    return (x[:subset], y[:subset]) if subset else (x, y)


def measure(x, y, device: str, n_per_bucket: int, p_uncond: float, seed: int = 0):
    "(seconds, per-bucket results, σ_data) of one `bucket_floor` call with the main job's settings."
    from diffexplore.engine import DEFAULT_SIGMA_EDGES
    from diffexplore.floor import bucket_floor
    from diffexplore.sigma_sampling import EDMSampling
    from diffexplore.weightings import EDMWeighting
    sigma_data = float(x.double().std())
    x, y = x.to(device), y.to(device)
    if device.startswith("cuda"): torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = bucket_floor(x, EDMSampling(-1.2, 1.2), DEFAULT_SIGMA_EDGES, n_per_bucket, EDMWeighting(sigma_data),
                       labels=y, p_uncond=p_uncond, seed=seed)   # returns host floats: the device work is done
    return time.perf_counter() - t0, res, sigma_data


def row(command: str, data: str, n_images: int, device: str, n: int, seconds: float, res: list, sigma_data: float) -> str:
    from diffexplore.engine import sigma_bucket_names, DEFAULT_SIGMA_EDGES
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    dev = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    floors = "; ".join(f"{name[6:]}: {r['floor']:.4g} ± {r['stderr']:.2g}" for name, r in zip(sigma_bucket_names(DEFAULT_SIGMA_EDGES), res))
    target = TARGET_S.get((data, device.split(":")[0]), "—")
    return (f"| {date} | {machine()} | `{command}` | {data} ({n_images:,} images, σ_data {sigma_data:.4f}) | {dev} | {n:,} | "
            f"{seconds:.2f} | {target} | {os.getloadavg()[0]:.1f} | {floors} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=("digits", "fashion_mnist"), default="digits")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--subset", type=int, default=None, help="only the first SUBSET training images")
    ap.add_argument("--n-per-bucket", type=int, default=2000)
    ap.add_argument("--p-uncond", type=float, default=0.1, help="label dropout (sgm's ucg_rate)")
    ap.add_argument("--append", metavar="FILE", help="add the row to FILE under 'Loss floor'")
    ap.add_argument("--root", help="Fashion-MNIST's folder of idx files (default: Debian's dataset-fashion-mnist)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available(): sys.exit(f"--device {args.device}: no CUDA device on this machine")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    x, y = load(args.data, args.subset, args.root)
    seconds, res, sigma_data = measure(x, y, args.device, args.n_per_bucket, args.p_uncond)
    line = row(command, args.data, len(x), args.device, args.n_per_bucket, seconds, res, sigma_data)
    print(HEADER); print(line)
    if args.append: append_rows(args.append, HEADING, INTRO, HEADER, [line])
