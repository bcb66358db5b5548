#!/usr/bin/env bash
# Issue 5, part 4-5 on one GPU: a Fashion-MNIST class-conditional run capped at TRAIN_MINUTES of training,
# judged on 1,000 CFG samples, then Heun sampling speed (18 steps = 35 network evaluations) on 256 samples.
# Usage: bash bench/fashion_gpu.sh OUT_DIR [TRAIN_MINUTES] [FASHION_ROOT] [more `diffexplore train` arguments, e.g. --no-fast compile]
set -euo pipefail
out=${1:?out dir}; minutes=${2:-6}; root=${3:-/usr/share/datasets/fashion-mnist}; shift $(( $# < 3 ? $# : 3 ))
run=$(mktemp -d /tmp/fashion_run.XXXX); mkdir -p "$out"
start=$(date +%s); echo "$(date +%T) fashion_gpu.sh start"
python3 -c "import sys; from diffexplore.cli import main; sys.exit(main(sys.argv[1:]))" train \
  --config configs/fashion_mnist.yaml --run-dir "$run" data.params.root="$root" \
  trainer.max_time="00:00:$(printf %02d "$minutes"):00" "$@"
echo "wall seconds (train + judge): $(( $(date +%s) - start ))"
python3 - "$run" "$out" <<'PY'
import json, sys, time, torch
from pathlib import Path
from diffexplore.cli import load_engine, set_sampler
from diffexplore.sampling import IdentityGuider
run, out = Path(sys.argv[1]), Path(sys.argv[2])
engine = set_sampler(load_engine(run / "checkpoints" / "last.ckpt", map_location="cuda"), "HeunEDMSampler", 18).cuda()
labels = torch.arange(10).repeat_interleave(26)[:256]
res = {}
for cfg_scale in (None, 2.0):
    if cfg_scale: set_sampler(engine, cfg_scale=cfg_scale)
    else: engine.sampler.guider = IdentityGuider()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        engine.generate(256, class_labels=labels, seed=0); torch.cuda.synchronize()
        t = time.perf_counter(); reps = 5
        for i in range(reps): engine.generate(256, class_labels=labels, seed=i)
        torch.cuda.synchronize(); dt = (time.perf_counter() - t) / reps
    res["cfg" if cfg_scale else "no_cfg"] = {"seconds_per_256": dt, "img_per_s": 256 / dt, "nfe": 35, "network_batch": 512 if cfg_scale else 256}
res["gpu"] = torch.cuda.get_device_name()
(out / "sampling.json").write_text(json.dumps(res, indent=2)); print(json.dumps(res, indent=2))
PY
for f in summary.json judge.json metrics.csv config.yaml; do cp "$run/$f" "$out/" 2>/dev/null || true; done
last=$(ls "$run"/samples/*.png | sort | tail -1); cp "$last" "$out/samples_final.png"
