package domain

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/beevik/etree"
	"github.com/qemufs/qemufs/capabilities"
)

// Device is one device element of a definition: the one being attached,
// detached or updated. It is a view; it does not change the definition.
type Device struct {
	e *etree.Element
}

// Tag is the device class: disk, interface, controller, rng, serial, ...
func (v Device) Tag() string { return v.e.Tag }

// Alias is the device's alias (its QEMU id), "" when it has none.
func (v Device) Alias() string { return alias(v.e) }

// XML is the device element, formatted as in a definition.
func (v Device) XML() []byte {
	doc := etree.NewDocument()
	doc.SetRoot(v.e.Copy())
	doc.WriteSettings.AttrSingleQuote = true
	s := etree.NewIndentSettings()
	s.Spaces = 2
	s.PreserveLeafWhitespace = true
	s.SuppressTrailingWhitespace = true
	doc.IndentWithSettings(s)
	b, _ := doc.WriteToBytes()
	return append([]byte(strings.TrimSpace(string(b))), '\n')
}

// Disk returns the disk view of a <disk> device.
func (v Device) Disk() (Disk, bool) {
	if v.e.Tag != "disk" {
		return Disk{}, false
	}
	d := &Domain{root: etree.NewElement("domain")}
	d.root.CreateElement("devices").AddChild(v.e.Copy())
	return d.Disks()[0], true
}

// Chardev returns the character device view of a serial, console,
// parallel or channel device.
func (v Device) Chardev() (Chardev, bool) {
	switch v.e.Tag {
	case "serial", "console", "parallel", "channel":
		return chardevOf(v.e), true
	}
	return Chardev{}, false
}

// Interface returns the interface view of an <interface> device.
func (v Device) Interface() (Interface, bool) {
	if v.e.Tag != "interface" {
		return Interface{}, false
	}
	d := &Domain{root: etree.NewElement("domain")}
	d.root.CreateElement("devices").AddChild(v.e.Copy())
	return d.Interfaces()[0], true
}

// Describe names the device for messages: "disk vdb (virtio-disk1)".
func (v Device) Describe() string {
	s := v.e.Tag
	switch v.e.Tag {
	case "disk":
		s += " " + attr(child(v.e, "target"), "dev")
	case "interface":
		if m := attr(child(v.e, "mac"), "address"); m != "" {
			s += " " + m
		}
	case "controller":
		s += " " + attr(v.e, "type") + " " + attrOr(v.e, "index", "0")
	}
	if a := alias(v.e); a != "" {
		s += " (" + a + ")"
	}
	return s
}

// Hotpluggable reports whether QEMU can add the device to a running
// guest as qemufs builds it, and if not, why. PCI and USB devices,
// virtio-serial ports and SCSI disks can; ISA, IDE/SATA and the
// machine's fixed devices cannot.
func (v Device) Hotpluggable() error {
	e := v.e
	switch e.Tag {
	case "disk":
		switch bus := attr(child(e, "target"), "bus"); bus {
		case "virtio", "scsi", "usb":
		default:
			return errAt(child(e, "target"), "a disk on bus %q cannot be hot-plugged (use virtio, scsi or usb; cdrom and floppy media are changed with update)", bus)
		}
		switch attrOr(e, "type", "file") {
		case "file", "block", "network":
		default:
			return errAt(e, "a disk of type %q cannot be hot-plugged", attr(e, "type"))
		}
	case "interface":
		switch attr(e, "type") {
		case "user", "ethernet", "network", "bridge", "server", "client", "mcast", "udp", "null":
		default:
			return errAt(e, "an interface of type %q cannot be hot-plugged", attr(e, "type"))
		}
		if attr(child(e, "model"), "type") == "usb-net" {
			return nil
		}
	case "controller":
		switch attr(e, "type") {
		case "scsi", "virtio-serial", "usb":
		default:
			return errAt(e, "a %s controller cannot be hot-plugged (PCI controllers, IDE/SATA/FDC are fixed while the guest runs)", attr(e, "type"))
		}
	case "rng":
		if attr(child(e, "backend"), "model") == "egd" {
			return nil
		}
	case "serial":
		switch t := attr(child(e, "target"), "type"); t {
		case "pci-serial", "usb-serial":
		default:
			return errAt(child(e, "target"), "a serial port of target type %q cannot be hot-plugged (use target type pci-serial or usb-serial, or a virtio <channel>/<console>)", t)
		}
	case "channel", "console":
		if t := attr(child(e, "target"), "type"); t != "virtio" {
			return errAt(child(e, "target"), "a %s of target type %q cannot be hot-plugged (only virtio)", e.Tag, t)
		}
	default:
		return errAt(e, "<%s> devices cannot be hot-plugged (attach them with --config to a shut-off domain)", e.Tag)
	}
	return nil
}

