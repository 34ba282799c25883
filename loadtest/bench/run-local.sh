#!/usr/bin/env bash
# Starts a fresh deskpulse on 127.0.0.1:0 (temp data dir, given clock),
# runs `deskpulse-loadtest run` against it, and stops it again. Exit code
# is the verdict's.
#
#   loadtest/bench/run-local.sh [run flags…]            # default: --clock event --duration 60s
#   CLOCK=wall loadtest/bench/run-local.sh --duration 30s
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# shellcheck source=lib.sh
source loadtest/bench/lib.sh
CLOCK=${CLOCK:-event}
# BIN_DIR=target/debug uses (and builds) the debug binaries, as CI does.
BIN_DIR=${BIN_DIR:-target/release}
if [ "$BIN_DIR" = target/release ]; then PROFILE=(--release); else PROFILE=(); fi
[ -x "$BIN_DIR/deskpulse" ] || cargo build "${PROFILE[@]}" -p deskpulse
[ -x "$BIN_DIR/deskpulse-loadtest" ] || cargo build "${PROFILE[@]}" -p deskpulse-loadtest
TMP=$(mktemp -d /tmp/deskpulse-run.XXXXXX)
"$BIN_DIR/deskpulse" serve --listen 127.0.0.1:0 --data-dir "$TMP/data" --clock "$CLOCK" \
    ${DESKPULSE_CONFIG:+--config "$DESKPULSE_CONFIG"} >"$TMP/out" 2>"$TMP/err" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$TMP"' EXIT
wait_for_address "$PID" "$TMP/out" "$TMP/err"
echo "deskpulse $URL (pid $PID, clock $CLOCK, data $TMP/data)"
set +e
"$BIN_DIR/deskpulse-loadtest" run --target "$URL" --server-pid "$PID" --clock "$CLOCK" "$@"
RC=$?
set -e
if [ "$RC" != 0 ]; then echo "--- deskpulse stderr (tail) ---"; tail -20 "$TMP/err"; fi
exit "$RC"
