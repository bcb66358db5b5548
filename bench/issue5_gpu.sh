#!/usr/bin/env bash
# Issue 5 on a machine with 2 GPUs, in two calls (each well under 10 minutes):
#   bash bench/issue5_gpu.sh single OUT   GPU 0: Fashion-MNIST run + judge + Heun sampling speed (bench/fashion_gpu.sh);
#                                        GPU 1: nbs/18_live_gpu.ipynb headless (bench/live_view_gpu.py), then
#                                        channels_last rows of bench/train_throughput.py until the deadline
#   bash bench/issue5_gpu.sh ddp OUT      bench/ddp_scaling.py on 1 and 2 GPUs, eager and compiled
# Needs: diffexplore's requirements importable (PYTHONPATH), Fashion-MNIST in $FASHION_MNIST_ROOT,
# optionally a judge-classifier cache in $DIFFEXPLORE_CACHE. Results are packed into OUT/results.tgz.
set -uo pipefail
what=${1:?single or ddp}; out=${2:?out dir}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
start=$(date +%s); left() { echo $(( ${1} - ($(date +%s) - start) )); }
if [ "$what" = single ]; then
  (CUDA_VISIBLE_DEVICES=0 timeout 500 bash bench/fashion_gpu.sh "$out/fashion" 5 "${FASHION_MNIST_ROOT:-/usr/share/datasets/fashion-mnist}" \
     > "$out/fashion.log" 2>&1; echo "fashion rc=$?" >> "$out/fashion.log") &
  (export CUDA_VISIBLE_DEVICES=1
   timeout 330 python3 bench/live_view_gpu.py --out "$out/live" --steps 3000 --block 300 > "$out/live.log" 2>&1; echo "live rc=$?" >> "$out/live.log"
   timeout "$(left 520)" python3 bench/train_throughput.py --out "$out/tt" --models cifar10 --deadline "$(left 510)" --compile-estimate 90 \
     --rows c-cudagraphs-cl,a-bf16-compile-cl,c-big-batch-cl > "$out/tt.log" 2>&1; echo "throughput rc=$?" >> "$out/tt.log") &
  wait
else
  for kw in '{}' '{"compile_step": true, "cuda_graphs": true}'; do
    for n in 1 2; do
      timeout "$(left 540)" python3 bench/ddp_scaling.py --devices $n --out "$out/ddp" --engine-kw "$kw" >> "$out/ddp.log" 2>&1
      echo "ddp devices=$n kw=$kw rc=$?" >> "$out/ddp.log"; pkill -f ddp_scaling.py; sleep 2   # a rank left behind by a timeout
    done
  done
fi
(cd "$out" && tar czf results.tgz --exclude results.tgz . && find . -mindepth 1 -maxdepth 1 ! -name results.tgz ! -name '*.log' -exec rm -rf {} +)
for f in "$out"/*.log; do echo "== $f"; grep -v -i -E "warn|^\s*$" "$f" | tail -25; done
