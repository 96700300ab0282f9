#!/bin/bash
# build.sh [OUTDIR] builds the qemufs test guest: a Debian cloud kernel and a
# busybox initramfs that prints a known line on ttyS0, powers off on the ACPI
# power button and runs a shell on the serial console.
#
# OUTDIR defaults to ${QEMUFS_GUEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qemufs-test-guest}.
# The build is idempotent: a stamp records the package versions, the state of
# apt's package lists and the hash of this script; a rerun with the same stamp
# only prints the paths (in milliseconds when the lists are unchanged).
#
# Outputs in OUTDIR: vmlinuz, initramfs.img (gzip'ed cpio newc) and guest.env
# (shell-sourceable: QEMUFS_GUEST_KERNEL, QEMUFS_GUEST_INITRD,
# QEMUFS_GUEST_READY_LINE, QEMUFS_GUEST_CMDLINE).
#
# Kernel command line words understood by the guest's init:
#   qemufs.action=panic     crash the kernel (sysrq c) once ready; with
#                           -device pvpanic QEMU reports GUEST_PANICKED
#   qemufs.action=poweroff  power off once ready (SHUTDOWN guest=true)
#   qemufs.action=reboot    reboot once ready (RESET/SHUTDOWN guest-reset)
#
# Needs: apt-get (Debian 12), root for apt-get update/install of missing
# tools. Runs non-interactively (CI=true, no stdin).
set -euo pipefail

READY_LINE=QEMUFS-GUEST-READY
CMDLINE="console=ttyS0 panic=-1 quiet"
OUT=${1:-${QEMUFS_GUEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qemufs-test-guest}}
SELF=$(readlink -f "${BASH_SOURCE[0]}")
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

log() { echo "build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

print_outputs() {
	echo "$OUT/vmlinuz"
	echo "$OUT/initramfs.img"
	echo "$OUT/guest.env"
}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# One build at a time per OUTDIR: tests of several packages may call us at once.
exec 9>"$OUT/.lock"
flock 9

apt_updated=
apt_update() {
	[ -n "$apt_updated" ] && return 0
	[ "$(id -u)" = 0 ] || die "apt-get update needs root"
	log "apt-get update"
	apt-get update -qq </dev/null >&2 || die "apt-get update failed"
	apt_updated=1
}

# candidate PKG prints the version apt would download, or nothing.
candidate() {
	apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2 }'
}

# resolve sets KPKG (the real linux-image-*-cloud-amd64 package the
# metapackage depends on) and the candidate versions.
resolve() {
	KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-.*-cloud-amd64$/ { print $2; exit }')
	KVER=
	BBVER=
	if [ -n "$KPKG" ]; then
		KVER=$(candidate "$KPKG")
	fi
	BBVER=$(candidate busybox-static)
}

