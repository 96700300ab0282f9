// Package agent is a client of the QEMU guest agent (qemu-ga) through the
// host end of its virtio-serial channel: a UNIX socket QEMU listens on.
//
// The agent protocol is QMP without ids, greeting or events: one command
// in, one reply out, in order; some commands (guest-shutdown and the
// guest-suspend-* family) answer nothing when they succeed. The agent
// may also have restarted, or left a reply to a command whose caller gave
// up. So Conn runs one command at a time and precedes each one with
// guest-sync-delimited and a fresh random id: it sends 0xFF (which makes
// the agent's parser drop a half-read command), the sync command, and
// skips everything up to the 0xFF the agent puts before the sync's reply,
// and that reply must carry the id. A guest whose agent does not answer
// the sync within Options.SyncTimeout gives ErrNotResponding rather than
// a hang.
package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"sync"
	"time"
)

// Defaults for Options.
const (
	// DefaultSyncTimeout bounds guest-sync-delimited, as libvirt's 5 s:
	// an agent that is running answers it in milliseconds.
	DefaultSyncTimeout = 5 * time.Second
	// DefaultCommandTimeout bounds a command once the agent answered its
	// sync (fsfreeze or a big guest-file-read may take a while).
	DefaultCommandTimeout = 60 * time.Second
	// DefaultNoReplyWait is how long a command that answers only when it
	// fails (guest-shutdown) is given to fail.
	DefaultNoReplyWait = 2 * time.Second
	// MaxReply bounds one reply (guest-file-read returns up to 48 MiB of
	// base64 when asked; qemufs does not need more than this).
	MaxReply = 64 << 20
)

// ErrNotResponding is the error of a command the agent did not answer in
// time: no agent runs in the guest, it hangs, or the guest is too busy.
var ErrNotResponding = errors.New("guest agent is not responding")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("guest agent connection closed")

// CommandError is an error reply of the agent.
type CommandError struct {
	Command string // the command's name
	Class   string // e.g. GenericError, CommandNotFound
	Desc    string // the agent's message
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("guest agent: %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// Options configure a Conn. Zero values mean the defaults.
type Options struct {
	SyncTimeout    time.Duration
	CommandTimeout time.Duration
	NoReplyWait    time.Duration
	// Dial connects to the agent's socket; nil dials the UNIX socket path.
	Dial func(ctx context.Context) (net.Conn, error)
}

// noReply lists the commands that send no reply when they succeed.
var noReply = map[string]bool{
	"guest-shutdown":       true,
	"guest-suspend-disk":   true,
	"guest-suspend-ram":    true,
	"guest-suspend-hybrid": true,
}

// NoReply reports whether command answers only when it fails.
func NoReply(command string) bool { return noReply[command] }

// Conn is a connection to one guest's agent. It connects on first use and
// again after the connection broke. Its methods are safe for concurrent
// use; commands run one at a time.
type Conn struct {
	path string
	opts Options

	lock chan struct{} // held while a command runs

	// Guarded by lock:
	cur *link

	mu     sync.Mutex
	closed bool
	open   *link // the live link, for Close
}

// link is one connection to the socket and its reader.
type link struct {
	nc   net.Conn
	msgs chan message
	done chan struct{} // closed when the reader ended; err is set then
	err  error
	quit chan struct{} // closed by close: the reader stops queueing
	once sync.Once
}

// close ends the link and its reader.
func (l *link) close() {
	l.once.Do(func() {
		close(l.quit)
		l.nc.Close()
	})
}

// queue hands m to the command waiting for it; false once the link is closed.
func (l *link) queue(m message) bool {
	select {
	case l.msgs <- m:
		return true
	case <-l.quit:
		return false
	}
}

// message is what the reader splits the agent's output into: a 0xFF
// delimiter or one JSON object.
type message struct {
	delim bool
	obj   []byte
}

// New returns a Conn for the agent socket at path. Nothing is dialled yet.
func New(path string, opts Options) *Conn {
	if opts.SyncTimeout <= 0 {
		opts.SyncTimeout = DefaultSyncTimeout
	}
	if opts.CommandTimeout <= 0 {
		opts.CommandTimeout = DefaultCommandTimeout
	}
	if opts.NoReplyWait <= 0 {
		opts.NoReplyWait = DefaultNoReplyWait
	}
	return &Conn{path: path, opts: opts, lock: make(chan struct{}, 1)}
}

// Path returns the socket path the Conn dials.
func (c *Conn) Path() string { return c.path }

// Close ends the connection; later commands fail with ErrClosed.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.open != nil {
		c.open.close()
		c.open = nil
	}
	return nil
}

