package domain

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// alias returns a device's alias (its QEMU id).
func alias(e *etree.Element) string { return attr(child(e, "alias"), "name") }

// pciBusName returns the QEMU bus name of PCI bus index idx.
func (b *builder) pciBusName(idx int) string {
	for _, c := range children(b.devs, "controller") {
		if attr(c, "type") == "pci" && attr(c, "index") == strconv.Itoa(idx) {
			switch attr(c, "model") {
			case "pcie-root":
				return "pcie.0" // QEMU's name, whatever the alias
			case "pci-root":
				return "pci.0"
			}
			if a := alias(c); a != "" {
				return a
			}
		}
	}
	return "pci." + strconv.Itoa(idx)
}

// addPCI adds bus/addr/multifunction of dev's PCI address to o.
func (b *builder) addPCI(o *jobj, dev *etree.Element) {
	p, ok := parsePCIAddr(child(dev, "address"))
	if !ok || !hasAttr(child(dev, "address"), "slot") {
		return
	}
	o.add("bus", b.pciBusName(p.Bus))
	if attr(child(dev, "address"), "multifunction") == "on" {
		o.add("multifunction", true)
	}
	o.add("addr", p.qemuAddr())
}

// addUSB adds bus/port of dev's USB address.
func (b *builder) addUSB(o *jobj, dev *etree.Element) {
	a := child(dev, "address")
	if a == nil || attr(a, "type") != "usb" {
		return
	}
	busIdx := attrOr(a, "bus", "0")
	name := "usb"
	for _, c := range children(b.devs, "controller") {
		if attr(c, "type") == "usb" && attr(c, "index") == busIdx {
			name = alias(c)
		}
	}
	o.add("bus", name+".0")
	if p := attr(a, "port"); p != "" {
		o.add("port", p)
	}
}

// controllerAlias returns the alias of controller type/index.
func (b *builder) controllerAlias(typ string, idx string) (string, *etree.Element) {
	for _, c := range children(b.devs, "controller") {
		if attr(c, "type") == typ && attrOr(c, "index", "0") == idx {
			return alias(c), c
		}
	}
	return typ + idx, nil
}

// blockNode is one -blockdev storage/format pair of a disk.
type blockNode struct {
	storage, format string
}

// nextNode allocates node names; libvirt counts down from the number of
// sources, so b.nodeNext is set to that total first.
func (b *builder) nextNode() blockNode {
	n := b.nodeNext
	b.nodeNext--
	return blockNode{fmt.Sprintf("libvirt-%d-storage", n), fmt.Sprintf("libvirt-%d-format", n)}
}

// diskHasSource reports whether a disk has media (an empty cdrom has not).
func diskHasSource(disk *etree.Element) bool {
	src := child(disk, "source")
	if src == nil {
		return false
	}
	switch attrOr(disk, "type", "file") {
	case "file":
		return attr(src, "file") != ""
	case "block":
		return attr(src, "dev") != ""
	case "dir":
		return attr(src, "dir") != ""
	}
	return true
}

// cacheFlags maps a libvirt cache mode to QEMU's (direct, no-flush) and
// the device's write-cache.
func cacheFlags(mode string) (direct, noFlush bool, writeCache string, set bool) {
	switch mode {
	case "none":
		return true, false, "on", true
	case "writethrough":
		return false, false, "off", true
	case "writeback":
		return false, false, "on", true
	case "directsync":
		return true, false, "off", true
	case "unsafe":
		return false, true, "on", true
	}
	return false, false, "", false
}

