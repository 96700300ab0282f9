#!/bin/sh
# Installs what `make bench` needs beyond `make deps`: libvirt's virsh and
# QEMU driver, to compare qemufs with libvirt's embedded driver
# (qemu:///embed). Only the bench uses them; safe to rerun. When they
# cannot be installed the bench runs without the libvirt comparison.
set -eu
export DEBIAN_FRONTEND=noninteractive

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

have_libvirt() {
	command -v virsh >/dev/null 2>&1 &&
		ls /usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so >/dev/null 2>&1
}

if ! have_libvirt; then
	echo "bench-deps: installing libvirt-clients libvirt-daemon-driver-qemu"
	if ! { as_root apt-get update -qq &&
		as_root apt-get install -y -qq --no-install-recommends libvirt-clients libvirt-daemon-driver-qemu >/dev/null; }; then
		echo "bench-deps: could not install libvirt; the bench skips the libvirt comparison" >&2
		exit 0
	fi
fi
# A privileged libvirt QEMU driver, embedded too, resolves its default
# QEMU account at start; libvirt-daemon-system (not installed: it brings
# the daemons) would create it.
if [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; then
	getent group libvirt-qemu >/dev/null || as_root groupadd --system libvirt-qemu
	getent passwd libvirt-qemu >/dev/null || as_root useradd --system --gid libvirt-qemu --no-create-home \
		--home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
fi
exit 0
