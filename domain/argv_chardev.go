package domain

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/beevik/etree"
)

// chardev adds the -chardev backend of a character device element e
// (serial, console, channel, parallel, redirdev, smartcard, rng backend)
// with QEMU id, and returns the id.
func (b *builder) chardev(e *etree.Element, id string) (string, error) {
	typ := attrOr(e, "type", "pty")
	srcs := children(e, "source")
	var src *etree.Element
	if len(srcs) > 0 {
		src = srcs[0]
	}
	var s string
	switch typ {
	case "null":
		s = "null,id=" + id
	case "vc":
		s = "vc,id=" + id
	case "pty":
		s = "pty,id=" + id
	case "stdio":
		s = "stdio,id=" + id
	case "dev":
		kind := "tty"
		if e.Tag == "parallel" {
			kind = "parport"
		}
		s = kind + ",id=" + id + ",path=" + kvEscape(attr(src, "path"))
	case "file":
		s = "file,id=" + id + ",path=" + kvEscape(attr(src, "path"))
		if a := attr(src, "append"); a != "" {
			s += ",append=" + a
		}
	case "pipe":
		s = "pipe,id=" + id + ",path=" + kvEscape(attr(src, "path"))
	case "unix":
		path := attr(src, "path")
		if path == "" {
			// libvirt generates channel sockets in a per-domain directory.
			name := attr(child(e, "target"), "name")
			if name == "" {
				name = id
			}
			path = filepath.Join(b.opts.DomainDir, name)
		}
		s = "socket,id=" + id + ",path=" + kvEscape(path)
		if attrOr(src, "mode", "bind") == "bind" {
			s += ",server=on,wait=off"
		}
		if r := child(src, "reconnect"); r != nil && attr(r, "enabled") == "yes" {
			s += ",reconnect=" + attrOr(r, "timeout", "1")
		}
	case "tcp":
		host := attr(src, "host")
		s = "socket,id=" + id + ",host=" + host + ",port=" + attr(src, "service")
		proto := attr(child(e, "protocol"), "type")
		if proto == "telnet" || proto == "telnets" {
			s += ",telnet=on"
		}
		if attr(src, "mode") == "bind" {
			s += ",server=on,wait=off"
		}
		if r := child(src, "reconnect"); r != nil && attr(r, "enabled") == "yes" {
			s += ",reconnect=" + attrOr(r, "timeout", "1")
		}
	case "udp":
		var conn, bind *etree.Element
		for _, x := range srcs {
			if attr(x, "mode") == "bind" {
				bind = x
			} else {
				conn = x
			}
		}
		host := attr(conn, "host")
		if host == "" {
			host = "127.0.0.1"
		}
		s = "udp,id=" + id + ",host=" + host + ",port=" + attr(conn, "service")
		if bind != nil {
			if h := attr(bind, "host"); h != "" {
				s += ",localaddr=" + h
			}
			if p := attr(bind, "service"); p != "" {
				s += ",localport=" + p
			}
		}
	case "spicevmc":
		name := "vdagent"
		switch e.Tag {
		case "redirdev":
			name = "usbredir"
		case "smartcard":
			name = "smartcard"
		}
		s = "spicevmc,id=" + id + ",name=" + name
	case "spiceport":
		s = "spiceport,id=" + id + ",name=" + kvEscape(attr(src, "channel"))
	case "qemu-vdagent":
		s = "qemu-vdagent,id=" + id + ",name=vdagent"
		if c := attr(child(src, "clipboard"), "copypaste"); c != "" {
			s += ",clipboard=" + map[string]string{"yes": "on", "no": "off"}[c]
		}
		if m := attr(child(src, "mouse"), "mode"); m != "" {
			s += ",mouse=" + onoff(m == "client")
		}
	case "dbus":
		s = "dbus,id=" + id + ",name=" + kvEscape(attr(src, "channel"))
	case "nmdm":
		return "", unsupportedAt(e, "nmdm character devices exist only on FreeBSD")
	default:
		return "", errAt(e, "character device type %q is not supported", typ)
	}
	if lg := child(e, "log"); lg != nil {
		s += ",logfile=" + kvEscape(attr(lg, "file"))
		if a := attr(lg, "append"); a != "" {
			s += ",logappend=" + a
		}
	}
	b.add("-chardev", s)
	return id, nil
}

