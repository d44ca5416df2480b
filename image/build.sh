#!/usr/bin/env bash
# Builds the Waystation appliance image for ARCH (amd64: UEFI x86-64 with systemd-boot; arm64:
# Raspberry Pi 4, and QEMU's virt machine) into OUT: the raw image (kept for the boot tests),
# image.zst, .bmap, the manifest and SHA256SUMS. See docs/image.md.
#
#   image/build.sh ARCH OUT PYTHON
#
# PYTHON: a Python with pip (the project's .venv) that builds the project's wheel and fetches
# the locked dependencies' wheels for the target from PyPI. Debian packages come from Debian's
# archive only (stage 1, image/base.sh). Every file system is built as a plain file - mkfs.vfat
# -C + mtools, mkfs.ext4 -d, sfdisk, dd conv=notrunc - with no loop device and no mount.
set -euo pipefail
arch=$1
out=$(realpath -m "$2")
python=$3
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
: "${SOURCE_DATE_EPOCH:?set SOURCE_DATE_EPOCH (the Makefile does)}"
export SOURCE_DATE_EPOCH
# mke2fs reads this for every time stamp it writes.
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
export TZ=UTC LC_ALL=C.UTF-8

case "$arch" in
  amd64) platform=(--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64) ;;
  arm64) platform=(--platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64) ;;
  *) echo "build.sh: ARCH must be amd64 or arm64, not '$arch'" >&2; exit 2 ;;
esac
step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS" >&2; }
# Stable identifiers derived from the architecture and the source date: the same input gives
# the same file system UUIDs and partition table, build after build.
ident() { printf '%s' "waystation-$arch-$SOURCE_DATE_EPOCH-$1" | sha256sum | cut -c1-32 \
  | sed -E 's/(.{8})(.{4})(.{4})(.{4})(.{12})/\1-\2-\3-\4-\5/'; }

cache="$out/../cache"
mkdir -p "$out" "$cache"
work="$out/work"
rm -rf "$work"
mkdir -p "$work"

step "stage 1: Debian root file system ($arch)"
base=$("$here/base.sh" "$arch" "$cache")
root="$work/root"
cp -a "$base" "$root"
rm -f "$root/.complete"

step "the project's wheel and its locked dependencies for $arch (Python 3.11)"
wheels="$work/wheels"
mkdir -p "$wheels"
"$python" -m pip wheel -q --no-deps -w "$wheels" "$top"
wheel=$(ls "$wheels"/waystation-*.whl)
pyver=$(basename "$(ls -d "$root"/usr/lib/python3.[0-9]*)" | sed 's/python//')
[ "$pyver" = 3.11 ] || { echo "build.sh: Debian's Python is $pyver, expected 3.11" >&2; exit 1; }
# Binary wheels only: everything the router needs has manylinux wheels for both
# architectures on PyPI (checked here, on every build).
pip_target=(--only-binary=:all: "${platform[@]}" --python-version "$pyver" --implementation cp
  --abi cp311 --abi abi3 --abi none)
"$python" -m pip download -q "${pip_target[@]}" -c "$top/constraints.txt" -d "$wheels" "$wheel"

step "the router's virtual environment in /opt/waystation/venv"
venv="$root/opt/waystation/venv"
site="$venv/lib/python$pyver/site-packages"
mkdir -p "$venv/bin" "$site"
ln -s /usr/bin/python3 "$venv/bin/python3"
ln -s python3 "$venv/bin/python"
cat > "$venv/pyvenv.cfg" <<EOF
home = /usr/bin
include-system-site-packages = false
version = $("$root/usr/bin/python3" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || echo "$pyver")
EOF
# Installed by the build host's pip for the target's platform: no code of the target runs,
# so this is as fast for arm64 as for amd64. --no-index: only the wheels fetched above.
"$python" -m pip install -q --no-index --find-links "$wheels" "${pip_target[@]}" --no-compile \
  --target "$site" -c "$top/constraints.txt" "$wheel"
rm -rf "$site/bin"
cat > "$venv/bin/waystation" <<'EOF'
#!/opt/waystation/venv/bin/python3
import sys

from router.cli import main

