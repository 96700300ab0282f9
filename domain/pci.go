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

// pciPlaced returns a device's PCI address when it has a complete one (an
// <address type='pci'/> without slot only asks for automatic placement).
func pciPlaced(dev *etree.Element) (pciAddr, bool) {
	a := child(dev, "address")
	if !hasAttr(a, "slot") {
		return pciAddr{}, false
	}
	return parsePCIAddr(a)
}

// setPCIAddr writes a PCI address into dev's <address>, replacing any
// incomplete one.
func setPCIAddr(dev *etree.Element, p pciAddr) {
	a := child(dev, "address")
	if a == nil {
		a = subInsert(dev, "address")
	}
	mf := attr(a, "multifunction")
	a.Attr = nil
	setAttr(a, "type", "pci")
	setAttr(a, "domain", fmt.Sprintf("0x%04x", p.Domain))
	setAttr(a, "bus", fmt.Sprintf("0x%02x", p.Bus))
	setAttr(a, "slot", fmt.Sprintf("0x%02x", p.Slot))
	setAttr(a, "function", fmt.Sprintf("0x%x", p.Function))
	if p.Multifunction {
		setAttr(a, "multifunction", "on")
	} else if mf != "" {
		setAttr(a, "multifunction", mf)
	}
}

// connKind says what kind of PCI connection a device needs, which decides
// the buses it can plug into (libvirt's "connect flags").
type connKind int

const (
	connPCI        connKind = iota // conventional PCI endpoint
	connPCIe                       // PCI Express endpoint
	connRootPort                   // pcie-root-port
	connDownstream                 // pcie-switch-downstream-port
	connUpstream                   // pcie-switch-upstream-port
	connPCIeToPCI                  // pcie-to-pci-bridge
	connDMI                        // dmi-to-pci-bridge
	connPCIBridge                  // pci-bridge
	connPXB                        // pci-expander-bus / pcie-expander-bus
	connRoot                       // an integrated device: the root bus only
)

// controllerConn is the connection kind of a PCI controller model.
func controllerConn(model string) connKind {
	switch model {
	case "pcie-root-port":
		return connRootPort
	case "pcie-switch-downstream-port":
		return connDownstream
	case "pcie-switch-upstream-port":
		return connUpstream
	case "pcie-to-pci-bridge":
		return connPCIeToPCI
	case "dmi-to-pci-bridge":
		return connDMI
	case "pci-expander-bus", "pcie-expander-bus":
		return connPXB
	}
	return connPCIBridge
}

// pciBus is one PCI bus of the guest: the root bus or one provided by a
// PCI controller.
type pciBus struct {
	index   int
	model   string
	minSlot int
	maxSlot int
	used    map[int]map[int]bool // slot -> functions in use
	placing bool                 // the controller providing it is being placed
}

func (b *pciBus) isUsed(slot, fn int) bool { return b.used[slot][fn] }

func (b *pciBus) slotEmpty(slot int) bool { return len(b.used[slot]) == 0 }

func (b *pciBus) mark(slot, fn int) {
	if b.used[slot] == nil {
		b.used[slot] = map[int]bool{}
	}
	b.used[slot][fn] = true
}

// accepts reports whether a device of kind k can plug into the bus.
func (b *pciBus) accepts(k connKind, q35 bool) bool {
	switch b.model {
	case "pci-root":
		return k == connPCI || k == connPCIe || k == connPCIBridge || (k == connPXB && !q35) || k == connRoot
	case "pcie-root":
		return k == connRootPort || k == connDMI || k == connPXB || k == connRoot
	case "pci-bridge", "pcie-to-pci-bridge", "dmi-to-pci-bridge", "pci-expander-bus":
		return k == connPCI || k == connPCIBridge || (k == connPCIe && !q35)
	case "pcie-root-port", "pcie-switch-downstream-port":
		return k == connPCIe || k == connUpstream || k == connPCIeToPCI
	case "pcie-switch-upstream-port":
		return k == connDownstream
	case "pcie-expander-bus":
		return k == connRootPort
	}
	return false
}

func busRange(model string) (int, int) {
	switch model {
	case "pcie-root-port", "pcie-switch-downstream-port":
		return 0, 0
	case "dmi-to-pci-bridge", "pcie-switch-upstream-port", "pci-expander-bus", "pcie-expander-bus":
		return 0, 31
	}
	return 1, 31 // pci-root, pcie-root, pci-bridge, pcie-to-pci-bridge
}

// pciAllocator assigns PCI addresses the way libvirt does: explicit
// addresses are reserved first, then devices get the first free slot of
// a bus that can take them, and controllers are added when none can.
type pciAllocator struct {
	x     *expander
	q35   bool
	buses map[int]*pciBus
	// depth bounds controllers added to place controllers.
	depth int
	// spare is set when expansion may add one empty pcie-root-port for
	// hotplug (only for q35 definitions that had none).
	spare bool
}

