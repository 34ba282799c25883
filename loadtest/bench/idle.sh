#!/usr/bin/env bash
# Idle-connection benchmark: raises the open-file limit, starts a fresh
# deskpulse on 127.0.0.1:0 (temp data dir) from this same shell so the
# server inherits the limit, runs `deskpulse-loadtest idle` against it and
# stops the server. Exit code is idle's (1 when a connection failed or was
# dropped, or the server died).
#
#   loadtest/bench/idle.sh                              # 20000 stream connections, hold 20s
#   CONNECTIONS=20000 loadtest/bench/idle.sh --kind ingest --hold 30s
#   NOFILE=50000 loadtest/bench/idle.sh                 # ask for a different limit
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# shellcheck source=lib.sh
source loadtest/bench/lib.sh
CONNECTIONS=${CONNECTIONS:-20000}
BIN_DIR=${BIN_DIR:-target/release}
[ -x "$BIN_DIR/deskpulse" ] || { echo "missing $BIN_DIR/deskpulse: cargo build --release -p deskpulse"; exit 2; }
[ -x "$BIN_DIR/deskpulse-loadtest" ] || { echo "missing $BIN_DIR/deskpulse-loadtest: cargo build --release -p deskpulse-loadtest"; exit 2; }

# Every connection is one fd in the load tool and one in the server.
WANT=${NOFILE:-1048576}
HARD=$(ulimit -Hn)
if [ "$HARD" != unlimited ] && [ "$HARD" -lt "$WANT" ]; then WANT=$HARD; fi
ulimit -n "$WANT" 2>/dev/null || ulimit -n "$HARD" 2>/dev/null || true
echo "open-file limit: $(ulimit -n) (hard $HARD); $CONNECTIONS connections need about $((CONNECTIONS + 64))"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((CONNECTIONS + 64)) ]; then
    echo "warning: the limit is too low for $CONNECTIONS connections (raising the hard limit needs root/CAP_SYS_RESOURCE:"
    echo "         /etc/security/limits.conf, systemd LimitNOFILE=, or docker run --ulimit nofile=1048576:1048576)"
fi

TMP=$(mktemp -d /tmp/deskpulse-idle.XXXXXX)
"$BIN_DIR/deskpulse" serve --listen 127.0.0.1:0 --data-dir "$TMP/data" \
    ${DESKPULSE_CONFIG:+--config "$DESKPULSE_CONFIG"} >"$TMP/out" 2>"$TMP/err" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$TMP"' EXIT
wait_for_address "$PID" "$TMP/out" "$TMP/err"
echo "deskpulse $URL (pid $PID, data $TMP/data)"
set +e
"$BIN_DIR/deskpulse-loadtest" idle --target "$URL" --server-pid "$PID" --connections "$CONNECTIONS" "$@"
RC=$?
set -e
if [ -s "$TMP/err" ]; then
    echo "--- deskpulse stderr: $(wc -l <"$TMP/err") lines, tail ---"
    tail -20 "$TMP/err"
fi
exit "$RC"
