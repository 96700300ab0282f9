// Package monitor is qemufs's QMP client: one connection per guest, shared by
// the driver and by user sessions.
//
// Unlike go-qemu's SocketMonitor it tags every command with its own id and
// routes replies by id, so concurrent callers never see each other's replies;
// it bounds every step with a deadline; it reads replies of any size; and it
// hands events to a single ordered callback plus any number of buffered
// subscribers without ever letting a slow reader stall command replies.
//
// A *Conn also implements go-qemu's qmp.Monitor, so
// raw.NewMonitor(conn) gives go-qemu's generated typed commands on it.
package monitor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// Defaults for the zero values of Options.
const (
	// DefaultCommandTimeout bounds a command whose context has no deadline.
	DefaultCommandTimeout = 30 * time.Second
	// DefaultEventBuffer is the channel capacity of each Events subscriber.
	DefaultEventBuffer = 128
	// DefaultMaxReplySize is the longest line accepted from QEMU; a longer
	// one ends the connection, since nothing can be routed after it.
	DefaultMaxReplySize = 64 << 20
)

// MaxCommandSize is the largest command RunRaw accepts. QEMU limits a JSON
// message to 2 million tokens and reports excess in a way that cannot be
// matched to a command, so qemufs refuses oversized input itself.
const MaxCommandSize = 1 << 20

// ErrClosed is the reason Err reports after Close.
var ErrClosed = errors.New("monitor: connection closed")

// ErrLost is wrapped by Err (and by the errors of pending commands) when
// the connection ended without Close: QEMU exited or closed the socket. The
// underlying error (io.EOF, io.ErrUnexpectedEOF, ECONNRESET, ...) is
// wrapped too.
var ErrLost = errors.New("monitor: connection lost")

// ErrBadCommand is wrapped by RunRaw's error for input that is not one
// well-formed JSON object; such input never reaches QEMU.
var ErrBadCommand = errors.New("monitor: bad command")

// Options configure a connection made by Dial.
type Options struct {
	// OnEvent, if set, is called for every QMP event received from the
	// moment the connection is up, in order, from one goroutine. It runs
	// apart from the reader, so it may call Execute on the same
	// connection, but it holds up later events and should return quickly.
	// Events and replies travel apart: an event QEMU sent just before a
	// reply (STOP before the reply to "stop") may reach OnEvent after the
	// command has returned.
	OnEvent func(Event)

	// CommandTimeout bounds commands whose context has no deadline
	// (go-qemu's Run has no context at all). Zero means
	// DefaultCommandTimeout; negative means no bound.
	CommandTimeout time.Duration

	// EventBuffer is the capacity of each channel returned by Events; a
	// subscriber that falls this far behind loses events (counted by
	// EventsDropped). Zero means DefaultEventBuffer.
	EventBuffer int

	// MaxReplySize bounds one line from QEMU. Zero means
	// DefaultMaxReplySize.
	MaxReplySize int
}

// Greeting is what QEMU announced when the connection opened.
type Greeting struct {
	Major, Minor, Micro int
	Package             string   // distribution package string, e.g. "Debian 1:7.2+dfsg-7"
	Capabilities        []string // e.g. ["oob"]; qemufs enables none of them
}

// Error is an error reply from QEMU, e.g. {"class": "CommandNotFound",
// "desc": "The command foo has not been found"}. Execute and Run return it
// wrapped with the command name; use errors.As to get at it.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string {
	return e.Class + ": " + e.Desc
}

// Conn is one QMP connection. Its methods are safe for concurrent use.
type Conn struct {
	nc      net.Conn
	br      *bufio.Reader
	opts    Options
	greet   Greeting
	timeout time.Duration

	// wsem serialises writes; it is a channel so that waiting for it
	// honours the caller's context. nextID and wbuf are guarded by it.
	wsem   chan struct{}
	nextID uint64
	wbuf   []byte

	mu      sync.Mutex
	pending map[uint64]*call // by wire id; nil once the reader has stopped
	err     error            // why the connection ended
	readEnd chan struct{}    // closed when the reader has stopped

	events    eventQueue
	done      chan struct{} // closed when the reader stopped and events drained
	closeOnce sync.Once
}

// call is one command waiting for its reply.
type call struct {
	ch chan *reply // capacity 1: the reader never blocks on it
}

// reply is a reply line with the positions the reader found in it, so that
// callers need not scan a large reply again.
type reply struct {
	line             []byte
	id, ret, errv    member
	hasID            bool
	hasRet, hasErr   bool
	cutStart, cutEnd int // the span to remove to drop the id member
}

