package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// bareXML is a guest without a kernel: QEMU starts (paused or running in
// the firmware) in a fraction of a second, enough for monitor tests.
func bareXML(name, devices string) string {
	return fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><serial type='pty'/>%s</devices></domain>`, name, devices)
}

// session is one open monitor/qmp or monitor/hmp file.
type session struct {
	t  *testing.T
	f  *os.File
	rd *bufio.Reader
}

func openSession(t *testing.T, m *harness.Mount, name, kind string) *session {
	t.Helper()
	f, err := os.OpenFile(m.Path(name, "monitor", kind), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open monitor/%s: %v (error: %s)", kind, err, m.ErrorOf(name))
	}
	t.Cleanup(func() { f.Close() })
	return &session{t: t, f: f, rd: bufio.NewReaderSize(f, 1<<20)}
}

// send writes p in one write(2).
func (s *session) send(p string) error {
	_, err := s.f.Write([]byte(p))
	return err
}

// line reads one reply line; a reply that does not come within timeout
// fails the test (the blocked read is left behind).
func (s *session) line(timeout time.Duration) string {
	s.t.Helper()
	l, err := readLine(s.rd, timeout)
	if err != nil {
		s.t.Fatal(err)
	}
	return l
}

// readLine reads one line from rd, giving up after timeout.
func readLine(rd *bufio.Reader, timeout time.Duration) (string, error) {
	type res struct {
		l   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		l, err := rd.ReadString('\n')
		ch <- res{l, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return r.l, fmt.Errorf("read reply: %q, %w", r.l, r.err)
		}
		return strings.TrimSuffix(r.l, "\n"), nil
	case <-time.After(timeout):
		return "", fmt.Errorf("no reply line within %v", timeout)
	}
}

// qmpReply is the part of a QMP reply the tests look at.
type qmpReply struct {
	ID     json.RawMessage `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

func parseReply(t *testing.T, l string) qmpReply {
	t.Helper()
	var r qmpReply
	if err := json.Unmarshal([]byte(l), &r); err != nil {
		t.Fatalf("reply %q is not JSON: %v", l, err)
	}
	return r
}

const reply = 30 * time.Second

// TestMonitorQMP: a session's round trip, a command split over two writes,
// several commands in one write, ids of any JSON type given back as
// written, a reply bigger than 64 KiB, qmp_capabilities answered as after
// negotiation, garbage refused with EINVAL and a reason, and the taint.
func TestMonitorQMP(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("g", bareXML("g", ""))
	if _, err := os.OpenFile(m.Path("g", "monitor", "qmp"), os.O_RDWR, 0); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("open monitor/qmp of a shut-off domain: %v, want EBUSY", err)
	}
	m.MustCtl("g", "start --paused")
	if strings.Contains(m.Read("g", "live.xml"), "custom-monitor") {
		t.Fatal("live.xml tainted before any monitor use")
	}

	s := openSession(t, m, "g", "qmp")
	if err := s.send(`{"execute":"query-status"}` + "\n"); err != nil {
		t.Fatal(err)
	}
	r := parseReply(t, s.line(reply))
	if r.ID != nil || !strings.Contains(string(r.Return), `"running": false`) {
		t.Errorf("query-status: %+v (return %s)", r, r.Return)
	}

	// Round-trip time through the mount, for the record.
	var rtts []time.Duration
	for i := 0; i < 200; i++ {
		t0 := time.Now()
		s.send(`{"execute":"query-status"}`)
		s.line(reply)
		rtts = append(rtts, time.Since(t0))
	}
	t.Logf("QMP query-status round trip through the mount: median %.3f ms over %d", medianMillis(rtts), len(rtts))

	// One command in two writes: nothing runs until it is whole.
	if err := s.send(`{"execute": "query-na`); err != nil {
		t.Fatal(err)
	}
	if err := s.send(`me", "id": {"n": [1, "x"]}}` + "\n"); err != nil {
		t.Fatal(err)
	}
	if l := s.line(reply); l != `{"return": {"name": "g"}, "id": {"n": [1, "x"]}}` {
		t.Errorf("split command: reply %q", l)
	}

	// Three commands in one write, replies in order, each with its id.
	if err := s.send(`{"execute":"query-name","id":1}{"execute":"no-such","id":"two"}` + "\n" + `{"execute":"query-kvm","id":3.5}`); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`1`, `"two"`, `3.5`} {
		r := parseReply(t, s.line(reply))
		if string(r.ID) != want {
			t.Errorf("reply id %s, want %s", r.ID, want)
		}
		if want == `"two"` && (r.Error == nil || r.Error.Class != "CommandNotFound") {
			t.Errorf("no-such: %+v", r)
		}
	}

	// qemufs negotiated already; the session is answered as QEMU would.
	s.send(`{"execute":"qmp_capabilities","id":"c"}`)
	if r := parseReply(t, s.line(reply)); r.Error == nil || r.Error.Class != "CommandNotFound" || string(r.ID) != `"c"` {
		t.Errorf("qmp_capabilities: %+v", r)
	}

	// A reply far above bufio.Scanner's 64 KiB default.
	s.send(`{"execute":"query-qmp-schema","id":"big"}`)
	big := s.line(reply)
	if r := parseReply(t, big); string(r.ID) != `"big"` || len(big) < 64<<10 {
		t.Errorf("query-qmp-schema: %d bytes, id %s", len(big), r.ID)
	} else {
		t.Logf("query-qmp-schema reply: %d bytes", len(big))
	}

	// Not JSON: the write fails with EINVAL and error says why; the
	// session still works afterwards.
	if err := s.send("info status\n"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("write of a non-JSON line: %v, want EINVAL", err)
	}
	if msg := m.ErrorOf("g"); !strings.Contains(msg, "monitor/qmp") || !strings.Contains(msg, "JSON") {
		t.Errorf("error after garbage = %q", msg)
	}
	s.send(`{"execute":"query-status","id":9}`)
	if r := parseReply(t, s.line(reply)); string(r.ID) != "9" || r.Return == nil {
		t.Errorf("query-status after garbage: %+v", r)
	}

	if live := m.Read("g", "live.xml"); !strings.Contains(live, "custom-monitor") {
		t.Errorf("live.xml lacks the custom-monitor taint:\n%s", live)
	}
	if log := m.QEMULog("g"); strings.Count(log, "tainted: custom-monitor") != 1 {
		t.Errorf("log should say once that the domain is tainted:\n%s", log)
	}

	// The session ends with the domain: EOF, not a blocked read.
	m.MustCtl("g", "destroy")
	if l, err := readLine(s.rd, reply); !errors.Is(err, io.EOF) {
		t.Errorf("read after destroy: %q, %v; want EOF", l, err)
	}
	if err := s.send(`{"execute":"query-status"}`); !errors.Is(err, syscall.EBUSY) || !strings.Contains(m.ErrorOf("g"), "open the file again") {
		t.Errorf("write after destroy: %v (error %q), want EBUSY", err, m.ErrorOf("g"))
	}
	if _, err := os.Stat(m.Path("g", "monitor", "qmp")); err != nil {
		t.Error(err)
	}
}