// parseDevice reads one device element.
func parseDevice(data []byte) (*etree.Element, error) {
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, &Error{Msg: "empty device XML"}
	}
	if err := wellFormed(data); err != nil {
		return nil, err
	}
	doc := etree.NewDocument()
	doc.ReadSettings.Permissive = false
	if err := doc.ReadFromBytes(data); err != nil {
		return nil, &Error{Msg: "XML syntax error: " + err.Error()}
	}
	e := doc.Root()
	if e == nil {
		return nil, &Error{Msg: "no device element"}
	}
	if e.Space != "" {
		return nil, &Error{Msg: fmt.Sprintf("<%s>: a device element has no namespace", e.FullTag())}
	}
	if _, ok := deviceCheckers[e.Tag]; !ok && e.Tag != "alias" || e.Tag == "emulator" {
		return nil, &Error{Msg: fmt.Sprintf("<%s> is not a device (want <disk>, <interface>, <controller>, <rng>, <serial>, <channel>, <console>, ...)", e.Tag)}
	}
	doc.RemoveChild(e)
	return e, nil
}

// devicePointers is the set of device elements of d.
func devicePointers(d *Domain) map[*etree.Element]bool {
	m := map[*etree.Element]bool{}
	for _, e := range child(d.root, "devices").ChildElements() {
		m[e] = true
	}
	return m
}

// AddDevice returns a copy of d with the device of xml added, checked as a
// definition is (the device itself and against the others: duplicate
// targets, aliases, addresses) and expanded with the same rules as a
// definition (PCI address from the same allocator, alias, MAC), so that a
// definition holding it gets the same ABI. It also returns the device as
// expanded and what expansion added for it (a controller it needs), in
// document order. d is not changed.
func (d *Domain) AddDevice(xml []byte, caps *capabilities.Capabilities) (*Domain, Device, []Device, error) {
	e, err := parseDevice(xml)
	if err != nil {
		return nil, Device{}, nil, err
	}
	if e.Tag == "alias" {
		return nil, Device{}, nil, &Error{Msg: "<alias> names a device to detach; attach needs the device's XML"}
	}
	x := d.Clone()
	devs := ensure(x.root, "devices")
	before := devicePointers(x)
	place := insert(devs, e.Tag)
	i := place.Index()
	devs.RemoveChildAt(i)
	devs.InsertChildAt(i, e)
	if err := x.check(); err != nil {
		return nil, Device{}, nil, err
	}
	if err := Expand(x, caps); err != nil {
		return nil, Device{}, nil, err
	}
	if err := x.check(); err != nil {
		return nil, Device{}, nil, err
	}
	// Device models and backends the emulator lacks, as a define finds.
	if caps != nil {
		if err := x.Validate(caps); err != nil {
			return nil, Device{}, nil, err
		}
	}
	var implicit []Device
	for _, c := range devs.ChildElements() {
		if !before[c] && c != e {
			implicit = append(implicit, Device{c})
		}
	}
	return x, Device{e}, implicit, nil
}

// FindDevice finds the device of d that spec names: spec is a device
// XML, or just <alias name='...'/>. A device is named by its alias when
// spec has one; otherwise a disk by its target dev, an interface by its
// MAC, a controller by type and index, a channel by its target name, a
// serial or console by its target port, and any other class when d has
// only one device of it.
func (d *Domain) FindDevice(spec []byte) (Device, error) {
	e, err := parseDevice(spec)
	if err != nil {
		return Device{}, err
	}
	return d.findDevice(e)
}

