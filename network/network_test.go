package network

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/internal/objtable"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		name, xml, err string
		check          func(t *testing.T, n *Network)
	}{
		{name: "nat", xml: `<network><name>default</name><forward mode='nat'/><ip address='192.168.122.1' netmask='255.255.255.0'><dhcp><range start='192.168.122.2' end='192.168.122.254'/><host mac='52:54:00:00:00:01' name='a' ip='192.168.122.9'/></dhcp></ip></network>`,
			check: func(t *testing.T, n *Network) {
				ip := n.DHCPIP()
				if n.Mode != ModeNAT || ip == nil || ip.Net.String() != "192.168.122.0/24" || len(ip.Hosts) != 1 {
					t.Errorf("parsed %+v", n)
				}
			}},
		{name: "forward without mode is nat", xml: `<network><name>n</name><forward/><ip address='10.0.0.1' prefix='8'/></network>`,
			check: func(t *testing.T, n *Network) {
				if n.Mode != ModeNAT {
					t.Errorf("mode %q", n.Mode)
				}
			}},
		{name: "isolated", xml: `<network><name>iso</name><ip address='10.1.0.1' prefix='16'/></network>`,
			check: func(t *testing.T, n *Network) {
				if n.Mode != ModeIsolated {
					t.Errorf("mode %q", n.Mode)
				}
			}},
		{name: "host bridge", xml: `<network><name>lan</name><forward mode='bridge'/><bridge name='br0'/></network>`},
		{name: "host bridge needs a name", xml: `<network><name>lan</name><forward mode='bridge'/></network>`, err: "needs <bridge name='...'/>"},
		{name: "host bridge has no ip", xml: `<network><name>lan</name><forward mode='bridge'/><bridge name='br0'/><ip address='10.0.0.1'/></network>`, err: "no <ip>"},
		{name: "nat needs ip", xml: `<network><name>n</name><forward mode='nat'/></network>`, err: "needs an <ip"},
		{name: "no name", xml: `<network><forward mode='nat'/></network>`, err: "<name> is required"},
		{name: "bad name", xml: `<network><name>a/b</name></network>`, err: "network name"},
		{name: "range outside", xml: `<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.1.2' end='10.0.1.9'/></dhcp></ip></network>`, err: "not an ascending range inside 10.0.0.0/24"},
		{name: "range backwards", xml: `<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.9' end='10.0.0.2'/></dhcp></ip></network>`, err: "ascending"},
		{name: "range holds host", xml: `<network><name>n</name><ip address='10.0.0.5' prefix='24'><dhcp><range start='10.0.0.2' end='10.0.0.9'/></dhcp></ip></network>`, err: "contains the host's address"},
		{name: "network address", xml: `<network><name>n</name><ip address='10.0.0.0' prefix='24'/></network>`, err: "is the network address"},
		{name: "prefix and netmask", xml: `<network><name>n</name><ip address='10.0.0.1' prefix='24' netmask='255.255.255.0'/></network>`, err: "both netmask and prefix"},
		{name: "ipv6 refused", xml: `<network><name>n</name><ip family='ipv6' address='fd00::1' prefix='64'/></network>`, err: "only IPv4"},
		{name: "unknown element refused", xml: `<network><name>n</name><bandwidth/></network>`, err: "<bandwidth> is not supported"},
		{name: "dns children refused", xml: `<network><name>n</name><dns><host ip='1.2.3.4'/></dns></network>`, err: "<dns><host> is not supported"},
		{name: "long bridge", xml: `<network><name>n</name><bridge name='abcdefghijklmnopq'/></network>`, err: "not an interface name"},
		{name: "bad mac", xml: `<network><name>n</name><mac address='zz'/></network>`, err: "malformed MAC"},
		{name: "not xml", xml: `<network>`, err: "network XML"},
		{name: "wrong root", xml: `<domain/>`, err: "root element must be <network>"},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, err := Parse([]byte(c.xml))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("Parse: %v, want an error with %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.check != nil {
				c.check(t, n)
			}
		})
	}
}

// TestExpandStable: the filled-in UUID, bridge and MAC are written into
// the XML, so that a re-parse keeps them (the same bridge after restarts).
func TestExpandStable(t *testing.T) {
	n, err := Parse(DefaultXML([]byte{192, 168, 122, 0}))
	if err != nil {
		t.Fatal(err)
	}
	n.Expand(func() string { return "virbr7" })
	n2, err := Parse(n.XML())
	if err != nil {
		t.Fatalf("expanded XML: %v\n%s", err, n.XML())
	}
	if n2.UUID != n.UUID || n2.Bridge != "virbr7" || n2.MAC != n.MAC || n2.UUID == "" || !strings.HasPrefix(n2.MAC, "52:54:00:") {
		t.Fatalf("after a round trip: %+v, before %+v", n2, n)
	}
	n2.Expand(func() string { t.Fatal("pickBridge called for a network that has one"); return "" })
	if string(n2.XML()) != string(n.XML()) {
		t.Fatalf("Expand is not idempotent:\n%s\n---\n%s", n.XML(), n2.XML())
	}
}

