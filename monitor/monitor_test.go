package monitor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"
	"github.com/qemufs/qemufs/internal/qmptest"
)

// long bounds waits that should end almost at once; it is generous so that a
// loaded machine does not make tests flaky.
const long = 20 * time.Second

func ctxLong(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), long)
	t.Cleanup(cancel)
	return ctx
}

// dialFake starts a fake server, lets setup script it, and dials it.
func dialFake(t *testing.T, sopts qmptest.Options, opts Options, setup func(*qmptest.Server)) (*qmptest.Server, *Conn) {
	t.Helper()
	s := qmptest.New(t, sopts)
	if setup != nil {
		setup(s)
	}
	c, err := Dial(ctxLong(t), s.Path(), opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return s, c
}

func TestDial(t *testing.T) {
	s, c := dialFake(t, qmptest.Options{}, Options{}, nil)
	g := c.Greeting()
	if g.Major != 7 || g.Minor != 2 || g.Micro != 22 || !strings.HasPrefix(g.Package, "Debian") {
		t.Errorf("greeting: got %+v", g)
	}
	if len(g.Capabilities) != 1 || g.Capabilities[0] != "oob" {
		t.Errorf("capabilities: got %q, want [oob]", g.Capabilities)
	}
	reqs := s.Requests()
	if len(reqs) != 1 || reqs[0].Execute != "qmp_capabilities" || reqs[0].ID == nil || reqs[0].Arguments != nil {
		t.Fatalf("negotiation: got %+v", reqs)
	}
	if err := c.Connect(); err != nil {
		t.Errorf("Connect on a live connection: %v", err)
	}
	if err := c.Err(); err != nil {
		t.Errorf("Err on a live connection: %v", err)
	}
}

func TestDialFailures(t *testing.T) {
	cases := []struct {
		name    string
		sopts   qmptest.Options
		setup   func(*qmptest.Server)
		cancel  bool // cancel the context instead of a deadline
		bound   bool // no deadline on ctx: Options.CommandTimeout bounds Dial
		wantCtx error
		wantQMP string // class of an *Error in the chain
		wantMsg string
	}{
		{
			name:    "greeting never comes",
			sopts:   qmptest.Options{BeforeGreeting: func(ctx context.Context) { <-ctx.Done() }},
			wantCtx: context.DeadlineExceeded,
		},
		{
			name:    "greeting never comes, cancelled",
			sopts:   qmptest.Options{BeforeGreeting: func(ctx context.Context) { <-ctx.Done() }},
			cancel:  true,
			wantCtx: context.Canceled,
		},
		{
			name:    "greeting never comes, CommandTimeout",
			sopts:   qmptest.Options{BeforeGreeting: func(ctx context.Context) { <-ctx.Done() }},
			bound:   true,
			wantCtx: context.DeadlineExceeded,
		},
		{
			name:    "negotiation hangs",
			setup:   func(s *qmptest.Server) { s.Handle("qmp_capabilities", qmptest.Hang()) },
			wantCtx: context.DeadlineExceeded,
		},
		{
			name:    "negotiation refused",
			setup:   func(s *qmptest.Server) { s.Handle("qmp_capabilities", qmptest.Fail("GenericError", "no")) },
			wantQMP: "GenericError",
		},
		{
			name:    "bad greeting",
			sopts:   qmptest.Options{Greeting: `{"hello": 1}`},
			wantMsg: "bad greeting",
		},
		{
			name:    "closed during negotiation",
			setup:   func(s *qmptest.Server) { s.Handle("qmp_capabilities", qmptest.CloseMidReply(struct{}{})) },
			wantMsg: "unexpected EOF",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := qmptest.New(t, tc.sopts)
			if tc.setup != nil {
				tc.setup(s)
			}
			var ctx context.Context
			var cancel context.CancelFunc
			var opts Options
			switch {
			case tc.bound:
				ctx, cancel = context.Background(), func() {}
				opts.CommandTimeout = 100 * time.Millisecond
			case tc.cancel:
				ctx, cancel = context.WithCancel(context.Background())
				time.AfterFunc(100*time.Millisecond, cancel)
			default:
				ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
			}
			defer cancel()
			start := time.Now()
			c, err := Dial(ctx, s.Path(), opts)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded, want an error")
			}
			if d := time.Since(start); d > long {
				t.Errorf("Dial took %v", d)
			}
			if tc.wantCtx != nil && !errors.Is(err, tc.wantCtx) {
				t.Errorf("- want: %v\n-  got: %v", tc.wantCtx, err)
			}
			var qe *Error
			if tc.wantQMP != "" && (!errors.As(err, &qe) || qe.Class != tc.wantQMP) {
				t.Errorf("- want: *Error of class %s\n-  got: %v", tc.wantQMP, err)
			}
			if tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("- want: error containing %q\n-  got: %v", tc.wantMsg, err)
			}
			if !strings.Contains(err.Error(), s.Path()) {
				t.Errorf("error does not name the socket: %v", err)
			}
		})
	}
}