func newPCIAllocator(x *expander) (*pciAllocator, error) {
	a := &pciAllocator{x: x, q35: x.kind == machineQ35, buses: map[int]*pciBus{}}
	rootPorts := 0
	for _, ctl := range children(x.devs, "controller") {
		if attr(ctl, "type") != "pci" {
			continue
		}
		a.register(ctl)
		if attr(ctl, "model") == "pcie-root-port" {
			rootPorts++
		}
	}
	a.spare = a.q35 && rootPorts == 0
	// Reserve what the machine has built in.
	if root := a.buses[0]; root != nil {
		root.mark(0, 0) // host bridge
		for f := 0; f < 8; f++ {
			if a.q35 {
				root.mark(0x1f, f) // ICH9: LPC, SATA, SMBus
			} else {
				root.mark(1, f) // PIIX3: ISA, IDE, USB, ACPI
			}
		}
	}
	// Buses that explicit addresses refer to but no controller provides
	// are added, as libvirt does (pci-bridges on i440fx).
	maxBus := 0
	for _, dev := range x.devs.ChildElements() {
		if p, ok := pciPlaced(dev); ok && p.Bus > maxBus {
			maxBus = p.Bus
		}
	}
	for i := 1; i <= maxBus; i++ {
		if a.buses[i] != nil {
			continue
		}
		if a.q35 {
			return nil, fmt.Errorf("devices: PCI bus %d is used by a device address but no PCI controller has index %d", i, i)
		}
		ctl := a.newController("pci-bridge", i)
		a.register(ctl)
	}
	// Reserve explicit addresses.
	for _, dev := range x.devs.ChildElements() {
		if p, ok := pciPlaced(dev); ok {
			if b := a.buses[p.Bus]; b != nil {
				b.mark(p.Slot, p.Function)
			}
		}
	}
	return a, nil
}

func (a *pciAllocator) register(ctl *etree.Element) *pciBus {
	idx, _ := strconv.Atoi(attr(ctl, "index"))
	m := attr(ctl, "model")
	lo, hi := busRange(m)
	b := &pciBus{index: idx, model: m, minSlot: lo, maxSlot: hi, used: map[int]map[int]bool{}}
	a.buses[idx] = b
	return b
}

// assign gives dev an address on a bus accepting kind, adding controllers
// as needed. Devices with a complete address or an address of another
// type are left alone.
func (a *pciAllocator) assign(dev *etree.Element, kind connKind) error {
	if _, ok := pciPlaced(dev); ok {
		return nil
	}
	if ad := child(dev, "address"); ad != nil && attr(ad, "type") != "pci" {
		return nil // the device is on another bus (ccw, isa, ...)
	}
	bus, slot, fn, err := a.free(kind)
	if err != nil {
		return fmt.Errorf("%s: %w", pathOf(dev), err)
	}
	bus.mark(slot, fn)
	p := pciAddr{Bus: bus.index, Slot: slot, Function: fn}
	if kind == connRootPort && fn == 0 && bus.model == "pcie-root" {
		p.Multifunction = true // more root ports may share the slot
	}
	setPCIAddr(dev, p)
	return nil
}

// free finds (or makes) a free slot for a device of kind.
func (a *pciAllocator) free(kind connKind) (*pciBus, int, int, error) {
	if !a.q35 && kind == connPCIe {
		kind = connPCI
	}
	// On i440fx the last free conventional slot is kept for a pci-bridge,
	// so that the bus can always grow.
	if !a.q35 && kind == connPCI && a.freeSlots(connPCIBridge) == 1 {
		br, err := a.addController("pci-bridge")
		return br, 1, 0, err
	}
	for _, idx := range a.order() {
		b := a.buses[idx]
		if b.placing || !b.accepts(kind, a.q35) {
			continue
		}
		if kind == connRootPort && b.model == "pcie-root" {
			if s, f, ok := a.rootPortSlot(b); ok {
				return b, s, f, nil
			}
			continue
		}
		if kind == connDMI && b.slotEmpty(0x1e) {
			return b, 0x1e, 0, nil
		}
		for s := b.minSlot; s <= b.maxSlot; s++ {
			if b.slotEmpty(s) {
				return b, s, 0, nil
			}
		}
	}
	// Nothing free: add a controller providing a new bus.
	switch {
	case a.q35 && (kind == connPCIe || kind == connUpstream || kind == connPCIeToPCI):
		rp, err := a.addController("pcie-root-port")
		return rp, 0, 0, err
	case a.q35 && kind == connDownstream:
		up, err := a.addController("pcie-switch-upstream-port")
		return up, 0, 0, err
	case a.q35 && (kind == connPCI || kind == connPCIBridge):
		br, err := a.addController("pcie-to-pci-bridge")
		return br, 1, 0, err
	case !a.q35 && (kind == connPCI || kind == connPCIBridge):
		br, err := a.addController("pci-bridge")
		return br, 1, 0, err
	}
	return nil, 0, 0, fmt.Errorf("no free PCI slot for this device")
}

