#!/usr/bin/env bash
# One-time, idempotent set-up: system packages, virtualenv, Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PKGS="qemu-system-x86 qemu-utils busybox-static mmdebstrap lz4 e2fsprogs nftables iproute2"

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
# the guest image build resolves the cloud kernel through apt's package lists
if [ -n "$missing" ] || ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  $SUDO apt-get update -qq
fi
if [ -n "$missing" ]; then
  echo "installing system packages:$missing"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.corral-deps"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
