#!/usr/bin/env bash
# Issue 5 on a machine with 2 GPUs, in one call of under 10 minutes:
#   GPU 0: Fashion-MNIST run + judge + Heun sampling speed (bench/fashion_gpu.sh)
#   GPU 1: nbs/18_live_gpu.ipynb executed headless (bench/live_view_gpu.py)
#   then both GPUs: bench/ddp_scaling.py on 1 and 2 GPUs (eager, then compiled while time is left)
# Usage: [FASHION_MINUTES=5] bash bench/issue5_gpu.sh OUT [DEADLINE_SECONDS=560] [SKIP=comma list of fashion,live,ddp]
# Needs: diffexplore's requirements importable (PYTHONPATH), Fashion-MNIST in $FASHION_MNIST_ROOT, optionally
# a judge-classifier cache in $DIFFEXPLORE_CACHE. Results are packed into OUT/results.tgz; logs stay beside it.
set -uo pipefail
out=${1:?out dir}; deadline=${2:-560}; skip=${3:-}; mkdir -p "$out"
source "$(dirname "$0")/_gpu_call.sh"
reserve=130; [[ ,$skip, == *,ddp,* ]] && reserve=10   # seconds kept for the DDP runs
if [[ ,$skip, != *,fashion,* ]]; then
  (stamp fashion start; CUDA_VISIBLE_DEVICES=0 timeout "$(left $reserve)" bash bench/fashion_gpu.sh "$out/fashion" "${FASHION_MINUTES:-5}" "${FASHION_MNIST_ROOT:-/usr/share/datasets/fashion-mnist}"
   echo "fashion rc=$?"; stamp fashion end) > "$out/fashion.log" 2>&1 &
fi
if [[ ,$skip, != *,live,* ]]; then
  (stamp live start; CUDA_VISIBLE_DEVICES=1 timeout "$(left $reserve)" python3 bench/live_view_gpu.py --out "$out/live" --blocks 10 --block 200 --warmup 100
   echo "live rc=$?"; stamp live end) > "$out/live.log" 2>&1 &
fi
wait
if [[ ,$skip, != *,ddp,* ]]; then
  for kw in '{}' '{"compile_step": true, "cuda_graphs": true}'; do
    for n in 1 2; do ddp --devices $n --engine-kw "$kw"; done
  done >> "$out/ddp.log" 2>&1
fi
finish 22
