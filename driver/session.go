package driver

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/qemufs/qemufs/monitor"
	"github.com/qemufs/qemufs/stream"
)

// maxPending bounds a command that has not been completed yet.
const maxPending = 1 << 20

// maxUnread bounds the replies a session keeps for its reader: past it,
// new commands are refused until the reader catches up. A reply is never
// dropped or cut (the log holds maxUnread plus the largest reply).
const maxUnread = 1 << 20

// MonitorSession is one open monitor/qmp or monitor/hmp handle: commands
// written to it run on the guest's QMP connection, and their replies are
// read back from the same handle only.
type MonitorSession struct {
	r       *run
	hmp     bool
	agent   bool // a guest agent session (see agent.go)
	mu      sync.Mutex
	pending []byte
	replies *stream.Log
	written int64         // reply bytes queued, guarded by mu
	nread   atomic.Int64  // reply bytes read, the offset of the next one
	rmu     chan struct{} // one reader at a time
	closed  chan struct{}
	once    sync.Once
}

// OpenMonitor opens a pass-through session to a running domain's monitor:
// QMP (JSON in, JSON out) or, with hmp set, human monitor lines.
func (d *Driver) OpenMonitor(name string, hmp bool) (*MonitorSession, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	r, err := dm.activeRun("monitor")
	if err != nil {
		return nil, err
	}
	s := &MonitorSession{r: r, hmp: hmp, replies: stream.New(maxUnread+monitor.DefaultMaxReplySize, false), rmu: make(chan struct{}, 1), closed: make(chan struct{})}
	go func() {
		select {
		case <-r.done:
		case <-r.detached:
		case <-s.closed:
		}
		s.replies.Close()
	}()
	return s, nil
}

// Write takes bytes of commands; each complete command (a JSON object for
// QMP, a line for HMP) runs before Write returns, its reply queued for Read.
func (s *MonitorSession) Write(ctx context.Context, p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending = append(s.pending, p...)
	for {
		cmd, rest, err := s.next()
		if err != nil {
			s.pending = nil
			return 0, err
		}
		if cmd == nil {
			break
		}
		s.pending = rest
		if err := s.run(ctx, cmd); err != nil {
			// The commands after a failed one are not run either.
			s.pending = nil
			return 0, err
		}
	}
	if len(s.pending) > maxPending {
		s.pending = nil
		return 0, errorf(ErrInvalid, "%s: command longer than %d bytes", s.label(), maxPending)
	}
	return len(p), nil
}

// next splits the first complete command off the pending bytes.
func (s *MonitorSession) next() (cmd, rest []byte, err error) {
	if s.hmp {
		i := bytes.IndexByte(s.pending, '\n')
		if i < 0 {
			return nil, s.pending, nil
		}
		return bytes.TrimRight(s.pending[:i], "\r"), s.pending[i+1:], nil
	}
	buf := bytes.TrimLeft(s.pending, " \t\r\n")
	if len(buf) == 0 {
		return nil, nil, nil
	}
	if buf[0] != '{' {
		return nil, nil, errorf(ErrInvalid, "%s: expected a JSON object, got %q", s.label(), truncate(buf, 40))
	}
	end := jsonObjectEnd(buf)
	if end < 0 {
		return nil, buf, nil
	}
	obj := buf[:end]
	if !json.Valid(obj) {
		return nil, nil, errorf(ErrInvalid, "%s: malformed JSON %q", s.label(), truncate(obj, 80))
	}
	return obj, buf[end:], nil
}

// jsonObjectEnd returns the length of the JSON object at the start of b, or
// -1 when it is not complete yet.
func jsonObjectEnd(b []byte) int {
	depth, inString, escaped := 0, false, false
	for i, c := range b {
		switch {
		case escaped:
			escaped = false
		case inString:
			switch c {
			case '\\':
				escaped = true
			case '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
			if depth == 0 {
				return i + 1
			}
		}
	}
	return -1
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

func (s *MonitorSession) run(ctx context.Context, cmd []byte) error {
	if s.agent {
		return s.runAgent(ctx, cmd)
	}
	r := s.r
	kind := "qmp"
	if s.hmp {
		kind = "hmp"
	}
	select {
	case <-r.done:
		return errorf(ErrBusy, "monitor/%s %s: the run this session belonged to has ended; open the file again", kind, r.dm.name)
	case <-r.detached:
		return errorf(ErrIO, "monitor/%s %s: qemufs is shutting down", kind, r.dm.name)
	default:
	}
	if unread := s.written - s.nread.Load(); unread > maxUnread {
		return errorf(ErrBusy, "monitor/%s %s: %d bytes of replies not read yet; read them before sending more commands", kind, r.dm.name, unread)
	}
	r.taint("custom-monitor")
	if s.hmp {
		if len(bytes.TrimSpace(cmd)) == 0 {
			return nil
		}
		out, err := r.mon.HMP(ctx, string(cmd))
		if err != nil {
			if ctx.Err() != nil {
				return errorf(ErrInterrupted, "monitor/hmp %s: interrupted", r.dm.name)
			}
			return errorf(ErrIO, "monitor/hmp %s: %w", r.dm.name, err)
		}
		// QEMU ends HMP lines with CRLF, for a terminal; a file gives
		// Unix lines, so that shell tools compare and print them cleanly.
		s.queue([]byte(strings.ReplaceAll(out, "\r\n", "\n")))
		return nil
	}
	reply, err := r.mon.RunRaw(ctx, cmd)
	if err != nil {
		if ctx.Err() != nil {
			return errorf(ErrInterrupted, "monitor/qmp %s: interrupted", r.dm.name)
		}
		return errorf(ErrIO, "monitor/qmp %s: %w", r.dm.name, err)
	}
	s.queue(append(bytes.TrimRight(reply, "\r\n"), '\n'))
	return nil
}

// queue hands a reply to the reader. The caller holds mu.
func (s *MonitorSession) queue(b []byte) {
	s.replies.Write(b)
	s.written += int64(len(b))
}

// Read returns replies; it blocks until one is there, and ends (io.EOF)
// once the domain has stopped and every reply was read. A read returns at
// most one line, so that line readers of a regular file (head -1, the
// shell's read, which read ahead and seek back, a seek the session cannot
// honour) consume exactly the lines they use and leave the next reply
// for the next reader.
func (s *MonitorSession) Read(ctx context.Context, p []byte) (int, error) {
	select {
	case s.rmu <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	defer func() { <-s.rmu }()
	got, next, err := s.replies.ReadAt(ctx, s.nread.Load(), p)
	n := got
	if i := bytes.IndexByte(p[:got], '\n'); i >= 0 {
		n = i + 1
	}
	s.nread.Store(next - int64(got-n))
	return n, err
}

// Close ends the session.
func (s *MonitorSession) Close() {
	s.once.Do(func() { close(s.closed) })
}

// taint marks the run with a libvirt taint flag, once: in the live XML, the
// log and the status file.
func (r *run) taint(flag string) {
	r.mu.Lock()
	if r.taints[flag] {
		r.mu.Unlock()
		return
	}
	r.taints[flag] = true
	r.mu.Unlock()
	r.d.appendLog(r.files.Log, "Domain id=%d is tainted: %s", r.proc.Pid, flag)
	r.refreshLive()
	r.saveStatus()
}
