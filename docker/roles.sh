#!/bin/bash
# Roles of the sweep-service image (run by docker/entrypoint.sh as the sweep's user):
#
#   head     start a Ray head (or join RAY_CLUSTER_ADDRESS), run the coordinator on it for
#            SWEEP_CONFIG, stop Ray and exit with the coordinator's status
#   worker   join the Ray head at RAY_HEAD_ADDRESS and run trials (RAY_WORKER_CPUS, _GPUS,
#            and custom resources as JSON in RAY_WORKER_RESOURCES, e.g. {"edge": 1}); when
#            the head goes away or comes back as a new cluster, rejoin it once it answers;
#            exit when it has been gone for RAY_HEAD_WAIT_S seconds (default 120)
#   report   serve the results' report folder over HTTP on port 8080
#   health ROLE   the healthcheck of a container of that role
#   help     this text
#   anything else is executed as a command, e.g. `python -m sweep_service status --db ...`
set -u

RESULTS_DIR=/app/results
DATA_DIR=/app/data
WEIGHTS_DIR=/app/weights
REPORT_DIR=$RESULTS_DIR/report
GCS_ADDRESS_FILE=/tmp/ray-gcs-address
RAY_START_LOG=/tmp/ray-start.log

log() { echo "[$1] $2" >&2; }

usage() { sed -n '2,14s/^# \{0,1\}//p' "$0"; }

# answers HOST:PORT: does a TCP server answer there? Exit status 0 if it does, 124 if it did
# not answer within 3 s, another one if it refused (nothing listens) or the name is unknown.
answers() {
    timeout 3 bash -c 'exec 3<>"/dev/tcp/${1%:*}/${1##*:}"' _ "$1" 2>/dev/null
}

# pause SECONDS: sleep in the background, so that a stop signal's trap runs at once.
pause() {
    sleep "$1" &
    wait $!
}

# ray_start ARGS...: `ray start ARGS`, its long banner kept in $RAY_START_LOG. (In the
# background, so that a stop signal's trap does not wait for it.)
ray_start() {
    ray start --disable-usage-stats "$@" >"$RAY_START_LOG" 2>&1 &
    wait $!
}

run_head() {
    local config=${SWEEP_CONFIG:-configs/quick.yaml} started
    started=$(date +%s.%N)
    rm -f "$GCS_ADDRESS_FILE"
    if [ ! -f "$config" ]; then
        head_failed "$started" 2 "SWEEP_CONFIG=$config: no such file in /app. Give a path relative to the repository, in its configs/ folder (mounted into the containers), e.g. SWEEP_CONFIG=configs/docker-smoke.yaml"
    fi
    if [ -n "${RAY_CLUSTER_ADDRESS:-}" ]; then
        # Coordinator for an existing cluster: join it as a node without CPUs, so that the
        # driver runs on a Ray node and trials run on the cluster's workers.
        ray_start --address="$RAY_CLUSTER_ADDRESS" --num-cpus=0 --num-gpus=0 \
            || head_failed "$started" 1 "ray start --address=$RAY_CLUSTER_ADDRESS failed: $(tail -n 10 "$RAY_START_LOG")"
        log head "joined the Ray cluster at $RAY_CLUSTER_ADDRESS (as a node without CPUs)"
    else
        ray_start --head --port=6379 --num-cpus=0 --num-gpus=0 --dashboard-host=0.0.0.0 --dashboard-port=8265 \
            || head_failed "$started" 1 "ray start --head failed: $(tail -n 10 "$RAY_START_LOG")"
        log head "Ray head up (GCS port 6379, dashboard port 8265)"
    fi
    echo "${RAY_CLUSTER_ADDRESS:-127.0.0.1:6379}" >"$GCS_ADDRESS_FILE"  # for `health head`

    log head "running the sweep of $config"
    # The coordinator runs in the background so that a stop signal (docker compose stop/down,
    # Ctrl-C) reaches it at once: it records the sweep as interrupted and exits. Its stderr is
    # kept too, to record why it failed if it could not say so itself.
    local stderr_copy=/tmp/coordinator.stderr stopped="" interrupted code
    RAY_ADDRESS=auto python -m sweep_service run "$config" \
        --db "$RESULTS_DIR/sweep.db" --out "$RESULTS_DIR" \
        --data-root "$DATA_DIR" --weights-dir "$WEIGHTS_DIR" 2> >(tee "$stderr_copy" >&2) &
    local coordinator=$!
    trap 'stopped=TERM interrupted=1; kill -TERM "$coordinator" 2>/dev/null' TERM
    trap 'stopped=INT interrupted=1; kill -INT "$coordinator" 2>/dev/null' INT
    while :; do
        interrupted=0
        wait "$coordinator"
        code=$?
        # `wait` also returns when a trapped signal arrives: wait again for the coordinator.
        [ "$interrupted" = 1 ] && kill -0 "$coordinator" 2>/dev/null || break
    done
    trap - TERM INT
    if [ "$code" = 0 ]; then
        # RESULTS_ON_HOST and REPORT_URL come from compose.yaml: where things are on the host.
        log head "sweep finished: results in ${RESULTS_ON_HOST:-$RESULTS_DIR} (sweep.db, report/index.html), report on ${REPORT_URL:-the report service}"
        ray stop >/dev/null 2>&1
        exit 0
    fi
    python -m sweep_service.report.status record-exit "$REPORT_DIR" --since "$started" --exit-code "$code" \
        --stderr "$stderr_copy" ${stopped:+--stopped}
    if [ -n "$stopped" ]; then
        log head "stopped (SIG$stopped); the coordinator exited with status $code. Run the same command again to resume the sweep."
    else
        log head "the coordinator exited with status $code (its message is above)"
    fi
    exit "$code"
}

