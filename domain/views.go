package domain

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/beevik/etree"
	"github.com/qemufs/qemufs/capabilities"
)

// Disk is a read-only view of one <disk>.
type Disk struct {
	Type      string // file, block, dir, network, volume, nvme, vhostuser
	Device    string // disk, cdrom, floppy, lun
	Source    string // host path (file/block/dir); protocol:name for network; pool/volume for volume
	Format    string // raw, qcow2, ... ("" when unset)
	Target    string // vda, hdc, ...
	Bus       string // virtio, ide, sata, scsi, usb, fdc
	ReadOnly  bool
	Shareable bool
	Alias     string
	// BackingStore lists the paths of an explicit backing chain.
	BackingStore []string
	// NoRelabel lists the security models of the source's
	// <seclabel relabel='no'> elements ("dac", "selinux"; no model
	// means both): the file is used as it is, not chowned or labeled.
	NoRelabel []string
}

// Disks returns the disks in document order.
func (d *Domain) Disks() []Disk {
	var out []Disk
	for _, e := range children(child(d.root, "devices"), "disk") {
		t := child(e, "target")
		bus := attr(t, "bus")
		if bus == "" {
			bus = busFromTarget(attr(t, "dev"))
		}
		dk := Disk{
			Type:      attrOr(e, "type", "file"),
			Device:    attrOr(e, "device", "disk"),
			Format:    attr(child(e, "driver"), "type"),
			Target:    attr(t, "dev"),
			Bus:       bus,
			ReadOnly:  child(e, "readonly") != nil || attrOr(e, "device", "disk") == "cdrom",
			Shareable: child(e, "shareable") != nil,
			Alias:     attr(child(e, "alias"), "name"),
		}
		dk.Source = diskSource(e)
		for _, l := range children(child(e, "source"), "seclabel") {
			if attr(l, "relabel") != "no" {
				continue
			}
			if m := attr(l, "model"); m != "" {
				dk.NoRelabel = append(dk.NoRelabel, m)
			} else {
				dk.NoRelabel = append(dk.NoRelabel, "dac", "selinux")
			}
		}
		for b := child(e, "backingStore"); b != nil; b = child(b, "backingStore") {
			if p := attr(child(b, "source"), "file") + attr(child(b, "source"), "dev"); p != "" {
				dk.BackingStore = append(dk.BackingStore, p)
			}
		}
		out = append(out, dk)
	}
	return out
}

// diskSource returns the host-side source of a disk-like element.
func diskSource(e *etree.Element) string {
	src := child(e, "source")
	switch attrOr(e, "type", "file") {
	case "file":
		return attr(src, "file")
	case "block":
		return attr(src, "dev")
	case "dir":
		return attr(src, "dir")
	case "network":
		return attr(src, "protocol") + ":" + attr(src, "name")
	case "volume":
		return attr(src, "pool") + "/" + attr(src, "volume")
	}
	return ""
}

func attrOr(e *etree.Element, key, dflt string) string {
	if v := attr(e, key); v != "" {
		return v
	}
	return dflt
}

// Chardev is a read-only view of a serial, parallel, console or channel
// device (and of a chardev-backed smartcard or redirdev).
type Chardev struct {
	Kind       string // serial, parallel, console, channel
	Type       string // pty, file, unix, tcp, udp, null, dev, pipe, stdio, ...
	Path       string // source path (pty path once known, file, socket, device)
	Mode       string // bind or connect for unix/tcp
	Host       string
	Service    string
	TargetType string // isa-serial, virtio, serial, guestfwd, ...
	TargetName string // channel name (org.qemu.guest_agent.0)
	Port       int    // target port
	Alias      string
	LogFile    string
}

func chardevOf(e *etree.Element) Chardev {
	src := child(e, "source")
	t := child(e, "target")
	c := Chardev{
		Kind:       e.Tag,
		Type:       attrOr(e, "type", "pty"),
		Path:       attr(src, "path"),
		Mode:       attr(src, "mode"),
		Host:       attr(src, "host"),
		Service:    attr(src, "service"),
		TargetType: attr(t, "type"),
		TargetName: attr(t, "name"),
		Alias:      attr(child(e, "alias"), "name"),
		LogFile:    attr(child(e, "log"), "file"),
	}
	if c.Type == "pty" && c.Path == "" {
		c.Path = attr(e, "tty")
	}
	c.Port, _ = strconv.Atoi(attr(t, "port"))
	return c
}

