#!/usr/bin/env bash
# One-time, idempotent set-up: system packages, virtualenv, Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PKGS="qemu-system-x86 qemu-utils busybox-static mmdebstrap lz4 e2fsprogs nftables iproute2"

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
# --test: a Docker engine and compose for the compose test, unless some
# engine (Docker CE, say, which conflicts with docker.io) is there already
if [ "${1:-}" = --test ]; then
  command -v dockerd >/dev/null || docker info >/dev/null 2>&1 || missing="$missing docker.io"
  docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null \
    || missing="$missing docker-compose"
fi
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
want=$(cat pyproject.toml sdk/python/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  # the server requires corral-sdk: given here as a path, pip takes it from sdk/python
  "$VENV/bin/pip" install -q -e ./sdk/python -e ".[test]"
  echo "$want" > "$stamp"
fi
