#!/bin/sh
# Builds the local stand-in for `node:22-slim` on machines that reach no container registry:
# a Debian bookworm minbase root file system (debootstrap) plus the Node 22 binary the project
# already pins (node_modules/node/bin/node) and npm 10 (packed from the npm registry), imported
# with `podman import`. Pass it to the Containerfile as BASE. A test stand-in: it may trust this
# machine's CA bundle (below); publish images built on the official base instead.
#
# Usage: scripts/container/base-image.sh [IMAGE]   (default localhost/effect-onnx-base:22-bookworm)
# Cached: does nothing when IMAGE exists already (FORCE=1 rebuilds it).
# Needs: root, podman, debootstrap, the Debian mirror (MIRROR, default deb.debian.org), npm.
set -eu

IMAGE="${1:-localhost/effect-onnx-base:22-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
NPM_VERSION="${NPM_VERSION:-10}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
NODE_BIN="$ROOT/node_modules/node/bin/node"
PODMAN="${PODMAN:-podman}"
# A machine that reaches the npm registry through a TLS-intercepting proxy (this sandbox does) needs
# its CA bundle inside the build too; by default the one Node on this machine trusts.
CA_BUNDLE="${CA_BUNDLE-${NODE_EXTRA_CA_CERTS:-}}"

for tool in "$PODMAN" debootstrap npm tar; do
  command -v "$tool" >/dev/null 2>&1 || { echo "base-image: '$tool' is missing (Debian: apt-get install -y podman runc debootstrap)" >&2; exit 3; }
done
[ "$(id -u)" = 0 ] || { echo "base-image: debootstrap needs root" >&2; exit 3; }
[ -x "$NODE_BIN" ] || { echo "base-image: $NODE_BIN is missing: run npm ci first" >&2; exit 3; }

if [ "${FORCE:-0}" != 1 ] && "$PODMAN" image exists "$IMAGE"; then
  echo "base-image: $IMAGE exists (FORCE=1 rebuilds it)"
  exit 0
fi

WORK="$(mktemp -d /var/tmp/effect-onnx-base.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
ROOTFS="$WORK/rootfs"

echo "base-image: debootstrap --variant=minbase bookworm ($MIRROR)"
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }

echo "base-image: adding node $("$NODE_BIN" --version) and npm $NPM_VERSION"
install -m 0755 "$NODE_BIN" "$ROOTFS/usr/local/bin/node"
# The pinned binary carries debug information (about 25 MB of it); the official images strip it too.
if command -v strip >/dev/null 2>&1; then strip --strip-debug "$ROOTFS/usr/local/bin/node"; fi
mkdir -p "$ROOTFS/usr/local/lib/node_modules"
(cd "$WORK" && npm pack --silent "npm@$NPM_VERSION" >npm-pack.txt)
tar -xzf "$WORK/$(tail -1 "$WORK/npm-pack.txt")" -C "$ROOTFS/usr/local/lib/node_modules"
mv "$ROOTFS/usr/local/lib/node_modules/package" "$ROOTFS/usr/local/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$ROOTFS/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$ROOTFS/usr/local/bin/npx"
chroot "$ROOTFS" /usr/local/bin/node --version >/dev/null
CA_ENV=""
if [ -n "$CA_BUNDLE" ] && [ -f "$CA_BUNDLE" ]; then
  echo "base-image: trusting $CA_BUNDLE (NODE_EXTRA_CA_CERTS; CA_BUNDLE= to leave it out)"
  install -D -m 0644 "$CA_BUNDLE" "$ROOTFS/usr/local/share/effect-onnx-base/ca-bundle.crt"
  CA_ENV="NODE_EXTRA_CA_CERTS=/usr/local/share/effect-onnx-base/ca-bundle.crt"
fi

# What an image does not need: package lists, caches, documentation.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*

echo "base-image: podman import -> $IMAGE"
tar -C "$ROOTFS" -c . | "$PODMAN" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["node"]' \
  ${CA_ENV:+--change "ENV $CA_ENV"} \
  - "$IMAGE" >/dev/null
"$PODMAN" image ls "$IMAGE"