// Serials returns the serial ports.
func (d *Domain) Serials() []Chardev { return d.chardevs("serial") }

// Consoles returns the consoles. On x86 the first console of target type
// serial is serial port 0 and shares its alias.
func (d *Domain) Consoles() []Chardev { return d.chardevs("console") }

// Parallels returns the parallel ports.
func (d *Domain) Parallels() []Chardev { return d.chardevs("parallel") }

// Channels returns the channels.
func (d *Domain) Channels() []Chardev { return d.chardevs("channel") }

func (d *Domain) chardevs(tag string) []Chardev {
	var out []Chardev
	for _, e := range children(child(d.root, "devices"), tag) {
		out = append(out, chardevOf(e))
	}
	return out
}

// Graphics is a read-only view of one <graphics>.
type Graphics struct {
	Type     string // vnc, spice, sdl, egl-headless, dbus
	Port     int    // -1 or 0 when not chosen yet
	TLSPort  int
	AutoPort bool
	Listen   string // listen address ("" = the qemu.conf default)
	Socket   string // UNIX socket path (VNC/SPICE over a socket)
	// WebSocket is the VNC websocket port (-1 = auto, 0 = none).
	WebSocket int
	Passwd    string
}

// Graphics returns the graphics devices.
func (d *Domain) Graphics() []Graphics {
	var out []Graphics
	for _, e := range children(child(d.root, "devices"), "graphics") {
		g := Graphics{
			Type:     attr(e, "type"),
			AutoPort: attr(e, "autoport") == "yes",
			Listen:   attr(e, "listen"),
			Socket:   attr(e, "socket"),
			Passwd:   attr(e, "passwd"),
		}
		g.Port, _ = strconv.Atoi(attrOr(e, "port", "0"))
		g.TLSPort, _ = strconv.Atoi(attrOr(e, "tlsPort", "0"))
		g.WebSocket, _ = strconv.Atoi(attrOr(e, "websocket", "0"))
		if !hasAttr(e, "autoport") && (g.Port == -1 || !hasAttr(e, "port")) && g.Socket == "" {
			g.AutoPort = true
		}
		for _, l := range children(e, "listen") {
			switch attr(l, "type") {
			case "address":
				if g.Listen == "" {
					g.Listen = attr(l, "address")
				}
			case "socket":
				if g.Socket == "" {
					g.Socket = attr(l, "socket")
				}
			}
		}
		out = append(out, g)
	}
	return out
}

// Interface is a read-only view of one <interface>.
type Interface struct {
	Type   string // user, network, bridge, ethernet, ...
	MAC    string
	Model  string
	Source string // network name, bridge name, device, socket path
	Alias  string
	// TargetDev is the host interface (<target dev=...>), "" when unset.
	TargetDev string
	// Unmanaged is <target managed='no'>: the tap exists already.
	Unmanaged bool
	// Backend is <backend type=...> of a user-mode interface ("" is QEMU's
	// own, slirp; "passt").
	Backend string
	// PortForwards are the <portForward>s of a user-mode interface.
	PortForwards []PortForward
	// LinkState is <link state>: "up", "down", or "" (up).
	LinkState string
}

// PortForward is one <portForward>: host ports of Proto on Address (all
// addresses when "") forwarded to the guest.
type PortForward struct {
	Proto, Address string
	Ranges         []PortRange
}

// PortRange is a <portForward><range>: host ports Start..End (End 0: just
// Start) to guest ports from To (0: the same), or excluded from the others.
type PortRange struct {
	Start, End, To uint16
	Exclude        bool
}

// Interfaces returns the network interfaces.
func (d *Domain) Interfaces() []Interface {
	var out []Interface
	for _, e := range children(child(d.root, "devices"), "interface") {
		src := child(e, "source")
		out = append(out, Interface{
			Type:   attr(e, "type"),
			MAC:    attr(child(e, "mac"), "address"),
			Model:  attr(child(e, "model"), "type"),
			Source: attr(src, "network") + attr(src, "bridge") + attr(src, "dev") + attr(src, "path"),
			Alias:  attr(child(e, "alias"), "name"),

			TargetDev:    attr(child(e, "target"), "dev"),
			Unmanaged:    attr(child(e, "target"), "managed") == "no",
			Backend:      attr(child(e, "backend"), "type"),
			PortForwards: portForwards(e),
			LinkState:    attr(child(e, "link"), "state"),
		})
	}
	return out
}