// freeSlots counts the empty slots of buses accepting kind.
func (a *pciAllocator) freeSlots(kind connKind) int {
	n := 0
	for _, b := range a.buses {
		if b.placing || !b.accepts(kind, a.q35) {
			continue
		}
		for s := b.minSlot; s <= b.maxSlot; s++ {
			if b.slotEmpty(s) {
				n++
			}
		}
	}
	return n
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
// functions of a slot holding only root ports are filled first, then a
// free slot is started, like libvirt.
func (a *pciAllocator) rootPortSlot(root *pciBus) (int, int, bool) {
	for s := root.minSlot; s <= root.maxSlot; s++ {
		if root.slotEmpty(s) || !a.slotHasOnlyRootPorts(s) {
			continue
		}
		for f := 0; f < 8; f++ {
			if !root.isUsed(s, f) {
				return s, f, true
			}
		}
	}
	for s := root.minSlot; s <= root.maxSlot; s++ {
		if root.slotEmpty(s) {
			return s, 0, true
		}
	}
	return 0, 0, false
}

// slotHasOnlyRootPorts reports whether slot of pcie.0 holds auto-placed
// style root ports only (function 0 multifunction).
func (a *pciAllocator) slotHasOnlyRootPorts(slot int) bool {
	found := false
	for _, dev := range a.x.devs.ChildElements() {
		p, ok := pciPlaced(dev)
		if !ok || p.Bus != 0 || p.Slot != slot {
			continue
		}
		if dev.Tag != "controller" || attr(dev, "model") != "pcie-root-port" {
			return false
		}
		if p.Function == 0 && !p.Multifunction {
			return false
		}
		found = true
	}
	return found
}

// newController adds a PCI controller element of model with index idx.
func (a *pciAllocator) newController(model string, idx int) *etree.Element {
	ctl := a.x.addDevice("controller")
	setAttr(ctl, "type", "pci")
	setAttr(ctl, "index", strconv.Itoa(idx))
	setAttr(ctl, "model", model)
	a.x.fillPCIController(ctl)
	return ctl
}

// addController adds a PCI controller of model with the next free index
// and places it (adding its own parents first if needed).
func (a *pciAllocator) addController(model string) (*pciBus, error) {
	idx := 0
	for i := range a.buses {
		if i >= idx {
			idx = i + 1
		}
	}
	if idx > 255 {
		return nil, fmt.Errorf("too many PCI controllers")
	}
	// Place it before creating its bus, so parents it needs get lower
	// indexes than its children will have.
	if a.depth > 3 {
		return nil, fmt.Errorf("no free PCI slot for a %s controller", model)
	}
	a.depth++
	bus, slot, fn, err := a.free(controllerConn(model))
	a.depth--
	if err != nil {
		return nil, err
	}
	for i := range a.buses {
		if i >= idx {
			idx = i + 1
		}
	}
	ctl := a.newController(model, idx)
	bus.mark(slot, fn)
	p := pciAddr{Bus: bus.index, Slot: slot, Function: fn}
	if model == "pcie-root-port" && fn == 0 && bus.model == "pcie-root" {
		p.Multifunction = true
	}
	setPCIAddr(ctl, p)
	return a.register(ctl), nil
}

// placeController gives an existing PCI controller its address.
func (a *pciAllocator) placeController(ctl *etree.Element) error {
	switch attr(ctl, "model") {
	case "pci-root", "pcie-root":
		return nil
	}
	idx, _ := strconv.Atoi(attr(ctl, "index"))
	own := a.buses[idx]
	if own != nil {
		own.placing = true
		defer func() { own.placing = false }()
	}
	kind := controllerConn(attr(ctl, "model"))
	if !a.q35 {
		switch kind {
		case connRootPort, connDownstream, connUpstream, connPCIeToPCI, connDMI:
			return fmt.Errorf("%s: a %s controller needs a PCI Express machine (q35)", pathOf(ctl), attr(ctl, "model"))
		}
	}
	return a.assign(ctl, kind)
}

// finish fixes multifunction bits and root/downstream port numbers.
func (a *pciAllocator) finish() {
	type key struct{ bus, slot int }
	fns := map[key]int{}
	for _, dev := range a.x.devs.ChildElements() {
		if p, ok := pciPlaced(dev); ok && p.Function > 0 {
			fns[key{p.Bus, p.Slot}]++
		}
	}
	for _, dev := range a.x.devs.ChildElements() {
		ad := child(dev, "address")
		if p, ok := pciPlaced(dev); ok && p.Function == 0 && fns[key{p.Bus, p.Slot}] > 0 && !hasAttr(ad, "multifunction") {
			setAttr(ad, "multifunction", "on")
		}
		if dev.Tag == "controller" && attr(dev, "type") == "pci" {
			m := attr(dev, "model")
			if t := child(dev, "target"); t != nil && !hasAttr(t, "port") {
				if p, ok := pciPlaced(dev); ok && m == "pcie-root-port" {
					setAttr(t, "port", fmt.Sprintf("0x%x", p.Slot<<3|p.Function))
				} else if ok && m == "pcie-switch-downstream-port" {
					setAttr(t, "port", fmt.Sprintf("0x%x", p.Slot))
				}
			}
		}
	}
}
