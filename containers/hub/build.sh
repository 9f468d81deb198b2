#!/usr/bin/env bash
# Build the hub's image, edgefleet/hub:dev, on the base image without any network inside the build.
#
#   containers/hub/build.sh          prints "<image> <id>"
#
# The base image has python3 but no pip (a minimal debootstrap) and a build cannot reach an index, so the host
# installs: the host's pip puts the runtime dependencies and the project, with `--target`, into two trees of
# the build context, and the Dockerfile only COPYs them (no RUN: the private engine has no bridge network).
# - Dependencies: pinned to the versions installed in .venv (what the tests run), from a wheelhouse that is
#   filled from the index once and read offline after that. The installed tree is cached by a key of the
#   requirements and pins, so an unchanged dependency set is reused byte for byte and its image layer with it.
# - The project: a wheel built from the working tree (a copy: building in place would leave build/ behind).
# .pyc files are compiled here, for their paths in the image, with hash-based invalidation: the same sources
# give the same bytes, which is what the legacy builder's layer cache compares.
# Env: BASE_IMAGE, DOCKER_HOST, HUB_IMAGE (default edgefleet/hub:dev), EDGEFLEET_BUILD_CACHE (default
# ~/.cache/edgefleet), PIP (default .venv/bin/pip: the pip of a CPython 3.11 like the image's).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BASE_IMAGE=${BASE_IMAGE:-edgefleet/base:bookworm}
HUB_IMAGE=${HUB_IMAGE:-edgefleet/hub:dev}
CACHE=${EDGEFLEET_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgefleet}
WHEELHOUSE=$CACHE/wheels
PIP=${PIP:-$REPO/.venv/bin/pip}
PYTHON=$(dirname "$PIP")/python
PACKAGES=(edge_protocol edge_agent hub fleet_simulator mqtt_session)
export DOCKER_BUILDKIT=0 PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf 'containers/hub/build.sh: %s\n' "$*" >&2; }

"$REPO/containers/base/build.sh" >/dev/null
[[ -x "$PIP" && -x "$PYTHON" ]] || { log "no pip at $PIP: run ./dev setup (or set PIP)"; exit 1; }
started=$SECONDS
mkdir -p "$WHEELHOUSE"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")  # in the cache: the finished dependency tree is moved, not copied
trap 'rm -rf "$WORK"' EXIT

# Offline from the wheelhouse first; the index only for what it lacks (a new or upgraded dependency).
pip_offline_first() {
    "$PIP" "$1" --quiet --no-index --find-links "$WHEELHOUSE" "${@:2}" >"$WORK/pip.log" 2>&1 && return
    log "the wheelhouse lacks some wheels: fetching them from the index into $WHEELHOUSE"
    "$PIP" wheel --quiet --find-links "$WHEELHOUSE" --wheel-dir "$WHEELHOUSE" "${WANT[@]}" >&2
    "$PIP" "$1" --quiet --no-index --find-links "$WHEELHOUSE" "${@:2}" >&2
}
# Compile for the path the tree has in the image (tracebacks, and the same bytes from any build directory).
compile() { "$PYTHON" -m compileall -q -j 0 --invalidation-mode checked-hash -s "$1" -p "$2" "$1" >/dev/null; }

# The runtime requirements (the postgres extra included) and the venv's pins (pip freeze leaves out the
# editable project and pip/setuptools/wheel).
"$PYTHON" - "$REPO/pyproject.toml" >"$WORK/requirements.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(*project["dependencies"], *project["optional-dependencies"]["postgres"], sep="\n")
PY
"$PIP" freeze --exclude-editable >"$WORK/constraints.txt"
key=$(cat "$WORK/requirements.txt" "$WORK/constraints.txt" <("$PYTHON" -VV) "$HERE/build.sh" | sha256sum | cut -c1-16)
DEPS=$CACHE/hub-deps-$key
if [[ ! -d "$DEPS" ]]; then
    log "installing the dependencies (key $key)"
    WANT=(--constraint "$WORK/constraints.txt" --requirement "$WORK/requirements.txt")
    pip_offline_first install --no-compile --target "$WORK/deps" "${WANT[@]}"
    rm -rf "$WORK/deps/bin"  # console scripts: their shebangs name the host's interpreter
    compile "$WORK/deps" /opt/edgefleet/deps
    rm -rf "$CACHE"/hub-deps-*  # one dependency tree at a time
    mv "$WORK/deps" "$DEPS"
fi

# The project, built in isolation with its build backend (pyproject's build-system) from the wheelhouse.
mkdir -p "$WORK/src"
cp "$REPO/pyproject.toml" "$REPO/README.md" "$WORK/src/"
for pkg in "${PACKAGES[@]}"; do cp -R "$REPO/$pkg" "$WORK/src/"; done
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
mapfile -t WANT < <("$PYTHON" -c 'import sys, tomllib; print(*tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"], sep="\n")' "$REPO/pyproject.toml")
pip_offline_first wheel --no-deps --wheel-dir "$WORK/dist" "$WORK/src"

CTX=$WORK/context
mkdir -p "$CTX/state"
"$PIP" install --quiet --no-index --no-deps --no-compile --target "$CTX/app" "$WORK"/dist/edgefleet-*.whl
# direct_url.json names this build's temp dir: without it (and its RECORD line) the same sources give the same
# layer.
rm -rf "$CTX/app/bin" "$CTX"/app/edgefleet-*.dist-info/direct_url.json
sed -i '/direct_url\.json/d' "$CTX"/app/edgefleet-*.dist-info/RECORD
compile "$CTX/app" /opt/edgefleet/app
cp -al "$DEPS" "$CTX/deps"  # hard links: the context is read, never written
cp "$HERE/Dockerfile" "$HERE/hub" "$CTX/"

log "building $HUB_IMAGE"
if ! docker build --quiet --network none --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$HUB_IMAGE" "$CTX" \
    >"$WORK/build.log" 2>&1; then
    cat "$WORK/build.log" >&2
    log "building $HUB_IMAGE failed"
    exit 1
fi
log "built $HUB_IMAGE in $((SECONDS - started))s"
printf '%s %s\n' "$HUB_IMAGE" "$(docker image inspect --format '{{.Id}}' "$HUB_IMAGE")"