// Dial connects to the QMP socket at socketPath, reads QEMU's greeting and
// leaves capabilities negotiation mode. ctx bounds all of it (if ctx has no
// deadline, Options.CommandTimeout does), so a stopped or wedged QEMU cannot
// hang Dial.
func Dial(ctx context.Context, socketPath string, opts Options) (*Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		if t := commandTimeout(opts); t > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, t)
			defer cancel()
		}
	}
	c, err := dial(ctx, socketPath, opts)
	if err != nil {
		if cerr := ctxErr(ctx, err); cerr != nil {
			err = fmt.Errorf("%w (%v)", cerr, err)
		}
		return nil, fmt.Errorf("qmp dial %s: %w", socketPath, err)
	}
	return c, nil
}

func dial(ctx context.Context, socketPath string, opts Options) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, err
	}
	c := newConn(nc, opts)
	// Bound the handshake: a deadline covers ctx's deadline, and a
	// cancellation without one forces an immediate deadline.
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	err = c.handshake()
	if !stop() || ctx.Err() != nil {
		if err == nil {
			err = ctx.Err()
		}
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	go c.readLoop()
	go c.dispatchLoop()
	return c, nil
}

func newConn(nc net.Conn, opts Options) *Conn {
	c := &Conn{
		nc:      nc,
		br:      bufio.NewReaderSize(nc, 64<<10),
		opts:    opts,
		wsem:    make(chan struct{}, 1),
		pending: make(map[uint64]*call),
		readEnd: make(chan struct{}),
		done:    make(chan struct{}),
	}
	c.timeout = commandTimeout(opts)
	if c.opts.EventBuffer <= 0 {
		c.opts.EventBuffer = DefaultEventBuffer
	}
	if c.opts.MaxReplySize <= 0 {
		c.opts.MaxReplySize = DefaultMaxReplySize
	}
	c.events.init()
	return c
}

func commandTimeout(opts Options) time.Duration {
	if opts.CommandTimeout == 0 {
		return DefaultCommandTimeout
	}
	return opts.CommandTimeout
}

