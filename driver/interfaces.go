package driver

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/network"
)

// Lease is one DHCP lease a network handed out.
type Lease struct {
	MAC      string // the client's MAC address
	IP       string // the leased address
	Prefix   int    // the network's prefix length
	Hostname string // the client's name, if it sent one
}

// LeaseSource gives the current DHCP leases of a network by name. The
// networks driver is the source of a Driver made with Options.Networks;
// `interfaces` asks it for guests whose interfaces are <interface
// type='network'>.
type LeaseSource interface {
	Leases(ctx context.Context, network string) ([]Lease, error)
}

// SetLeaseSource makes src the source of DHCP leases for `interfaces`;
// nil removes it.
func (d *Driver) SetLeaseSource(src LeaseSource) {
	d.mu.Lock()
	d.leases = src
	d.mu.Unlock()
}

// networkLeases is the network driver as a LeaseSource.
type networkLeases struct{ m *network.Manager }

func (n networkLeases) Leases(ctx context.Context, name string) ([]Lease, error) {
	ls, err := n.m.Leases(name)
	if err != nil {
		return nil, err
	}
	out := make([]Lease, len(ls))
	for i, l := range ls {
		out[i] = Lease{MAC: l.MAC, IP: l.IP, Prefix: l.Prefix, Hostname: l.Hostname}
	}
	return out, nil
}

// arpPath is the host's ARP table (a variable for tests).
var arpPath = "/proc/net/arp"

// IfAddr is one line of `interfaces`: an address of a guest interface,
// as `virsh domifaddr` shows it.
type IfAddr struct {
	Name   string // the guest's name (agent) or the host's device (leases, ARP)
	MAC    string
	Proto  string // ipv4 or ipv6; "" for an interface without addresses
	Addr   string
	Prefix int
}

// String formats the line: NAME MAC PROTO ADDRESS/PREFIX, or NAME MAC N/A
// N/A for an interface without addresses (as virsh does).
func (a IfAddr) String() string {
	mac := a.MAC
	if mac == "" {
		mac = "-"
	}
	if a.Proto == "" {
		return fmt.Sprintf("%s %s N/A N/A", a.Name, mac)
	}
	return fmt.Sprintf("%s %s %s %s/%d", a.Name, mac, a.Proto, a.Addr, a.Prefix)
}

// Interfaces returns the addresses of a running guest's interfaces, one
// line each, from the first source that knows any: the guest agent (when
// the domain has its channel), the DHCP leases of its networks (when a
// lease source is registered), the host's ARP table (tap and bridge
// interfaces, by MAC). When the agent fails and no other source knows an
// address, its error is returned.
func (d *Driver) Interfaces(ctx context.Context, name string) ([]byte, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	r, err := dm.activeRun("interfaces")
	if err != nil {
		return nil, err
	}
	def := r.def()
	var agentErr error
	if _, ok := agentChannel(def); ok {
		addrs, err := d.agentInterfaces(ctx, r)
		if err == nil {
			return formatIfAddrs(addrs), nil
		}
		if Kind(err) == ErrInterrupted {
			return nil, err
		}
		agentErr = err
	}
	nics := guestNICs(def)
	if addrs, err := d.leaseAddrs(ctx, nics); err != nil {
		return nil, errorf(ErrIO, "interfaces %s: DHCP leases: %w", name, err)
	} else if len(addrs) > 0 {
		return formatIfAddrs(addrs), nil
	}
	addrs, err := arpAddrs(nics)
	if err != nil && agentErr == nil {
		return nil, errorf(ErrIO, "interfaces %s: ARP table: %w", name, err)
	}
	if len(addrs) > 0 {
		return formatIfAddrs(addrs), nil
	}
	if agentErr != nil {
		return nil, agentErr
	}
	return nil, nil
}

