package sftpserver

import (
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// client is a minimal SFTP client for the tests: requests go out with an
// id, replies are matched by id in whatever order they come.
type client struct {
	t    *testing.T
	w    io.Writer
	mu   sync.Mutex
	next uint32
	wait map[uint32]chan []byte
}

func newClient(t *testing.T) *client {
	t.Helper()
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	go Serve(sr, sw)
	t.Cleanup(func() { cw.Close(); cr.Close() })
	c := &client{t: t, w: cw, wait: map[uint32]chan []byte{}}
	init := &enc{b: make([]byte, 4)}
	init.b = append(init.b, fxpInit)
	init.u32(3)
	cw.Write(init.packet())
	v, err := readPacket(cr)
	if err != nil || v[0] != fxpVersion {
		t.Fatalf("version reply: %v %v", v, err)
	}
	go func() {
		for {
			p, err := readPacket(cr)
			if err != nil {
				return
			}
			d := dec{b: p[1:]}
			id := d.u32()
			c.mu.Lock()
			ch := c.wait[id]
			delete(c.wait, id)
			c.mu.Unlock()
			if ch != nil {
				ch <- p
			}
		}
	}()
	return c
}

// send starts a request whose body fill writes; the reply comes on the
// channel returned.
func (c *client) send(typ byte, fill func(e *enc)) <-chan []byte {
	c.mu.Lock()
	c.next++
	id := c.next
	ch := make(chan []byte, 1)
	c.wait[id] = ch
	c.mu.Unlock()
	e := newPacket(typ, id)
	fill(e)
	c.mu.Lock()
	c.w.Write(e.packet())
	c.mu.Unlock()
	return ch
}

func (c *client) reply(ch <-chan []byte) (byte, dec) {
	c.t.Helper()
	select {
	case p := <-ch:
		d := dec{b: p[1:]}
		d.u32()
		return p[0], d
	case <-time.After(30 * time.Second):
		c.t.Fatal("no reply in 30 s")
	}
	return 0, dec{}
}

// statusOf returns the status code of a STATUS reply (fxOK for others).
func (c *client) statusOf(ch <-chan []byte) uint32 {
	c.t.Helper()
	typ, d := c.reply(ch)
	if typ != fxpStatus {
		c.t.Fatalf("reply type %d, want a status", typ)
	}
	return d.u32()
}

func (c *client) open(p string, pflags uint32) string {
	c.t.Helper()
	typ, d := c.reply(c.send(fxpOpen, func(e *enc) { e.str(p); e.u32(pflags); e.attrs(attrs{}) }))
	if typ != fxpHandle {
		c.t.Fatalf("open %s: reply type %d (status %d %s)", p, typ, d.u32(), d.str())
	}
	return d.str()
}

func (c *client) read(h string, off uint64, n uint32) <-chan []byte {
	return c.send(fxpRead, func(e *enc) { e.str(h); e.u64(off); e.u32(n) })
}

func (c *client) write(h string, off uint64, data string) <-chan []byte {
	return c.send(fxpWrite, func(e *enc) { e.str(h); e.u64(off); e.data([]byte(data)) })
}

// data returns the bytes of a DATA reply, or "" at end of file.
func (c *client) data(ch <-chan []byte) (string, bool) {
	c.t.Helper()
	typ, d := c.reply(ch)
	switch typ {
	case fxpData:
		return string(d.bytes()), true
	case fxpStatus:
		if code := d.u32(); code != fxEOF {
			c.t.Fatalf("read: status %d %s", code, d.str())
		}
		return "", false
	}
	c.t.Fatalf("read: reply type %d", typ)
	return "", false
}

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	c := newClient(t)
	f := filepath.Join(dir, "f")
	h := c.open(f, fxfWrite|fxfCreat|fxfTrunc)
	if code := c.statusOf(c.write(h, 0, "hello ")); code != fxOK {
		t.Fatalf("write: %d", code)
	}
	c.statusOf(c.write(h, 6, "world"))
	c.statusOf(c.send(fxpClose, func(e *enc) { e.str(h) }))
	if b, _ := os.ReadFile(f); string(b) != "hello world" {
		t.Fatalf("file after writes: %q", b)
	}

	h = c.open(f, fxfRead)
	if got, _ := c.data(c.read(h, 6, 100)); got != "world" {
		t.Errorf("read at 6: %q", got)
	}
	if _, ok := c.data(c.read(h, 11, 100)); ok {
		t.Errorf("read at the end: data")
	}
	typ, d := c.reply(c.send(fxpFstat, func(e *enc) { e.str(h) }))
	if a := d.attrs(); typ != fxpAttrs || a.size != 11 || a.perm&unix.S_IFMT != unix.S_IFREG {
		t.Errorf("fstat: type %d attrs %+v", typ, a)
	}
	c.statusOf(c.send(fxpClose, func(e *enc) { e.str(h) }))
	if code := c.statusOf(c.send(fxpClose, func(e *enc) { e.str(h) })); code != fxFailure {
		t.Errorf("a second close: status %d", code)
	}

	for _, tc := range []struct {
		name string
		typ  byte
		fill func(e *enc)
		want uint32
		then func() bool
	}{
		{"stat missing", fxpStat, func(e *enc) { e.str(filepath.Join(dir, "nope")) }, fxNoSuchFile, nil},
		{"mkdir", fxpMkdir, func(e *enc) { e.str(filepath.Join(dir, "d")); e.attrs(attrs{flags: attrPermissions, perm: 0o700}) }, fxOK,
			func() bool {
				fi, err := os.Stat(filepath.Join(dir, "d"))
				return err == nil && fi.Mode().Perm() == 0o700
			}},
		{"truncate", fxpSetstat, func(e *enc) { e.str(f); e.attrs(attrs{flags: attrSize, size: 5}) }, fxOK,
			func() bool { b, _ := os.ReadFile(f); return string(b) == "hello" }},
		{"rename onto a file", fxpRename, func(e *enc) { e.str(f); e.str(filepath.Join(dir, "d")) }, fxFailure, nil},
		{"posix-rename", fxpExtended, func(e *enc) { e.str("posix-rename@openssh.com"); e.str(f); e.str(filepath.Join(dir, "g")) }, fxOK,
			func() bool { _, err := os.Stat(filepath.Join(dir, "g")); return err == nil }},
		{"rmdir", fxpRmdir, func(e *enc) { e.str(filepath.Join(dir, "d")) }, fxOK,
			func() bool { _, err := os.Stat(filepath.Join(dir, "d")); return os.IsNotExist(err) }},
		{"remove", fxpRemove, func(e *enc) { e.str(filepath.Join(dir, "g")) }, fxOK, nil},
		{"unknown extension", fxpExtended, func(e *enc) { e.str("frob@example.com") }, fxOpUnsupported, nil},
	} {
		if code := c.statusOf(c.send(tc.typ, tc.fill)); code != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, code, tc.want)
		} else if tc.then != nil && !tc.then() {
			t.Errorf("%s: not done", tc.name)
		}
	}

	typ, d = c.reply(c.send(fxpExtended, func(e *enc) { e.str("statvfs@openssh.com"); e.str(dir) }))
	if bsize := d.u64(); typ != fxpExtendedReply || bsize == 0 {
		t.Errorf("statvfs: type %d bsize %d", typ, bsize)
	}
}

