package domain

import (
	"fmt"
	"sort"
	"strconv"

	"github.com/beevik/etree"
)

// pciAddr is a PCI device address.
type pciAddr struct {
	Domain, Bus, Slot, Function int
	Multifunction               bool
}

func (p pciAddr) String() string {
	return fmt.Sprintf("%04x:%02x:%02x.%x", p.Domain, p.Bus, p.Slot, p.Function)
}

// qemuAddr is the addr= value QEMU takes: "0x2" or "0x1.0x2".
func (p pciAddr) qemuAddr() string {
	if p.Function == 0 {
		return fmt.Sprintf("0x%x", p.Slot)
	}
	return fmt.Sprintf("0x%x.0x%x", p.Slot, p.Function)
}

// parsePCIAddr reads <address type='pci' .../>.
func parsePCIAddr(a *etree.Element) (pciAddr, bool) {
	if a == nil || attr(a, "type") != "pci" {
		return pciAddr{}, false
	}
	var p pciAddr
	var ok = true
	get := func(k string) int {
		v := attr(a, k)
		if v == "" {
			return 0
		}
		n, err := parseUint(v)
		if err != nil {
			ok = false
		}
		return int(n)
	}
	p.Domain, p.Bus, p.Slot, p.Function = get("domain"), get("bus"), get("slot"), get("function")
	p.Multifunction = attr(a, "multifunction") == "on"
	return p, ok
}

// setPCIAddr writes a PCI address into dev's <address>, replacing any
// incomplete one.
func setPCIAddr(dev *etree.Element, p pciAddr) {
	a := child(dev, "address")
	if a == nil {
		a = dev.CreateElement("address")
	}
	mf := attr(a, "multifunction")
	a.Attr = nil
	setAttr(a, "type", "pci")
	setAttr(a, "domain", fmt.Sprintf("0x%04x", p.Domain))
	setAttr(a, "bus", fmt.Sprintf("0x%02x", p.Bus))
	setAttr(a, "slot", fmt.Sprintf("0x%02x", p.Slot))
	setAttr(a, "function", fmt.Sprintf("0x%x", p.Function))
	if p.Multifunction || mf == "on" {
		setAttr(a, "multifunction", "on")
	} else if mf != "" {
		setAttr(a, "multifunction", mf)
	}
}

// pciBus is one PCI bus of the guest: the root bus or one provided by a
// PCI controller.
type pciBus struct {
	index   int
	model   string
	ctl     *etree.Element
	minSlot int
	maxSlot int
	used    map[int]map[int]bool // slot -> functions in use
}

func (b *pciBus) isUsed(slot, fn int) bool { return b.used[slot][fn] }

func (b *pciBus) slotEmpty(slot int) bool { return len(b.used[slot]) == 0 }

func (b *pciBus) mark(slot, fn int) {
	if b.used[slot] == nil {
		b.used[slot] = map[int]bool{}
	}
	b.used[slot][fn] = true
}

// takesEndpoints reports whether a bus accepts ordinary endpoint devices,
// and which kind: conventional PCI (false) or PCI Express (true).
func (b *pciBus) accepts(pcie bool) bool {
	switch b.model {
	case "pci-root", "pci-bridge", "pcie-to-pci-bridge":
		return !pcie || b.model == "pci-root"
	case "pcie-root-port", "pcie-switch-downstream-port":
		return pcie
	case "pcie-root":
		return false // integrated endpoints only where libvirt puts them
	}
	return false
}

// pciAllocator assigns PCI addresses the way libvirt does: explicit
// addresses are reserved first, then devices get the first free slot of
// a bus that can take them, and controllers are added when none can.
type pciAllocator struct {
	x     *expander
	buses map[int]*pciBus
	// spare is set when expansion may add one empty pcie-root-port for
	// hotplug (only for q35 definitions that had none).
	spare bool
}

func busRange(model string) (int, int) {
	switch model {
	case "pci-root":
		return 1, 31
	case "pcie-root":
		return 1, 31
	case "pci-bridge", "pcie-to-pci-bridge":
		return 1, 31
	case "pcie-root-port", "pcie-switch-downstream-port":
		return 0, 0
	case "dmi-to-pci-bridge", "pcie-switch-upstream-port":
		return 0, 31
	case "pci-expander-bus", "pcie-expander-bus":
		return 0, 31
	}
	return 1, 31
}