// Execute runs command with args (nil for none) and decodes the "return"
// value of its reply into result (nil to ignore it). An error reply is a
// *CommandError.
func (c *Conn) Execute(ctx context.Context, command string, args, result any) error {
	cmd := map[string]any{"execute": command}
	if args != nil {
		cmd["arguments"] = args
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return fmt.Errorf("guest agent: %s: %w", command, err)
	}
	reply, err := c.Run(ctx, b)
	if err != nil {
		return err
	}
	return Decode(command, reply, result)
}

// Decode decodes a reply of command: its "return" into result, or its
// "error" as a *CommandError.
func Decode(command string, reply []byte, result any) error {
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(reply, &r); err != nil {
		return fmt.Errorf("guest agent: %s: bad reply %q: %w", command, truncate(reply, 80), err)
	}
	if r.Error != nil {
		return &CommandError{Command: command, Class: r.Error.Class, Desc: r.Error.Desc}
	}
	if result == nil || r.Return == nil {
		return nil
	}
	if err := json.Unmarshal(r.Return, result); err != nil {
		return fmt.Errorf("guest agent: %s: bad reply %q: %w", command, truncate(reply, 80), err)
	}
	return nil
}

// Run runs one command, a JSON object as a user wrote it, and returns the
// agent's reply exactly as it came (without its line ending). For a
// command that answers only when it fails (NoReply), a reply that does not
// come within Options.NoReplyWait, or the connection ending (the guest
// powered off, QEMU exited), counts as success: Run returns
// {"return": {}}.
func (c *Conn) Run(ctx context.Context, cmd []byte) ([]byte, error) {
	var head struct {
		Execute string `json:"execute"`
	}
	if err := json.Unmarshal(cmd, &head); err != nil || head.Execute == "" {
		return nil, fmt.Errorf("guest agent: a command is a JSON object with \"execute\", got %q", truncate(cmd, 80))
	}
	name := head.Execute
	select {
	case c.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("guest agent: %s: %w", name, ctx.Err())
	}
	defer func() { <-c.lock }()

	l, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.sync(ctx, l, name); err != nil {
		return nil, err
	}
	line := append(bytes.TrimSpace(cmd), '\n')
	if err := l.write(line, c.opts.CommandTimeout); err != nil {
		c.drop(l)
		return nil, fmt.Errorf("guest agent: %s: %w", name, err)
	}
	if noReply[name] {
		m, err := l.next(ctx, c.opts.NoReplyWait, false)
		switch {
		case err == nil:
			return m.obj, nil
		case errors.Is(err, errTimeout):
			return []byte(`{"return": {}}`), nil
		case !ctxErr(err):
			// The connection ended (EOF, or closed as QEMU went away):
			// the guest shut down as asked.
			c.drop(l)
			return []byte(`{"return": {}}`), nil
		}
		return nil, c.fail(l, name, err)
	}
	m, err := l.next(ctx, c.opts.CommandTimeout, false)
	if err != nil {
		if errors.Is(err, errTimeout) {
			return nil, fmt.Errorf("%w: no reply to %s within %s", ErrNotResponding, name, c.opts.CommandTimeout)
		}
		return nil, c.fail(l, name, err)
	}
	return m.obj, nil
}

// fail turns a read error into the command's error, dropping the link
// when it broke.
func (c *Conn) fail(l *link, name string, err error) error {
	if ctxErr(err) {
		return fmt.Errorf("guest agent: %s: %w", name, err)
	}
	c.drop(l)
	return fmt.Errorf("guest agent: %s: %w", name, err)
}

func ctxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// connect returns the live link, dialling when there is none. The caller
// holds lock.
func (c *Conn) connect(ctx context.Context) (*link, error) {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if c.cur != nil {
		select {
		case <-c.cur.done:
			c.drop(c.cur)
		default:
			return c.cur, nil
		}
	}
	dctx, cancel := context.WithTimeout(ctx, c.opts.SyncTimeout)
	defer cancel()
	var nc net.Conn
	var err error
	if c.opts.Dial != nil {
		nc, err = c.opts.Dial(dctx)
	} else {
		var d net.Dialer
		nc, err = d.DialContext(dctx, "unix", c.path)
	}
	if err != nil {
		return nil, fmt.Errorf("guest agent: connect %s: %w", c.path, err)
	}
	l := &link{nc: nc, msgs: make(chan message, 64), done: make(chan struct{}), quit: make(chan struct{})}
	go l.read()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		l.close()
		return nil, ErrClosed
	}
	c.open = l
	c.mu.Unlock()
	c.cur = l
	return l, nil
}

