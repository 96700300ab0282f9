package fsnode

import (
	"bytes"
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/qemufs/qemufs/driver"
)

// deviceHandle is an open attach, detach or update file: like ctl it is
// write-only and runs one request per write, but a request is a device
// XML (with optional flag lines before it), which may arrive in several
// writes: it runs as soon as the XML is complete, so the writer's
// write(2) gets the answer, or at the latest at close.
type deviceHandle struct {
	d    *driver.Driver
	name string
	op   string // attach, detach, update

	mu    sync.Mutex
	buf   []byte
	dirty bool
}

var (
	_ fs.FileWriter  = (*deviceHandle)(nil)
	_ fs.FileFlusher = (*deviceHandle)(nil)
)

func (dd *domainDir) openDevice(op string) opener {
	return func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		return &deviceHandle{d: dd.root.cfg.Driver, name: dd.name, op: op}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NONSEEKABLE, nil
	}
}

func (h *deviceHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf = append(h.buf, data...)
	h.dirty = true
	if xmlComplete(xmlPart(h.buf)) == xmlIncomplete {
		return uint32(len(data)), 0
	}
	if errno := h.run(ctx); errno != 0 {
		return 0, errno
	}
	return uint32(len(data)), 0
}

// Flush runs what was written and not yet run (an XML that never became
// complete gets its parse error here).
func (h *deviceHandle) Flush(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.dirty || len(bytes.TrimSpace(h.buf)) == 0 {
		return 0
	}
	return h.run(ctx)
}

// run sends the buffered request to the driver; the handle then starts
// over, so a writer can send another request on it.
func (h *deviceHandle) run(ctx context.Context) syscall.Errno {
	req := h.buf
	h.buf, h.dirty = nil, false
	ctx, cancel := userInterrupts(ctx)
	defer cancel()
	return errno(h.d.DeviceRequest(ctx, h.name, h.op, req))
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