func newPCIAllocator(x *expander) *pciAllocator {
	a := &pciAllocator{x: x, buses: map[int]*pciBus{}}
	rootPorts := 0
	for _, ctl := range children(x.devs, "controller") {
		if attr(ctl, "type") != "pci" {
			continue
		}
		idx, _ := strconv.Atoi(attr(ctl, "index"))
		m := attr(ctl, "model")
		lo, hi := busRange(m)
		a.buses[idx] = &pciBus{index: idx, model: m, ctl: ctl, minSlot: lo, maxSlot: hi, used: map[int]map[int]bool{}}
		if m == "pcie-root-port" {
			rootPorts++
		}
	}
	a.spare = x.kind == machineQ35 && rootPorts == 0
	// Reserve what the machine has built in.
	if root := a.buses[0]; root != nil {
		root.mark(0, 0) // host bridge
		switch x.kind {
		case machineI440FX:
			for f := 0; f < 8; f++ {
				root.mark(1, f) // PIIX3: ISA, IDE, USB, ACPI
			}
		case machineQ35:
			for f := 0; f < 8; f++ {
				root.mark(0x1f, f) // ICH9: LPC, SATA, SMBus
			}
		}
	}
	// Reserve explicit addresses.
	for _, dev := range x.devs.ChildElements() {
		if p, ok := parsePCIAddr(child(dev, "address")); ok && hasAttr(child(dev, "address"), "slot") {
			if b := a.buses[p.Bus]; b != nil {
				b.mark(p.Slot, p.Function)
			}
		}
	}
	return a
}

// assign gives dev an address on a bus accepting pcie (or conventional
// PCI) endpoints, adding controllers as needed.
func (a *pciAllocator) assign(dev *etree.Element, pcie bool) error {
	if p, ok := parsePCIAddr(child(dev, "address")); ok && hasAttr(child(dev, "address"), "slot") {
		_ = p
		return nil
	}
	if ad := child(dev, "address"); ad != nil && attr(ad, "type") != "pci" {
		return nil // the device is on another bus (ccw, isa, ...)
	}
	bus, slot, fn, err := a.free(pcie)
	if err != nil {
		return fmt.Errorf("%s: %w", pathOf(dev), err)
	}
	bus.mark(slot, fn)
	setPCIAddr(dev, pciAddr{Bus: bus.index, Slot: slot, Function: fn})
	return nil
}

// free finds (or makes) a free slot for one endpoint.
func (a *pciAllocator) free(pcie bool) (*pciBus, int, int, error) {
	if a.x.kind != machineQ35 {
		pcie = false
	}
	for _, idx := range a.order() {
		b := a.buses[idx]
		if b.model == "pci-root" || (b.accepts(pcie) && b.model != "pcie-root") {
			if b.model == "pci-root" && pcie && a.x.kind == machineQ35 {
				continue
			}
			for s := b.minSlot; s <= b.maxSlot; s++ {
				if b.slotEmpty(s) {
					return b, s, 0, nil
				}
			}
		}
	}
	// Nothing free: add a controller providing a new bus.
	if a.x.kind == machineQ35 {
		if pcie {
			rp, err := a.addController("pcie-root-port")
			if err != nil {
				return nil, 0, 0, err
			}
			return rp, 0, 0, nil
		}
		// A pcie-to-pci-bridge behind its own root port, parent first so
		// that controller indexes follow the topology.
		rp, err := a.addController("pcie-root-port")
		if err != nil {
			return nil, 0, 0, err
		}
		rp.mark(0, 0)
		br, err := a.addControllerAt("pcie-to-pci-bridge", &pciAddr{Bus: rp.index})
		if err != nil {
			return nil, 0, 0, err
		}
		return br, 1, 0, nil
	}
	if a.buses[0] == nil || a.buses[0].model != "pci-root" {
		return nil, 0, 0, fmt.Errorf("no PCI bus to place the device on")
	}
	br, err := a.addController("pci-bridge")
	if err != nil {
		return nil, 0, 0, err
	}
	return br, 1, 0, nil
}

