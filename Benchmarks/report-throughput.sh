#!/usr/bin/env bash
# Report throughput (issue 7's benchmark): `exitscope report` on a trace of at least 10M exits
# (the port-I/O loop with a large N), beside `zstd -d` of the same compressed frames as the floor.
#   Benchmarks/report-throughput.sh [TRACE]
# Without TRACE it records Samples/io-loop-10000000 first (needs /dev/kvm). Release build.
# Prints exits, seconds and exits/s of each, and their ratio (one run; a figure, not a test).
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product exitscope 2>&1 | tail -n 1
BIN=$(swift build -c release --show-bin-path)/exitscope
WORK=$(mktemp -d "${TMPDIR:-/tmp}/report-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

TRACE=${1:-}
if [ -z "$TRACE" ]; then
    TRACE=$WORK/io-loop-10000000.estrace
    echo "== recording Samples/io-loop-10000000"
    "$BIN" record --out "$TRACE" Samples/io-loop-10000000 >/dev/null
fi

# The floor: the same zstd frames, concatenated (a valid zstd stream), through zstd -d.
python3 - "$TRACE" "$WORK/frames.zst" <<'PY'
import sys
sys.path.insert(0, "Notebooks")
import estrace
t = estrace.open_trace(sys.argv[1])
with open(sys.argv[2], "wb") as out, open(sys.argv[1], "rb") as f:
    for fr in t.frames:
        f.seek(fr.offset)
        h = t._parse_frame_header(f.read(48), fr.offset)
        out.write(f.read(h.compressed_size))
PY

now() { date +%s.%N; }
t0=$(now); "$BIN" report "$TRACE" --json --view summary > "$WORK/summary.json"; t1=$(now)
zstd -q -d -c "$WORK/frames.zst" > /dev/null; t2=$(now)
python3 - "$WORK/summary.json" "$t0" "$t1" "$t2" "$(stat -c %s "$TRACE")" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["views"]["summary"]["rows"]
exits = int(next(r["value"] for r in rows if r["item"] == "exits"))
t0, t1, t2 = map(float, sys.argv[2:5])
rep, z = t1 - t0, t2 - t1
print(f"trace: {exits} exits, {int(sys.argv[5])} bytes")
print(f"exitscope report: {rep:.2f} s, {exits / rep:,.0f} exits/s")
print(f"zstd -d (floor):  {z:.2f} s, {exits / z:,.0f} exits/s")
print(f"report / zstd -d time: {rep / z:.1f}x")
PY
