#!/usr/bin/env bash
# Compares engine bench binaries over a whole day of the 1 000-agent desk:
# each run applies EVENTS events (48 M by default, about 13 hours of the
# desk's event time) and reads one rate over all of them, growth waves
# included, and the bytes the process grew per event. For changes to how
# tables grow or what they hold, judge by this rather than by one window
# of `count --after=N`: a window measures where each build's tables stand
# in their doubling when it opens (BENCHMARKS.md, *A mark table of our
# own*). A run takes 70-80 s on this host; one build against a copy of
# itself read 1.07-1.08 against 1.08 M events/s (2026-12-06).
#
#   cargo bench --bench engine --no-run      # prints the binary's path
#   cp target/release/deps/engine-<hash> /tmp/engine-new   # and likewise an older build
#   scripts/engine-day.sh 3 /tmp/engine-old /tmp/engine-new
#   EVENTS=60000000 scripts/engine-day.sh 3 ...
#   HOT=1 scripts/engine-day.sh 3 ...   # each frame in cache, as `serve` applies it (`--hot`)
#   scripts/engine-day.sh 2 /tmp/engine-new '/tmp/engine-new --reserve=4096'
#                                       # a build may come with arguments of `count`, in one word
set -euo pipefail
rounds=$1
shift
events=${EVENTS:-48000000}
hot=()
if [[ ${HOT:-0} == 1 ]]; then hot=(--hot); fi
bins=("$@")
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# The order rotates by one each round, so no build always runs first;
# give a number of rounds that is a multiple of the number of builds, so
# each runs first equally often (with 2 M events, on 2026-12-06, the first
# run of a round read half the second's, whichever build it was).
for round in $(seq "$rounds"); do
  for k in $(seq 0 $(($# - 1))); do
    build=${bins[$(((k + round) % $#))]}
    read -r -a run <<<"$build"
    # With `--every` equal to `--after`, the warm-up prints one line for
    # all of it: "warm-up: events 0..N: R M events/s, the process grew by
    # G bytes an event".
    line=$("${run[@]}" count --after="$events" --every="$events" --count=1 "${hot[@]}" | grep '^warm-up')
    rate=$(sed -E 's/.*: ([0-9.]+) M events\/s.*/\1/' <<<"$line")
    grew=$(sed -E 's/.*grew by ([0-9]+) bytes.*/\1/' <<<"$line")
    printf '%s\t%s\t%s\n' "$(basename "$build")" "$rate" "$grew" | tee -a "$out"
  done
done
python3 - "$out" "$@" <<'PY'
import collections, os, statistics, sys
rates, grew = collections.defaultdict(list), collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, rate, g = line.rstrip("\n").split("\t")
    rates[name].append(float(rate))
    grew[name].append(int(g))
for name in (os.path.basename(b) for b in sys.argv[2:]):
    xs, gs = rates[name], grew[name]
    print(f"{name}: med {statistics.median(xs):.2f} M events/s ({min(xs):.2f}-{max(xs):.2f}), grew {min(gs)}-{max(gs)} bytes an event")
PY
