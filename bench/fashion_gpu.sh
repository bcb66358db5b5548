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
python3 bench/sampling_speed.py --ckpt "$run/checkpoints/last.ckpt" --variants eager-bf16 --out "$out"   # Heun, 35 evaluations, 256 samples
for f in summary.json judge.json metrics.csv config.yaml; do cp "$run/$f" "$out/" 2>/dev/null || true; done
last=$(ls "$run"/samples/*.png | sort | tail -1); cp "$last" "$out/samples_final.png"
