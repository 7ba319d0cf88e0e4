#!/bin/sh
# Entrypoint of the sweep-service image: one image, several roles.
#
#   head     start a Ray head (or join RAY_CLUSTER_ADDRESS), run the coordinator on it for
#            SWEEP_CONFIG, print its summary, stop Ray and exit with the coordinator's status
#   worker   join the Ray cluster at RAY_HEAD_ADDRESS and run trials until the head goes away
#   report   serve the results' report folder (charts + HTML) over HTTP on port 8080
#   help     this text
#   anything else is executed as a command, e.g. `python -m sweep_service status --db ...`
#
# Started as root (the default), it first makes the writable mounts (results, data set,
# weights cache) writable for SWEEP_UID:SWEEP_GID (default 1000:1000, the image's `sweep`
# user), chowning them only if that user cannot write them, and then drops root with
# setpriv: no process of the sweep runs as root. Started with `--user`, it skips that step.
set -eu

SWEEP_UID=${SWEEP_UID:-1000}
SWEEP_GID=${SWEEP_GID:-1000}
RESULTS_DIR=/app/results
DATA_DIR=/app/data
WEIGHTS_DIR=/app/weights

if [ "$(id -u)" = 0 ]; then
    as_user() { setpriv --reuid="$SWEEP_UID" --regid="$SWEEP_GID" --clear-groups -- "$@"; }
    for dir in "$RESULTS_DIR" "$DATA_DIR" "$WEIGHTS_DIR" /home/sweep; do
        # Only mounts the container may write (not :ro ones), and only if the user cannot
        # write them yet: a fresh ./results that Docker created as root, a volume first
        # used with another SWEEP_UID. Folders the user can already write are left alone.
        if [ -d "$dir" ] && [ -w "$dir" ] && ! as_user test -w "$dir"; then
            chown -R "$SWEEP_UID:$SWEEP_GID" "$dir"
        fi
    done
    export HOME=/home/sweep
    exec setpriv --reuid="$SWEEP_UID" --regid="$SWEEP_GID" --clear-groups -- "$0" "$@"
fi

log() { echo "[$1] $2" >&2; }

# ray_start ROLE MESSAGE ARGS...: `ray start ARGS` with its long banner kept in a file,
# shown only if it fails.
ray_start() {
    role=$1 message=$2
    shift 2
    if ray start --disable-usage-stats "$@" >/tmp/ray-start.log 2>&1; then
        log "$role" "$message"
    else
        log "$role" "ray start $* failed:"
        cat /tmp/ray-start.log >&2
        exit 1
    fi
}

usage() { sed -n '2,15s/^# \{0,1\}//p' "$0"; }

run_head() {
    config=${SWEEP_CONFIG:-configs/quick.yaml}
    if [ ! -f "$config" ]; then
        log head "SWEEP_CONFIG=$config: no such file in /app (configs/ is mounted from the host)"
        exit 2
    fi
    if [ -n "${RAY_CLUSTER_ADDRESS:-}" ]; then
        # Coordinator for an existing cluster: join it as a node without CPUs, so that the
        # driver runs on a Ray node and trials run on the cluster's workers.
        ray_start head "joined the Ray cluster at $RAY_CLUSTER_ADDRESS (as a node without CPUs)" \
            --address="$RAY_CLUSTER_ADDRESS" --num-cpus=0 --num-gpus=0
    else
        ray_start head "Ray head up (GCS port 6379, dashboard port 8265)" \
            --head --port=6379 --num-cpus=0 --num-gpus=0 --dashboard-host=0.0.0.0 --dashboard-port=8265
    fi
    # For the healthcheck (compose.yaml): the GCS this node belongs to. A cheap TCP check
    # of it, instead of `ray health-check`, which costs ~1 s of CPU per run.
    echo "${RAY_CLUSTER_ADDRESS:-127.0.0.1:6379}" >/tmp/ray-gcs-address
    log head "running the sweep of $config"
    status=0
    RAY_ADDRESS=auto python -m sweep_service run "$config" \
        --db "$RESULTS_DIR/sweep.db" --out "$RESULTS_DIR" \
        --data-root "$DATA_DIR" --weights-dir "$WEIGHTS_DIR" || status=$?
    ray stop >/dev/null 2>&1 || true
    if [ "$status" = 0 ]; then
        # RESULTS_ON_HOST and REPORT_URL are set by compose.yaml: say where things are on the host.
        log head "sweep finished: results in ${RESULTS_ON_HOST:-$RESULTS_DIR} (sweep.db, report/index.html), report served on ${REPORT_URL:-the report service}"
    else
        log head "coordinator exited with status $status"
    fi
    exit "$status"
}

run_worker() {
    head=${RAY_HEAD_ADDRESS:-ray-head:6379}
    ray_start worker "joined the Ray cluster at $head with ${RAY_WORKER_CPUS:-1} CPU(s), ${RAY_WORKER_GPUS:-0} GPU(s)" \
        --address="$head" --num-cpus="${RAY_WORKER_CPUS:-1}" --num-gpus="${RAY_WORKER_GPUS:-0}"
    # Run trials until the head goes away (the sweep is over: exit 0) or the raylet dies
    # while the head is still there (exit 1).
    status=0
    python - "$head" <<'PY' || status=$?
import socket, sys, time
import psutil

host, port = sys.argv[1].rsplit(":", 1)

def head_up():
    try:
        socket.create_connection((host, int(port)), 3).close()
        return True
    except OSError:
        return False

def raylet_up():
    return any(p.info["name"] == "raylet" for p in psutil.process_iter(["name"]))

misses = 0
while True:
    time.sleep(5)
    if not raylet_up():
        sys.exit(0 if not head_up() else 1)
    misses = 0 if head_up() else misses + 1
    if misses >= 3:
        sys.exit(0)
PY
    ray stop >/dev/null 2>&1 || true
    if [ "$status" = 0 ]; then
        log worker "the Ray head at $head is gone (sweep over): worker done"
    else
        log worker "the raylet died; its log:"
        tail -n 30 /tmp/ray/session_latest/logs/raylet.out >&2 2>/dev/null || true
    fi
    exit "$status"
}

run_report() {
    log report "serving $RESULTS_DIR/report on port 8080"
    # http.server, minus the log line of every healthcheck, and with no-cache: the
    # coordinator rewrites the report while the sweep runs.
    exec python - "$RESULTS_DIR/report" <<'PY'
import functools, http.server, sys

class Handler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, fmt, *args):
        if self.client_address[0] != "127.0.0.1":  # the healthcheck asks from inside
            super().log_message(fmt, *args)

handler = functools.partial(Handler, directory=sys.argv[1])
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), handler).serve_forever()
PY
}

role=${1:-help}
case "$role" in
    head) run_head ;;
    worker) run_worker ;;
    report) run_report ;;
    help | --help | -h) usage ;;
    *) exec "$@" ;;
esac
