package domain

import (
	"crypto/sha256"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/beevik/etree"
	"github.com/google/uuid"
	"github.com/qemufs/qemufs/capabilities"
)

// Expand fills in every default of d in place, as libvirt does when it
// defines a domain, so that the stored definition pins the guest ABI:
// UUID, arch, canonical machine type (pc -> pc-i440fx-7.2), emulator,
// memory units, on_* actions, implicit controllers and devices, disk
// formats and drive addresses, PCI/USB/virtio-serial addresses, aliases
// and MAC addresses (52:54:00:xx:xx:xx).
//
// With caps == nil QEMU 7.2 x86_64 facts are assumed. Expand is
// deterministic (only a missing UUID is random; MACs derive from the UUID)
// and idempotent: expanding an expanded definition changes nothing.
func Expand(d *Domain, caps *capabilities.Capabilities) error {
	var emu *capabilities.Emulator
	if caps != nil {
		emu = lookupEmulator(d, caps)
	}
	return d.expand(newTarget(emu))
}

// lookupEmulator finds the probed emulator of d, tolerating a virt type
// the host cannot run (Validate reports that): machine facts are the same.
func lookupEmulator(d *Domain, caps *capabilities.Capabilities) *capabilities.Emulator {
	arch := d.Arch()
	if arch == "" {
		arch = caps.Host.Arch
	}
	if arch == "" {
		arch = "x86_64"
	}
	for _, vt := range []string{d.Type(), "qemu"} {
		if e, _, err := caps.Lookup(arch, vt, "", d.Emulator()); err == nil {
			return e
		}
	}
	for _, e := range caps.Emulators {
		if e.Err == "" && e.Arch == arch && (d.Emulator() == "" || e.Path == d.Emulator()) {
			return e
		}
	}
	return nil
}

// expander carries the state of one expansion.
type expander struct {
	d       *Domain
	t       *target
	arch    string
	machine string
	kind    machineKind
	devs    *etree.Element
}

