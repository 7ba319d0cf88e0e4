#!/bin/sh
# Entrypoint of the sweep-service image: sets up the user, then runs the role as that user
# (docker/roles.sh: head, worker, report, health, help, or any command).
#
# As PID 1 and root (how Docker starts it by default) it
#   1. makes the writable mounts (results, data set, weights cache, home) writable for
#      SWEEP_UID:SWEEP_GID (default 1000:1000, the image's `sweep` user), chowning a folder
#      only if that user cannot write it yet (a fresh ./results that Docker created as
#      root, a volume first used with another SWEEP_UID);
#   2. becomes that user with setpriv and execs tini, which stays PID 1 as that user: it
#      reaps the processes Ray leaves behind and passes stop signals on to the role.
# So no process of the container runs as root. SWEEP_UID=0 runs everything as root and
# says so. Started with `docker run --user`, it skips step 1 (it cannot chown).
# Not PID 1 (the healthchecks, `docker exec CONTAINER sweep-entrypoint CMD`), it drops root
# the same way and runs the role without tini.
set -eu

SWEEP_UID=${SWEEP_UID:-1000}
SWEEP_GID=${SWEEP_GID:-1000}

log() { echo "[entrypoint] $*" >&2; }

for id in "SWEEP_UID=$SWEEP_UID" "SWEEP_GID=$SWEEP_GID"; do
    case ${id#*=} in
        '' | *[!0-9]*)
            log "$id is not a numeric id; set it to yours, e.g. export SWEEP_UID=\$(id -u) SWEEP_GID=\$(id -g)"
            exit 2 ;;
    esac
done

as_user=""
if [ "$(id -u)" = 0 ] && [ "$SWEEP_UID" != 0 ]; then
    as_user="setpriv --reuid=$SWEEP_UID --regid=$SWEEP_GID --clear-groups --"
    export HOME=/home/sweep
    if [ $$ = 1 ]; then
        for dir in /app/results /app/data /app/weights /home/sweep; do
            # `-w` as root is false only on a read-only mount: those are left alone.
            if [ -d "$dir" ] && [ -w "$dir" ] && ! $as_user test -w "$dir"; then
                log "making $dir writable for $SWEEP_UID:$SWEEP_GID"
                chown -R "$SWEEP_UID:$SWEEP_GID" "$dir"
            fi
        done
    fi
elif [ "$(id -u)" = 0 ] && [ $$ = 1 ]; then
    log "SWEEP_UID=0: every process runs as root, and the files it writes belong to root"
fi

if [ $$ = 1 ]; then
    exec $as_user tini -- sweep-role "$@"
fi
exec $as_user sweep-role "$@"