func (d *Domain) findDevice(e *etree.Element) (Device, error) {
	devs := child(d.root, "devices")
	name := alias(e)
	if e.Tag == "alias" {
		name = attr(e, "name")
		if name == "" {
			return Device{}, &Error{Path: "alias", Msg: "attribute name is required"}
		}
	}
	if name != "" {
		for _, c := range devs.ChildElements() {
			if alias(c) == name && c.Tag != "console" || alias(c) == name && e.Tag == "console" {
				if e.Tag != "alias" && c.Tag != e.Tag {
					return Device{}, &Error{Msg: fmt.Sprintf("alias %q is a <%s>, not a <%s>", name, c.Tag, e.Tag)}
				}
				return Device{c}, nil
			}
		}
		return Device{}, &Error{Msg: fmt.Sprintf("no device has alias %q", name), Err: ErrNoSuchDevice}
	}
	var key func(c *etree.Element) bool
	var what string
	switch e.Tag {
	case "disk":
		dev := attr(child(e, "target"), "dev")
		if dev == "" {
			return Device{}, &Error{Path: "disk/target", Msg: "attribute dev is required to name the disk"}
		}
		what = "disk with target dev " + strconv.Quote(dev)
		key = func(c *etree.Element) bool { return attr(child(c, "target"), "dev") == dev }
	case "interface":
		mac := strings.ToLower(attr(child(e, "mac"), "address"))
		if mac == "" {
			return Device{}, &Error{Path: "interface", Msg: "<mac address=...> or <alias name=...> is required to name the interface"}
		}
		what = "interface with MAC " + mac
		key = func(c *etree.Element) bool { return strings.ToLower(attr(child(c, "mac"), "address")) == mac }
	case "controller":
		typ, idx := attr(e, "type"), attrOr(e, "index", "0")
		what = fmt.Sprintf("%s controller with index %s", typ, idx)
		key = func(c *etree.Element) bool { return attr(c, "type") == typ && attrOr(c, "index", "0") == idx }
	case "channel":
		n := attr(child(e, "target"), "name")
		what = "channel " + strconv.Quote(n)
		key = func(c *etree.Element) bool { return attr(child(c, "target"), "name") == n }
	case "serial", "console", "parallel":
		p := attrOr(child(e, "target"), "port", "0")
		what = e.Tag + " port " + p
		key = func(c *etree.Element) bool { return attrOr(child(c, "target"), "port", "0") == p }
	default:
		what = "<" + e.Tag + ">"
		key = func(*etree.Element) bool { return true }
	}
	var found []*etree.Element
	for _, c := range children(devs, e.Tag) {
		if key(c) {
			found = append(found, c)
		}
	}
	switch len(found) {
	case 0:
		return Device{}, &Error{Msg: "no " + what, Err: ErrNoSuchDevice}
	case 1:
		return Device{found[0]}, nil
	}
	return Device{}, &Error{Msg: fmt.Sprintf("%d devices match %s: name one by <alias name='...'/>", len(found), what)}
}

// ErrNoSuchDevice is wrapped by FindDevice's error when no device matches.
var ErrNoSuchDevice = fmt.Errorf("no such device")

// RemoveDevice returns a copy of d without the device spec names (see
// FindDevice), and that device.
func (d *Domain) RemoveDevice(spec []byte) (*Domain, Device, error) {
	x := d.Clone()
	v, err := x.FindDevice(spec)
	if err != nil {
		return nil, Device{}, err
	}
	v.e.Parent().RemoveChild(v.e)
	if v.e.Tag == "serial" {
		// The console that mirrors serial port 0 goes with it.
		for _, c := range children(child(x.root, "devices"), "console") {
			if attr(child(c, "target"), "type") == "serial" && alias(c) == alias(v.e) {
				c.Parent().RemoveChild(c)
			}
		}
	}
	return x, v, nil
}

// Change is what UpdateDevice changes in a running guest.
type Change struct {
	// Kind is "media" (a cdrom/floppy's source, "" source: eject) or
	// "link" (an interface's link state).
	Kind string
	// Old and New are the device before and after.
	Old, New Device
	// LinkUp is the new link state (Kind "link").
	LinkUp bool
}

