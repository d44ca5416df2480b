#!/usr/bin/env bash
# Stage 1: the Debian 12 root file system (packages, kernel, initramfs) with mmdebstrap, as a
# directory. Cached under the build directory by a hash of everything that goes into it, so
# iterating on the project's own files does not rebuild Debian (arm64 takes minutes under
# qemu-user). Usage: image/base.sh ARCH OUTDIR [--path]  (prints the cached directory's path;
# with --path only that, building nothing).
set -euo pipefail
arch=$1
out=$(realpath -m "$2")
here=$(cd "$(dirname "$0")" && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
: "${SOURCE_DATE_EPOCH:?set SOURCE_DATE_EPOCH (the Makefile does)}"
# Stage 1's time stamps come from the last change to stage 1's own inputs (not the whole
# project's last commit), so the cache survives commits that do not touch Debian's part.
if stage1=$(git -C "$here" log -1 --format=%ct -- base.sh packages.txt "packages-$arch.txt" \
  "initramfs-modules-$arch.txt" 2>/dev/null) && [ -n "$stage1" ]; then
  export SOURCE_DATE_EPOCH=$stage1
fi

packages() { grep -hv '^\s*#' "$@" | grep -v '^\s*$' | paste -sd, -; }
include=$(packages "$here/packages.txt" "$here/packages-$arch.txt")
key=$( (echo "$arch $mirror $SOURCE_DATE_EPOCH"; cat "$here/base.sh" "$here/packages.txt" \
  "$here/packages-$arch.txt" "$here/initramfs-modules-$arch.txt") | sha256sum | cut -c1-16)
dir="$out/base-$arch-$key"
if [ "${3:-}" = --path ]; then
  echo "$dir"
  exit 0
fi
if [ -f "$dir/.complete" ]; then
  echo "$dir"
  exit 0
fi
rm -rf "$out"/base-"$arch"-*
mkdir -p "$out/apt-cache-$arch"

if [ "$arch" != "$(dpkg --print-architecture)" ]; then
  "$here/binfmt.sh" "$arch" >&2
fi

modules="$here/initramfs-modules-$arch.txt"
# Why a setup hook: the initramfs configuration must exist before the kernel package's
# postinst runs mkinitramfs, or the first (slow, all-modules) initramfs is built anyway.
# Files in conf.d and modules.d belong to no package, so dpkg never asks about them.
mmdebstrap --mode=root --variant=apt --architectures="$arch" \
  --components=main,non-free-firmware \
  --include="$include" \
  --aptopt='Acquire::Retries "5"' \
  --dpkgopt='force-confold' \
  --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"' \
  --setup-hook='printf "MODULES=list\nCOMPRESS=zstd\n" > "$1/etc/initramfs-tools/conf.d/waystation.conf"' \
  --setup-hook="grep -v '^#' '$modules' > \"\$1/usr/share/initramfs-tools/modules.d/waystation\"" \
  --setup-hook='mkdir -p "$1/boot/firmware" "$1/var/cache/apt/archives"' \
  --setup-hook="sync-in '$out/apt-cache-$arch' /var/cache/apt/archives" \
  --customize-hook="sync-out /var/cache/apt/archives '$out/apt-cache-$arch'" \
  --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
  bookworm "$dir.tmp" \
  "deb $mirror bookworm main non-free-firmware" \
  "deb $mirror bookworm-updates main non-free-firmware" \
  "deb http://security.debian.org/debian-security bookworm-security main non-free-firmware" >&2
touch "$dir.tmp/.complete"
mv "$dir.tmp" "$dir"
echo "$dir"
