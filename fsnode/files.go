package fsnode

import (
	"bytes"
	"context"
	"encoding/xml"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/qemufs/qemufs/driver"
	"github.com/qemufs/qemufs/stream"
)

// opener makes the handle for one open of a file.
type opener func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error)

// streamFlags mark endless, position-less files: no page cache, no seeking,
// and FOPEN_STREAM so that a blocked read does not hold the file position
// lock against a concurrent write on the same fd.
const streamFlags = fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NONSEEKABLE | fuse.FOPEN_STREAM

// sessionFlags are for monitor/qmp and monitor/hmp: direct I/O but
// seekable, because coreutils' head(1) calls lseek(fd, 0, SEEK_CUR) on a
// regular file after reading its line and reports ESPIPE as an error; the
// offset is ignored (a read returns one line at most, so line readers
// never need to seek back). The price: a read blocked on a reply holds the file
// position lock, so a writer sharing the same open file (a dup'd fd) waits
// for it; a session is used write-then-read, as `exec 3<>` scripts do.
const sessionFlags = fuse.FOPEN_DIRECT_IO

// fileNode is every regular file of the tree; what it does is in its
// opener and in the handle that returns.
type fileNode struct {
	fs.Inode
	root   *Root
	domain string // "" for files at the root
	perm   uint32
	open   opener
	size   func() uint64 // nil: shown as 0 (content made at open)
}

var (
	_ fs.NodeOpener    = (*fileNode)(nil)
	_ fs.NodeGetattrer = (*fileNode)(nil)
	_ fs.NodeSetattrer = (*fileNode)(nil)
)

func (n *fileNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.root.attr(&out.Attr, syscall.S_IFREG|n.root.cfg.Access.mode(n.perm))
	if n.size != nil {
		out.Size = n.size()
	}
	return 0
}

// Setattr accepts truncation to zero, which is how `>` arrives (go-fuse
// does not ask for atomic O_TRUNC), and refuses other changes.
func (n *fileNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok {
		if sz != 0 || n.perm&0o222 == 0 {
			return syscall.EPERM
		}
		if e := n.root.cfg.Access.allow(ctx, n.perm, 2); e != 0 {
			return e
		}
		if t, ok := f.(interface{ truncate() }); ok {
			t.truncate()
		}
	} else if in.Valid&(fuse.FATTR_MODE|fuse.FATTR_UID|fuse.FATTR_GID) != 0 {
		return syscall.EPERM
	}
	return n.Getattr(ctx, f, out)
}

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if e := n.root.cfg.Access.check(ctx, n.perm, flags); e != 0 {
		return nil, 0, e
	}
	if n.perm&0o222 == 0 && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EACCES
	}
	h, ff, err := n.open(ctx, flags)
	if err != nil {
		return nil, 0, errno(err)
	}
	return h, ff, 0
}

// snapshotFlags: content made at open, so no page cache; and no FLUSH
// request at close(2) (there is nothing to flush), which saves a round
// trip to the daemon on every `cat state`.
const snapshotFlags = fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH

// snapshot returns an opener that makes the content once per open.
func snapshot(content func(ctx context.Context) ([]byte, error)) opener {
	return func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		b, err := content(ctx)
		if err != nil {
			return nil, 0, err
		}
		return &bytesHandle{data: b}, snapshotFlags, nil
	}
}

// bytesHandle serves content fixed at open.
type bytesHandle struct{ data []byte }

var _ fs.FileReader = (*bytesHandle)(nil)

func (h *bytesHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultData(sliceAt(h.data, off, len(dest))), 0
}

func sliceAt(b []byte, off int64, n int) []byte {
	if off >= int64(len(b)) {
		return nil
	}
	b = b[off:]
	if len(b) > n {
		b = b[:n]
	}
	return b
}

// osFileHandle reads a real file (the log) by its path. It holds no
// descriptor between reads: an open handle of the tree must not cost the
// daemon an fd, or a user opening the log thousands of times would run the
// daemon out of them (tests/e2e/hostile_test.go). A read opens, reads at
// the offset and closes; a log replaced meanwhile is read from its new
// file, as tail -F would.
type osFileHandle struct{ path string }

