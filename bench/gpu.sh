#!/usr/bin/env bash
# One GPU benchmark call of under 10 minutes, in the repository root of the GPU machine:
#   bash bench/gpu.sh TASK[,TASK...] OUT [ARGS...]
# installs the wheels carried in .whl/ (bench/device_wheels.txt) into /tmp/site, prints the machine (GPUs, CPUs,
# torch, lightning), runs each TASK in turn with what is left of a deadline (DEADLINE seconds, default 560), writes
# each task's output to OUT/TASK.log, packs everything else under OUT into OUT/results.tgz (a call returns at most
# 8 files) and prints the tail of each log. ARGS are appended to the command line of every script a task runs
# (`--smoke` runs the CPU smoke modes: `bash bench/gpu.sh cifar10 /tmp/g --smoke` checks this script anywhere).
#
# Tasks (one GPU unless said otherwise):
#   cifar10       bench/train_throughput.py, CIFAR-10 U-Net: interleaved pairs pair-bf16 (a-bf16 vs b-bf16),
#                 pair-fastest (a-fastest vs c-big-batch, then a profile of both), pair-fp32, then a-fastest and
#                 c-big-batch on their own, as many as fit the deadline
#   latent        the same for the 64×64×4 latent U-Net
#   sampling      bench/sampling_speed.py (Heun, 35 evaluations, 256 samples; eager bf16 and CUDA graphs, with and
#                 without CFG; ARGS go to it, e.g. --variants eager-fp32,eager-bf16,compile-bf16,graphs-bf16), then
#                 the task accumulation (of ARGS only --smoke)
#   accumulation  bench/grad_accumulation.py: accumulate_grad_batches=2 on the engine's default fast path
#   syncs         bench/host_syncs.py: where the engine's and the hand-written step wait for the GPU, host time per op
#   throughput    bench/train_throughput.py with ARGS only (any rows: --models cifar10 --rows a-bf16,b-bf16)
#   ddp           bench/ddp_scaling.py (2 GPUs): without ARGS 1 and 2 GPUs, eager, then with the compiled step and
#                 CUDA graphs; with ARGS one run with them (--devices 2 --static-graph --bucket-view)
#   fashion       `diffexplore train --config configs/fashion_mnist.yaml` for FASHION_MINUTES (default 5) of
#                 training, data in FASHION_MNIST_ROOT (default Debian's), then the judge and Heun sampling speed
#                 of its checkpoint (eager bf16); ARGS go to `diffexplore train` (e.g. --no-fast compile)
#   live          bench/live_view_gpu.py: nbs/18_live_gpu.ipynb executed headless (--blocks 20 --view-kw '{...}')
#   refit         bench/refit_cudagraphs.py: two fits of one engine on different threads (--variants bg-main,...)
#   study         `diffexplore study --config configs/study_fashion.yaml` (run_study) with the data in FASHION_MNIST_ROOT,
#                 only the recipes in STUDY_RECIPES (default all), seeds STUDY_SEEDS (default the config's) and
#                 STUDY_STEPS steps (default the config's), until the deadline (cells done before, copied from
#                 STUDY_PRIOR/cells, are not run again); the cells' cell.json/summary.json and
#                 the summary (written from the cells done, also after a timeout) come back, the checkpoints do not
#   posthoc       bench/posthoc_ema_time.py on the GPU for the Fashion-MNIST U-Net: reconstruct one σ_rel from PostHocEMA's
#                 snapshots and draw a 40-sample grid (ARGS go to it, e.g. --snapshots 12)
#   precision     bench/precision_modes.py: 30 steps of the digits config under each Lightning precision (32-true, bf16-mixed,
#                 16-mixed, bf16-true, 16-true) with the CLI's fast GPU settings; each trains or is refused in one line
#                 (ARGS go to it, e.g. --steps 30 --modes 16-mixed,bf16-true; --config fashion_mnist --data-root DIR)
#   soak          bench/soak_gpu.py: Fashion-MNIST (data in FASHION_MNIST_ROOT) trained with the live view in a notebook under
#                 nbclient for --minutes (default 8, cut to the deadline), GPU/host memory and throughput sampled every 5 s;
#                 the slopes after the first minute (ARGS go to it, e.g. --minutes 8 --view-kw '{"min_interval_s": 1}')
#   numerics      bench/numerics_table.py --device cuda: every recipe and mismatched pair × float32/bf16/fp16 autocast × σ in
#                 [1e-6, 1e4] on the GPU (issue 15, item 1); the table in the log, the counts in OUT/numerics.json
#   floor         bench/loss_floor_time.py on the GPU: the exact loss floor of Fashion-MNIST's 60,000 training images
#                 for the main job's σ buckets (ARGS go to it, e.g. --subset 20000)
# Two tasks on two GPUs at once: one call of
#   CUDA_VISIBLE_DEVICES=0 bash bench/gpu.sh fashion $OUT/gpu0 & CUDA_VISIBLE_DEVICES=1 bash bench/gpu.sh live $OUT/gpu1; wait
# Exits 2 for an unknown task (listing them), else with the last task's exit status.
set -uo pipefail
TASKS="cifar10 latent sampling accumulation syncs throughput ddp fashion live refit floor study posthoc soak precision numerics"
usage() { echo "usage: bash bench/gpu.sh TASK[,TASK...] OUT [ARGS...]; tasks: $TASKS" >&2; exit 2; }
[ $# -ge 2 ] || usage
tasks=${1//,/ }; out=$2; shift 2
for t in $tasks; do [[ " $TASKS " == *" $t "* ]] || { echo "unknown task: $t" >&2; usage; }; done
mkdir -p "$out"; out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit 2
deadline=${DEADLINE:-560}; start=$(date +%s); PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

left() { echo $(( deadline - ${1:-0} - ($(date +%s) - start) )); }   # seconds to the deadline, less a reserve
stamp() { echo "$(date +%T) [+$(( $(date +%s) - start ))s] $*"; }
py() {   # python ARGS under a timeout of what is left (less 10 s); skipped when under 5 s are left
  local t; t=$(left 10); if [ "$t" -lt 5 ]; then stamp "skip $1: ${t}s left"; return 124; fi
  stamp "$PY $*"; timeout "$t" "$PY" "$@"; local rc=$?; echo "rc=$rc: $1"; return $rc
}

# --- the carried wheels (bench/device_wheels.txt), installed once per machine
if compgen -G ".whl/*.whl" > /dev/null; then
  exec 9> /tmp/site.lock; flock 9   # two calls at once (two GPUs) install once
  want=$(ls .whl/*.whl | xargs -n1 basename | sort | md5sum)
  if [ "$(cat /tmp/site/.wheels 2>/dev/null)" != "$want" ]; then
    rm -rf /tmp/site && "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && echo "$want" > /tmp/site/.wheels \
      || echo "wheel install failed" >&2
  fi
  flock -u 9; export PYTHONPATH=/tmp/site:$PWD
else export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

# --- the machine
{ stamp "bench/gpu.sh $tasks (deadline ${deadline}s) ${*:+args: $*}"
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}; $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  "$PY" -c "import sys, torch, lightning; print('python', sys.version.split()[0], '| torch', torch.__version__, 'CUDA', torch.version.cuda, '| lightning', lightning.__version__)"
  "$PY" -c "import diffusers; print('diffusers', diffusers.__version__)" 2>/dev/null || echo "diffusers not importable"
} | tee "$out/machine.txt"

# --- the tasks ("$@": ARGS)
PAIR_ROWS=pair-bf16,pair-fastest,pair-fp32,a-fastest,c-big-batch   # the pairs, then the two fastest rows alone while time is left
task_cifar10() { py bench/train_throughput.py --out "$out/cifar10" --models cifar10 --rows $PAIR_ROWS --deadline "$(left 25)" "$@"; }
task_latent() { py bench/train_throughput.py --out "$out/latent" --models latent64 --rows $PAIR_ROWS --deadline "$(left 25)" "$@"; }
task_throughput() { py bench/train_throughput.py --out "$out/throughput" --deadline "$(left 25)" "$@"; }
smoke_only() { for a in "$@"; do [ "$a" = --smoke ] && echo --smoke; done; }   # of ARGS, what every script takes
task_sampling() { py bench/sampling_speed.py --out "$out/sampling" --variants eager-bf16,graphs-bf16 "$@"; task_accumulation $(smoke_only "$@"); }
task_accumulation() { py bench/grad_accumulation.py --out "$out/accumulation" "$@"; }
task_syncs() { py bench/host_syncs.py --out "$out/syncs" "$@"; }
task_live() { py bench/live_view_gpu.py --out "$out/live" "$@"; }
task_refit() { py bench/refit_cudagraphs.py --out "$out/refit" "$@"; }
task_posthoc() { py bench/posthoc_ema_time.py --config fashion_mnist --device cuda "$@"; }
task_precision() { py bench/precision_modes.py --device cuda "$@"; }
task_numerics() { py bench/numerics_table.py --device cuda --json "$out/numerics.json" "$@"; }
task_soak() { py bench/soak_gpu.py --out "$out/soak" --deadline "$(left 20)" "$@"; }
task_floor() { py bench/loss_floor_time.py --data fashion_mnist --device cuda "$@"; }
task_study() {   # the cells run in /tmp (checkpoints stay there); their JSON files and the summary come back
  local cfg=/tmp/study_fashion.yaml run=/tmp/study_fashion; mkdir -p "$out/study" "$run"
  [ -n "${STUDY_PRIOR:-}" ] && cp -rn "$STUDY_PRIOR/cells" "$run/"
  "$PY" - "$cfg" <<'PYEOF'
import os, sys, yaml
s = yaml.safe_load(open("configs/study_fashion.yaml"))
s["shared"].append("data.params.root=" + os.environ.get("FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist"))
if os.environ.get("STUDY_STEPS"): s["shared"].append("trainer.max_steps=" + os.environ["STUDY_STEPS"])
if os.environ.get("STUDY_RECIPES"): s["recipes"] = {k: s["recipes"][k] for k in os.environ["STUDY_RECIPES"].split(",")}
if os.environ.get("STUDY_SEEDS"): s["seeds"] = [int(x) for x in os.environ["STUDY_SEEDS"].split(",")]
yaml.safe_dump(s, open(sys.argv[1], "w"), sort_keys=False, allow_unicode=True)
PYEOF
  py -c "import sys; from diffexplore.cli import main; sys.exit(main(sys.argv[1:]))" study --config "$cfg" --out "$run" "$@"
  "$PY" -c "import sys; from diffexplore.study import run_study; run_study(sys.argv[1], sys.argv[2], report_only=True)" "$cfg" "$run"
  (cd "$run" && find . -name cell.json -o -name summary.json -o -name 'study.*' -o -name train.log | tar cf - -T - | tar xf - -C "$out/study")
  return 0
}

ddp() {   # one bench/ddp_scaling.py run; `timeout` leads its own process group, ended afterwards (ranks left behind)
  local t; t=$(left 10); if [ "$t" -lt 60 ]; then stamp "skip ddp $*: ${t}s left"; return; fi
  stamp "ddp $*"; timeout "$t" "$PY" bench/ddp_scaling.py --out "$out/ddp" "$@" & local pid=$!
  wait $pid; local rc=$?; echo "ddp rc=$rc"; kill -- -"$pid" 2>/dev/null; sleep 2; return $rc
}
task_ddp() {
  nvidia-smi topo -m 2>/dev/null
  if [ $# -gt 0 ]; then ddp "$@"; return; fi
  for kw in '{}' '{"compile_step": true, "cuda_graphs": true}'; do for n in 1 2; do ddp --devices $n --engine-kw "$kw"; done; done
}

task_fashion() {   # train + judge, then sampling speed of the checkpoint; the run's summary, judge, metrics and last grid
  local run; run=$(mktemp -d /tmp/fashion_run.XXXX); mkdir -p "$out/fashion"
  py -c "import sys; from diffexplore.cli import main; sys.exit(main(sys.argv[1:]))" train --config configs/fashion_mnist.yaml \
    --run-dir "$run" data.params.root="${FASHION_MNIST_ROOT:-/usr/share/datasets/fashion-mnist}" \
    trainer.max_time="00:00:$(printf %02d "${FASHION_MINUTES:-5}"):00" "$@"
  py bench/sampling_speed.py --ckpt "$run/checkpoints/last.ckpt" --variants eager-bf16 --out "$out/fashion"   # Heun, 35 evaluations, 256 samples
  for f in summary.json judge.json metrics.csv config.yaml; do cp "$run/$f" "$out/fashion/" 2>/dev/null; done
  local last; last=$(ls "$run"/samples/*.png 2>/dev/null | sort | tail -1); [ -n "$last" ] && cp "$last" "$out/fashion/samples_final.png"
  return 0
}

rc=0
for t in $tasks; do
  { stamp "task $t"; "task_$t" "$@"; rc=$?; stamp "task $t rc=$rc"; } > "$out/$t.log" 2>&1
done

# --- pack: OUT/results.tgz, the logs beside it; print each log's tail
(cd "$out" && tar czf /tmp/results.$$.tgz --exclude='*.log' --exclude=results.tgz . && mv /tmp/results.$$.tgz results.tgz \
   && find . -mindepth 1 -maxdepth 1 ! -name results.tgz ! -name '*.log' -exec rm -rf {} +)
for f in "$out"/*.log; do
  echo "== $f"; tr '\r' '\n' < "$f" | grep -v -i -E "warn|it/s|^\s*$|originates|upsampling.py|is_torch_version" | tail -"${LOG_TAIL:-30}"
done
stamp "packed $out/results.tgz"
exit "$rc"
