package domain

import (
	"strings"

	"github.com/beevik/etree"
)

// deviceCheckers validates each device class.
var deviceCheckers = map[string]func(c *checker, e *etree.Element){
	"emulator":    checkEmulator,
	"disk":        checkDisk,
	"controller":  checkController,
	"lease":       func(c *checker, e *etree.Element) {},
	"filesystem":  checkFilesystem,
	"interface":   checkInterface,
	"smartcard":   checkSmartcard,
	"serial":      checkChardevDevice,
	"parallel":    checkChardevDevice,
	"console":     checkChardevDevice,
	"channel":     checkChardevDevice,
	"input":       checkInput,
	"tpm":         checkTPM,
	"graphics":    checkGraphics,
	"sound":       checkSound,
	"audio":       checkAudio,
	"video":       checkVideo,
	"hostdev":     checkHostdev,
	"redirdev":    checkRedirdev,
	"redirfilter": func(c *checker, e *etree.Element) {},
	"hub":         func(c *checker, e *etree.Element) { c.required(e, "type"); c.enum(e, "type", "usb") },
	"watchdog":    checkWatchdog,
	"memballoon":  checkMemballoon,
	"rng":         checkRNG,
	"nvram":       func(c *checker, e *etree.Element) {},
	"panic":       func(c *checker, e *etree.Element) { c.enum(e, "model", "isa", "pseries", "hyperv", "s390", "pvpanic") },
	"shmem":       checkShmem,
	"memory":      checkMemoryDevice,
	"iommu":       checkIOMMU,
	"vsock":       checkVsock,
	"crypto":      func(c *checker, e *etree.Element) {},
	"pstore":      checkPstore,
}

func (d *Domain) checkDevices(c *checker) {
	devs := child(d.root, "devices")
	if devs == nil {
		return
	}
	var tags []string
	for t := range deviceCheckers {
		tags = append(tags, t)
	}
	c.known(devs, tags...)
	c.once(devs, "emulator")
	if c.err != nil {
		return
	}
	for _, e := range devs.ChildElements() {
		if e.Space != "" {
			continue
		}
		deviceCheckers[e.Tag](c, e)
		if a := child(e, "address"); a != nil {
			checkAddress(c, a)
		}
		if a := child(e, "alias"); a != nil {
			c.required(a, "name")
		}
		if b := child(e, "boot"); b != nil {
			c.required(b, "order")
			c.uint(b, "order", 1, 1<<31)
		}
		if c.err != nil {
			return
		}
	}
	d.checkCrossDevice(c)
	d.checkPstores(c)
}

// checkCrossDevice checks rules between devices: unique disk targets,
// boot orders, aliases and PCI addresses. (Duplicate MACs are allowed, as
// in libvirt: guests on separate networks may share one.)
func (d *Domain) checkCrossDevice(c *checker) {
	devs := child(d.root, "devices")
	targets := map[string]*etree.Element{}
	for _, disk := range children(devs, "disk") {
		dev := attr(child(disk, "target"), "dev")
		if prev, ok := targets[dev]; ok && dev != "" {
			c.fail(child(disk, "target"), "target dev %q is already used by %s", dev, pathOf(prev))
		}
		targets[dev] = disk
	}
	orders := map[string]*etree.Element{}
	aliases := map[string]*etree.Element{}
	addrs := map[string]*etree.Element{}
	for _, e := range devs.ChildElements() {
		if b := child(e, "boot"); b != nil {
			o := attr(b, "order")
			if prev, ok := orders[o]; ok {
				c.fail(b, "boot order %s is already used by %s", o, pathOf(prev))
			}
			orders[o] = e
		}
		if a := child(e, "alias"); a != nil {
			n := attr(a, "name")
			if prev, ok := aliases[n]; ok && !sharedAlias(prev, e) {
				c.fail(a, "alias %q is already used by %s", n, pathOf(prev))
			}
			aliases[n] = e
		}
		if a := child(e, "address"); a != nil && attr(a, "type") == "pci" && hasAttr(a, "slot") && e.Tag != "console" {
			if p, ok := parsePCIAddr(a); ok {
				k := p.String()
				if prev, dup := addrs[k]; dup {
					c.fail(a, "PCI address %s is already used by %s", k, pathOf(prev))
				}
				addrs[k] = e
			}
		}
	}
	// A function 0 with multifunction='off' cannot share its slot.
	type slotKey struct{ bus, slot int }
	fn0 := map[slotKey]*etree.Element{}
	others := map[slotKey]*etree.Element{}
	for _, e := range devs.ChildElements() {
		p, ok := pciPlaced(e)
		if !ok {
			continue
		}
		k := slotKey{p.Bus, p.Slot}
		if p.Function == 0 {
			fn0[k] = e
		} else {
			others[k] = e
		}
	}
	for k, e := range fn0 {
		if o := others[k]; o != nil && attr(child(e, "address"), "multifunction") == "off" {
			c.fail(child(e, "address"), "multifunction='off', but %s uses another function of the same slot", pathOf(o))
		}
	}
	// Controller indexes are unique per type.
	idx := map[string]*etree.Element{}
	for _, ctl := range children(devs, "controller") {
		k := attr(ctl, "type") + "/" + attr(ctl, "index")
		if _, companion := usbCompanionFunction(attr(ctl, "model")); companion && attr(ctl, "type") == "usb" {
			k += "/" + attr(ctl, "model") // EHCI and its UHCI companions share an index
		}
		if prev, ok := idx[k]; ok && hasAttr(ctl, "index") {
			c.fail(ctl, "a %s controller with index %s is already defined by %s", attr(ctl, "type"), attr(ctl, "index"), pathOf(prev))
		}
		idx[k] = ctl
	}
}

