#!/usr/bin/env bash
# A local Debian base image for hosts that reach no container registry: a minimal trixie
# rootfs made with mmdebstrap (Python 3.13 and its venv, PostgreSQL, Redis), imported with
# `docker import`. The app, PostgreSQL and Redis stand-in images are built on it.
#   ops/containers/base.sh IMAGE_TAG
set -euo pipefail
tag="${1:?usage: base.sh IMAGE_TAG}"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag exists" >&2
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "building $tag with mmdebstrap (Debian trixie, minbase) ..." >&2
mmdebstrap --variant=minbase --quiet \
    --include=python3,python3-venv,ca-certificates,postgresql,redis-server \
    trixie "$work/rootfs.tar" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
docker import "$work/rootfs.tar" "$tag" >/dev/null
echo "imported $tag" >&2
