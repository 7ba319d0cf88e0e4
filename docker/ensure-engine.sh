#!/bin/sh
# Make sure a Docker engine is running; install and start one if not.
#
#   docker/ensure-engine.sh
#
# On a machine that already runs Docker (a laptop with Docker Desktop, a CI runner with a
# Docker service) this only checks `docker info` and exits. Otherwise, on a Debian/Ubuntu
# host where we are root, it installs the engine, Compose and debootstrap from the
# distribution's own packages and starts `dockerd` in the background (log: $DOCKERD_LOG).
set -eu

DOCKERD_LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
WAIT_SECONDS=${DOCKER_WAIT_SECONDS:-60}

log() { echo "ensure-engine: $*" >&2; }

engine_up() { docker info >/dev/null 2>&1; }
dockerd_running() { pgrep -x dockerd >/dev/null 2>&1 || pidof dockerd >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
    log "Docker engine is running."
    exit 0
fi

. "$(dirname "$0")/common.sh"

missing=""
command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
command -v docker >/dev/null 2>&1 || missing="$missing docker.io"
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    missing="$missing docker-compose"
fi
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
if [ -n "$missing" ]; then
    command -v apt-get >/dev/null 2>&1 || { log "no Docker engine and no apt-get: install Docker yourself"; exit 1; }
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    pkgs=$(echo $missing | tr ' ' '\n' | sort -u | tr '\n' ' ')
    log "installing:$pkgs"
    as_root apt-get update -qq
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
fi

# Start dockerd unless one runs; keep waiting for it to answer, and start it again if it
# goes away meanwhile (e.g. an old daemon that was still shutting down).
i=0
until engine_up; do
    if ! dockerd_running; then
        log "starting dockerd (log: $DOCKERD_LOG)"
        as_root sh -c "nohup dockerd >'$DOCKERD_LOG' 2>&1 &"
    fi
    i=$((i + 1))
    if [ "$i" -ge "$WAIT_SECONDS" ]; then
        log "the Docker engine did not answer in ${WAIT_SECONDS}s; last lines of $DOCKERD_LOG:"
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        exit 1
    fi
    sleep 1
done
log "Docker engine is running."
