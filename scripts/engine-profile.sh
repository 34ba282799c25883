#!/usr/bin/env bash
# Where the timed part of one `count` run of an engine bench binary spends
# its time: the share of samples per function (inlined code counts as its
# caller), the warm-up left out.
#
#   scripts/engine-profile.sh /tmp/engine-new count --after=40000000 --count=4000000 --hot --reserve=4096
#   TOP=50 scripts/engine-profile.sh ...
#
# Needs `perf`. It samples the whole run at 999 Hz and keeps the samples
# taken after the last one in the bench's event maker (`Workload`, which
# makes the warm-up's events as it applies them and then the timed ones)
# up to the last one in `apply_frame`. `perf record -D` would have to
# guess when the warm-up ends (two such profiles on 2026-12-07 were
# mostly warm-up, the maker's allocations a fifth of them), and DWARF
# call chains did not unwind through mimalloc there.
set -euo pipefail
bin=$1
shift
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
perf record -q -o "$dir/perf.data" -F 999 "$bin" "$@" | grep '^count: applied'
perf script -i "$dir/perf.data" -F time,ip,sym 2>/dev/null >"$dir/samples"
python3 - "$dir/samples" "${TOP:-30}" <<'EOF'
import collections
import sys

samples = []
for line in open(sys.argv[1]):
    # "<time>: <ip> <symbol>"
    parts = line.split(None, 2)
    if len(parts) == 3 and parts[0].endswith(":"):
        samples.append((float(parts[0][:-1]), parts[2].strip()))
made = max(t for t, s in samples if "Workload" in s)
done = max(t for t, s in samples if "apply_frame" in s)
timed = [s for t, s in samples if made < t <= done]
print(f"{len(timed)} samples over {done - made:.2f} s of the timed part")
for symbol, n in collections.Counter(timed).most_common(int(sys.argv[2])):
    print(f"{100 * n / len(timed):5.1f} %  {symbol[:110]}")
EOF
