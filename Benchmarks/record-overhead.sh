#!/usr/bin/env bash
# Recording overhead (issue 4's benchmark): `exitscope record` against `exitscope run` wall time
# on the port-I/O loop sample (goal <= 1.05 in the default mode).
#   Benchmarks/record-overhead.sh [PAIRS] [SAMPLE] [RECORD FLAGS...]
#   Benchmarks/record-overhead.sh 10 Samples/io-loop-1000000 --fidelity full
# Defaults: 10 pairs of Samples/io-loop-1000000 (about 9 s per run here). Release build.
# Each pair runs `run` and `record` back to back, alternating which goes first, so load that
# comes and goes falls on both; it prints every pair, the median of each, the ratio of the
# medians, the median of the per-pair ratios, the recording's bytes per exit and its peak RSS.
# A figure, not a test: anything else running on the machine shows in it (say what ran).
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-10}
SAMPLE=${2:-Samples/io-loop-1000000}
shift $(( $# < 2 ? $# : 2 ))
swift build -c release --product exitscope 2>&1 | tail -n 1
BIN=$(swift build -c release --show-bin-path)/exitscope
case "$SAMPLE" in
    Samples/*) make -s -C Samples "build/${SAMPLE#Samples/}.elf" ;;
esac
WORK=$(mktemp -d "${TMPDIR:-/tmp}/record-overhead.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

python3 - "$BIN" "$SAMPLE" "$PAIRS" "$WORK" "$@" <<'PY'
import os, re, statistics, subprocess, sys, time
binary, sample, pairs, work, flags = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
trace = os.path.join(work, "overhead.estrace")
commands = {
    "run": [binary, "run", sample],
    # GNU time's %M: the recording's peak resident set, in KiB.
    "record": ["/usr/bin/time", "-f", "peak-rss-kib %M", binary, "record", "--out", trace, *flags, sample],
}
walls = {"run": [], "record": []}
rss, summary = [], ""
for i in range(pairs):
    for kind in (("run", "record") if i % 2 == 0 else ("record", "run")):
        t0 = time.monotonic()
        p = subprocess.run(commands[kind], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        walls[kind].append(time.monotonic() - t0)
        if p.returncode != 0:
            sys.exit(f"{kind} failed ({p.returncode}): {p.stderr.strip()[-400:]}")
        if kind == "record":
            m = re.search(r"peak-rss-kib (\d+)", p.stderr)
            if m: rss.append(int(m.group(1)))
            summary = next((l for l in (p.stdout + p.stderr).splitlines() if "bytes/exit" in l), summary)
    r, c = walls["run"][-1], walls["record"][-1]
    print(f"pair {i + 1:2d}: run {r:7.3f} s  record {c:7.3f} s  ratio {c / r:.3f}", flush=True)
mr, mc = statistics.median(walls["run"]), statistics.median(walls["record"])
per_pair = statistics.median(c / r for r, c in zip(walls["run"], walls["record"]))
mode = " ".join(flags) or "default mode"
print(f"{sample}, {mode}, {pairs} pairs: median run {mr:.3f} s, median record {mc:.3f} s")
print(f"record/run: ratio of medians {mc / mr:.3f}, median of per-pair ratios {per_pair:.3f} (goal <= 1.05 in the default mode)")
if summary: print(summary.strip())
if rss: print(f"record peak RSS: {max(rss) / 1024:.1f} MiB (largest of {len(rss)})")
PY