// TestMonitorQMPConcurrent: two sessions each issue many commands with the
// same ids (every other one pipelined), while a third hammers HMP and ctl
// suspends and resumes the guest through qemufs's own QMP traffic: each
// session sees exactly its own replies, in order.
func TestMonitorQMPConcurrent(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("g", bareXML("g", ""))
	m.MustCtl("g", "start --paused")

	const n = 300
	type client struct {
		kind, cmd, want string
	}
	clients := []client{
		{"qmp", "query-name", `{"name": "g"}`},
		{"qmp", "query-kvm", `"enabled": false`},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	errc := make(chan error, len(clients)+2)
	var wg sync.WaitGroup
	start := time.Now()
	for ci, c := range clients {
		s := openSession(t, m, "g", c.kind)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- func() error {
				check := func(i int, l string) error {
					var r qmpReply
					if err := json.Unmarshal([]byte(l), &r); err != nil {
						return fmt.Errorf("client %d: reply %d %q: %v", ci, i, l, err)
					}
					if string(r.ID) != fmt.Sprint(i) || !strings.Contains(string(r.Return), c.want) {
						return fmt.Errorf("client %d (%s): reply %q to command id %d", ci, c.cmd, l, i)
					}
					return nil
				}
				for i := 0; i < n; i++ {
					if i%2 == 0 { // one at a time
						if err := s.send(fmt.Sprintf(`{"execute":%q,"id":%d}`, c.cmd, i)); err != nil {
							return err
						}
						l, err := readLine(s.rd, reply)
						if err != nil {
							return err
						}
						if err := check(i, l); err != nil {
							return err
						}
						continue
					}
					// pipelined: ten commands in one write
					var b strings.Builder
					for j := 0; j < 10; j++ {
						fmt.Fprintf(&b, `{"execute":%q,"id":%d}`+"\n", c.cmd, i)
					}
					if err := s.send(b.String()); err != nil {
						return err
					}
					for j := 0; j < 10; j++ {
						l, err := readLine(s.rd, reply)
						if err != nil {
							return err
						}
						if err := check(i, l); err != nil {
							return err
						}
					}
				}
				return nil
			}()
		}()
	}
	// HMP users and qemufs's own traffic alongside.
	hmp := openSession(t, m, "g", "hmp")
	wg.Add(1)
	go func() {
		defer wg.Done()
		errc <- func() error {
			for i := 0; ctx.Err() == nil && i < n; i++ {
				if err := hmp.send("info name\n"); err != nil {
					return err
				}
				l, err := readLine(hmp.rd, reply)
				if err != nil {
					return err
				}
				if l != "g" {
					return fmt.Errorf("hmp info name %d: %q", i, l)
				}
			}
			return nil
		}()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		errc <- func() error {
			for i := 0; i < 20; i++ {
				for _, c := range []string{"resume", "suspend"} {
					if err := m.Ctl("g", c); err != nil {
						return err
					}
				}
			}
			return nil
		}()
	}()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("concurrent sessions did not finish within 3 minutes")
	}
	close(errc)
	for err := range errc {
		if err != nil {
			t.Error(err)
		}
	}
	t.Logf("%d QMP round trips per session (half pipelined by ten) with HMP and ctl alongside: %v", n*11/2, time.Since(start))
	if got := m.State("g"); got != "paused (user)" {
		t.Errorf("state %q after the suspend/resume cycles", got)
	}
}