// UpdateDevice returns a copy of d with the device spec names changed as
// spec says, and what changed. What can change: the media of a cdrom or
// floppy (its <source>, <driver type>, <backingStore>; no <source>
// ejects) and an interface's <link state='up|down'/>. Anything else is
// an error naming what cannot change.
func (d *Domain) UpdateDevice(spec []byte, caps *capabilities.Capabilities) (*Domain, Change, error) {
	e, err := parseDevice(spec)
	if err != nil {
		return nil, Change{}, err
	}
	x := d.Clone()
	v, err := x.findDevice(e)
	if err != nil {
		return nil, Change{}, err
	}
	old := Device{v.e.Copy()}
	var ch Change
	switch v.e.Tag {
	case "disk":
		dev := attrOr(v.e, "device", "disk")
		if dev != "cdrom" && dev != "floppy" {
			return nil, Change{}, &Error{Path: pathOf(v.e), Msg: fmt.Sprintf("only the media of a cdrom or floppy can change (this disk is device=%q)", dev)}
		}
		if t := attrOr(e, "type", attr(v.e, "type")); t != "file" && t != "block" {
			return nil, Change{}, &Error{Path: "disk", Msg: fmt.Sprintf("new media of type %q: want file or block", t)}
		}
		setAttr(v.e, "type", attrOr(e, "type", attr(v.e, "type")))
		for _, tag := range []string{"source", "backingStore"} {
			if c := child(v.e, tag); c != nil {
				v.e.RemoveChild(c)
			}
		}
		if src := child(e, "source"); src != nil {
			n := src.Copy()
			if t := child(v.e, "target"); t != nil {
				v.e.InsertChildAt(t.Index(), n)
			} else {
				v.e.AddChild(n)
			}
			if bs := child(e, "backingStore"); bs != nil {
				if t := child(v.e, "target"); t != nil {
					v.e.InsertChildAt(t.Index()+1, bs.Copy())
				}
			}
		}
		if ft := attr(child(e, "driver"), "type"); ft != "" {
			setAttr(ensureFirst(v.e, "driver"), "type", ft)
		} else if child(e, "source") != nil {
			setAttr(ensureFirst(v.e, "driver"), "type", "raw")
		}
		ch.Kind = "media"
	case "interface":
		l := child(e, "link")
		st := attr(l, "state")
		if st != "up" && st != "down" {
			return nil, Change{}, &Error{Path: "interface/link", Msg: "only the link state of an interface can change: want <link state='up'/> or <link state='down'/>"}
		}
		cur := child(v.e, "link")
		if cur == nil {
			cur = subInsert(v.e, "link", append([]string{"mtu", "rom"}, tail...)...)
		}
		setAttr(cur, "state", st)
		ch.Kind, ch.LinkUp = "link", st == "up"
	default:
		return nil, Change{}, &Error{Path: pathOf(v.e), Msg: fmt.Sprintf("a <%s> cannot be updated (update changes cdrom/floppy media and interface link state)", v.e.Tag)}
	}
	if err := x.check(); err != nil {
		return nil, Change{}, err
	}
	if err := Expand(x, caps); err != nil {
		return nil, Change{}, err
	}
	ch.Old, ch.New = old, Device{v.e}
	return x, ch, nil
}

func ensureFirst(e *etree.Element, tag string) *etree.Element {
	if c := child(e, tag); c != nil {
		return c
	}
	n := etree.NewElement(tag)
	e.InsertChildAt(0, n)
	return n
}

// QMPStep is one QMP command of a hot-plug, with the command that undoes
// it (Undo "" when none).
type QMPStep struct {
	Command  string
	Args     json.RawMessage
	Undo     string
	UndoArgs json.RawMessage
}

// HotplugOptions are what HotplugSteps needs besides the definition.
type HotplugOptions struct {
	// Command are the options the guest was started with (emulator,
	// directories), so the device is built as at start.
	Command CommandOptions
	// NodeBase numbers the new block nodes: they get numbers above it,
	// so they never clash with the guest's other nodes.
	NodeBase int
}