func TestDialNoSocket(t *testing.T) {
	_, err := Dial(ctxLong(t), t.TempDir()+"/none.sock", Options{})
	if err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("got %v, want an error naming the socket", err)
	}
}

func TestExecute(t *testing.T) {
	type status struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	cases := []struct {
		name      string
		command   string
		args      any
		result    any
		want      any    // expected *result
		wantArgs  string // arguments the server saw ("" for none)
		wantClass string
		wantDesc  string
	}{
		{
			name: "typed result", command: "query-status",
			result: &status{}, want: &status{Status: "paused", Running: false},
		},
		{
			name: "arguments", command: "echo", args: map[string]any{"x": 1, "y": "z"},
			result: new(map[string]any), want: &map[string]any{"x": 1.0, "y": "z"},
			wantArgs: `{"x":1,"y":"z"}`,
		},
		{
			name: "result ignored", command: "stop",
		},
		{
			name: "error reply", command: "broken",
			wantClass: "GenericError", wantDesc: "it broke",
		},
		{
			name: "unknown command", command: "no-such-command",
			wantClass: "CommandNotFound", wantDesc: "The command no-such-command has not been found",
		},
		{
			name: "second negotiation refused locally", command: "qmp_capabilities",
			wantClass: "CommandNotFound", wantDesc: "Capabilities negotiation is already complete, command ignored",
		},
	}
	s, c := dialFake(t, qmptest.Options{}, Options{}, func(s *qmptest.Server) {
		s.Handle("query-status", qmptest.Return(map[string]any{"status": "paused", "running": false, "singlestep": false}))
		s.Handle("stop", qmptest.Return(nil))
		s.Handle("broken", qmptest.Fail("GenericError", "it broke"))
		s.Handle("echo", func(_ context.Context, r *qmptest.Request) qmptest.Response {
			return qmptest.Response{Return: r.Arguments}
		})
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(s.Requests())
			err := c.Execute(ctxLong(t), tc.command, tc.args, tc.result)
			if tc.wantClass != "" {
				var qe *Error
				if !errors.As(err, &qe) || qe.Class != tc.wantClass || qe.Desc != tc.wantDesc {
					t.Fatalf("- want: *Error{%s, %s}\n-  got: %v", tc.wantClass, tc.wantDesc, err)
				}
				if !strings.HasPrefix(err.Error(), tc.command+": ") {
					t.Errorf("error %q does not start with the command name", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Execute: %v", err)
			}
			if tc.want != nil {
				got, _ := json.Marshal(tc.result)
				want, _ := json.Marshal(tc.want)
				if !bytes.Equal(got, want) {
					t.Errorf("- want: %s\n-  got: %s", want, got)
				}
			}
			reqs := s.Requests()[before:]
			if len(reqs) != 1 || reqs[0].Execute != tc.command {
				t.Fatalf("server saw %+v", reqs)
			}
			if string(reqs[0].Arguments) != tc.wantArgs {
				t.Errorf("arguments: - want: %q\n-  got: %q", tc.wantArgs, reqs[0].Arguments)
			}
		})
	}
	if n := len(s.Requests()); n != 1+len(cases)-1 {
		t.Errorf("server saw %d commands, want %d (qmp_capabilities must not be sent again)", n, len(cases))
	}
}

func TestHMP(t *testing.T) {
	s, c := dialFake(t, qmptest.Options{}, Options{}, func(s *qmptest.Server) {
		s.Handle("human-monitor-command", func(_ context.Context, r *qmptest.Request) qmptest.Response {
			var a struct {
				Line string `json:"command-line"`
			}
			json.Unmarshal(r.Arguments, &a)
			return qmptest.Response{Return: "ran " + a.Line + "\r\n"}
		})
	})
	out, err := c.HMP(ctxLong(t), "info status")
	if err != nil || out != "ran info status\r\n" {
		t.Fatalf("HMP: got %q, %v", out, err)
	}
	if r := s.Requests(); r[len(r)-1].Execute != "human-monitor-command" {
		t.Errorf("server saw %q", r[len(r)-1].Execute)
	}
}

// TestUniqueIDs checks that every command on the wire carries a distinct id,
// the user's own ids included.
func TestUniqueIDs(t *testing.T) {
	s, c := dialFake(t, qmptest.Options{}, Options{}, func(s *qmptest.Server) {
		s.Handle("x", qmptest.Return(nil))
	})
	ctx := ctxLong(t)
	for i := 0; i < 10; i++ {
		if err := c.Execute(ctx, "x", nil, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := c.RunRaw(ctx, []byte(`{"execute":"x","id":1}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.RunRaw(ctx, []byte(`{"execute":"x"}`)); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for _, r := range s.Requests() {
		if r.ID == nil {
			t.Fatalf("command without id on the wire: %s", r.Raw)
		}
		if seen[string(r.ID)] {
			t.Fatalf("id %s used twice", r.ID)
		}
		seen[string(r.ID)] = true
	}
}

func TestRunRaw(t *testing.T) {
	cases := []struct {
		name string
		cmd  string
		want string
	}{
		{"no id", `{"execute":"query-status"}`, `{"return": {"status":"paused"}}`},
		{"string id", `{"execute":"query-status","id":"abc"}`, `{"return": {"status":"paused"}, "id": "abc"}`},
		{"numeric id", `{"execute":"query-status","id":42}`, `{"return": {"status":"paused"}, "id": 42}`},
		{"float id kept as typed", `{"execute":"query-status","id":2.50}`, `{"return": {"status":"paused"}, "id": 2.50}`},
		{"object id", `{"id":{"a":[1,{"b":null}]},"execute":"query-status"}`, `{"return": {"status":"paused"}, "id": {"a":[1,{"b":null}]}}`},
		{"null id", `{"execute":"query-status","id":null}`, `{"return": {"status":"paused"}, "id": null}`},
		{"escaped key", `{"execute":"query-status","\u0069d":"e"}`, `{"return": {"status":"paused"}, "id": "e"}`},
		{"id spread over lines", "{\"execute\":\"query-status\",\"id\":[1,\n2]}", `{"return": {"status":"paused"}, "id": [1,2]}`},
		{"whitespace everywhere", " \n{ \"execute\" : \"query-status\" , \"id\" : 7 } \n", `{"return": {"status":"paused"}, "id": 7}`},
		{"arguments", `{"execute":"echo","arguments":{"a":"}{\"id\":9"},"id":"u"}`, `{"return": {"a":"}{\"id\":9"}, "id": "u"}`},
		{"error reply keeps id first", `{"execute":"broken","id":[7]}`, `{"id": [7], "error": {"class":"GenericError","desc":"it broke"}}`},
		{"error reply without id", `{"execute":"broken"}`, `{"error": {"class":"GenericError","desc":"it broke"}}`},
		{"empty object", `{}`, `{"error": {"class":"GenericError","desc":"QMP input lacks member 'execute'"}}`},
		{"exec-oob passed through", `{"exec-oob":"query-status","id":"o"}`, `{"id": "o", "error": {"class":"GenericError","desc":"QMP input member 'exec-oob' is unexpected"}}`},
		{"second negotiation", `{"execute":"qmp_capabilities","id":{"a":[1]}}`, `{"id": {"a":[1]}, "error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}`},
		{"second negotiation without id", `{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}`, `{"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}`},
		{"second negotiation escaped", `{"execute":"qmp\u005fcapabilities","id":1}`, `{"id": 1, "error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}`},
	}
	s, c := dialFake(t, qmptest.Options{}, Options{}, func(s *qmptest.Server) {
		s.Handle("query-status", qmptest.Return(json.RawMessage(`{"status":"paused"}`)))
		s.Handle("broken", qmptest.Fail("GenericError", "it broke"))
		s.Handle("echo", func(_ context.Context, r *qmptest.Request) qmptest.Response {
			return qmptest.Response{Return: r.Arguments}
		})
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(s.Requests())
			got, err := c.RunRaw(ctxLong(t), []byte(tc.cmd))
			if err != nil {
				t.Fatalf("RunRaw: %v", err)
			}
			if string(got) != tc.want {
				t.Errorf("- want: %s\n-  got: %s", tc.want, got)
			}
			reqs := s.Requests()[before:]
			if strings.Contains(tc.name, "second negotiation") {
				if len(reqs) != 0 {
					t.Errorf("qmp_capabilities reached the server: %s", reqs[0].Raw)
				}
				return
			}
			if len(reqs) != 1 {
				t.Fatalf("server saw %d commands", len(reqs))
			}
			var id uint64
			if err := json.Unmarshal(reqs[0].ID, &id); err != nil || id == 0 {
				t.Errorf("wire id %s is not the connection's own", reqs[0].ID)
			}
		})
	}
}

func TestRunRawRejects(t *testing.T) {
	deep := strings.Repeat("[", maxNesting+1) + strings.Repeat("]", maxNesting+1)
	cases := []struct {
		name, cmd string
	}{
		{"empty", ``},
		{"not JSON", `execute query-status`},
		{"truncated", `{"execute":"query-status"`},
		{"array", `[{"execute":"query-status"}]`},
		{"string", `"query-status"`},
		{"number", `1`},
		{"two objects", `{"execute":"a"}{"execute":"b"}`},
		{"single quotes (QEMU accepts them, JSON does not)", `{'execute':'query-status'}`},
		{"invalid UTF-8", "{\"execute\":\"query-status\",\"id\":\"\xff\"}"},
		{"too deep", `{"execute":"x","arguments":{"a":` + deep + `}}`},
		{"too long", `{"execute":"x","arguments":{"a":"` + strings.Repeat("a", MaxCommandSize) + `"}}`},
	}
	s, c := dialFake(t, qmptest.Options{}, Options{}, nil)
	before := len(s.Requests())
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.RunRaw(ctxLong(t), []byte(tc.cmd))
			if !errors.Is(err, ErrBadCommand) {
				t.Fatalf("got %q, %v; want ErrBadCommand", got, err)
			}
		})
	}
	if n := len(s.Requests()) - before; n != 0 {
		t.Errorf("%d rejected commands reached the server", n)
	}
	// The connection is still fine.
	if out, err := c.RunRaw(ctxLong(t), []byte(`{"execute":"nope"}`)); err != nil || !bytes.Contains(out, []byte("CommandNotFound")) {
		t.Errorf("after rejects: %s, %v", out, err)
	}
}

// TestIDLessReply plays QEMU answering a command it could not parse (for
// example one with a duplicate key): the reply has no id and answers the
// oldest outstanding command.
func TestIDLessReply(t *testing.T) {
	idless := []byte(`{"error": {"class": "GenericError", "desc": "JSON parse error, duplicate key"}}` + "\r\n")
	s, c := dialFake(t, qmptest.Options{}, Options{}, func(s *qmptest.Server) {
		s.Handle("query-status", func(context.Context, *qmptest.Request) qmptest.Response {
			return qmptest.Response{Raw: idless}
		})
		s.Handle("ok", qmptest.Return(nil))
	})
	_ = s
	got, err := c.RunRaw(ctxLong(t), []byte(`{"execute":"query-status","id":"mine"}`))
	if err != nil || string(got) != string(idless[:len(idless)-2]) {
		t.Fatalf("got %s, %v", got, err)
	}
	err = c.Execute(ctxLong(t), "query-status", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Desc != "JSON parse error, duplicate key" {
		t.Fatalf("Execute: %v", err)
	}
	if err := c.Execute(ctxLong(t), "ok", nil, nil); err != nil {
		t.Fatalf("next command: %v", err)
	}
}

// TestConcurrent runs many commands from many goroutines against a server
// that answers out of order, and checks that nobody gets another's reply.
func TestConcurrent(t *testing.T) {
	_, c := dialFake(t, qmptest.Options{Concurrent: true}, Options{}, func(s *qmptest.Server) {
		s.Handle("echo", func(ctx context.Context, r *qmptest.Request) qmptest.Response {
			var a struct{ N int }
			json.Unmarshal(r.Arguments, &a)
			// Reply later for some, so replies overtake each other.
			if a.N%3 == 0 {
				select {
				case <-time.After(time.Millisecond):
				case <-ctx.Done():
				}
			}
			return qmptest.Response{Return: r.Arguments}
		})
	})
	const workers, each = 32, 40
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			ctx := context.Background()
			for i := 0; i < each; i++ {
				n := w*1000 + i
				if i%2 == 0 {
					var got struct{ N int }
					if err := c.Execute(ctx, "echo", map[string]int{"N": n}, &got); err != nil || got.N != n {
						errs <- fmt.Errorf("Execute %d: got %d, %v", n, got.N, err)
					}
					continue
				}
				cmd := fmt.Sprintf(`{"execute":"echo","arguments":{"N":%d},"id":{"w":%d,"i":%d}}`, n, w, i)
				out, err := c.RunRaw(ctx, []byte(cmd))
				want := fmt.Sprintf(`{"return": {"N":%d}, "id": {"w":%d,"i":%d}}`, n, w, i)
				if err != nil || string(out) != want {
					errs <- fmt.Errorf("RunRaw %d: got %s, %v", n, out, err)
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestTimeouts(t *testing.T) {
	cases := []struct {
		name string
		opts Options
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{
			name: "ctx deadline",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 50*time.Millisecond)
			},
			want: context.DeadlineExceeded,
		},
		{
			name: "ctx cancelled",
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(50*time.Millisecond, cancel)
				return ctx, cancel
			},
			want: context.Canceled,
		},
		{
			name: "CommandTimeout",
			opts: Options{CommandTimeout: 50 * time.Millisecond},
			ctx:  func() (context.Context, context.CancelFunc) { return context.Background(), func() {} },
			want: context.DeadlineExceeded,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			_, c := dialFake(t, qmptest.Options{}, tc.opts, func(s *qmptest.Server) {
				s.Handle("slow", func(ctx context.Context, r *qmptest.Request) qmptest.Response {
					select {
					case <-release:
					case <-ctx.Done():
					}
					return qmptest.Response{Return: "late"}
				})
				s.Handle("fast", qmptest.Return("fast"))
			})
			for _, run := range []func(ctx context.Context) error{
				func(ctx context.Context) error { return c.Execute(ctx, "slow", nil, nil) },
				func(ctx context.Context) error {
					_, err := c.RunRaw(ctx, []byte(`{"execute":"slow","id":1}`))
					return err
				},
			} {
				ctx, cancel := tc.ctx()
				err := run(ctx)
				cancel()
				if !errors.Is(err, tc.want) {
					t.Fatalf("- want: %v\n-  got: %v", tc.want, err)
				}
				if tc.want == context.DeadlineExceeded && !strings.Contains(err.Error(), "QEMU did not answer within") {
					t.Errorf("timeout error %q does not say that QEMU did not answer", err)
				}
			}
			// The late replies arrive and are dropped; the next
			// command gets its own reply.
			close(release)
			var got string
			if err := c.Execute(ctxLong(t), "fast", nil, &got); err != nil || got != "fast" {
				t.Fatalf("after timeouts: got %q, %v", got, err)
			}
			out, err := c.RunRaw(ctxLong(t), []byte(`{"execute":"fast","id":1}`))
			if err != nil || string(out) != `{"return": "fast", "id": 1}` {
				t.Fatalf("after timeouts: got %s, %v", out, err)
			}
		})
	}
}

// TestConnectionEnds checks that every way the connection can end fails
// pending commands promptly with the right reason, closes Done and fails
// later commands at once.
func TestConnectionEnds(t *testing.T) {
	cases := []struct {
		name  string
		setup func(*qmptest.Server)
		end   func(*qmptest.Server, *Conn)
		want  error
		msg   string
	}{
		{
			name: "EOF", want: io.EOF,
			end: func(s *qmptest.Server, _ *Conn) { s.Disconnect() },
		},
		{
			name: "server closed", want: io.EOF,
			end: func(s *qmptest.Server, _ *Conn) { s.Close() },
		},
		{
			name: "Close", want: ErrClosed,
			end: func(_ *qmptest.Server, c *Conn) { c.Close() },
		},
		{
			name: "closed mid-reply", want: io.ErrUnexpectedEOF,
			setup: func(s *qmptest.Server) { s.Handle("trigger", qmptest.CloseMidReply(map[string]string{"a": "b"})) },
			end:   func(_ *qmptest.Server, c *Conn) { go c.Execute(context.Background(), "trigger", nil, nil) },
		},
		{
			name: "oversized reply", msg: "longer than",
			setup: func(s *qmptest.Server) { s.Handle("trigger", qmptest.Return(strings.Repeat("x", 2<<20))) },
			end:   func(_ *qmptest.Server, c *Conn) { go c.Execute(context.Background(), "trigger", nil, nil) },
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			started := make(chan struct{}, 1)
			s, c := dialFake(t, qmptest.Options{Concurrent: true}, Options{MaxReplySize: 1 << 20}, func(s *qmptest.Server) {
				s.Handle("hang", func(ctx context.Context, r *qmptest.Request) qmptest.Response {
					started <- struct{}{}
					<-ctx.Done()
					return qmptest.Response{None: true}
				})
				if tc.setup != nil {
					tc.setup(s)
				}
			})
			errc := make(chan error, 1)
			go func() { errc <- c.Execute(context.Background(), "hang", nil, nil) }()
			<-started
			tc.end(s, c)
			select {
			case err := <-errc:
				if tc.want != nil && !errors.Is(err, tc.want) {
					t.Errorf("pending: - want: %v\n-  got: %v", tc.want, err)
				}
				if tc.msg != "" && !strings.Contains(fmt.Sprint(err), tc.msg) {
					t.Errorf("pending: - want: error containing %q\n-  got: %v", tc.msg, err)
				}
			case <-time.After(long):
				t.Fatal("pending command not failed")
			}
			select {
			case <-c.Done():
			case <-time.After(long):
				t.Fatal("Done not closed")
			}
			if err := c.Err(); tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Err: - want: %v\n-  got: %v", tc.want, err)
			}
			if err := c.Err(); (tc.want == ErrClosed) == errors.Is(err, ErrLost) {
				t.Errorf("Err: %v; ErrLost must be wrapped exactly when Close did not end it", err)
			}
			if err := c.Execute(ctxLong(t), "hang", nil, nil); err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Errorf("command after end: got %v", err)
			}
			if _, err := c.RunRaw(ctxLong(t), []byte(`{"execute":"x"}`)); err == nil {
				t.Errorf("RunRaw after end succeeded")
			}
			if err := c.Connect(); err == nil {
				t.Errorf("Connect after end succeeded")
			}
			if _, err := c.Events(context.Background()); err == nil {
				t.Errorf("Events after end succeeded")
			}
			c.Close() // harmless twice
		})
	}
}