func formatIfAddrs(addrs []IfAddr) []byte {
	var b strings.Builder
	for _, a := range addrs {
		b.WriteString(a.String())
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// agentInterfaces asks the agent (guest-network-get-interfaces).
func (d *Driver) agentInterfaces(ctx context.Context, r *run) ([]IfAddr, error) {
	var ifs []struct {
		Name   string `json:"name"`
		HWAddr string `json:"hardware-address"`
		IPs    []struct {
			Type   string `json:"ip-address-type"`
			Addr   string `json:"ip-address"`
			Prefix int    `json:"prefix"`
		} `json:"ip-addresses"`
	}
	if err := d.agentExecute(ctx, r, "interfaces", "guest-network-get-interfaces", nil, &ifs); err != nil {
		return nil, err
	}
	var out []IfAddr
	for _, i := range ifs {
		if len(i.IPs) == 0 {
			out = append(out, IfAddr{Name: i.Name, MAC: i.HWAddr})
		}
		for _, ip := range i.IPs {
			out = append(out, IfAddr{Name: i.Name, MAC: i.HWAddr, Proto: ip.Type, Addr: ip.Addr, Prefix: ip.Prefix})
		}
	}
	return out, nil
}

// nic is a guest interface as the host sees it.
type nic struct {
	domain.Interface
	Dev string // the host-side device (<target dev>), "" when none
}

// name is how lease and ARP lines name the interface: the host device,
// else the alias.
func (n nic) name() string {
	if n.Dev != "" {
		return n.Dev
	}
	if n.Alias != "" {
		return n.Alias
	}
	return "-"
}

func guestNICs(def *domain.Domain) []nic {
	views := def.Interfaces()
	var devs []string
	if e := def.Root().SelectElement("devices"); e != nil {
		for _, i := range e.SelectElements("interface") {
			dev := ""
			if t := i.SelectElement("target"); t != nil {
				dev = t.SelectAttrValue("dev", "")
			}
			devs = append(devs, dev)
		}
	}
	out := make([]nic, len(views))
	for i, v := range views {
		out[i].Interface = v
		if i < len(devs) {
			out[i].Dev = devs[i]
		}
	}
	return out
}

// leaseAddrs asks the lease source for the leases of the guest's
// type='network' interfaces.
func (d *Driver) leaseAddrs(ctx context.Context, nics []nic) ([]IfAddr, error) {
	d.mu.Lock()
	src := d.leases
	d.mu.Unlock()
	if src == nil {
		return nil, nil
	}
	var out []IfAddr
	cache := map[string][]Lease{}
	for _, n := range nics {
		if n.Type != "network" || n.Source == "" || n.MAC == "" {
			continue
		}
		leases, seen := cache[n.Source]
		if !seen {
			var err error
			leases, err = src.Leases(ctx, n.Source)
			if err != nil {
				return nil, fmt.Errorf("network %s: %w", n.Source, err)
			}
			cache[n.Source] = leases
		}
		for _, l := range leases {
			if strings.EqualFold(l.MAC, n.MAC) {
				out = append(out, IfAddr{Name: n.name(), MAC: n.MAC, Proto: ipProto(l.IP), Addr: l.IP, Prefix: l.Prefix})
			}
		}
	}
	return out, nil
}

func ipProto(addr string) string {
	if ip := net.ParseIP(addr); ip != nil && ip.To4() == nil {
		return "ipv6"
	}
	return "ipv4"
}

// arpAddrs looks the MACs of the guest's tap-backed interfaces up in the
// host's ARP table (complete entries only). User-mode networking has no
// host-side ARP entries.
func arpAddrs(nics []nic) ([]IfAddr, error) {
	want := map[string]nic{}
	for _, n := range nics {
		switch n.Type {
		case "network", "bridge", "ethernet", "direct":
			if n.MAC != "" {
				want[strings.ToLower(n.MAC)] = n
			}
		}
	}
	if len(want) == 0 {
		return nil, nil
	}
	f, err := os.Open(arpPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []IfAddr
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		// IP address  HW type  Flags  HW address  Mask  Device
		fl := strings.Fields(sc.Text())
		if len(fl) < 6 || fl[2] == "0x0" {
			continue
		}
		if n, ok := want[strings.ToLower(fl[3])]; ok {
			out = append(out, IfAddr{Name: n.name(), MAC: n.MAC, Proto: "ipv4", Addr: fl[0], Prefix: 0})
		}
	}
	return out, sc.Err()
}
