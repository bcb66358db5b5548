#!/usr/bin/env python
"""Non-finite values of a training step for every published recipe and every scaling × weighting pair, over σ from
1e-6 to 1e4 in float32, bf16 autocast and fp16 autocast (issue 15, item 1).

For each pair, precision and σ of a log grid over [1e-6, 1e4] (both ends included): one training step of the digits
config's U-Net (`build_unet("digits")`, 1.0 M parameters, unconditional here) on two real digits: the engine's
`Denoiser` with the pair's scaling, the loss (`StandardDiffusionLoss`, or `LearnedWeightingLoss` for EDM2, its u head
set to u ~ N(0, 1) as a trained one) at that σ, and backward of the batch mean. It counts the σ at which the denoised
D, the loss or a parameter gradient (network, and u's head) holds a non-finite value, and the σ the loss refused: its
`check_output_weight` stops with one line naming scaling, weighting and σ where w·c_out² exceeds the largest value of
the dtype the network runs in (65504 under fp16), since backward sends 2·w·c_out²·(F − F*) into the network.
- Published recipes: the triples of `configs/study_digits.yaml` (EDM, Eps, V, Score, RF, MinSNR, EDM2), and the other
  scalings of `diffexplore.scalings.SCALINGS` with the weighting that makes w·c_out² constant: TrigFlow and
  ConsistencyBoundary with `EDMWeighting` (Lu & Song 2024, arXiv 2410.11081, §3: EDM's preconditioning in angle form;
  openai/consistency_models `cm/karras_diffusion.py: get_weightings('karras')` = SNR + 1/σ_d²), the latter on its
  range [σ_min, σ_max] = [0.002, 80] (log-uniform), and VWithEDMcNoise with `VWeighting` (sgm
  `denoiser_scaling.py`). Non-finite counts must be 0, and any σ the loss refuses must lie outside the recipe's σ
  density (`support`).
- Mismatched pairs: every scaling × every weighting of `WEIGHTINGS`, and EDM2's learned weighting. Each σ must give a
  finite step or be refused.
fp16 autocast runs on the CPU in torch 2.13 (emulated: a digits U-Net step is ~15× slower than in float32 here), so
the CPU rows are real fp16 autocast; `--device cuda` runs the same table on a GPU. σ_data is 0.5 where a recipe says
`auto`.

    OMP_NUM_THREADS=1 python bench/numerics_table.py [--device cuda] [--points 41] [--json FILE] [--append BENCHMARKS.md]
    OMP_NUM_THREADS=1 python bench/numerics_table.py --smoke --json out.json   # tiny U-Net, σ ∈ {1e-6, 1, 1e4}: ~10 s
Prints two markdown tables (published recipes; every scaling × weighting); `--append FILE` adds the first under
"Reliability: numerics"; `--json FILE` writes every count, refused σ and message.
"""
import argparse, datetime, json, math, shlex, sys, time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench this checkout's diffexplore
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, append_rows  # noqa: E402

PRECISIONS = {"float32": None, "bf16 autocast": torch.bfloat16, "fp16 autocast": torch.float16}
NATURAL = {   # the scalings the study does not train: the weighting that makes w·c_out² constant, a σ density in their range (docstring)
    "TrigFlow": ("diffexplore.scalings.TrigFlowScaling", "diffexplore.weightings.EDMWeighting", {"target": "diffexplore.sigma_sampling.EDMSampling"}),
    "ConsistencyBoundary": ("diffexplore.scalings.ConsistencyBoundaryScaling", "diffexplore.weightings.EDMWeighting",
                            {"target": "diffexplore.sigma_sampling.LogUniformSampling", "params": {"sigma_min": 0.002, "sigma_max": 80.0}}),
    "VWithEDMcNoise": ("diffexplore.scalings.VScalingWithEDMcNoise", "diffexplore.weightings.VWeighting", {"target": "diffexplore.sigma_sampling.EDMSampling"}),
}
SIGMA_DATA = 0.5


def sigma_grid(points: int) -> list:
    "`points` log-spaced σ from 1e-6 to 1e4, both ends included (float64 values, exact ends)."
    return [10 ** (-6 + 10 * i / (points - 1)) for i in range(points)]


def _target(cls: str):
    module, name = cls.rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)


def _build(part: dict, sigma_data: float = SIGMA_DATA):
    "A component from a `{target, params}` config, `auto` σ_data replaced by `sigma_data`."
    params = {k: (sigma_data if v == "auto" else v) for k, v in (part.get("params") or {}).items()}
    return _target(part["target"])(**params)


