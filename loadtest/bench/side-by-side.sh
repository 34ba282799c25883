#!/usr/bin/env bash
# Side-by-side benchmark on this machine, in one run: the same 11.11 event
# stream through deskpulse (WebSocket ingest, acks after fsync), Redis (one
# pipelined HINCRBY per event, raw RESP) and NATS JetStream (one HPUB with
# Nats-Msg-Id per event, PubAck each). Peers listen on loopback only and are
# stopped on exit. Prints events/s and p99 as ratios to deskpulse and writes
# loadtest-results/side-by-side-*.{json,html}.
#
#   loadtest/bench/side-by-side.sh [extra side-by-side flags]
#   EVENTS=500000 RATE=20000 RATE_DURATION=15s CONNS=8 BATCH=100 PIN=1 loadtest/bench/side-by-side.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# shellcheck source=lib.sh
source loadtest/bench/lib.sh
EVENTS=${EVENTS:-500000}
RATE=${RATE:-20000}
RATE_DURATION=${RATE_DURATION:-15s}
CONNS=${CONNS:-8}
BATCH=${BATCH:-100}
REDIS_PORT=${REDIS_PORT:-16379}
NATS_PORT=${NATS_PORT:-14222}
OUT_DIR=${OUT_DIR:-loadtest-results}
PIN=${PIN:-0}

if ! command -v redis-server >/dev/null || ! command -v nats-server >/dev/null; then
    apt-get update
    apt-get install -y redis-server nats-server
fi
[ -x target/release/deskpulse ] || cargo build --release -p deskpulse
[ -x target/release/deskpulse-loadtest ] || cargo build --release -p deskpulse-loadtest

TMP=$(mktemp -d /tmp/deskpulse-sbs.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

SERVER_CPU=()
LOAD_CPU=()
if [ "$PIN" = 1 ] && command -v taskset >/dev/null; then
    SERVER_CPU=(taskset -c 0)
    LOAD_CPU=(taskset -c 1)
fi

wait_port() { # host port seconds
    for _ in $(seq 1 $(( $3 * 10 ))); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1:$2 after $3 s" >&2
    return 1
}

mkdir -p "$TMP/redis" "$TMP/nats" "$TMP/dp"
"${SERVER_CPU[@]}" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes --save '' \
    --appendonly yes --appendfsync always --dir "$TMP/redis" --daemonize no --logfile "$TMP/redis.log" &
REDIS_PID=$!; PIDS+=("$REDIS_PID")
"${SERVER_CPU[@]}" nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/nats" -l "$TMP/nats.log" &
NATS_PID=$!; PIDS+=("$NATS_PID")
"${SERVER_CPU[@]}" target/release/deskpulse serve --listen 127.0.0.1:0 --data-dir "$TMP/dp" --clock event \
    >"$TMP/dp.out" 2>"$TMP/dp.err" &
DP_PID=$!; PIDS+=("$DP_PID")

wait_for_address "$DP_PID" "$TMP/dp.out" "$TMP/dp.err"
wait_port 127.0.0.1 "$REDIS_PORT" 15
wait_port 127.0.0.1 "$NATS_PORT" 15
echo "deskpulse $URL (pid $DP_PID), redis 127.0.0.1:$REDIS_PORT (pid $REDIS_PID), nats 127.0.0.1:$NATS_PORT (pid $NATS_PID)"
echo "redis $(redis-server --version | grep -o 'v=[0-9.]*'), $(nats-server --version)"

"${LOAD_CPU[@]}" target/release/deskpulse-loadtest side-by-side \
    --deskpulse "$URL" --deskpulse-pid "$DP_PID" \
    --redis "127.0.0.1:$REDIS_PORT" --redis-pid "$REDIS_PID" \
    --nats "127.0.0.1:$NATS_PORT" --nats-pid "$NATS_PID" \
    --events "$EVENTS" --rate "$RATE" --rate-duration "$RATE_DURATION" \
    --connections "$CONNS" --batch "$BATCH" --out-dir "$OUT_DIR" "$@"
