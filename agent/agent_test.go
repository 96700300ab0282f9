package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qemufs/qemufs/internal/agenttest"
)

// fast are short timeouts, so that the timeout tests run quickly; the
// fake answers in microseconds.
var fast = Options{SyncTimeout: 300 * time.Millisecond, CommandTimeout: 500 * time.Millisecond, NoReplyWait: 200 * time.Millisecond}

func TestRun(t *testing.T) {
	tests := []struct {
		name    string
		handler agenttest.Handler
		cmd     string
		want    string // the reply, exactly
		wantErr string
	}{
		{name: "ping", cmd: `{"execute":"guest-ping"}`, want: `{"return":{}}`},
		{name: "args and user id pass through", cmd: ` {"execute":"guest-echo","arguments":{"s":"a}\"{"},"id":"x"}` + "\n",
			handler: func(_ context.Context, r *agenttest.Request) agenttest.Response {
				return agenttest.Response{Raw: append(append([]byte(`{"return": `), r.Arguments...), "}\n"...)}
			},
			want: `{"return": {"s":"a}\"{"}}`},
		{name: "error reply is a reply", cmd: `{"execute":"guest-nope"}`,
			want: `{"error": {"class": "CommandNotFound", "desc": "The command guest-nope has not been found"}}`},
		{name: "a scripted return", cmd: `{"execute":"guest-x"}`,
			handler: func(context.Context, *agenttest.Request) agenttest.Response { return agenttest.Response{Return: 7} },
			want:    `{"return":7}`},
		{name: "shutdown answers nothing: success", cmd: `{"execute":"guest-shutdown"}`, want: `{"return": {}}`},
		{name: "shutdown that fails", cmd: `{"execute":"guest-shutdown"}`,
			handler: func(context.Context, *agenttest.Request) agenttest.Response {
				return agenttest.Response{Error: &agenttest.CommandError{Class: "GenericError", Desc: "child process has failed to shutdown"}}
			},
			want: `{"error":{"class":"GenericError","desc":"child process has failed to shutdown"}}`},
		{name: "not JSON with execute", cmd: `{"exec":"x"}`, wantErr: `a command is a JSON object with "execute"`},
		{name: "slow command", cmd: `{"execute":"guest-slow"}`,
			handler: func(context.Context, *agenttest.Request) agenttest.Response {
				return agenttest.Response{Delay: 2 * time.Second}
			},
			wantErr: "guest agent is not responding: no reply to guest-slow within 500ms"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := agenttest.New(t)
			if tc.handler != nil {
				name := strings.Split(strings.Split(tc.cmd, `"execute":"`)[1], `"`)[0]
				s.Handle(name, tc.handler)
			}
			c := New(s.Path, fast)
			defer c.Close()
			got, err := c.Run(context.Background(), []byte(tc.cmd))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error %q, got %v (reply %s)", tc.wantErr, err, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("reply:\n- want: %s\n-  got: %s", tc.want, got)
			}
			cmds := s.Commands()
			if len(cmds) != 2 || cmds[0] != "guest-sync-delimited" {
				t.Errorf("want guest-sync-delimited then the command, got %v", cmds)
			}
		})
	}
}

// TestStaleReplies: replies a previous caller abandoned, and replies to
// older syncs, never reach the next command.
func TestStaleReplies(t *testing.T) {
	s := agenttest.New(t)
	n := 0
	s.Handle("guest-count", func(context.Context, *agenttest.Request) agenttest.Response {
		n++
		if n == 1 {
			return agenttest.Response{Return: n, Delay: 400 * time.Millisecond}
		}
		return agenttest.Response{Return: n}
	})
	c := New(s.Path, Options{SyncTimeout: 2 * time.Second, CommandTimeout: 100 * time.Millisecond})
	defer c.Close()
	var got int
	err := c.Execute(context.Background(), "guest-count", nil, &got)
	if !errors.Is(err, ErrNotResponding) {
		t.Fatalf("first: want ErrNotResponding, got %v", err)
	}
	// The late {"return": 1} comes while the next sync waits.
	if err := c.Execute(context.Background(), "guest-count", nil, &got); err != nil {
		t.Fatal(err)
	}
	if got != 2 {
		t.Errorf("second call: want 2, got %d (the first call's late reply)", got)
	}

	// An agent that still had the reply of an older sync queued.
	s.Handle("guest-sync-delimited", func(_ context.Context, r *agenttest.Request) agenttest.Response {
		var a struct{ ID int64 }
		json.Unmarshal(r.Arguments, &a)
		return agenttest.Response{Raw: []byte(fmt.Sprintf("\xff{\"return\": %d}\n\xff{\"return\": %d}\n", a.ID+1, a.ID))}
	})
	if err := c.Execute(context.Background(), "guest-count", nil, &got); err != nil || got != 3 {
		t.Errorf("after an older sync reply: want 3, got %d, %v", got, err)
	}
}

// TestNotResponding: a guest without a running agent (QEMU accepts the
// connection, nobody answers) gives ErrNotResponding within the sync
// timeout, and the agent answers again once it runs.
func TestNotResponding(t *testing.T) {
	s := agenttest.New(t)
	s.SetSilent(true)
	c := New(s.Path, fast)
	defer c.Close()
	start := time.Now()
	err := c.Execute(context.Background(), "guest-ping", nil, nil)
	if !errors.Is(err, ErrNotResponding) {
		t.Fatalf("want ErrNotResponding, got %v", err)
	}
	if !strings.Contains(err.Error(), "guest agent is not responding") {
		t.Errorf("message: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v with a %v sync timeout", d, fast.SyncTimeout)
	}
	s.SetSilent(false)
	if err := c.Execute(context.Background(), "guest-ping", nil, nil); err != nil {
		t.Fatalf("after the agent came up: %v", err)
	}
}

