package storage

import (
	"bytes"
	"testing"
)

// FuzzPool feeds arbitrary pool XML to ParsePool: never a panic, and an
// accepted pool's XML parses back to the same XML.
func FuzzPool(f *testing.F) {
	for _, s := range []string{
		`<pool type='dir'><name>p</name><target><path>/var/lib/images</path></target></pool>`,
		`<pool type='fs'><name>f</name><source><device path='/dev/loop0'/><format type='ext4'/></source><target><path>/mnt/p</path></target></pool>`,
		`<pool type='netfs'><name>n</name><source><host name='h'/><dir path='/x'/></source><target><path>/mnt/n</path></target></pool>`,
		`<pool type='logical'><name>vg</name><target><path>/dev/vg</path></target></pool>`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePool(data)
		if err != nil {
			return
		}
		once := p.XML(1, 2, 3)
		p2, err := ParsePool(once)
		if err != nil {
			t.Fatalf("a pool's XML does not parse: %v\n%s", err, once)
		}
		if !bytes.Equal(p2.XML(1, 2, 3), once) {
			t.Fatalf("XML round trip differs:\n%s\n---\n%s", once, p2.XML(1, 2, 3))
		}
	})
}

// FuzzVolume feeds arbitrary volume XML to ParseVolume: never a panic.
func FuzzVolume(f *testing.F) {
	for _, s := range []string{
		`<volume><name>a.qcow2</name><capacity unit='G'>1</capacity><target><format type='qcow2'/></target></volume>`,
		`<volume><name>b.img</name><capacity unit='MiB'>8</capacity><allocation>0</allocation><target><format type='raw'/><encryption format='luks'><secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption></target></volume>`,
		`<volume><name>c.qcow2</name><capacity>1073741824</capacity><backingStore><path>/i/base.qcow2</path><format type='qcow2'/></backingStore><target><format type='qcow2'/></target></volume>`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ParseVolume(data)
	})
}
