#!/usr/bin/env bash
# Build handler images: containers/build.sh [NAME...]  (default: every folder under containers/handlers/)
#
# Each handlers/<NAME>/ becomes image edgefleet/<NAME>:dev. The build context is a temp folder holding the
# handler's files plus the SDK, so handler folders stay free of copies of edge_handler.py.
# Env: BASE_IMAGE (default edgefleet/base:bookworm, ensured by base/build.sh first), DOCKER_HOST.
# The hub's image has its own script, hub/build.sh (not run here: its first build fetches wheels from PyPI).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE_IMAGE=${BASE_IMAGE:-edgefleet/base:bookworm}
export BASE_IMAGE
# The legacy builder uses the engine's local image store for FROM; it needs no buildx plugin and never asks
# a registry about a base image that was only ever `docker import`ed.
export DOCKER_BUILDKIT=0

log() { printf 'containers/build.sh: %s\n' "$*" >&2; }

"$HERE/base/build.sh" >/dev/null

if (($# == 0)); then
    names=()
    for dir in "$HERE"/handlers/*/; do names+=("$(basename "$dir")"); done
else
    names=("$@")
fi

CTX_ROOT=$(mktemp -d)
trap 'rm -rf "$CTX_ROOT"' EXIT

for name in "${names[@]}"; do
    src="$HERE/handlers/$name"
    [[ -f "$src/Dockerfile" ]] || { log "no Dockerfile in $src"; exit 1; }
    ctx="$CTX_ROOT/$name"
    mkdir -p "$ctx"
    cp -RL "$src/." "$ctx/"  # -L: a handler may link to another one's code (temp-c-v2)
    cp "$HERE/sdk/edge_handler.py" "$ctx/"
    image="edgefleet/$name:dev"
    log "building $image"
    # Build output is shown only on failure: otherwise it is the legacy builder's deprecation notice.
    if ! docker build --quiet --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$image" "$ctx" >"$ctx.log" 2>&1; then
        cat "$ctx.log" >&2
        log "building $image failed"
        exit 1
    fi
    printf '%s %s\n' "$image" "$(docker image inspect --format '{{.Id}}' "$image")"
done
