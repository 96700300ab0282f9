// Package agenttest is a scriptable fake QEMU guest agent on a real UNIX
// socket (the host end of the agent's channel, as QEMU offers it), for unit
// tests of the agent client and of the driver's agent features.
//
// It behaves as qemu-ga 7.2 where it matters to a client: commands are
// JSON objects, answered in order, one reply line each; a 0xFF byte drops
// the half-read input and is answered with a JSON parse error, as qemu-ga
// does; guest-sync-delimited answers 0xFF then {"return": ID};
// guest-shutdown answers nothing on success. What other commands answer
// is scripted with Handle.
package agenttest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Request is a command as the fake received it.
type Request struct {
	Execute   string
	Arguments json.RawMessage
	Raw       []byte
}

// Response is what a Handler tells the fake to do.
type Response struct {
	Return any            // the "return" value; nil sends {}
	Error  *CommandError  // an error reply instead
	Raw    []byte         // these bytes exactly instead of a reply
	None   bool           // no reply at all
	Delay  time.Duration  // wait this long first
	Close  bool           // close the connection after replying
	Before []byte         // bytes to send before the reply (a stale reply)
	Then   func(*Request) // runs after the reply was sent
}

// CommandError is an agent error object.
type CommandError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// Handler answers one command.
type Handler func(ctx context.Context, req *Request) Response

// Server is the fake agent.
type Server struct {
	Path string // the socket

	ln       net.Listener
	mu       sync.Mutex
	handlers map[string]Handler
	silent   bool
	reqs     []Request
	conns    map[net.Conn]bool
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// New starts a fake agent on a socket in a temporary directory; it is
// stopped at the end of the test. guest-ping and guest-info answer, and
// unknown commands get CommandNotFound, as qemu-ga does.
func New(t testing.TB) *Server {
	t.Helper()
	dir, err := os.MkdirTemp("", "agenttest-")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ga.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Path: path, ln: ln, handlers: map[string]Handler{}, conns: map[net.Conn]bool{}, ctx: ctx, cancel: cancel}
	s.Handle("guest-ping", Return(struct{}{}))
	s.Handle("guest-info", Return(map[string]any{"version": "7.2.22", "supported_commands": []any{}}))
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(func() {
		s.Close()
		os.RemoveAll(dir)
	})
	return s
}

// Return answers with v.
func Return(v any) Handler {
	return func(context.Context, *Request) Response { return Response{Return: v} }
}

// Handle sets what command answers.
func (s *Server) Handle(command string, h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[command] = h
}

// SetSilent makes the fake read everything and answer nothing, as a guest
// whose agent does not run (QEMU still accepts the connection).
func (s *Server) SetSilent(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.silent = on
}

// Requests returns the commands received so far (guest-sync-delimited
// included), in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// Commands returns the names of the commands received, in order.
func (s *Server) Commands() []string {
	var out []string
	for _, r := range s.Requests() {
		out = append(out, r.Execute)
	}
	return out
}

// DropConnections closes the current connections (the agent's channel
// went away and came back).
func (s *Server) DropConnections() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

// Close stops the fake.
func (s *Server) Close() {
	s.cancel()
	s.ln.Close()
	s.DropConnections()
	s.wg.Wait()
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

func (s *Server) serve(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	rd := bufio.NewReader(c)
	var obj []byte
	depth, inString, escaped := 0, false, false
	for {
		b, err := rd.ReadByte()
		if err != nil {
			return
		}
		if b == 0xff {
			obj, depth, inString, escaped = obj[:0], 0, false, false
			if !s.isSilent() {
				fmt.Fprintf(c, "%s\n", `{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\uFFFD'"}}`)
			}
			continue
		}
		if depth == 0 {
			if b == '{' {
				obj, depth = append(obj[:0], b), 1
			}
			continue
		}
		obj = append(obj, b)
		switch {
		case escaped:
			escaped = false
		case inString:
			if b == '\\' {
				escaped = true
			} else if b == '"' {
				inString = false
			}
		case b == '"':
			inString = true
		case b == '{' || b == '[':
			depth++
		case b == '}' || b == ']':
			depth--
			if depth == 0 && !s.command(c, append([]byte(nil), obj...)) {
				return
			}
		}
	}
}

func (s *Server) isSilent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.silent
}

// command answers one command; false closes the connection.
func (s *Server) command(c net.Conn, raw []byte) bool {
	var req struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments"`
	}
	if err := json.Unmarshal(raw, &req); err != nil {
		fmt.Fprintf(c, `{"error": {"class": "GenericError", "desc": "JSON parse error"}}`+"\n")
		return true
	}
	r := Request{Execute: req.Execute, Arguments: req.Arguments, Raw: raw}
	s.mu.Lock()
	s.reqs = append(s.reqs, r)
	silent := s.silent
	h := s.handlers[req.Execute]
	s.mu.Unlock()
	if silent {
		return true
	}
	switch req.Execute {
	case "guest-sync-delimited", "guest-sync":
		if h == nil {
			var a struct {
				ID int64 `json:"id"`
			}
			json.Unmarshal(req.Arguments, &a)
			if req.Execute == "guest-sync-delimited" {
				c.Write([]byte{0xff})
			}
			fmt.Fprintf(c, `{"return": %d}`+"\n", a.ID)
			return true
		}
	case "guest-shutdown":
		if h == nil {
			return true // success: no reply
		}
	}
	if h == nil {
		fmt.Fprintf(c, `{"error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}}`+"\n", req.Execute)
		return true
	}
	resp := h(s.ctx, &r)
	if resp.Delay > 0 {
		select {
		case <-time.After(resp.Delay):
		case <-s.ctx.Done():
			return false
		}
	}
	if len(resp.Before) > 0 {
		c.Write(resp.Before)
	}
	switch {
	case resp.None:
	case resp.Raw != nil:
		c.Write(resp.Raw)
	case resp.Error != nil:
		b, _ := json.Marshal(map[string]any{"error": resp.Error})
		c.Write(append(b, '\n'))
	default:
		v := resp.Return
		if v == nil {
			v = struct{}{}
		}
		b, _ := json.Marshal(map[string]any{"return": v})
		c.Write(append(b, '\n'))
	}
	if resp.Then != nil {
		resp.Then(&r)
	}
	return !resp.Close
}