sys.exit(main())
EOF
chmod 755 "$venv/bin/waystation"
# The root is read-only: compile now (hash-based .pyc, reproducible and never stale).
python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$root" -p / "$site" >/dev/null
mkdir -p "$root/opt/waystation/docs"
cp "$top"/docs/*.md "$root/opt/waystation/docs/"

step "system configuration, users and services"
cp -a "$here/rootfs/." "$root/"
chown -R 0:0 "$root/etc" "$root/usr/lib/waystation" "$root/usr/lib/systemd/system"
units="$root/usr/lib/systemd/system"
for f in "$top"/appliance/systemd/*.service "$top"/appliance/systemd/*.path \
  "$top"/appliance/systemd/*.timer; do
  install -m 0644 "$f" "$units/"
done
install -m 0644 "$top/appliance/systemd/waystation.tmpfiles" "$root/usr/lib/tmpfiles.d/waystation.conf"
systemd-sysusers --root="$root" >/dev/null
# Every unit gets its own SSH host key, made on first use (apply-ssh): none in the image.
rm -f "$root"/etc/ssh/ssh_host_*
# Empty machine-id: systemd makes one at each boot in RAM (the root is read-only).
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
ln -sf /run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
systemctl --root="$root" enable -q systemd-networkd.service systemd-resolved.service \
  systemd-timesyncd.service nftables.service waystation.service waystation.path \
  waystation-firstboot.service waystation-setup.path waystation-smart.timer \
  waystation-ups-poweroff.path waystation-grow-data.service waystation-boot-check.service \
  waystation-access.service waystation-console@tty1.service waystation-hub.service
systemctl --root="$root" disable -q ssh.service ssh.socket 2>/dev/null || true
# The console replaces the login prompt on tty1; nothing on the unit updates itself.
systemctl --root="$root" mask -q getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_all.timer e2scrub_reap.service systemd-machine-id-commit.service
# No password logs in anywhere: administration is over SSH with a key (when enabled).
sed -i -E 's/^root:[^:]*:/root:*:/' "$root/etc/shadow"

step "the boot partition"
boot="$work/boot"
mkdir -p "$boot"
kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)
kver=${kernel##*/vmlinuz-}
initrd="$root/boot/initrd.img-$kver"
cmdline="root=LABEL=ws-root rootfstype=ext4 ro rootwait fsck.repair=preen panic=10"
case "$arch" in
  amd64)
    mkdir -p "$boot/EFI/BOOT" "$boot/loader/entries"
    cp "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$boot/EFI/BOOT/BOOTX64.EFI"
    cp "$kernel" "$boot/vmlinuz"
    cp "$initrd" "$boot/initrd.img"
    # editor no: nobody at the keyboard changes the kernel command line (e.g. init=/bin/sh).
    printf 'default waystation.conf\ntimeout 0\neditor no\n' > "$boot/loader/loader.conf"
    cat > "$boot/loader/entries/waystation.conf" <<EOF
title Waystation
linux /vmlinuz
initrd /initrd.img
options $cmdline console=tty1 console=ttyS0,115200
EOF
    ;;
  arm64)
    # raspi-firmware's hook filled /boot/firmware: the Pi firmware (start4.elf, fixup4.dat),
    # the DTBs of Debian's kernel, the kernel and initramfs. Our config.txt and cmdline.txt.
    cp -a "$root/boot/firmware/." "$boot/"
    rm -f "$boot"/config.txt "$boot"/cmdline.txt "$boot"/vmlinuz-* "$boot"/initrd.img-*
    cp "$kernel" "$boot/vmlinuz"
    cp "$initrd" "$boot/initrd.img"
    cp "$here/raspi/config.txt" "$boot/config.txt"
    echo "$cmdline console=tty1 console=ttyS1,115200" > "$boot/cmdline.txt"
    ;;
esac
cp "$here/boot-README.txt" "$boot/README.txt"
# The FAT partition as /boot/firmware holds only what the fstab mounts there.
find "$root/boot/firmware" -mindepth 1 -delete

step "file systems as plain files"
# /var is the data partition: its contents (dpkg's database, the journal, /var/lib/...) go
# into the data file system, and the root's /var stays an empty mount point.
data="$work/data"
mv "$root/var" "$data"
mkdir -m 0755 "$root/var"
# Time stamps no later than the source date (reproducible builds).
find "$root" "$data" "$boot" -newermt "@$SOURCE_DATE_EPOCH" -print0 \
  | xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
