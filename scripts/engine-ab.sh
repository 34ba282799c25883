#!/usr/bin/env bash
# Alternates `apply-1000` between engine bench binaries and prints each
# variant's median and range per binary. Two builds read on the same host
# minutes apart can differ by 10-20 %, so builds are only compared this way.
#
#   cargo bench --bench engine --no-run      # prints the binary's path
#   cp target/release/deps/engine-<hash> /tmp/engine-new   # and likewise an older build
#   scripts/engine-ab.sh 3 /tmp/engine-old /tmp/engine-new
#   CASE=apply-20000 scripts/engine-ab.sh 3 ...   # the 20 000-agent desk
set -euo pipefail
rounds=$1
shift
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# Every other round runs the binaries in the opposite order: on this host
# the first of a pair has read up to 10 % higher than the second in the
# same round (2026-12-06), so a fixed order would favour one build.
forward=("$@")
backward=()
for ((i = $# - 1; i >= 0; i--)); do backward+=("${forward[i]}"); done
for round in $(seq "$rounds"); do
  if ((round % 2)); then order=("${forward[@]}"); else order=("${backward[@]}"); fi
  for bin in "${order[@]}"; do
    # The bench probes the host's cost of fresh memory before its cases
    # (and after them); the probe before is kept as a row of its own, so a
    # slow round shows.
    "$bin" "${CASE:-apply-1000}" --bench | grep -E '^(apply|host, before)' |
      sed -E "s|^host, before: fresh memory ([0-9.]+) ns/byte.*|host: fresh memory, ns per byte \1|; s|^.*shops, ||; s|: best of 3.*= | |; s| M events/s||; s|^|$(basename "$bin")\t|" >>"$out"
  done
done
python3 - "$out" "$@" <<'PY'
import collections, os, statistics, sys
runs = collections.defaultdict(list)
order = []
for line in open(sys.argv[1]):
    name, rest = line.rstrip("\n").split("\t")
    variant, value = rest.rsplit(" ", 1)
    runs[(variant, name)].append(float(value))
    if variant not in order:
        order.append(variant)
names = [os.path.basename(b) for b in sys.argv[2:]]
for variant in order:
    cells = []
    for name in names:
        xs = runs[(variant, name)]
        cells.append(f"{name}: med {statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})")
    print(f"{variant:50s}  " + "  ".join(cells))
PY