// storageNode builds the protocol -blockdev of a disk-like source.
func (b *builder) storageNode(disk, src *etree.Element, typ string, node string, readonly bool) (jobj, error) {
	dr := child(disk, "driver")
	var o jobj
	switch typ {
	case "file":
		o = obj("driver", "file", "filename", attr(src, "file"))
	case "block":
		drv := "host_device"
		if attr(disk, "device") == "cdrom" {
			drv = "host_cdrom"
		}
		o = obj("driver", drv, "filename", attr(src, "dev"))
	case "dir":
		o = obj("driver", "vvfat", "dir", attr(src, "dir"), "floppy", attr(disk, "device") == "floppy", "rw", !readonly)
	case "network":
		var err error
		o, err = networkStorage(src)
		if err != nil {
			return nil, errAt(src, "%v", err)
		}
	case "volume":
		return nil, unsupportedAt(disk, "disk of type 'volume' (pool %q, volume %q) was not resolved to its image: the driver does that at start from its storage pools", attr(src, "pool"), attr(src, "volume"))
	case "nvme":
		a := child(src, "address")
		o = obj("driver", "nvme", "device", fmt.Sprintf("%04x:%02x:%02x.%x", mustUint(attr(a, "domain")), mustUint(attr(a, "bus")),
			mustUint(attr(a, "slot")), mustUint(attr(a, "function"))), "namespace", mustUint(attrOr(src, "namespace", "1")))
	case "vhostuser":
		return nil, unsupportedAt(disk, "vhost-user disks need a vhost-user-blk server")
	default:
		return nil, errAt(disk, "unsupported disk type %q", typ)
	}
	o.add("node-name", node)
	if typ == "file" || typ == "block" {
		switch attr(dr, "io") {
		case "native":
			o.add("aio", "native")
		case "io_uring":
			o.add("aio", "io_uring")
		case "threads":
			o.add("aio", "threads")
		}
	}
	if direct, noFlush, _, ok := cacheFlags(attr(dr, "cache")); ok && typ != "network" {
		o.add("cache", obj("direct", direct, "no-flush", noFlush))
	}
	o.add("auto-read-only", true)
	if typ != "dir" {
		o.add("discard", "unmap")
	}
	return o, nil
}

// networkStorage builds the -blockdev of a network disk source.
func networkStorage(src *etree.Element) (jobj, error) {
	proto := attr(src, "protocol")
	name := attr(src, "name")
	hosts := children(src, "host")
	host, port := "", ""
	transport := "tcp"
	socket := ""
	if len(hosts) > 0 {
		host, port = attr(hosts[0], "name"), attr(hosts[0], "port")
		transport = attrOr(hosts[0], "transport", "tcp")
		socket = attr(hosts[0], "socket")
	}
	server := func(dflt string) jobj {
		if transport == "unix" {
			return obj("type", "unix", "path", socket)
		}
		if port == "" {
			port = dflt
		}
		return obj("type", "inet", "host", host, "port", port)
	}
	switch proto {
	case "nbd":
		o := obj("driver", "nbd", "server", server("10809"))
		if name != "" {
			o.add("export", name)
		}
		return o, nil
	case "http", "https", "ftp", "ftps":
		dflt := map[string]string{"http": "80", "https": "443", "ftp": "21", "ftps": "990"}[proto]
		if port == "" {
			port = dflt
		}
		u := url.URL{Scheme: proto, Host: host + ":" + port, Path: "/" + strings.TrimPrefix(name, "/")}
		if q := attr(src, "query"); q != "" {
			u.RawQuery = q
		}
		return obj("driver", proto, "url", u.String()), nil
	case "iscsi":
		target, lun := name, "0"
		if i := strings.LastIndex(name, "/"); i >= 0 {
			target, lun = name[:i], name[i+1:]
		}
		if port == "" {
			port = "3260"
		}
		n, _ := strconv.Atoi(lun)
		return obj("driver", "iscsi", "portal", host+":"+port, "target", target, "lun", n, "transport", "tcp"), nil
	case "gluster":
		vol, path := name, ""
		if i := strings.Index(name, "/"); i >= 0 {
			vol, path = name[:i], name[i+1:]
		}
		return obj("driver", "gluster", "volume", vol, "path", path, "server", []any{server("24007")}), nil
	case "rbd":
		pool, image := name, ""
		if i := strings.Index(name, "/"); i >= 0 {
			pool, image = name[:i], name[i+1:]
		}
		o := obj("driver", "rbd", "pool", pool, "image", image)
		var servers []any
		for _, h := range hosts {
			servers = append(servers, obj("host", attr(h, "name"), "port", attrOr(h, "port", "6789")))
		}
		if len(servers) > 0 {
			o.add("server", servers)
		}
		return o, nil
	case "ssh":
		if port == "" {
			port = "22"
		}
		return obj("driver", "ssh", "path", name, "server", obj("host", host, "port", port)), nil
	case "nfs":
		return obj("driver", "nfs", "server", obj("type", "inet", "host", host), "path", name), nil
	case "tftp":
		return nil, fmt.Errorf("protocol 'tftp' is not supported by QEMU 7.2's block layer")
	}
	return nil, fmt.Errorf("network disk protocol %q is not supported", proto)
}

