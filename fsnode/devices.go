package fsnode

import (
	"bytes"
	"context"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// openDevice opens an attach, detach or update file: like ctl it is
// write-only and runs one request per document, but a request is a device
// XML (with optional flag lines before it), which may arrive in several
// writes.
func (dd *domainDir) openDevice(op string) opener {
	d, name := dd.root.cfg.Driver, dd.name
	return func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		return &xmlHandle{requests: true, part: xmlPart, refuse: func(msg string) { d.RecordError(name, msg) }, commit: func(ctx context.Context, req []byte) error {
			ctx, cancel := userInterrupts(ctx)
			defer cancel()
			return d.DeviceRequest(withCaller(ctx), name, op, req)
		}}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NONSEEKABLE, nil
	}
}

// xmlPart is the request without its leading flag lines.
func xmlPart(b []byte) []byte {
	for {
		b = bytes.TrimLeft(b, " \t\r\n")
		if !bytes.HasPrefix(b, []byte("--")) {
			return b
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil
		}
		b = b[i+1:]
	}
}
