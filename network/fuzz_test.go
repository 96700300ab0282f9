package network

import (
	"bytes"
	"testing"
)

// FuzzNetwork feeds arbitrary network XML to Parse: never a panic, and an
// accepted network expands to XML that parses back to the same XML.
func FuzzNetwork(f *testing.F) {
	f.Add(DefaultXML([]byte{192, 168, 122, 0}))
	for _, s := range []string{
		`<network><name>iso</name><ip address='10.1.0.1' prefix='16'/></network>`,
		`<network><name>lan</name><forward mode='bridge'/><bridge name='br0'/></network>`,
		`<network><name>r</name><forward mode='route'/><domain name='lab'/><ip address='10.9.0.1' netmask='255.255.255.0'><dhcp><range start='10.9.0.10' end='10.9.0.20'/><host mac='52:54:00:00:00:01' name='a' ip='10.9.0.5'/></dhcp></ip></network>`,
		`<network><name>x</name><ip family='ipv6' address='fd00::1' prefix='64'/></network>`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := Parse(data)
		if err != nil {
			return
		}
		n.Expand(func() string { return "virbr9" })
		once := n.XML()
		n2, err := Parse(once)
		if err != nil {
			t.Fatalf("expanded XML does not parse: %v\n%s", err, once)
		}
		n2.Expand(func() string { t.Fatal("a second Expand picked a bridge"); return "" })
		if !bytes.Equal(n2.XML(), once) {
			t.Fatalf("expansion is not stable:\n%s\n---\n%s", once, n2.XML())
		}
		firewall("T", n)
	})
}
