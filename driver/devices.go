package driver

import (
	"net"

	"github.com/qemufs/qemufs/domain"
)

// firstSerial says how to reach the guest's first serial port (or its
// first console, when it has no serial port), and the port's alias.
func firstSerial(def *domain.Domain) (src consoleSource, alias string, ok bool) {
	devs := def.Serials()
	if len(devs) == 0 {
		devs = def.Consoles()
	}
	if len(devs) == 0 {
		return consoleSource{}, "", false
	}
	c := devs[0]
	switch {
	case c.Type == "pty":
		return consoleSource{Kind: "pty"}, c.Alias, true
	case c.Type == "unix" && c.Mode == "bind" && c.Path != "":
		return consoleSource{Kind: "unix", Path: c.Path}, c.Alias, true
	case c.Type == "tcp" && c.Mode == "bind" && c.Service != "":
		host := c.Host
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		return consoleSource{Kind: "tcp", Path: net.JoinHostPort(host, c.Service)}, c.Alias, true
	}
	return consoleSource{}, "", false
}

// setSerialPTY records the pty QEMU allocated for the serial port alias
// (and the console mirroring it) in the live definition.
func setSerialPTY(live *domain.Domain, alias, path string) {
	live.SetChardevPath(alias, path)
}

// vncAutoport returns the VNC port of the first VNC display and whether
// qemufs must choose one (port -1 or autoport='yes'). A display on a UNIX
// socket has no port.
func vncAutoport(def *domain.Domain) (port int, auto bool) {
	for _, g := range def.Graphics() {
		if g.Type != "vnc" {
			continue
		}
		if g.Socket != "" {
			return 0, false
		}
		if g.AutoPort || g.Port < 0 {
			return 0, true
		}
		return g.Port, false
	}
	return 0, false
}

// spiceAutoport reports whether the first SPICE display needs a port
// chosen by qemufs (port -1 or autoport='yes'), as libvirt allocates it
// from the same range as VNC's.
func spiceAutoport(def *domain.Domain) bool {
	for _, g := range def.Graphics() {
		if g.Type == "spice" {
			return g.Socket == "" && (g.AutoPort || g.Port < 0)
		}
	}
	return false
}

// hasDisplay reports whether the guest has a display QEMU can dump: a
// video device other than type none, or graphics.
func hasDisplay(def *domain.Domain) bool {
	if len(def.Graphics()) > 0 {
		return true
	}
	devs := def.Root().SelectElement("devices")
	if devs == nil {
		return false
	}
	for _, v := range devs.SelectElements("video") {
		m := v.SelectElement("model")
		if m == nil || m.SelectAttrValue("type", "") != "none" {
			return true
		}
	}
	return false
}