// HotplugSteps returns the QMP commands that add dev, a device of d
// (expanded, e.g. by AddDevice), to a running QEMU: blockdev-add,
// netdev_add, chardev-add, object-add for its backends, then device_add.
// The arguments are the ones the command line would carry for it (the
// same builders make them), so a hot-plugged device is the device a
// start would make. It also returns the block node names it uses, top
// node first, and the highest node number used.
func (d *Domain) HotplugSteps(dev Device, o HotplugOptions) ([]QMPStep, []string, int, error) {
	b, err := d.deviceBuilder(dev, o.Command)
	if err != nil {
		return nil, nil, 0, err
	}
	e := dev.e
	switch e.Tag {
	case "disk":
		b.nodeNext = o.NodeBase + b.countSources()
		err = b.disk(b.devs.ChildElements()[len(b.devs.ChildElements())-1])
	case "interface":
		err = b.nets()
	case "controller":
		err = b.controllers()
	case "rng":
		err = b.rngs()
	case "serial", "channel", "console":
		err = b.chardevs()
	default:
		err = errAt(e, "<%s> devices cannot be hot-plugged", e.Tag)
	}
	if err != nil {
		return nil, nil, 0, err
	}
	if !b.jsonDevice() {
		return nil, nil, 0, errAt(e, "hot-plug needs QEMU 6.2 or later (JSON device properties)")
	}
	id := alias(e)
	var steps []QMPStep
	var nodes []string
	high := o.NodeBase
	for i := 0; i+1 < len(b.args); i += 2 {
		opt, val := b.args[i], b.args[i+1]
		var s QMPStep
		switch opt {
		case "-blockdev":
			var m struct {
				Node string `json:"node-name"`
			}
			json.Unmarshal([]byte(val), &m)
			s = QMPStep{Command: "blockdev-add", Args: json.RawMessage(val), Undo: "blockdev-del", UndoArgs: mustJSON(map[string]string{"node-name": m.Node})}
			nodes = append([]string{m.Node}, nodes...)
			if n, ok := nodeNumber(m.Node); ok && n > high {
				high = n
			}
		case "-object":
			s = QMPStep{Command: "object-add", Args: json.RawMessage(val), Undo: "object-del", UndoArgs: mustJSON(map[string]string{"id": qomType(val, "id")})}
		case "-netdev":
			if !strings.HasPrefix(val, "{") {
				return nil, nil, 0, errAt(e, "this device's network backend (%s) cannot be hot-plugged", val)
			}
			s = QMPStep{Command: "netdev_add", Args: json.RawMessage(val), Undo: "netdev_del", UndoArgs: mustJSON(map[string]string{"id": qomType(val, "id")})}
		case "-chardev":
			args, err := chardevAdd(val)
			if err != nil {
				return nil, nil, 0, errAt(e, "%v", err)
			}
			s = QMPStep{Command: "chardev-add", Args: args, Undo: "chardev-remove", UndoArgs: mustJSON(map[string]string{"id": kvID(val)})}
		case "-device":
			did := qomType(val, "id")
			if e.Tag == "controller" && did != id {
				continue // another controller, already present
			}
			s = QMPStep{Command: "device_add", Args: json.RawMessage(val), Undo: "device_del", UndoArgs: mustJSON(map[string]string{"id": did})}
		default:
			return nil, nil, 0, errAt(e, "this device needs %s %s, which cannot be given at run time", opt, val)
		}
		steps = append(steps, s)
	}
	if len(steps) == 0 || steps[len(steps)-1].Command != "device_add" {
		return nil, nil, 0, errAt(e, "no device to add for %s", dev.Describe())
	}
	return steps, nodes, high, nil
}

// deviceBuilder is a command-line builder for d whose device list holds
// d's controllers and dev only: its steps then generate dev's arguments
// alone, resolving buses through the controllers.
func (d *Domain) deviceBuilder(dev Device, opts CommandOptions) (*builder, error) {
	if opts.VNCListen == "" {
		opts.VNCListen = "127.0.0.1"
	}
	if opts.LibDir == "" {
		opts.LibDir = opts.DomainDir
	}
	if opts.Home == "" {
		opts.Home = opts.DomainDir
	}
	x := d.Clone()
	full := child(x.root, "devices")
	sub := etree.NewElement("devices")
	for _, c := range children(full, "controller") {
		sub.AddChild(c.Copy())
	}
	b := &builder{d: x, t: newTarget(opts.Emulator), opts: opts, devs: sub, kind: kindOf(x.Machine()),
		overrides: map[string][]Override{}, bootIndex: map[*etree.Element]int{}, fdcBoot: map[int]int{}}
	if dev.e.Tag != "controller" {
		e := dev.e.Copy()
		sub.AddChild(e)
		// A per-device boot order is the device's bootindex, as at start.
		if bt := child(e, "boot"); bt != nil && len(children(child(x.root, "os"), "boot")) == 0 {
			n, _ := strconv.Atoi(attr(bt, "order"))
			b.bootIndex[e] = n
		}
	}
	for _, o := range x.QEMUOverrides() {
		b.overrides[o.Alias] = append(b.overrides[o.Alias], o)
	}
	return b, nil
}

