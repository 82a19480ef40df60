#!/usr/bin/env bash
# make test-containers: build the image, bring the Compose stack up, run the smoke test
# (ops/containers/smoke.py), tear everything down.
#
# - Uses the Docker daemon that runs (DOCKER_HOST), else starts its own (Debian's docker.io)
#   with a private data root, no bridge and no iptables, and removes it afterwards.
# - Host networking only (ops/compose.test.yaml): every server listens on a free loopback port.
# - Where the registry cannot be reached (or LOCAL_IMAGES=1), the base image is a Debian
#   rootfs from mmdebstrap (ops/containers/base.sh) with PostgreSQL and Redis stand-ins built
#   on it, and the app's wheels are downloaded on the host into ops/wheelhouse.
# Leaves no container, volume, network or daemon it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
compose_bin="${COMPOSE_BIN:-$root/.venv/bin/docker-compose}"
work="$(mktemp -d /tmp/ordinaut-containers.XXXXXX)"
project="ordinaut-test-$$"
own_daemon=""
say() { echo "test-containers: $*" >&2; }

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cleanup() {
    status=$?
    set +e
    if [ -n "${COMPOSE:-}" ]; then
        say "tearing down"
        $COMPOSE down --volumes --remove-orphans --timeout 20 >/dev/null 2>&1 || true
    fi
    if [ -n "$own_daemon" ]; then
        pid="$(cat "$work/docker.pid" 2>/dev/null)"
        [ -n "$pid" ] && kill "$pid" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        # dockerd leaves its network namespace bind-mounted under its exec root.
        grep -o " $work[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    else
        docker image rm -f "${APP_IMAGE:-none}" >/dev/null 2>&1 || true
    fi
    rm -f "$root"/ops/wheelhouse/*.whl
    rm -rf "$work"
    if [ "$status" = 0 ]; then say "passed, nothing left running"; else say "FAILED (exit $status)"; fi
    exit "$status"
}
trap cleanup EXIT

# -- a daemon -------------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    say "using the running Docker daemon"
else
    command -v dockerd >/dev/null || { say "no Docker daemon and no dockerd (apt-get install docker.io)"; exit 1; }
    [ "$(id -u)" = 0 ] || { say "starting dockerd needs root"; exit 1; }
    export DOCKER_HOST="unix://$work/docker.sock"
    say "starting dockerd (no bridge, no iptables, data under $work)"
    dockerd --bridge=none --iptables=false --ip6tables=false --data-root "$work/data" \
        --exec-root "$work/exec" --host "$DOCKER_HOST" --pidfile "$work/docker.pid" \
        >"$work/dockerd.log" 2>&1 &
    own_daemon=1
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { cat "$work/dockerd.log" >&2; exit 1; }
fi
export DOCKER_BUILDKIT=0  # the classic builder: no buildx plugin needed
# A build's output goes to a log, shown when it fails.
build() {
    docker build --network host "$@" >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; return 1; }
}

# -- images ---------------------------------------------------------------------------------
tag="$$"
export APP_IMAGE="ordinaut-test/app:$tag"
build_args=()
if [ -z "${LOCAL_IMAGES:-}" ] && timeout 30 docker pull -q python:3.12-slim-bookworm >/dev/null 2>&1 \
    && timeout 60 docker pull -q postgres:17 >/dev/null 2>&1 && timeout 60 docker pull -q redis:7 >/dev/null 2>&1; then
    say "registry reachable: official base, postgres and redis images"
    postgres_image=postgres:17 redis_image=redis:7
else
    base="ordinaut-test/base:trixie"
    say "no registry: local images on $base"
    bash ops/containers/base.sh "$base"
    build -f ops/containers/postgres.Dockerfile --build-arg BASE_IMAGE="$base" \
        -t ordinaut-test/postgres:trixie .
    build -f ops/containers/redis.Dockerfile --build-arg BASE_IMAGE="$base" \
        -t ordinaut-test/redis:trixie .
    postgres_image=ordinaut-test/postgres:trixie redis_image=ordinaut-test/redis:trixie
    pyver="$(docker run --rm --network none "$base" python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')"
    say "downloading the runtime wheels for Python $pyver into ops/wheelhouse"
    "$python" -m pip download --quiet --disable-pip-version-check -r requirements.txt \
        --only-binary=:all: --python-version "$pyver" --implementation cp \
        --abi "cp$pyver" --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d ops/wheelhouse 2>&1 | grep -v "^WARNING: Location" >&2 || true
    build_args=(--build-arg "BASE_IMAGE=$base" --build-arg "PIP_INSTALL_OPTIONS=--no-index")
fi
say "building $APP_IMAGE"
started=$SECONDS
build "${build_args[@]}" -t "$APP_IMAGE" .
say "built in $((SECONDS - started)) s"

# -- the stack ------------------------------------------------------------------------------
secret() { "$python" -c 'import secrets; print(secrets.token_urlsafe(48))'; }
cat >"$work/compose.env" <<ENV
SECRET_KEY=$(secret)
POSTGRES_PASSWORD=$(secret)
METRICS_TOKEN=$(secret)
ORDINAUT_IMAGE=$APP_IMAGE
POSTGRES_IMAGE=$postgres_image
REDIS_IMAGE=$redis_image
POSTGRES_HOST=127.0.0.1
POSTGRES_PORT=$(free_port)
REDIS_HOST=127.0.0.1
REDIS_PORT=$(free_port)
WEB_PORT=$(free_port)
SCHEDULER_METRICS_PORT=$(free_port)
ENV
export COMPOSE="$compose_bin -p $project -f compose.yaml -f ops/compose.test.yaml --env-file $work/compose.env"
say "compose config"
$COMPOSE config --quiet
$COMPOSE --profile observability config --quiet
say "up (2 workers)"
$COMPOSE up -d --wait --wait-timeout 180 --scale worker=2 || { $COMPOSE logs --tail 80 >&2; exit 1; }
WEB_PORT="$(grep '^WEB_PORT=' "$work/compose.env" | cut -d= -f2)" \
    "$python" ops/containers/smoke.py || { $COMPOSE logs --tail 80 >&2; exit 1; }