func portForwards(e *etree.Element) []PortForward {
	var out []PortForward
	for _, pf := range children(e, "portForward") {
		f := PortForward{Proto: attr(pf, "proto"), Address: attr(pf, "address")}
		for _, r := range children(pf, "range") {
			f.Ranges = append(f.Ranges, PortRange{
				Start:   uint16(mustUint(attr(r, "start"))),
				End:     uint16(mustUint(attr(r, "end"))),
				To:      uint16(mustUint(attr(r, "to"))),
				Exclude: attr(r, "exclude") == "yes",
			})
		}
		out = append(out, f)
	}
	return out
}

// SetInterfaceTarget records the host interface a guest interface got
// (<target dev=...>), for live.xml.
func (d *Domain) SetInterfaceTarget(alias, dev string) {
	for _, e := range children(child(d.root, "devices"), "interface") {
		if attr(child(e, "alias"), "name") != alias {
			continue
		}
		subEnsure(e, "target", "model", "driver", "alias", "address").CreateAttr("dev", dev)
		return
	}
}

// SecLabel is one <seclabel> of the domain (libvirt's security label).
type SecLabel struct {
	Type       string // dynamic, static, none
	Model      string // selinux, apparmor, dac ("" = the first active model)
	Relabel    bool
	Label      string
	ImageLabel string
	BaseLabel  string
}

// SecLabels returns the domain-level security labels.
func (d *Domain) SecLabels() []SecLabel {
	var out []SecLabel
	for _, e := range children(d.root, "seclabel") {
		typ := attrOr(e, "type", "dynamic")
		relabel := attr(e, "relabel") != "no"
		if typ == "none" && !hasAttr(e, "relabel") {
			relabel = false
		}
		out = append(out, SecLabel{
			Type:       typ,
			Model:      attr(e, "model"),
			Relabel:    relabel,
			Label:      strings.TrimSpace(text(child(e, "label"))),
			ImageLabel: strings.TrimSpace(text(child(e, "imagelabel"))),
			BaseLabel:  strings.TrimSpace(text(child(e, "baselabel"))),
		})
	}
	return out
}

// SetSecLabels replaces the domain-level <seclabel> elements, e.g. with
// the labels the security stack generated for a running domain.
func (d *Domain) SetSecLabels(labels []SecLabel) {
	for _, e := range children(d.root, "seclabel") {
		d.root.RemoveChild(e)
	}
	var prev *etree.Element
	for _, l := range labels {
		var e *etree.Element
		if prev == nil {
			e = insert(d.root, "seclabel")
		} else {
			e = etree.NewElement("seclabel")
			d.root.InsertChildAt(prev.Index()+1, e)
		}
		prev = e
		setAttr(e, "type", l.Type)
		if l.Model != "" {
			setAttr(e, "model", l.Model)
		}
		if l.Type != "none" || l.Relabel {
			setAttr(e, "relabel", map[bool]string{true: "yes", false: "no"}[l.Relabel])
		}
		for _, p := range [][2]string{{"label", l.Label}, {"imagelabel", l.ImageLabel}, {"baselabel", l.BaseLabel}} {
			if p[1] != "" {
				e.CreateElement(p[0]).SetText(p[1])
			}
		}
	}
}

