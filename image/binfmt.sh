#!/usr/bin/env bash
# Lets this x86-64 host run another architecture's programs (mmdebstrap's maintainer scripts
# in an arm64 root) through qemu-user-static: binfmt_misc is not mounted by default here.
set -euo pipefail
arch=$1
case "$arch" in arm64) name=qemu-aarch64 ;; *) echo "binfmt.sh: no qemu for $arch" >&2; exit 2 ;; esac
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e "/proc/sys/fs/binfmt_misc/$name" ]; then
  conf=/usr/lib/binfmt.d/$name.conf
  [ -f "$conf" ] || { echo "binfmt.sh: $conf missing: install qemu-user-static" >&2; exit 2; }
  # The F flag (in Debian's file) opens the interpreter now, so chroots need no copy of it.
  grep -v '^#' "$conf" > /proc/sys/fs/binfmt_misc/register
fi
echo "binfmt: $name enabled"