// sharedAlias reports whether two devices may have the same alias: the
// console that is serial port 0, and the controllers of one USB bus (an
// EHCI and its UHCI companions).
func sharedAlias(a, b *etree.Element) bool {
	if a.Tag == "serial" && b.Tag == "console" {
		return true
	}
	return a.Tag == "controller" && b.Tag == "controller" && attr(a, "type") == "usb" &&
		attr(b, "type") == "usb" && attr(a, "index") == attr(b, "index")
}

func checkEmulator(c *checker, e *etree.Element) {
	p := strings.TrimSpace(e.Text())
	if p == "" {
		c.fail(e, "emulator path must not be empty")
	} else if !strings.HasPrefix(p, "/") {
		c.fail(e, "emulator path %q must be absolute", p)
	}
}

func checkAddress(c *checker, a *etree.Element) {
	t := c.required(a, "type")
	c.enum(a, "type", "pci", "drive", "virtio-serial", "ccid", "usb", "spapr-vio", "virtio-s390",
		"ccw", "virtio-mmio", "isa", "dimm", "unassigned")
	switch t {
	case "pci":
		c.uint(a, "domain", 0, 0xffff)
		c.uint(a, "bus", 0, 0xff)
		c.uint(a, "slot", 0, 0x1f)
		c.uint(a, "function", 0, 7)
		c.onoff(a, "multifunction")
	case "drive":
		for _, k := range []string{"controller", "bus", "target", "unit"} {
			c.uint(a, k, 0, 1<<20)
		}
	case "virtio-serial", "ccid":
		c.uint(a, "controller", 0, 1<<20)
		c.uint(a, "bus", 0, 1<<20)
		c.uint(a, "port", 0, 1<<20)
		c.uint(a, "slot", 0, 1<<20)
	case "usb":
		c.uint(a, "bus", 0, 1<<20)
		if p := attr(a, "port"); p != "" {
			for _, part := range strings.Split(p, ".") {
				if _, err := parseUint(part); err != nil {
					c.fail(a, "attribute port: malformed USB port %q", p)
					break
				}
			}
		}
	case "isa":
		c.uint(a, "iobase", 0, 0xffff)
		c.uint(a, "irq", 0, 255)
	case "dimm":
		c.uint(a, "slot", 0, 255)
		c.uint(a, "base", 0, 1<<62)
	}
}

// diskBuses are the values of disk/target/@bus.
var diskBuses = []string{"ide", "scsi", "virtio", "xen", "usb", "uml", "sata", "sd", "fdc", "none"}

// diskFormats are the image formats libvirt knows.
var diskFormats = []string{"raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi",
	"fat", "vhd", "ploop", "cow", "qcow", "qcow2", "qed", "vmdk", "vhdx", "luks", "luks2", "aio", "none"}

