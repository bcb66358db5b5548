#!/usr/bin/env bash
# Issue 5, what was left after bench/issue5_gpu.sh, on a machine with 2 GPUs, in calls of under 10 minutes each
# (the third session ran b, d, e, f, g in that order; c is not run yet):
#   bash bench/issue5_next.sh b OUT   DDP on 2 GPUs: NCCL transport (NCCL_DEBUG=INFO), a profile of a DDP step,
#                                      static graph + bucket view, bf16-compressed all-reduce, the compiled step;
#                                      then the latent U-Net's missing (c) rows while time is left
#   bash bench/issue5_next.sh d OUT   call b's latent rows on GPU 0 (b's DDP runs left them no time); GPU 1: sampling
#                                      speed, then the notebook with a grid every 300 steps
#   bash bench/issue5_next.sh e OUT   GPU 0 the notebook with redraws >= 5 s apart; GPU 1 the refit
#   bash bench/issue5_next.sh f OUT   after d and e's fixes: GPU 0 the notebook on the view's defaults (grid budget),
#                                      GPU 1 the refit variants with the engine's fix
#   bash bench/issue5_next.sh g OUT   after f: GPU 0 the notebook with redraws >= 1 s apart, GPU 1 the refit variants
#                                      with CUDA graphs recorded on the first thread only
#   bash bench/issue5_next.sh c OUT   if device time is left: is the compiled step worth its ~100 s for a 4-minute
#                                      Fashion-MNIST run? GPU 0 the defaults, GPU 1 `--no-fast compile`, same minutes
# Same environment as bench/issue5_gpu.sh. Results: OUT/results.tgz and the logs beside it.
set -uo pipefail
what=${1:?b, c, d, e, f or g}; out=${2:?out dir}; deadline=${3:-560}; mkdir -p "$out"
source "$(dirname "$0")/_gpu_call.sh"
latent() { local t; t=$(left 20); [ "$t" -gt 200 ] && timeout "$t" python3 bench/train_throughput.py --out "$out/latent" --models latent64 \
    --deadline "$((t - 10))" --compile-estimate 150 --rows c-cudagraphs,c-big-batch,c-channels-last; }
if [ "$what" = d ]; then   # the latent rows on GPU 0; sampling speed, then the notebook with grids, on GPU 1
  (export CUDA_VISIBLE_DEVICES=0; stamp latent; latent; echo "latent rc=$?"; stamp end) > "$out/latent.log" 2>&1 &
  (export CUDA_VISIBLE_DEVICES=1
   stamp sampling; timeout 240 python3 bench/sampling_speed.py --out "$out/sampling"; echo "sampling rc=$?"
   stamp live; timeout "$(left 20)" python3 bench/live_view_gpu.py --out "$out/live" --view-kw '{"sample_every_n_steps": 300}'; echo "live rc=$?"
   stamp end) > "$out/gpu1.log" 2>&1 &
  wait
elif [ "$what" = e ]; then   # the notebook with redraws >= 5 s apart on GPU 0; the refit failure on GPU 1
  (export CUDA_VISIBLE_DEVICES=0; stamp live-slow
   timeout "$(left 20)" python3 bench/live_view_gpu.py --out "$out/live_slow" --view-kw '{"sample_every_n_steps": null, "min_interval_s": 5}'
   echo "live-slow rc=$?"; stamp end) > "$out/gpu0.log" 2>&1 &
  (export CUDA_VISIBLE_DEVICES=1; stamp refit; timeout "$(left 20)" python3 bench/refit_cudagraphs.py --out "$out/refit" --timeout 90
   echo "refit rc=$?"; stamp end) > "$out/gpu1.log" 2>&1 &
  wait
elif [ "$what" = f ]; then   # after the fixes: the notebook on the view's defaults (grid budget); the refit with the engine's fix
  (export CUDA_VISIBLE_DEVICES=0; stamp live-default; timeout "$(left 20)" python3 bench/live_view_gpu.py --out "$out/live_default" --blocks 20
   echo "live-default rc=$?"; stamp end) > "$out/gpu0.log" 2>&1 &
  (export CUDA_VISIBLE_DEVICES=1; stamp refit
   timeout "$(left 20)" python3 bench/refit_cudagraphs.py --out "$out/refit_fixed" --timeout 150 --variants bg-main,bg-bg,main-main,worker-worker
   echo "refit rc=$?"; stamp end) > "$out/gpu1.log" 2>&1 &
  wait
elif [ "$what" = g ]; then   # after f: redraws >= 1 s apart (grid budget on); the refit with graphs on the first thread only
  (export CUDA_VISIBLE_DEVICES=0; stamp live-1s; timeout "$(left 20)" python3 bench/live_view_gpu.py --out "$out/live_1s" --blocks 20 --view-kw '{"min_interval_s": 1}'
   echo "live-1s rc=$?"; stamp end) > "$out/gpu0.log" 2>&1 &
  (export CUDA_VISIBLE_DEVICES=1; stamp refit
   timeout "$(left 20)" python3 bench/refit_cudagraphs.py --out "$out/refit_thread" --timeout 150 --variants bg-main,bg-bg,main-main,worker-worker
   echo "refit rc=$?"; stamp end) > "$out/gpu1.log" 2>&1 &
  wait
elif [ "$what" = c ]; then
  (CUDA_VISIBLE_DEVICES=0 timeout "$(left 10)" bash bench/fashion_gpu.sh "$out/compiled" 4 "${FASHION_MNIST_ROOT:-/usr/share/datasets/fashion-mnist}"
   echo "compiled rc=$?") > "$out/fashion_compiled.log" 2>&1 &
  (CUDA_VISIBLE_DEVICES=1 timeout "$(left 10)" bash bench/fashion_gpu.sh "$out/eager" 4 "${FASHION_MNIST_ROOT:-/usr/share/datasets/fashion-mnist}" --no-fast compile
   echo "eager rc=$?") > "$out/fashion_eager.log" 2>&1 &
  wait
elif [ "$what" = b ]; then
  {
    NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET,P2P ddp --devices 2 --profile-steps 3 2>&1 | awk '/NCCL INFO .*(via|P2P|SHM|NET|Channel 00|comm)/ && n++ < 60; /ddp|img_s|rror/' 
    ddp --devices 1 --profile-steps 3
    ddp --devices 2 --static-graph --bucket-view
    ddp --devices 2 --static-graph --bucket-view --comm-hook bf16
    ddp --devices 1 --engine-kw '{"compile_step": true, "cuda_graphs": false}'
    ddp --devices 2 --engine-kw '{"compile_step": true, "cuda_graphs": false}' --static-graph --bucket-view
  } > "$out/ddp.log" 2>&1
  CUDA_VISIBLE_DEVICES=0 latent > "$out/latent.log" 2>&1
else echo "unknown call: $what (b, c, d, e, f or g)"; exit 2
fi
finish 30
