#!/usr/bin/env bash
# Make a Docker engine reachable for edgefleet development, tests and CI.
#
#   eval "$(scripts/engine.sh start)"   # prints exactly one line: export DOCKER_HOST=unix:///...
#   scripts/engine.sh stop              # stops the dockerd that `start` launched (if any)
#   scripts/engine.sh running           # exit status 0 when an engine already answers
#
# An engine that already answers (DOCKER_HOST, then /var/run/docker.sock) is reused as is. Otherwise, as
# root, Debian's dockerd is started on a private socket so it never collides with a system engine, without
# systemd (CI machines and VMs often have none). Diagnostics go to stderr so stdout stays eval-able.
set -euo pipefail

# Overridable so that the script itself can be exercised beside the engine everyone else is using.
STATE_DIR=${EDGEFLEET_ENGINE_STATE_DIR:-/run/edgefleet}
SOCK="$STATE_DIR/docker.sock"
PIDFILE="$STATE_DIR/dockerd.pid"
LOG="$STATE_DIR/dockerd.log"
DATA_ROOT=${EDGEFLEET_ENGINE_DATA_ROOT:-/var/lib/edgefleet/docker}
EXEC_ROOT="$STATE_DIR/docker-exec"
START_DEADLINE_S=${EDGEFLEET_ENGINE_DEADLINE_S:-60}
STOP_DEADLINE_S=30

log() { printf 'engine.sh: %s\n' "$*" >&2; }

answers() {  # answers HOST -> 0 when a Docker engine replies on HOST
    command -v docker >/dev/null 2>&1 || return 1
    # Bounded: a wedged daemon accepts the connection but never replies.
    DOCKER_HOST="$1" timeout 10 docker version >/dev/null 2>&1
}

our_pid() {  # prints the pid of the dockerd we started, if it is still alive
    local pid
    [[ -s "$PIDFILE" ]] || return 1
    pid=$(<"$PIDFILE")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # A recycled pid must not make us wait on (or kill) an unrelated process.
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] || return 1
    echo "$pid"
}

emit() { printf 'export DOCKER_HOST=%s\n' "$1"; }

start() {
    if [[ -n "${DOCKER_HOST:-}" ]] && answers "$DOCKER_HOST"; then
        log "reusing the engine at DOCKER_HOST=$DOCKER_HOST"
        emit "$DOCKER_HOST"; return 0
    fi
    if [[ -S /var/run/docker.sock ]] && answers unix:///var/run/docker.sock; then
        log "reusing the system engine at /var/run/docker.sock"
        emit unix:///var/run/docker.sock; return 0
    fi
    if answers "unix://$SOCK"; then
        log "reusing edgefleet's dockerd (pid $(our_pid || echo '?'))"
        emit "unix://$SOCK"; return 0
    fi
    if [[ $EUID -ne 0 ]]; then
        cat >&2 <<MSG
engine.sh: no Docker engine answers and starting one needs root. Either:
  - install and start Docker (Debian: sudo apt-get install docker.io && sudo systemctl start docker),
    and add yourself to the 'docker' group; or
  - run: sudo $0 start   (starts a private dockerd on $SOCK), then export DOCKER_HOST=unix://$SOCK; or
  - export DOCKER_HOST=<an engine you can reach> and run this again.
MSG
        return 1
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        log "dockerd not found: apt-get install docker.io"
        return 1
    fi

    mkdir -p "$STATE_DIR" "$DATA_ROOT" "$EXEC_ROOT"
    # Two concurrent `start`s (parallel CI steps, two developers) must not race to launch two daemons.
    exec 9>"$STATE_DIR/engine.lock"
    flock -w "$START_DEADLINE_S" 9 || { log "timed out waiting for $STATE_DIR/engine.lock"; return 1; }

    local pid
    if pid=$(our_pid); then
        log "dockerd (pid $pid) is running but not answering yet; waiting for it"
    else
        rm -f "$PIDFILE" "$SOCK"
        log "starting dockerd on $SOCK (log: $LOG)"
        # dockerd 20.10 launches and supervises its own containerd (under --exec-root) when neither
        # --containerd nor /run/containerd/containerd.sock exists, so no separate containerd is needed.
        # setsid + fd 9 closed: the daemon must outlive this shell and must not hold our lock.
        setsid dockerd \
            --host "unix://$SOCK" \
            --data-root "$DATA_ROOT" \
            --exec-root "$EXEC_ROOT" \
            --pidfile "$PIDFILE" \
            --bridge=none --iptables=false --ip-masq=false \
            </dev/null >>"$LOG" 2>&1 9>&- &
        pid=$!
    fi

    local deadline=$((SECONDS + START_DEADLINE_S))
    until answers "unix://$SOCK"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "dockerd exited during start-up; last lines of $LOG:"
            tail -n 20 "$LOG" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "dockerd did not answer within ${START_DEADLINE_S}s; last lines of $LOG:"
            tail -n 20 "$LOG" >&2 || true
            return 1
        fi
        sleep 0.2  # polling interval, not synchronisation
    done
    log "dockerd (pid $pid) answers on $SOCK"
    emit "unix://$SOCK"
}

stop() {
    local pid
    if ! pid=$(our_pid); then
        log "no dockerd started by this script is running"
        rm -f "$PIDFILE"
        return 0
    fi
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    local deadline=$((SECONDS + STOP_DEADLINE_S))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "dockerd did not exit within ${STOP_DEADLINE_S}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
            break
        fi
        sleep 0.1  # polling interval, not synchronisation
    done
    log "dockerd stopped"
}

running() {  # 0 when an engine that `start` would reuse already answers
    { [[ -n "${DOCKER_HOST:-}" ]] && answers "$DOCKER_HOST"; } ||
        { [[ -S /var/run/docker.sock ]] && answers unix:///var/run/docker.sock; } ||
        answers "unix://$SOCK"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    running) running ;;
    *) echo "usage: $0 start|stop|running" >&2; exit 2 ;;
esac
