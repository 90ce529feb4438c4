#!/bin/sh
# Base images for a Docker engine that reaches no registry: a Debian bookworm
# root filesystem (python3 is 3.11) made with mmdebstrap and `docker import`ed.
#   corral-base:bookworm      BASE for infra/Dockerfile
#   corral-postgres:bookworm  PostgreSQL 15 that honours the official image's
#                             POSTGRES_USER/PASSWORD/DB and PGDATA (compose.local.yaml)
# Needs root, mmdebstrap and an apt mirror. Existing tags are kept unless FORCE=1.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
mirror=${DEBIAN_MIRROR:-}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
have() { [ "${FORCE:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

if ! have corral-base:bookworm; then
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,ca-certificates \
    bookworm - $mirror | docker import - corral-base:bookworm
fi
# the entrypoint's hash in the image: a changed script makes a new image
sum=$(sha256sum "$here/postgres-entrypoint.sh" | cut -c1-16)
if ! have corral-postgres:bookworm || ! docker image inspect corral-postgres:bookworm \
     --format '{{json .Config.Env}}' | grep -q "CORRAL_ENTRYPOINT=$sum"; then
  mmdebstrap --quiet --variant=minbase --include=postgresql-15 \
    --customize-hook="copy-in $here/postgres-entrypoint.sh /usr/local/bin" \
    --customize-hook='chroot "$1" chmod 755 /usr/local/bin/postgres-entrypoint.sh' \
    bookworm "$tmp/pg.tar" $mirror
  docker import \
      --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/bin' \
      --change 'ENV PGDATA=/var/lib/postgresql/data' \
      --change "ENV CORRAL_ENTRYPOINT=$sum" \
      --change 'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]' \
      "$tmp/pg.tar" corral-postgres:bookworm
fi
