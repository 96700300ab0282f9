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
	setpriv:util-linux swtpm:swtpm swtpm_setup:swtpm-tools \
	dnsmasq:dnsmasq-base nft:nftables nsenter:util-linux unshare:util-linux passt:passt \
	qemu-io:qemu-utils mkfs.ext4:e2fsprogs \
	sshd:openssh-server ssh-keygen:openssh-client sshfs:sshfs; do
	cmd=${pair%%:*} pkg=${pair#*:}
	command -v "$cmd" >/dev/null 2>&1 || need="$need $pkg"
done
# UEFI firmware (OVMF) with its QEMU firmware descriptors, for UEFI guests.
[ -e /usr/share/qemu/firmware/60-edk2-x86_64.json ] || need="$need ovmf"
# The test guest is built from packages that are downloaded, not installed.
if [ -n "$need" ]; then
	echo "deps: installing$need"
	as_root apt-get update -qq
	as_root apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

# Go, at the version go.mod names, into /usr/local/go. The toolchain is a
# module (golang.org/toolchain) that the go command fetches through the
# configured module proxy, as GOTOOLCHAIN does; Debian's Go package, unpacked
# into a temporary directory and never installed, is the go command that
# fetches it on a machine that has none.
install_go() {
	v=$(sed -n 's/^go \([0-9.]*\)$/\1/p' go.mod)
	dest=${GO_INSTALL_DIR:-/usr/local/go}
	echo "deps: installing Go $v into $dest"
	tmp=$(mktemp -d)
	chmod 755 "$tmp" # apt's _apt sandbox user writes the downloads
	trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
	as_root apt-get update -qq
	(cd "$tmp" && apt-get download -qq golang-1.19-go golang-1.19-src </dev/null >/dev/null)
	for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/boot"; done
	boot="$tmp/boot/usr/lib/go-1.19"
	mod="golang.org/toolchain@v0.0.1-go$v.linux-amd64"
	dir=$(cd "$tmp" && GOROOT="$boot" GOPATH="$tmp/gopath" GOFLAGS=-modcacherw GO111MODULE=on \
		"$boot/bin/go" mod download -json "$mod" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -n "$dir" ] && [ -f "$dir/bin/go" ] || { echo "deps: could not fetch $mod through the module proxy" >&2; exit 1; }
	as_root rm -rf "$dest"
	as_root mkdir -p "$(dirname "$dest")"
	as_root cp -a "$dir" "$dest"
	as_root chmod -R u+w,a+rX "$dest"
	as_root find "$dest/bin" "$dest/pkg/tool" -type f -exec chmod +x {} +
	"$dest/bin/go" version
}
if ! command -v go >/dev/null 2>&1; then
	install_go
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
	# ... in the kvm group where the host has one, as distributions do, so
	# that it can open a /dev/kvm the group may use.
	if getent group kvm >/dev/null && ! id -nG qemu | tr ' ' '\n' | grep -qx kvm; then
		as_root usermod -a -G kvm qemu
	fi
	# The end-to-end tests act as an unprivileged user of a system mount:
	# qemufs-test, a member of qemufs-admin (the qemu.conf admin_group or
	# read_group of those tests).
	getent group qemufs-admin >/dev/null || as_root groupadd --system qemufs-admin
	getent passwd qemufs-test >/dev/null || as_root useradd --system --user-group \
		--groups qemufs-admin --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin qemufs-test
fi
