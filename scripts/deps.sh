#!/bin/sh
# Installs what qemufs needs to build, run and test, on Debian 12, only when
# missing. Safe to rerun; works without a terminal (CI=true, no stdin).
set -eu
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
export DEBIAN_FRONTEND=noninteractive

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# command -> Debian package
need=""
for pair in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils fusermount3:fuse3 \
	xmllint:libxml2-utils cpio:cpio gzip:gzip modinfo:kmod tmux:tmux losetup:mount \
	setpriv:util-linux; do
	cmd=${pair%%:*} pkg=${pair#*:}
	command -v "$cmd" >/dev/null 2>&1 || need="$need $pkg"
done
# UEFI firmware (OVMF) with its QEMU firmware descriptors, for UEFI guests.
[ -e /usr/share/qemu/firmware/60-edk2-x86_64.json ] || need="$need ovmf"
# The test guest is built from these; they are downloaded, not installed.
if [ -n "$need" ]; then
	echo "deps: installing$need"
	as_root apt-get update -qq
	as_root apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

# Go, at the version go.mod names, from the Go module proxy (the toolchain
# is published there as golang.org/toolchain) into /usr/local/go.
if ! command -v go >/dev/null 2>&1; then
	v=$(sed -n 's/^go \([0-9.]*\)$/\1/p' go.mod)
	echo "deps: installing Go $v into /usr/local/go"
	for c in curl unzip; do
		command -v $c >/dev/null 2>&1 || { as_root apt-get update -qq; as_root apt-get install -y -qq $c >/dev/null; }
	done
	tmp=$(mktemp -d)
	mod="v0.0.1-go$v.linux-amd64"
	curl -fsSL -o "$tmp/go.zip" "${GOPROXY_URL:-https://proxy.golang.org}/golang.org/toolchain/@v/$mod.zip"
	unzip -q "$tmp/go.zip" -d "$tmp"
	as_root rm -rf /usr/local/go
	as_root mv "$tmp/golang.org/toolchain@$mod" /usr/local/go
	as_root chmod -R a+rX /usr/local/go
	as_root find /usr/local/go/bin /usr/local/go/pkg/tool -type f -exec chmod +x {} +
	rm -rf "$tmp"
fi
if ! command -v staticcheck >/dev/null 2>&1; then
	echo "deps: installing staticcheck"
	go install honnef.co/go/tools/cmd/staticcheck@latest
fi

# The system instance runs QEMU as an unprivileged account, like the 'qemu'
# user of distributions' libvirt packages.
if [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; then
	getent group qemu >/dev/null || as_root groupadd --system qemu
	getent passwd qemu >/dev/null || as_root useradd --system --gid qemu --no-create-home \
		--home-dir /nonexistent --shell /usr/sbin/nologin qemu
	# The end-to-end tests act as an unprivileged user of a system mount:
	# qemufs-test, a member of qemufs-admin (the qemu.conf admin_group or
	# read_group of those tests).
	getent group qemufs-admin >/dev/null || as_root groupadd --system qemufs-admin
	getent passwd qemufs-test >/dev/null || as_root useradd --system --user-group \
		--groups qemufs-admin --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin qemufs-test
fi