func checkDisk(c *checker, e *etree.Element) {
	typ := c.enum(e, "type", "file", "block", "dir", "network", "volume", "nvme", "vhostuser")
	if typ == "" {
		typ = "file"
	}
	device := c.enum(e, "device", "disk", "cdrom", "floppy", "lun")
	if device == "" {
		device = "disk"
	}
	c.enum(e, "snapshot", "default", "no", "internal", "external", "manual")
	c.enum(e, "sgio", "filtered", "unfiltered")
	c.enum(e, "rawio", "yes", "no")
	c.enum(e, "model", "virtio", "virtio-transitional", "virtio-non-transitional")
	t := child(e, "target")
	if t == nil {
		c.fail(e, "element <target> is required")
		return
	}
	dev := c.required(t, "dev")
	bus := c.enum(t, "bus", diskBuses...)
	c.enum(t, "tray", "open", "closed")
	c.onoff(t, "removable")
	c.uint(t, "rotation_rate", 0, 65535)
	if c.err != nil {
		return
	}
	if bus == "" {
		bus = busFromTarget(dev)
		if bus == "" {
			c.fail(t, "cannot infer the bus from target dev %q (set attribute bus)", dev)
			return
		}
	}
	if _, ok := diskIndex(dev); !ok {
		c.fail(t, "attribute dev: %q is not a disk name like vda, sdb, hdc or fda", dev)
		return
	}
	if device == "lun" && bus != "scsi" && bus != "virtio" {
		c.fail(t, "a disk with device='lun' requires bus='scsi', not %q", bus)
	}
	if device == "floppy" && bus != "fdc" {
		c.fail(t, "a floppy requires bus='fdc', not %q", bus)
	}
	if device != "floppy" && bus == "fdc" {
		c.fail(t, "bus='fdc' is only for floppy disks")
	}
	if device == "cdrom" && bus == "virtio" {
		c.fail(t, "a cdrom cannot use bus='virtio'")
	}
	switch bus {
	case "xen", "uml", "sd":
		c.unsupported(t, "disk bus %q is not supported on x86 QEMU", bus)
	}
	if dr := child(e, "driver"); dr != nil {
		c.enum(dr, "name", "qemu", "tap", "tap2", "phy", "file")
		c.enum(dr, "type", diskFormats...)
		c.enum(dr, "cache", "default", "none", "writethrough", "writeback", "directsync", "unsafe")
		c.enum(dr, "io", "threads", "native", "io_uring", "default")
		c.enum(dr, "discard", "unmap", "ignore", "default")
		c.enum(dr, "error_policy", "stop", "report", "ignore", "enospace", "default")
		c.enum(dr, "rerror_policy", "stop", "report", "ignore", "default")
		c.enum(dr, "detect_zeroes", "off", "on", "unmap", "default")
		c.enum(dr, "copy_on_read", "on", "off", "default")
		c.onoff(dr, "ioeventfd", "event_idx", "iommu", "ats", "packed", "page_per_vq")
		c.uint(dr, "iothread", 1, 1<<31)
		c.uint(dr, "queues", 1, 1024)
		c.uint(dr, "queue_size", 1, 32768)
		if attr(dr, "io") == "native" && attr(dr, "cache") != "" && attr(dr, "cache") != "none" && attr(dr, "cache") != "directsync" {
			c.fail(dr, "io='native' requires cache='none' or cache='directsync'")
		}
	}
	src := child(e, "source")
	switch typ {
	case "file":
		if src != nil {
			c.absPath(src, "file")
		}
		if (src == nil || attr(src, "file") == "") && device == "disk" {
			c.fail(e, "a disk of type 'file' requires <source file='...'/>")
		}
	case "block":
		if src != nil {
			c.absPath(src, "dev")
		}
		if (src == nil || attr(src, "dev") == "") && device != "cdrom" && device != "floppy" {
			c.fail(e, "a disk of type 'block' requires <source dev='...'/>")
		}
	case "dir":
		if src == nil || attr(src, "dir") == "" {
			c.fail(e, "a disk of type 'dir' requires <source dir='...'/>")
		} else {
			c.absPath(src, "dir")
		}
	case "network":
		if src == nil {
			if device != "cdrom" && device != "floppy" {
				c.fail(e, "a disk of type 'network' requires <source protocol='...'/>")
			}
			return
		}
		c.required(src, "protocol")
		p := c.enum(src, "protocol", "nbd", "rbd", "sheepdog", "gluster", "iscsi", "http", "https",
			"ftp", "ftps", "tftp", "ssh", "vxhs", "nfs")
		if p != "nbd" && p != "" && attr(src, "name") == "" && p != "nfs" {
			c.fail(src, "attribute name is required for protocol %q", p)
		}
		for _, h := range children(src, "host") {
			c.enum(h, "transport", "tcp", "unix", "rdma")
			if attr(h, "transport") == "unix" {
				c.required(h, "socket")
			}
		}
	case "volume":
		if src == nil {
			if device != "cdrom" && device != "floppy" {
				c.fail(e, "a disk of type 'volume' requires <source pool='...' volume='...'/>")
			}
			return
		}
		c.required(src, "pool")
		c.required(src, "volume")
	case "nvme":
		if src == nil {
			c.fail(e, "a disk of type 'nvme' requires <source type='pci'>")
		}
	}
	if io := child(e, "iotune"); io != nil {
		for _, l := range io.ChildElements() {
			if l.Tag == "group_name" {
				continue
			}
			if _, err := parseUint(l.Text()); err != nil {
				c.fail(l, "%q is not an unsigned integer", strings.TrimSpace(l.Text()))
			}
		}
	}
	if s := child(e, "serial"); s != nil {
		v := s.Text()
		for _, r := range v {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(" _.+-", r)) {
				c.fail(s, "serial %q contains %q (allowed: letters, digits, space and _ . + -)", v, r)
				break
			}
		}
	}
	if a := child(e, "address"); a != nil {
		at := attr(a, "type")
		switch {
		case (bus == "ide" || bus == "sata" || bus == "scsi" || bus == "fdc") && at != "drive":
			c.fail(a, "a disk on bus %q needs an address of type 'drive', not %q", bus, at)
		case bus == "virtio" && at != "pci" && at != "ccw" && at != "virtio-mmio":
			c.fail(a, "a virtio disk needs an address of type 'pci', not %q", at)
		case bus == "usb" && at != "usb":
			c.fail(a, "a USB disk needs an address of type 'usb', not %q", at)
		}
		if bus == "ide" && at == "drive" {
			c.uint(a, "bus", 0, 1)
			c.uint(a, "unit", 0, 1)
			c.uint(a, "target", 0, 0)
		}
		if bus == "fdc" && at == "drive" {
			c.uint(a, "unit", 0, 1)
		}
	}
}

