#!/usr/bin/env bash
# Recording overhead measured inside one process (issue 4), free of the host's drift between runs.
# `record-overhead.sh` compares whole runs; on this host `run` alone varies by 25% from one minute
# to the next, more than the overhead itself. Here an instrumented build (record-overhead-blocks.patch,
# applied to a copy of HEAD in a temporary directory, never to the product) records SAMPLE while its
# exits alternate in blocks of 2048 between four modes, and sums the TSC from each exit to the next
# per mode. It prints, per run, each mode's cost per exit against the blocks run as `run` does:
#   sync-regs  KVM fills kvm_regs and kvm_sregs at each exit, the recorder returns at once
#   record     full recording (the default mode of `exitscope record`)
#   regs-only  KVM fills only kvm_regs, the recorder returns at once
#   Benchmarks/record-overhead-blocks.sh [RUNS] [SAMPLE]     (defaults: 3, Samples/io-loop-1000000)
# Needs /dev/kvm; builds exitscope from scratch in the temporary copy (a few minutes). Uncommitted
# changes are not measured. A figure, not a test; the recording it writes has gaps and is discarded.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SAMPLE=${2:-Samples/io-loop-1000000}
case "$SAMPLE" in
    Samples/*) make -s -C Samples "build/${SAMPLE#Samples/}.elf" ;;
esac
SAMPLE_PATH=$(cd "$(dirname "$SAMPLE")" && pwd)/$(basename "$SAMPLE")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/record-overhead-blocks.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/src"
git archive HEAD | tar -x -C "$WORK/src"
if ! git -C "$WORK/src" apply "$PWD/Benchmarks/record-overhead-blocks.patch" 2>"$WORK/apply.err"; then
    echo "record-overhead-blocks.patch no longer applies to HEAD (Machine.swift or Recorder.swift changed):" >&2
    cat "$WORK/apply.err" >&2
    exit 1
fi
echo "building the instrumented exitscope (release) in $WORK/src"
swift build -c release --product exitscope --package-path "$WORK/src" 2>&1 | tail -n 1
BIN=$(swift build -c release --show-bin-path --package-path "$WORK/src")/exitscope
for i in $(seq 1 "$RUNS"); do
    line=$(EXITSCOPE_OVERHEAD_BLOCKS=1 "$BIN" record --out "$WORK/blocks.estrace" "$SAMPLE_PATH" 2>&1 >/dev/null \
           | grep '^overhead-blocks:' || true)
    [ -n "$line" ] || { echo "run $i: the instrumented build printed no overhead-blocks line" >&2; exit 1; }
    python3 - "$i" "$line" <<'PY'
import re, sys
f = dict(re.findall(r"([a-z-]+) ([0-9.]+)", sys.argv[2]))
print(f"run {sys.argv[1]}: {float(f['run']):,.0f} TSC cycles per exit as run; against that, record "
      f"{float(f['record']):.3f}, sync-regs {float(f['sync-regs']):.3f}, regs-only {float(f['regs-only']):.3f}")
PY
done
