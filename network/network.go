// Package network is qemufs's network driver, the analogue of libvirt's:
// libvirt network XML (NAT, routed, open, isolated, or an existing host
// bridge), a Linux bridge per network with its address, DHCP and DNS by
// one dnsmasq per network, nftables rules added and removed as a whole
// table, and the TAP devices that connect guests to the bridge.
package network

import (
	"crypto/rand"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// Forward modes, as <forward mode=...>; "" (no <forward>) is isolated.
const (
	ModeIsolated = ""
	ModeNAT      = "nat"
	ModeRoute    = "route"
	ModeOpen     = "open"
	ModeBridge   = "bridge"
)

// Network is one parsed and checked network definition.
type Network struct {
	doc *etree.Document

	Name   string
	UUID   string
	Mode   string // forward mode
	Bridge string // bridge name (created unless Mode is bridge)
	MAC    string // bridge MAC
	IPs    []IP   // IPv4 addresses of the bridge (one with DHCP at most)
	Domain string // DNS domain of the network's names
}

// IP is an <ip> of the network: the host's address on the bridge.
type IP struct {
	Address net.IP
	Net     *net.IPNet
	DHCP    []Range
	Hosts   []Host
}

// Range is a DHCP range.
type Range struct{ Start, End net.IP }

// Host is a static DHCP lease.
type Host struct {
	MAC, Name string
	IP        net.IP
}

// Error is a problem with a network definition.
type Error struct{ Msg string }

func (e *Error) Error() string { return e.Msg }

func errorf(format string, args ...any) error { return &Error{Msg: fmt.Sprintf(format, args...)} }

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$`)
	ifnameRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,15}$`)
	macRE    = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)
	uuidRE   = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)
)

// Parse reads and checks a network XML document. Elements qemufs does not
// act on (IPv6, <route>, <portgroup>, virtualport, bandwidth, ...) are
// refused, never silently dropped.
func Parse(data []byte) (*Network, error) {
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(data); err != nil {
		return nil, errorf("network XML: %v", err)
	}
	root := doc.Root()
	if root == nil || root.Tag != "network" {
		return nil, errorf("network XML: the root element must be <network>")
	}
	if err := noStrayText(root); err != nil {
		return nil, err
	}
	n := &Network{doc: doc}
	for _, c := range root.ChildElements() {
		switch c.Tag {
		case "name":
			n.Name = strings.TrimSpace(c.Text())
		case "uuid":
			n.UUID = strings.ToLower(strings.TrimSpace(c.Text()))
		case "forward":
			n.Mode = c.SelectAttrValue("mode", ModeNAT)
			for _, fc := range c.ChildElements() {
				if fc.Tag != "nat" {
					return nil, errorf("network %s: <forward><%s> is not supported by qemufs", n.Name, fc.Tag)
				}
			}
			if dev := c.SelectAttrValue("dev", ""); dev != "" {
				return nil, errorf("network %s: <forward dev=%q> is not supported: qemufs forwards through the host's routing table", n.Name, dev)
			}
		case "bridge":
			n.Bridge = c.SelectAttrValue("name", "")
			for _, a := range c.Attr {
				switch a.Key {
				case "name", "stp", "delay", "macTableManager":
				default:
					return nil, errorf("network %s: <bridge %s=...> is not supported", n.Name, a.Key)
				}
			}
		case "mac":
			n.MAC = strings.ToLower(c.SelectAttrValue("address", ""))
		case "domain":
			n.Domain = c.SelectAttrValue("name", "")
		case "ip":
			ip, err := parseIP(n.Name, c)
			if err != nil {
				return nil, err
			}
			n.IPs = append(n.IPs, ip)
		case "dns":
			for _, dc := range c.ChildElements() {
				return nil, errorf("network %s: <dns><%s> is not supported by qemufs (dnsmasq answers for the DHCP hosts' names)", n.Name, dc.Tag)
			}
		default:
			return nil, errorf("network %s: element <%s> is not supported by qemufs", n.Name, c.Tag)
		}
	}
	if err := n.check(); err != nil {
		return nil, err
	}
	return n, nil
}

// noStrayText refuses text beside child elements (`<network>junk<name>`),
// which no element of a network definition has and which would not
// survive being written back.
func noStrayText(e *etree.Element) error {
	kids := e.ChildElements()
	for _, c := range e.Child {
		if cd, ok := c.(*etree.CharData); ok && len(kids) > 0 && strings.TrimSpace(cd.Data) != "" {
			return errorf("network XML: unexpected text %q in <%s>", strings.TrimSpace(cd.Data), e.Tag)
		}
	}
	for _, k := range kids {
		if err := noStrayText(k); err != nil {
			return err
		}
	}
	return nil
}