// diskSources counts the storage sources of all disks, for node names.
func (b *builder) countSources() int {
	n := 0
	for _, disk := range children(b.devs, "disk") {
		if !diskHasSource(disk) {
			continue
		}
		n++
		for bs := child(disk, "backingStore"); bs != nil && child(bs, "source") != nil; bs = child(bs, "backingStore") {
			n++
		}
	}
	return n
}

func (b *builder) disks() error {
	b.nodeNext = b.countSources()
	// Floppy controller on q35 (i440fx has one built in).
	floppies := false
	for _, disk := range children(b.devs, "disk") {
		if attr(disk, "device") == "floppy" {
			floppies = true
		}
	}
	if floppies {
		if b.kind == machineQ35 {
			o := obj("driver", "isa-fdc")
			for _, u := range []int{0, 1} {
				if n, ok := b.fdcBoot[u]; ok {
					o.add(map[int]string{0: "bootindexA", 1: "bootindexB"}[u], n)
				}
			}
			b.device(o)
		} else {
			for _, u := range []int{0, 1} {
				if n, ok := b.fdcBoot[u]; ok {
					b.add("-global", fmt.Sprintf("isa-fdc.bootindex%s=%d", map[int]string{0: "A", 1: "B"}[u], n))
				}
			}
		}
	}
	for _, disk := range children(b.devs, "disk") {
		if err := b.disk(disk); err != nil {
			return err
		}
	}
	return nil
}

