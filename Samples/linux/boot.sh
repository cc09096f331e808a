#!/usr/bin/env bash
# Boots Debian's cloud kernel under ExitScope to the initramfs marker and records every exit.
# A benchmark and a demonstration (many minutes here: kernel code runs in KVM's emulator), not a test.
#
#   Samples/linux/boot.sh [extra exitscope flags...]
#
# Environment: EXITSCOPE (binary; default: a release build of this checkout), TRACE (default
# Samples/linux/build/linux.estrace), APPEND (kernel command line), SMP (vCPUs, default 2),
# TIMEOUT (s, default 3600), COMMAND (record or run; default record).
# Prints the console, then the wall time from start to the marker line and the run's summary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="$here/build"
[ -s "$build/bzImage" ] && [ -s "$build/initramfs.gz" ] || bash "$here/prepare.sh"

exitscope="${EXITSCOPE:-}"
if [ -z "$exitscope" ]; then
    (cd "$repo" && swift build -c release --product exitscope >&2)
    exitscope="$repo/.build/release/exitscope"
fi
command="${COMMAND:-record}"
trace="${TRACE:-$build/linux.estrace}"
# noxsave: KVM's emulator cannot run XRSTOR at CPL0 here (and this host's CPUID, which the guest
# sees whatever KVM_SET_CPUID2 says, offers AVX-512); without XSAVE the kernel also drops AVX.
# cryptomgr.notests and mitigations=off only save guest instructions (each ~1 µs at CPL0 here):
# the crypto self-tests, and the return thunks and barriers of the speculation mitigations.
append="${APPEND:-console=ttyS0 earlyprintk=ttyS0 nokaslr noxsave clearcpuid=137 cryptomgr.notests mitigations=off}"
# Two vCPUs: kernel work queued to workqueues runs beside the boot (this host's 2 cores).
args=(--kernel "$build/bzImage" --initrd "$build/initramfs.gz" --append "$append" --smp "${SMP:-2}"
      --timeout "${TIMEOUT:-3600}")
[ "$command" = record ] && args+=(-o "$trace")

start=$(date +%s.%N)
echo "boot.sh: $exitscope $command ${args[*]} $*" >&2
set +e
"$exitscope" "$command" "${args[@]}" "$@" | {
    seen=""
    while IFS= read -r line; do
        printf '%s\n' "$line"
        if [ -z "$seen" ] && [[ "$line" == *EXITSCOPE-LINUX-MARKER* ]]; then
            seen=1
            awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "boot.sh: marker after %.1f s wall time\n", e - s }' >&2
        fi
    done
    [ -n "$seen" ] || echo "boot.sh: no marker seen" >&2
}
status=${PIPESTATUS[0]}
set -e
awk -v s="$start" -v e="$(date +%s.%N)" -v st="$status" 'BEGIN { printf "boot.sh: exitscope exited with status %d after %.1f s wall time\n", st, e - s }' >&2
[ "$command" = record ] && echo "boot.sh: trace $trace (exitscope show/report/replay it)" >&2
exit "$status"