var _ fs.FileReader = (*osFileHandle)(nil)

func (h *osFileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f, err := os.Open(h.path)
	if os.IsNotExist(err) {
		return fuse.ReadResultData(nil), 0
	}
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	defer f.Close()
	n, err := f.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

type xmlState int

const (
	xmlIncomplete xmlState = iota
	xmlDocument
	xmlBroken
)

// xmlComplete tells whether b holds a whole XML document, the start of
// one, or something that can never become one.
func xmlComplete(b []byte) xmlState {
	t := bytes.TrimSpace(b)
	if len(t) == 0 || t[len(t)-1] != '>' {
		return xmlIncomplete
	}
	dec := xml.NewDecoder(bytes.NewReader(t))
	depth, seenRoot := 0, false
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			if seenRoot && depth == 0 {
				return xmlDocument
			}
			return xmlIncomplete
		}
		if err != nil {
			if strings.Contains(err.Error(), "unexpected EOF") {
				return xmlIncomplete
			}
			return xmlBroken
		}
		switch tok.(type) {
		case xml.StartElement:
			if seenRoot && depth == 0 {
				return xmlBroken // a second root element
			}
			depth++
			seenRoot = true
		case xml.EndElement:
			depth--
		}
	}
}

// commandHandle runs each write as one command (a ctl file).
type commandHandle struct {
	run func(ctx context.Context, line string) error
}

var _ fs.FileWriter = (*commandHandle)(nil)

func (h *commandHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	ctx, cancel := userInterrupts(ctx)
	defer cancel()
	if err := h.run(ctx, string(data)); err != nil {
		return 0, errno(err)
	}
	return uint32(len(data)), 0
}

// lineStreamFlags are for the read-only JSON-per-line streams (events,
// monitor/events): like streamFlags but seekable, because coreutils'
// head(1) seeks after reading its lines and reports ESPIPE as an error
// ("cannot seek to relative offset 0"). The offset is ignored and a read
// returns one line at most, so a reader that reads ahead never needs to
// give bytes back. With no writer, the file position lock that a blocked
// read holds on a shared descriptor costs nothing but serial reads.
const lineStreamFlags = fuse.FOPEN_DIRECT_IO

// cursor counts the bytes moved through one open seekable stream (a
// monitor session, a line stream), which is where a reader that keeps its
// offset reads next: the kernel's file position locally, sshfs's offset
// remotely. A read beyond it is a read-ahead past a short read (sshfs
// splits a large read into several at increasing offsets, and waits for
// them all): it ends at once instead of waiting for data nobody has asked
// for yet.
type cursor struct{ n atomic.Int64 }

func (c *cursor) ahead(off int64) bool { return off > c.n.Load() }
func (c *cursor) moved(n int)          { c.n.Add(int64(n)) }

// lineStreamHandle follows a JSON-per-line stream like tail -f, one line
// per read.
type lineStreamHandle struct {
	rd  *stream.Reader
	mu  chan struct{} // one read at a time: rd is not safe for concurrent use
	pos cursor
}

var _ fs.FileReader = (*lineStreamHandle)(nil)

func newLineStream(rd *stream.Reader) *lineStreamHandle {
	return &lineStreamHandle{rd: rd, mu: make(chan struct{}, 1)}
}

func (h *lineStreamHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	select {
	case h.mu <- struct{}{}:
	case <-ctx.Done():
		return nil, syscall.EINTR
	}
	defer func() { <-h.mu }()
	return readStream(ctx, h.rd.ReadLine, dest, &h.pos, off)
}

// readStream blocks for data; an interrupted reader gets EINTR at once.
// With a cursor pos, a read at off beyond it ends at once, and what is
// read moves it.
func readStream(ctx context.Context, read func(context.Context, []byte) (int, error), dest []byte, pos *cursor, off int64) (fuse.ReadResult, syscall.Errno) {
	if pos != nil && pos.ahead(off) {
		return fuse.ReadResultData(nil), 0
	}
	n, err := read(ctx, dest)
	if pos != nil {
		pos.moved(n)
	}
	switch {
	case err == nil || err == io.EOF:
		return fuse.ReadResultData(dest[:n]), 0
	case ctx.Err() != nil:
		return nil, syscall.EINTR
	}
	return nil, errno(err)
}

