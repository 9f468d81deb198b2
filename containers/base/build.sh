#!/usr/bin/env bash
# Ensure the handler base image (edgefleet/base:bookworm) exists in the engine at DOCKER_HOST; print its id.
#
# Order: already present -> nothing to do; `docker pull python:3.11-slim` (bounded, machines without Hub
# access fail fast) -> tag it; otherwise debootstrap a minimal Debian with python3 from the machine's own apt
# mirror and `docker import` it, which needs no registry at all.
# The base image is shared by every handler build: nothing in the project deletes it.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-edgefleet/base:bookworm}
PULL_IMAGE=${EDGEFLEET_BASE_PULL_IMAGE:-python:3.11-slim}
SUITE=bookworm

log() { printf 'base/build.sh: %s\n' "$*" >&2; }

image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null; }

if id=$(image_id "$BASE_IMAGE"); then
    log "$BASE_IMAGE already present"
    echo "$id"; exit 0
fi

if [[ "${EDGEFLEET_BASE_PULL:-1}" != 0 ]] && timeout 20 docker pull --quiet "$PULL_IMAGE" >&2; then
    docker tag "$PULL_IMAGE" "$BASE_IMAGE"
    log "tagged $PULL_IMAGE as $BASE_IMAGE"
    image_id "$BASE_IMAGE"; exit 0
fi
log "pulling $PULL_IMAGE failed or disabled; building $BASE_IMAGE with debootstrap"

if [[ $EUID -ne 0 ]]; then
    log "debootstrap needs root: run 'sudo $0' (with DOCKER_HOST exported)"; exit 1
fi
command -v debootstrap >/dev/null || { log "debootstrap missing: apt-get install debootstrap"; exit 1; }

apt_mirror() {  # the machine's own Debian mirror (proxies and snapshots keep working), not its security one
    local uri=""
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        uri=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
        # `deb [opts] URI suite ...`: the URI is the first field after the optional [..] block.
        uri=$(sed -E -n 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' /etc/apt/sources.list \
            | grep -v security | head -n 1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

ROOT=$(mktemp -d "${TMPDIR:-/var/tmp}/edgefleet-base.XXXXXX")
cleanup() {
    # debootstrap mounts proc/sys inside the target; a failed run can leave them, and rm must never
    # descend into a live /proc or /sys.
    local m
    for m in $(findmnt -rn -o TARGET | grep -F "$ROOT" | sort -r || true); do umount -l "$m" || true; done
    rm -rf --one-file-system "$ROOT"
}
trap cleanup EXIT

MIRROR=$(apt_mirror)
log "debootstrap $SUITE from $MIRROR into $ROOT"
started=$SECONDS
# python3 (not python3-minimal): the SDK needs json and the rest of the standard library.
debootstrap --variant=minbase --include=python3 "$SUITE" "$ROOT" "$MIRROR" >&2
# Package caches and indexes are dead weight in an image that never runs apt.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log

tar -C "$ROOT" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$BASE_IMAGE" >&2
log "built $BASE_IMAGE in $((SECONDS - started))s"
image_id "$BASE_IMAGE"
