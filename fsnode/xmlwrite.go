package fsnode

import (
	"bytes"
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// xmlHandle is an open file that takes XML documents: config.xml (of a
// domain, a network...), snapshots/create, attach/detach/update. Writes
// collect a document written in pieces; it is committed as soon as it is
// whole (or hopelessly broken), so that the writer's own write(2) gets the
// answer where every shell reports it, or at the latest at close: Flush is
// the only hook whose error reaches close(2), and a second Flush (dup'd
// fds) commits nothing new.
type xmlHandle struct {
	commit func(ctx context.Context, doc []byte) error
	// snapshot is what reads return (the definition as it was at open);
	// nil for write-only files.
	snapshot []byte
	// part is the piece of the buffer that must be a whole document; nil:
	// all of it (requests put flag lines before the XML).
	part func([]byte) []byte
	// requests: every document is a request of its own; the handle starts
	// over after each, writes are appended (one open file may carry
	// several), and a close with nothing written commits nothing. A
	// definition (not requests) is replaced whole: writes land at their
	// offsets, and a truncation with nothing after it is committed (and
	// refused) as an empty document.
	requests bool
	// refuse records why a write was refused (may be nil), for the
	// object's error file.
	refuse func(msg string)

	mu     sync.Mutex
	buf    []byte
	dirty  bool // buf holds what was not committed yet
	tooBig bool // a write passed maxDocument: refused until truncated
}

var (
	_ fs.FileReader  = (*xmlHandle)(nil)
	_ fs.FileWriter  = (*xmlHandle)(nil)
	_ fs.FileFlusher = (*xmlHandle)(nil)
)

func (h *xmlHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultData(sliceAt(h.snapshot, off, len(dest))), 0
}

func (h *xmlHandle) truncate() {
	h.mu.Lock()
	h.buf, h.dirty, h.tooBig = h.buf[:0], !h.requests, false
	h.mu.Unlock()
}

// Write collects data; a document that would pass maxDocument is refused
// with EFBIG and dropped, so a huge or far-offset write costs the daemon
// no more than that.
func (h *xmlHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	buf, ok := h.buf, !h.tooBig
	switch {
	case !ok:
	case h.requests:
		if ok = len(buf)+len(data) <= maxDocument; ok {
			buf = append(buf, data...)
		}
	default:
		buf, ok = writeAt(buf, data, off)
	}
	if !ok {
		if !h.tooBig && h.refuse != nil {
			h.refuse(errTooBig("the document"))
		}
		h.buf, h.tooBig, h.dirty = nil, true, false
		return 0, syscall.EFBIG
	}
	h.buf = buf
	h.dirty = true
	doc := h.buf
	if h.part != nil {
		doc = h.part(doc)
	}
	if xmlComplete(doc) == xmlIncomplete {
		return uint32(len(data)), 0
	}
	if e := h.commitLocked(ctx); e != 0 {
		return 0, e
	}
	return uint32(len(data)), 0
}

// Flush commits what was written and not yet committed.
func (h *xmlHandle) Flush(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.dirty || h.requests && len(bytes.TrimSpace(h.buf)) == 0 {
		return 0
	}
	return h.commitLocked(ctx)
}

func (h *xmlHandle) commitLocked(ctx context.Context) syscall.Errno {
	doc := h.buf
	h.dirty = false
	if h.requests {
		h.buf = nil
	}
	return errno(h.commit(ctx, doc))
}
