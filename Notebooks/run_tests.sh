#!/usr/bin/env bash
# Tests of the notebooks and of the Python trace reader, run headless:
#  1. builds exitscope and, when recording exists and /dev/kvm is there, records fresh sample
#     traces (else says loudly that it skips that part and uses the committed golden traces);
#  2. writes the report CSVs and a SQLite database of two runs for the notebooks;
#  3. runs pytest: estrace.py against the Swift reader on every trace, then every notebook
#     executed top to bottom with nbclient. pytest's closing summary line is the last line;
#     the exit status is non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

python3 Notebooks/check_requirements.py || exit 1

echo "== building exitscope"
swift build --product exitscope 2>&1 | grep -E "error|Compiling|Build" | tail -n 3
BIN=$(swift build --show-bin-path)/exitscope
[ -x "$BIN" ] || { echo "run_tests.sh: exitscope did not build" >&2; exit 1; }
export EXITSCOPE_BIN=$BIN

WORK=$(mktemp -d "${TMPDIR:-/tmp}/exitscope-notebooks.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
FIX=$REPO/Tests/TraceTests/Fixtures
FRESH=()

if "$BIN" --help 2>/dev/null | grep -qE '^  record ' && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    echo "== recording fresh sample traces"
    for sample in io-loop-5000 io-loop-20000; do
        if swift run -c debug exitscope record --out "$WORK/$sample.estrace" "Samples/$sample" >"$WORK/$sample.log" 2>&1; then
            FRESH+=("$WORK/$sample.estrace")
        else
            echo "run_tests.sh: recording Samples/$sample failed:" >&2
            tail -n 20 "$WORK/$sample.log" >&2
            exit 1
        fi
    done
    A=${FRESH[0]}; B=${FRESH[1]}
else
    echo "************************************************************************"
    echo "** SKIPPING the fresh recording: 'exitscope record' is not available   **"
    echo "** on this build or /dev/kvm is not usable. The notebooks and reader   **"
    echo "** tests run on the committed golden traces (Tests/TraceTests/Fixtures).**"
    echo "************************************************************************"
    A=$FIX/outloop-1.0.estrace; B=$FIX/smp2-1.0.estrace
fi

echo "== report CSVs and database for the notebooks"
"$BIN" report "$A" --csv "$WORK/csv" --view summary >/dev/null || exit 1
"$BIN" ingest "$A" "$B" --db "$WORK/runs.sqlite" >/dev/null || exit 1

RUN_A=$(basename "${A%.*}"); RUN_B=$(basename "${B%.*}")

export ESTRACE_TRACES=$(IFS=:; echo "${FRESH[*]:-}")
export ESTRACE_NB_TRACE=$A ESTRACE_NB_CSV=$WORK/csv ESTRACE_NB_DB=$WORK/runs.sqlite
export ESTRACE_NB_RUNS=$RUN_A,$RUN_B ESTRACE_NB_OUT=$WORK/figures

echo "== pytest: Python reader vs Swift reader, and every notebook (nbclient)"
cd Notebooks
python3 -m pytest -q -p no:cacheprovider tests