// TestReconnect: a broken connection fails the command in flight; the next
// one dials again.
func TestReconnect(t *testing.T) {
	s := agenttest.New(t)
	s.Handle("guest-bye", func(context.Context, *agenttest.Request) agenttest.Response {
		return agenttest.Response{None: true, Close: true}
	})
	c := New(s.Path, fast)
	defer c.Close()
	if err := c.Execute(context.Background(), "guest-ping", nil, nil); err != nil {
		t.Fatal(err)
	}
	err := c.Execute(context.Background(), "guest-bye", nil, nil)
	if err == nil || errors.Is(err, ErrNotResponding) {
		t.Fatalf("want a connection error, got %v", err)
	}
	if err := c.Execute(context.Background(), "guest-ping", nil, nil); err != nil {
		t.Fatalf("after reconnect: %v", err)
	}
	// The server side dropping the connection between commands.
	s.DropConnections()
	time.Sleep(50 * time.Millisecond)
	if err := c.Execute(context.Background(), "guest-ping", nil, nil); err != nil {
		t.Fatalf("after the channel was dropped: %v", err)
	}
}

// TestShutdownEOF: guest-shutdown whose guest powers off (the socket ends)
// before NoReplyWait is a success.
func TestShutdownEOF(t *testing.T) {
	s := agenttest.New(t)
	s.Handle("guest-shutdown", func(context.Context, *agenttest.Request) agenttest.Response {
		return agenttest.Response{None: true, Close: true}
	})
	c := New(s.Path, Options{NoReplyWait: 10 * time.Second})
	defer c.Close()
	start := time.Now()
	if err := c.Execute(context.Background(), "guest-shutdown", map[string]string{"mode": "powerdown"}, nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("waited %v although the connection ended", d)
	}
	reqs := s.Requests()
	if last := reqs[len(reqs)-1]; string(last.Arguments) != `{"mode":"powerdown"}` {
		t.Errorf("arguments: %s", last.Arguments)
	}
}

// TestCommandError: an error reply decodes to a *CommandError.
func TestCommandError(t *testing.T) {
	s := agenttest.New(t)
	c := New(s.Path, fast)
	defer c.Close()
	err := c.Execute(context.Background(), "guest-nope", nil, nil)
	var ce *CommandError
	if !errors.As(err, &ce) || ce.Class != "CommandNotFound" || ce.Command != "guest-nope" {
		t.Fatalf("want CommandNotFound, got %v", err)
	}
}

// TestSerialised: concurrent callers each get their own reply.
func TestSerialised(t *testing.T) {
	s := agenttest.New(t)
	s.Handle("guest-echo", func(_ context.Context, r *agenttest.Request) agenttest.Response {
		var a struct{ N int }
		json.Unmarshal(r.Arguments, &a)
		return agenttest.Response{Return: a.N, Delay: time.Millisecond}
	})
	c := New(s.Path, Options{})
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var got int
			if err := c.Execute(context.Background(), "guest-echo", map[string]int{"N": i}, &got); err != nil {
				errs <- err
			} else if got != i {
				errs <- fmt.Errorf("caller %d got %d", i, got)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestLargeReply: replies far over 64 KiB, with strings full of braces.
func TestLargeReply(t *testing.T) {
	s := agenttest.New(t)
	big := strings.Repeat(`{[\"x\"]}`, 300000)
	s.Handle("guest-big", agenttest.Return(map[string]string{"data": big}))
	c := New(s.Path, Options{})
	defer c.Close()
	var got struct{ Data string }
	if err := c.Execute(context.Background(), "guest-big", nil, &got); err != nil {
		t.Fatal(err)
	}
	if got.Data != big {
		t.Errorf("reply of %d bytes came back as %d", len(big), len(got.Data))
	}
}

// TestInterrupt: a cancelled caller returns at once; the connection stays
// usable.
func TestInterrupt(t *testing.T) {
	s := agenttest.New(t)
	s.Handle("guest-slow", func(context.Context, *agenttest.Request) agenttest.Response {
		return agenttest.Response{Delay: 300 * time.Millisecond}
	})
	c := New(s.Path, Options{})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := c.Execute(ctx, "guest-slow", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want the context's error, got %v", err)
	}
	if err := c.Execute(context.Background(), "guest-ping", nil, nil); err != nil {
		t.Fatalf("after an interrupted command: %v", err)
	}
}

// TestClosed: commands after Close fail.
func TestClosed(t *testing.T) {
	s := agenttest.New(t)
	c := New(s.Path, fast)
	if err := c.Execute(context.Background(), "guest-ping", nil, nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := c.Execute(context.Background(), "guest-ping", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("want ErrClosed, got %v", err)
	}
}

// TestNoSocket: a socket that does not exist is a clear connect error.
func TestNoSocket(t *testing.T) {
	c := New("/nonexistent/ga.sock", fast)
	err := c.Execute(context.Background(), "guest-ping", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "connect /nonexistent/ga.sock") {
		t.Fatalf("got %v", err)
	}
}
