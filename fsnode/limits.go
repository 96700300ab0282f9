package fsnode

import "fmt"

// maxDocument bounds what one open of an XML or command file
// (config.xml, snapshots/create, from-native) collects before it is
// defined: 4 MiB, a thousand times a large domain XML (libvirt's RPC caps
// a document at 4 MiB too). Past it a write fails with EFBIG and the
// buffer is dropped, so that a user writing 100 MiB, or one byte at an
// offset of a terabyte, costs the daemon at most this much memory.
const maxDocument = 4 << 20

// errTooBig is the reason recorded for EFBIG.
func errTooBig(what string) string {
	return fmt.Sprintf("%s: the document is larger than %d MiB; nothing was defined", what, maxDocument>>20)
}

// writeAt copies data into buf at off, growing buf as a file would; ok is
// false (and buf untouched) when the result would pass maxDocument.
func writeAt(buf, data []byte, off int64) (_ []byte, ok bool) {
	end := off + int64(len(data))
	if off < 0 || end > maxDocument {
		return buf, false
	}
	if end > int64(len(buf)) {
		buf = append(buf, make([]byte, end-int64(len(buf)))...)
	}
	copy(buf[off:], data)
	return buf, true
}
