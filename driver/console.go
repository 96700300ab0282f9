package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qemufs/qemufs/stream"
)

// consoleSource says how to reach the guest's first serial port.
type consoleSource struct {
	// Kind is "pty" (a pty QEMU made), "unix" or "tcp" (a socket QEMU
	// listens on).
	Kind string `json:"kind,omitempty"`
	// Path is the pty's path, the socket path, or host:port.
	Path string `json:"path,omitempty"`
}

// console connects the `console` file to the guest's first serial port:
// everything the guest prints goes to a bounded history that readers
// follow, and to a file in the log dir so that history survives a daemon
// restart.
type console struct {
	src         consoleSource
	out         *stream.Log
	conn        io.ReadWriteCloser
	persist     *os.File
	persistPath string
	persisted   int64 // size of the persist file, kept by pump

	wmu       chan struct{} // one writer at a time
	closeOnce sync.Once
	done      chan struct{}
}

// openConsole connects to src. When resume is set (re-attach), the history
// is reloaded from persistPath; otherwise that file starts empty.
func openConsole(src consoleSource, persistPath string, resume bool) (*console, error) {
	var conn io.ReadWriteCloser
	var err error
	switch src.Kind {
	case "pty":
		conn, err = openPTY(src.Path)
	case "unix", "tcp":
		conn, err = net.Dial(src.Kind, src.Path)
	default:
		return nil, fmt.Errorf("console of kind %q is not supported", src.Kind)
	}
	if err != nil {
		return nil, fmt.Errorf("console %s: %w", src.Path, err)
	}
	c := &console{src: src, out: stream.New(consoleHistory, false), conn: conn, wmu: make(chan struct{}, 1), done: make(chan struct{})}
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	if resume {
		if old, err := readTail(persistPath, consoleHistory); err == nil {
			c.out.Write(old)
		}
	} else {
		flags |= os.O_TRUNC
	}
	c.persistPath = persistPath
	c.persist, _ = os.OpenFile(persistPath, flags, 0o600)
	if c.persist != nil {
		if fi, err := c.persist.Stat(); err == nil {
			c.persisted = fi.Size()
		}
	}
	go c.pump()
	return c, nil
}

// openPTY opens the guest side of QEMU's pty in raw mode, so bytes pass
// unchanged in both directions (no echo, no CR/LF translation).
func openPTY(path string) (*os.File, error) {
	// O_NONBLOCK puts the pty on Go's poller, so Close ends a pending Read.
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fd := int(f.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		f.Close()
		return nil, err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func readTail(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := fi.Size() - max
	if off < 0 {
		off = 0
	}
	buf := make([]byte, fi.Size()-off)
	n, err := f.ReadAt(buf, off)
	return buf[:n], err
}

func (c *console) pump() {
	defer close(c.done)
	defer c.out.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.conn.Read(buf)
		if n > 0 {
			c.out.Write(buf[:n])
			if c.persist != nil {
				c.persist.Write(buf[:n])
				c.persisted += int64(n)
				if c.persisted > persistLimit {
					c.trimPersist()
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// deadliner is a console connection whose writes can be cut short: the
// pty (on Go's poller) and the sockets.
type deadliner interface{ SetWriteDeadline(time.Time) error }

// persistLimit bounds the console file in the log directory: past it, the
// file is cut to the history a reader would get, so a chatty guest cannot
// fill the disk (libvirt's virtlogd rotates its console logs likewise).
const persistLimit = 4 * consoleHistory

// trimPersist replaces the console file by the in-memory history. Only
// pump calls it.
func (c *console) trimPersist() {
	hist := c.out.Bytes()
	if err := writeFileAtomic(c.persistPath, hist, 0o600); err != nil {
		return // keep appending; try again after the next output
	}
	c.persist.Close()
	c.persist, _ = os.OpenFile(c.persistPath, os.O_WRONLY|os.O_APPEND, 0o600)
	c.persisted = int64(len(hist))
}

// Write sends input to the guest, one writer at a time so that inputs do
// not interleave. A guest that does not read (paused, or its serial FIFO
// full) leaves the write waiting until ctx ends: it then returns what
// was written, or the interruption.
func (c *console) Write(ctx context.Context, p []byte) (int, error) {
	select {
	case c.wmu <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-c.done:
		return 0, io.ErrClosedPipe
	}
	defer func() { <-c.wmu }()
	dl, ok := c.conn.(deadliner)
	if !ok {
		return c.conn.Write(p)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		dl.SetWriteDeadline(time.Now())
		close(fired)
	})
	n, err := c.conn.Write(p)
	if !stop() {
		<-fired
		dl.SetWriteDeadline(time.Time{})
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = ctx.Err()
		}
	}
	return n, err
}

// Close disconnects; readers get EOF after the history.
func (c *console) Close() {
	c.closeOnce.Do(func() {
		c.conn.Close()
		<-c.done
		if c.persist != nil {
			c.persist.Close()
		}
	})
}

// ConsoleHandle is an open `console` file: it reads the guest's serial
// output from the history on, and writes input to it.
type ConsoleHandle struct {
	c *console
	r *stream.Reader
}

// OpenConsole opens the running domain's console. A domain that is not
// running, or whose first serial port qemufs cannot reach, is an error.
func (d *Driver) OpenConsole(name string) (*ConsoleHandle, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	r, err := dm.activeRun("console")
	if err != nil {
		return nil, err
	}
	if r.console == nil {
		return nil, errorf(ErrNoDevice, "console %s: the domain has no serial port qemufs can reach (use <serial type='pty'/>, or a unix/tcp server socket)", name)
	}
	return &ConsoleHandle{c: r.console, r: r.console.out.NewReader()}, nil
}

// Read blocks until the guest prints, the domain stops (io.EOF) or ctx ends.
func (h *ConsoleHandle) Read(ctx context.Context, p []byte) (int, error) {
	return h.r.Read(ctx, p)
}

// Write sends p to the guest's serial port. It waits while the guest
// does not take input, until ctx ends: then it returns the bytes sent so
// far, or an ErrInterrupted error when none were.
func (h *ConsoleHandle) Write(ctx context.Context, p []byte) (int, error) {
	select {
	case <-h.c.done:
		return 0, errorf(ErrBusy, "console: the domain is not running")
	default:
	}
	n, err := h.c.Write(ctx, p)
	switch {
	case err == nil || n > 0:
		return n, nil
	case ctx.Err() != nil:
		return 0, errorf(ErrInterrupted, "console: interrupted while the guest took no input")
	}
	return n, errorf(ErrIO, "console: %w", err)
}

// attachConsole connects the first serial port of a starting run. For a
// pty it asks QEMU which pty it made and records it in the live XML.
func (d *Driver) attachConsole(ctx context.Context, r *run, resume bool) error {
	src, alias, ok := firstSerial(r.live)
	if !ok {
		return nil
	}
	if src.Kind == "pty" {
		var infos []struct {
			Label    string `json:"label"`
			Filename string `json:"filename"`
		}
		if err := r.mon.Execute(ctx, "query-chardev", nil, &infos); err != nil {
			return err
		}
		for _, in := range infos {
			if in.Label == "char"+alias {
				src.Path = strings.TrimPrefix(in.Filename, "pty:")
			}
		}
		if src.Path == "" {
			return errors.New("QEMU did not report the serial port's pty")
		}
		setSerialPTY(r.live, alias, src.Path)
	}
	c, err := openConsole(src, r.files.Console, resume)
	if err != nil {
		return err
	}
	r.console = c
	return nil
}
