package domain

import (
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// usbControllerDriver maps libvirt USB controller models to QEMU devices.
var usbControllerDriver = map[string]string{
	"piix3-uhci": "piix3-usb-uhci", "piix4-uhci": "piix4-usb-uhci", "ehci": "usb-ehci",
	"ich9-ehci1": "ich9-usb-ehci1", "ich9-uhci1": "ich9-usb-uhci1", "ich9-uhci2": "ich9-usb-uhci2",
	"ich9-uhci3": "ich9-usb-uhci3", "vt82c686b-uhci": "vt82c686b-usb-uhci", "pci-ohci": "pci-ohci",
	"nec-xhci": "nec-usb-xhci", "qemu-xhci": "qemu-xhci",
}

// scsiControllerDriver maps libvirt SCSI controller models to QEMU devices.
var scsiControllerDriver = map[string]string{
	"lsilogic": "lsi", "lsisas1068": "mptsas1068", "lsisas1078": "megasas",
	"virtio-scsi": "virtio-scsi-pci", "virtio-transitional": "virtio-scsi-pci-transitional",
	"virtio-non-transitional": "virtio-scsi-pci-non-transitional", "vmpvscsi": "pvscsi",
	"am53c974": "am53c974", "dc390": "dc390",
}

// pciControllerDriver maps <model name> of PCI controllers to QEMU devices.
var pciControllerDriver = map[string]string{
	"pci-bridge": "pci-bridge", "i82801b11-bridge": "i82801b11-bridge", "ioh3420": "ioh3420",
	"pcie-root-port": "pcie-root-port", "x3130-upstream": "x3130-upstream",
	"xio3130-downstream": "xio3130-downstream", "pxb": "pxb", "pxb-pcie": "pxb-pcie",
	"pcie-pci-bridge": "pcie-pci-bridge",
}

func (b *builder) controllers() error {
	ctls := children(b.devs, "controller")
	byType := func(typ string) []*etree.Element {
		var out []*etree.Element
		for _, c := range ctls {
			if attr(c, "type") == typ {
				out = append(out, c)
			}
		}
		sort.SliceStable(out, func(i, j int) bool {
			return mustUint(attr(out[i], "index")) < mustUint(attr(out[j], "index"))
		})
		return out
	}
	for _, c := range b.pciTopoOrder(byType("pci")) {
		model := attr(c, "model")
		if model == "pci-root" || model == "pcie-root" {
			continue
		}
		name := attr(child(c, "model"), "name")
		drv, ok := pciControllerDriver[name]
		if !ok {
			return errAt(c, "PCI controller model %q is not supported", name)
		}
		o := obj("driver", drv)
		t := child(c, "target")
		switch model {
		case "pci-bridge":
			o.add("chassis_nr", int(mustUint(attrOr(t, "chassisNr", attr(c, "index")))))
		case "pcie-root-port", "pcie-switch-downstream-port":
			o.add("port", int(mustUint(attrOr(t, "port", "0"))))
			o.add("chassis", int(mustUint(attrOr(t, "chassis", attr(c, "index")))))
		case "pci-expander-bus", "pcie-expander-bus":
			o.add("bus_nr", int(mustUint(attrOr(t, "busNr", "254"))))
			if n := attr(child(t, "node"), ""); n != "" {
				o.add("numa_node", int(mustUint(n)))
			} else if nn := trimText(child(t, "node")); nn != "" {
				o.add("numa_node", int(mustUint(nn)))
			}
		}
		o.add("id", alias(c))
		if attr(t, "hotplug") == "off" {
			o.add("hotplug", false)
		}
		b.addPCI(&o, c)
		b.device(o)
	}
	usbs := byType("usb")
	// The EHCI master before its companions.
	sort.SliceStable(usbs, func(i, j int) bool {
		if a, b := mustUint(attr(usbs[i], "index")), mustUint(attr(usbs[j], "index")); a != b {
			return a < b
		}
		return attr(usbs[i], "model") == "ich9-ehci1" && attr(usbs[j], "model") != "ich9-ehci1"
	})
	for _, c := range usbs {
		model := attr(c, "model")
		if model == "none" {
			continue
		}
		drv, ok := usbControllerDriver[model]
		if !ok {
			return unsupportedAt(c, "USB controller model %q is not supported on x86 QEMU", model)
		}
		o := obj("driver", drv)
		master := ""
		for _, m := range byType("usb") {
			if attr(m, "index") == attr(c, "index") && attr(m, "model") == "ich9-ehci1" {
				master = alias(m)
			}
		}
		if fn, companion := usbCompanionFunction(model); companion && model != "ich9-ehci1" && master != "" {
			o.add("masterbus", master+".0")
			o.add("firstport", fn*2)
		} else {
			if p := attr(c, "ports"); p != "" && (model == "qemu-xhci" || model == "nec-xhci") {
				n := int(mustUint(p))
				o.add("p2", n)
				o.add("p3", n)
			}
			o.add("id", alias(c))
		}
		b.addPCI(&o, c)
		b.device(o)
	}
	for _, c := range byType("scsi") {
		model := attr(c, "model")
		drv, ok := scsiControllerDriver[model]
		if !ok {
			return unsupportedAt(c, "SCSI controller model %q is not supported on x86 QEMU", model)
		}
		o := obj("driver", drv, "id", alias(c))
		dr := child(c, "driver")
		if strings.HasPrefix(drv, "virtio-scsi") {
			if q := attr(dr, "queues"); q != "" {
				o.add("num_queues", int(mustUint(q)))
			}
			if v := attr(dr, "cmd_per_lun"); v != "" {
				o.add("cmd_per_lun", int(mustUint(v)))
			}
			if v := attr(dr, "max_sectors"); v != "" {
				o.add("max_sectors", int(mustUint(v)))
			}
			if v := attr(dr, "iothread"); v != "" {
				o.add("iothread", "iothread"+v)
			}
			b.virtioOptions(&o, dr)
		}
		b.addPCI(&o, c)
		b.device(o)
	}
	for _, c := range byType("ide") {
		if attr(c, "index") == "0" && b.kind == machineI440FX {
			continue // PIIX3 IDE is built in
		}
		return unsupportedAt(c, "only the built-in IDE controller (index 0 on i440fx machines) is supported")
	}
	for _, c := range byType("sata") {
		if attr(c, "index") == "0" && b.kind == machineQ35 {
			continue // ICH9 AHCI is built in
		}
		o := obj("driver", "ahci", "id", alias(c))
		b.addPCI(&o, c)
		b.device(o)
	}
	for _, c := range byType("virtio-serial") {
		drv := "virtio-serial-pci"
		switch attr(c, "model") {
		case "virtio-transitional":
			drv = "virtio-serial-pci-transitional"
		case "virtio-non-transitional":
			drv = "virtio-serial-pci-non-transitional"
		}
		o := obj("driver", drv, "id", alias(c))
		if p := attr(c, "ports"); p != "" {
			o.add("max_ports", int(mustUint(p)))
		}
		if v := attr(c, "vectors"); v != "" {
			o.add("vectors", int(mustUint(v)))
		}
		b.virtioOptions(&o, child(c, "driver"))
		b.addPCI(&o, c)
		b.device(o)
	}
	// Hubs before what plugs into them: shorter port paths first.
	hubs := append([]*etree.Element(nil), children(b.devs, "hub")...)
	sort.SliceStable(hubs, func(i, j int) bool {
		return strings.Count(attr(child(hubs[i], "address"), "port"), ".") < strings.Count(attr(child(hubs[j], "address"), "port"), ".")
	})
	for _, h := range hubs {
		o := obj("driver", "usb-hub", "id", alias(h))
		b.addUSB(&o, h)
		b.device(o)
	}
	for _, c := range byType("ccid") {
		o := obj("driver", "usb-ccid", "id", alias(c))
		b.addUSB(&o, c)
		b.device(o)
	}
	for _, c := range byType("fdc") {
		if b.kind != machineI440FX && b.kind != machineQ35 {
			return unsupportedAt(c, "a floppy controller needs a PC machine")
		}
	}
	return nil
}

// pciTopoOrder orders PCI controllers so that each comes after the
// controller providing its bus, as QEMU needs; otherwise by index.
func (b *builder) pciTopoOrder(ctls []*etree.Element) []*etree.Element {
	done := map[int]bool{0: true}
	var out []*etree.Element
	left := ctls
	for len(left) > 0 {
		var next []*etree.Element
		progress := false
		for _, c := range left {
			p, ok := parsePCIAddr(child(c, "address"))
			if !ok || done[p.Bus] || attr(c, "model") == "pci-root" || attr(c, "model") == "pcie-root" {
				out = append(out, c)
				done[int(mustUint(attr(c, "index")))] = true
				progress = true
				continue
			}
			next = append(next, c)
		}
		if !progress {
			return append(out, next...) // a cycle: let QEMU report it
		}
		left = next
	}
	return out
}

func (b *builder) filesystems() error {
	for _, f := range children(b.devs, "filesystem") {
		dr := child(f, "driver")
		if attr(dr, "type") == "virtiofs" {
			return unsupportedAt(f, "virtiofs needs a virtiofsd daemon per filesystem, which qemufs does not run; use the 9p driver (driver type='path')")
		}
		if typ := attrOr(f, "type", "mount"); typ != "mount" {
			return unsupportedAt(f, "filesystem type %q is not supported by QEMU (use type='mount')", typ)
		}
		id := alias(f)
		src := child(f, "source")
		fs := "local"
		if attr(dr, "type") == "handle" {
			return unsupportedAt(f, "the 'handle' 9p driver was removed from QEMU")
		}
		arg := fmt.Sprintf("%s,security_model=%s,id=fsdev-%s,path=%s", fs, attrOr(f, "accessmode", "passthrough"),
			id, kvEscape(attr(src, "dir")))
		if attr(f, "accessmode") == "squash" {
			arg = strings.Replace(arg, "security_model=squash", "security_model=mapped-xattr", 1)
		}
		if child(f, "readonly") != nil {
			arg += ",readonly=on"
		}
		if attr(dr, "wrpolicy") == "immediate" {
			arg += ",writeout=immediate"
		}
		if fm := attr(f, "fmode"); fm != "" {
			arg += ",fmode=" + fm
		}
		if dm := attr(f, "dmode"); dm != "" {
			arg += ",dmode=" + dm
		}
		b.add("-fsdev", arg)
		drv := "virtio-9p-pci"
		switch attr(f, "model") {
		case "virtio-transitional":
			drv = "virtio-9p-pci-transitional"
		case "virtio-non-transitional":
			drv = "virtio-9p-pci-non-transitional"
		}
		o := obj("driver", drv, "id", id, "fsdev", "fsdev-"+id, "mount_tag", attr(child(f, "target"), "dir"))
		b.virtioOptions(&o, dr)
		b.addPCI(&o, f)
		b.device(o)
	}
	return nil
}

// knownNICs are QEMU 7.2 x86's network devices (-device help).
var knownNICs = map[string]bool{
	"e1000": true, "e1000-82544gc": true, "e1000-82545em": true, "e1000e": true, "i82550": true,
	"i82551": true, "i82557a": true, "i82557b": true, "i82557c": true, "i82558a": true,
	"i82558b": true, "i82559a": true, "i82559b": true, "i82559c": true, "i82559er": true,
	"i82562": true, "i82801": true, "ne2k_isa": true, "ne2k_pci": true, "pcnet": true,
	"rtl8139": true, "tulip": true, "usb-net": true, "virtio-net-pci": true,
	"virtio-net-pci-non-transitional": true, "virtio-net-pci-transitional": true, "vmxnet3": true,
	"e1000-82540em": true,
}

func sortedNICs() []string {
	var out []string
	for k := range knownNICs {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// tapFD is the fd (number or getfd name) of a TAP attachment, "" if none.
func (a NetAttachment) tapFD() string {
	switch {
	case a.TapFD > 0:
		return strconv.Itoa(a.TapFD)
	case a.FDName != "" && !a.Passt:
		return a.FDName
	}
	return ""
}

// userNetdev is the user-mode (slirp) netdev of interface n: its <ip>
// network and a hostfwd rule per forwarded port of its <portForward>s.
// libvirt forwards ports only with the passt backend; slirp's hostfwd does
// the same for TCP and UDP, so both backends honour them here.
func userNetdev(n *etree.Element, a NetAttachment) (jobj, error) {
	if a.PasstFD > 0 || a.Passt && a.FDName != "" {
		// passt runs beside QEMU (the driver started it, with the
		// port forwards); QEMU talks to it over a socket it inherits
		// (or was handed, for a hot-plugged interface).
		fd := a.FDName
		if fd == "" {
			fd = strconv.Itoa(a.PasstFD)
		}
		return obj("type", "stream", "addr", obj("type", "fd", "str", fd), "server", false), nil
	}
	if be := attr(child(n, "backend"), "type"); be == "passt" {
		return nil, unsupportedAt(child(n, "backend"), "the passt backend needs passt (Debian package passt), which qemufs starts beside QEMU; leave <backend> out for QEMU's own user-mode networking (slirp), which honours <portForward> too")
	}
	nd := obj("type", "user")
	for _, ip := range children(n, "ip") {
		if attr(ip, "family") == "ipv6" {
			continue
		}
		if a := attr(ip, "address"); a != "" {
			nd.add("net", a+"/"+attrOr(ip, "prefix", "24"))
		}
	}
	var fwd []jobj
	for _, pf := range children(n, "portForward") {
		proto, addr := attr(pf, "proto"), attr(pf, "address")
		if strings.Contains(addr, ":") {
			return nil, unsupportedAt(pf, "user-mode networking forwards IPv4 host addresses only, not %s", addr)
		}
		excluded := map[uint64]bool{}
		for _, r := range children(pf, "range") {
			if attr(r, "exclude") == "yes" {
				lo, hi := portRange(r)
				for p := lo; p <= hi; p++ {
					excluded[p] = true
				}
			}
		}
		for _, r := range children(pf, "range") {
			if attr(r, "exclude") == "yes" {
				continue
			}
			lo, hi := portRange(r)
			if hi-lo >= 1024 {
				return nil, unsupportedAt(r, "a forwarded range of %d ports is too many for user-mode networking (at most 1024)", hi-lo+1)
			}
			to := lo
			if t := attr(r, "to"); t != "" {
				to = mustUint(t)
			}
			for p := lo; p <= hi; p++ {
				if excluded[p] {
					continue
				}
				guest := to + (p - lo)
				if guest > 65535 {
					return nil, errAt(r, "port %d maps to guest port %d, beyond 65535", p, guest)
				}
				fwd = append(fwd, obj("str", fmt.Sprintf("%s:%s:%d-:%d", proto, addr, p, guest)))
			}
		}
	}
	if len(fwd) > 0 {
		nd.add("hostfwd", fwd)
	}
	return nd, nil
}

// portRange is the host ports of a <portForward><range>.
func portRange(r *etree.Element) (lo, hi uint64) {
	lo = mustUint(attr(r, "start"))
	hi = lo
	if e := attr(r, "end"); e != "" {
		hi = mustUint(e)
	}
	return lo, hi
}

// nicDevice maps a libvirt NIC model to the QEMU device.
func nicDevice(model string) string {
	switch model {
	case "virtio":
		return "virtio-net-pci"
	case "virtio-transitional":
		return "virtio-net-pci-transitional"
	case "virtio-non-transitional":
		return "virtio-net-pci-non-transitional"
	case "":
		return "rtl8139"
	}
	return model
}

func (b *builder) nets() error {
	for i, n := range children(b.devs, "interface") {
		id := alias(n)
		netdev := "host" + id
		typ := attr(n, "type")
		src := child(n, "source")
		var nd jobj
		switch typ {
		case "user":
			var err error
			if nd, err = userNetdev(n, b.opts.NetAttach[id]); err != nil {
				return err
			}
		case "ethernet":
			nd = obj("type", "tap")
			if fd := b.opts.NetAttach[id].tapFD(); fd != "" {
				nd.add("fd", fd)
				break
			}
			if dev := attr(child(n, "target"), "dev"); dev != "" {
				nd.add("ifname", dev)
			}
			nd.add("script", "no")
			nd.add("downscript", "no")
		case "network", "bridge":
			a, ok := b.opts.NetAttach[id]
			switch {
			case ok && a.tapFD() != "":
				nd = obj("type", "tap", "fd", a.tapFD())
			case ok && (a.User || a.PasstFD > 0 || a.Passt) && typ == "network":
				var err error
				if nd, err = userNetdev(n, b.opts.NetAttach[id]); err != nil {
					return err
				}
			default:
				return unsupportedAt(n, "interface type %q needs a host network: qemufs connects it when the guest starts in a system instance (networks/) or as user-mode networking in a session", typ)
			}
		case "server", "client", "mcast", "udp":
			addr := attrOr(src, "address", "")
			port := attr(src, "port")
			hp := net.JoinHostPort(addr, port)
			if addr == "" {
				hp = ":" + port
			}
			nd = obj("type", "socket")
			switch typ {
			case "server":
				nd.add("listen", hp)
			case "client":
				nd.add("connect", hp)
			case "mcast":
				nd.add("mcast", hp)
			case "udp":
				nd.add("udp", hp)
				if l := child(src, "local"); l != nil {
					nd.add("localaddr", net.JoinHostPort(attr(l, "address"), attr(l, "port")))
				}
			}
		case "vhostuser":
			chr := "char" + id
			s := "socket,id=" + chr + ",path=" + kvEscape(attr(src, "path"))
			if attr(src, "mode") == "server" {
				s += ",server=on"
			}
			b.add("-chardev", s)
			nd = obj("type", "vhost-user", "chardev", chr)
			if q := attr(child(n, "driver"), "queues"); q != "" {
				nd.add("queues", int(mustUint(q)))
			}
		case "null":
			nd = nil
		case "direct", "internal", "vdpa", "vds", "hostdev":
			return unsupportedAt(n, "interface type %q needs host networking (a libvirt network, bridge, macvtap or host device) that qemufs does not manage; use type='user' or type='ethernet'", typ)
		default:
			return errAt(n, "interface type %q is not supported", typ)
		}
		if nd != nil {
			dr := child(n, "driver")
			if attr(dr, "name") == "vhost" && (typ == "ethernet") {
				nd.add("vhost", true)
			}
			nd.add("id", netdev)
			if b.t.atLeast(7, 1) {
				b.add("-netdev", nd.String())
			} else {
				b.add("-netdev", nd.keyval("type"))
			}
		}
		model := attr(child(n, "model"), "type")
		drv := nicDevice(model)
		if !knownNICs[drv] && b.t.emu == nil {
			return unsupportedAt(child(n, "model"), "NIC model %q is not a QEMU 7.2 network device (known: %s)", model, strings.Join(sortedNICs(), ", "))
		}
		o := obj("driver", drv)
		dr := child(n, "driver")
		if strings.HasPrefix(drv, "virtio-net") {
			if q := int(mustUint(attr(dr, "queues"))); q > 1 {
				o.add("mq", true)
				o.add("vectors", 2*q+2)
			}
			if v := attr(dr, "rx_queue_size"); v != "" {
				o.add("rx_queue_size", int(mustUint(v)))
			}
			if v := attr(dr, "tx_queue_size"); v != "" {
				o.add("tx_queue_size", int(mustUint(v)))
			}
			if v := attr(dr, "txmode"); v == "timer" {
				o.add("tx", "timer")
			} else if v == "iothread" {
				o.add("tx", "bh")
			}
			for _, off := range []struct{ el, key, prop string }{
				{"host", "csum", "csum"}, {"host", "gso", "gso"}, {"host", "tso4", "host_tso4"},
				{"host", "tso6", "host_tso6"}, {"host", "ecn", "host_ecn"}, {"host", "ufo", "host_ufo"},
				{"host", "mrg_rxbuf", "mrg_rxbuf"}, {"guest", "csum", "guest_csum"},
				{"guest", "tso4", "guest_tso4"}, {"guest", "tso6", "guest_tso6"},
				{"guest", "ecn", "guest_ecn"}, {"guest", "ufo", "guest_ufo"},
			} {
				if v := attr(child(dr, off.el), off.key); v != "" {
					o.add(off.prop, v == "on")
				}
			}
			if attr(dr, "rss") == "on" {
				o.add("rss", true)
			}
			if attr(dr, "rss_hash_report") == "on" {
				o.add("hash", true)
			}
			if mtu := attr(child(n, "mtu"), "size"); mtu != "" {
				o.add("host_mtu", int(mustUint(mtu)))
			}
		}
		if nd != nil {
			o.add("netdev", netdev)
		}
		o.add("id", id)
		o.add("mac", attr(child(n, "mac"), "address"))
		if bi, ok := b.bootIndex[n]; ok {
			o.add("bootindex", bi)
		}
		if rom := child(n, "rom"); rom != nil {
			if attr(rom, "bar") == "off" {
				o.add("rombar", 0)
			}
			if hasAttr(rom, "file") {
				o.add("romfile", attr(rom, "file"))
			}
			if attr(rom, "enabled") == "no" {
				o.add("romfile", "")
			}
		}
		if strings.HasPrefix(drv, "virtio-net") {
			b.virtioOptions(&o, dr)
		}
		if drv == "usb-net" {
			b.addUSB(&o, n)
		} else {
			b.addPCI(&o, n)
		}
		if acpi := child(n, "acpi"); acpi != nil && attr(acpi, "index") != "" {
			o.add("acpi-index", int(mustUint(attr(acpi, "index"))))
		}
		_ = i
		b.device(o)
	}
	return nil
}

func (b *builder) smartcards() error {
	for _, s := range children(b.devs, "smartcard") {
		a := child(s, "address")
		ccid := "ccid" + attrOr(a, "controller", "0")
		if al, _ := b.controllerAlias("ccid", attrOr(a, "controller", "0")); al != "" {
			ccid = al
		}
		var o jobj
		switch attr(s, "mode") {
		case "host":
			o = obj("driver", "ccid-card-emulated", "backend", "nss-emulated")
		case "host-certificates":
			o = obj("driver", "ccid-card-emulated", "backend", "certificates")
			for i, c := range children(s, "certificate") {
				o.add(fmt.Sprintf("cert%d", i+1), trimText(c))
			}
			db := trimText(child(s, "database"))
			if db == "" {
				db = "/etc/pki/nssdb"
			}
			o.add("db", db)
		case "passthrough":
			if err := b.needsSpice(s); err != nil {
				return err
			}
			id, err := b.chardev(s, "char"+alias(s))
			if err != nil {
				return err
			}
			o = obj("driver", "ccid-card-passthru", "chardev", id)
		}
		o.add("id", alias(s))
		o.add("bus", ccid+".0")
		b.device(o)
	}
	return nil
}

func (b *builder) tpm() error {
	for _, t := range children(b.devs, "tpm") {
		be := child(t, "backend")
		id := "tpm-" + alias(t)
		switch attr(be, "type") {
		case "passthrough":
			path := attrOr(child(be, "device"), "path", "/dev/tpm0")
			cancel := "/sys/class/tpm/" + filepath.Base(path) + "/device/cancel"
			b.add("-tpmdev", "passthrough,id="+id+",path="+kvEscape(path)+",cancel-path="+cancel)
		case "emulator":
			// libvirt names the chardev chrtpm whatever the alias (a
			// domain has one emulated TPM).
			sock := b.opts.TPMSocket
			if sock == "" {
				sock = filepath.Join(b.opts.DomainDir, alias(t)+"-swtpm.sock")
			}
			b.add("-chardev", "socket,id=chrtpm,path="+kvEscape(sock))
			b.add("-tpmdev", "emulator,id="+id+",chardev=chrtpm")
		case "external":
			sock := attr(child(be, "source"), "path")
			b.add("-chardev", "socket,id=chrtpm,path="+kvEscape(sock))
			b.add("-tpmdev", "emulator,id="+id+",chardev=chrtpm")
		}
		model := attrOr(t, "model", "tpm-tis")
		if model != "tpm-tis" && model != "tpm-crb" {
			return unsupportedAt(t, "TPM model %q is not available on x86", model)
		}
		b.device(obj("driver", model, "tpmdev", id, "id", alias(t)))
	}
	return nil
}

func (b *builder) inputs() error {
	for _, in := range children(b.devs, "input") {
		typ, bus := attr(in, "type"), attr(in, "bus")
		switch bus {
		case "ps2":
			if typ != "mouse" && typ != "keyboard" {
				return errAt(in, "a PS/2 input must be a mouse or keyboard")
			}
			continue // the i8042 controller provides them
		case "usb":
			drv := map[string]string{"mouse": "usb-mouse", "tablet": "usb-tablet", "keyboard": "usb-kbd"}[typ]
			if drv == "" {
				return errAt(in, "input type %q cannot be a USB device", typ)
			}
			o := obj("driver", drv, "id", alias(in))
			b.addUSB(&o, in)
			b.device(o)
		case "virtio":
			var o jobj
			switch typ {
			case "mouse", "tablet", "keyboard":
				o = obj("driver", "virtio-"+map[string]string{"mouse": "mouse", "tablet": "tablet", "keyboard": "keyboard"}[typ]+"-pci", "id", alias(in))
			case "passthrough":
				o = obj("driver", "virtio-input-host-pci", "id", alias(in), "evdev", attr(child(in, "source"), "evdev"))
			default:
				return errAt(in, "input type %q cannot use bus='virtio'", typ)
			}
			b.virtioOptions(&o, child(in, "driver"))
			b.addPCI(&o, in)
			b.device(o)
		case "":
			if typ == "evdev" {
				src := child(in, "source")
				o := obj("qom-type", "input-linux", "id", alias(in), "evdev", attr(src, "dev"))
				if attr(src, "grab") == "all" {
					o.add("grab_all", true)
				}
				if r := attr(src, "repeat"); r != "" {
					o.add("repeat", r == "on")
				}
				if t := attr(src, "grabToggle"); t != "" {
					o.add("grab-toggle", t)
				}
				b.object(o)
				continue
			}
			return errAt(in, "attribute bus is required")
		default:
			return unsupportedAt(in, "input bus %q is not supported on x86 QEMU", bus)
		}
	}
	return nil
}

// listenAddr returns the address a VNC/SPICE display listens on.
func listenAddr(g *etree.Element, dflt string) string {
	if a := attr(g, "listen"); a != "" {
		return a
	}
	for _, l := range children(g, "listen") {
		if attr(l, "type") == "address" && attr(l, "address") != "" {
			return attr(l, "address")
		}
	}
	return dflt
}

func (b *builder) graphics() error {
	if err := b.spiceCheck(); err != nil {
		return err
	}
	vncSeen := false
	for _, g := range children(b.devs, "graphics") {
		switch attr(g, "type") {
		case "vnc":
			if vncSeen {
				return errAt(g, "only one VNC display is supported")
			}
			vncSeen = true
			var arg string
			socket := attr(g, "socket")
			none := false
			for _, l := range children(g, "listen") {
				switch attr(l, "type") {
				case "socket":
					socket = attr(l, "socket")
					if socket == "" {
						socket = filepath.Join(b.opts.DomainDir, "vnc.sock")
					}
				case "none":
					none = true
				}
			}
			switch {
			case none:
				arg = "none"
			case socket != "":
				arg = "unix:" + kvEscape(socket)
			default:
				port, _ := strconv.Atoi(attrOr(g, "port", "-1"))
				if attr(g, "autoport") == "yes" || port <= 0 {
					port = b.opts.VNCPort
					if port == 0 {
						port = 5900
					}
				}
				if port < 5900 {
					return errAt(g, "VNC port %d is below 5900", port)
				}
				host := listenAddr(g, b.opts.VNCListen)
				if strings.Contains(host, ":") {
					host = "[" + host + "]"
				}
				arg = fmt.Sprintf("%s:%d", host, port-5900)
				if ws := attr(g, "websocket"); ws != "" && ws != "0" {
					if ws == "-1" {
						ws = strconv.Itoa(port + 5700 - 5900 + 5700)
					}
					arg += ",websocket=" + ws
				}
			}
			if sp := attr(g, "sharePolicy"); sp != "" {
				arg += ",share=" + sp
			}
			if hasAttr(g, "passwd") {
				arg += ",password=on"
			}
			if k := attr(g, "keymap"); k != "" {
				b.add("-k", k)
			}
			arg += ",audiodev=" + b.audioFor(g)
			b.add("-vnc", arg)
		case "spice":
			if err := b.spice(g); err != nil {
				return err
			}
		case "sdl":
			arg := "sdl"
			if gl := child(g, "gl"); gl != nil && attr(gl, "enable") == "yes" {
				arg += ",gl=on"
			}
			b.add("-display", arg)
			if d := attr(g, "display"); d != "" {
				b.opts.Env = append(b.opts.Env, "DISPLAY="+d)
			}
		case "egl-headless":
			arg := "egl-headless"
			if rn := attr(child(g, "gl"), "rendernode"); rn != "" {
				arg += ",rendernode=" + rn
			}
			b.add("-display", arg)
		case "dbus":
			arg := "dbus"
			if attr(g, "p2p") == "yes" {
				arg += ",p2p=on"
			} else if a := attr(g, "address"); a != "" {
				arg += ",addr=" + kvEscape(a)
			}
			if gl := child(g, "gl"); gl != nil && attr(gl, "enable") == "yes" {
				arg += ",gl=on"
			}
			b.add("-display", arg)
		default:
			return unsupportedAt(g, "graphics type %q is not supported by QEMU", attr(g, "type"))
		}
	}
	return nil
}

func (b *builder) spice(g *etree.Element) error {
	var parts []string
	port, _ := strconv.Atoi(attrOr(g, "port", "-1"))
	tls, _ := strconv.Atoi(attrOr(g, "tlsPort", "-1"))
	socket := ""
	for _, l := range children(g, "listen") {
		if attr(l, "type") == "socket" {
			socket = attr(l, "socket")
			if socket == "" {
				socket = filepath.Join(b.opts.DomainDir, "spice.sock")
			}
		}
	}
	// Secure and plaintext channels.
	needTLS := tls > 0 || attr(g, "defaultMode") == "secure"
	var chans []string
	for _, c := range children(g, "channel") {
		switch attr(c, "mode") {
		case "secure":
			needTLS = true
			chans = append(chans, "tls-channel="+attr(c, "name"))
		case "insecure":
			chans = append(chans, "plaintext-channel="+attr(c, "name"))
		}
	}
	if needTLS && b.opts.SpiceTLSDir == "" {
		return unsupportedAt(g, "SPICE TLS (tlsPort, defaultMode='secure' or secure channels) needs server certificates, which this instance does not configure (spice_tls in qemu.conf)")
	}
	if socket != "" {
		parts = append(parts, "unix=on", "addr="+kvEscape(socket))
	} else {
		if attr(g, "autoport") == "yes" {
			port = b.opts.SpicePort
			if port == 0 {
				port = 5900
			}
			if b.opts.SpiceTLSDir != "" && attr(g, "defaultMode") != "insecure" {
				tls = b.opts.SpiceTLSPort
				if tls == 0 {
					tls = port + 1
				}
			}
		}
		if port > 0 && attr(g, "defaultMode") != "secure" {
			parts = append(parts, "port="+strconv.Itoa(port))
		}
		if tls > 0 && b.opts.SpiceTLSDir != "" {
			parts = append(parts, "tls-port="+strconv.Itoa(tls))
		}
		if port > 0 || tls > 0 {
			parts = append(parts, "addr="+listenAddr(g, b.opts.SpiceListen))
		}
		if tls > 0 && b.opts.SpiceTLSDir != "" {
			parts = append(parts, "x509-dir="+kvEscape(b.opts.SpiceTLSDir))
			if attr(g, "defaultMode") == "secure" {
				parts = append(parts, "tls-channel=default")
			}
			parts = append(parts, chans...)
		}
	}
	if !hasAttr(g, "passwd") {
		parts = append(parts, "disable-ticketing=on")
	}
	if img := attr(child(g, "image"), "compression"); img != "" {
		parts = append(parts, "image-compression="+img)
	}
	if j := attr(child(g, "jpeg"), "compression"); j != "" {
		parts = append(parts, "jpeg-wan-compression="+j)
	}
	if z := attr(child(g, "zlib"), "compression"); z != "" {
		parts = append(parts, "zlib-glz-wan-compression="+z)
	}
	if p := attr(child(g, "playback"), "compression"); p != "" {
		parts = append(parts, "playback-compression="+p)
	}
	if s := attr(child(g, "streaming"), "mode"); s != "" {
		parts = append(parts, "streaming-video="+s)
	}
	if m := attr(child(g, "mouse"), "mode"); m != "" {
		parts = append(parts, "agent-mouse="+onoff(m == "client"))
	}
	if c := attr(child(g, "clipboard"), "copypaste"); c == "no" {
		parts = append(parts, "disable-copy-paste=on")
	}
	if f := attr(child(g, "filetransfer"), "enable"); f == "no" {
		parts = append(parts, "disable-agent-file-xfer=on")
	}
	if gl := child(g, "gl"); gl != nil && attr(gl, "enable") == "yes" {
		parts = append(parts, "gl=on")
		if rn := attr(gl, "rendernode"); rn != "" {
			parts = append(parts, "rendernode="+rn)
		}
	}
	parts = append(parts, "seamless-migration=on")
	b.add("-spice", strings.Join(parts, ","))
	return nil
}

// audioFor returns the audiodev id a graphics or sound device uses.
func (b *builder) audioFor(e *etree.Element) string {
	if a := child(e, "audio"); a != nil && attr(a, "id") != "" {
		return "audio" + attr(a, "id")
	}
	return b.audioID
}

// audio adds the -audiodev backends: each <audio>, or one implicit
// backend ("none", or "spice" with a SPICE display), as libvirt 9 does.
func (b *builder) audios() error {
	auds := children(b.devs, "audio")
	if len(auds) == 0 {
		b.audioID = "audio1"
		drv := "none"
		if b.hasSpice() {
			drv = "spice"
		}
		b.add("-audiodev", obj("id", "audio1", "driver", drv).String())
		return nil
	}
	for i, a := range auds {
		id := "audio" + attr(a, "id")
		if i == 0 {
			b.audioID = id
		}
		typ := attr(a, "type")
		drv := map[string]string{"pulseaudio": "pa", "file": "wav"}[typ]
		if drv == "" {
			drv = typ
		}
		o := obj("id", id, "driver", drv)
		for _, dir := range []string{"input", "output"} {
			d := child(a, dir)
			if d == nil {
				continue
			}
			p := jobj{}
			if v := attr(d, "mixingEngine"); v != "" {
				p.add("mixing-engine", v == "yes")
			}
			if v := attr(d, "fixedSettings"); v != "" {
				p.add("fixed-settings", v == "yes")
			}
			if v := attr(d, "voices"); v != "" {
				p.add("voices", int(mustUint(v)))
			}
			if v := attr(d, "bufferLength"); v != "" {
				p.add("buffer-length", int(mustUint(v)))
			}
			if s := child(d, "settings"); s != nil {
				if v := attr(s, "frequency"); v != "" {
					p.add("frequency", int(mustUint(v)))
				}
				if v := attr(s, "channels"); v != "" {
					p.add("channels", int(mustUint(v)))
				}
				if v := attr(s, "format"); v != "" {
					p.add("format", v)
				}
			}
			if v := attr(d, "dev"); v != "" {
				p.add("dev", v)
			}
			if len(p) > 0 {
				o.add(map[string]string{"input": "in", "output": "out"}[dir], p)
			}
		}
		if typ == "file" {
			if p := attr(a, "path"); p != "" {
				o.add("path", p)
			}
		}
		if v := attr(a, "timerPeriod"); v != "" {
			o.add("timer-period", int(mustUint(v)))
		}
		b.add("-audiodev", o.String())
	}
	return nil
}

// videoDevice returns the QEMU device of a video model (primary or not).
func videoDevice(model string, primary bool) string {
	if primary {
		return map[string]string{"vga": "VGA", "cirrus": "cirrus-vga", "vmvga": "vmware-svga",
			"qxl": "qxl-vga", "virtio": "virtio-vga", "bochs": "bochs-display", "ramfb": "ramfb"}[model]
	}
	return map[string]string{"qxl": "qxl", "virtio": "virtio-gpu-pci", "bochs": "bochs-display", "ramfb": "ramfb"}[model]
}

func (b *builder) videos() error {
	for i, v := range children(b.devs, "video") {
		m := child(v, "model")
		typ := attr(m, "type")
		if typ == "none" {
			continue
		}
		drv := videoDevice(typ, i == 0)
		if drv == "" {
			if i > 0 {
				return errAt(v, "video model %q can only be the primary video device (secondary ones: qxl, virtio, bochs)", typ)
			}
			return unsupportedAt(v, "video model %q is not supported by QEMU on x86", typ)
		}
		if typ == "virtio" && i == 0 && !b.t.hasDevice("virtio-vga") {
			drv = "virtio-gpu-pci"
		}
		if a := child(m, "acceleration"); a != nil && attr(a, "accel3d") == "yes" && typ == "virtio" {
			drv = strings.Replace(strings.Replace(drv, "virtio-vga", "virtio-vga-gl", 1), "virtio-gpu-pci", "virtio-gpu-gl-pci", 1)
		}
		o := obj("driver", drv, "id", alias(v))
		switch typ {
		case "qxl":
			if r := attr(m, "ram"); r != "" {
				o.add("ram_size", mustUint(r)*1024)
			}
			if r := attr(m, "vram"); r != "" {
				o.add("vram_size", mustUint(r)*1024)
			}
			if r := attr(m, "vram64"); r != "" {
				o.add("vram64_size_mb", mustUint(r)/1024)
			}
			if r := attr(m, "vgamem"); r != "" {
				o.add("vgamem_mb", mustUint(r)/1024)
			}
			if h := attr(m, "heads"); h != "" {
				o.add("max_outputs", int(mustUint(h)))
			}
			videoResolution(&o, m)
		case "vga", "vmvga":
			if r := attr(m, "vgamem"); r != "" {
				o.add("vgamem_mb", mustUint(r)/1024)
			} else if r := attr(m, "vram"); r != "" && r != "16384" && typ == "vmvga" {
				o.add("vgamem_mb", mustUint(r)/1024)
			}
		case "bochs":
			if r := attr(m, "vram"); r != "" {
				o.add("vgamem", mustUint(r)*1024)
			}
		case "virtio":
			if h := attr(m, "heads"); h != "" && h != "1" {
				o.add("max_outputs", int(mustUint(h)))
			}
			videoResolution(&o, m)
			b.virtioOptions(&o, child(v, "driver"))
		}
		if typ != "ramfb" {
			b.addPCI(&o, v)
		}
		b.device(o)
	}
	return nil
}

func (b *builder) sounds() error {
	for _, s := range children(b.devs, "sound") {
		id := alias(s)
		aud := b.audioFor(s)
		switch model := attr(s, "model"); model {
		case "pcspk":
			continue // -machine pcspk-audiodev
		case "ich6", "ich9":
			drv := "intel-hda"
			if model == "ich9" {
				drv = "ich9-intel-hda"
			}
			o := obj("driver", drv, "id", id)
			b.addPCI(&o, s)
			b.device(o)
			codecs := children(s, "codec")
			if len(codecs) == 0 {
				b.device(obj("driver", "hda-duplex", "id", id+"-codec0", "bus", id+".0", "cad", 0, "audiodev", aud))
			}
			for i, c := range codecs {
				b.device(obj("driver", "hda-"+attr(c, "type"), "id", fmt.Sprintf("%s-codec%d", id, i), "bus", id+".0", "cad", i, "audiodev", aud))
			}
		case "ac97", "es1370":
			o := obj("driver", map[string]string{"ac97": "AC97", "es1370": "ES1370"}[model], "id", id, "audiodev", aud)
			b.addPCI(&o, s)
			b.device(o)
		case "sb16":
			b.device(obj("driver", "sb16", "id", id, "audiodev", aud))
		case "usb":
			o := obj("driver", "usb-audio", "id", id, "audiodev", aud)
			b.addUSB(&o, s)
			b.device(o)
		default:
			return unsupportedAt(s, "sound model %q is not available in QEMU 7.2", model)
		}
	}
	return nil
}

func (b *builder) watchdog() error {
	for _, w := range children(b.devs, "watchdog") {
		switch attr(w, "model") {
		case "i6300esb":
			o := obj("driver", "i6300esb", "id", alias(w))
			b.addPCI(&o, w)
			b.device(o)
		case "ib700":
			b.device(obj("driver", "ib700", "id", alias(w)))
		case "itco":
			if b.kind != machineQ35 {
				return unsupportedAt(w, "the iTCO watchdog exists only on q35 machines")
			}
			b.add("-global", "ICH9-LPC.noreboot=off")
		default:
			return unsupportedAt(w, "watchdog model %q is not available on x86", attr(w, "model"))
		}
		action := attrOr(w, "action", "reset")
		if action == "dump" {
			action = "pause" // the driver dumps on the WATCHDOG event
		}
		b.add("-watchdog-action", action)
	}
	return nil
}

func (b *builder) redirdevs() error {
	for _, r := range children(b.devs, "redirdev") {
		id, err := b.chardev(r, "char"+alias(r))
		if err != nil {
			return err
		}
		o := obj("driver", "usb-redir", "chardev", id, "id", alias(r))
		if f := b.usbRedirFilter(); f != "" {
			o.add("filter", f)
		}
		b.addUSB(&o, r)
		if bi, ok := b.bootIndex[r]; ok {
			o.add("bootindex", bi)
		}
		b.device(o)
	}
	return nil
}

func (b *builder) hostdevs() error {
	for _, h := range children(b.devs, "hostdev") {
		src := child(h, "source")
		var o jobj
		switch attr(h, "type") {
		case "pci":
			a := child(src, "address")
			host := fmt.Sprintf("%04x:%02x:%02x.%x", mustUint(attr(a, "domain")), mustUint(attr(a, "bus")),
				mustUint(attr(a, "slot")), mustUint(attr(a, "function")))
			o = obj("driver", "vfio-pci", "host", host, "id", alias(h))
			if bi, ok := b.bootIndex[h]; ok {
				o.add("bootindex", bi)
			}
			b.addPCI(&o, h)
		case "mdev":
			a := child(src, "address")
			o = obj("driver", "vfio-pci", "id", alias(h), "sysfsdev", "/sys/bus/mdev/devices/"+attr(a, "uuid"))
			if attr(h, "display") == "on" {
				o.add("display", "on")
			}
			b.addPCI(&o, h)
		case "usb":
			o = obj("driver", "usb-host")
			if a := child(src, "address"); a != nil {
				o.add("hostdevice", fmt.Sprintf("/dev/bus/usb/%03d/%03d", mustUint(attr(a, "bus")), mustUint(attr(a, "device"))))
			} else {
				if v := attr(child(src, "vendor"), "id"); v != "" {
					o.add("vendorid", int(mustUint(v)))
				}
				if p := attr(child(src, "product"), "id"); p != "" {
					o.add("productid", int(mustUint(p)))
				}
			}
			o.add("id", alias(h))
			b.addUSB(&o, h)
			if bi, ok := b.bootIndex[h]; ok {
				o.add("bootindex", bi)
			}
		case "scsi", "scsi_host":
			return unsupportedAt(h, "SCSI host device assignment is not supported by qemufs")
		default:
			return unsupportedAt(h, "host device type %q is not supported", attr(h, "type"))
		}
		b.device(o)
	}
	return nil
}

func (b *builder) memballoon() error {
	for _, m := range children(b.devs, "memballoon") {
		model := attr(m, "model")
		if model == "none" {
			continue
		}
		drv := map[string]string{"virtio": "virtio-balloon-pci", "virtio-transitional": "virtio-balloon-pci-transitional",
			"virtio-non-transitional": "virtio-balloon-pci-non-transitional"}[model]
		if drv == "" {
			return unsupportedAt(m, "memballoon model %q is not supported by QEMU", model)
		}
		o := obj("driver", drv, "id", alias(m))
		if v := attr(m, "autodeflate"); v != "" {
			o.add("deflate-on-oom", v == "on")
		}
		if v := attr(m, "freePageReporting"); v != "" {
			o.add("free-page-reporting", v == "on")
		}
		b.virtioOptions(&o, child(m, "driver"))
		b.addPCI(&o, m)
		b.device(o)
	}
	return nil
}

func (b *builder) rngs() error {
	for _, r := range children(b.devs, "rng") {
		be := child(r, "backend")
		objID := "obj" + alias(r)
		switch attr(be, "model") {
		case "random":
			path := trimText(be)
			if path == "" {
				path = "/dev/random"
			}
			b.object(obj("qom-type", "rng-random", "id", objID, "filename", path))
		case "builtin":
			b.object(obj("qom-type", "rng-builtin", "id", objID))
		case "egd":
			id, err := b.chardev(be, "char"+alias(r))
			if err != nil {
				return err
			}
			b.object(obj("qom-type", "rng-egd", "id", objID, "chardev", id))
		}
		drv := map[string]string{"virtio": "virtio-rng-pci", "virtio-transitional": "virtio-rng-pci-transitional",
			"virtio-non-transitional": "virtio-rng-pci-non-transitional"}[attr(r, "model")]
		o := obj("driver", drv, "rng", objID, "id", alias(r))
		if rate := child(r, "rate"); rate != nil {
			o.add("max-bytes", int(mustUint(attr(rate, "bytes"))))
			o.add("period", int(mustUint(attrOr(rate, "period", "1000"))))
		}
		b.virtioOptions(&o, child(r, "driver"))
		b.addPCI(&o, r)
		b.device(o)
	}
	return nil
}

func (b *builder) panic() error {
	for _, p := range children(b.devs, "panic") {
		switch attr(p, "model") {
		case "isa", "":
			io := 0x505
			if a := child(p, "address"); attr(a, "iobase") != "" {
				io = int(mustUint(attr(a, "iobase")))
			}
			b.device(obj("driver", "pvpanic", "ioport", io))
		case "pvpanic":
			o := obj("driver", "pvpanic-pci", "id", alias(p))
			b.addPCI(&o, p)
			b.device(o)
		case "hyperv":
			// -cpu hv-crash (see cpu), nothing else.
		default:
			return unsupportedAt(p, "panic model %q is not available on x86", attr(p, "model"))
		}
	}
	return nil
}

func (b *builder) shmems() error {
	for _, s := range children(b.devs, "shmem") {
		m := attrOr(child(s, "model"), "type", "ivshmem-plain")
		if m != "ivshmem-plain" {
			return unsupportedAt(s, "shmem model %q needs an ivshmem server; use ivshmem-plain", m)
		}
		kib, _ := memoryKiB(child(s, "size"))
		if kib == 0 {
			kib = 4096
		}
		memID := "shmmem-" + alias(s)
		b.object(obj("qom-type", "memory-backend-file", "id", memID, "mem-path", "/dev/shm/"+attr(s, "name"), "size", kib*1024, "share", true))
		o := obj("driver", "ivshmem-plain", "id", alias(s), "memdev", memID)
		b.addPCI(&o, s)
		b.device(o)
	}
	return nil
}

func (b *builder) memoryDevices() error {
	for _, m := range children(b.devs, "memory") {
		kib, _ := memoryKiB(find(m, "target", "size"))
		id := alias(m)
		memID := "mem" + id
		node := attr(find(m, "target", "node"), "")
		if n := trimText(find(m, "target", "node")); n != "" {
			node = n
		}
		switch attr(m, "model") {
		case "dimm":
			b.object(b.memBackend(memID, kib*1024, nil))
			o := obj("driver", "pc-dimm")
			if node != "" {
				o.add("node", int(mustUint(node)))
			}
			o.add("memdev", memID)
			o.add("id", id)
			if a := child(m, "address"); attr(a, "type") == "dimm" && attr(a, "slot") != "" {
				o.add("slot", int(mustUint(attr(a, "slot"))))
			}
			b.device(o)
		case "nvdimm":
			path := attr(find(m, "source"), "path")
			if path == "" {
				path = trimText(find(m, "source", "path"))
			}
			bo := obj("qom-type", "memory-backend-file", "id", memID, "mem-path", path, "share", attr(m, "access") == "shared", "size", kib*1024)
			b.object(bo)
			o := obj("driver", "nvdimm")
			if node != "" {
				o.add("node", int(mustUint(node)))
			}
			o.add("memdev", memID)
			o.add("id", id)
			b.device(o)
		case "virtio-pmem":
			path := trimText(find(m, "source", "path"))
			b.object(obj("qom-type", "memory-backend-file", "id", memID, "mem-path", path, "share", true, "size", kib*1024))
			o := obj("driver", "virtio-pmem-pci", "memdev", memID, "id", id)
			b.addPCI(&o, m)
			b.device(o)
		case "virtio-mem":
			b.object(b.memBackend(memID, kib*1024, nil))
			o := obj("driver", "virtio-mem-pci")
			if node != "" {
				o.add("node", int(mustUint(node)))
			}
			if bs := find(m, "target", "block"); bs != nil {
				v, _ := memoryKiB(bs)
				o.add("block-size", v*1024)
			}
			if rq := find(m, "target", "requested"); rq != nil {
				v, _ := memoryKiB(rq)
				o.add("requested-size", v*1024)
			}
			o.add("memdev", memID)
			o.add("id", id)
			b.addPCI(&o, m)
			b.device(o)
		default:
			return unsupportedAt(m, "memory device model %q is not supported", attr(m, "model"))
		}
	}
	return nil
}

func (b *builder) iommu() error {
	for _, io := range children(b.devs, "iommu") {
		dr := child(io, "driver")
		switch attr(io, "model") {
		case "intel":
			if b.kind != machineQ35 {
				return unsupportedAt(io, "the Intel IOMMU needs a q35 machine")
			}
			o := obj("driver", "intel-iommu", "id", alias(io))
			if v := attr(dr, "intremap"); v != "" {
				o.add("intremap", v)
			}
			if v := attr(dr, "caching_mode"); v != "" {
				o.add("caching-mode", v == "on")
			}
			if v := attr(dr, "eim"); v != "" {
				if v == "on" && b.accel() == "tcg" {
					return &Error{Path: pathOf(io) + "/driver", Msg: "eim='on' needs KVM's split irqchip (domain type 'qemu' uses TCG)", Err: ErrNeedsKVM}
				}
				o.add("eim", v)
			}
			if v := attr(dr, "iotlb"); v != "" {
				o.add("device-iotlb", v == "on")
			}
			if v := attr(dr, "aw_bits"); v != "" {
				o.add("aw-bits", int(mustUint(v)))
			}
			b.device(o)
		case "virtio":
			o := obj("driver", "virtio-iommu-pci", "id", alias(io))
			b.addPCI(&o, io)
			b.device(o)
		default:
			return unsupportedAt(io, "IOMMU model %q is not available on x86", attr(io, "model"))
		}
	}
	return nil
}

func (b *builder) vsock() error {
	for _, v := range children(b.devs, "vsock") {
		cid := child(v, "cid")
		o := obj("driver", "vhost-vsock-pci", "id", alias(v))
		if a := attr(cid, "address"); a != "" && attr(cid, "auto") != "yes" {
			o.add("guest-cid", int(mustUint(a)))
		} else {
			// libvirt picks a free CID at start; without one, derive a
			// stable CID from the UUID (>= 3).
			u := b.d.UUID()
			var h uint32 = 2166136261
			for i := 0; i < len(u); i++ {
				h = (h ^ uint32(u[i])) * 16777619
			}
			o.add("guest-cid", int(h%(1<<31-3))+3)
		}
		b.addPCI(&o, v)
		b.device(o)
	}
	return nil
}
