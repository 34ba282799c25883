#!/usr/bin/env bash
# Restart after kill -9 with EVENTS events in the log: generates the 11.11
# log, posts it to a fresh release server (event clock) in bodies of CHUNK
# events, kills it with SIGKILL, restarts it on the same data dir and times
# the wait for /healthz; then checks the desk totals are the same.
#   loadtest/bench/restart.sh                 # EVENTS=10000000 CHUNK=40000
#   EVENTS=9920000 loadtest/bench/restart.sh  # leave a log tail after the last snapshot
#   RESERVE_MIB=1024 loadtest/bench/restart.sh  # both starts with server.reserve_memory_mib
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
EVENTS=${EVENTS:-10000000}
CHUNK=${CHUNK:-40000}
PORT=${PORT:-18599}
cargo build --release -p deskpulse -p deskpulse-loadtest --bins >/dev/null
B=target/release
TMP=$(mktemp -d /tmp/deskpulse-restart.XXXXXX)
CONFIG=()
if [[ -n ${RESERVE_MIB:-} ]]; then
  printf '[server]\nreserve_memory_mib = %s\n' "$RESERVE_MIB" >"$TMP/config.toml"
  CONFIG=(--config "$TMP/config.toml")
fi
# The restarted server is stopped and waited for before its directory goes:
# its shutdown writes a last snapshot there.
trap 'pkill -f "listen 127.0.0.1:$PORT" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$TMP"' EXIT
$B/deskpulse-loadtest generate --events "$EVENTS" --out "$TMP/log.ndjson" >/dev/null
(cd "$TMP" && split -l "$CHUNK" -d -a 5 log.ndjson part.)
$B/deskpulse serve --listen 127.0.0.1:$PORT --clock event --data-dir "$TMP/data" "${CONFIG[@]}" >"$TMP/out1" 2>"$TMP/err1" &
PID=$!
until curl -sf http://127.0.0.1:$PORT/healthz >/dev/null; do sleep 0.05; done
T0=$(date +%s.%N)
for f in "$TMP"/part.*; do curl -sf -o /dev/null --data-binary @"$f" http://127.0.0.1:$PORT/v1/events; done
T1=$(date +%s.%N)
curl -sf http://127.0.0.1:$PORT/v1/desk/stats >"$TMP/before.json"
kill -9 $PID
wait $PID 2>/dev/null || true
S0=$(date +%s.%N)
$B/deskpulse serve --listen 127.0.0.1:$PORT --clock event --data-dir "$TMP/data" "${CONFIG[@]}" >"$TMP/out2" 2>"$TMP/err2" &
until curl -sf http://127.0.0.1:$PORT/healthz >"$TMP/health.json"; do sleep 0.05; done
S1=$(date +%s.%N)
curl -sf http://127.0.0.1:$PORT/v1/desk/stats >"$TMP/after.json"
# What the start spent its time on (snapshot load, then the log).
sed 's/\x1b\[[0-9;]*m//g' "$TMP/err2" | grep -E "reserved memory|restored the engine snapshot|recovered from the log" || true
same=$(cmp -s "$TMP/before.json" "$TMP/after.json" && echo yes || echo NO)
echo "events $EVENTS  ingest $(echo "$T1 - $T0" | bc) s  restart to healthy $(echo "$S1 - $S0" | bc) s  replayed $(grep -o '"recovered_records":[0-9]*' "$TMP/health.json" | cut -d: -f2) records  same desk totals: $same  data $(du -sh "$TMP/data" | cut -f1)"