func (b *builder) chardevs() error {
	for _, s := range children(b.devs, "serial") {
		id, err := b.chardev(s, "char"+alias(s))
		if err != nil {
			return err
		}
		t := child(s, "target")
		switch attrOr(t, "type", "isa-serial") {
		case "isa-serial":
			b.device(obj("driver", "isa-serial", "chardev", id, "id", alias(s), "index", int(mustUint(attrOr(t, "port", "0")))))
		case "usb-serial":
			o := obj("driver", "usb-serial")
			b.addUSB(&o, s)
			o.add("chardev", id)
			o.add("id", alias(s))
			b.device(o)
		case "pci-serial":
			o := obj("driver", "pci-serial", "chardev", id, "id", alias(s))
			b.addPCI(&o, s)
			b.device(o)
		case "isa-debug":
			o := obj("driver", "isa-debugcon", "iobase", 0x402, "chardev", id, "id", alias(s))
			if a := child(s, "address"); attr(a, "type") == "isa" && attr(a, "iobase") != "" {
				o.set("iobase", int(mustUint(attr(a, "iobase"))))
			}
			b.device(o)
		default:
			return errAt(t, "serial target type %q is not supported on x86", attr(t, "type"))
		}
	}
	for _, p := range children(b.devs, "parallel") {
		id, err := b.chardev(p, "char"+alias(p))
		if err != nil {
			return err
		}
		b.device(obj("driver", "isa-parallel", "chardev", id, "id", alias(p), "index", int(mustUint(attrOr(child(p, "target"), "port", "0")))))
	}
	for _, c := range children(b.devs, "channel") {
		t := child(c, "target")
		switch attr(t, "type") {
		case "virtio":
			id, err := b.chardev(c, "char"+alias(c))
			if err != nil {
				return err
			}
			o := b.virtioSerialPort(c, "virtserialport", id)
			if n := attr(t, "name"); n != "" {
				o.add("name", n)
			} else if attr(c, "type") == "spicevmc" {
				o.add("name", "com.redhat.spice.0")
			}
			b.device(o)
		case "guestfwd":
			id, err := b.chardev(c, "char"+alias(c))
			if err != nil {
				return err
			}
			b.add("-netdev", fmt.Sprintf("user,guestfwd=tcp:%s:%s-chardev:%s,id=%s", attr(t, "address"), attr(t, "port"), id, alias(c)))
		default:
			return errAt(t, "channel target type %q is not supported", attr(t, "type"))
		}
	}
	for i, c := range children(b.devs, "console") {
		t := child(c, "target")
		switch attr(t, "type") {
		case "serial":
			if i == 0 {
				continue // the first serial port already provides it
			}
			return errAt(t, "only the first console can be a serial console")
		case "virtio":
			id, err := b.chardev(c, "char"+alias(c))
			if err != nil {
				return err
			}
			b.device(b.virtioSerialPort(c, "virtconsole", id))
		default:
			return unsupportedAt(t, "console target type %q is not supported on x86", attr(t, "type"))
		}
	}
	return nil
}

// virtioSerialPort builds a virtserialport/virtconsole at the device's
// virtio-serial address.
func (b *builder) virtioSerialPort(e *etree.Element, driver, chardev string) jobj {
	a := child(e, "address")
	ctl, _ := b.controllerAlias("virtio-serial", attrOr(a, "controller", "0"))
	// A virtio-serial device has one bus, ".0", whatever the address says.
	o := obj("driver", driver, "bus", ctl+".0", "nr", int(mustUint(attrOr(a, "port", "1"))),
		"chardev", chardev, "id", alias(e))
	return o
}

// hasSpice reports whether a SPICE display exists.
func (b *builder) hasSpice() bool {
	for _, g := range children(b.devs, "graphics") {
		if attr(g, "type") == "spice" {
			return true
		}
	}
	return false
}

func (b *builder) needsSpice(e *etree.Element) error {
	if (attr(e, "type") == "spicevmc" || attr(e, "type") == "spiceport") && !b.hasSpice() {
		return errAt(e, "a %s device requires a SPICE display (<graphics type='spice'>)", attr(e, "type"))
	}
	return nil
}

func (b *builder) spiceCheck() error {
	for _, tag := range []string{"serial", "parallel", "channel", "console", "redirdev", "smartcard"} {
		for _, e := range children(b.devs, tag) {
			if err := b.needsSpice(e); err != nil {
				return err
			}
		}
	}
	return nil
}

func trimText(e *etree.Element) string { return strings.TrimSpace(text(e)) }