# head_failed STARTED CODE MESSAGE: say why the head cannot run the sweep, record it for the
# report page, and exit.
head_failed() {
    log head "error: $3"
    python -m sweep_service.report.status record-exit "$REPORT_DIR" --since "$1" --exit-code "$2" --message "$3"
    exit "$2"
}

run_worker() {
    local head=${RAY_HEAD_ADDRESS:-ray-head:6379} wait_s=${RAY_HEAD_WAIT_S:-120}
    local joined=0 deadline lost
    # Stopped (docker compose stop/down, or `up` ending with the head): exit at once; the
    # container's end takes Ray's processes with it.
    trap 'log worker "stopped"; exit 0' TERM INT
    deadline=$((SECONDS + wait_s))
    while :; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            if [ "$joined" = 1 ]; then
                log worker "the Ray head at $head has been gone for ${wait_s} s (the sweep is over): worker done"
                exit 0
            fi
            log worker "could not join a Ray head at $head within ${wait_s} s: is it running? (RAY_HEAD_ADDRESS)"
            exit 1
        fi
        if ! answers "$head"; then
            pause 1
            continue
        fi
        if ! ray_start --address="$head" --num-cpus="${RAY_WORKER_CPUS:-1}" --num-gpus="${RAY_WORKER_GPUS:-0}" \
                --resources="${RAY_WORKER_RESOURCES:-{\}}"; then
            log worker "ray start --address=$head failed (trying again): $(tail -n 10 "$RAY_START_LOG")"
            ray stop --force >/dev/null 2>&1
            pause 5
            continue
        fi
        joined=1
        log worker "joined the Ray cluster at $head with ${RAY_WORKER_CPUS:-1} CPU(s), ${RAY_WORKER_GPUS:-0} GPU(s)${RAY_WORKER_RESOURCES:+, resources $RAY_WORKER_RESOURCES}"
        watch_node "$head"
        ray stop --force >/dev/null 2>&1
        log worker "$lost: rejoining the head once it answers (for up to ${wait_s} s)"
        deadline=$((SECONDS + wait_s))
    done
}

# watch_node HEAD: return, with the reason in $lost, when this node's raylet has exited, or
# the head's GCS is down (its port refused a connection: a head that restarts is caught
# here, before it comes back as a new cluster that this raylet could not rejoin), or it has
# not answered for 3 checks in a row. (Not in a $(subshell): the stop trap has to run while
# it waits.)
watch_node() {
    local timeouts=0 status
    while :; do
        pause 1
        if ! pidof raylet >/dev/null; then
            lost="the raylet exited"
            return
        fi
        answers "$1"
        status=$?
        case $status in
            0) timeouts=0 ;;
            124) timeouts=$((timeouts + 1)) ;;
            *) lost="the Ray head at $1 is down"; return ;;
        esac
        if [ "$timeouts" -ge 3 ]; then
            lost="the Ray head at $1 stopped answering"
            return
        fi
    done
}

health() {
    case "${1:-}" in
        head) [ -r "$GCS_ADDRESS_FILE" ] && answers "$(cat "$GCS_ADDRESS_FILE")" ;;
        worker) pidof raylet >/dev/null ;;
        report)
            timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf "HEAD / HTTP/1.0\r\n\r\n" >&3 \
                && read -r line <&3 && [[ $line == HTTP/1.?" 200"* ]]' ;;
        *) echo "usage: health head|worker|report" >&2; return 2 ;;
    esac
}

role=${1:-help}
case "$role" in
    head) run_head ;;
    worker) run_worker ;;
    report) exec python -m sweep_service.report.serve "$REPORT_DIR" --host 0.0.0.0 --port 8080 ;;
    health) health "${2:-}" ;;
    help | --help | -h) usage ;;
    *) exec "$@" ;;
esac