// busFromTarget infers a disk bus from its target device name like
// libvirt: hdX ide, sdX scsi, vdX virtio, fdX fdc, xvdX xen, ubdX uml.
func busFromTarget(dev string) string {
	switch {
	case strings.HasPrefix(dev, "hd"):
		return "ide"
	case strings.HasPrefix(dev, "sd"):
		return "scsi"
	case strings.HasPrefix(dev, "vd"):
		return "virtio"
	case strings.HasPrefix(dev, "fd"):
		return "fdc"
	case strings.HasPrefix(dev, "xvd"):
		return "xen"
	case strings.HasPrefix(dev, "ubd"):
		return "uml"
	}
	return ""
}

// diskIndex turns a target name like "sdab" into its index (27).
func diskIndex(dev string) (int, bool) {
	p := prefixLen(dev)
	if p == 0 || p >= len(dev) {
		return 0, false
	}
	n := 0
	for _, r := range dev[p:] {
		if r < 'a' || r > 'z' {
			return 0, false
		}
		n = n*26 + int(r-'a') + 1
		if n > 1<<20 {
			return 0, false
		}
	}
	return n - 1, true
}

func prefixLen(dev string) int {
	for _, p := range []string{"xvd", "ubd", "hd", "sd", "vd", "fd"} {
		if strings.HasPrefix(dev, p) {
			return len(p)
		}
	}
	return 0
}

var controllerModels = map[string][]string{
	"ide":  {"piix3", "piix4", "ich6"},
	"fdc":  nil,
	"sata": nil,
	"scsi": {"auto", "buslogic", "lsilogic", "lsisas1068", "vmpvscsi", "ibmvscsi", "virtio-scsi",
		"lsisas1078", "virtio-transitional", "virtio-non-transitional", "ncr53c90", "am53c974", "dc390"},
	"usb": {"piix3-uhci", "piix4-uhci", "ehci", "ich9-ehci1", "ich9-uhci1", "ich9-uhci2",
		"ich9-uhci3", "vt82c686b-uhci", "pci-ohci", "nec-xhci", "qusb1", "qusb2", "qemu-xhci", "none"},
	"pci": {"pci-root", "pcie-root", "pci-bridge", "dmi-to-pci-bridge", "pcie-root-port",
		"pcie-switch-upstream-port", "pcie-switch-downstream-port", "pci-expander-bus",
		"pcie-expander-bus", "pcie-to-pci-bridge"},
	"virtio-serial": {"virtio", "virtio-transitional", "virtio-non-transitional"},
	"ccid":          nil,
	"xenbus":        nil,
	"isa":           nil,
}