func parseIP(name string, e *etree.Element) (IP, error) {
	if f := e.SelectAttrValue("family", "ipv4"); f != "ipv4" {
		return IP{}, errorf("network %s: <ip family=%q>: only IPv4 networks are supported", name, f)
	}
	addr := net.ParseIP(e.SelectAttrValue("address", "")).To4()
	if addr == nil {
		return IP{}, errorf("network %s: <ip address=%q> is not an IPv4 address", name, e.SelectAttrValue("address", ""))
	}
	var mask net.IPMask
	switch nm, pf := e.SelectAttrValue("netmask", ""), e.SelectAttrValue("prefix", ""); {
	case nm != "" && pf != "":
		return IP{}, errorf("network %s: <ip> has both netmask and prefix", name)
	case nm != "":
		m := net.ParseIP(nm).To4()
		if m == nil {
			return IP{}, errorf("network %s: <ip netmask=%q> is not a netmask", name, nm)
		}
		mask = net.IPMask(m)
		if ones, bits := mask.Size(); bits == 0 || ones == 0 {
			return IP{}, errorf("network %s: <ip netmask=%q> is not a netmask", name, nm)
		}
	default:
		if pf == "" {
			pf = "24"
		}
		p, err := strconv.Atoi(pf)
		if err != nil || p < 8 || p > 30 {
			return IP{}, errorf("network %s: <ip prefix=%q>: a prefix from 8 to 30 is needed", name, pf)
		}
		mask = net.CIDRMask(p, 32)
	}
	ip := IP{Address: addr, Net: &net.IPNet{IP: addr.Mask(mask), Mask: mask}}
	if ip.Address.Equal(ip.Net.IP) {
		return IP{}, errorf("network %s: <ip address=%s> is the network address of %s, not a host's", name, addr, ip.Net)
	}
	for _, c := range e.ChildElements() {
		if c.Tag != "dhcp" {
			return IP{}, errorf("network %s: <ip><%s> is not supported", name, c.Tag)
		}
		for _, d := range c.ChildElements() {
			switch d.Tag {
			case "range":
				r := Range{net.ParseIP(d.SelectAttrValue("start", "")).To4(), net.ParseIP(d.SelectAttrValue("end", "")).To4()}
				if r.Start == nil || r.End == nil || !ip.Net.Contains(r.Start) || !ip.Net.Contains(r.End) || ipLess(r.End, r.Start) {
					return IP{}, errorf("network %s: DHCP range %s-%s is not an ascending range inside %s",
						name, d.SelectAttrValue("start", ""), d.SelectAttrValue("end", ""), ip.Net)
				}
				if !ipLess(ip.Address, r.Start) && !ipLess(r.End, ip.Address) {
					return IP{}, errorf("network %s: DHCP range %s-%s contains the host's address %s", name, r.Start, r.End, ip.Address)
				}
				ip.DHCP = append(ip.DHCP, r)
			case "host":
				h := Host{MAC: strings.ToLower(d.SelectAttrValue("mac", "")), Name: d.SelectAttrValue("name", ""), IP: net.ParseIP(d.SelectAttrValue("ip", "")).To4()}
				if h.IP == nil || !ip.Net.Contains(h.IP) {
					return IP{}, errorf("network %s: DHCP host %q needs an ip inside %s", name, h.MAC+h.Name, ip.Net)
				}
				if h.MAC != "" && !macRE.MatchString(h.MAC) || h.MAC == "" && h.Name == "" {
					return IP{}, errorf("network %s: DHCP host with ip %s needs a valid mac or a name", name, h.IP)
				}
				ip.Hosts = append(ip.Hosts, h)
			default:
				return IP{}, errorf("network %s: <dhcp><%s> is not supported", name, d.Tag)
			}
		}
	}
	return ip, nil
}