func TestFirewall(t *testing.T) {
	parse := func(x string) *Network {
		n, err := Parse([]byte(x))
		if err != nil {
			t.Fatal(err)
		}
		n.Expand(func() string { return "virbr1" })
		return n
	}
	for _, c := range []struct {
		name, xml     string
		want, notWant []string
	}{
		{"nat", `<network><name>a</name><forward mode='nat'/><ip address='10.9.0.1' prefix='24'/></network>`,
			[]string{"table ip T {", `iifname "virbr1" ip saddr 10.9.0.0/24 accept`, "ip saddr 10.9.0.0/24 ip daddr != 10.9.0.0/24 masquerade", "type nat hook postrouting"}, nil},
		{"route", `<network><name>a</name><forward mode='route'/><ip address='10.9.0.1' prefix='24'/></network>`,
			[]string{`oifname "virbr1" ip daddr 10.9.0.0/24 accept`}, []string{"masquerade"}},
		{"isolated", `<network><name>a</name><ip address='10.9.0.1' prefix='24'/></network>`,
			[]string{`iifname "virbr1" oifname "virbr1" accept`, `iifname "virbr1" reject`}, []string{"masquerade", "ip saddr 10.9.0.0/24 accept"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			rules := firewall("T", parse(c.xml))
			for _, w := range c.want {
				if !strings.Contains(rules, w) {
					t.Errorf("rules lack %q:\n%s", w, rules)
				}
			}
			for _, w := range c.notWant {
				if strings.Contains(rules, w) {
					t.Errorf("rules have %q:\n%s", w, rules)
				}
			}
		})
	}
	if r := firewall("T", parse(`<network><name>a</name><forward mode='open'/><ip address='10.9.0.1' prefix='24'/></network>`)); r != "" {
		t.Errorf("an open network got rules:\n%s", r)
	}
}

func TestDnsmasqConfigAndLeases(t *testing.T) {
	dir := t.TempDir()
	m := &Manager{opts: Options{RunDir: dir, LogDir: dir}}
	n, err := Parse([]byte(`<network><name>d</name><domain name='lab'/><ip address='10.5.0.1' prefix='24'><dhcp><range start='10.5.0.10' end='10.5.0.19'/><host mac='52:54:00:aa:bb:cc' name='web' ip='10.5.0.5'/></dhcp></ip></network>`))
	if err != nil {
		t.Fatal(err)
	}
	n.Expand(func() string { return "virbr3" })
	conf := m.dnsmasqConfig(n)
	for _, w := range []string{"interface=virbr3\n", "dhcp-range=10.5.0.10,10.5.0.19,255.255.255.0\n", "dhcp-host=52:54:00:aa:bb:cc,10.5.0.5,web\n",
		"dhcp-lease-max=11\n", "dhcp-leasefile=" + filepath.Join(dir, "d.leases") + "\n", "domain=lab\n", "except-interface=lo\n"} {
		if !strings.Contains(conf, w) {
			t.Errorf("dnsmasq config lacks %q:\n%s", w, conf)
		}
	}
	m.nets = objtable.New[*entry]("network", dir, &m.mu)
	e := newEntry("d")
	e.def = n
	m.nets.Put(e)
	os.WriteFile(m.leasesPath("d"), []byte("1796308689 52:54:00:59:70:dc 10.5.0.19 guest 01:52:54:00:59:70:dc\n1796308690 52:54:00:59:70:dd 10.5.0.18 * *\nduid 00:01:00:01\n"), 0o600)
	got, err := m.LeasesJSON("d")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"expiry":1796308689,"mac":"52:54:00:59:70:dc","ip":"10.5.0.19","hostname":"guest","clientId":"01:52:54:00:59:70:dc","prefix":24}` + "\n" +
		`{"expiry":1796308690,"mac":"52:54:00:59:70:dd","ip":"10.5.0.18","prefix":24}` + "\n"
	if string(got) != want {
		t.Errorf("leases:\n%s\nwant:\n%s", got, want)
	}
	if l, net, ok := m.LeaseFor("52:54:00:59:70:DD"); !ok || net != "d" || l.IP != "10.5.0.18" {
		t.Errorf("LeaseFor: %+v %q %v", l, net, ok)
	}
}
