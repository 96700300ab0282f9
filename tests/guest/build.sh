#!/bin/bash
# build.sh [OUTDIR] builds the qemufs test guest: a Debian cloud kernel and a
# busybox initramfs that prints a known line on ttyS0, powers off on the ACPI
# power button, runs a shell on the serial console and runs Debian's QEMU
# guest agent when the guest has its channel
# (/dev/virtio-ports/org.qemu.guest_agent.0).
#
# OUTDIR defaults to ${QEMUFS_GUEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qemufs-test-guest}.
# The build is idempotent: a stamp records the package versions (the kernel,
# busybox, qemu-guest-agent and a hash of the versions of the packages of
# the libraries the agent loads), the state of apt's package lists and the
# hash of this script; a rerun with the same stamp only prints the paths (in
# milliseconds when the lists are unchanged).
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
# In the guest: /sbin/shutdown (what qemu-ga's guest-shutdown runs) powers
# off, halts (-H) or reboots (-r) at once; `udhcpc -i eth0` configures eth0
# from DHCP through /usr/share/udhcpc/default.script.
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
	resolve_ga
}

# resolve_ga sets GAVER (qemu-guest-agent's candidate) and GADEPS, the
# "package=version" list of qemu-guest-agent and every package it depends
# on, recursively (not its pre-dependencies, which are for its maintainer
# scripts): the agent and the shared libraries it loads come from these.
# Two apt-cache calls in all, as each costs about a second.
resolve_ga() {
	local pkgs
	GAVER=
	GADEPS=
	pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances --no-pre-depends qemu-guest-agent 2>/dev/null |
		awk '/^[a-z0-9]/ { print }' | LC_ALL=C sort -u)
	[ -n "$pkgs" ] || return 0
	# shellcheck disable=SC2086
	GADEPS=$(apt-cache policy $pkgs 2>/dev/null | awk '
		/^[^ ]/ { sub(/:$/, ""); pkg = $0 }
		/^  Candidate:/ { if ($2 != "(none)") print pkg "=" $2; else print pkg "=NONE" }' |
		LC_ALL=C sort)
	case $GADEPS in *=NONE*) GADEPS= ;; esac
	GAVER=$(printf '%s\n' "$GADEPS" | awk -F= '$1 == "qemu-guest-agent" { print $2 }')
}

