#!/bin/sh
# demo.sh ROOT: puts a bootable demo guest (the test guest: a Debian kernel
# and a busybox initramfs) under ROOT/images, readable by QEMU's user, and
# writes ROOT/demo.xml, a domain XML that boots it. Used by `make run`.
set -eu
root=$1
env=$(tests/guest/build.sh | tail -n 1)
[ -f "$env" ] || env=${QEMUFS_GUEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qemufs-test-guest}/guest.env
. "$env"
mkdir -p "$root/images"
chmod o+x "$root" "$root/images"
install -m 0644 "$QEMUFS_GUEST_KERNEL" "$root/images/vmlinuz"
install -m 0644 "$QEMUFS_GUEST_INITRD" "$root/images/initramfs.img"
cat > "$root/demo.xml" <<XML
<domain type='qemu'>
  <name>demo</name>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$root/images/vmlinuz</kernel>
    <initrd>$root/images/initramfs.img</initrd>
    <cmdline>$QEMUFS_GUEST_CMDLINE</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <serial type='pty'/>
    <video><model type='vga'/></video>
    <graphics type='vnc' port='-1'/>
  </devices>
</domain>
XML
