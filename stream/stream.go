// Package stream holds bounded, append-only logs that many readers follow
// at their own pace, the way `tail -f` follows a file. qemufs uses them for
// a guest's console output, its lifecycle events and its QMP events: one
// writer appends, every reader sees every byte that is still retained, and a
// slow reader never blocks the writer (it loses the oldest bytes instead).
package stream

import (
	"context"
	"errors"
	"io"
	"sync"
)

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("stream closed")

// Log is a bounded byte log. The zero value is not usable; call New.
type Log struct {
	mu     sync.Mutex
	buf    []byte // retained bytes, at offsets [start, start+len(buf))
	start  int64
	limit  int
	lines  bool
	closed bool
	wake   chan struct{} // closed and replaced whenever data arrives or the log closes
}

// New returns a Log that retains at most limit bytes. When lines is true the
// log drops whole lines only, so a reader that falls behind resumes at the
// start of a line (for JSON-per-line streams).
func New(limit int, lines bool) *Log {
	return &Log{limit: limit, lines: lines, wake: make(chan struct{})}
}

// Write appends p. It never blocks on readers.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, ErrClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	l.buf = append(l.buf, p...)
	if over := len(l.buf) - l.limit; over > 0 {
		if l.lines {
			if i := indexByte(l.buf[over:], '\n'); i >= 0 {
				over += i + 1
			} else {
				over = len(l.buf)
			}
		}
		l.buf = l.buf[over:]
		l.start += int64(over)
		if cap(l.buf) > 4*l.limit { // let the dropped prefix be collected
			l.buf = append([]byte(nil), l.buf...)
		}
	}
	close(l.wake)
	l.wake = make(chan struct{})
	return len(p), nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// Close ends the log: readers get the retained bytes, then io.EOF.
func (l *Log) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.wake)
	}
}

// Closed reports whether Close was called.
func (l *Log) Closed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// Bounds returns the offsets of the first retained byte and of the end.
func (l *Log) Bounds() (start, end int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.start, l.start + int64(len(l.buf))
}

// Bytes returns a copy of the retained bytes.
func (l *Log) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.buf...)
}

// ReadAt copies bytes from offset off into p, waiting until there are some,
// the log is closed (io.EOF) or ctx is done (ctx.Err()). It returns the
// offset just past the bytes copied; when the bytes at off were already
// dropped it reads from the oldest retained byte.
func (l *Log) ReadAt(ctx context.Context, off int64, p []byte) (n int, next int64, err error) {
	for {
		l.mu.Lock()
		if off < l.start {
			off = l.start
		}
		end := l.start + int64(len(l.buf))
		if off < end {
			n = copy(p, l.buf[off-l.start:])
			l.mu.Unlock()
			return n, off + int64(n), nil
		}
		if l.closed {
			l.mu.Unlock()
			return 0, off, io.EOF
		}
		wake := l.wake
		l.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return 0, off, ctx.Err()
		}
	}
}

// Reader follows a Log from a position, like an open file descriptor.
type Reader struct {
	log *Log
	off int64
}

// NewReader returns a Reader at the oldest retained byte (history included).
func (l *Log) NewReader() *Reader {
	start, _ := l.Bounds()
	return &Reader{log: l, off: start}
}

// Follow returns a Reader at the current end: it sees only what comes next.
func (l *Log) Follow() *Reader {
	_, end := l.Bounds()
	return &Reader{log: l, off: end}
}

// Read reads the next bytes, blocking as ReadAt does.
func (r *Reader) Read(ctx context.Context, p []byte) (int, error) {
	n, next, err := r.log.ReadAt(ctx, r.off, p)
	r.off = next
	return n, err
}

// ReadLine is Read that stops after the first newline, leaving the rest
// for the next call: one line per call for readers that read ahead and
// cannot give back what they did not use (head -1 on a stream file).
func (r *Reader) ReadLine(ctx context.Context, p []byte) (int, error) {
	n, next, err := r.log.ReadAt(ctx, r.off, p)
	if i := indexByte(p[:n], '\n'); i >= 0 && i+1 < n {
		next -= int64(n - (i + 1))
		n = i + 1
	}
	r.off = next
	return n, err
}
