#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs every
# test: formatting, lints, the Rust unit/property/integration tests, the
# load-test tool's tests, and the dashboards in real Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "system packages (chromium, CJK fonts)"
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || need+=(fonts-noto-cjk)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (unit, property, integration against the real binary)"
cargo test --workspace

if [ -f dashboards/package.json ]; then
  step "dashboards in Chromium (playwright-core, Debian chromium)"
  cargo build --bin deskpulse
  (cd dashboards && npm ci --no-audit --no-fund && DESKPULSE_BIN=../target/debug/deskpulse node --test --test-concurrency=1 tests/)
fi

# One connection: with the event clock, events from several connections
# interleave and move `now` unevenly, so a wait's alert could differ from
# the generator's single-order truth. Throughput runs use 16 (BENCHMARKS.md).
step "load test: the 11.11 scenario against the real server, checked against its ground truth"
cargo build -p deskpulse -p deskpulse-loadtest --bins
# The report (JSON and HTML) lands in target/, replaced by the next run.
BIN_DIR=target/debug loadtest/bench/run-local.sh --duration 20s --connections 1 --subscribers 2 \
  --out-dir target/ci-loadtest

step "all tests passed"
