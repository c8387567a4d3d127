#!/usr/bin/env bash
# Stops the broker that `make up` started, and the private one the last
# `make chaos` left up for checking (target/chaos/tansu.pid). PostgreSQL is the machine's own
# service, shared with other work, so it is left running; the database
# food_orders stays (drop it with `dropdb -h 127.0.0.1 -U postgres food_orders`).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK_DIR="${FOODPIPE_STACK_DIR:-$ROOT/.stack}"
PID_FILE="$STACK_DIR/tansu.pid"

if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    pid="$(cat "$PID_FILE")"
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "make down: stopped Tansu (pid $pid); its data stays in $STACK_DIR/tansu"
else
    echo "make down: no broker started by make up is running"
fi
rm -f "$PID_FILE"

CHAOS_PID_FILE="$ROOT/target/chaos/tansu.pid"
if [ -f "$CHAOS_PID_FILE" ]; then
    # One pid per line: make chaos runs three brokers over one store.
    while read -r pid; do
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = tansu ]; then
            kill "$pid"
            echo "make down: stopped a make chaos Tansu (pid $pid); its data stays in target/chaos"
        fi
    done < "$CHAOS_PID_FILE"
fi
rm -f "$CHAOS_PID_FILE"
