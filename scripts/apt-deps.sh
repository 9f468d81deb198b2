#!/usr/bin/env bash
# Install the Debian packages that edgefleet's real parts need, when missing; shared by ./dev and .ci/run.
# apt-get update runs only when something is missing, so a prepared machine starts without touching apt.
set -euo pipefail

# python3-venv: Debian's python3 cannot create .venv without it. postgresql: the hub's store tests run on
# PostgreSQL too (scripts/postgres.sh starts a private cluster; the system one is not used).
PACKAGES=(mosquitto mosquitto-clients docker.io debootstrap docker-registry python3-venv postgresql chromium chromium-driver)

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "apt-deps.sh: not a Debian system; make sure these (or equivalents) are installed: ${PACKAGES[*]}" >&2
    exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == installed ]] || missing+=("$pkg")
done
((${#missing[@]} == 0)) && exit 0

if [[ $EUID -ne 0 ]]; then
    echo "apt-deps.sh: missing Debian packages; run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "apt-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq "${missing[@]}" >&2
