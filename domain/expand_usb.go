package domain

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// usbRootPorts is the number of root hub ports of a USB controller model.
func usbRootPorts(ctl *etree.Element) int {
	if p := attr(ctl, "ports"); p != "" {
		n, _ := strconv.Atoi(p)
		return n
	}
	switch attr(ctl, "model") {
	case "ehci", "ich9-ehci1":
		return 6
	case "qemu-xhci", "nec-xhci":
		return 4
	case "pci-ohci":
		return 3
	case "none":
		return 0
	}
	return 2
}

// usbDevices returns the devices that sit on a USB bus, hubs first, in
// libvirt's order.
func (x *expander) usbDevices() []*etree.Element {
	var out []*etree.Element
	out = append(out, children(x.devs, "hub")...)
	for _, in := range children(x.devs, "input") {
		if attr(in, "bus") == "usb" {
			out = append(out, in)
		}
	}
	for _, d := range children(x.devs, "disk") {
		if attr(child(d, "target"), "bus") == "usb" {
			out = append(out, d)
		}
	}
	for _, c := range children(x.devs, "controller") {
		if attr(c, "type") == "ccid" {
			out = append(out, c)
		}
	}
	for _, s := range children(x.devs, "sound") {
		if attr(s, "model") == "usb" {
			out = append(out, s)
		}
	}
	for _, h := range children(x.devs, "hostdev") {
		if attr(h, "type") == "usb" {
			out = append(out, h)
		}
	}
	out = append(out, children(x.devs, "redirdev")...)
	for _, s := range children(x.devs, "serial") {
		if attr(child(s, "target"), "type") == "usb-serial" {
			out = append(out, s)
		}
	}
	for _, n := range children(x.devs, "interface") {
		if attr(child(n, "model"), "type") == "usb-net" {
			out = append(out, n) // a USB NIC, not a PCI one
		}
	}
	return out
}

// usbAddresses gives every USB device a bus and port, adding hubs when the
// root ports run out.
func (x *expander) usbAddresses() error {
	devs := x.usbDevices()
	if len(devs) == 0 {
		return nil
	}
	// Ports per bus (controller index): "1", "2", ... and hub ports "1.1".
	free := map[int][]string{}
	used := map[string]bool{}
	var buses []int
	seenBus := map[int]bool{}
	for _, c := range children(x.devs, "controller") {
		if attr(c, "type") != "usb" || attr(c, "model") == "none" {
			continue
		}
		idx, _ := strconv.Atoi(attr(c, "index"))
		if _, companion := usbCompanionFunction(attr(c, "model")); companion && attr(c, "model") != "ich9-ehci1" {
			continue // companions share the EHCI's ports
		}
		if seenBus[idx] {
			continue
		}
		seenBus[idx] = true
		buses = append(buses, idx)
		for p := 1; p <= usbRootPorts(c); p++ {
			free[idx] = append(free[idx], strconv.Itoa(p))
		}
	}
	if len(buses) == 0 {
		return errAt(devs[0], "a USB device needs a USB controller, but the USB controller model is 'none'")
	}
	for _, d := range devs {
		if a := child(d, "address"); a != nil && attr(a, "type") == "usb" && attr(a, "port") != "" {
			used[attr(a, "bus")+"/"+attr(a, "port")] = true
		}
	}
	// Hubs already placed provide ports.
	addHubPorts := func(h *etree.Element) {
		a := child(h, "address")
		if a == nil || attr(a, "type") != "usb" || attr(a, "port") == "" {
			return
		}
		b, _ := strconv.Atoi(attr(a, "bus"))
		for p := 1; p <= 8; p++ {
			free[b] = append(free[b], attr(a, "port")+"."+strconv.Itoa(p))
		}
	}
	for _, h := range children(x.devs, "hub") {
		addHubPorts(h)
	}
	countFree := func() int {
		n := 0
		for _, b := range buses {
			for _, p := range free[b] {
				if !used[strconv.Itoa(b)+"/"+p] {
					n++
				}
			}
		}
		return n
	}
	pending := 0
	for _, d := range devs {
		if a := child(d, "address"); a == nil || attr(a, "port") == "" {
			pending++
		}
	}
	// Add hubs until everything fits (each hub takes a port, gives 8).
	for countFree() < pending && countFree() > 0 {
		h := x.addDevice("hub")
		setAttr(h, "type", "usb")
		devs = append([]*etree.Element{h}, devs...)
		pending++
		if err := x.placeUSB(h, buses, free, used); err != nil {
			return err
		}
		pending--
		addHubPorts(h)
	}
	for _, d := range devs {
		if a := child(d, "address"); a != nil && attr(a, "port") != "" {
			continue
		}
		if err := x.placeUSB(d, buses, free, used); err != nil {
			return err
		}
		if d.Tag == "hub" {
			addHubPorts(d)
		}
	}
	return nil
}