// TestMonitorQMPShell: the bash idiom of the docs, run by bash itself, and
// line readers that read ahead (head, read) taking one reply each.
func TestMonitorQMPShell(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("g", bareXML("g", ""))
	m.MustCtl("g", "start --paused")
	script := `set -e
exec 3<>"$1"
echo '{"execute":"query-status"}' >&3
head -1 <&3
echo '{"execute":"query-name","id":"n"}' >&3
head -1 <&3
# two replies queued: each line reader takes exactly one
echo '{"execute":"query-name","id":1}{"execute":"query-name","id":2}{"execute":"query-name","id":3}' >&3
head -1 <&3
read -r l <&3; echo "$l"
head -n1 <&3
exec 3>&-
# multi-line HMP output, a line at a time
exec 4<>"$2"
echo 'info chardev' >&4
head -1 <&4 | cut -d: -f1
read -r l <&4; echo "${l%%:*}"
exec 4>&-`
	out, err := bash(time.Minute, script, m.Path("g", "monitor", "qmp"), m.Path("g", "monitor", "hmp"))
	if err != nil {
		t.Fatalf("bash: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	want := []string{
		"",
		`{"return": {"name": "g"}, "id": "n"}`,
		`{"return": {"name": "g"}, "id": 1}`,
		`{"return": {"name": "g"}, "id": 2}`,
		`{"return": {"name": "g"}, "id": 3}`,
	}
	if len(lines) != 7 || !strings.Contains(lines[0], `"running": false`) || strings.Join(lines[1:5], "\n") != strings.Join(want[1:], "\n") ||
		!(lines[5] == "charserial0" && lines[6] == "charmonitor" || lines[5] == "charmonitor" && lines[6] == "charserial0") {
		t.Errorf("bash printed:\n%s", out)
	}
}

// TestMonitorHMP: a line in, its text out (Unix line endings), commands
// without output print nothing, and the domain is tainted.
func TestMonitorHMP(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("g", bareXML("g", ""))
	m.MustCtl("g", "start --paused")

	s := openSession(t, m, "g", "hmp")
	s.send("info status\n")
	if l := s.line(reply); !strings.HasPrefix(l, "VM status: paused") {
		t.Errorf("info status: %q", l)
	}
	// A line in two writes; "cont" prints nothing, the next command's
	// output follows directly.
	s.send("co")
	s.send("nt\ninfo status\n")
	if l := s.line(reply); l != "VM status: running" {
		t.Errorf("info status after cont: %q", l)
	}
	m.WaitState("g", "running (unpaused)", reply)
	s.send("info no-such-thing\n")
	if l := s.line(reply); !strings.Contains(l, "info") {
		t.Errorf("bad info command: %q", l)
	}
	// Several lines of output, read by a shell.
	out, err := bash(time.Minute, `exec 3<>"$1"; echo 'info chardev' >&3; head -2 <&3`, m.Path("g", "monitor", "hmp"))
	if err != nil || !strings.Contains(string(out), "charmonitor") && !strings.Contains(string(out), "charserial0") {
		t.Errorf("info chardev through bash: %v: %q", err, out)
	}
	if strings.Contains(string(out), "\r") {
		t.Errorf("HMP output has CR line endings: %q", out)
	}
	if live := m.Read("g", "live.xml"); !strings.Contains(live, "custom-monitor") {
		t.Errorf("live.xml lacks the custom-monitor taint")
	}
	if log := m.QEMULog("g"); !strings.Contains(log, "tainted: custom-monitor") {
		t.Errorf("log lacks the taint:\n%s", log)
	}
}

// TestMonitorEvents: QMP events of one run, one JSON object per line, in
// order, to every reader; each stream ends with EOF when the domain stops.
func TestMonitorEvents(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	m.MustCtl("g", "start")
	a := m.Follow("g", "monitor", "events")
	b := m.Follow("g", "monitor", "events")
	a.WaitBlocked(t)
	b.WaitBlocked(t)
	m.WaitConsole("g", g.ReadyLine, boot)
	m.MustCtl("g", "suspend")
	m.MustCtl("g", "resume")
	m.MustCtl("g", "shutdown")
	for i, f := range []*harness.Follower{a, b} {
		if err := f.WaitEnd(boot); err != nil {
			t.Errorf("reader %d: %v", i, err)
			continue
		}
		var names []string
		for _, l := range strings.Split(strings.TrimSuffix(f.String(), "\n"), "\n") {
			var ev struct {
				Event     string          `json:"event"`
				Timestamp json.RawMessage `json:"timestamp"`
			}
			if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Event == "" || ev.Timestamp == nil {
				t.Errorf("reader %d: line %q is not a QMP event (%v)", i, l, err)
			}
			names = append(names, ev.Event)
		}
		if !subsequence(names, "STOP", "RESUME", "POWERDOWN", "SHUTDOWN") {
			t.Errorf("reader %d: events %v, want STOP, RESUME, POWERDOWN, SHUTDOWN in order", i, names)
		}
	}
	if a.String() != b.String() {
		t.Errorf("readers saw different events:\n%s\n---\n%s", a.String(), b.String())
	}
	// A reader opened while the domain is shut off ends at once.
	if data, err := os.ReadFile(m.Path("g", "monitor", "events")); err != nil || len(data) != 0 {
		t.Errorf("monitor/events of a shut-off domain: %q, %v", data, err)
	}
}

// subsequence reports whether want appears in got in order.
func subsequence(got []string, want ...string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// bash runs script with args ($1...) and returns its output (stdout and
// stderr); a script still running after timeout is killed, and so are
// the reads of its children (WaitDelay stops waiting for their output).
func bash(timeout time.Duration, script string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{"-c", script, "-"}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd.CombinedOutput()
}

// medianMillis is the median of ds in milliseconds.
func medianMillis(ds []time.Duration) float64 {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return float64(ds[len(ds)/2].Microseconds()) / 1000
}