func checkController(c *checker, e *etree.Element) {
	t := c.required(e, "type")
	if c.err != nil {
		return
	}
	models, ok := controllerModels[t]
	if !ok {
		c.fail(e, "attribute type: unknown value %q (expected one of: ccid, fdc, ide, isa, pci, sata, scsi, usb, virtio-serial, xenbus)", t)
		return
	}
	c.uint(e, "index", 0, 255)
	if hasAttr(e, "model") {
		if models == nil {
			c.fail(e, "attribute model is not allowed for a %s controller", t)
		} else {
			c.enum(e, "model", models...)
		}
	}
	if t == "pci" {
		if !hasAttr(e, "model") {
			c.fail(e, "attribute model is required for a pci controller")
		}
		idx := attr(e, "index")
		m := attr(e, "model")
		if (m == "pci-root" || m == "pcie-root") && idx != "" && idx != "0" {
			c.fail(e, "a %s controller must have index 0", m)
		}
		if idx == "0" && m != "pci-root" && m != "pcie-root" && m != "" {
			c.fail(e, "the pci controller with index 0 must be pci-root or pcie-root, not %s", m)
		}
		if mn := child(e, "model"); mn != nil {
			c.enum(mn, "name", "pci-bridge", "i82801b11-bridge", "ioh3420", "x3130-upstream",
				"xio3130-downstream", "pxb", "pxb-pcie", "pcie-root-port", "spapr-pci-host-bridge",
				"pcie-pci-bridge")
		}
		if tg := child(e, "target"); tg != nil {
			c.uint(tg, "chassisNr", 1, 255)
			c.uint(tg, "chassis", 0, 255)
			c.uint(tg, "port", 0, 255)
			c.uint(tg, "busNr", 1, 254)
			c.onoff(tg, "hotplug")
		}
	}
	if t == "usb" {
		c.uint(e, "ports", 1, 15)
	}
	if t == "virtio-serial" {
		c.uint(e, "ports", 1, 31)
		c.uint(e, "vectors", 0, 2048)
	}
	if dr := child(e, "driver"); dr != nil {
		c.uint(dr, "queues", 1, 1024)
		c.uint(dr, "cmd_per_lun", 1, 1<<31)
		c.uint(dr, "max_sectors", 1, 1<<31)
		c.uint(dr, "iothread", 1, 1<<31)
		c.onoff(dr, "ioeventfd", "iommu", "ats", "packed", "page_per_vq")
	}
}

func checkFilesystem(c *checker, e *etree.Element) {
	typ := c.enum(e, "type", "mount", "block", "file", "template", "ram", "bind", "volume")
	c.enum(e, "accessmode", "passthrough", "mapped", "squash")
	c.enum(e, "model", "virtio", "virtio-transitional", "virtio-non-transitional")
	t := child(e, "target")
	if t == nil {
		c.fail(e, "element <target> is required")
		return
	}
	c.required(t, "dir")
	if dr := child(e, "driver"); dr != nil {
		c.enum(dr, "type", "path", "handle", "loop", "nbd", "ploop", "virtiofs")
		c.enum(dr, "wrpolicy", "immediate")
	}
	if (typ == "" || typ == "mount") && child(e, "source") == nil && attr(child(e, "driver"), "type") != "virtiofs" {
		c.fail(e, "element <source> is required")
	}
}

var interfaceTypes = []string{"user", "ethernet", "vhostuser", "server", "client", "mcast",
	"udp", "network", "bridge", "internal", "direct", "hostdev", "vdpa", "null", "vds"}

func checkInterface(c *checker, e *etree.Element) {
	t := c.required(e, "type")
	c.enum(e, "type", interfaceTypes...)
	if c.err != nil {
		return
	}
	if m := child(e, "mac"); m != nil {
		a := c.required(m, "address")
		if a != "" && !macRE.MatchString(a) {
			c.fail(m, "attribute address: malformed MAC address %q", a)
		} else if a != "" {
			if b := hexByte(a[:2]); b&1 == 1 {
				c.fail(m, "attribute address: %s is a multicast MAC address", a)
			}
		}
	}
	src := child(e, "source")
	switch t {
	case "network":
		if src == nil || attr(src, "network") == "" && attr(src, "portgroup") == "" {
			c.fail(e, "an interface of type 'network' requires <source network='...'/>")
		}
	case "bridge":
		if src == nil || attr(src, "bridge") == "" {
			c.fail(e, "an interface of type 'bridge' requires <source bridge='...'/>")
		}
	case "direct":
		if src == nil || attr(src, "dev") == "" {
			c.fail(e, "an interface of type 'direct' requires <source dev='...'/>")
		}
	case "server", "client", "mcast", "udp":
		if src == nil {
			c.fail(e, "an interface of type %q requires <source address='...' port='...'/>", t)
		} else {
			c.required(src, "port")
			c.uint(src, "port", 1, 65535)
		}
	case "vhostuser":
		if src == nil {
			c.fail(e, "an interface of type 'vhostuser' requires <source type='unix' path='...' mode='...'/>")
		} else {
			c.required(src, "path")
			c.enum(src, "mode", "server", "client")
		}
	}
	if m := child(e, "model"); m != nil {
		c.required(m, "type")
	}
	if be := child(e, "backend"); be != nil {
		c.enum(be, "type", "default", "slirp", "passt")
	}
	for _, pf := range children(e, "portForward") {
		if t != "user" && t != "network" {
			c.fail(pf, "<portForward> is only for interfaces of type 'user' (or 'network' in a session instance)")
			break
		}
		c.required(pf, "proto")
		c.enum(pf, "proto", "tcp", "udp")
		if len(children(pf, "range")) == 0 {
			c.fail(pf, "<portForward> needs at least one <range start='PORT'/>")
		}
		for _, r := range children(pf, "range") {
			c.required(r, "start")
			c.uint(r, "start", 1, 65535)
			c.uint(r, "end", 1, 65535)
			c.uint(r, "to", 1, 65535)
			c.enum(r, "exclude", "yes", "no")
			if s, en := attr(r, "start"), attr(r, "end"); s != "" && en != "" && c.err == nil && mustUint(en) < mustUint(s) {
				c.fail(r, "attribute end: %s is below start %s", en, s)
			}
		}
	}
	if dr := child(e, "driver"); dr != nil {
		c.enum(dr, "name", "qemu", "vhost", "kvm", "vfio", "xen")
		c.enum(dr, "txmode", "iothread", "timer")
		c.uint(dr, "queues", 1, 256)
		c.uint(dr, "rx_queue_size", 256, 1024)
		c.uint(dr, "tx_queue_size", 256, 1024)
		c.onoff(dr, "ioeventfd", "event_idx", "iommu", "ats", "packed", "page_per_vq", "rss", "rss_hash_report")
	}
	if l := child(e, "link"); l != nil {
		c.enum(l, "state", "up", "down")
	}
	if mtu := child(e, "mtu"); mtu != nil {
		c.uint(mtu, "size", 68, 65535)
	}
}