// consoleHandle is an open console: output in, input out.
type consoleHandle struct {
	c    *driver.ConsoleHandle
	d    *driver.Driver
	name string
}

var (
	_ fs.FileReader = (*consoleHandle)(nil)
	_ fs.FileWriter = (*consoleHandle)(nil)
)

func (h *consoleHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return readStream(ctx, h.c.Read, dest, nil, off)
}

func (h *consoleHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	// A guest that takes no input holds the write; only a real stop
	// signal ends it (with the bytes sent so far, or EINTR).
	ctx, cancel := userInterrupts(ctx)
	defer cancel()
	n, err := h.c.Write(ctx, data)
	if err != nil {
		h.d.RecordError(h.name, err.Error())
		return 0, errno(err)
	}
	return uint32(n), 0
}

// sessionHandle is one monitor session.
type sessionHandle struct {
	s    *driver.MonitorSession
	d    *driver.Driver
	name string
	pos  cursor // bytes written and read: one file position serves both
}

var (
	_ fs.FileReader   = (*sessionHandle)(nil)
	_ fs.FileWriter   = (*sessionHandle)(nil)
	_ fs.FileReleaser = (*sessionHandle)(nil)
)

func (h *sessionHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return readStream(ctx, h.s.Read, dest, &h.pos, off)
}

func (h *sessionHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	// A command interrupted by SIGCHLD or SIGURG would run twice when the
	// writer retries the write; only a real stop signal abandons it.
	ctx, cancel := userInterrupts(ctx)
	defer cancel()
	n, err := h.s.Write(ctx, data)
	h.pos.moved(n)
	if err != nil {
		h.d.RecordError(h.name, err.Error())
		return 0, errno(err)
	}
	return uint32(n), 0
}

func (h *sessionHandle) Release(ctx context.Context) syscall.Errno {
	h.s.Close()
	return 0
}

// openFromNative opens the root's from-native file: write a QEMU command
// line, read back domain XML. The last conversion of each user is kept, so
// `echo ARGS > from-native; cat from-native` works.
func (r *Root) openFromNative(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
	uid := uint32(0)
	if c, ok := fuse.FromContext(ctx); ok {
		uid = c.Uid
	}
	r.mu.Lock()
	last := r.fromNative[uid]
	r.mu.Unlock()
	return &fromNativeHandle{r: r, uid: uid, out: last}, fuse.FOPEN_DIRECT_IO, nil
}

type fromNativeHandle struct {
	r   *Root
	uid uint32

	mu    sync.Mutex
	in    []byte
	out   []byte
	dirty bool
}

var (
	_ fs.FileReader  = (*fromNativeHandle)(nil)
	_ fs.FileWriter  = (*fromNativeHandle)(nil)
	_ fs.FileFlusher = (*fromNativeHandle)(nil)
)

func (h *fromNativeHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.in)+len(data) > maxDocument {
		h.in, h.dirty = nil, false
		h.out = []byte("error: " + errTooBig("from-native") + "\n")
		return 0, syscall.EFBIG
	}
	h.in = append(h.in, data...)
	h.dirty = true
	if bytes.HasSuffix(h.in, []byte("\n")) {
		if e := h.convert(); e != 0 {
			return 0, e
		}
	}
	return uint32(len(data)), 0
}

// convert turns the collected command line into XML. The caller holds mu.
func (h *fromNativeHandle) convert() syscall.Errno {
	h.dirty = false
	xml, err := h.r.cfg.FromNative(string(h.in))
	h.in = nil
	if err != nil {
		h.out = []byte("error: " + err.Error() + "\n")
		return syscall.EINVAL
	}
	h.out = xml
	h.r.mu.Lock()
	h.r.fromNative[h.uid] = xml
	h.r.mu.Unlock()
	return 0
}

func (h *fromNativeHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dirty {
		h.convert()
	}
	return fuse.ReadResultData(sliceAt(h.out, off, len(dest))), 0
}

func (h *fromNativeHandle) Flush(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.dirty || len(bytes.TrimSpace(h.in)) == 0 {
		return 0
	}
	return h.convert()
}

func (h *fromNativeHandle) truncate() {}