def published_recipes(study: Path = ROOT / "configs/study_digits.yaml") -> dict:
    """name -> (scaling, weighting, σ sampler, loss class, loss params): the study's recipes (a part a recipe leaves out
    is its base config's), then `NATURAL`'s pairs with EDM's σ density."""
    cfg = yaml.safe_load(study.read_text())
    base = yaml.safe_load((study.parent / f"{cfg['base']}.yaml").read_text())["model"]["params"]
    loss_base = base["loss_fn_config"]
    parts = dict(scaling=base["denoiser_config"]["params"]["scaling_config"], weighting=loss_base["params"]["loss_weighting_config"],
                 sigma_sampler=loss_base["params"]["sigma_sampler_config"], loss={"target": loss_base["target"]})
    out = {}
    for name, r in cfg["recipes"].items():
        p = {k: r.get(k, v) for k, v in parts.items()}
        out[name] = (_build(p["scaling"]), _build(p["weighting"]), _build(p["sigma_sampler"]),
                     _target(p["loss"]["target"]), p["loss"].get("params") or {})
    for name, (scaling, weighting, sampler) in NATURAL.items():
        sd = {"sigma_data": SIGMA_DATA} if "VWeighting" not in weighting else {}
        out[name] = (_target(scaling)(**sd), _target(weighting)(**sd), _build(sampler),
                     _target(parts["loss"]["target"]), {})
    return out


def mismatched_pairs() -> dict:
    "`scaling/weighting` -> the same tuple as `published_recipes`, for every scaling × every weighting (+ EDM2's learned one)."
    from diffexplore.scalings import SCALINGS
    from diffexplore.weightings import WEIGHTINGS, EDMWeighting
    from diffexplore.sigma_sampling import EDMSampling
    from diffexplore.loss import StandardDiffusionLoss, LearnedWeightingLoss
    def make(cls):
        try: return cls(SIGMA_DATA)
        except TypeError: return cls()
    out = {}
    for sn, sc in SCALINGS.items():
        for wn, wc in WEIGHTINGS.items():
            out[f"{sn}/{wn}"] = (make(sc), make(wc), EDMSampling(), StandardDiffusionLoss, {})
        out[f"{sn}/EDM2 learned"] = (make(sc), EDMWeighting(SIGMA_DATA), EDMSampling(), LearnedWeightingLoss, {"logvar_channels": 128})
    return out


def network(device, preset: str = "digits") -> torch.nn.Module:
    "The digits config's U-Net (preset 'digits'; unconditional), seeded, in float32 on `device`."
    from diffexplore.networks import build_unet, OpenAIWrapper
    torch.manual_seed(0)
    return OpenAIWrapper(build_unet(preset, in_channels=1, sample_size=8)).to(device)


def digits(n: int, device) -> torch.Tensor:
    "The first `n` scikit-learn digits in [-1, 1], `[n, 1, 8, 8]` float32."
    from sklearn.datasets import load_digits
    return torch.tensor(load_digits().images[:n], dtype=torch.float32, device=device).div(8).sub(1).unsqueeze(1)


def recording_denoiser(scaling):
    "The engine's `Denoiser` that keeps the D of its last call in `.D`."
    from diffexplore.denoiser import Denoiser
    class RecordingDenoiser(Denoiser):
        def unchecked(self, *args, **kwargs):
            self.D = super().unchecked(*args, **kwargs)
            return self.D
    return RecordingDenoiser(scaling)


def step(net, pair, sigma: float, dtype, x0: torch.Tensor, noise: torch.Tensor) -> dict:
    """One training step at σ under `dtype` autocast (None: float32): `{"out", "loss", "grad"}` each True where that
    stage held a non-finite value, or `{"refused": message}` when the loss refused σ with a `ValueError`."""
    scaling, weighting, sampler, loss_cls, loss_params = pair
    loss_fn = loss_cls(sampler, weighting, **loss_params)
    if isinstance(loss_fn, torch.nn.Module):
        loss_fn.to(x0.device)
        with torch.no_grad(): loss_fn.logvar.weight.copy_(torch.randn(loss_fn.logvar.weight.shape, generator=torch.Generator().manual_seed(1)) / math.sqrt(loss_fn.logvar.weight.numel()))
    params = list(net.parameters()) + (list(loss_fn.parameters()) if isinstance(loss_fn, torch.nn.Module) else [])
    for p in params: p.grad = None
    denoiser = recording_denoiser(scaling)
    sigmas = torch.full((x0.shape[0],), sigma, dtype=torch.float64).float()
    try:
        with torch.autocast(x0.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(net, denoiser, None, x0, {}, sigmas=sigmas, noise=noise)
        loss.mean().backward()   # the engine's reduction
    except ValueError as e:
        return {"refused": str(e)}
    return {"out": not bool(torch.isfinite(denoiser.D).all()), "loss": not bool(torch.isfinite(loss).all()),
            "grad": not all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)}


def table(pairs: dict, sigmas: list, precisions: dict, device, n_images: int = 2, preset: str = "digits") -> dict:
    """`{pair: {precision: {"out", "loss", "grad", "refused": count of σ, "bad": [σ non-finite], "refused_sigmas":
    [σ], "messages": [...]}}}`, one `step` per σ with the same images and noise."""
    net, x0 = network(device, preset), digits(n_images, device)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(device)
    res = {}
    for name, pair in pairs.items():
        res[name] = {}
        for pname, dtype in precisions.items():
            c = {"out": 0, "loss": 0, "grad": 0, "refused": 0, "bad": [], "refused_sigmas": [], "messages": []}
            for s in sigmas:
                r = step(net, pair, s, dtype, x0, noise)
                if "refused" in r:
                    c["refused"] += 1; c["refused_sigmas"].append(s); c["messages"].append(r["refused"]); continue
                for k in ("out", "loss", "grad"): c[k] += r[k]
                if any(r.values()): c["bad"].append(s)
            res[name][pname] = c
    return res