func (b *builder) disk(disk *etree.Element) error {
	dr := child(disk, "driver")
	t := child(disk, "target")
	bus := attr(t, "bus")
	device := attrOr(disk, "device", "disk")
	readonly := child(disk, "readonly") != nil || device == "cdrom"
	drive := ""
	if diskHasSource(disk) {
		// Backing chain first (deepest last), then the top image.
		type layer struct {
			e   *etree.Element
			typ string
			fmt string
		}
		layers := []layer{{disk, attrOr(disk, "type", "file"), attr(dr, "type")}}
		for bs := child(disk, "backingStore"); bs != nil && child(bs, "source") != nil; bs = child(bs, "backingStore") {
			layers = append(layers, layer{bs, attrOr(bs, "type", "file"), attr(child(bs, "format"), "type")})
		}
		nodes := make([]blockNode, len(layers))
		for i := range layers {
			nodes[i] = b.nextNode()
		}
		for i := len(layers) - 1; i >= 0; i-- {
			l := layers[i]
			ro := readonly || i > 0
			st, err := b.storageNode(disk, child(l.e, "source"), l.typ, nodes[i].storage, ro)
			if err != nil {
				return err
			}
			format := l.fmt
			if format == "" || format == "aio" {
				format = "raw"
			}
			if format == "fat" || format == "dir" {
				format = "raw"
			}
			if format == "iso" {
				format = "raw"
			}
			var top *etree.Element
			if i == 0 {
				top = disk
			}
			var encrypt jobj
			if enc := diskEncryption(l.e, top); enc != nil {
				luks, e, err := b.encryptionSecret(enc, format, nodes[i].format+"-encryption-secret0", diskSource(l.e))
				if err != nil {
					return err
				}
				if luks {
					format = "luks"
				}
				encrypt = e
			}
			f := obj("node-name", nodes[i].format, "read-only", ro)
			if i == 0 {
				if attr(dr, "discard") == "unmap" {
					f.add("discard", "unmap")
				}
				switch attr(dr, "detect_zeroes") {
				case "on", "unmap":
					dz := attr(dr, "detect_zeroes")
					if dz == "unmap" && attr(dr, "discard") != "unmap" {
						dz = "on"
					}
					f.add("detect-zeroes", dz)
				}
			}
			if direct, noFlush, _, ok := cacheFlags(attr(dr, "cache")); ok {
				f.add("cache", obj("direct", direct, "no-flush", noFlush))
			}
			// The secret object (if any) comes before the image's nodes.
			b.add("-blockdev", st.String())
			f.add("driver", format)
			if n, ok := metadataCacheBytes(l.e, i == 0); ok {
				if format != "qcow2" {
					return errAt(l.e, "<metadata_cache> is only for qcow2 images (this one is %s)", format)
				}
				f.add("cache-size", n)
			}
			if format == "luks" {
				f.add("key-secret", nodes[i].format+"-encryption-secret0")
			} else if encrypt != nil {
				f.add("encrypt", encrypt)
			}
			f.add("file", nodes[i].storage)
			if i < len(layers)-1 {
				f.add("backing", nodes[i+1].format)
			} else if (i > 0 || child(l.e, "backingStore") != nil) && hasBacking(format) {
				// Only formats with a backing file take "backing" (raw refuses it).
				f.add("backing", nil)
			}
			b.add("-blockdev", f.String())
		}
		drive = nodes[0].format
		if io := child(disk, "iotune"); io != nil && len(io.ChildElements()) > 0 {
			drive = b.throttle(disk, io, drive)
		}
		if attr(dr, "copy_on_read") == "on" {
			cor := "libvirt-CoR-" + alias(disk)
			b.add("-blockdev", obj("driver", "copy-on-read", "node-name", cor, "file", drive, "discard", "unmap").String())
			drive = cor
		}
	}
	o, err := b.diskDevice(disk, bus, device, drive)
	if err != nil {
		return err
	}
	if o != nil {
		b.device(o)
	}
	return nil
}

// hasBacking reports whether an image format can have a backing file.
func hasBacking(format string) bool {
	switch format {
	case "qcow2", "qcow", "qed", "vmdk", "cow":
		return true
	}
	return false
}

// iotuneLimits maps <iotune> children to QEMU's ThrottleLimits keys.
var iotuneLimits = [][2]string{
	{"total_bytes_sec", "bps-total"}, {"read_bytes_sec", "bps-read"}, {"write_bytes_sec", "bps-write"},
	{"total_iops_sec", "iops-total"}, {"read_iops_sec", "iops-read"}, {"write_iops_sec", "iops-write"},
	{"total_bytes_sec_max", "bps-total-max"}, {"read_bytes_sec_max", "bps-read-max"},
	{"write_bytes_sec_max", "bps-write-max"}, {"total_iops_sec_max", "iops-total-max"},
	{"read_iops_sec_max", "iops-read-max"}, {"write_iops_sec_max", "iops-write-max"},
	{"total_bytes_sec_max_length", "bps-total-max-length"}, {"read_bytes_sec_max_length", "bps-read-max-length"},
	{"write_bytes_sec_max_length", "bps-write-max-length"}, {"total_iops_sec_max_length", "iops-total-max-length"},
	{"read_iops_sec_max_length", "iops-read-max-length"}, {"write_iops_sec_max_length", "iops-write-max-length"},
	{"size_iops_sec", "iops-size"},
}

