#!/bin/bash
# Runs in the unpacked project on the GPU host (started by check.sh through run.sh); $1: the output folder.
# The device tool brings back at most 8 files from it, so it holds 7 whatever the moment the run is stopped at:
# summary.txt (host, commit, each phase's exit and seconds), logs.tar.gz (every phase's whole log, refreshed after
# each phase), soak.log (written as the soak runs), narrow.json, gpu.json, soak.json, and check.log (check.sh's).
# The phases run in the order of what the "Done when" needs: the probe (without an adapter the run stops there, in
# seconds, with the host's Vulkan facts: nothing else is worth the device time), the GPU checks, `bench gpu` (its goals),
# the soak (300 s), then the crash hunt with whatever time is left.
# Dry run on a CPU machine (every phase, ~2 min):  ALLOW_CPU=1 BUDGET_S=220 SOAK_S=10 SIZES=1024,1024,1024,1000 NARROW_ONLY=main-fixed,workers2-fixed bash scripts/gpu/inside.sh /tmp/out
set -uo pipefail
out=${1:?usage: inside.sh OUT_DIR}
mkdir -p "$out"
# The budget counts from check.sh's start when it set CHECK_STARTED_S (the device tool's 600 s cover the Debian
# packages and the unpack of ~11,700 files too, which a sandboxed host may take a while over), else from here.
budget=${BUDGET_S:-575}
sizes=${SIZES:-1024,4096,4096,1000}
phases=${PHASES:-probe checks bench soak narrow}
soak_s=${SOAK_S:-300}
t0=${CHECK_STARTED_S:-$(date +%s)}
left() { echo $((budget - ($(date +%s) - t0))); }
logs=$(mktemp -d)
summary="$out/summary.txt"
phase() { # name limit command...
  local name=$1 limit=$2 s rc
  shift 2
  case " $phases " in *" $name "*) ;; *) return 0 ;; esac
  # no phase may run past the budget (15 s kept for the summary and the tool's transfer)
  local room=$(($(left) - 15))
  if [ "$room" -lt 5 ]; then echo "$name skipped: the budget is spent" | tee -a "$summary"; return 0; fi
  [ "$limit" -gt "$room" ] && limit=$room
  echo "== $name: limit ${limit} s, $(left) s of the budget left"
  echo "$name: $*" >>"$summary"
  s=$(date +%s)
  # the soak's log goes straight to $out, so that a run stopped during it still brings its progress back
  local log="$logs/$name.log"
  [ "$name" = soak ] && log="$out/soak.log"
  timeout -k 5 "$limit" "$@" >"$log" 2>&1
  rc=$?
  echo "$name exit=$rc seconds=$(($(date +%s) - s))" | tee -a "$summary"
  tar -czf "$out/logs.tar.gz" -C "$logs" .
  grep -v '^    at \|BackendVk\|^$' "$log" | tail -n 40
}
{
  date -u
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  echo "node $(node --version), $(nproc) cores, VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
  echo "packed from: ${PACKED_FROM:-unknown}"
} >"$summary" 2>&1
cat "$summary"

phase probe 30 node scripts/gpu/probe.ts
if [[ " $phases " == *" probe "* ]] && ! grep -q '"available":true' "$logs/probe.log" && [ "${ALLOW_CPU:-0}" != 1 ]; then
  # No adapter: every later phase would measure the CPU alone. Say what the host lacks, and stop (ALLOW_CPU=1 goes on).
  {
    echo "no WebGPU adapter: the run stops here (ALLOW_CPU=1 runs the CPU phases anyway)"
    echo "-- vulkan/glvnd libraries:"; ldconfig -p | grep -Ei 'libvulkan|libGLX|libEGL|libGLdispatch|nvidia' | head -20
    echo "-- /dev/nvidia*:"; ls -l /dev/nvidia* 2>&1 | head
    echo "-- ICD files:"; timeout 20 find / -xdev \( -path /proc -o -path /sys \) -prune -o -name '*nvidia*icd*.json' -print 2>/dev/null | head
    echo "-- the probe with VK_LOADER_DEBUG=error,warn:"; VK_LOADER_DEBUG=error,warn timeout 30 node scripts/gpu/probe.ts 2>&1 | tail -n 30
  } >>"$summary" 2>&1
  tar -czf "$out/logs.tar.gz" -C "$logs" .
  cat "$summary"
  exit 3
fi
phase checks 60 node scripts/gpu/checks.ts
rm -f bench/results/gpu.json # a stale one must not pass for this run
# bench gets 90-150 s: what leaves the soak its 300 s (plus 55 s to load and summarise), never under 90
bench=$(($(left) - 15 - soak_s - 55))
[ "$bench" -gt 150 ] && bench=150
[ "$bench" -lt 90 ] && bench=90
phase bench "$bench" node --expose-gc bench/gpu.ts --seconds=2 --rounds=1 --warmup-ms=1500 --sizes="$sizes" --instances=1,2,3
[ -f bench/results/gpu.json ] && cp bench/results/gpu.json "$out/gpu.json"
# 40 s for the soak to load its models and the CPU reference before, and to write its summary after (within its phase's
# limit, which keeps 15 s of the budget)
soak=$(($(left) - 55))
[ "$soak" -gt "$soak_s" ] && soak=$soak_s
if [[ " $phases " != *" soak "* ]]; then
  : # not asked for
elif [ "$soak" -ge 10 ]; then
  phase soak $((soak + 60)) node scripts/gpu/soak.ts --seconds="$soak" --sizes="$sizes" --out="$out/soak.json"
else
  echo "soak skipped: $soak s (under 10) left for it" | tee -a "$summary"
fi
phase narrow 75 env ENGINE_SECONDS=${ENGINE_SECONDS:-5} node scripts/gpu/narrow.ts --runs=300 --timeout=20 --sizes="$sizes" --out="$out/narrow.json" ${NARROW_ONLY:+--only=$NARROW_ONLY}
echo "== report (scripts/gpu/report.ts: the tables for the README)"
timeout 10 node scripts/gpu/report.ts "$out" || echo "report failed: rerun node scripts/gpu/report.ts on the files brought back"
echo "== summary ($(($(date +%s) - t0)) s)"
cat "$summary"
