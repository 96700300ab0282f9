package monitor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"
)

// qemuProc is a real QEMU started for a test.
type qemuProc struct {
	cmd  *exec.Cmd
	sock string
}

// startQEMU starts `qemu-system-x86_64 -machine none -S` with a QMP monitor
// and ends it, by pid, when the test ends.
//
// The monitor socket is bound and listening before QEMU starts and handed to
// it as fd 3 (the way libvirt does it), so the test can connect at once
// without polling for QEMU to create the socket. The path lives in a short
// directory under /tmp to stay under the 108-byte limit of socket paths.
func startQEMU(tb testing.TB) *qemuProc {
	tb.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		tb.Skipf("no QEMU: %v", err)
	}
	dir, err := os.MkdirTemp("/tmp", "qmon")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		tb.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	f, err := ln.File()
	ln.Close()
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(bin, "-machine", "none", "-nodefaults", "-display", "none", "-S",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off", "-mon", "chardev=qmp,mode=control")
	cmd.ExtraFiles = []*os.File{f}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if s := stderr.String(); s != "" {
			tb.Logf("QEMU stderr: %s", s)
		}
	})
	return &qemuProc{cmd: cmd, sock: sock}
}

func dialQEMU(tb testing.TB, q *qemuProc, opts Options) *Conn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	c, err := Dial(ctx, q.sock, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// directQMP is a bare QMP client: the baseline for the benchmarks and the
// reference for what QEMU itself answers.
type directQMP struct {
	nc net.Conn
	br *bufio.Reader
}

func dialDirect(tb testing.TB, q *qemuProc) *directQMP {
	tb.Helper()
	nc, err := net.Dial("unix", q.sock)
	if err != nil {
		tb.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(long))
	tb.Cleanup(func() { nc.Close() })
	d := &directQMP{nc: nc, br: bufio.NewReaderSize(nc, 1<<20)}
	if _, err := d.br.ReadBytes('\n'); err != nil {
		tb.Fatal(err)
	}
	if out, err := d.roundTrip([]byte(`{"execute":"qmp_capabilities"}` + "\n")); err != nil || !strings.Contains(string(out), "return") {
		tb.Fatalf("negotiation: %s, %v", out, err)
	}
	nc.SetDeadline(time.Time{})
	return d
}

// roundTrip writes cmd (ending in a newline) and returns the next line that
// is not an event, without its line ending.
func (d *directQMP) roundTrip(cmd []byte) ([]byte, error) {
	if _, err := d.nc.Write(cmd); err != nil {
		return nil, err
	}
	for {
		line, err := d.br.ReadSlice('\n')
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(string(line), `{"timestamp"`) {
			return line[:len(line)-2], nil
		}
	}
}

func TestQEMU(t *testing.T) {
	q := startQEMU(t)
	evlog := newEventLog(2)
	c := dialQEMU(t, q, Options{OnEvent: evlog.add})
	ctx := ctxLong(t)
	if g := c.Greeting(); g.Major < 7 || len(g.Capabilities) == 0 {
		t.Errorf("greeting: %+v", g)
	}
	sub, err := c.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("query-status", func(t *testing.T) {
		var st struct{ Status string }
		if err := c.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "prelaunch" {
			t.Fatalf("got %q, %v", st.Status, err)
		}
	})
	t.Run("go-qemu QueryStatus", func(t *testing.T) {
		st, err := raw.NewMonitor(c).QueryStatus()
		if err != nil || st.Status != raw.RunStatePrelaunch || st.Running {
			t.Fatalf("got %+v, %v", st, err)
		}
	})
	t.Run("query-qmp-schema", func(t *testing.T) {
		var schema []struct {
			Name     string `json:"name"`
			MetaType string `json:"meta-type"`
		}
		if err := c.Execute(ctx, "query-qmp-schema", nil, &schema); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range schema {
			found = found || (e.Name == "query-status" && e.MetaType == "command")
		}
		if len(schema) < 100 || !found {
			t.Fatalf("schema has %d entries, query-status found: %v", len(schema), found)
		}
		out, err := c.RunRaw(ctx, []byte(`{"execute":"query-qmp-schema","id":"s"}`))
		if err != nil || len(out) < 64<<10 || !strings.HasSuffix(string(out), `, "id": "s"}`) {
			t.Fatalf("RunRaw: %d bytes, %v", len(out), err)
		}
		t.Logf("query-qmp-schema reply: %d bytes", len(out))
	})
	t.Run("HMP", func(t *testing.T) {
		out, err := c.HMP(ctx, "info status")
		if err != nil || out != "VM status: paused (prelaunch)\r\n" {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	t.Run("error reply", func(t *testing.T) {
		err := c.Execute(ctx, "no-such-command", nil, nil)
		var qe *Error
		if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("events", func(t *testing.T) {
		// In prelaunch, cont emits RESUME; stop after it emits STOP.
		for _, cmd := range []string{"cont", "stop"} {
			if err := c.Execute(ctx, cmd, nil, nil); err != nil {
				t.Fatal(err)
			}
		}
		evs := evlog.wait(t)
		if evs[0].Name != "RESUME" || evs[1].Name != "STOP" || evs[0].Timestamp.After(evs[1].Timestamp) {
			t.Fatalf("events: %s at %v, %s at %v", evs[0].Name, evs[0].Timestamp, evs[1].Name, evs[1].Timestamp)
		}
		if time.Since(evs[0].Timestamp).Abs() > time.Hour {
			t.Errorf("timestamp %v is not now", evs[0].Timestamp)
		}
		for _, want := range []string{"RESUME", "STOP"} {
			select {
			case e := <-sub:
				if e.Event != want {
					t.Errorf("subscriber: got %s, want %s", e.Event, want)
				}
			case <-time.After(long):
				t.Fatalf("subscriber did not get %s", want)
			}
		}
	})
}

// TestQEMURunRawLikeQEMU checks that RunRaw answers exactly what QEMU
// answers a client of its own, including the refusal of a second
// qmp_capabilities that qemufs gives without asking QEMU.
func TestQEMURunRawLikeQEMU(t *testing.T) {
	direct := dialDirect(t, startQEMU(t))
	c := dialQEMU(t, startQEMU(t), Options{})
	for _, cmd := range []string{
		`{"execute":"query-status"}`,
		`{"execute":"query-status","id":"x"}`,
		`{"execute":"query-status","id":17}`,
		`{"id":"e","execute":"no-such-command"}`,
		`{"execute":"query-status","arguments":{"bogus":1},"id":[1]}`,
		`{"execute":"query-status","bogus":1,"id":"m"}`,
		`{"execute":5,"id":2}`,
		`{"exec-oob":"query-status","id":"o"}`,
		`{"execute":"human-monitor-command","arguments":{"command-line":"info status"},"id":"h"}`,
		`{"execute":"qmp_capabilities"}`,
		`{"execute":"qmp_capabilities","id":"again"}`,
		`{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":3}`,
		// QEMU cannot parse these and answers without an id; RunRaw
		// passes that on to the right caller.
		`{"execute":"query-status","id":1,"id":2}`,
		`{"execute":"query-status","arguments":{"a":1,"a":2},"id":"d"}`,
	} {
		want, err := direct.roundTrip([]byte(cmd + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.RunRaw(ctxLong(t), []byte(cmd))
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		if string(got) != string(want) {
			t.Errorf("%s\n- QEMU: %s\n- ours: %s", cmd, want, got)
		}
	}
}

func TestQEMUConcurrentRunRaw(t *testing.T) {
	c := dialQEMU(t, startQEMU(t), Options{})
	const sessions, each = 8, 50
	var wg sync.WaitGroup
	errs := make(chan error, sessions*each)
	for s := 0; s < sessions; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), long)
			defer cancel()
			for i := 0; i < each; i++ {
				var cmd, wantPrefix, wantSuffix string
				if i%5 == 0 {
					// The error reply names the command, so it tells
					// the sessions' replies apart.
					cmd = fmt.Sprintf(`{"id":{"s":%d,"i":%d},"execute":"no-such-%d-%d"}`, s, i, s, i)
					wantPrefix = fmt.Sprintf(`{"id": {"s":%d,"i":%d}, "error": {"class": "CommandNotFound", "desc": "The command no-such-%d-%d has not been found"}}`, s, i, s, i)
				} else {
					cmd = fmt.Sprintf(`{"execute":"query-status","id":{"s":%d,"i":%d}}`, s, i)
					wantPrefix = `{"return": {"status": "prelaunch"`
					wantSuffix = fmt.Sprintf(`, "id": {"s":%d,"i":%d}}`, s, i)
				}
				out, err := c.RunRaw(ctx, []byte(cmd))
				if err != nil {
					errs <- err
					return
				}
				if !strings.HasPrefix(string(out), wantPrefix) || !strings.HasSuffix(string(out), wantSuffix) {
					errs <- fmt.Errorf("session %d: %s\n- want: %s...%s\n-  got: %s", s, cmd, wantPrefix, wantSuffix, out)
				}
			}
		}(s)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestQEMUKilled(t *testing.T) {
	q := startQEMU(t)
	c := dialQEMU(t, q, Options{})
	if err := c.Execute(ctxLong(t), "query-status", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := q.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(long):
		t.Fatal("Done not closed after QEMU was killed")
	}
	// Depending on timing the socket reads EOF or ECONNRESET.
	if err := c.Err(); !errors.Is(err, ErrLost) {
		t.Errorf("Err: got %v, want ErrLost", err)
	}
	if err := c.Execute(ctxLong(t), "query-status", nil, nil); !errors.Is(err, ErrLost) {
		t.Errorf("Execute after kill: got %v, want ErrLost", err)
	}
}

// TestQEMUQuit checks that a command that makes QEMU exit gets its reply
// and the SHUTDOWN event before the connection ends.
func TestQEMUQuit(t *testing.T) {
	q := startQEMU(t)
	evlog := newEventLog(1)
	c := dialQEMU(t, q, Options{OnEvent: evlog.add})
	if err := c.Execute(ctxLong(t), "quit", nil, nil); err != nil {
		t.Fatalf("quit: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(long):
		t.Fatal("Done not closed after quit")
	}
	// Done is closed only after every event has been delivered.
	select {
	case <-evlog.all:
	default:
		t.Fatal("SHUTDOWN not delivered before Done")
	}
	if e := evlog.events()[0]; e.Name != "SHUTDOWN" {
		t.Fatalf("event: %s", e.Raw)
	} else {
		var d struct{ Guest bool }
		if json.Unmarshal(e.Data, &d) != nil || d.Guest {
			t.Errorf("SHUTDOWN data: %s", e.Data)
		}
	}
}

// benchRoundTrip reports how a round trip through the connection compares
// with a bare socket round trip to another, identical QEMU. The two are
// interleaved, op by op, so that load from elsewhere on the machine weighs
// on both alike; ns/op is the connection's alone.
func benchRoundTrip(b *testing.B, op func(*Conn) error) {
	direct := dialDirect(b, startQEMU(b))
	c := dialQEMU(b, startQEMU(b), Options{})
	cmd := []byte(`{"execute":"query-status","id":1}` + "\n")
	for i := 0; i < 100; i++ { // warm both up
		direct.roundTrip(cmd)
		op(c)
	}
	var directTime time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := op(c); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		start := time.Now()
		if _, err := direct.roundTrip(cmd); err != nil {
			b.Fatal(err)
		}
		directTime += time.Since(start)
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(directTime.Nanoseconds())/float64(b.N), "direct-ns/op")
	b.ReportMetric(float64(b.Elapsed())/float64(directTime), "x-direct")
}

func BenchmarkRunRaw(b *testing.B) {
	ctx := context.Background()
	cmd := []byte(`{"execute":"query-status","id":"user"}`)
	benchRoundTrip(b, func(c *Conn) error {
		_, err := c.RunRaw(ctx, cmd)
		return err
	})
}

func BenchmarkExecute(b *testing.B) {
	ctx := context.Background()
	benchRoundTrip(b, func(c *Conn) error {
		var st struct {
			Status  string `json:"status"`
			Running bool   `json:"running"`
		}
		return c.Execute(ctx, "query-status", nil, &st)
	})
}

func BenchmarkGoQemuQueryStatus(b *testing.B) {
	var m *raw.Monitor
	benchRoundTrip(b, func(c *Conn) error {
		if m == nil {
			m = raw.NewMonitor(c)
		}
		_, err := m.QueryStatus()
		return err
	})
}

// TestQEMUStopped plays a SIGSTOPped QEMU: commands time out instead of
// hanging, a write that can no longer go through ends the connection (QEMU
// would hold half a command), and Dial gives up when its ctx ends.
func TestQEMUStopped(t *testing.T) {
	q := startQEMU(t)
	c := dialQEMU(t, q, Options{})
	if err := q.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	short := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 200*time.Millisecond)
	}
	ctx, cancel := short()
	err := c.Execute(ctx, "query-status", nil, nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute on a stopped QEMU: %v", err)
	}

	// Fill the socket until a write blocks and times out part-way.
	big := []byte(`{"execute":"query-status","arguments":{"pad":"` + strings.Repeat("x", MaxCommandSize-100) + `"}}`)
	for i := 0; ; i++ {
		select {
		case <-c.Done():
		default:
			if i == 1000 {
				t.Fatal("the connection survived 1000 MB of unread commands")
			}
			ctx, cancel := short()
			_, err := c.RunRaw(ctx, big)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrLost) {
				t.Fatalf("RunRaw on a stopped QEMU: %v", err)
			}
			continue
		}
		break
	}
	if err := c.Err(); !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "mid-command") {
		t.Errorf("Err: %v", err)
	}

	ctx, cancel = short()
	defer cancel()
	if c2, err := Dial(ctx, q.sock, Options{}); !errors.Is(err, context.DeadlineExceeded) {
		if c2 != nil {
			c2.Close()
		}
		t.Fatalf("Dial to a stopped QEMU: %v", err)
	}
}