// throttle puts a disk's <iotune> limits on the command line: a
// throttle-group object (shared by disks with the same group_name) and a
// throttle filter node over the format node. It returns the node the
// device uses.
func (b *builder) throttle(disk, io *etree.Element, format string) string {
	group := trimText(child(io, "group_name"))
	id := "throttle-" + alias(disk)
	if group != "" {
		id = "throttle-group-" + group
	}
	if b.throttleGroups == nil {
		b.throttleGroups = map[string]bool{}
	}
	if !b.throttleGroups[id] {
		b.throttleGroups[id] = true
		limits := jobj{}
		for _, m := range iotuneLimits {
			if v := trimText(child(io, m[0])); v != "" {
				if n, err := parseUint(v); err == nil && n > 0 {
					limits.add(m[1], n)
				}
			}
		}
		b.object(obj("qom-type", "throttle-group", "id", id, "limits", limits))
	}
	node := "libvirt-" + strings.TrimSuffix(strings.TrimPrefix(format, "libvirt-"), "-format") + "-throttle"
	b.add("-blockdev", obj("driver", "throttle", "node-name", node, "throttle-group", id, "file", format).String())
	return node
}

// diskDevice builds the frontend -device of a disk.
func (b *builder) diskDevice(disk *etree.Element, bus, device, drive string) (jobj, error) {
	dr := child(disk, "driver")
	a := child(disk, "address")
	id := alias(disk)
	var o jobj
	ctl := attrOr(a, "controller", "0")
	unit := int(mustUint(attrOr(a, "unit", "0")))
	switch bus {
	case "ide", "sata":
		drv := "ide-hd"
		if device == "cdrom" {
			drv = "ide-cd"
		}
		if device == "disk" && child(disk, "readonly") != nil {
			return nil, errAt(disk, "readonly IDE/SATA disks are not supported by QEMU (use a cdrom or another bus)")
		}
		o = obj("driver", drv)
		if bus == "ide" {
			name, _ := b.controllerAlias("ide", ctl)
			o.add("bus", fmt.Sprintf("%s.%s", name, attrOr(a, "bus", "0")))
			o.add("unit", unit)
		} else {
			name, _ := b.controllerAlias("sata", ctl)
			o.add("bus", fmt.Sprintf("%s.%d", name, unit))
		}
	case "scsi":
		drv := "scsi-hd"
		switch device {
		case "cdrom":
			drv = "scsi-cd"
		case "lun":
			drv = "scsi-block"
		}
		name, c := b.controllerAlias("scsi", ctl)
		o = obj("driver", drv, "bus", name+".0")
		model := attr(c, "model")
		if strings.HasPrefix(model, "virtio") {
			o.add("channel", int(mustUint(attrOr(a, "bus", "0"))))
			o.add("scsi-id", int(mustUint(attrOr(a, "target", "0"))))
			o.add("lun", unit)
		} else {
			o.add("scsi-id", unit)
		}
		if device != "lun" {
			o.add("device_id", "drive-"+id)
		}
	case "virtio":
		if device == "lun" {
			return nil, unsupportedAt(disk, "SCSI passthrough over virtio-blk (device='lun' bus='virtio') was removed in QEMU 5.0; use bus='scsi' with a virtio-scsi controller")
		}
		drv := "virtio-blk-pci"
		switch attr(disk, "model") {
		case "virtio-transitional":
			drv = "virtio-blk-pci-transitional"
		case "virtio-non-transitional":
			drv = "virtio-blk-pci-non-transitional"
		}
		o = obj("driver", drv)
		if n := attr(dr, "iothread"); n != "" {
			o.add("iothread", "iothread"+n)
		}
		if q := attr(dr, "queues"); q != "" {
			o.add("num-queues", int(mustUint(q)))
		}
		if q := attr(dr, "queue_size"); q != "" {
			o.add("queue-size", int(mustUint(q)))
		}
		b.virtioOptions(&o, dr)
		b.addPCI(&o, disk)
	case "usb":
		if drive == "" {
			// usb-storage needs media; an empty USB CD-ROM is a
			// USB mass-storage bridge with a SCSI CD drive behind it.
			bot := obj("driver", "usb-bot", "id", id)
			b.addUSB(&bot, disk)
			b.device(bot)
			return obj("driver", "scsi-cd", "bus", id+".0", "scsi-id", 0, "lun", 0, "id", id+"-cd"), nil
		}
		o = obj("driver", "usb-storage")
		b.addUSB(&o, disk)
	case "fdc":
		o = obj("driver", "floppy", "unit", unit)
	default:
		return nil, errAt(child(disk, "target"), "disk bus %q is not supported on x86 QEMU", bus)
	}
	if drive != "" {
		o.add("drive", drive)
	}
	o.add("id", id)
	if n, ok := b.bootIndex[disk]; ok && bus != "fdc" {
		if bus == "usb" && drive == "" {
			return o, nil
		}
		o.add("bootindex", n)
	}
	diskGeometry(&o, disk, bus)
	if s := strings.TrimSpace(text(child(disk, "serial"))); s != "" && bus != "fdc" && bus != "usb" {
		o.add("serial", s)
	}
	if w := strings.TrimSpace(text(child(disk, "wwn"))); w != "" && (bus == "ide" || bus == "sata" || bus == "scsi") {
		n, err := strconv.ParseUint(strings.TrimPrefix(w, "0x"), 16, 64)
		if err != nil {
			return nil, errAt(child(disk, "wwn"), "malformed WWN %q", w)
		}
		o.add("wwn", n)
	}
	if bus == "scsi" {
		if v := text(child(disk, "vendor")); v != "" {
			o.add("vendor", v)
		}
		if p := text(child(disk, "product")); p != "" {
			o.add("product", p)
		}
	}
	if r := attr(child(disk, "target"), "rotation_rate"); r != "" && bus != "virtio" && bus != "usb" && bus != "fdc" {
		o.add("rotation_rate", int(mustUint(r)))
	}
	if bus == "usb" {
		if drive == "" {
			return o, nil
		}
		o.add("removable", attr(child(disk, "target"), "removable") == "on")
	}
	if _, _, wc, ok := cacheFlags(attr(dr, "cache")); ok && device != "cdrom" && bus != "fdc" && bus != "usb" && device != "lun" {
		o.add("write-cache", wc)
	}
	if child(disk, "shareable") != nil && drive != "" {
		o.add("share-rw", true)
	}
	switch attr(dr, "error_policy") {
	case "stop", "report", "ignore", "enospace":
		if bus != "fdc" && bus != "usb" {
			v := attr(dr, "error_policy")
			if v == "enospace" {
				v = "enospc"
			}
			o.add("werror", v)
			rp := attrOr(dr, "rerror_policy", v)
			if rp != "enospc" {
				o.add("rerror", rp)
			}
		}
	}
	if bs := child(disk, "blockio"); bs != nil {
		if v := attr(bs, "logical_block_size"); v != "" {
			o.add("logical_block_size", int(mustUint(v)))
		}
		if v := attr(bs, "physical_block_size"); v != "" {
			o.add("physical_block_size", int(mustUint(v)))
		}
	}
	return o, nil
}

// virtioOptions adds the common virtio device options of a <driver>.
func (b *builder) virtioOptions(o *jobj, dr *etree.Element) {
	for _, p := range [][2]string{{"ioeventfd", "ioeventfd"}, {"event_idx", "event_idx"},
		{"iommu", "iommu_platform"}, {"ats", "ats"}, {"packed", "packed"}, {"page_per_vq", "page-per-vq"}} {
		if v := attr(dr, p[0]); v != "" {
			o.add(p[1], v == "on")
		}
	}
	// QEMU refuses iommu_platform on a transitional device, which is what
	// a virtio PCI device on a conventional PCI bus is by default: make it
	// modern-only.
	if attr(dr, "iommu") == "on" {
		if d, _ := o.get("driver"); !strings.Contains(fmt.Sprint(d), "transitional") {
			o.add("disable-legacy", "on")
		}
	}
}