func TestBigReply(t *testing.T) {
	// Far beyond bufio.Scanner's 64 KiB default, with escapes in it.
	big := strings.Repeat(`abc"\}{`, 3<<20/7)
	_, c := dialFake(t, qmptest.Options{}, Options{}, func(s *qmptest.Server) {
		s.Handle("big", qmptest.Return(map[string]string{"v": big}))
		s.Handle("small", qmptest.Return("s"))
	})
	var got struct{ V string }
	if err := c.Execute(ctxLong(t), "big", nil, &got); err != nil || got.V != big {
		t.Fatalf("Execute: len %d, %v", len(got.V), err)
	}
	out, err := c.RunRaw(ctxLong(t), []byte(`{"execute":"big","id":"b"}`))
	if err != nil || !bytes.HasSuffix(out, []byte(`, "id": "b"}`)) || len(out) < len(big) {
		t.Fatalf("RunRaw: len %d, %v", len(out), err)
	}
	var s string
	if err := c.Execute(ctxLong(t), "small", nil, &s); err != nil || s != "s" {
		t.Fatalf("after big replies: %q, %v", s, err)
	}
}

// TestStrayLines checks that garbage and replies to nobody are ignored.
func TestStrayLines(t *testing.T) {
	var srv *qmptest.Server
	_, c := dialFake(t, qmptest.Options{}, Options{}, func(s *qmptest.Server) {
		srv = s
		s.Handle("x", func(context.Context, *qmptest.Request) qmptest.Response {
			for _, l := range []string{
				`garbage`, ``, `[1,2]`, `{"unterminated": "`, `{"return": {}, "id": 999999}`,
				`{"return": {}, "id": "not ours"}`, qmptest.DefaultGreeting, `{"event": 5}`,
			} {
				if err := s.SendLine([]byte(l)); err != nil {
					return qmptest.Response{Error: &qmptest.Error{Class: "Test", Desc: err.Error()}}
				}
			}
			return qmptest.Response{Return: "x"}
		})
	})
	_ = srv
	var got string
	if err := c.Execute(ctxLong(t), "x", nil, &got); err != nil || got != "x" {
		t.Fatalf("got %q, %v", got, err)
	}
}