func hexByte(s string) byte {
	var b byte
	for _, r := range strings.ToLower(s) {
		b <<= 4
		switch {
		case r >= '0' && r <= '9':
			b |= byte(r - '0')
		case r >= 'a' && r <= 'f':
			b |= byte(r-'a') + 10
		}
	}
	return b
}

func checkSmartcard(c *checker, e *etree.Element) {
	m := c.required(e, "mode")
	c.enum(e, "mode", "host", "host-certificates", "passthrough")
	switch m {
	case "host-certificates":
		if n := len(children(e, "certificate")); n != 3 {
			c.fail(e, "mode 'host-certificates' requires exactly 3 <certificate> elements, found %d", n)
		}
	case "passthrough":
		checkChardevSource(c, e, "type")
	}
}

var chardevTypes = []string{"null", "vc", "pty", "dev", "file", "pipe", "stdio", "udp", "tcp",
	"unix", "spicevmc", "spiceport", "nmdm", "qemu-vdagent", "dbus"}

// checkChardevDevice checks serial, parallel, console and channel devices.
func checkChardevDevice(c *checker, e *etree.Element) {
	checkChardevSource(c, e, "type")
	t := child(e, "target")
	switch e.Tag {
	case "serial":
		if t != nil {
			c.enum(t, "type", "isa-serial", "usb-serial", "pci-serial", "spapr-vio-serial",
				"system-serial", "sclp-serial", "isa-debug")
			c.uint(t, "port", 0, 3)
			if m := child(t, "model"); m != nil {
				c.enum(m, "name", "isa-serial", "usb-serial", "pci-serial", "spapr-vty",
					"pl011", "sclpconsole", "sclplmconsole", "16550a", "isa-debugcon")
			}
		}
	case "parallel":
		if t != nil {
			c.uint(t, "port", 0, 2)
		}
	case "console":
		if t != nil {
			c.enum(t, "type", "serial", "xen", "uml", "virtio", "lxc", "openvz", "sclp", "sclplm")
		}
	case "channel":
		if t == nil {
			c.fail(e, "element <target> is required")
			return
		}
		tt := c.required(t, "type")
		c.enum(t, "type", "guestfwd", "virtio", "xen")
		if tt == "guestfwd" {
			c.required(t, "address")
			c.required(t, "port")
		}
		c.enum(t, "state", "connected", "disconnected")
	}
}

