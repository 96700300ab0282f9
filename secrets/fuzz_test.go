package secrets

import (
	"bytes"
	"testing"
)

// FuzzSecret feeds arbitrary secret XML to Parse: never a panic, and an
// accepted secret's XML parses back to the same XML.
func FuzzSecret(f *testing.F) {
	for _, s := range []string{
		`<secret ephemeral='no' private='yes'><uuid>0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f</uuid><usage type='volume'><volume>/var/lib/libvirt/images/luks.img</volume></usage></secret>`,
		`<secret private='no'><description>tls</description><usage type='tls'><name>t</name></usage></secret>`,
		`<secret><usage type='ceph'><name>client.admin</name></usage></secret>`,
		`<secret><usage type='vtpm'><name>v</name></usage></secret>`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			return
		}
		once := s.XML()
		s2, err := Parse(once)
		if err != nil {
			t.Fatalf("a secret's XML does not parse: %v\n%s", err, once)
		}
		if !bytes.Equal(s2.XML(), once) {
			t.Fatalf("XML round trip differs:\n%s\n---\n%s", once, s2.XML())
		}
	})
}