// HostPaths returns every host file the guest uses that the security layer
// must grant QEMU access to, with whether it is only read: disk sources
// and backing files, kernel/initrd/dtb, loader and NVRAM, chardev files
// and sockets, filesystem sources, TPM/RNG/shmem files.
func (d *Domain) HostPaths() []HostPath {
	var out []HostPath
	add := func(p string, ro bool, what string) {
		if p != "" && strings.HasPrefix(p, "/") {
			out = append(out, HostPath{Path: p, ReadOnly: ro, What: what})
		}
	}
	for _, dk := range d.Disks() {
		if dk.Type == "file" || dk.Type == "block" || dk.Type == "dir" {
			add(dk.Source, dk.ReadOnly, "disk "+dk.Target)
		}
		for _, b := range dk.BackingStore {
			add(b, true, "backing file of "+dk.Target)
		}
	}
	add(d.Kernel(), true, "kernel")
	add(d.Initrd(), true, "initrd")
	add(d.DTB(), true, "dtb")
	if l, ro := d.Loader(); l != "" {
		add(l, ro, "loader")
	}
	if n, t := d.NVRAM(); n != "" {
		add(n, false, "nvram")
		add(t, true, "nvram template")
	}
	devs := child(d.root, "devices")
	for _, tag := range []string{"serial", "parallel", "console", "channel"} {
		for _, e := range children(devs, tag) {
			c := chardevOf(e)
			switch c.Type {
			case "file", "dev", "unix", "pipe":
				add(c.Path, false, tag+" "+c.Alias)
			}
			add(c.LogFile, false, tag+" log")
		}
	}
	for _, f := range children(devs, "filesystem") {
		src := child(f, "source")
		add(attr(src, "dir")+attr(src, "file")+attr(src, "dev"), child(f, "readonly") != nil, "filesystem")
	}
	for _, p := range d.PstorePaths() {
		add(p, false, "pstore")
	}
	for _, r := range children(devs, "rng") {
		if b := child(r, "backend"); attr(b, "model") == "random" {
			add(strings.TrimSpace(b.Text()), true, "rng")
		}
	}
	return out
}

// HostPath is one host file a guest uses.
type HostPath struct {
	Path     string
	ReadOnly bool
	What     string // which device uses it, for messages
}

// ---- live mutators ----

// SetGraphicsPort records the port the first graphics device of type typ
// ("vnc", "spice") actually uses in the running domain (after autoport).
func (d *Domain) SetGraphicsPort(typ string, port int) error {
	return d.setGraphicsAttr(typ, "port", port)
}

// SetGraphicsTLSPort records the TLS port a SPICE display uses.
func (d *Domain) SetGraphicsTLSPort(typ string, port int) error {
	return d.setGraphicsAttr(typ, "tlsPort", port)
}

func (d *Domain) setGraphicsAttr(typ, key string, port int) error {
	for _, g := range children(child(d.root, "devices"), "graphics") {
		if attr(g, "type") == typ {
			setAttr(g, key, strconv.Itoa(port))
			return nil
		}
	}
	return fmt.Errorf("no %s graphics device", typ)
}

// SetGraphicsListen records the listen address the first graphics device
// of type typ uses.
func (d *Domain) SetGraphicsListen(typ, addr string) error {
	for _, g := range children(child(d.root, "devices"), "graphics") {
		if attr(g, "type") != typ {
			continue
		}
		setAttr(g, "listen", addr)
		if ls := children(g, "listen"); len(ls) > 0 && attr(ls[0], "type") == "address" {
			setAttr(ls[0], "address", addr)
		}
		return nil
	}
	return fmt.Errorf("no %s graphics device", typ)
}

// SetChardevPath sets the source path of the character device with the
// given alias (e.g. the pty QEMU allocated for "serial0"); for a pty the
// type attribute's tty is set too, as libvirt shows it. A console that
// shares the alias is updated as well.
func (d *Domain) SetChardevPath(alias, path string) error {
	found := false
	for _, tag := range []string{"serial", "parallel", "console", "channel"} {
		for _, e := range children(child(d.root, "devices"), tag) {
			if attr(child(e, "alias"), "name") != alias {
				continue
			}
			found = true
			src := child(e, "source")
			if src == nil {
				src = etree.NewElement("source")
				e.InsertChildAt(0, src)
			}
			setAttr(src, "path", path)
			if attrOr(e, "type", "pty") == "pty" {
				setAttr(e, "tty", path)
			}
		}
	}
	if !found {
		return fmt.Errorf("no character device with alias %q", alias)
	}
	return nil
}

// runtimeMeta returns <metadata><qemufs:runtime>, creating it.
func (d *Domain) runtimeMeta(create bool) *etree.Element {
	md := child(d.root, "metadata")
	if md == nil {
		if !create {
			return nil
		}
		md = ensure(d.root, "metadata")
	}
	for _, c := range md.ChildElements() {
		if c.Tag == "runtime" && c.NamespaceURI() == RuntimeNamespace {
			return c
		}
	}
	if !create {
		return nil
	}
	rt := md.CreateElement("qemufs:runtime")
	rt.CreateAttr("xmlns:qemufs", RuntimeNamespace)
	return rt
}