func (x *expander) placeUSB(d *etree.Element, buses []int, free map[int][]string, used map[string]bool) error {
	a := child(d, "address")
	want := -1
	if a != nil && hasAttr(a, "bus") {
		want, _ = strconv.Atoi(attr(a, "bus"))
	}
	for _, b := range buses {
		if want >= 0 && b != want {
			continue
		}
		for _, p := range free[b] {
			k := strconv.Itoa(b) + "/" + p
			if used[k] {
				continue
			}
			used[k] = true
			if a == nil {
				a = subInsert(d, "address")
			}
			a.Attr = nil
			setAttr(a, "type", "usb")
			setAttr(a, "bus", strconv.Itoa(b))
			setAttr(a, "port", p)
			return nil
		}
	}
	if want >= 0 {
		return errAt(d, "no free port on USB bus %d", want)
	}
	return errAt(d, "no free USB port (add a controller or a hub)")
}

// aliases names every device as libvirt does (virtio-disk0, net0,
// serial0, ...), keeping names that are already set.
func (x *expander) aliases() error {
	taken := map[string]bool{}
	for _, e := range x.devs.ChildElements() {
		if a := child(e, "alias"); a != nil {
			taken[attr(a, "name")] = true
		}
	}
	set := func(e *etree.Element, name string) {
		if child(e, "alias") != nil {
			return
		}
		base := name
		for n := 1; taken[name]; n++ {
			name = fmt.Sprintf("%s-%d", base, n)
		}
		taken[name] = true
		a := subInsert(e, "alias", "address", "acpi")
		setAttr(a, "name", name)
	}
	// next is the first free name of a class. It is also called for
	// devices that keep their alias; it claims nothing (set does), so a
	// device added to an expanded definition gets the lowest free name
	// (net1 after net0), as libvirt names a hot-plugged device.
	next := func(prefix string) string {
		for n := 0; ; n++ {
			name := prefix + strconv.Itoa(n)
			if !taken[name] {
				return name
			}
		}
	}
	for _, disk := range children(x.devs, "disk") {
		t := child(disk, "target")
		a := child(disk, "address")
		idx, _ := diskIndex(attr(t, "dev"))
		var name string
		switch attr(t, "bus") {
		case "ide":
			name = fmt.Sprintf("ide%s-%s-%s", attr(a, "controller"), attr(a, "bus"), attr(a, "unit"))
		case "sata":
			name = fmt.Sprintf("sata%s-%s-%s", attr(a, "controller"), attr(a, "bus"), attr(a, "unit"))
		case "fdc":
			name = fmt.Sprintf("fdc%s-%s-%s", attr(a, "controller"), attr(a, "bus"), attr(a, "unit"))
		case "scsi":
			if attr(a, "target") != "0" && attr(a, "target") != "" {
				name = fmt.Sprintf("scsi%s-%s-%s-%s", attr(a, "controller"), attr(a, "bus"), attr(a, "target"), attr(a, "unit"))
			} else {
				name = fmt.Sprintf("scsi%s-%s-%s", attr(a, "controller"), attr(a, "bus"), attr(a, "unit"))
			}
		case "virtio":
			name = fmt.Sprintf("virtio-disk%d", idx)
		case "usb":
			name = fmt.Sprintf("usb-disk%d", idx)
		default:
			name = next("disk")
		}
		set(disk, name)
	}
	for _, c := range children(x.devs, "controller") {
		typ, idx := attr(c, "type"), attr(c, "index")
		var name string
		switch {
		case typ == "pci" && attr(c, "model") == "pcie-root":
			name = "pcie.0"
		case typ == "pci":
			name = "pci." + idx
		case typ == "usb":
			// An EHCI and its UHCI companions are one USB bus: one name.
			name = "usb"
			if idx != "0" {
				name += idx
			}
			if child(c, "alias") == nil {
				a := subInsert(c, "alias", "address", "acpi")
				setAttr(a, "name", name)
				taken[name] = true
			}
			continue
		case typ == "ide" && idx == "0":
			name = "ide"
		case typ == "sata" && idx == "0" && x.kind == machineQ35:
			name = "ide"
		default:
			name = typ + idx
		}
		set(c, name)
	}
	for _, f := range children(x.devs, "filesystem") {
		set(f, next("fs"))
	}
	for _, n := range children(x.devs, "interface") {
		if attr(n, "type") == "hostdev" {
			set(n, next("hostdev"))
			continue
		}
		set(n, next("net"))
	}
	for _, s := range children(x.devs, "smartcard") {
		set(s, next("smartcard"))
	}
	for _, s := range children(x.devs, "serial") {
		set(s, "serial"+attr(child(s, "target"), "port"))
	}
	for _, p := range children(x.devs, "parallel") {
		set(p, "parallel"+attr(child(p, "target"), "port"))
	}
	for i, c := range children(x.devs, "console") {
		if i == 0 && attr(child(c, "target"), "type") == "serial" {
			// The console is serial port 0 and shares its alias.
			if child(c, "alias") == nil {
				a := subInsert(c, "alias", "address", "acpi")
				setAttr(a, "name", "serial"+attr(child(c, "target"), "port"))
			}
			continue
		}
		set(c, fmt.Sprintf("console%d", i))
	}
	for _, c := range children(x.devs, "channel") {
		set(c, next("channel"))
	}
	for _, in := range children(x.devs, "input") {
		set(in, next("input"))
	}
	for _, t := range children(x.devs, "tpm") {
		set(t, next("tpm"))
	}
	for _, s := range children(x.devs, "sound") {
		set(s, next("sound"))
	}
	for _, v := range children(x.devs, "video") {
		set(v, next("video"))
	}
	for _, h := range children(x.devs, "hostdev") {
		set(h, next("hostdev"))
	}
	for _, r := range children(x.devs, "redirdev") {
		set(r, next("redir"))
	}
	for _, h := range children(x.devs, "hub") {
		set(h, next("hub"))
	}
	for _, w := range children(x.devs, "watchdog") {
		set(w, next("watchdog"))
	}
	for _, b := range children(x.devs, "memballoon") {
		if attr(b, "model") != "none" {
			set(b, "balloon0")
		}
	}
	for _, r := range children(x.devs, "rng") {
		set(r, next("rng"))
	}
	for _, p := range children(x.devs, "panic") {
		set(p, next("panic"))
	}
	for _, s := range children(x.devs, "shmem") {
		set(s, "shmem-"+strings.ReplaceAll(attr(s, "name"), " ", "_"))
	}
	for _, m := range children(x.devs, "memory") {
		prefix := "dimm"
		switch attr(m, "model") {
		case "nvdimm":
			prefix = "nvdimm"
		case "virtio-pmem":
			prefix = "virtiopmem"
		case "virtio-mem":
			prefix = "virtiomem"
		}
		set(m, next(prefix))
	}
	for _, io := range children(x.devs, "iommu") {
		set(io, next("iommu"))
	}
	for _, v := range children(x.devs, "vsock") {
		set(v, next("vsock"))
	}
	for _, c := range children(x.devs, "crypto") {
		set(c, next("crypto"))
	}
	for _, p := range children(x.devs, "pstore") {
		set(p, next("pstore"))
	}
	return nil
}