// checkChardevSource checks a character device backend (type attribute
// and <source>).
func checkChardevSource(c *checker, e *etree.Element, typeAttr string) {
	typ := c.enum(e, typeAttr, chardevTypes...)
	srcs := children(e, "source")
	var src *etree.Element
	if len(srcs) > 0 {
		src = srcs[0]
	}
	switch typ {
	case "file", "dev", "pipe", "nmdm":
		if src == nil || attr(src, "path") == "" {
			if typ != "nmdm" {
				c.fail(e, "a %s of type %q requires <source path='...'/>", e.Tag, typ)
			}
		} else {
			c.absPath(src, "path")
		}
		if src != nil {
			c.onoff(src, "append")
		}
	case "unix":
		if src != nil {
			c.enum(src, "mode", "bind", "connect")
			if attr(src, "path") != "" {
				c.absPath(src, "path")
			}
			if attr(src, "mode") == "connect" && attr(src, "path") == "" {
				c.fail(src, "attribute path is required with mode='connect'")
			}
		} else if e.Tag != "channel" {
			c.fail(e, "a %s of type 'unix' requires <source path='...'/>", e.Tag)
		}
	case "tcp":
		if src == nil {
			c.fail(e, "a %s of type 'tcp' requires <source host='...' service='...'/>", e.Tag)
			return
		}
		c.enum(src, "mode", "bind", "connect")
		c.required(src, "service")
		c.uint(src, "service", 0, 65535)
		checkAddr(c, src, "host")
		if p := child(e, "protocol"); p != nil {
			c.enum(p, "type", "raw", "telnet", "telnets", "tls")
		}
	case "udp":
		for _, s := range srcs {
			c.enum(s, "mode", "bind", "connect")
			c.uint(s, "service", 0, 65535)
			checkAddr(c, s, "host")
		}
		if len(srcs) == 0 {
			c.fail(e, "a %s of type 'udp' requires <source mode='connect' host='...' service='...'/>", e.Tag)
		}
	case "spiceport":
		if src == nil || attr(src, "channel") == "" {
			c.fail(e, "a %s of type 'spiceport' requires <source channel='...'/>", e.Tag)
		}
	}
	if lg := child(e, "log"); lg != nil {
		c.required(lg, "file")
		c.absPath(lg, "file")
		c.onoff(lg, "append")
	}
}

func checkInput(c *checker, e *etree.Element) {
	t := c.required(e, "type")
	c.enum(e, "type", "mouse", "tablet", "keyboard", "passthrough", "evdev")
	c.enum(e, "bus", "ps2", "usb", "xen", "virtio", "parallels", "none")
	c.enum(e, "model", "virtio", "virtio-transitional", "virtio-non-transitional")
	if t == "tablet" && attr(e, "bus") == "ps2" {
		c.fail(e, "a tablet cannot use bus='ps2'")
	}
	if t == "passthrough" || t == "evdev" {
		src := child(e, "source")
		if src == nil || attr(src, "evdev") == "" && attr(src, "dev") == "" {
			c.fail(e, "an input of type %q requires <source evdev='...'/>", t)
		}
	}
}

func checkTPM(c *checker, e *etree.Element) {
	c.enum(e, "model", "tpm-tis", "tpm-crb", "tpm-spapr", "spapr-tpm-proxy")
	b := child(e, "backend")
	if b == nil {
		c.fail(e, "element <backend> is required")
		return
	}
	c.required(b, "type")
	c.enum(b, "type", "passthrough", "emulator", "external")
	c.enum(b, "version", "1.2", "2.0")
	if attr(b, "version") == "1.2" && attr(e, "model") == "tpm-crb" {
		c.fail(b, "a TPM 1.2 cannot use model tpm-crb (use tpm-tis, or version 2.0)")
	}
	c.yesno(b, "persistent_state")
}

func checkGraphics(c *checker, e *etree.Element) {
	t := c.required(e, "type")
	c.enum(e, "type", "sdl", "vnc", "rdp", "desktop", "spice", "egl-headless", "dbus")
	c.yesno(e, "autoport")
	c.int(e, "port", -1, 65535)
	c.int(e, "tlsPort", -1, 65535)
	c.int(e, "websocket", -1, 65535)
	c.enum(e, "sharePolicy", "allow-exclusive", "force-shared", "ignore")
	checkAddr(c, e, "listen")
	for _, l := range children(e, "listen") {
		c.required(l, "type")
		c.enum(l, "type", "address", "network", "socket", "none")
		checkAddr(c, l, "address")
		if attr(l, "type") == "socket" && attr(l, "socket") != "" {
			c.absPath(l, "socket")
		}
	}
	if t == "vnc" {
		if p := attr(e, "port"); p != "" && p != "-1" && p != "0" {
			n, _ := parseUint(p)
			if n < 5900 && c.err == nil {
				c.fail(e, "attribute port: VNC port %d is below 5900", n)
			}
		}
	}
	if t == "rdp" || t == "desktop" {
		c.unsupported(e, "graphics type %q is not supported by QEMU", t)
	}
}

func checkSound(c *checker, e *etree.Element) {
	c.required(e, "model")
	c.enum(e, "model", "sb16", "es1370", "pcspk", "ac97", "ich6", "ich7", "ich9", "usb", "ics2101")
	for _, cd := range children(e, "codec") {
		c.required(cd, "type")
		c.enum(cd, "type", "duplex", "micro", "output")
	}
}

func checkAudio(c *checker, e *etree.Element) {
	c.required(e, "id")
	c.uint(e, "id", 1, 1<<20)
	c.required(e, "type")
	c.enum(e, "type", "none", "alsa", "coreaudio", "jack", "oss", "pulseaudio", "sdl", "spice", "file", "dbus", "pipewire")
}