// handshake reads the greeting and negotiates capabilities. Events that
// arrive meanwhile are queued for OnEvent like any other.
func (c *Conn) handshake() error {
	line, err := c.readLine()
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	var g struct {
		QMP *struct {
			Version struct {
				QEMU struct {
					Major, Minor, Micro int
				} `json:"qemu"`
				Package string `json:"package"`
			} `json:"version"`
			Capabilities []string `json:"capabilities"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(line, &g); err != nil || g.QMP == nil {
		return fmt.Errorf("bad greeting %.200q", line)
	}
	v := g.QMP.Version
	c.greet = Greeting{
		Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro,
		Package: v.Package, Capabilities: g.QMP.Capabilities,
	}

	c.nextID++
	id := c.nextID
	cmd := append([]byte(`{"execute":"qmp_capabilities","id":`), strconv.FormatUint(id, 10)...)
	cmd = append(cmd, "}\n"...)
	if _, err := c.nc.Write(cmd); err != nil {
		return fmt.Errorf("qmp_capabilities: %w", err)
	}
	for {
		line, err := c.readLine()
		if err != nil {
			return fmt.Errorf("qmp_capabilities: %w", err)
		}
		r, ev := classify(line)
		if ev != nil {
			c.events.push(*ev)
			continue
		}
		if r == nil {
			continue
		}
		if r.hasID && !idEquals(r.line[r.id.valStart:r.id.valEnd], id) {
			continue
		}
		if err := r.qemuError(); err != nil {
			return fmt.Errorf("qmp_capabilities: %w", err)
		}
		return nil
	}
}

// Greeting returns what QEMU announced when the connection opened.
func (c *Conn) Greeting() Greeting {
	g := c.greet
	g.Capabilities = append([]string(nil), g.Capabilities...)
	return g
}

// Done returns a channel closed once the connection has ended (EOF, error or
// Close) and every event received before the end has been handed to
// OnEvent and the subscribers.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err tells why the connection ended: ErrClosed after Close, or an error
// wrapping ErrLost and the read error (io.EOF when QEMU closed the socket).
// It is nil while the connection is up.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection. Pending commands fail with ErrClosed. It does
// not wait for OnEvent to finish, so it may be called from OnEvent.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.setErr(ErrClosed)
		err = c.nc.Close()
		<-c.readEnd
	})
	return err
}

func (c *Conn) setErr(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

// readLoop reads lines from QEMU until the connection ends, routing replies
// to their callers and queueing events.
func (c *Conn) readLoop() {
	for {
		line, err := c.readLine()
		if err != nil {
			c.stopReading(fmt.Errorf("%w: %w", ErrLost, err))
			return
		}
		r, ev := classify(line)
		switch {
		case ev != nil:
			c.events.push(*ev)
		case r != nil:
			c.route(r)
		}
		// Anything else (a repeated greeting, garbage) is ignored: it
		// belongs to no command.
	}
}

// stopReading records why reading stopped and fails every pending command.
func (c *Conn) stopReading(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.pending = nil
	c.mu.Unlock()
	close(c.readEnd)
	c.nc.Close()
	c.events.close()
}

// route hands a reply to the command it answers. A reply without an id
// answers the oldest outstanding command: QEMU (without the "oob"
// capability, which qemufs never enables) answers strictly in order, and
// drops the id only when it could not parse the command.
func (c *Conn) route(r *reply) {
	var id uint64
	c.mu.Lock()
	if r.hasID {
		n, err := strconv.ParseUint(string(r.line[r.id.valStart:r.id.valEnd]), 10, 64)
		if err != nil {
			c.mu.Unlock()
			return // not one of ours
		}
		id = n
	} else {
		for k := range c.pending {
			if id == 0 || k < id {
				id = k
			}
		}
	}
	cl := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if cl != nil {
		cl.ch <- r
	}
}

// ctxErr returns ctx's error if err is due to ctx: the socket deadline is
// set to ctx's deadline and may fire a moment before ctx's own timer does.
func ctxErr(ctx context.Context, err error) error {
	if e := ctx.Err(); e != nil {
		return e
	}
	if _, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) {
		return context.DeadlineExceeded
	}
	return nil
}

func idEquals(raw []byte, id uint64) bool {
	n, err := strconv.ParseUint(string(raw), 10, 64)
	return err == nil && n == id
}

// readLine returns the next line from QEMU, in a new slice, without its line
// ending.
func (c *Conn) readLine() ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	buf := append([]byte(nil), line...)
	for err == bufio.ErrBufferFull {
		if len(buf) > c.opts.MaxReplySize {
			return nil, fmt.Errorf("line from QEMU longer than %d bytes", c.opts.MaxReplySize)
		}
		line, err = c.br.ReadSlice('\n')
		buf = append(buf, line...)
	}
	line = buf
	if err != nil {
		if err == io.EOF && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	n := len(line) - 1
	if n > 0 && line[n-1] == '\r' {
		n--
	}
	return line[:n], nil
}

// classify looks at the top level of a line from QEMU and returns it as a
// reply or an event; both are nil for anything else.
func classify(line []byte) (*reply, *Event) {
	var (
		r                       reply
		name, data, ts          member
		hasName, hasData, hasTS bool
		prevEnd                 int
		idIndex, index          = -1, 0
	)
	it := newObjIter(line)
	for m, ok := it.next(); ok; m, ok = it.next() {
		switch {
		case m.keyIs(line, "id"):
			if !r.hasID {
				r.id, r.hasID, idIndex = m, true, index
				if index > 0 {
					r.cutStart, r.cutEnd = prevEnd, m.valEnd
				} else {
					r.cutStart, r.cutEnd = m.keyStart, m.valEnd
				}
			}
		case m.keyIs(line, "return"):
			r.ret, r.hasRet = m, true
		case m.keyIs(line, "error"):
			r.errv, r.hasErr = m, true
		case m.keyIs(line, "event"):
			name, hasName = m, true
		case m.keyIs(line, "data"):
			data, hasData = m, true
		case m.keyIs(line, "timestamp"):
			ts, hasTS = m, true
		}
		if idIndex == 0 && index == 1 {
			r.cutEnd = m.keyStart
		}
		prevEnd = m.valEnd
		index++
	}
	if it.err != nil {
		return nil, nil
	}
	if hasName {
		ev := Event{Raw: line}
		var ok bool
		if ev.Name, ok = name.stringValue(line); !ok {
			return nil, nil
		}
		if hasData {
			ev.Data = json.RawMessage(line[data.valStart:data.valEnd])
		}
		if hasTS {
			var t struct{ Seconds, Microseconds int64 }
			if json.Unmarshal(line[ts.valStart:ts.valEnd], &t) == nil {
				ev.Timestamp = time.Unix(t.Seconds, t.Microseconds*1000)
			}
		}
		return nil, &ev
	}
	if r.hasRet || r.hasErr {
		r.line = line
		return &r, nil
	}
	return nil, nil
}

// qemuError returns the reply's error object as an *Error, or nil.
func (r *reply) qemuError() error {
	if !r.hasErr {
		return nil
	}
	e := new(Error)
	if err := json.Unmarshal(r.line[r.errv.valStart:r.errv.valEnd], e); err != nil {
		return fmt.Errorf("undecodable error reply %.200q: %w", r.line, err)
	}
	return e
}

// roundTrip sends one command built by build (which appends the command,
// carrying the given wire id, to buf) and waits for its reply. Non-nil oob
// is ancillary data (SCM_RIGHTS) sent with the command's bytes. A command
// that times out says so in words a user can act on (a QEMU stopped with
// SIGSTOP or wedged answers nothing), still matching
// context.DeadlineExceeded.
func (c *Conn) roundTrip(ctx context.Context, build func(buf []byte, id uint64) []byte, oob []byte) (*reply, error) {
	t0 := time.Now()
	r, err := c.exchange(ctx, build, oob)
	if err != nil && errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("QEMU did not answer within %v (is the process stopped or hung?): %w", time.Since(t0).Round(100*time.Millisecond), err)
	}
	return r, err
}

// exchange is roundTrip without the explanation of a timeout.
func (c *Conn) exchange(ctx context.Context, build func(buf []byte, id uint64) []byte, oob []byte) (*reply, error) {
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	select {
	case c.wsem <- struct{}{}:
	default:
		select {
		case c.wsem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.readEnd:
			return nil, c.Err()
		}
	}
	c.nextID++
	id := c.nextID
	line := build(c.wbuf[:0], id)
	if cap(line) <= 64<<10 {
		c.wbuf = line
	}
	cl := &call{ch: make(chan *reply, 1)}
	c.mu.Lock()
	if c.pending == nil {
		c.mu.Unlock()
		<-c.wsem
		return nil, c.Err()
	}
	c.pending[id] = cl
	c.mu.Unlock()

	dl, _ := ctx.Deadline()
	c.nc.SetWriteDeadline(dl)
	n, err := c.write(line, oob)
	<-c.wsem
	if err != nil {
		c.mu.Lock()
		if c.pending != nil {
			delete(c.pending, id)
		}
		c.mu.Unlock()
		if n > 0 {
			// QEMU holds half a command: nothing sent after it could
			// be parsed, so the connection is lost.
			c.stopWith(fmt.Errorf("%w: write interrupted mid-command: %w", ErrLost, err))
		}
		if cerr := ctxErr(ctx, err); cerr != nil {
			return nil, cerr
		}
		if cerr := c.Err(); cerr != nil {
			return nil, cerr // the connection ended meanwhile
		}
		return nil, fmt.Errorf("write: %w", err)
	}

	select {
	case r := <-cl.ch:
		return r, nil
	case <-ctx.Done():
		// The entry stays pending: its late reply must still be
		// consumed in order, and is then dropped.
		select {
		case r := <-cl.ch:
			return r, nil
		default:
		}
		return nil, ctx.Err()
	case <-c.readEnd:
		select {
		case r := <-cl.ch:
			return r, nil
		default:
		}
		return nil, c.Err()
	}
}

// stopWith ends the connection for err; the reader then fails what is
// pending.
func (c *Conn) stopWith(err error) {
	c.setErr(err)
	c.nc.Close()
}

// Execute runs command with args (marshalled to JSON; nil for none) and
// decodes the "return" value into result (nil to ignore it). An error reply
// from QEMU is returned as an *Error wrapped with the command name.
func (c *Conn) Execute(ctx context.Context, command string, args any, result any) error {
	return c.execute(ctx, command, args, result, nil)
}

func (c *Conn) execute(ctx context.Context, command string, args any, result any, oob []byte) error {
	if command == "qmp_capabilities" {
		return fmt.Errorf("%s: %w", command, errAlreadyNegotiated)
	}
	name, err := json.Marshal(command)
	if err != nil {
		return fmt.Errorf("%s: %w", command, err)
	}
	var argb []byte
	if args != nil {
		if argb, err = json.Marshal(args); err != nil {
			return fmt.Errorf("%s: marshal arguments: %w", command, err)
		}
	}
	r, err := c.roundTrip(ctx, func(b []byte, id uint64) []byte {
		b = append(b, `{"execute":`...)
		b = append(b, name...)
		if argb != nil {
			b = append(b, `,"arguments":`...)
			b = append(b, argb...)
		}
		b = append(b, `,"id":`...)
		b = strconv.AppendUint(b, id, 10)
		return append(b, "}\n"...)
	}, oob)
	if err != nil {
		return fmt.Errorf("%s: %w", command, err)
	}
	if err := r.qemuError(); err != nil {
		return fmt.Errorf("%s: %w", command, err)
	}
	if result != nil {
		if !r.hasRet {
			return fmt.Errorf("%s: reply has no return value: %.200q", command, r.line)
		}
		if err := json.Unmarshal(r.line[r.ret.valStart:r.ret.valEnd], result); err != nil {
			return fmt.Errorf("%s: decode reply: %w", command, err)
		}
	}
	return nil
}

// HMP runs a human monitor command line, e.g. "info status", via
// human-monitor-command and returns its output.
func (c *Conn) HMP(ctx context.Context, line string) (string, error) {
	var out string
	err := c.Execute(ctx, "human-monitor-command", struct {
		CommandLine string `json:"command-line"`
	}{line}, &out)
	return out, err
}