type eventLog struct {
	mu   sync.Mutex
	evs  []Event
	want int
	all  chan struct{}
}

func newEventLog(want int) *eventLog { return &eventLog{want: want, all: make(chan struct{})} }

func (l *eventLog) add(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, e)
	if len(l.evs) == l.want {
		close(l.all)
	}
}

func (l *eventLog) wait(t *testing.T) []Event {
	t.Helper()
	select {
	case <-l.all:
	case <-time.After(long):
		t.Fatalf("got %d events, want %d", len(l.events()), l.want)
	}
	return l.events()
}

func (l *eventLog) events() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.evs...)
}

func TestEvents(t *testing.T) {
	const n = 200
	log := newEventLog(n + 1)
	s, _ := dialFake(t, qmptest.Options{}, Options{OnEvent: log.add}, func(s *qmptest.Server) {
		// An event sent during negotiation must not be lost.
		s.Handle("qmp_capabilities", func(context.Context, *qmptest.Request) qmptest.Response {
			if err := s.Event("EARLY", nil); err != nil {
				return qmptest.Response{Error: &qmptest.Error{Class: "Test", Desc: err.Error()}}
			}
			return qmptest.Response{}
		})
	})
	for i := 0; i < n; i++ {
		if err := s.Event("TICK", map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	evs := log.wait(t)
	if evs[0].Name != "EARLY" || evs[0].Data != nil {
		t.Errorf("first event: got %s %s", evs[0].Name, evs[0].Data)
	}
	for i, e := range evs[1:] {
		var d struct{ I int }
		if e.Name != "TICK" || json.Unmarshal(e.Data, &d) != nil || d.I != i {
			t.Fatalf("event %d: got %s %s", i, e.Name, e.Data)
		}
		if time.Since(e.Timestamp) > time.Hour || time.Since(e.Timestamp) < 0 {
			t.Errorf("event %d: timestamp %v", i, e.Timestamp)
		}
		var raw map[string]any
		if json.Unmarshal(e.Raw, &raw) != nil || raw["event"] != "TICK" || bytes.HasSuffix(e.Raw, []byte("\n")) {
			t.Errorf("event %d: raw %q", i, e.Raw)
		}
	}
}

// TestOnEventMayExecute checks that OnEvent can run commands on the same
// connection, as the driver does when it reacts to an event, and that a
// slow OnEvent does not hold up replies.
func TestOnEventMayExecute(t *testing.T) {
	var c *Conn
	ready := make(chan struct{})
	results := make(chan error, 1)
	block := make(chan struct{})
	_, c = dialFake(t, qmptest.Options{}, Options{OnEvent: func(e Event) {
		<-ready
		switch e.Name {
		case "RUN":
			results <- c.Execute(ctxLong(t), "x", nil, nil)
		case "BLOCK":
			<-block
		}
	}}, func(s *qmptest.Server) {
		s.Handle("x", qmptest.Return(nil))
		s.Handle("emit", func(_ context.Context, r *qmptest.Request) qmptest.Response {
			var a struct{ Name string }
			json.Unmarshal(r.Arguments, &a)
			s.Event(a.Name, nil)
			return qmptest.Response{}
		})
	})
	close(ready)
	if err := c.Execute(ctxLong(t), "emit", map[string]string{"name": "RUN"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-results; err != nil {
		t.Fatalf("Execute from OnEvent: %v", err)
	}
	if err := c.Execute(ctxLong(t), "emit", map[string]string{"name": "BLOCK"}, nil); err != nil {
		t.Fatal(err)
	}
	// OnEvent is now blocked; commands still work.
	for i := 0; i < 5; i++ {
		if err := c.Execute(ctxLong(t), "x", nil, nil); err != nil {
			t.Fatalf("with OnEvent blocked: %v", err)
		}
	}
	close(block)
}

func TestEventsFanOut(t *testing.T) {
	const n = 40
	s, c := dialFake(t, qmptest.Options{}, Options{EventBuffer: 4}, func(s *qmptest.Server) {
		s.Handle("x", qmptest.Return(nil))
	})
	fast, err := c.Events(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	slow, err := c.Events(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(context.Background())
	cancelled, err := c.Events(cctx)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	for range cancelled {
		// Closed on cancel; it may have nothing in it.
	}
	for i := 0; i < n; i++ {
		if err := s.Event("E", map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
		select {
		case e := <-fast:
			if e.Event != "E" || e.Data["i"] != float64(i) || e.Timestamp.Seconds == 0 {
				t.Fatalf("fast subscriber event %d: %+v", i, e)
			}
		case <-time.After(long):
			t.Fatalf("fast subscriber did not get event %d", i)
		}
		// Nobody reads slow, yet commands are not held up.
		if err := c.Execute(ctxLong(t), "x", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	<-c.Done()
	got := 0
	for e := range slow {
		if e.Data["i"] != float64(got) {
			t.Errorf("slow subscriber: event %d is %+v", got, e)
		}
		got++
	}
	if got != 4 {
		t.Errorf("slow subscriber got %d events, want its buffer's 4", got)
	}
	if d := c.EventsDropped(); d != n-4 {
		t.Errorf("EventsDropped: got %d, want %d", d, n-4)
	}
	if _, ok := <-fast; ok {
		t.Errorf("fast channel not closed at the end")
	}
}

// TestGoQemu uses go-qemu's typed commands over a Conn.
func TestGoQemu(t *testing.T) {
	_, c := dialFake(t, qmptest.Options{}, Options{}, func(s *qmptest.Server) {
		s.Handle("query-status", qmptest.Return(map[string]any{"status": "running", "running": true, "singlestep": false}))
		s.Handle("stop", qmptest.Fail("GenericError", "cannot"))
	})
	m := raw.NewMonitor(c)
	st, err := m.QueryStatus()
	if err != nil || st.Status != raw.RunStateRunning || !st.Running {
		t.Fatalf("QueryStatus: %+v, %v", st, err)
	}
	err = m.Stop()
	var qe *Error
	if !errors.As(err, &qe) || qe.Desc != "cannot" || !strings.HasPrefix(err.Error(), "stop: ") {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := c.Run([]byte(`not json`)); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("Run: %v", err)
	}
	if err := c.Disconnect(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.QueryStatus(); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Disconnect: %v", err)
	}
}