func checkVideo(c *checker, e *etree.Element) {
	m := child(e, "model")
	if m == nil {
		return
	}
	c.enum(m, "type", "vga", "cirrus", "vmvga", "xen", "vbox", "qxl", "parallels", "virtio", "gop", "none", "bochs", "ramfb")
	for _, k := range []string{"vram", "vram64", "ram", "vgamem"} {
		c.uint(m, k, 0, 1<<32)
	}
	c.uint(m, "heads", 1, 16)
	c.yesno(m, "primary")
	if a := child(m, "acceleration"); a != nil {
		c.yesno(a, "accel3d", "accel2d")
	}
}

func checkHostdev(c *checker, e *etree.Element) {
	c.enum(e, "mode", "subsystem", "capabilities")
	if attr(e, "mode") == "" || attr(e, "mode") == "subsystem" {
		c.required(e, "type")
		c.enum(e, "type", "usb", "pci", "scsi", "scsi_host", "mdev")
	}
	if child(e, "source") == nil {
		c.fail(e, "element <source> is required")
	}
}

func checkRedirdev(c *checker, e *etree.Element) {
	c.required(e, "bus")
	c.enum(e, "bus", "usb")
	checkChardevSource(c, e, "type")
}

func checkWatchdog(c *checker, e *etree.Element) {
	c.required(e, "model")
	c.enum(e, "model", "i6300esb", "ib700", "diag288", "itco")
	c.enum(e, "action", "reset", "shutdown", "poweroff", "pause", "dump", "none", "inject-nmi")
}

func checkMemballoon(c *checker, e *etree.Element) {
	c.required(e, "model")
	c.enum(e, "model", "virtio", "xen", "none", "virtio-transitional", "virtio-non-transitional")
	c.onoff(e, "autodeflate", "freePageReporting")
	if s := child(e, "stats"); s != nil {
		c.uint(s, "period", 0, 1<<31)
	}
}

func checkRNG(c *checker, e *etree.Element) {
	c.required(e, "model")
	c.enum(e, "model", "virtio", "virtio-transitional", "virtio-non-transitional")
	b := child(e, "backend")
	if b == nil {
		c.fail(e, "element <backend> is required")
		return
	}
	c.required(b, "model")
	m := c.enum(b, "model", "random", "egd", "builtin")
	if m == "random" && strings.TrimSpace(b.Text()) != "" && !strings.HasPrefix(strings.TrimSpace(b.Text()), "/") {
		c.fail(b, "path %q must be absolute", strings.TrimSpace(b.Text()))
	}
	if m == "egd" {
		checkChardevSource(c, b, "type")
	}
	if r := child(e, "rate"); r != nil {
		c.required(r, "bytes")
		c.uint(r, "bytes", 1, 1<<32)
		c.uint(r, "period", 1, 1<<32)
	}
}

func checkShmem(c *checker, e *etree.Element) {
	c.required(e, "name")
	if m := child(e, "model"); m != nil {
		c.enum(m, "type", "ivshmem", "ivshmem-plain", "ivshmem-doorbell")
	}
	if s := child(e, "size"); s != nil {
		if v, err := memoryKiB(s); err != nil {
			c.fail(s, "%v", err)
		} else if v*1024&(v*1024-1) != 0 {
			c.fail(s, "size must be a power of two")
		}
	}
}

func checkMemoryDevice(c *checker, e *etree.Element) {
	c.required(e, "model")
	c.enum(e, "model", "dimm", "nvdimm", "virtio-pmem", "virtio-mem", "sgx-epc")
	c.enum(e, "access", "shared", "private")
	c.yesno(e, "discard")
	if t := child(e, "target"); t == nil {
		c.fail(e, "element <target> is required")
	} else if s := child(t, "size"); s == nil {
		c.fail(t, "element <size> is required")
	} else if _, err := memoryKiB(s); err != nil {
		c.fail(s, "%v", err)
	}
}

func checkIOMMU(c *checker, e *etree.Element) {
	c.required(e, "model")
	c.enum(e, "model", "intel", "smmuv3", "virtio")
	if dr := child(e, "driver"); dr != nil {
		c.onoff(dr, "intremap", "caching_mode", "eim", "iotlb")
		c.uint(dr, "aw_bits", 39, 48)
	}
}

func checkVsock(c *checker, e *etree.Element) {
	c.enum(e, "model", "virtio", "virtio-transitional", "virtio-non-transitional")
	if cid := child(e, "cid"); cid != nil {
		c.yesno(cid, "auto")
		c.uint(cid, "address", 3, 1<<32-1)
	}
}