func TestReaddir(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a", "b", "c"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o644)
	}
	c := newClient(t)
	typ, d := c.reply(c.send(fxpOpendir, func(e *enc) { e.str(dir) }))
	if typ != fxpHandle {
		t.Fatalf("opendir: type %d", typ)
	}
	h := d.str()
	var names []string
	for {
		typ, d := c.reply(c.send(fxpReaddir, func(e *enc) { e.str(h) }))
		if typ == fxpStatus {
			if code := d.u32(); code != fxEOF {
				t.Fatalf("readdir: status %d", code)
			}
			break
		}
		for n := d.u32(); n > 0; n-- {
			names = append(names, d.str())
			d.str()
			d.attrs()
		}
	}
	if got := len(names); got != 5 {
		t.Errorf("readdir: %q, want . .. a b c", names)
	}
	if typ, _ := c.reply(c.send(fxpOpendir, func(e *enc) { e.str(filepath.Join(dir, "a")) })); typ != fxpStatus {
		t.Errorf("opendir of a file: type %d", typ)
	}
}

// TestBlockingRead: a read that blocks (a FIFO with no data, as a qemufs
// console) holds up neither path requests nor another handle of the same
// file; the write on the other handle wakes it.
func TestBlockingRead(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "console")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	c := newClient(t)
	r := c.open(fifo, fxfRead|fxfWrite) // O_RDWR: the open does not wait for a writer
	pending := c.read(r, 0, 32<<10)
	ahead := c.read(r, 32<<10, 32<<10) // sshfs splits a large read so
	if typ, _ := c.reply(c.send(fxpStat, func(e *enc) { e.str(filepath.Dir(fifo)) })); typ != fxpAttrs {
		t.Fatalf("stat while a read blocks: reply type %d", typ)
	}
	select {
	case <-pending:
		t.Fatal("the read returned with no data written")
	default:
	}
	w := c.open(fifo, fxfWrite) // a second handle of the same file
	if code := c.statusOf(c.write(w, 0, "hello")); code != fxOK {
		t.Fatalf("write while a read blocks: %d", code)
	}
	if got, _ := c.data(pending); got != "hello" {
		t.Errorf("blocked read: %q", got)
	}
	// The split-off second part of the read is past what has come: it
	// ends at once rather than waiting for more.
	if got, ok := c.data(ahead); ok {
		t.Errorf("read past the stream's position: %q, want end of file", got)
	}
	next := c.read(r, 5, 32<<10) // where the client is now
	c.statusOf(c.write(w, 5, "again"))
	if got, _ := c.data(next); got != "again" {
		t.Errorf("next read: %q", got)
	}
	for _, h := range []string{r, w} {
		c.statusOf(c.send(fxpClose, func(e *enc) { e.str(h) }))
	}
}