func (d *Domain) expand(t *target) error {
	x := &expander{d: d, t: t}
	if err := x.general(); err != nil {
		return err
	}
	x.devs = ensure(d.root, "devices")
	steps := []func() error{
		x.emulator,
		x.disks,
		x.controllersDefaults,
		x.interfaces,
		x.chardevs,
		x.inputs,
		x.graphicsAndVideo,
		x.otherDevices,
		x.driveAddresses,
		x.virtioSerialAddresses,
		x.implicitControllers,
		x.pciAddresses,
		x.usbAddresses,
		x.aliases,
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

// addDevice appends a new device element of tag at its canonical place.
func (x *expander) addDevice(tag string) *etree.Element {
	// After the last device of the same class, else at the class order.
	var last *etree.Element
	for _, c := range x.devs.ChildElements() {
		if c.Space == "" && c.Tag == tag {
			last = c
		}
	}
	e := etree.NewElement(tag)
	if last != nil {
		if next := last.NextSibling(); next != nil {
			x.devs.InsertChildAt(next.Index(), e)
		} else {
			x.devs.AddChild(e)
		}
		return e
	}
	rank := deviceOrder[tag]
	for _, c := range x.devs.ChildElements() {
		if r, ok := deviceOrder[c.Tag]; (ok && r > rank && c.Space == "") || c.Space != "" {
			x.devs.InsertChildAt(c.Index(), e)
			return e
		}
	}
	x.devs.AddChild(e)
	return e
}

// subInsert creates child tag of e before the first existing child whose
// tag is in before (or at the end).
func subInsert(e *etree.Element, tag string, before ...string) *etree.Element {
	n := etree.NewElement(tag)
	for _, c := range e.ChildElements() {
		for _, b := range before {
			if c.Tag == b && c.Space == "" {
				e.InsertChildAt(c.Index(), n)
				return n
			}
		}
	}
	e.AddChild(n)
	return n
}

// subEnsure returns e's child tag, creating it before the given tags.
func subEnsure(e *etree.Element, tag string, before ...string) *etree.Element {
	if c := child(e, tag); c != nil {
		return c
	}
	return subInsert(e, tag, before...)
}

// tail are the elements every device ends with, in libvirt's order.
var tail = []string{"boot", "alias", "address", "acpi"}

func (x *expander) general() error {
	r := x.d.root
	if x.d.UUID() == "" {
		ensure(r, "uuid").SetText(uuid.NewString())
	} else if u := child(r, "uuid"); u != nil {
		u.SetText(x.d.UUID())
	}
	// Memory in KiB, as libvirt formats it.
	for _, tag := range []string{"maxMemory", "memory", "currentMemory"} {
		if e := child(r, tag); e != nil {
			v, err := memoryKiB(e)
			if err != nil {
				return errAt(e, "%v", err)
			}
			e.SetText(strconv.FormatUint(v, 10))
			e.RemoveAttr("unit")
			slots := attr(e, "slots")
			e.Attr = nil
			if slots != "" {
				setAttr(e, "slots", slots)
			}
			setAttr(e, "unit", "KiB")
		}
	}
	// With NUMA cells, the total memory is their sum plus the memory
	// devices, as libvirt computes it.
	if cells := children(find(r, "cpu", "numa"), "cell"); len(cells) > 0 {
		var sum uint64
		for _, cell := range cells {
			b, err := scaled(attr(cell, "memory"), attr(cell, "unit"), "KiB")
			if err != nil {
				return errAt(cell, "attribute memory: %v", err)
			}
			sum += (b + 1023) / 1024
		}
		for _, m := range children(child(r, "devices"), "memory") {
			v, _ := memoryKiB(find(m, "target", "size"))
			sum += v
		}
		m := ensure(r, "memory")
		if !hasAttr(m, "unit") {
			setAttr(m, "unit", "KiB")
		}
		m.SetText(strconv.FormatUint(sum, 10))
	}
	mem := x.d.MemoryKiB()
	if child(r, "currentMemory") == nil {
		cm := ensure(r, "currentMemory")
		setAttr(cm, "unit", "KiB")
		cm.SetText(strconv.FormatUint(mem, 10))
	} else if x.d.CurrentMemoryKiB() > mem {
		child(r, "currentMemory").SetText(strconv.FormatUint(mem, 10))
	}
	v := ensure(r, "vcpu")
	if strings.TrimSpace(v.Text()) == "" {
		v.SetText("1")
	}
	if !hasAttr(v, "placement") {
		// placement comes first, as libvirt writes it
		old := v.Attr
		v.Attr = nil
		setAttr(v, "placement", "static")
		v.Attr = append(v.Attr, old...)
	}
	os := ensure(r, "os")
	ot := child(os, "type")
	if ot == nil {
		ot = insert(os, "type")
		ot.SetText("hvm")
	}
	arch := attr(ot, "arch")
	if arch == "" {
		arch = "x86_64"
		if x.t.emu != nil && x.t.emu.Arch != "" {
			arch = x.t.emu.Arch
		}
	}
	m := attr(ot, "machine")
	if m == "" {
		m = x.t.defaultMachine(arch)
	} else {
		m = x.t.canonicalMachine(m)
	}
	text := ot.Text()
	ot.Attr = nil
	setAttr(ot, "arch", arch)
	if m != "" {
		setAttr(ot, "machine", m)
	}
	ot.SetText(text)
	x.arch, x.machine, x.kind = arch, m, kindOf(m)
	// A boot device list defaults to hd, unless devices carry boot orders.
	if len(children(os, "boot")) == 0 && child(os, "kernel") == nil && !x.perDeviceBoot() && child(os, "loader") == nil {
		b := insert(os, "boot")
		setAttr(b, "dev", "hd")
	}
	if child(r, "clock") == nil {
		c := ensure(r, "clock")
		setAttr(c, "offset", "utc")
	} else if c := child(r, "clock"); !hasAttr(c, "offset") {
		setAttr(c, "offset", "utc")
	}
	for _, p := range [][2]string{{"on_poweroff", "destroy"}, {"on_reboot", "restart"}, {"on_crash", "destroy"}} {
		if child(r, p[0]) == nil {
			ensure(r, p[0]).SetText(p[1])
		}
	}
	return nil
}

func (x *expander) perDeviceBoot() bool {
	for _, e := range child(x.d.root, "devices").NotNil().ChildElements() {
		if child(e, "boot") != nil {
			return true
		}
	}
	return false
}

func (x *expander) emulator() error {
	e := child(x.devs, "emulator")
	if e != nil && strings.TrimSpace(e.Text()) != "" {
		return nil
	}
	if e == nil {
		e = etree.NewElement("emulator")
		x.devs.InsertChildAt(0, e)
	}
	if x.t.emu != nil && x.t.emu.Path != "" {
		e.SetText(x.t.emu.Path)
	} else {
		e.SetText(defaultEmulator(x.arch))
	}
	return nil
}

func (x *expander) disks() error {
	for _, disk := range children(x.devs, "disk") {
		defAttr(disk, "type", "file")
		defAttr(disk, "device", "disk")
		t := child(disk, "target")
		if !hasAttr(t, "bus") {
			setAttr(t, "bus", busFromTarget(attr(t, "dev")))
		}
		bus := attr(t, "bus")
		if bus == "ide" && x.kind == machineQ35 {
			return errAt(t, "IDE disks are not supported by machine %s (use bus='sata')", x.machine)
		}
		dr := child(disk, "driver")
		if dr == nil {
			dr = subInsert(disk, "driver", "source", "target", "backingStore")
			// Move it first, where libvirt writes it.
			disk.RemoveChild(dr)
			disk.InsertChildAt(0, dr)
		}
		defAttr(dr, "name", "qemu")
		if !hasAttr(dr, "type") {
			switch attr(disk, "type") {
			case "dir":
				setAttr(dr, "type", "fat")
			case "volume":
			default:
				setAttr(dr, "type", "raw")
			}
		}
		if attr(disk, "device") == "cdrom" || attr(disk, "device") == "floppy" {
			if bus != "usb" && attr(disk, "device") == "cdrom" && child(disk, "readonly") == nil {
				subInsert(disk, "readonly", append([]string{"shareable", "serial", "wwn", "vendor", "product", "encryption"}, tail...)...)
			}
		}
	}
	return nil
}

// controllersDefaults fills controller models and the USB default.
func (x *expander) controllersDefaults() error {
	x.controllerIndexes()
	if x.kind == machineI440FX || x.kind == machineQ35 {
		x.ensureController("pci", 0, map[machineKind]string{machineI440FX: "pci-root", machineQ35: "pcie-root"}[x.kind])
	}
	for _, ctl := range children(x.devs, "controller") {
		switch attr(ctl, "type") {
		case "usb":
			if !hasAttr(ctl, "model") {
				setAttr(ctl, "model", x.defaultUSBModel())
			}
		case "scsi":
			if !hasAttr(ctl, "model") || attr(ctl, "model") == "auto" {
				setAttr(ctl, "model", "lsilogic")
			}
		case "pci":
			x.fillPCIController(ctl)
		}
	}
	// Every x86 PC has one USB controller unless the user said none.
	if (x.kind == machineI440FX || x.kind == machineQ35) && x.controller("usb", 0) == nil {
		c := x.ensureController("usb", 0, x.defaultUSBModel())
		_ = c
	}
	if x.kind == machineI440FX && x.controller("ide", 0) == nil {
		x.ensureController("ide", 0, "")
	}
	if x.kind == machineQ35 && x.controller("sata", 0) == nil {
		x.ensureController("sata", 0, "")
	}
	return nil
}

// controllerIndexes gives controllers without an index the lowest unused
// one of their type (root PCI controllers are index 0), as libvirt does.
func (x *expander) controllerIndexes() {
	used := map[string]map[int]bool{}
	for _, ctl := range children(x.devs, "controller") {
		if hasAttr(ctl, "index") {
			t := attr(ctl, "type")
			if used[t] == nil {
				used[t] = map[int]bool{}
			}
			used[t][int(mustUint(attr(ctl, "index")))] = true
		}
	}
	for _, ctl := range children(x.devs, "controller") {
		if hasAttr(ctl, "index") {
			continue
		}
		t := attr(ctl, "type")
		if _, companion := usbCompanionFunction(attr(ctl, "model")); t == "usb" && companion && attr(ctl, "model") != "ich9-ehci1" {
			if i, ok := x.companionIndex(ctl); ok {
				x.setIndex(ctl, i)
				continue
			}
		}
		if used[t] == nil {
			used[t] = map[int]bool{}
		}
		i := 0
		if m := attr(ctl, "model"); t == "pci" && m != "pci-root" && m != "pcie-root" {
			i = 1
		}
		for used[t][i] {
			i++
		}
		used[t][i] = true
		x.setIndex(ctl, i)
	}
}

// setIndex sets a controller's index right after its type, where libvirt
// writes it.
func (x *expander) setIndex(ctl *etree.Element, i int) {
	old := ctl.Attr
	ctl.Attr = nil
	for _, a := range old {
		ctl.Attr = append(ctl.Attr, a)
		if a.Key == "type" && a.Space == "" {
			setAttr(ctl, "index", strconv.Itoa(i))
		}
	}
}

// companionIndex finds the index of the USB bus a companion controller
// without an index belongs to: the nearest preceding EHCI (in document
// order, indexed or not yet) with no companion of the same model.
func (x *expander) companionIndex(comp *etree.Element) (int, bool) {
	var master *etree.Element
	for _, ctl := range children(x.devs, "controller") {
		if ctl == comp {
			break
		}
		if attr(ctl, "type") == "usb" && attr(ctl, "model") == "ich9-ehci1" {
			master = ctl
		}
	}
	if master == nil {
		return 0, false
	}
	if !hasAttr(master, "index") {
		return 0, false
	}
	idx := attr(master, "index")
	for _, ctl := range children(x.devs, "controller") {
		if ctl != comp && attr(ctl, "type") == "usb" && attr(ctl, "model") == attr(comp, "model") && attr(ctl, "index") == idx {
			return 0, false
		}
	}
	return int(mustUint(idx)), true
}

func (x *expander) defaultUSBModel() string {
	if x.kind == machineQ35 && x.t.hasDevice("qemu-xhci") {
		return "qemu-xhci"
	}
	if x.kind == machineQ35 {
		return "ich9-ehci1"
	}
	return "piix3-uhci"
}

// fillPCIController fills a PCI controller's <model name> and <target>.
func (x *expander) fillPCIController(ctl *etree.Element) {
	m := attr(ctl, "model")
	names := map[string]string{
		"pci-bridge": "pci-bridge", "dmi-to-pci-bridge": "i82801b11-bridge",
		"pcie-root-port": "pcie-root-port", "pcie-switch-upstream-port": "x3130-upstream",
		"pcie-switch-downstream-port": "xio3130-downstream", "pci-expander-bus": "pxb",
		"pcie-expander-bus": "pxb-pcie", "pcie-to-pci-bridge": "pcie-pci-bridge",
	}
	n, ok := names[m]
	if !ok {
		return
	}
	mn := child(ctl, "model")
	if mn == nil {
		mn = etree.NewElement("model")
		ctl.InsertChildAt(0, mn)
	}
	defAttr(mn, "name", n)
	idx := attr(ctl, "index")
	switch m {
	case "pci-bridge":
		t := subEnsure(ctl, "target", tail...)
		defAttr(t, "chassisNr", idx)
	case "pcie-root-port", "pcie-switch-downstream-port":
		t := subEnsure(ctl, "target", tail...)
		defAttr(t, "chassis", idx)
	case "pci-expander-bus", "pcie-expander-bus":
		// Each expander needs its own bus number range: count down from
		// 254, two at a time (its bus and the one behind it), as libvirt.
		t := subEnsure(ctl, "target", tail...)
		if !hasAttr(t, "busNr") {
			next := 254
			for _, c := range children(x.devs, "controller") {
				if c == ctl {
					continue
				}
				if nr := attr(child(c, "target"), "busNr"); nr != "" && int(mustUint(nr))-2 < next {
					next = int(mustUint(nr)) - 2
				}
			}
			old := t.Attr
			t.Attr = nil
			setAttr(t, "busNr", strconv.Itoa(next))
			t.Attr = append(t.Attr, old...)
		}
	}
}

func (x *expander) controller(typ string, idx int) *etree.Element {
	for _, ctl := range children(x.devs, "controller") {
		if attr(ctl, "type") == typ && attr(ctl, "index") == strconv.Itoa(idx) {
			return ctl
		}
	}
	return nil
}

func (x *expander) ensureController(typ string, idx int, model string) *etree.Element {
	if c := x.controller(typ, idx); c != nil {
		return c
	}
	c := x.addDevice("controller")
	setAttr(c, "type", typ)
	setAttr(c, "index", strconv.Itoa(idx))
	if model != "" {
		setAttr(c, "model", model)
	}
	if typ == "pci" {
		x.fillPCIController(c)
	}
	return c
}

// macFor derives a stable locally administered MAC (QEMU's 52:54:00 OUI)
// from the domain UUID and the interface's position.
func (x *expander) macFor(i int, used map[string]bool) string {
	for n := 0; ; n++ {
		h := sha256.Sum256([]byte(fmt.Sprintf("%s/net/%d/%d", x.d.UUID(), i, n)))
		m := fmt.Sprintf("52:54:00:%02x:%02x:%02x", h[0], h[1], h[2])
		if !used[m] {
			return m
		}
	}
}

func (x *expander) interfaces() error {
	used := map[string]bool{}
	for _, n := range children(x.devs, "interface") {
		if m := child(n, "mac"); m != nil {
			used[strings.ToLower(attr(m, "address"))] = true
		}
	}
	for i, n := range children(x.devs, "interface") {
		m := child(n, "mac")
		if m == nil {
			m = etree.NewElement("mac")
			n.InsertChildAt(0, m)
			mac := x.macFor(i, used)
			used[mac] = true
			setAttr(m, "address", mac)
		} else {
			setAttr(m, "address", strings.ToLower(attr(m, "address")))
		}
		if attr(n, "type") == "hostdev" {
			continue
		}
		mo := child(n, "model")
		if mo == nil {
			mo = subInsert(n, "model", append([]string{"driver", "link", "mtu", "rom"}, tail...)...)
			setAttr(mo, "type", "rtl8139")
		}
	}
	return nil
}

// chardevs fills serial/console/parallel/channel defaults, including the
// console that is really serial port 0.
func (x *expander) chardevs() error {
	for _, tag := range []string{"serial", "parallel", "channel", "console"} {
		for _, c := range children(x.devs, tag) {
			defAttr(c, "type", "pty")
		}
	}
	serials := children(x.devs, "serial")
	consoles := children(x.devs, "console")
	// A first console of target type serial (or none) is serial 0.
	if len(consoles) > 0 && isX86(x.arch) {
		con := consoles[0]
		t := child(con, "target")
		if t == nil || attr(t, "type") == "" || attr(t, "type") == "serial" {
			if len(serials) == 0 {
				s := x.addDevice("serial")
				for _, a := range con.Attr {
					setAttr(s, a.Key, a.Value)
				}
				for _, ch := range con.ChildElements() {
					if ch.Tag == "target" || ch.Tag == "alias" || ch.Tag == "address" {
						continue
					}
					s.AddChild(ch.Copy())
				}
				serials = children(x.devs, "serial")
			}
			if t == nil {
				t = subInsert(con, "target", tail...)
			}
			defAttr(t, "type", "serial")
			defAttr(t, "port", "0")
		}
	}
	usedPort := map[int]bool{}
	for _, s := range serials {
		if t := child(s, "target"); t != nil && hasAttr(t, "port") {
			p, _ := strconv.Atoi(attr(t, "port"))
			usedPort[p] = true
		}
	}
	next := 0
	for _, s := range serials {
		t := child(s, "target")
		if t == nil {
			t = subInsert(s, "target", append([]string{"log"}, tail...)...)
		}
		if !hasAttr(t, "type") {
			tt := "isa-serial"
			if attr(child(t, "model"), "name") == "usb-serial" {
				tt = "usb-serial"
			} else if attr(child(t, "model"), "name") == "pci-serial" {
				tt = "pci-serial"
			}
			old := t.Attr
			t.Attr = []etree.Attr{}
			setAttr(t, "type", tt)
			for _, a := range old {
				setAttr(t, a.Key, a.Value)
			}
		}
		if !hasAttr(t, "port") {
			for usedPort[next] {
				next++
			}
			setAttr(t, "port", strconv.Itoa(next))
			usedPort[next] = true
		}
		if child(t, "model") == nil {
			m := t.CreateElement("model")
			name := map[string]string{"isa-serial": "isa-serial", "usb-serial": "usb-serial",
				"pci-serial": "pci-serial", "isa-debug": "isa-debugcon"}[attr(t, "type")]
			if name != "" {
				setAttr(m, "name", name)
			} else {
				t.RemoveChild(m)
			}
		}
	}
	for i, p := range children(x.devs, "parallel") {
		t := child(p, "target")
		if t == nil {
			t = subInsert(p, "target", append([]string{"log"}, tail...)...)
		}
		defAttr(t, "port", strconv.Itoa(i))
	}
	for i, con := range consoles {
		t := child(con, "target")
		if t == nil {
			t = subInsert(con, "target", tail...)
		}
		if !hasAttr(t, "type") {
			setAttr(t, "type", "serial")
		}
		if !hasAttr(t, "port") {
			setAttr(t, "port", strconv.Itoa(i))
		}
	}
	return nil
}

// inputs adds the PS/2 mouse and keyboard every x86 PC has and fills the
// input bus.
func (x *expander) inputs() error {
	for _, in := range children(x.devs, "input") {
		if !hasAttr(in, "bus") {
			b := "ps2"
			if attr(in, "type") == "tablet" || !isX86(x.arch) {
				b = "usb"
			}
			if attr(in, "type") == "passthrough" || attr(in, "type") == "evdev" {
				b = "virtio"
				if attr(in, "type") == "evdev" {
					b = ""
				}
			}
			if b != "" {
				setAttr(in, "bus", b)
			}
		}
	}
	if !isX86(x.arch) || x.kind == machineMicrovm {
		return nil
	}
	if attr(find(x.d.root, "features", "ps2"), "state") == "off" {
		return nil
	}
	for _, typ := range []string{"mouse", "keyboard"} {
		found := false
		for _, in := range children(x.devs, "input") {
			if attr(in, "type") == typ && attr(in, "bus") == "ps2" {
				found = true
			}
		}
		if !found {
			in := x.addDevice("input")
			setAttr(in, "type", typ)
			setAttr(in, "bus", "ps2")
		}
	}
	return nil
}

func (x *expander) graphicsAndVideo() error {
	for _, g := range children(x.devs, "graphics") {
		switch attr(g, "type") {
		case "vnc", "spice":
			if !hasAttr(g, "port") && !hasAttr(g, "autoport") && x.graphicsSocket(g) == "" {
				setAttr(g, "port", "-1")
				setAttr(g, "autoport", "yes")
			} else if attr(g, "port") == "-1" || attr(g, "port") == "0" {
				defAttr(g, "autoport", "yes")
			} else if hasAttr(g, "port") {
				defAttr(g, "autoport", "no")
			}
			if attr(g, "autoport") == "yes" && !hasAttr(g, "port") && x.graphicsSocket(g) == "" {
				setAttr(g, "port", "-1")
			}
			ls := children(g, "listen")
			if len(ls) == 0 && x.graphicsSocket(g) == "" {
				l := subInsert(g, "listen", "image", "channel", "gl", "rendernode", "streaming", "clipboard", "mouse", "filetransfer", "audio")
				setAttr(l, "type", "address")
				if a := attr(g, "listen"); a != "" {
					setAttr(l, "address", a)
				}
			} else if len(ls) > 0 && attr(ls[0], "type") == "address" && attr(ls[0], "address") != "" && !hasAttr(g, "listen") {
				setAttr(g, "listen", attr(ls[0], "address"))
			}
		}
	}
	videos := children(x.devs, "video")
	needVideo := false
	for _, g := range children(x.devs, "graphics") {
		if t := attr(g, "type"); t == "vnc" || t == "spice" || t == "sdl" || t == "egl-headless" || t == "dbus" {
			needVideo = true
		}
	}
	if len(videos) == 0 && needVideo && isX86(x.arch) {
		v := x.addDevice("video")
		m := v.CreateElement("model")
		if x.t.hasDevice("cirrus-vga") {
			setAttr(m, "type", "cirrus")
		} else {
			setAttr(m, "type", "vga")
		}
		videos = []*etree.Element{v}
	}
	for i, v := range videos {
		m := child(v, "model")
		if m == nil {
			m = etree.NewElement("model")
			v.InsertChildAt(0, m)
		}
		if !hasAttr(m, "type") {
			typ := "cirrus"
			if !x.t.hasDevice("cirrus-vga") {
				typ = "vga"
			}
			setAttr(m, "type", typ)
		}
		switch attr(m, "type") {
		case "vga", "cirrus", "vmvga", "bochs":
			defAttr(m, "vram", "16384")
		case "qxl":
			defAttr(m, "ram", "65536")
			defAttr(m, "vram", "65536")
			defAttr(m, "vgamem", "16384")
		}
		if attr(m, "type") != "none" {
			defAttr(m, "heads", "1")
		}
		if i == 0 && attr(m, "type") != "none" && len(videos) > 1 {
			defAttr(m, "primary", "yes")
		}
	}
	return nil
}

func (x *expander) graphicsSocket(g *etree.Element) string {
	if s := attr(g, "socket"); s != "" {
		return s
	}
	for _, l := range children(g, "listen") {
		if attr(l, "type") == "socket" {
			if s := attr(l, "socket"); s != "" {
				return s
			}
			return "auto"
		}
	}
	return ""
}

// otherDevices adds the memballoon and fills sound, watchdog, rng, tpm
// and panic defaults.
func (x *expander) otherDevices() error {
	if child(x.devs, "memballoon") == nil && (x.kind == machineI440FX || x.kind == machineQ35) {
		b := x.addDevice("memballoon")
		setAttr(b, "model", "virtio")
	}
	for _, w := range children(x.devs, "watchdog") {
		defAttr(w, "action", "reset")
	}
	for _, t := range children(x.devs, "tpm") {
		defAttr(t, "model", "tpm-tis")
		if b := child(t, "backend"); b != nil && attr(b, "type") == "emulator" {
			defAttr(b, "version", "2.0")
		}
	}
	for _, p := range children(x.devs, "panic") {
		defAttr(p, "model", "isa")
		if attr(p, "model") == "isa" && child(p, "address") == nil {
			a := p.CreateElement("address")
			setAttr(a, "type", "isa")
			setAttr(a, "iobase", "0x505")
		}
	}
	for _, v := range children(x.devs, "vsock") {
		defAttr(v, "model", "virtio")
		c := child(v, "cid")
		if c == nil {
			c = subInsert(v, "cid", tail...)
			setAttr(c, "auto", "yes")
		}
	}
	for _, f := range children(x.devs, "filesystem") {
		defAttr(f, "type", "mount")
		if attr(child(f, "driver"), "type") != "virtiofs" {
			defAttr(f, "accessmode", "passthrough")
		}
	}
	for _, s := range children(x.devs, "shmem") {
		m := child(s, "model")
		if m == nil {
			m = subInsert(s, "model", append([]string{"size", "server", "msi"}, tail...)...)
			setAttr(m, "type", "ivshmem-plain")
		}
		if child(s, "size") == nil && attr(m, "type") != "ivshmem-doorbell" {
			sz := subInsert(s, "size", append([]string{"server", "msi"}, tail...)...)
			setAttr(sz, "unit", "M")
			sz.SetText("4")
		}
	}
	return nil
}

// driveAddresses gives IDE/SATA/SCSI/floppy disks their drive address,
// computed from the target name as libvirt does.
func (x *expander) driveAddresses() error {
	used := map[string]*etree.Element{}
	key := func(bus string, a *etree.Element) string {
		return fmt.Sprintf("%s/%s/%s/%s/%s", bus, attr(a, "controller"), attr(a, "bus"), attr(a, "target"), attr(a, "unit"))
	}
	for _, disk := range children(x.devs, "disk") {
		bus := attr(child(disk, "target"), "bus")
		if a := child(disk, "address"); a != nil && attr(a, "type") == "drive" {
			for _, k := range []string{"controller", "bus", "target", "unit"} {
				defAttr(a, k, "0")
			}
			k := key(bus, a)
			if prev, dup := used[k]; dup {
				return errAt(a, "drive address is already used by %s", pathOf(prev))
			}
			used[k] = disk
		}
	}
	for _, disk := range children(x.devs, "disk") {
		t := child(disk, "target")
		bus := attr(t, "bus")
		if child(disk, "address") != nil {
			continue
		}
		idx, _ := diskIndex(attr(t, "dev"))
		var ctl, b, unit int
		switch bus {
		case "ide":
			ctl, b, unit = idx/4, (idx%4)/2, idx%2
		case "sata":
			ctl, unit = idx/6, idx%6
		case "scsi":
			ctl, unit = idx/7, idx%7
		case "fdc":
			ctl, unit = idx/2, idx%2
		default:
			continue
		}
		if ctl > 255 {
			return errAt(t, "target dev %q would need %s controller %d; at most 256 controllers are possible", attr(t, "dev"), bus, ctl)
		}
		a := subInsert(disk, "address")
		setAttr(a, "type", "drive")
		setAttr(a, "controller", strconv.Itoa(ctl))
		setAttr(a, "bus", strconv.Itoa(b))
		setAttr(a, "target", "0")
		setAttr(a, "unit", strconv.Itoa(unit))
		if prev, dup := used[key(bus, a)]; dup {
			return errAt(t, "target dev %q maps to drive address %s, already used by %s",
				attr(t, "dev"), strings.TrimPrefix(key(bus, a), bus+"/"), pathOf(prev))
		}
		used[key(bus, a)] = disk
	}
	return nil
}

// virtioSerialAddresses places virtio channels and consoles on
// virtio-serial ports (consoles from port 0, channels from port 1).
func (x *expander) virtioSerialAddresses() error {
	// QEMU's virtio-serial device has a single bus: the address's bus
	// attribute does not separate port numbers.
	type portKey struct{ ctl, bus, port int }
	used := map[portKey]bool{}
	var pending []*etree.Element
	var devs []*etree.Element
	for _, c := range children(x.devs, "console") {
		if attr(child(c, "target"), "type") == "virtio" {
			devs = append(devs, c)
		}
	}
	for _, c := range children(x.devs, "channel") {
		if attr(child(c, "target"), "type") == "virtio" {
			devs = append(devs, c)
		}
	}
	for _, c := range devs {
		a := child(c, "address")
		if a != nil && attr(a, "type") == "virtio-serial" && hasAttr(a, "port") {
			ctl, _ := strconv.Atoi(attr(a, "controller"))
			p, _ := strconv.Atoi(attr(a, "port"))
			used[portKey{ctl, 0, p}] = true
			continue
		}
		pending = append(pending, c)
	}
	if len(devs) > 0 && x.controller("virtio-serial", 0) == nil {
		x.ensureController("virtio-serial", 0, "")
	}
	// Ports per controller: its ports attribute, else QEMU's 31.
	capacity := func(ctl int) int {
		if c := x.controller("virtio-serial", ctl); c != nil && attr(c, "ports") != "" {
			return int(mustUint(attr(c, "ports")))
		}
		return 31
	}
	for _, c := range pending {
		a := child(c, "address")
		if a == nil {
			a = subInsert(c, "address")
			setAttr(a, "type", "virtio-serial")
		}
		ctl, _ := strconv.Atoi(attr(a, "controller"))
		fixed := hasAttr(a, "controller")
		b := 0
		bus := attrOr(a, "bus", "0")
		start := 1
		if c.Tag == "console" {
			start = 0
		}
		p := start
		for {
			for used[portKey{ctl, b, p}] {
				p++
			}
			if p < capacity(ctl) || fixed {
				break
			}
			ctl, p = ctl+1, start // full: the next controller
		}
		used[portKey{ctl, b, p}] = true
		setAttr(a, "controller", strconv.Itoa(ctl))
		setAttr(a, "bus", bus)
		setAttr(a, "port", strconv.Itoa(p))
		if x.controller("virtio-serial", ctl) == nil {
			x.ensureController("virtio-serial", ctl, "")
		}
	}
	return nil
}

// implicitControllers adds the controllers devices refer to.
func (x *expander) implicitControllers() error {
	for _, disk := range children(x.devs, "disk") {
		a := child(disk, "address")
		if a == nil || attr(a, "type") != "drive" {
			continue
		}
		ctl, _ := strconv.Atoi(attr(a, "controller"))
		switch bus := attr(child(disk, "target"), "bus"); bus {
		case "ide", "sata", "fdc":
			x.ensureController(bus, ctl, "")
		case "scsi":
			x.ensureController("scsi", ctl, "lsilogic")
		}
	}
	for _, h := range children(x.devs, "hostdev") {
		if a := child(h, "address"); a != nil && attr(a, "type") == "drive" {
			ctl, _ := strconv.Atoi(attr(a, "controller"))
			x.ensureController("scsi", ctl, "lsilogic")
		}
	}
	if len(children(x.devs, "smartcard")) > 0 {
		x.ensureController("ccid", 0, "")
	}
	// Sort controllers of one type by index, as libvirt does.
	return nil
}

// pciAddresses assigns PCI addresses in libvirt's order of device classes.
func (x *expander) pciAddresses() error {
	if x.kind != machineI440FX && x.kind != machineQ35 {
		return nil
	}
	a, err := newPCIAllocator(x)
	if err != nil {
		return err
	}
	q35 := x.kind == machineQ35
	// Fixed addresses of built-in functions.
	for _, ctl := range children(x.devs, "controller") {
		typ, idx, model := attr(ctl, "type"), attr(ctl, "index"), attr(ctl, "model")
		if _, ok := pciPlaced(ctl); ok {
			continue
		}
		switch {
		case typ == "ide" && idx == "0" && !q35:
			setPCIAddr(ctl, pciAddr{Slot: 1, Function: 1})
		case typ == "usb" && idx == "0" && !q35 && model == "piix3-uhci":
			setPCIAddr(ctl, pciAddr{Slot: 1, Function: 2})
		case typ == "sata" && idx == "0" && q35:
			setPCIAddr(ctl, pciAddr{Slot: 0x1f, Function: 2})
		}
	}
	// The primary video card: slot 2 on i440fx, slot 1 on q35 (on the
	// root bus in both cases).
	if vs := children(x.devs, "video"); len(vs) > 0 {
		if _, ok := pciPlaced(vs[0]); !ok {
			if t := attr(child(vs[0], "model"), "type"); t != "none" && t != "ramfb" {
				root := a.buses[0]
				slot := 2
				if q35 {
					slot = 1
				}
				if root != nil && !root.slotEmpty(slot) {
					slot = 0
					for s := root.minSlot; s <= root.maxSlot; s++ {
						if root.slotEmpty(s) {
							slot = s
							break
						}
					}
				}
				if root != nil && slot != 0 {
					root.mark(slot, 0)
					setPCIAddr(vs[0], pciAddr{Slot: slot})
				}
			}
		}
	}
	// PCI controllers, by index.
	var pcis []*etree.Element
	for _, ctl := range children(x.devs, "controller") {
		if attr(ctl, "type") == "pci" {
			pcis = append(pcis, ctl)
		}
	}
	sort.SliceStable(pcis, func(i, j int) bool {
		return mustUint(attr(pcis[i], "index")) < mustUint(attr(pcis[j], "index"))
	})
	for _, ctl := range pcis {
		if err := a.placeController(ctl); err != nil {
			return err
		}
	}
	pcie := func(is bool) connKind {
		if is {
			return connPCIe
		}
		return connPCI
	}
	var jobs []struct {
		e *etree.Element
		k connKind
	}
	add := func(e *etree.Element, k connKind) {
		jobs = append(jobs, struct {
			e *etree.Element
			k connKind
		}{e, k})
	}
	for _, f := range children(x.devs, "filesystem") {
		add(f, connPCIe)
	}
	for _, n := range children(x.devs, "interface") {
		if attr(n, "type") != "hostdev" && attr(child(n, "model"), "type") != "usb-net" {
			add(n, pcie(isPCIeModel(attr(child(n, "model"), "type"))))
		}
	}
	for _, s := range children(x.devs, "sound") {
		switch attr(s, "model") {
		case "pcspk", "usb", "sb16":
		case "ich9":
			// ICH9's HD audio is function 00:1b.0 of a q35 chipset.
			if _, ok := pciPlaced(s); !ok && q35 && a.buses[0] != nil && a.buses[0].slotEmpty(0x1b) {
				a.buses[0].mark(0x1b, 0)
				setPCIAddr(s, pciAddr{Slot: 0x1b})
				continue
			}
			add(s, connPCI)
		default:
			add(s, connPCI)
		}
	}
	for _, p := range children(x.devs, "pstore") {
		add(p, connPCI) // acpi-erst is a conventional PCI device
	}
	for _, e := range jobs {
		if err := a.assign(e.e, e.k); err != nil {
			return err
		}
	}
	jobs = nil
	// Device controllers: USB (companions share a slot), SCSI,
	// virtio-serial, SATA beyond the built-in one.
	usbGroups := map[string]*pciAddr{}
	for _, ctl := range children(x.devs, "controller") {
		if p, ok := pciPlaced(ctl); ok && attr(ctl, "type") == "usb" {
			if _, companion := usbCompanionFunction(attr(ctl, "model")); companion {
				p.Function = 0
				usbGroups[attr(ctl, "index")] = &p
			}
		}
	}
	for _, ctl := range children(x.devs, "controller") {
		typ, idx, model := attr(ctl, "type"), attr(ctl, "index"), attr(ctl, "model")
		if _, ok := pciPlaced(ctl); ok {
			continue
		}
		var err error
		switch typ {
		case "usb":
			if model == "none" {
				continue
			}
			if fn, companion := usbCompanionFunction(model); companion {
				g := usbGroups[idx]
				if g == nil {
					b, slot, _, ferr := a.free(connPCI)
					if ferr != nil {
						return fmt.Errorf("%s: %w", pathOf(ctl), ferr)
					}
					g = &pciAddr{Bus: b.index, Slot: slot}
					usbGroups[idx] = g
				}
				a.buses[g.Bus].mark(g.Slot, fn)
				setPCIAddr(ctl, pciAddr{Bus: g.Bus, Slot: g.Slot, Function: fn})
				continue
			}
			err = a.assign(ctl, pcie(model == "qemu-xhci" || model == "nec-xhci"))
		case "scsi":
			err = a.assign(ctl, pcie(model == "virtio-scsi" || model == "virtio-non-transitional"))
		case "virtio-serial":
			err = a.assign(ctl, pcie(model != "virtio-transitional"))
		case "sata":
			err = a.assign(ctl, connPCIe)
		}
		if err != nil {
			return err
		}
	}
	for _, disk := range children(x.devs, "disk") {
		if attr(child(disk, "target"), "bus") == "virtio" {
			add(disk, pcie(attr(disk, "model") != "virtio-transitional"))
		}
	}
	for _, h := range children(x.devs, "hostdev") {
		if attr(h, "type") == "pci" || attr(h, "type") == "mdev" {
			add(h, connPCIe)
		}
	}
	for _, b := range children(x.devs, "memballoon") {
		if m := attr(b, "model"); m == "virtio" || m == "virtio-non-transitional" {
			add(b, connPCIe)
		} else if m == "virtio-transitional" {
			add(b, connPCI)
		}
	}
	for _, r := range children(x.devs, "rng") {
		add(r, pcie(attr(r, "model") != "virtio-transitional"))
	}
	for _, w := range children(x.devs, "watchdog") {
		if attr(w, "model") == "i6300esb" {
			add(w, connPCI)
		}
	}
	for i, v := range children(x.devs, "video") {
		t := attr(child(v, "model"), "type")
		if t == "none" || t == "ramfb" || i == 0 {
			continue // the primary one is placed above
		}
		add(v, pcie(t == "virtio"))
	}
	for _, s := range children(x.devs, "shmem") {
		add(s, connPCI)
	}
	for _, in := range children(x.devs, "input") {
		if attr(in, "bus") == "virtio" {
			add(in, connPCIe)
		}
	}
	for _, v := range children(x.devs, "vsock") {
		add(v, connPCIe)
	}
	for _, m := range children(x.devs, "memory") {
		if md := attr(m, "model"); md == "virtio-pmem" || md == "virtio-mem" {
			add(m, connPCIe)
		}
	}
	for _, io := range children(x.devs, "iommu") {
		if attr(io, "model") == "virtio" {
			add(io, connRoot) // QEMU wants virtio-iommu-pci on the root bus
		}
	}
	for _, p := range children(x.devs, "panic") {
		if attr(p, "model") == "pvpanic" {
			add(p, connPCI)
		}
	}
	for _, c := range children(x.devs, "crypto") {
		add(c, connPCIe)
	}
	for _, s := range children(x.devs, "serial") {
		if attr(child(s, "target"), "type") == "pci-serial" {
			add(s, connPCI)
		}
	}
	for _, e := range jobs {
		if err := a.assign(e.e, e.k); err != nil {
			return err
		}
	}
	// The primary video card, if its slot was taken by an explicit address.
	if vs := children(x.devs, "video"); len(vs) > 0 {
		if t := attr(child(vs[0], "model"), "type"); t != "none" && t != "ramfb" {
			if err := a.assign(vs[0], connPCI); err != nil {
				return err
			}
		}
	}
	// One empty root port for hotplug on a new q35 definition.
	if a.spare {
		if _, err := a.addController("pcie-root-port"); err != nil {
			return err
		}
	}
	a.finish()
	return nil
}

// usbCompanionFunction returns the PCI function of an EHCI/UHCI companion
// controller model.
func usbCompanionFunction(model string) (int, bool) {
	switch model {
	case "ich9-ehci1":
		return 7, true
	case "ich9-uhci1":
		return 0, true
	case "ich9-uhci2":
		return 1, true
	case "ich9-uhci3":
		return 2, true
	}
	return 0, false
}

// isPCIeModel reports whether a NIC model is a PCI Express device.
func isPCIeModel(model string) bool {
	switch model {
	case "virtio", "virtio-non-transitional", "e1000e", "igb":
		return true
	}
	return false
}
