#!/usr/bin/env bash
# Prepares the Linux guest of issue 9 on a fresh Debian 12 machine (as root, or with sudo):
#   build/bzImage        Debian's cloud kernel (the real linux-image-6.1.*-cloud-amd64 package
#                        that linux-image-cloud-amd64 depends on), fetched with apt-get download
#   build/initramfs.gz   cpio (newc) + gzip: Debian's busybox-static as /bin/busybox and an /init
#                        that prints EXITSCOPE-LINUX-MARKER on the console and powers off.
#   build/System.map     only with SYMBOLS=1: the kernel's symbols, from the matching -dbg package
#                        (about 280 MB to download), for `exitscope show|report --symbols`.
# Idempotent: what exists is reused. Nothing it fetches is committed (build/ is git-ignored).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="$here/build"
mkdir -p "$build/debs"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

need=()
for tool in cpio:cpio gzip:gzip dpkg-deb:dpkg apt-get:apt; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if ((${#need[@]})); then
    echo "prepare: installing ${need[*]} (apt)" >&2
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The metapackage only depends on the versioned image package: download that one.
image_pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
if [ -z "$image_pkg" ]; then
    $SUDO apt-get update -qq >/dev/null
    image_pkg="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
fi
[ -n "$image_pkg" ] || { echo "prepare: apt-cache knows no linux-image-cloud-amd64 dependency" >&2; exit 1; }

cd "$build/debs"
for pkg in "$image_pkg" busybox-static; do
    if ! ls "${pkg}"_*.deb >/dev/null 2>&1; then
        echo "prepare: apt-get download $pkg" >&2
        apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null
    fi
done

if [ ! -s "$build/bzImage" ] || [ ! -s "$build/kernel-version" ] || [ "$(cat "$build/kernel-version")" != "$image_pkg" ]; then
    rm -rf "$build/kernel"
    dpkg-deb -x "$(ls "${image_pkg}"_*.deb | head -1)" "$build/kernel"
    cp "$(ls "$build"/kernel/boot/vmlinuz-* | head -1)" "$build/bzImage"
    echo "$image_pkg" > "$build/kernel-version"
    rm -rf "$build/kernel"
fi

if [ ! -s "$build/initramfs.gz" ] || [ "$here/prepare.sh" -nt "$build/initramfs.gz" ]; then
    rm -rf "$build/busybox" "$build/initramfs"
    dpkg-deb -x "$(ls busybox-static_*.deb | head -1)" "$build/busybox"
    root="$build/initramfs"
    mkdir -p "$root"/{bin,dev,proc,sys}
    cp "$build/busybox/bin/busybox" "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    cat > "$root/init" <<'INIT'
#!/bin/sh
# ExitScope's Linux sample: print the marker on the console, then end the run.
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
/bin/busybox mount -t proc proc /proc 2>/dev/null
# The marker twice: through the kernel log (printk writes the console by polling) and through
# the tty (the 8250 driver then runs on its backup timer, since this UART raises no interrupts).
echo "EXITSCOPE-LINUX-MARKER" > /dev/kmsg
echo "EXITSCOPE-LINUX-MARKER uptime $(/bin/busybox cat /proc/uptime 2>/dev/null)"
# Power off: the kernel's ACPI S5 (the machine's FADT sleep control register, port 0x600) ends
# the run with status 0; if that fails, reboot -f resets through the i8042 (0xFE to port 0x64).
/bin/busybox poweroff -f
/bin/busybox reboot -f
INIT
    chmod 755 "$root/init"
    # The kernel opens /dev/console for /init before anything is mounted: it must be in the archive.
    mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || echo "prepare: cannot create dev/console (not root?): /init will have no console" >&2
    (cd "$root" && { find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner 0:0; } | gzip -9 > "$build/initramfs.gz.tmp")
    mv "$build/initramfs.gz.tmp" "$build/initramfs.gz"
    rm -rf "$build/busybox" "$root"
fi
if [ "${SYMBOLS:-0}" = 1 ] && { [ ! -s "$build/System.map" ] || [ "$(cat "$build/System.map.version" 2>/dev/null)" != "$image_pkg" ]; }; then
    # The image package's own System.map is a stub; the real one is in the -dbg package.
    cd "$build/debs"
    ls "${image_pkg}-dbg"_*.deb >/dev/null 2>&1 || { echo "prepare: apt-get download ${image_pkg}-dbg" >&2; apt-get download -q -o APT::Sandbox::User=root "${image_pkg}-dbg" >/dev/null; }
    rm -rf "$build/dbg" && mkdir -p "$build/dbg"
    dpkg-deb --fsys-tarfile "$(ls "${image_pkg}-dbg"_*.deb | head -1)" | tar -x -C "$build/dbg" --wildcards '*/boot/System.map-*'
    cp "$(find "$build/dbg" -name 'System.map-*' | head -1)" "$build/System.map"
    echo "$image_pkg" > "$build/System.map.version"
    rm -rf "$build/dbg" "$build/debs/${image_pkg}-dbg"_*.deb
fi
echo "prepare: kernel $build/bzImage ($image_pkg), initramfs $build/initramfs.gz" >&2
[ -s "$build/System.map" ] && echo "prepare: symbols $build/System.map (exitscope show|report --symbols)" >&2 || true