// AddTaint records a taint flag (libvirt's names: custom-monitor,
// custom-argv, custom-device, custom-hypervisor-feature, high-privileges,
// host-cpu, ...) in <metadata><qemufs:runtime>. Adding a flag twice is a
// no-op.
func (d *Domain) AddTaint(flag string) {
	for _, t := range d.Taints() {
		if t == flag {
			return
		}
	}
	rt := d.runtimeMeta(true)
	e := rt.CreateElement("taint")
	e.Space = rt.Space // the prefix the document binds to the runtime namespace
	e.CreateAttr("flag", flag)
}

// Taints returns the recorded taint flags.
func (d *Domain) Taints() []string {
	rt := d.runtimeMeta(false)
	var out []string
	for _, c := range rt.NotNil().ChildElements() {
		if c.Tag == "taint" {
			out = append(out, attr(c, "flag"))
		}
	}
	return out
}

// ClearRuntime removes the runtime metadata (taints), e.g. when a live
// definition becomes a persistent one again.
func (d *Domain) ClearRuntime() {
	rt := d.runtimeMeta(false)
	if rt == nil {
		return
	}
	md := rt.Parent()
	md.RemoveChild(rt)
	if len(md.ChildElements()) == 0 && strings.TrimSpace(md.Text()) == "" {
		d.root.RemoveChild(md)
	}
}

// ---- host validation ----

// Validate checks the definition against the host: the emulator binary
// exists and is executable, and (with caps) the arch, domain type and
// machine are available, via caps.Lookup. With caps == nil only the
// emulator file is checked. Errors wrap ErrUnsupported when the host
// cannot run an otherwise valid definition.
func (d *Domain) Validate(caps *capabilities.Capabilities) error {
	emu := d.Emulator()
	if emu != "" {
		st, err := os.Stat(emu)
		switch {
		case err != nil:
			return &Error{Path: "devices/emulator", Msg: fmt.Sprintf("emulator %s: %v", emu, unwrapPathErr(err))}
		case st.IsDir() || st.Mode().Perm()&0o111 == 0:
			return &Error{Path: "devices/emulator", Msg: fmt.Sprintf("emulator %s is not an executable file", emu)}
		}
	}
	if caps == nil {
		return nil
	}
	arch := d.Arch()
	if arch == "" {
		arch = caps.Host.Arch
	}
	machine := d.Machine()
	e, _, err := caps.Lookup(arch, d.Type(), machine, emu)
	if err != nil {
		return &Error{Path: "os/type", Msg: err.Error(), Err: ErrUnsupported}
	}
	// A confidential guest this host cannot protect is refused at define,
	// as libvirt's validation does (qemuValidateDomainDef), not only at start.
	if err := d.CheckLaunchSecurity(&caps.Host, e); err != nil {
		return err
	}
	// Device models the emulator lacks: generate the command line for
	// this emulator and check every -device and -object type. Errors
	// about what only this host lacks (host networking, ...) are left for
	// start time, as libvirt does; other argv errors are definition
	// errors.
	cmd, err := BuildCommand(d, CommandOptions{Emulator: e, DomainDir: "/run/qemufs-validate"})
	if err != nil {
		if errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrNotHonoured) {
			return nil
		}
		return err
	}
	if len(e.Devices) == 0 {
		return nil
	}
	for i := 0; i+1 < len(cmd.Args); i++ {
		var typ string
		switch cmd.Args[i] {
		case "-device":
			typ = qomType(cmd.Args[i+1], "driver")
		case "-object":
			typ = qomType(cmd.Args[i+1], "qom-type")
		default:
			continue
		}
		if typ != "" && !e.Devices[typ] {
			return &Error{Path: "devices", Msg: fmt.Sprintf("emulator %s has no device type %q (needed by %s %s)", e.Path, typ, cmd.Args[i], cmd.Args[i+1]), Err: ErrUnsupported}
		}
	}
	return nil
}

// qomType returns the type of a -device/-object argument (JSON or
// key=value).
func qomType(arg, key string) string {
	if strings.HasPrefix(arg, "{") {
		var m map[string]any
		if json.Unmarshal([]byte(arg), &m) == nil {
			s, _ := m[key].(string)
			return s
		}
		return ""
	}
	first, _, _ := strings.Cut(arg, ",")
	if k, v, ok := strings.Cut(first, "="); ok {
		if k == key {
			return v
		}
		return ""
	}
	return first
}

func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
