package qmptest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

const long = 20 * time.Second

// client is a bare line-oriented QMP client.
type client struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func connect(t *testing.T, s *Server) *client {
	t.Helper()
	nc, err := net.Dial("unix", s.Path())
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(long))
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc, br: bufio.NewReader(nc)}
}

// line reads one line and checks that it ends in "\r\n".
func (c *client) line() string {
	c.t.Helper()
	l, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %q, %v", l, err)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("line %q does not end in CRLF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

func (c *client) send(cmd string) {
	c.t.Helper()
	if _, err := io.WriteString(c.nc, cmd+"\n"); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) call(cmd string) string {
	c.t.Helper()
	c.send(cmd)
	return c.line()
}

// negotiated connects and leaves negotiation mode.
func negotiated(t *testing.T, s *Server) *client {
	t.Helper()
	c := connect(t, s)
	if g := c.line(); g != DefaultGreeting {
		t.Fatalf("greeting %q", g)
	}
	if r := c.call(`{"execute":"qmp_capabilities"}`); r != `{"return": {}}` {
		t.Fatalf("negotiation: %s", r)
	}
	return c
}

func TestProtocol(t *testing.T) {
	s := New(t, Options{})
	s.Handle("query-status", Return(map[string]any{"status": "running"}))
	s.Handle("broken", Fail("GenericError", "it broke"))
	s.Handle("echo", func(_ context.Context, r *Request) Response { return Response{Return: r.Arguments} })
	c := connect(t, s)
	if g := c.line(); g != DefaultGreeting {
		t.Fatalf("greeting %q", g)
	}
	// The answers QEMU 7.2 gives, byte for byte where it formats them.
	steps := []struct{ cmd, want string }{
		{`{"execute":"query-status","id":1}`, `{"id": 1, "error": {"class":"CommandNotFound","desc":"Expecting capabilities negotiation with 'qmp_capabilities'"}}`},
		{`{"execute":"qmp_capabilities","id":"n"}`, `{"return": {}, "id": "n"}`},
		{`{"execute":"qmp_capabilities"}`, `{"error": {"class":"CommandNotFound","desc":"Capabilities negotiation is already complete, command ignored"}}`},
		{`{"execute":"query-status","id":{"a":[1]}}`, `{"return": {"status":"running"}, "id": {"a":[1]}}`},
		{`{"execute":"query-status"}`, `{"return": {"status":"running"}}`},
		{`{"execute":"broken","id":2}`, `{"id": 2, "error": {"class":"GenericError","desc":"it broke"}}`},
		{`{"execute":"echo","arguments":{"x":[1]},"id":3}`, `{"return": {"x":[1]}, "id": 3}`},
		{`{"execute":"nope","id":4}`, `{"id": 4, "error": {"class":"CommandNotFound","desc":"The command nope has not been found"}}`},
		{`{"exec-oob":"query-status","id":5}`, `{"id": 5, "error": {"class":"GenericError","desc":"QMP input member 'exec-oob' is unexpected"}}`},
		{`{"execute":"query-status","bogus":1,"id":6}`, `{"id": 6, "error": {"class":"GenericError","desc":"QMP input member 'bogus' is unexpected"}}`},
		{`{"id":7}`, `{"id": 7, "error": {"class":"GenericError","desc":"QMP input lacks member 'execute'"}}`},
		{`{"execute":5,"id":8}`, `{"id": 8, "error": {"class":"GenericError","desc":"QMP input member 'execute' must be a string"}}`},
		{`{"execute":"echo","arguments":5,"id":9}`, `{"id": 9, "error": {"class":"GenericError","desc":"QMP input member 'arguments' must be an object"}}`},
		{`[1,2]`, `{"error": {"class":"GenericError","desc":"QMP input must be a JSON object"}}`},
		{"{\"execute\":\n\"query-status\",\n\"id\":10}", `{"return": {"status":"running"}, "id": 10}`},
	}
	for _, st := range steps {
		if got := c.call(st.cmd); got != st.want {
			t.Errorf("%s\n- want: %s\n-  got: %s", st.cmd, st.want, got)
		}
	}
	reqs := s.Requests()
	if len(reqs) != len(steps) {
		t.Fatalf("recorded %d requests, want %d", len(reqs), len(steps))
	}
	if r := reqs[6]; r.Execute != "echo" || string(r.Arguments) != `{"x":[1]}` || string(r.ID) != "3" || r.Raw == nil {
		t.Errorf("recorded %+v", r)
	}
	if !reqs[8].OOB {
		t.Errorf("exec-oob not recorded as OOB: %+v", reqs[8])
	}

	// Garbage ends the connection after an error, since the decoder
	// cannot find the next command.
	if got := c.call(`}garbage`); !strings.Contains(got, `"JSON parse error`) {
		t.Errorf("garbage: %s", got)
	}
	if l, err := c.br.ReadString('\n'); err != io.EOF {
		t.Errorf("after garbage: %q, %v; want EOF", l, err)
	}
}

func TestGreeting(t *testing.T) {
	released := make(chan struct{})
	s := New(t, Options{
		Greeting:       `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 9}, "package": ""}, "capabilities": []}}`,
		BeforeGreeting: func(ctx context.Context) { <-released },
	})
	c := connect(t, s)
	close(released)
	if g := c.line(); !strings.Contains(g, `"major": 9`) {
		t.Errorf("greeting %q", g)
	}
}

func TestEventsAndLines(t *testing.T) {
	s := New(t, Options{})
	if err := s.Event("X", nil); err == nil {
		t.Error("Event with no client succeeded")
	}
	c := negotiated(t, s)
	before := time.Now().Add(-time.Second)
	if err := s.Event("STOP", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Event("SHUTDOWN", map[string]any{"guest": true, "reason": "guest-shutdown"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SendLine([]byte("garbage")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		name string
		data string
	}{{"STOP", ""}, {"SHUTDOWN", `{"guest":true,"reason":"guest-shutdown"}`}} {
		var ev struct {
			Event     string
			Data      json.RawMessage
			Timestamp struct{ Seconds, Microseconds int64 }
		}
		l := c.line()
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		if ev.Event != want.name || string(ev.Data) != want.data {
			t.Errorf("- want: %s %s\n-  got: %s", want.name, want.data, l)
		}
		if time.Unix(ev.Timestamp.Seconds, 0).Before(before.Truncate(time.Second)) {
			t.Errorf("timestamp %+v", ev.Timestamp)
		}
	}
	if l := c.line(); l != "garbage" {
		t.Errorf("SendLine: got %q", l)
	}
}

// TestOrder checks that commands are answered in order by default and out of
// order with Concurrent.
func TestOrder(t *testing.T) {
	for _, concurrent := range []bool{false, true} {
		s := New(t, Options{Concurrent: concurrent})
		second := make(chan struct{})
		s.Handle("first", func(ctx context.Context, _ *Request) Response {
			if concurrent {
				// Answer only after the second was answered.
				select {
				case <-second:
				case <-ctx.Done():
				}
			}
			return Response{Return: "first"}
		})
		s.Handle("second", func(context.Context, *Request) Response {
			defer close(second)
			return Response{Return: "second"}
		})
		c := negotiated(t, s)
		c.send(`{"execute":"first"}`)
		c.send(`{"execute":"second"}`)
		got := c.line() + c.line()
		want := `{"return": "first"}{"return": "second"}`
		if concurrent {
			want = `{"return": "second"}{"return": "first"}`
		}
		if got != want {
			t.Errorf("concurrent=%v\n- want: %s\n-  got: %s", concurrent, want, got)
		}
	}
}

func TestMisbehaviour(t *testing.T) {
	t.Run("Delay", func(t *testing.T) {
		s := New(t, Options{})
		s.Handle("slow", Delay(50*time.Millisecond, Return(1)))
		c := negotiated(t, s)
		start := time.Now()
		if got := c.call(`{"execute":"slow"}`); got != `{"return": 1}` {
			t.Errorf("got %s", got)
		}
		if d := time.Since(start); d < 50*time.Millisecond {
			t.Errorf("answered after %v", d)
		}
	})
	t.Run("CloseMidReply", func(t *testing.T) {
		s := New(t, Options{})
		s.Handle("die", CloseMidReply(map[string]string{"a": "bcdefgh"}))
		c := negotiated(t, s)
		c.send(`{"execute":"die","id":1}`)
		rest, err := io.ReadAll(c.br)
		if err != nil || len(rest) == 0 || strings.Contains(string(rest), "\n") || !strings.HasPrefix(string(rest), `{"return": `) {
			t.Errorf("got %q, %v; want a partial reply then EOF", rest, err)
		}
	})
	t.Run("Hang ends with the client", func(t *testing.T) {
		s := New(t, Options{})
		started, ended := make(chan struct{}), make(chan struct{})
		s.Handle("hang", func(ctx context.Context, r *Request) Response {
			close(started)
			resp := Hang()(ctx, r)
			close(ended)
			return resp
		})
		c := negotiated(t, s)
		c.send(`{"execute":"hang"}`)
		<-started
		c.nc.Close()
		select {
		case <-ended:
		case <-time.After(long):
			t.Fatal("handler's ctx not cancelled when the client went")
		}
	})
	t.Run("Disconnect and reconnect", func(t *testing.T) {
		s := New(t, Options{})
		c := negotiated(t, s)
		s.Disconnect()
		if _, err := c.br.ReadString('\n'); !errors.Is(err, io.EOF) {
			t.Errorf("after Disconnect: %v", err)
		}
		negotiated(t, s)
		if n := s.Connections(); n != 2 {
			t.Errorf("Connections: %d", n)
		}
	})
}