# stamp prints the identity of a build from the resolved versions.
stamp() {
	echo "$KPKG=$KVER busybox-static=$BBVER qemu-guest-agent=$GAVER" \
		"gadeps=$(printf '%s\n' "$GADEPS" | sha256sum | cut -c1-16) script=$SCRIPT_HASH"
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
if [ -z "$KPKG" ] || [ -z "$KVER" ] || [ -z "$BBVER" ] || [ -z "$GAVER" ]; then
	apt_update
	resolve
	[ -n "$KPKG" ] && [ -n "$KVER" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package"
	[ -n "$BBVER" ] || die "no candidate for busybox-static"
	[ -n "$GAVER" ] || die "no candidate for qemu-guest-agent or one of its dependencies"
fi

STAMP=$(stamp)
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

# The agent's packages go to their own directory and tree (a sysroot),
# apart from the kernel's.
mkdir -m 755 "$WORK/ga"
download() {
	rm -f "$WORK"/*.deb "$WORK"/ga/*.deb
	(cd "$WORK" && apt-get download -qq "$KPKG=$KVER" "busybox-static=$BBVER" </dev/null >&2 2>"$WORK/download.err") &&
		# shellcheck disable=SC2086
		(cd "$WORK/ga" && apt-get download -qq $GADEPS </dev/null >&2 2>"$WORK/download.err")
}
log "downloading $KPKG=$KVER busybox-static=$BBVER qemu-guest-agent=$GAVER (and $(printf '%s\n' "$GADEPS" | wc -l) agent packages)"
if ! download; then
	# Stale package lists name versions the mirror no longer has.
	apt_update
	resolve
	STAMP=$(stamp)
	download || die "apt-get download failed: $(cat "$WORK/download.err")"
fi

mkdir "$WORK/pkg" "$WORK/root" "$WORK/gasys"
for deb in "$WORK"/*.deb; do
	dpkg-deb -x "$deb" "$WORK/pkg"
done
for deb in "$WORK"/ga/*.deb; do
	dpkg-deb -x "$deb" "$WORK/gasys"
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

# --- the QEMU guest agent ---------------------------------------------------
# qemu-ga from the package, with every shared library it loads, resolved by
# the package's own dynamic loader against the sysroot only (a library not
# in the sysroot is an error, never a silent copy from the host), plus the
# loader at the path the binary names (PT_INTERP).
S="$WORK/gasys"
[ -x "$S/usr/sbin/qemu-ga" ] || die "no /usr/sbin/qemu-ga in qemu-guest-agent=$GAVER"
ldso=$(find "$S" -name 'ld-linux-x86-64.so.2' -type f | head -n1)
[ -n "$ldso" ] || die "no ld-linux-x86-64.so.2 among the agent's packages (libc6)"
libpath="$S/lib/x86_64-linux-gnu:$S/usr/lib/x86_64-linux-gnu"
mkdir -p "$R/usr/sbin" "$R/lib/x86_64-linux-gnu" "$R/lib64" "$R/var/run" "$R/run" "$R/etc/qemu"
cp "$S/usr/sbin/qemu-ga" "$R/usr/sbin/qemu-ga"
cp "$ldso" "$R/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
ln -sf ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$R/lib64/ld-linux-x86-64.so.2"
"$ldso" --library-path "$libpath" --list "$S/usr/sbin/qemu-ga" >"$WORK/ga.libs" 2>&1 ||
	die "qemu-ga: listing its libraries failed: $(cat "$WORK/ga.libs")"
galibs=()
while read -r soname arrow path _; do
	case $soname in linux-vdso.so.* | */ld-linux-x86-64.so.2 | ld-linux-x86-64.so.2) continue ;; esac
	[ "$arrow" = "=>" ] || die "qemu-ga: cannot resolve $soname"
	[ "$path" != not ] || die "qemu-ga: $soname not found among the agent's packages"
	case $path in "$S"/*) ;; *) die "qemu-ga: $soname resolved outside the agent's packages ($path)" ;; esac
	cp "$(readlink -f "$path")" "$R/lib/x86_64-linux-gnu/$soname"
	galibs+=("$soname")
done <"$WORK/ga.libs"
[ ${#galibs[@]} -gt 0 ] || die "qemu-ga: no shared libraries listed: is it still dynamic?"
# The tree must run it: try it in a chroot where we may.
if [ "$(id -u)" = 0 ]; then
	chroot "$R" /usr/sbin/qemu-ga --version >/dev/null 2>"$WORK/ga.err" ||
		die "qemu-ga does not run in the initramfs tree: $(cat "$WORK/ga.err")"
fi

# guest-shutdown runs /sbin/shutdown -h -P|-H|-r +0 "message": do it at once.
cat >"$R/sbin/shutdown" <<'EOF'
#!/bin/busybox sh
# shutdown [-h] [-P|-H|-r] [TIME] [MESSAGE]: what qemu-ga runs; acts at once.
act=poweroff
for a in "$@"; do
	case $a in
	-r) act=reboot ;;
	-H) act=halt ;;
	-P) act=poweroff ;;
	esac
done
echo "shutdown: $act" >/dev/ttyS0
sync
exec /bin/busybox $act -f
EOF
chmod 755 "$R/sbin/shutdown"

# udhcpc's default script: bring the link up, configure the lease's address,
# default route and DNS.
mkdir -p "$R/usr/share/udhcpc"
cat >"$R/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/busybox sh
# udhcpc event script: $1 is deconfig, bound, renew, leasefail or nak.
case $1 in
deconfig)
	ip link set "$interface" up
	ip -4 addr flush dev "$interface"
	;;
bound | renew)
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
	ip link set "$interface" up
	for r in $router; do
		ip route replace default via "$r" dev "$interface"
		break
	done
	: >/etc/resolv.conf
	for s in $dns; do
		echo "nameserver $s" >>/etc/resolv.conf
	done
	echo "udhcpc: $interface $ip/${mask:-24}${router:+ via $router}"
	;;
esac
exit 0
EOF
chmod 755 "$R/usr/share/udhcpc/default.script"
# Debian's busybox looks for it in /etc/udhcpc.
mkdir -p "$R/etc/udhcpc"
ln -sf /usr/share/udhcpc/default.script "$R/etc/udhcpc/default.script"

cat >"$R/init" <<EOF
#!/bin/busybox sh
# qemufs test guest init (generated by tests/guest/build.sh).
export PATH=/bin:/sbin:/usr/sbin HOME=/root
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
ip link set lo up
# No udev: name the virtio serial ports as udev does
# (/dev/virtio-ports/NAME). A virtio-serial device announces its ports,
# then their names, a moment after its driver is loaded: when the guest
# has such a device, wait for a port (at most 3 s), then for a name (at
# most 0.5 s more: a virtio console's port has none).
if grep -qsx 0x0003 /sys/bus/virtio/devices/*/device; then
	i=0
	while [ \$i -lt 300 ] && ! ls /sys/class/virtio-ports/ 2>/dev/null | grep -q .; do
		usleep 10000
		i=\$((i + 1))
	done
	i=0
	while [ \$i -lt 50 ] && ! cat /sys/class/virtio-ports/*/name 2>/dev/null | grep -q .; do
		usleep 10000
		i=\$((i + 1))
	done
	usleep 20000
fi
for p in /sys/class/virtio-ports/*; do
	[ -s \$p/name ] || continue
	mkdir -p /dev/virtio-ports
	ln -sf ../\${p##*/} /dev/virtio-ports/\$(cat \$p/name)
done
# The guest agent, in the foreground of a background shell (its log in
# /tmp/qemu-ga.log). The ready line promises that it listens: wait until it
# holds its port open (at most 5 s).
ga=/dev/virtio-ports/org.qemu.guest_agent.0
if [ -e \$ga ]; then
	qemu-ga -m virtio-serial -p \$ga -l /tmp/qemu-ga.log &
	ga_pid=\$!
	i=0
	while [ \$i -lt 5000 ] && [ -d /proc/\$ga_pid ] &&
		! ls -l /proc/\$ga_pid/fd 2>/dev/null | grep -q /dev/vport; do
		usleep 1000
		i=\$((i + 1))
	done
	[ -d /proc/\$ga_pid ] || echo "init: qemu-ga is not running: \$(cat /tmp/qemu-ga.log)" >/dev/ttyS0
fi
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
log "built guest ($KPKG $KVER, qemu-guest-agent $GAVER with ${galibs[*]}, modules: ${modorder[*]})"
print_outputs