func (a *pciAllocator) order() []int {
	var idx []int
	for i := range a.buses {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	return idx
}

// rootPortSlot finds where a new pcie-root-port goes on pcie.0: the
// functions of a slot are filled in order, like libvirt.
func (a *pciAllocator) rootPortSlot() (*pciBus, int, int, error) {
	root := a.buses[0]
	if root == nil {
		return nil, 0, 0, fmt.Errorf("no pcie-root controller")
	}
	// Continue the multifunction slot root ports already use, if any.
	for s := root.minSlot; s <= root.maxSlot; s++ {
		if root.slotEmpty(s) {
			continue
		}
		if !a.slotHasOnlyRootPorts(s) {
			continue
		}
		for f := 0; f < 8; f++ {
			if !root.isUsed(s, f) {
				return root, s, f, nil
			}
		}
	}
	for s := root.minSlot; s <= root.maxSlot; s++ {
		if root.slotEmpty(s) {
			return root, s, 0, nil
		}
	}
	return nil, 0, 0, fmt.Errorf("no free slot on pcie.0 for another pcie-root-port")
}

func (a *pciAllocator) slotHasOnlyRootPorts(slot int) bool {
	found := false
	for _, ctl := range children(a.x.devs, "controller") {
		p, ok := parsePCIAddr(child(ctl, "address"))
		if !ok || p.Bus != 0 || p.Slot != slot || !hasAttr(child(ctl, "address"), "slot") {
			continue
		}
		if attr(ctl, "model") != "pcie-root-port" {
			return false
		}
		found = true
	}
	// Other devices on that slot disqualify it too.
	for _, dev := range a.x.devs.ChildElements() {
		if dev.Tag == "controller" {
			continue
		}
		if p, ok := parsePCIAddr(child(dev, "address")); ok && p.Bus == 0 && p.Slot == slot {
			return false
		}
	}
	return found
}

// addController adds a PCI controller of model and places it.
func (a *pciAllocator) addController(model string) (*pciBus, error) {
	return a.addControllerAt(model, nil)
}

// addControllerAt adds a PCI controller of model at address at (nil:
// wherever placeController puts it).
func (a *pciAllocator) addControllerAt(model string, at *pciAddr) (*pciBus, error) {
	idx := 0
	for i := range a.buses {
		if i >= idx {
			idx = i + 1
		}
	}
	if idx > 255 {
		return nil, fmt.Errorf("too many PCI controllers")
	}
	ctl := a.x.addDevice("controller")
	setAttr(ctl, "type", "pci")
	setAttr(ctl, "index", strconv.Itoa(idx))
	setAttr(ctl, "model", model)
	a.x.fillPCIController(ctl)
	lo, hi := busRange(model)
	b := &pciBus{index: idx, model: model, ctl: ctl, minSlot: lo, maxSlot: hi, used: map[int]map[int]bool{}}
	// Register the bus first so that controllers added to place this one
	// get other indexes; mark it full meanwhile so nothing lands on it.
	a.buses[idx] = b
	saved := b.model
	b.model = "placing"
	var err error
	if at != nil {
		setPCIAddr(ctl, *at)
	} else {
		err = a.placeController(ctl)
	}
	b.model = saved
	if err != nil {
		return nil, err
	}
	return b, nil
}

// placeController gives a PCI controller its address on a parent bus.
func (a *pciAllocator) placeController(ctl *etree.Element) error {
	if p, ok := parsePCIAddr(child(ctl, "address")); ok && hasAttr(child(ctl, "address"), "slot") {
		_ = p
		return nil
	}
	switch attr(ctl, "model") {
	case "pci-root", "pcie-root":
		return nil
	case "pcie-root-port", "dmi-to-pci-bridge", "pcie-switch-upstream-port", "pcie-expander-bus":
		if a.x.kind != machineQ35 {
			return fmt.Errorf("%s: a %s controller needs a PCI Express machine (q35)", pathOf(ctl), attr(ctl, "model"))
		}
		root, s, f, err := a.rootPortSlot()
		if attr(ctl, "model") != "pcie-root-port" {
			root, s, f = a.buses[0], 0, 0
			for sl := root.minSlot; sl <= root.maxSlot; sl++ {
				if root.slotEmpty(sl) {
					s = sl
					break
				}
			}
			if s == 0 {
				err = fmt.Errorf("no free slot on pcie.0")
			}
		}
		if err != nil {
			return fmt.Errorf("%s: %w", pathOf(ctl), err)
		}
		root.mark(s, f)
		p := pciAddr{Bus: 0, Slot: s, Function: f}
		if f == 0 && attr(ctl, "model") == "pcie-root-port" {
			p.Multifunction = true
		}
		setPCIAddr(ctl, p)
		if attr(ctl, "model") == "pcie-root-port" {
			if t := child(ctl, "target"); t != nil && !hasAttr(t, "port") {
				setAttr(t, "port", fmt.Sprintf("0x%x", s<<3|f))
			}
		}
		return nil
	case "pcie-to-pci-bridge", "pcie-switch-downstream-port":
		return a.assign(ctl, true)
	default: // pci-bridge, pci-expander-bus
		return a.assign(ctl, a.x.kind == machineQ35 && false)
	}
}

// fixMultifunction turns on multifunction for function 0 of every slot
// that has other functions in use, as QEMU requires.
func (a *pciAllocator) fixMultifunction() {
	type key struct{ bus, slot int }
	fns := map[key]int{}
	for _, dev := range a.x.devs.ChildElements() {
		if p, ok := parsePCIAddr(child(dev, "address")); ok && hasAttr(child(dev, "address"), "slot") {
			if p.Function > 0 {
				fns[key{p.Bus, p.Slot}]++
			}
		}
	}
	for _, dev := range a.x.devs.ChildElements() {
		ad := child(dev, "address")
		if p, ok := parsePCIAddr(ad); ok && hasAttr(ad, "slot") && p.Function == 0 && fns[key{p.Bus, p.Slot}] > 0 {
			if !hasAttr(ad, "multifunction") {
				setAttr(ad, "multifunction", "on")
			}
		}
	}
}
