#!/bin/sh
# Make the base image (default debian:bookworm-slim) available to the local Docker engine.
#
#   docker/make-base-image.sh [IMAGE]
#
# 1. If the image is already present, do nothing.
# 2. Else try `docker pull IMAGE`.
# 3. Else (air-gapped site, no registry reachable) build an equivalent image offline:
#    debootstrap --variant=minbase the Debian suite into a temporary root file system,
#    using the host's own apt mirror, and `docker import` it under the same name.
#
# Environment:
#   DEBIAN_MIRROR   apt mirror for debootstrap (default: first URIs: line of the host's
#                   /etc/apt/sources.list.d/debian.sources, or the first `deb` line of
#                   /etc/apt/sources.list)
#   DEBIAN_SUITE    default: bookworm
#   FORCE_DEBOOTSTRAP=1  skip the pull and always build offline
set -eu

IMAGE=${1:-debian:bookworm-slim}
SUITE=${DEBIAN_SUITE:-bookworm}
SOURCES=/etc/apt/sources.list.d/debian.sources

log() { echo "make-base-image: $*" >&2; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE is present."
    exit 0
fi

if [ "${FORCE_DEBOOTSTRAP:-0}" != 1 ]; then
    log "trying docker pull $IMAGE"
    if timeout 120 docker pull "$IMAGE" >/dev/null 2>&1; then
        log "pulled $IMAGE."
        exit 0
    fi
    log "cannot pull $IMAGE; building it offline with debootstrap."
fi

host_mirror() {
    if [ -r "$SOURCES" ]; then
        awk '/^URIs:/ { print $2; exit }' "$SOURCES"
    elif [ -r /etc/apt/sources.list ]; then
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { print $i; exit } }' /etc/apt/sources.list
    fi
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
if [ -z "$MIRROR" ]; then
    log "no apt mirror found in $SOURCES or /etc/apt/sources.list; set DEBIAN_MIRROR"
    exit 1
fi

. "$(dirname "$0")/common.sh"

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

ROOTFS=$(mktemp -d /tmp/base-rootfs.XXXXXX)
trap 'as_root rm -rf "$ROOTFS"' EXIT INT TERM

log "debootstrap --variant=minbase $SUITE from $MIRROR"
if ! as_root debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1; then
    tail -n 30 "$ROOTFS.log" >&2
    rm -f "$ROOTFS.log"
    exit 1
fi
rm -f "$ROOTFS.log"

# Same apt sources as the host, so `apt-get install` in the Dockerfile uses the same mirror.
if [ -r "$SOURCES" ] && [ -z "${DEBIAN_MIRROR:-}" ]; then
    as_root cp "$SOURCES" "$ROOTFS/etc/apt/sources.list.d/debian.sources"
    as_root rm -f "$ROOTFS/etc/apt/sources.list"
fi
# Slim it down like the official -slim image: no package lists, caches, docs or man pages.
as_root sh -c "rm -rf '$ROOTFS'/var/lib/apt/lists/* '$ROOTFS'/var/cache/apt/*.bin \
    '$ROOTFS'/var/cache/apt/archives/*.deb '$ROOTFS'/usr/share/doc/* '$ROOTFS'/usr/share/man/* \
    '$ROOTFS'/usr/share/info/* '$ROOTFS'/var/log/*.log '$ROOTFS'/tmp/*"

as_root tar -C "$ROOTFS" -c . | docker import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --message "debootstrap --variant=minbase $SUITE (made by docker/make-base-image.sh)" \
    - "$IMAGE" >/dev/null
log "imported $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%d MB", $1 / 1e6 }'))."
