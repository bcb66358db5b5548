# Shared by bench/issue5_gpu.sh and bench/issue5_next.sh (source it after setting `out` and `deadline`):
# a clock for one device call (`left [RESERVE]`: seconds to the deadline less RESERVE; `stamp MSG`), `ddp`, and `finish`,
# which packs OUT into OUT/results.tgz (a call returns at most 8 files) and prints the tail of each log.
export PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $(( deadline - ${1:-0} - ($(date +%s) - start) )); }
stamp() { echo "$(date +%T) [+$(( $(date +%s) - start ))s] $*"; }
# ddp ARGS...: bench/ddp_scaling.py --out OUT/ddp ARGS with the time left (skipped under 60 s), then kill any rank a
# timeout left behind
ddp() { local t; t=$(left 10); if [ "$t" -lt 60 ]; then stamp "skip ddp $*: ${t}s left"; return; fi
        stamp "ddp $*"; timeout "$t" python3 bench/ddp_scaling.py --out "$out/ddp" "$@"; echo "ddp rc=$?"; pkill -f ddp_scaling.py; sleep 2; }
finish() {
  (cd "$out" && tar czf /tmp/results.tgz . && mv /tmp/results.tgz . && find . -mindepth 1 -maxdepth 1 ! -name results.tgz ! -name '*.log' -exec rm -rf {} +)
  for f in "$out"/*.log; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v -i -E "warn|it/s|^\s*$|originates|upsampling.py|is_torch_version" | tail -"${1:-30}"; done
}
