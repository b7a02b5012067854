#!/bin/bash
# The one prepared GPU run. Two steps:
#   1. here (a CPU machine, after npm ci, everything committed):   bash scripts/gpu/pack.sh      (~2 min; writes .gpu-pack/, git-ignored, < 64 MiB)
#   2. on the GPU host, through the device tool, from the project root:
#        run(command="bash scripts/gpu/check.sh", carry=[".gpu-pack"], timeout_s=600)
#      It installs the Vulkan loader and glvnd libraries from .gpu-pack/debs, finds the NVIDIA ICD, unpacks the project with
#      Node 22 and node_modules into /tmp/project, and runs scripts/gpu/inside.sh there: the probe, the GPU checks,
#      `bench gpu` (its goals), the soak (300 s when the rest took under ~4 min), and the crash hunt with the time left; without a
#      WebGPU adapter it stops after the probe, in seconds, with the host's Vulkan facts in summary.txt. Everything lands in $OUT
#      as 7 files (the device tool brings back 8 at most): summary.txt, logs.tar.gz, soak.log, narrow.json, gpu.json,
#      soak.json, check.log; the last lines printed are the summary.
# BUDGET_S (default 575, counted from check.sh's start) bounds the run; SOAK_S (default 300) caps the soak; PHASES (default
# "probe checks bench soak narrow"). The device tool brings back the last 12,000 characters of the output: nothing is cut here.
set -uo pipefail
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
[ -f .gpu-pack/pack.tar.xz ] && [ -f .gpu-pack/run.sh ] || { echo "no .gpu-pack/: run bash scripts/gpu/pack.sh on the CPU machine first, and carry .gpu-pack"; exit 2; }
export CHECK_STARTED_S=$(date +%s)
PROJECT_DIR=${PROJECT_DIR:-/tmp/project} bash .gpu-pack/run.sh bash scripts/gpu/inside.sh "$out" 2>&1 | tee "$out/check.log" | grep --line-buffered -v '^    at \|BackendVk'
exit "${PIPESTATUS[0]}"
