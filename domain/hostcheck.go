package domain

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// CheckHost reports, before a start, what the definition needs from this
// host that is not there: /dev/kvm for type 'kvm', host devices
// (hostdev PCI/USB/mdev, character and input devices, a TPM), hugetlbfs,
// /dev/vhost-vsock, and the helper binaries qemufs would run (swtpm).
// Errors wrap ErrUnsupported and name the element and the missing thing,
// so the driver can fail the start with a clear message instead of
// QEMU's. It does not check disk images or sockets: those belong to the
// security layer and QEMU.
func (d *Domain) CheckHost() error {
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	if d.Type() == "kvm" && !exists("/dev/kvm") {
		return &Error{Path: "domain", Msg: "domain type 'kvm' needs /dev/kvm, which this host does not have (use type='qemu')", Err: ErrUnsupported}
	}
	if mb := child(d.root, "memoryBacking"); child(mb, "hugepages") != nil && !hugetlbfsMounted() {
		return unsupportedAt(child(mb, "hugepages"), "hugepages need a mounted hugetlbfs, and this host has none")
	}
	devs := child(d.root, "devices")
	for _, h := range children(devs, "hostdev") {
		src := child(h, "source")
		switch attr(h, "type") {
		case "pci":
			a := child(src, "address")
			addr := fmt.Sprintf("%04x:%02x:%02x.%x", mustUint(attr(a, "domain")), mustUint(attr(a, "bus")),
				mustUint(attr(a, "slot")), mustUint(attr(a, "function")))
			if !exists("/sys/bus/pci/devices/" + addr) {
				return unsupportedAt(h, "host PCI device %s does not exist", addr)
			}
			if !exists("/dev/vfio/vfio") {
				return unsupportedAt(h, "assigning host PCI device %s needs VFIO (/dev/vfio/vfio), which this host does not have", addr)
			}
		case "mdev":
			u := attr(child(src, "address"), "uuid")
			if !exists("/sys/bus/mdev/devices/" + u) {
				return unsupportedAt(h, "mediated device %s does not exist", u)
			}
		case "usb":
			if a := child(src, "address"); a != nil {
				p := fmt.Sprintf("/dev/bus/usb/%03d/%03d", mustUint(attr(a, "bus")), mustUint(attr(a, "device")))
				if !exists(p) {
					return unsupportedAt(h, "host USB device %s does not exist", p)
				}
			}
		default:
			return unsupportedAt(h, "host device type %q is not supported", attr(h, "type"))
		}
	}
	for _, tag := range []string{"serial", "parallel", "console", "channel"} {
		for _, e := range children(devs, tag) {
			if attr(e, "type") == "dev" {
				if p := attr(child(e, "source"), "path"); !exists(p) {
					return unsupportedAt(e, "host device %s does not exist", p)
				}
			}
		}
	}
	for _, in := range children(devs, "input") {
		if t := attr(in, "type"); t == "passthrough" || t == "evdev" {
			p := attr(child(in, "source"), "evdev") + attr(child(in, "source"), "dev")
			if !exists(p) {
				return unsupportedAt(in, "input device %s does not exist", p)
			}
		}
	}
	for _, t := range children(devs, "tpm") {
		switch b := child(t, "backend"); attr(b, "type") {
		case "passthrough":
			p := attrOr(child(b, "device"), "path", "/dev/tpm0")
			if !exists(p) {
				return unsupportedAt(t, "TPM device %s does not exist", p)
			}
		case "emulator":
			for _, bin := range []string{"swtpm", "swtpm_setup"} {
				if _, err := exec.LookPath(bin); err != nil {
					return unsupportedAt(t, "an emulated TPM needs %s, which is not installed (Debian packages swtpm and swtpm-tools)", bin)
				}
			}
		}
	}
	if len(children(devs, "vsock")) > 0 && !exists("/dev/vhost-vsock") {
		return unsupportedAt(children(devs, "vsock")[0], "vsock needs /dev/vhost-vsock, which this host does not have")
	}
	return nil
}

func hugetlbfsMounted() bool {
	data, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == "hugetlbfs" {
			return true
		}
	}
	return false
}
