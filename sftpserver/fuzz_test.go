package sftpserver

import "testing"

// FuzzAttrs: the attributes a client sends (OPEN, SETSTAT, MKDIR) never
// crash the decoder, and what decodes encodes back to the same values.
func FuzzAttrs(f *testing.F) {
	for _, a := range []attrs{{}, {flags: attrSize, size: 5}, {flags: attrUIDGID | attrPermissions | attrACModTime, uid: 1, gid: 2, perm: 0o100644, atime: 3, mtime: 4}} {
		var e enc
		e.attrs(a)
		f.Add(e.b)
	}
	f.Add([]byte{0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 'k', 0, 0, 0, 1, 'v'})
	f.Fuzz(func(t *testing.T, b []byte) {
		d := dec{b: b}
		a := d.attrs()
		if d.err != nil {
			return
		}
		a.flags &^= attrExtended // not sent back
		var e enc
		e.attrs(a)
		d2 := dec{b: e.b}
		if got := d2.attrs(); d2.err != nil || got != a || len(d2.b) != 0 {
			t.Fatalf("attrs %+v encode and decode to %+v (%v, %d bytes left)", a, got, d2.err, len(d2.b))
		}
	})
}
