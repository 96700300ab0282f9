package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// lifecycleEvent is one line of a domain's events file.
type lifecycleEvent struct {
	Timestamp time.Time `json:"timestamp"`
	Domain    string    `json:"domain"`
	Event     string    `json:"event"`
	Detail    string    `json:"detail"`
}

// parseEvents checks that every line of out is one event of domain and
// returns them as "event(detail)".
func parseEvents(t *testing.T, domain, out string) []string {
	t.Helper()
	var got []string
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		var ev lifecycleEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Event == "" || ev.Timestamp.IsZero() {
			t.Errorf("events line %q is not an event (%v)", l, err)
			continue
		}
		if ev.Domain != domain {
			t.Errorf("event of domain %q in %s/events: %s", ev.Domain, domain, l)
		}
		got = append(got, ev.Event+"("+ev.Detail+")")
	}
	return got
}

// TestEventsLifecycle: the events file follows a domain from its
// definition to its removal, across two runs, one JSON object per line,
// in order, to every reader; it ends (EOF) when the domain is undefined.
func TestEventsLifecycle(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	if err := os.Mkdir(m.Path("g"), 0o755); err != nil {
		t.Fatal(err)
	}
	early := m.Follow("g", "events") // on the empty slot
	early.WaitBlocked(t)
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	late := m.Follow("g", "events")
	late.WaitBlocked(t)

	m.MustCtl("g", "start")
	m.WaitConsole("g", g.ReadyLine, boot)
	m.MustCtl("g", "suspend")
	m.MustCtl("g", "resume")
	m.MustCtl("g", "shutdown")
	m.MustCtl("g", "start --paused")
	m.MustCtl("g", "destroy")
	if err := m.Remove("g"); err != nil {
		t.Fatal(err)
	}
	run := []string{
		"started(booted)", "paused(user)", "resumed(unpaused)", "shutdown(finished)", "stopped(shutdown)",
		"started(booted)", "paused(user)", "stopped(destroyed)", "undefined(removed)",
	}
	for _, c := range []struct {
		name string
		f    *harness.Follower
		want []string
	}{
		{"reader opened before define", early, append([]string{"defined(added)"}, run...)},
		{"reader opened after define", late, run},
	} {
		if err := c.f.WaitEnd(boot); err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		got := parseEvents(t, "g", c.f.String())
		if strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("%s:\n got %v\nwant %v", c.name, got, c.want)
		}
	}
}

// TestEventsRebootCrash: a reboot through ctl is "rebooted"; a guest
// panic is "crashed" then "stopped (crashed)", with GUEST_PANICKED among
// the QMP events.
func TestEventsRebootCrash(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	ev := m.Follow("g", "events")
	ev.WaitBlocked(t)
	m.MustCtl("g", "start")
	m.WaitConsole("g", g.ReadyLine, boot)
	m.MustCtl("g", "reboot")
	m.WaitConsoleCount("g", g.ReadyLine, 2, boot)
	m.MustCtl("g", "destroy")

	m.Define("g", harness.GuestXML(t, "g", guest.ActionPanic, panicDevice))
	m.MustCtl("g", "start")
	qev := m.Follow("g", "monitor", "events")
	m.WaitState("g", "shut off (crashed)", boot)
	if err := qev.WaitEnd(boot); err != nil {
		t.Error(err)
	} else if !strings.Contains(qev.String(), `"GUEST_PANICKED"`) {
		t.Errorf("QMP events of a panic:\n%s", qev.String())
	}
	if err := ev.Wait(`"stopped","detail":"crashed"`, boot); err != nil {
		t.Fatal(err)
	}
	// One rebooted per QEMU RESET (as libvirt): SeaBIOS resets the
	// machine again by itself after the reset of a reboot.
	var got []string
	for _, e := range parseEvents(t, "g", ev.Stop()) {
		if e == "rebooted(guest-reset)" && len(got) > 0 && strings.HasPrefix(got[len(got)-1], "rebooted(") {
			continue
		}
		got = append(got, e)
	}
	want := []string{
		"started(booted)", "rebooted(host-qmp-system-reset)", "stopped(destroyed)",
		"defined(updated)",
		"started(booted)", "crashed(panicked)", "stopped(crashed)",
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("events:\n got %v\nwant %v", got, want)
	}
}

// startDefaultSignals starts cmd with SIGINT at its default action: a test
// binary started in the background has SIGINT ignored, and an ignored
// signal stays ignored across exec; handled here meanwhile, exec resets it.
func startDefaultSignals(cmd *exec.Cmd) error {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT)
	defer signal.Stop(c)
	return cmd.Start()
}

