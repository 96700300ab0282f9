// Package qmptest is a scriptable fake QMP server on a real UNIX socket, for
// unit tests of code that talks QMP (the monitor package, the capabilities
// prober, the driver) where starting QEMU would be slow or where QEMU cannot
// be made to misbehave on demand.
//
// The server behaves like QEMU 7.2 where it matters to a client: it sends a
// greeting, refuses commands before qmp_capabilities, answers each command
// with its id echoed, answers in order (unless Options.Concurrent), writes
// lines ending in "\r\n", and formats its own errors as QEMU does. What each
// command answers is scripted with Handle; events and arbitrary lines are
// pushed with Event and SendLine.
package qmptest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// DefaultGreeting is the greeting QEMU 7.2 on Debian 12 sends.
const DefaultGreeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}`

// Options configure a Server.
type Options struct {
	// Greeting is the greeting line (without line ending); empty means
	// DefaultGreeting.
	Greeting string

	// BeforeGreeting, if set, runs for each new connection before the
	// greeting is sent; block on ctx in it to play a stopped QEMU. ctx
	// ends when the client disconnects or the server closes.
	BeforeGreeting func(ctx context.Context)

	// Concurrent handles each command in its own goroutine, so replies
	// can overtake each other. QEMU itself answers in order.
	Concurrent bool
}

// Request is a command as the server received it.
type Request struct {
	Execute   string          // the command name ("execute" or "exec-oob")
	OOB       bool            // it came as "exec-oob"
	Arguments json.RawMessage // nil if absent
	ID        json.RawMessage // nil if absent
	Raw       []byte          // the command as received
}

// Error is a QMP error object.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// Response is what a Handler tells the server to send.
type Response struct {
	Return any    // the "return" value; nil sends {}
	Error  *Error // send this error reply instead
	Raw    []byte // send these bytes exactly instead of a reply (no line ending is added)
	None   bool   // send nothing
	Close  bool   // close the connection after sending
}

// Handler answers one command. ctx ends when the client disconnects or the
// server closes; a handler that blocks must return when it does.
type Handler func(ctx context.Context, req *Request) Response

// Return answers every call with v as the "return" value.
func Return(v any) Handler {
	return func(context.Context, *Request) Response { return Response{Return: v} }
}

// Fail answers every call with an error reply.
func Fail(class, desc string) Handler {
	return func(context.Context, *Request) Response {
		return Response{Error: &Error{Class: class, Desc: desc}}
	}
}

// Hang never answers; with the default in-order handling it also holds up
// every later command, as a wedged QEMU does.
func Hang() Handler {
	return func(ctx context.Context, _ *Request) Response {
		<-ctx.Done()
		return Response{None: true}
	}
}

// Delay runs h after d (or sends nothing if the connection ends first).
func Delay(d time.Duration, h Handler) Handler {
	return func(ctx context.Context, req *Request) Response {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return h(ctx, req)
		case <-ctx.Done():
			return Response{None: true}
		}
	}
}

// CloseMidReply sends the first half of a reply returning v, then closes the
// connection, as a QEMU that dies while writing.
func CloseMidReply(v any) Handler {
	return func(_ context.Context, req *Request) Response {
		line, err := replyLine(req.ID, v, nil)
		if err != nil {
			panic(err)
		}
		return Response{Raw: line[:len(line)/2], Close: true}
	}
}

// Server is a fake QMP server. It serves one client at a time, like QEMU,
// and accepts the next one when that client goes.
type Server struct {
	tb   testing.TB
	dir  string
	path string
	ln   *net.UnixListener
	opts Options

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	handlers map[string]Handler
	requests []Request
	cur      *serverConn
	conns    int
}

// New starts a server on a fresh socket in a short directory under /tmp (so
// the path stays well under the 108-byte limit) and stops it and removes the
// directory when the test ends.
func New(tb testing.TB, opts Options) *Server {
	tb.Helper()
	dir, err := os.MkdirTemp("/tmp", "qmpt")
	if err != nil {
		tb.Fatalf("qmptest: %v", err)
	}
	path := filepath.Join(dir, "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		os.RemoveAll(dir)
		tb.Fatalf("qmptest: listen: %v", err)
	}
	if opts.Greeting == "" {
		opts.Greeting = DefaultGreeting
	}
	s := &Server{
		tb: tb, dir: dir, path: path, ln: ln, opts: opts,
		handlers: make(map[string]Handler),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.acceptLoop()
	tb.Cleanup(s.Close)
	return s
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Handle sets the handler for command, replacing any earlier one (including
// the built-in qmp_capabilities). It may be called at any time.
func (s *Server) Handle(command string, h Handler) {
	s.mu.Lock()
	s.handlers[command] = h
	s.mu.Unlock()
}

// Requests returns every JSON value received so far, in order, over all
// connections, including qmp_capabilities and input the server refused.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Connections returns how many clients have connected so far.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

// Event sends an event to the current client, stamped with the current time,
// as QEMU formats it. data may be nil.
func (s *Server) Event(name string, data any) error {
	now := time.Now()
	ev := map[string]any{
		"event": name,
		"timestamp": map[string]int64{
			"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000),
		},
	}
	if data != nil {
		ev["data"] = data
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("qmptest: event %s: %w", name, err)
	}
	return s.SendLine(b)
}

// SendLine sends line, followed by "\r\n", to the current client: an event
// written by hand, a stray reply, or garbage.
func (s *Server) SendLine(line []byte) error {
	s.mu.Lock()
	c := s.cur
	s.mu.Unlock()
	if c == nil {
		return errors.New("qmptest: no client connected")
	}
	return c.write(append(append([]byte(nil), line...), '\r', '\n'))
}

// Disconnect closes the current client's connection, as if QEMU died.
func (s *Server) Disconnect() {
	s.mu.Lock()
	c := s.cur
	s.mu.Unlock()
	if c != nil {
		c.close()
	}
}

// Close stops the server, closes any client connection, waits for its
// goroutines (handlers must honour their ctx) and removes the socket.
func (s *Server) Close() {
	s.cancel()
	s.ln.Close()
	s.Disconnect()
	s.wg.Wait()
	os.RemoveAll(s.dir)
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() == nil {
				s.tb.Errorf("qmptest: accept: %v", err)
			}
			return
		}
		c := &serverConn{s: s, nc: nc}
		c.ctx, c.cancel = context.WithCancel(s.ctx)
		s.mu.Lock()
		s.cur = c
		s.conns++
		s.mu.Unlock()
		c.serve()
		s.mu.Lock()
		if s.cur == c {
			s.cur = nil
		}
		s.mu.Unlock()
	}
}

// serverConn is one client connection.
type serverConn struct {
	s      *Server
	nc     net.Conn
	ctx    context.Context
	cancel context.CancelFunc
	wmu    sync.Mutex

	nmu        sync.Mutex
	negotiated bool // guarded by nmu
}

func (c *serverConn) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.nc.Write(b)
	return err
}

func (c *serverConn) close() {
	c.cancel()
	c.nc.Close()
}

// serve runs one connection until the client goes or the server closes.
func (c *serverConn) serve() {
	defer c.close()
	stop := context.AfterFunc(c.ctx, func() { c.nc.Close() })
	defer stop()
	if f := c.s.opts.BeforeGreeting; f != nil {
		f(c.ctx)
		if c.ctx.Err() != nil {
			return
		}
	}
	if c.write([]byte(c.s.opts.Greeting+"\r\n")) != nil {
		return
	}

	// A reader apart from the handlers notices a client that goes away
	// (and cancels the handlers' ctx) even while a handler hangs.
	reqs := make(chan json.RawMessage, 1024)
	readerDone := make(chan struct{})
	go c.readLoop(reqs, readerDone)
	defer func() {
		c.close()
		<-readerDone
	}()
	var handlers sync.WaitGroup
	defer handlers.Wait()
	for raw := range reqs {
		req, qerr := c.parse(raw)
		c.s.mu.Lock()
		c.s.requests = append(c.s.requests, *req)
		h := c.s.handlers[req.Execute]
		c.s.mu.Unlock()
		if qerr != nil {
			c.send(req.ID, nil, qerr)
			continue
		}
		if c.s.opts.Concurrent && req.Execute != "qmp_capabilities" {
			handlers.Add(1)
			go func() {
				defer handlers.Done()
				c.dispatch(req, h)
			}()
			continue
		}
		if c.dispatch(req, h) {
			return
		}
	}
}

// readLoop decodes the client's JSON stream into reqs until the client goes.
func (c *serverConn) readLoop(reqs chan<- json.RawMessage, done chan<- struct{}) {
	defer close(done)
	defer close(reqs)
	defer c.cancel()
	dec := json.NewDecoder(c.nc)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			var se *json.SyntaxError
			if errors.As(err, &se) {
				// Unlike QEMU, the decoder cannot resynchronise.
				c.send(nil, nil, &Error{"GenericError", "JSON parse error, " + se.Error()})
			}
			return
		}
		select {
		case reqs <- raw:
		case <-c.ctx.Done():
			return
		}
	}
}

// parse checks a command as QEMU's dispatcher does.
func (c *serverConn) parse(raw []byte) (*Request, *Error) {
	req := &Request{Raw: append([]byte(nil), raw...)}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return req, &Error{"GenericError", "QMP input must be a JSON object"}
	}
	req.ID = m["id"]
	for k := range m {
		switch k {
		case "execute", "arguments", "id":
		case "exec-oob":
			req.OOB = true
			return req, &Error{"GenericError", "QMP input member 'exec-oob' is unexpected"}
		default:
			return req, &Error{"GenericError", fmt.Sprintf("QMP input member '%s' is unexpected", k)}
		}
	}
	ex, ok := m["execute"]
	if !ok {
		return req, &Error{"GenericError", "QMP input lacks member 'execute'"}
	}
	if json.Unmarshal(ex, &req.Execute) != nil {
		return req, &Error{"GenericError", "QMP input member 'execute' must be a string"}
	}
	if a, ok := m["arguments"]; ok {
		if t := bytes.TrimSpace(a); len(t) == 0 || t[0] != '{' {
			return req, &Error{"GenericError", "QMP input member 'arguments' must be an object"}
		}
		req.Arguments = a
	}
	return req, nil
}

// dispatch answers one command and reports whether the connection should
// close.
func (c *serverConn) dispatch(req *Request, h Handler) (closeConn bool) {
	c.nmu.Lock()
	negotiated := c.negotiated
	c.nmu.Unlock()
	switch {
	case h != nil && (negotiated || req.Execute == "qmp_capabilities"):
	case req.Execute == "qmp_capabilities" && !negotiated:
		h = func(context.Context, *Request) Response {
			return Response{Return: struct{}{}}
		}
	case req.Execute == "qmp_capabilities":
		h = Fail("CommandNotFound", "Capabilities negotiation is already complete, command ignored")
	case !negotiated:
		h = Fail("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
	default:
		h = Fail("CommandNotFound", fmt.Sprintf("The command %s has not been found", req.Execute))
	}
	resp := h(c.ctx, req)
	if req.Execute == "qmp_capabilities" && !negotiated && resp.Error == nil && !resp.None && resp.Raw == nil {
		// Mark before replying, so that once the client has its reply
		// the server accepts commands and events can be pushed.
		c.nmu.Lock()
		c.negotiated = true
		c.nmu.Unlock()
	}
	switch {
	case resp.Raw != nil:
		c.write(resp.Raw)
	case resp.None:
	default:
		c.send(req.ID, resp.Return, resp.Error)
	}
	if resp.Close {
		c.close()
	}
	return resp.Close
}

func (c *serverConn) send(id json.RawMessage, ret any, e *Error) {
	line, err := replyLine(id, ret, e)
	if err != nil {
		c.s.tb.Errorf("qmptest: %v", err)
		return
	}
	c.write(line)
}

// replyLine formats a reply the way QEMU orders it: "return" then "id", or
// "id" then "error".
func replyLine(id json.RawMessage, ret any, e *Error) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	if e != nil {
		if id != nil {
			fmt.Fprintf(&b, `"id": %s, `, id)
		}
		eb, err := json.Marshal(e)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, `"error": %s}`, eb)
	} else {
		if ret == nil {
			ret = struct{}{}
		}
		rb, err := json.Marshal(ret)
		if err != nil {
			return nil, fmt.Errorf("marshal return value: %w", err)
		}
		fmt.Fprintf(&b, `"return": %s`, rb)
		if id != nil {
			fmt.Fprintf(&b, `, "id": %s`, id)
		}
		b.WriteByte('}')
	}
	b.WriteString("\r\n")
	return b.Bytes(), nil
}