mib() { du -s --block-size=1M "$1" | cut -f1; }
# Sizes in MiB. Root: its contents plus a third (headroom for updates), rounded to 64 MiB.
boot_mib=256
root_mib=$(( ( $(mib "$root") * 4 / 3 + 63 ) / 64 * 64 ))
data_mib=512
mkfs.vfat -C -F 32 -n WSBOOT -i "$(ident boot | cut -c1-8)" --invariant "$work/boot.vfat" \
  $((boot_mib * 1024)) >/dev/null
mcopy -s -m -i "$work/boot.vfat" "$boot"/* ::/
truncate -s "${root_mib}M" "$work/root.ext4"
mkfs.ext4 -q -F -L ws-root -U "$(ident root)" -E "root_owner=0:0,hash_seed=$(ident root-hash)" \
  -m 0 -d "$root" "$work/root.ext4"
truncate -s "${data_mib}M" "$work/data.ext4"
mkfs.ext4 -q -F -L ws-data -U "$(ident data)" -E "root_owner=0:0,hash_seed=$(ident data-hash)" \
  -d "$data" "$work/data.ext4"

step "partition table and disk image"
img="$out/waystation-$arch.img"
start=2048 # 1 MiB: aligned for SD cards' erase blocks
b=$((boot_mib * 2048)); r=$((root_mib * 2048)); d=$((data_mib * 2048))
truncate -s 0 "$img"
truncate -s $(( (start + b + r + d) * 512 + 1024 * 1024 )) "$img"
if [ "$arch" = amd64 ]; then
  table="label: gpt
label-id: $(ident disk)
first-lba: 2048
start=$start, size=$b, type=U, name=\"WSBOOT\", uuid=$(ident p1)
start=$((start + b)), size=$r, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"ws-root\", uuid=$(ident p2)
start=$((start + b + r)), size=$d, type=L, name=\"ws-data\", uuid=$(ident p3)"
else
  # The Pi's boot ROM reads an MBR (dos) table and a FAT partition of type 0x0c.
  table="label: dos
label-id: 0x$(ident disk | cut -c1-8)
start=$start, size=$b, type=c, bootable
start=$((start + b)), size=$r, type=83
start=$((start + b + r)), size=$d, type=83"
fi
echo "$table" | sfdisk --quiet "$img"
dd if="$work/boot.vfat" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$img" bs=1M seek=$((1 + boot_mib)) conv=notrunc,sparse status=none
dd if="$work/data.ext4" of="$img" bs=1M seek=$((1 + boot_mib + root_mib)) conv=notrunc,sparse status=none
touch --date="@$SOURCE_DATE_EPOCH" "$img"

step "manifest, bmap, zstd, SHA256SUMS"
manifest="$out/waystation-$arch.manifest"
{
  echo "# Waystation appliance image $arch"
  echo "source: $(git -C "$top" describe --always --dirty 2>/dev/null || echo unknown)"
  echo "SOURCE_DATE_EPOCH: $SOURCE_DATE_EPOCH ($(date -u -d "@$SOURCE_DATE_EPOCH" +%FT%TZ))"
  echo "kernel: $kver"
  echo "partitions: boot ${boot_mib} MiB (FAT32 WSBOOT), root ${root_mib} MiB (ext4 ws-root, read-only), data ${data_mib} MiB (ext4 ws-data, grown on first boot)"
  echo
  echo "## Debian packages"
  dpkg-query --admindir="$data/lib/dpkg" -W -f '${Package}\t${Version}\t${Architecture}\n' | sort
  echo
  echo "## Python packages in /opt/waystation/venv"
  (cd "$site" && ls -d ./*.dist-info | sed -E 's|^\./||; s|\.dist-info$||; s|-|\t|' | sort)
} > "$manifest"
bmaptool -q create -o "$out/waystation-$arch.img.bmap" "$img"
zstd -q -f -T0 -10 "$img" -o "$out/waystation-$arch.img.zst"
(cd "$out" && sha256sum "waystation-$arch.img.zst" "waystation-$arch.img.bmap" \
  "waystation-$arch.manifest" > "SHA256SUMS-$arch")
# The boot tests read the layout from here.
cat > "$out/waystation-$arch.layout" <<EOF
boot_offset_mib=1
boot_mib=$boot_mib
root_offset_mib=$((1 + boot_mib))
root_mib=$root_mib
data_offset_mib=$((1 + boot_mib + root_mib))
data_mib=$data_mib
kernel=$kver
EOF
rm -rf "$work"
step "done: $out"
ls -la "$out" >&2
