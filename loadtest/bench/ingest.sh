#!/usr/bin/env bash
# Raw ingest capacity of one deskpulse node: a fresh release server on
# 127.0.0.1:0 (temp data dir, event clock), then the side-by-side tool with
# deskpulse as the only peer. Its events are generated and serialized
# before the clock starts, so the load tool costs little CPU: first as many
# events as the server takes (the max phase), then a paced phase whose ack
# p99 is measured from each frame's intended send time. Last, the server's
# own ack-time histogram from /metrics (arrival to ack), for comparison.
#
#   loadtest/bench/ingest.sh                      # 3 M events, 16 WebSockets × 100, then 150 k/s for 10 s
#   EVENTS=1000000 CONNS=16 BATCH=1 RATE=25000 RATE_DURATION=10s loadtest/bench/ingest.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# shellcheck source=lib.sh
source loadtest/bench/lib.sh
EVENTS=${EVENTS:-3000000}
CONNS=${CONNS:-16}
BATCH=${BATCH:-100}
RATE=${RATE:-150000}
RATE_DURATION=${RATE_DURATION:-10s}
[ -x target/release/deskpulse ] || cargo build --release -p deskpulse
[ -x target/release/deskpulse-loadtest ] || cargo build --release -p deskpulse-loadtest
TMP=$(mktemp -d /tmp/deskpulse-ingest.XXXXXX)
target/release/deskpulse serve --listen 127.0.0.1:0 --data-dir "$TMP/data" --clock event >"$TMP/out" 2>"$TMP/err" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$TMP"' EXIT
wait_for_address "$PID" "$TMP/out" "$TMP/err"
target/release/deskpulse-loadtest side-by-side --deskpulse "$URL" --deskpulse-pid "$PID" \
    --connections "$CONNS" --batch "$BATCH" --events "$EVENTS" --rate "$RATE" --rate-duration "$RATE_DURATION" "$@"
# The server's own view of the same run: how many frames it acknowledged
# within 5, 20 and 50 ms of their arrival (`deskpulse_ingest_ack_seconds`).
curl -sf "$URL/metrics" | awk '
  /^deskpulse_ingest_ack_seconds_bucket/ {
    split($0, a, "le=\""); split(a[2], b, "\""); le[b[1]] = $NF
  }
  /^deskpulse_log_commit_duration_seconds_bucket/ {
    split($0, a, "le=\""); split(a[2], b, "\""); cle[b[1]] = $NF
  }
  /^deskpulse_log_commits_total/ { commits = $NF }
  /^deskpulse_log_commit_seconds_total/ { commit_s = $NF }
  END {
    if (commits > 0) printf "server side: %d group commits (fsyncs), %.2f ms each on average, %d over 20 ms, %d over 50 ms\n", commits, 1000 * commit_s / commits, commits - cle["0.02"], commits - cle["0.05"]
    t = le["+Inf"]
    if (t > 0) printf "server side: %d frames acked, %.2f%% within 5 ms, %.2f%% within 20 ms, %.2f%% within 50 ms\n",
      t, 100 * le["0.005"] / t, 100 * le["0.02"] / t, 100 * le["0.05"] / t
  }'
