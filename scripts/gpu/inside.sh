#!/bin/bash
# Runs in the unpacked project on the GPU host (started by check.sh through run.sh); $1: the output folder.
# The device tool brings back at most 8 files from it, so it holds 7 whatever the moment the run is stopped at:
# summary.txt (host, commit, each phase's exit and seconds), logs.tar.gz (every phase's whole log, refreshed after
# each phase), soak.log (written as the soak runs), narrow.json, gpu.json, soak.json, and check.log (check.sh's).
# Dry run on a CPU machine:  BUDGET_S=120 SOAK_S=10 SIZES=1024,1024,1024,1000 NARROW_ONLY=main-fixed,workers2-fixed bash scripts/gpu/inside.sh /tmp/out
set -uo pipefail
out=${1:?usage: inside.sh OUT_DIR}
mkdir -p "$out"
# The budget counts from check.sh's start when it set CHECK_STARTED_S (the device tool's 600 s cover the Debian
# packages and the unpack of ~11,700 files too, which a sandboxed host may take a while over), else from here.
budget=${BUDGET_S:-575}
sizes=${SIZES:-1024,4096,4096,1000}
phases=${PHASES:-probe checks narrow bench soak}
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
phase checks 90 node scripts/gpu/checks.ts
phase narrow 75 env ENGINE_SECONDS=${ENGINE_SECONDS:-5} node scripts/gpu/narrow.ts --runs=300 --timeout=20 --sizes="$sizes" --out="$out/narrow.json" ${NARROW_ONLY:+--only=$NARROW_ONLY}
rm -f bench/results/gpu.json # a stale one must not pass for this run
phase bench 150 node --expose-gc bench/gpu.ts --seconds=2 --rounds=1 --warmup-ms=1500 --sizes="$sizes" --instances=1,2,3
[ -f bench/results/gpu.json ] && cp bench/results/gpu.json "$out/gpu.json"
# 40 s for the soak to load its models and the CPU reference before, and to write its summary after
soak=$(($(left) - 40))
[ "$soak" -gt "${SOAK_S:-300}" ] && soak=${SOAK_S:-300}
if [[ " $phases " != *" soak "* ]]; then
  : # not asked for
elif [ "$soak" -ge 10 ]; then
  phase soak $((soak + 60)) node scripts/gpu/soak.ts --seconds="$soak" --sizes="$sizes" --out="$out/soak.json"
else
  echo "soak skipped: $soak s (under 10) left for it" | tee -a "$summary"
fi
echo "== report (scripts/gpu/report.ts: the tables for the README)"
timeout 20 node scripts/gpu/report.ts "$out" || echo "report failed: rerun node scripts/gpu/report.ts on the files brought back"
echo "== summary ($(($(date +%s) - t0)) s)"
cat "$summary"