// nodeNumber returns N of a node name libvirt-N-...
func nodeNumber(node string) (int, bool) {
	rest, ok := strings.CutPrefix(node, "libvirt-")
	if !ok {
		return 0, false
	}
	num, _, _ := strings.Cut(rest, "-")
	n, err := strconv.Atoi(num)
	return n, err == nil
}

// BlockNodes returns the block node names the command line of d (as
// BuildCommand makes it) gives each disk, by alias, top node first, and
// the highest node number used: what a hot-unplug must delete, and where
// new nodes start.
func BlockNodes(d *Domain, opts CommandOptions) (map[string][]string, int, error) {
	cmd, err := BuildCommand(d, opts)
	if err != nil {
		return nil, 0, err
	}
	out := map[string][]string{}
	var pending []string
	high := 0
	for i := 0; i+1 < len(cmd.Args); i++ {
		switch cmd.Args[i] {
		case "-blockdev":
			var m struct {
				Node string `json:"node-name"`
			}
			json.Unmarshal([]byte(cmd.Args[i+1]), &m)
			pending = append([]string{m.Node}, pending...)
			if n, ok := nodeNumber(m.Node); ok && n > high {
				high = n
			}
		case "-device":
			if len(pending) > 0 && qomType(cmd.Args[i+1], "drive") != "" {
				out[qomType(cmd.Args[i+1], "id")] = pending
			}
			pending = nil
		case "-object":
			// a disk's throttle group, between its nodes and its device
		default:
			if strings.HasPrefix(cmd.Args[i], "-") {
				pending = nil // nodes no disk device uses (firmware pflash)
			}
		}
	}
	return out, high, nil
}

// kvID returns the id= of a key=value option string.
func kvID(s string) string {
	for _, p := range splitKV(s) {
		if v, ok := strings.CutPrefix(p, "id="); ok {
			return v
		}
	}
	return ""
}

// splitKV splits a key=value option string at single commas (",," is an
// escaped comma).
func splitKV(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(out, cur.String())
}

// chardevAdd turns a -chardev option string, as the builder writes it,
// into chardev-add's arguments (QAPI ChardevBackend).
func chardevAdd(s string) (json.RawMessage, error) {
	parts := splitKV(s)
	backend := parts[0]
	kv := map[string]string{}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		kv[k] = v
	}
	on := func(k string) bool { return kv[k] == "on" }
	data := jobj{}
	typ := backend
	switch backend {
	case "null", "pty", "vc", "stdio":
	case "file":
		data.add("out", kv["path"])
		if _, ok := kv["append"]; ok {
			data.add("append", on("append"))
		}
	case "pipe", "tty", "parport":
		if backend == "tty" {
			typ = "serial"
		}
		data.add("device", kv["path"])
	case "socket":
		if p, ok := kv["path"]; ok {
			data.add("addr", obj("type", "unix", "data", obj("path", p)))
		} else {
			data.add("addr", obj("type", "inet", "data", obj("host", kv["host"], "port", kv["port"])))
		}
		data.add("server", on("server"))
		if _, ok := kv["wait"]; ok {
			data.add("wait", on("wait"))
		}
		if on("telnet") {
			data.add("telnet", true)
		}
		if r, ok := kv["reconnect"]; ok {
			n, _ := strconv.Atoi(r)
			data.add("reconnect", n)
		}
	case "udp":
		data.add("remote", obj("type", "inet", "data", obj("host", kv["host"], "port", kv["port"])))
		if kv["localaddr"] != "" || kv["localport"] != "" {
			data.add("local", obj("type", "inet", "data", obj("host", kv["localaddr"], "port", kv["localport"])))
		}
	case "spicevmc", "spiceport":
		if backend == "spicevmc" {
			data.add("type", kv["name"])
		} else {
			data.add("fqdn", kv["name"])
		}
	default:
		return nil, fmt.Errorf("a %s character device cannot be added at run time", backend)
	}
	if lf, ok := kv["logfile"]; ok {
		data.add("logfile", lf)
		if _, ok := kv["logappend"]; ok {
			data.add("logappend", on("logappend"))
		}
	}
	return mustJSON(obj("id", kv["id"], "backend", obj("type", typ, "data", data))), nil
}
