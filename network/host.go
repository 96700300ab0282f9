package network

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// run runs a host tool (ip, nft) and returns its error with its output.
func run(ctx context.Context, stdin string, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// linkExists tells whether a network interface exists in this network
// namespace (asked of the kernel: /sys may show another namespace's).
func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

// isBridge tells whether the interface is a Linux bridge.
func isBridge(name string) bool {
	out, err := exec.Command("ip", "-d", "-o", "link", "show", "dev", name).Output()
	return err == nil && strings.Contains(string(out), " bridge ")
}

// createBridge makes the network's bridge with its MAC and addresses, up.
func createBridge(ctx context.Context, n *Network) error {
	if linkExists(n.Bridge) {
		return fmt.Errorf("an interface named %s exists already on the host", n.Bridge)
	}
	if err := run(ctx, "", "ip", "link", "add", "name", n.Bridge, "address", n.MAC, "type", "bridge", "stp_state", "1", "forward_delay", "0"); err != nil {
		return err
	}
	for _, ip := range n.IPs {
		ones, _ := ip.Net.Mask.Size()
		if err := run(ctx, "", "ip", "addr", "add", fmt.Sprintf("%s/%d", ip.Address, ones), "dev", n.Bridge); err != nil {
			deleteLink(ctx, n.Bridge)
			return err
		}
	}
	if err := run(ctx, "", "ip", "link", "set", "dev", n.Bridge, "up"); err != nil {
		deleteLink(ctx, n.Bridge)
		return err
	}
	return nil
}

// deleteLink removes an interface (the bridge a network made).
func deleteLink(ctx context.Context, name string) error {
	if !linkExists(name) {
		return nil
	}
	return run(ctx, "", "ip", "link", "del", "dev", name)
}

// firewall returns the nftables table that gives a network its forwarding
// (libvirt's rules, in one table of qemufs's own so that removing the
// table removes exactly what was added), or "" when the network needs none.
func firewall(table string, n *Network) string {
	if n.Mode == ModeOpen || n.Mode == ModeBridge {
		return ""
	}
	var b strings.Builder
	br := n.Bridge
	fmt.Fprintf(&b, "table ip %s {\n", table)
	// DHCP and DNS from the guests to dnsmasq on the host.
	fmt.Fprintf(&b, "  chain input {\n    type filter hook input priority filter; policy accept;\n")
	fmt.Fprintf(&b, "    iifname %q udp dport { 53, 67 } accept\n    iifname %q tcp dport 53 accept\n  }\n", br, br)
	fmt.Fprintf(&b, "  chain forward {\n    type filter hook forward priority filter; policy accept;\n")
	fmt.Fprintf(&b, "    iifname %q oifname %q accept\n", br, br)
	for _, ip := range n.IPs {
		switch n.Mode {
		case ModeNAT:
			fmt.Fprintf(&b, "    oifname %q ip daddr %s ct state related,established accept\n", br, ip.Net)
			fmt.Fprintf(&b, "    iifname %q ip saddr %s accept\n", br, ip.Net)
		case ModeRoute:
			fmt.Fprintf(&b, "    oifname %q ip daddr %s accept\n", br, ip.Net)
			fmt.Fprintf(&b, "    iifname %q ip saddr %s accept\n", br, ip.Net)
		}
	}
	fmt.Fprintf(&b, "    iifname %q reject\n    oifname %q reject\n  }\n", br, br)
	if n.Mode == ModeNAT {
		fmt.Fprintf(&b, "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n")
		for _, ip := range n.IPs {
			// As libvirt: not for multicast and broadcast, and ports
			// kept in the unprivileged range.
			fmt.Fprintf(&b, "    ip saddr %s ip daddr 224.0.0.0/24 return\n", ip.Net)
			fmt.Fprintf(&b, "    ip saddr %s ip daddr 255.255.255.255 return\n", ip.Net)
			fmt.Fprintf(&b, "    meta l4proto { tcp, udp } ip saddr %s ip daddr != %s masquerade to :1024-65535\n", ip.Net, ip.Net)
			fmt.Fprintf(&b, "    ip saddr %s ip daddr != %s masquerade\n", ip.Net, ip.Net)
		}
		fmt.Fprintf(&b, "  }\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// addFirewall loads the network's table (replacing a stale one).
func addFirewall(ctx context.Context, table, rules string) error {
	if rules == "" {
		return nil
	}
	removeFirewall(ctx, table)
	return run(ctx, rules, "nft", "-f", "-")
}

// removeFirewall deletes the network's table, if it is there.
func removeFirewall(ctx context.Context, table string) error {
	if table == "" {
		return nil
	}
	if run(ctx, "", "nft", "list", "table", "ip", table) != nil {
		return nil
	}
	return run(ctx, "", "nft", "delete", "table", "ip", table)
}

// enableForwarding turns on IPv4 forwarding, as libvirt does for NAT and
// routed networks (and, like libvirt, never turns it off).
func enableForwarding() error {
	return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
}

// subnetInUse tells whether a host address or route overlaps subnet.
func subnetInUse(subnet *net.IPNet) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
			if ipn.Contains(subnet.IP) || subnet.Contains(ipn.IP) {
				return true
			}
		}
	}
	data, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 8 || f[1] == "00000000" {
			continue
		}
		dst, mask := hexIP(f[1]), hexIP(f[7])
		if dst == nil || mask == nil {
			continue
		}
		rn := &net.IPNet{IP: dst, Mask: net.IPMask(mask)}
		if rn.Contains(subnet.IP) || subnet.Contains(rn.IP) {
			return true
		}
	}
	return false
}

// hexIP decodes an address of /proc/net/route (little-endian hex).
func hexIP(s string) net.IP {
	var v uint32
	if _, err := fmt.Sscanf(s, "%08X", &v); err != nil {
		return nil
	}
	return net.IPv4(byte(v), byte(v>>8), byte(v>>16), byte(v>>24)).To4()
}

// Tap is a TAP device made for one guest interface.
type Tap struct {
	File *os.File // QEMU inherits it
	Name string   // the host interface (vnetN)
}

// OpenTap makes a TAP device for a guest NIC with MAC guestMAC, named name
// (or the next free vnetN when ""), and plugs it into bridge (when not ""). The device lives as long as an open file
// refers to it: it goes away with QEMU, as libvirt's do. Its own MAC is the
// guest's with the first byte 0xfe, as libvirt sets it, so the bridge never
// takes the guest's address.
func OpenTap(ctx context.Context, bridge, guestMAC, name string) (*Tap, error) {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap: %w", err)
	}
	var req struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	if name == "" {
		name = "vnet%d"
	}
	if len(name) >= unix.IFNAMSIZ {
		f.Close()
		return nil, fmt.Errorf("tap: interface name %q is longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	copy(req.name[:], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); e != 0 {
		f.Close()
		return nil, fmt.Errorf("tap: TUNSETIFF: %w", e)
	}
	name = string(bytes.TrimRight(req.name[:], "\x00"))
	t := &Tap{File: f, Name: name}
	args := []string{"link", "set", "dev", name}
	if hw, err := net.ParseMAC(guestMAC); err == nil && len(hw) == 6 {
		hw[0] = 0xfe
		args = append(args, "address", hw.String())
	}
	if bridge != "" {
		args = append(args, "master", bridge)
	}
	args = append(args, "up")
	if err := run(ctx, "", "ip", args...); err != nil {
		f.Close()
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	return t, nil
}