// drop closes a link; the next command dials again. The caller holds lock.
func (c *Conn) drop(l *link) {
	l.close()
	if c.cur == l {
		c.cur = nil
	}
	c.mu.Lock()
	if c.open == l {
		c.open = nil
	}
	c.mu.Unlock()
}

// sync runs guest-sync-delimited with a random id before command and
// skips every message before its reply.
func (c *Conn) sync(ctx context.Context, l *link, command string) error {
	id := rand.Int63n(1<<31) + 1
	cmd := fmt.Sprintf("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id)
	if err := l.write([]byte(cmd), c.opts.SyncTimeout); err != nil {
		c.drop(l)
		return fmt.Errorf("guest agent: guest-sync-delimited before %s: %w", command, err)
	}
	deadline := time.Now().Add(c.opts.SyncTimeout)
	for {
		// The reply is the first object after a delimiter.
		if _, err := l.next(ctx, time.Until(deadline), true); err != nil {
			return c.syncErr(l, command, err)
		}
		m, err := l.next(ctx, time.Until(deadline), false)
		if err != nil {
			return c.syncErr(l, command, err)
		}
		var r struct {
			Return *int64 `json:"return"`
		}
		if json.Unmarshal(m.obj, &r) == nil && r.Return != nil && *r.Return == id {
			return nil
		}
		// A reply to an older sync (or an error about the 0xFF): go on.
	}
}

func (c *Conn) syncErr(l *link, command string, err error) error {
	if errors.Is(err, errTimeout) {
		return fmt.Errorf("%w: no answer to guest-sync-delimited within %s, so %s was not sent (is qemu-ga running in the guest?)", ErrNotResponding, c.opts.SyncTimeout, command)
	}
	if !ctxErr(err) {
		c.drop(l)
	}
	return fmt.Errorf("guest agent: guest-sync-delimited before %s: %w", command, err)
}

// errTimeout is next's error when nothing came in time.
var errTimeout = errors.New("timed out")

// next returns the next delimiter (delim set) or object (delim unset),
// skipping the other kind, waiting at most d.
func (l *link) next(ctx context.Context, d time.Duration, delim bool) (message, error) {
	if d <= 0 {
		return message{}, errTimeout
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case m := <-l.msgs:
			if m.delim == delim {
				return m, nil
			}
		case <-l.done:
			// Take what the reader queued before it ended.
			select {
			case m := <-l.msgs:
				if m.delim == delim {
					return m, nil
				}
				continue
			default:
			}
			return message{}, l.err
		case <-t.C:
			return message{}, errTimeout
		case <-ctx.Done():
			return message{}, ctx.Err()
		}
	}
}

// write sends b, bounded by d (QEMU queues what the guest has not read).
func (l *link) write(b []byte, d time.Duration) error {
	l.nc.SetWriteDeadline(time.Now().Add(d))
	_, err := l.nc.Write(b)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: the guest does not read its agent channel", ErrNotResponding)
	}
	return err
}

// read splits the agent's output into delimiters and JSON objects until
// the connection ends.
func (l *link) read() {
	defer func() {
		if l.err == nil {
			l.err = net.ErrClosed
		}
		close(l.done)
	}()
	rd := bufio.NewReaderSize(l.nc, 64<<10)
	var obj []byte
	depth, inString, escaped := 0, false, false
	for {
		b, err := rd.ReadByte()
		if err != nil {
			l.err = err
			return
		}
		if b == 0xff {
			// Never part of JSON (not UTF-8): a delimiter, also inside
			// a broken object, which is dropped.
			obj, depth, inString, escaped = obj[:0], 0, false, false
			if !l.queue(message{delim: true}) {
				return
			}
			continue
		}
		if depth == 0 {
			if b == '{' {
				obj = append(obj[:0], b)
				depth = 1
			}
			continue // whitespace or stray bytes between objects
		}
		obj = append(obj, b)
		if len(obj) > MaxReply {
			l.err = fmt.Errorf("reply larger than %d bytes", MaxReply)
			l.close()
			return
		}
		switch {
		case escaped:
			escaped = false
		case inString:
			switch b {
			case '\\':
				escaped = true
			case '"':
				inString = false
			}
		case b == '"':
			inString = true
		case b == '{' || b == '[':
			depth++
		case b == '}' || b == ']':
			depth--
			if depth == 0 && !l.queue(message{obj: append([]byte(nil), obj...)}) {
				return
			}
		}
	}
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