SCRIPT_HASH=$(sha256sum "$SELF" | cut -d' ' -f1)
outputs_exist() {
	[ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initramfs.img" ] && [ -f "$OUT/guest.env" ]
}
# Fast path: apt-cache takes about a second a call, so when the package lists
# are unchanged since the last build the versions are too.
lists_id() {
	stat -c '%n %s %Y' /var/lib/apt/lists/*_Packages* 2>/dev/null | sha256sum | cut -d' ' -f1
}
FAST="lists=$(lists_id) script=$SCRIPT_HASH"
if [ -f "$OUT/stamp" ] && [ "$(head -n1 "$OUT/stamp")" = "$FAST" ] && outputs_exist; then
	print_outputs
	exit 0
fi

resolve
if [ -z "$KPKG" ] || [ -z "$KVER" ] || [ -z "$BBVER" ]; then
	apt_update
	resolve
	[ -n "$KPKG" ] && [ -n "$KVER" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package"
	[ -n "$BBVER" ] || die "no candidate for busybox-static"
fi

STAMP="$KPKG=$KVER busybox-static=$BBVER script=$SCRIPT_HASH"
if [ -f "$OUT/stamp" ] && [ "$(tail -n1 "$OUT/stamp")" = "$STAMP" ] && outputs_exist; then
	# Lists changed but not our packages: refresh the fast-path line.
	printf '%s\n%s\n' "lists=$(lists_id) script=$SCRIPT_HASH" "$STAMP" >"$OUT/stamp.tmp"
	mv -f "$OUT/stamp.tmp" "$OUT/stamp"
	print_outputs
	exit 0
fi

# Tools: cpio and gzip to pack, kmod's modinfo to find module dependencies,
# xz to unpack compressed modules.
missing=
command -v cpio >/dev/null || missing="$missing cpio"
command -v gzip >/dev/null || missing="$missing gzip"
command -v modinfo >/dev/null || [ -x /sbin/modinfo ] || missing="$missing kmod"
command -v xz >/dev/null || missing="$missing xz-utils"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found: not a Debian system?"
if [ -n "$missing" ]; then
	[ "$(id -u)" = 0 ] || die "missing tools:$missing (install them or run as root)"
	apt_update
	log "apt-get install$missing"
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing </dev/null >&2 || die "apt-get install$missing failed"
fi
MODINFO=$(command -v modinfo || echo /sbin/modinfo)

WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# apt's _apt sandbox user must be able to write the download directory.
chmod 755 "$WORK"

download() {
	(cd "$WORK" && apt-get download -qq "$KPKG=$KVER" "busybox-static=$BBVER" </dev/null >&2 2>"$WORK/download.err")
}
log "downloading $KPKG=$KVER busybox-static=$BBVER"
if ! download; then
	# Stale package lists name versions the mirror no longer has.
	apt_update
	resolve
	STAMP="$KPKG=$KVER busybox-static=$BBVER script=$SCRIPT_HASH"
	download || die "apt-get download failed: $(cat "$WORK/download.err")"
fi

mkdir "$WORK/pkg" "$WORK/root"
for deb in "$WORK"/*.deb; do
	dpkg-deb -x "$deb" "$WORK/pkg"
done

vmlinuz=$(ls "$WORK"/pkg/boot/vmlinuz-* 2>/dev/null | head -n1)
[ -n "$vmlinuz" ] || die "no /boot/vmlinuz-* in $KPKG"
kver=${vmlinuz##*/vmlinuz-}
moddir="$WORK/pkg/lib/modules/$kver"
[ -d "$moddir" ] || die "no lib/modules/$kver in $KPKG"

# --- initramfs tree ---------------------------------------------------------
R="$WORK/root"
mkdir -p "$R"/{bin,sbin,etc/acpi,proc,sys,dev,tmp,root,lib/modules}
cp "$WORK/pkg/bin/busybox" "$R/bin/busybox"
for applet in $("$R/bin/busybox" --list); do
	[ -e "$R/bin/$applet" ] || ln -s busybox "$R/bin/$applet"
done

# Module name -> file, for dependency resolution ('-' and '_' are the same).
declare -A modfile
while IFS= read -r f; do
	n=${f##*/}
	n=${n%%.ko*}
	modfile[${n//-/_}]=$f
done < <(find "$moddir/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')

declare -A added
modorder=()
add_module() { # add_module NAME [optional]
	local name=${1//-/_} f dep deps
	[ -n "${added[$name]:-}" ] && return 0
	f=${modfile[$name]:-}
	if [ -z "$f" ]; then
		[ "${2:-}" = optional ] && return 0
		# Built into the kernel: nothing to load.
		grep -qs "/$1.ko" "$moddir/modules.builtin" && return 0
		die "module $1 not found in $KPKG"
	fi
	added[$name]=1
	deps=$("$MODINFO" -F depends "$f" 2>/dev/null || true)
	for dep in ${deps//,/ }; do
		add_module "$dep"
	done
	case $f in
	*.ko.xz) xz -dc "$f" >"$R/lib/modules/$name.ko" ;;
	*.ko.zst) zstd -dqc "$f" >"$R/lib/modules/$name.ko" ;;
	*.ko.gz) gzip -dc "$f" >"$R/lib/modules/$name.ko" ;;
	*) cp "$f" "$R/lib/modules/$name.ko" ;;
	esac
	modorder+=("$name")
}
add_module evdev
add_module button
# pvpanic lets QEMU see guest panics (GUEST_PANICKED); the ISA device is
# driven by pvpanic-mmio, the PCI one by pvpanic-pci.
add_module pvpanic optional
add_module pvpanic-mmio optional
add_module pvpanic-pci optional
# Devices that tests plug in or give the guest: virtio disks, NICs, serial
# ports (the guest agent's channel), SCSI/CD-ROM and the raw sockets udhcpc
# uses. Each may be built in, which add_module accepts.
for m in virtio_pci virtio_blk virtio_net virtio_console virtio_scsi virtio_rng \
	virtio_balloon sd_mod sr_mod cdrom ata_piix ata_generic af_packet; do
	add_module "$m" optional
done
printf '%s\n' "${modorder[@]}" >"$R/etc/modules"

printf 'PWRF pwrf\n' >"$R/etc/acpid.conf"
printf '#!/bin/sh\n/bin/busybox poweroff -f\n' >"$R/etc/acpi/pwrf"
chmod 755 "$R/etc/acpi/pwrf"

cat >"$R/init" <<EOF
#!/bin/busybox sh
# qemufs test guest init (generated by tests/guest/build.sh).
export PATH=/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
for m in \$(cat /etc/modules); do
	insmod /lib/modules/\$m.ko || echo "init: insmod \$m failed" >/dev/ttyS0
done
# acpid in the foreground (-d), backgrounded by the shell: daemonized it
# changes to / and no longer finds its relative action /etc/acpi/pwrf.
(cd /etc/acpi && exec acpid -d -c /etc/acpi -a /etc/acpid.conf >/dev/null 2>&1) &
acpid_pid=\$!
# The ready line promises that the power button works: wait (a few ms, at
# most 5 s) until acpid holds the input event devices open.
i=0
while [ \$i -lt 5000 ] && [ -d /proc/\$acpid_pid ] &&
	! ls -l /proc/\$acpid_pid/fd 2>/dev/null | grep -q /dev/input/event; do
	usleep 1000
	i=\$((i + 1))
done
[ -d /proc/\$acpid_pid ] || echo "init: acpid is not running" >/dev/ttyS0
echo $READY_LINE >/dev/ttyS0
for w in \$(cat /proc/cmdline); do
	case \$w in
	qemufs.action=panic)
		echo 1 >/proc/sys/kernel/sysrq
		echo c >/proc/sysrq-trigger ;;
	qemufs.action=poweroff) poweroff -f ;;
	qemufs.action=reboot) reboot -f ;;
	esac
done
# An interactive shell on the serial console with it as controlling tty
# (ttyS0 is opened after setsid), respawned when it exits. The child of this
# non-interactive shell is no process group leader, so setsid needs no fork
# and the loop waits for the shell itself.
while :; do
	setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1'
done
EOF
chmod 755 "$R/init"

(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -9n >"$WORK/initramfs.img"
cp "$vmlinuz" "$WORK/vmlinuz"
cat >"$WORK/guest.env" <<EOF
QEMUFS_GUEST_KERNEL=$OUT/vmlinuz
QEMUFS_GUEST_INITRD=$OUT/initramfs.img
QEMUFS_GUEST_READY_LINE=$READY_LINE
QEMUFS_GUEST_CMDLINE="$CMDLINE"
EOF
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initramfs.img" "$OUT/initramfs.img"
mv -f "$WORK/guest.env" "$OUT/guest.env"
printf '%s\n%s\n' "lists=$(lists_id) script=$SCRIPT_HASH" "$STAMP" >"$OUT/stamp.tmp"
mv -f "$OUT/stamp.tmp" "$OUT/stamp"
log "built guest ($KPKG $KVER, modules: ${modorder[*]})"
print_outputs
