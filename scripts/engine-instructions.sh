#!/usr/bin/env bash
# What the engine executes per event, counted rather than timed: runs one
# small `count --hot` of an engine bench binary under callgrind (Valgrind)
# and prints the instructions, conditional branches and simulated branch
# misses per event in `counted_frame` (with `--hot`, the warm-up's frames
# pass through it too, so they are counted alike), then the functions
# that execute the most instructions.
#
#   scripts/engine-instructions.sh /tmp/engine-new
#   AFTER=1000000 COUNT=200000 TOP=30 scripts/engine-instructions.sh /tmp/engine-new
#
# Needs `valgrind` (not installed by scripts/test.sh). A run of the
# defaults takes about a minute. The counts repeat run to run (the
# instructions to the unit an event, the branch misses to about 1 %: the
# tables' hash seeds are random), which the host's clock does not
# (±10-25 % between runs): use them to see what a
# change does to the work per event. They are not the rate: on
# 2026-12-07 a change that cut 4 % of the instructions per event read the
# same rate as the build before it (BENCHMARKS.md, *Instructions are not
# what bounds the rate*). The branch misses are Valgrind's model of a
# simple predictor, not this CPU's; compare them between builds only.
set -euo pipefail
bin=$1
after=${AFTER:-1000000}
count=${COUNT:-200000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# The bench binary restarts itself to set mimalloc's options: the child
# does the work, so children are traced and the largest profile is kept.
valgrind --tool=callgrind --branch-sim=yes --trace-children=yes \
  --callgrind-out-file="$dir/cg.%p" --toggle-collect='*counted_frame*' \
  "$bin" count --after="$after" --count="$count" --hot >/dev/null 2>"$dir/valgrind.log"
profile=$(ls -S "$dir"/cg.* | head -1)
callgrind_annotate --show=Ir,Bc,Bcm,Bim "$profile" 2>/dev/null >"$dir/annotated"
python3 - "$dir/annotated" "$((after + count))" "${TOP:-20}" <<'PY'
import re
import sys

lines = open(sys.argv[1]).read().splitlines()
events, top = int(sys.argv[2]), int(sys.argv[3])


def numbers(line):
    # "1,234 (5.6%)" columns, "." for none, then the name.
    cols = re.findall(r"([\d,]+|\.)(?: \([\d.]+%\))?\s+", line)
    return [0 if c == "." else int(c.replace(",", "")) for c in cols[:4]]


total = next(l for l in lines if "PROGRAM TOTALS" in l)
ir, bc, bcm, bim = numbers(total)
print(f"{events} events: {ir / events:.0f} instructions, {bc / events:.0f} conditional branches, "
      f"{(bcm + bim) / events:.1f} simulated branch misses an event")
start = next(i for i, l in enumerate(lines) if "file:function" in l) + 2
for line in lines[start:start + top]:
    if not line.strip():
        break
    name = line.split("  ")[-1].strip()
    print(f"{numbers(line)[0] / events:7.1f}  {name[:110]}")
PY