// startReader starts `cat FILE` with default signal actions and waits
// until cat is blocked reading.
func startReader(t *testing.T, path string) (*exec.Cmd, chan error) {
	t.Helper()
	cmd := exec.Command("cat", path)
	if err := startDefaultSignals(cmd); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if err := harness.WaitBlockedRead(cmd.Process.Pid, time.Minute); err != nil {
		cmd.Process.Kill()
		t.Fatalf("cat %s: %v", path, err)
	}
	if ignored(cmd.Process.Pid, syscall.SIGINT) {
		t.Logf("cat ignores SIGINT")
	}
	return cmd, done
}

// ignored reports whether process pid ignores sig.
func ignored(pid int, sig syscall.Signal) bool {
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "SigIgn:\t"); ok {
			n, _ := strconv.ParseUint(v, 16, 64)
			return n&(1<<(sig-1)) != 0
		}
	}
	return false
}

// TestStreamSignals: a reader blocked on a stream (events, monitor/events,
// console, a monitor session waiting for a reply) ends promptly on SIGINT
// and on SIGTERM, and a thread blocked in read(2) gets EINTR when a
// handled signal arrives; the streams keep working afterwards.
func TestStreamSignals(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("g", bareXML("g", ""))
	m.MustCtl("g", "start --paused") // prints nothing: every read blocks

	const prompt = 3 * time.Second
	for _, file := range [][]string{{"events"}, {"monitor", "events"}, {"console"}, {"monitor", "qmp"}} {
		for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
			name := strings.Join(file, "/")
			cmd, done := startReader(t, m.Path(append([]string{"g"}, file...)...))
			sent := time.Now()
			cmd.Process.Signal(sig)
			select {
			case <-done:
				t.Logf("cat %s ended %v after %v", name, time.Since(sent).Round(time.Millisecond), sig)
				if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != sig {
					t.Errorf("cat %s: %v after %v", name, cmd.ProcessState, sig)
				}
			case <-time.After(prompt):
				cmd.Process.Kill()
				<-done
				t.Errorf("cat %s still blocked %v after %v", name, prompt, sig)
			}
		}
	}

	// read(2) itself returns EINTR: a thread of this process blocked on
	// events gets SIGURG, which the Go runtime handles.
	f, err := os.Open(m.Path("g", "events"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	type result struct {
		n   int
		err error
	}
	tidc, res := make(chan int, 1), make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tidc <- unix.Gettid()
		n, err := unix.Read(fd, make([]byte, 4096))
		res <- result{n, err}
	}()
	tid := <-tidc
	if err := harness.WaitBlockedRead(tid, time.Minute); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	unix.Tgkill(os.Getpid(), tid, unix.SIGURG)
	select {
	case r := <-res:
		if r.err != unix.EINTR {
			t.Errorf("read(2) of events interrupted by a signal: %d, %v; want EINTR", r.n, r.err)
		} else {
			t.Logf("read(2) returned EINTR %v after the signal", time.Since(sent).Round(time.Millisecond))
		}
	case <-time.After(prompt):
		t.Errorf("read(2) of events not interrupted %v after a signal", prompt)
	}

	// Still followed afterwards.
	ev := m.Follow("g", "events")
	ev.WaitBlocked(t)
	m.MustCtl("g", "resume")
	if err := ev.Wait(`"resumed"`, boot); err != nil {
		t.Error(err)
	}
}

// TestEventsShell: the event files from a shell: head -1 takes one event
// each time, with no error (head seeks after reading), and cat of
// monitor/events ends when the domain stops.
func TestEventsShell(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("g", bareXML("g", ""))
	script := `set -e
exec 4<"$1/events"
echo 'start --paused' > "$1/ctl"
head -1 <&4
head -1 <&4
exec 5<"$1/monitor/events"
echo resume > "$1/ctl"
head -1 <&5
echo destroy > "$1/ctl"
cat <&5 >/dev/null
head -n 1 <&4
echo done`
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, "bash", "-c", script, "-", m.Path("g"))
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("bash: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	want := []string{`"event":"started"`, `"event":"paused"`, `"event": "RESUME"`, `"event":"resumed"`, "done"}
	if len(lines) != len(want) {
		t.Fatalf("bash printed:\n%s", out)
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d %q, want %s", i+1, lines[i], w)
		}
	}
}