def _span(sig: list) -> str:
    "σ values as a short range: `σ ≥ 316`, `σ ≤ 1e-06`, or a list."
    lo, hi = min(sig), max(sig)
    return f"σ ≥ {lo:.3g}" if hi >= 1e4 * (1 - 1e-9) else f"σ ≤ {hi:.3g}" if lo <= 1e-6 * (1 + 1e-9) else ", ".join(f"{s:.3g}" for s in sig)


def cell(c: dict, support=None) -> str:
    "`D/loss/grad` non-finite counts, and the σ the loss refused (marked ∉ support when all lie outside the σ density's)."
    text = f"{c['out']}/{c['loss']}/{c['grad']}"
    if c["refused"]:
        outside = support is not None and all(not (support[0] <= s <= support[1]) for s in c["refused_sigmas"])
        text += f", {c['refused']} refused ({_span(c['refused_sigmas'])}{', all ∉ support' if outside else ''})"
    return text


def published_markdown(res: dict, pairs: dict) -> list:
    "One row per published recipe: its parts, then `cell` per precision."
    rows = ["| recipe | scaling · weighting · σ density (loss) | " + " | ".join(next(iter(res.values()))) + " |",
            "|---|---|" + "---|" * len(next(iter(res.values())))]
    for name, r in res.items():
        sc, w, samp, loss_cls, _ = pairs[name]
        parts = f"{sc!r} · {w!r} · {samp!r}" + (f" ({loss_cls.__name__})" if loss_cls.__name__ != "StandardDiffusionLoss" else "")
        sup = getattr(samp, "support", None)
        rows.append(f"| {name} | {parts} | " + " | ".join(cell(c, sup) for c in r.values()) + " |")
    return rows


def mismatched_markdown(res: dict) -> list:
    "Scaling × weighting matrix: `finite` where every precision and σ gave a finite step, else what happened where."
    scalings = list(dict.fromkeys(k.split("/")[0] for k in res)); weightings = list(dict.fromkeys(k.split("/")[1] for k in res))
    rows = ["| scaling \\ weighting | " + " | ".join(weightings) + " |", "|---|" + "---|" * len(weightings)]
    for sn in scalings:
        cells = []
        for wn in weightings:
            r = res[f"{sn}/{wn}"]
            notes = [f"{p.split()[0]}: {cell(c)}" for p, c in r.items() if c["out"] + c["loss"] + c["grad"] + c["refused"]]
            cells.append("finite" if not notes else "; ".join(notes))
        rows.append(f"| {sn} | " + " | ".join(cells) + " |")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu"); ap.add_argument("--points", type=int, default=41)
    ap.add_argument("--preset", default="digits", help="U-Net preset of diffexplore.networks (the smoke run uses 'tiny')")
    ap.add_argument("--smoke", action="store_true", help="the tiny U-Net, σ ∈ {1e-6, 1, 1e4}; mismatched pairs in fp16 at the two ends only")
    ap.add_argument("--json", metavar="FILE"); ap.add_argument("--append", metavar="FILE")
    args = ap.parse_args(argv)
    if args.points < 2: sys.exit(f"--points must be >= 2 (both ends of [1e-6, 1e4]); got --points {args.points}")
    if args.device.startswith("cuda") and not torch.cuda.is_available(): sys.exit(f"--device {args.device}: no CUDA device on this machine")
    device, points, preset = torch.device(args.device), 3 if args.smoke else args.points, "tiny" if args.smoke else args.preset
    sigmas, t0 = sigma_grid(points), time.perf_counter()
    pub_pairs, mis_pairs = published_recipes(), mismatched_pairs()
    pub = table(pub_pairs, sigmas, PRECISIONS, device, preset=preset)
    mis = table(mis_pairs, [sigmas[0], sigmas[-1]] if args.smoke else sigmas,
                {"fp16 autocast": torch.float16} if args.smoke else PRECISIONS, device, preset=preset)
    seconds = time.perf_counter() - t0
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    head = (f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {machine()}, {dev}, torch {torch.__version__}, `{command}`: "
            f"U-Net preset {preset!r}, {points} σ from 1e-6 to 1e4, {seconds:.0f} s. Cells: the number of σ with a non-finite "
            f"D / loss / parameter gradient, and the σ the loss refused with its one-line error.")
    pub_rows, mis_rows = published_markdown(pub, pub_pairs), mismatched_markdown(mis)
    print(head, "", "Published recipes:", "", *pub_rows, "", "Every scaling × every weighting:", "", *mis_rows, sep="\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"sigmas": sigmas, "device": dev, "preset": preset, "seconds": seconds, "published": pub,
                                               "mismatched": mis}, indent=1))
    if args.append:
        append_rows(args.append, "## Reliability: numerics", "`bench/numerics_table.py`: " + __doc__.split("\n\n")[0].replace("\n", " "),
                    head, pub_rows)


if __name__ == "__main__":
    main()