func (n *Network) check() error {
	switch {
	case n.Name == "":
		return errorf("network XML: <name> is required")
	case !nameRE.MatchString(n.Name):
		return errorf("network name %q: use letters, digits and _ . + - (at most 64, not starting with . + -)", n.Name)
	case n.UUID != "" && !uuidRE.MatchString(n.UUID):
		return errorf("network %s: malformed UUID %q", n.Name, n.UUID)
	case n.Bridge != "" && !ifnameRE.MatchString(n.Bridge):
		return errorf("network %s: bridge name %q is not an interface name (at most 15 characters)", n.Name, n.Bridge)
	case n.MAC != "" && !macRE.MatchString(n.MAC):
		return errorf("network %s: malformed MAC address %q", n.Name, n.MAC)
	}
	switch n.Mode {
	case ModeIsolated, ModeNAT, ModeRoute, ModeOpen:
	case ModeBridge:
		if n.Bridge == "" {
			return errorf("network %s: <forward mode='bridge'> needs <bridge name='...'/>, an existing host bridge", n.Name)
		}
		if len(n.IPs) > 0 {
			return errorf("network %s: a network of an existing host bridge has no <ip> of its own", n.Name)
		}
	default:
		return errorf("network %s: forward mode %q is not supported (nat, route, open, bridge, or none for isolated)", n.Name, n.Mode)
	}
	if (n.Mode == ModeNAT || n.Mode == ModeRoute) && len(n.IPs) == 0 {
		return errorf("network %s: forward mode %q needs an <ip address=... prefix=...>", n.Name, n.Mode)
	}
	dhcp := 0
	for _, ip := range n.IPs {
		if len(ip.DHCP) > 0 || len(ip.Hosts) > 0 {
			dhcp++
		}
	}
	if dhcp > 1 {
		return errorf("network %s: DHCP on more than one <ip> is not supported", n.Name)
	}
	return nil
}

func ipLess(a, b net.IP) bool {
	a, b = a.To4(), b.To4()
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

// Expand fills what the definition leaves out: the UUID, the bridge name
// (from pickBridge, called only when none is given) and the bridge's MAC,
// writing them into the XML so they stay the same across restarts.
func (n *Network) Expand(pickBridge func() string) {
	root := n.doc.Root()
	if n.UUID == "" {
		n.UUID = newUUID()
		setChild(root, "uuid", 1).SetText(n.UUID)
	}
	if n.Bridge == "" && n.Mode != ModeBridge {
		n.Bridge = pickBridge()
		br := root.SelectElement("bridge")
		if br == nil {
			br = insertAfter(root, "bridge", "forward", "uuid", "name")
		}
		br.CreateAttr("name", n.Bridge)
		if br.SelectAttr("stp") == nil {
			br.CreateAttr("stp", "on")
		}
		if br.SelectAttr("delay") == nil {
			br.CreateAttr("delay", "0")
		}
	}
	if n.MAC == "" && n.Mode != ModeBridge {
		b := make([]byte, 3)
		rand.Read(b)
		n.MAC = fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
		insertAfter(root, "mac", "bridge", "forward", "uuid", "name").CreateAttr("address", n.MAC)
	}
}

// setChild returns root's child tag, created at index pos when missing.
func setChild(root *etree.Element, tag string, pos int) *etree.Element {
	if e := root.SelectElement(tag); e != nil {
		return e
	}
	e := etree.NewElement(tag)
	kids := root.ChildElements()
	if pos >= len(kids) {
		root.AddChild(e)
	} else {
		root.InsertChildAt(kids[pos].Index(), e)
	}
	return e
}

// insertAfter adds a new child tag right after the first of after that
// exists (or first).
func insertAfter(root *etree.Element, tag string, after ...string) *etree.Element {
	e := etree.NewElement(tag)
	for _, a := range after {
		if p := root.SelectElement(a); p != nil {
			root.InsertChildAt(p.Index()+1, e)
			return e
		}
	}
	root.InsertChildAt(0, e)
	return e
}

// XML is the definition as stored and shown, indented like libvirt's.
func (n *Network) XML() []byte {
	doc := n.doc.Copy()
	doc.WriteSettings.AttrSingleQuote = true
	doc.Indent(2)
	b, _ := doc.WriteToBytes()
	return b
}

// DHCPIP is the <ip> that serves DHCP, or nil.
func (n *Network) DHCPIP() *IP {
	for i := range n.IPs {
		if len(n.IPs[i].DHCP) > 0 || len(n.IPs[i].Hosts) > 0 {
			return &n.IPs[i]
		}
	}
	return nil
}

func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// DefaultXML is the `default` network of a system instance (libvirt's):
// NAT on subnet (a /24), DHCP for .2-.254.
func DefaultXML(subnet net.IP) []byte {
	s := subnet.To4()
	return []byte(fmt.Sprintf(`<network>
  <name>default</name>
  <forward mode='nat'/>
  <ip address='%d.%d.%d.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='%d.%d.%d.2' end='%d.%d.%d.254'/>
    </dhcp>
  </ip>
</network>
`, s[0], s[1], s[2], s[0], s[1], s[2], s[0], s[1], s[2]))
}
