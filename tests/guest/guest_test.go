package guest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// bootTimeout bounds every wait in these tests; a boot takes ~3 s under TCG
// but the machine may be loaded.
const bootTimeout = 90 * time.Second

var (
	buildOnce  sync.Once
	builtGuest *Guest
	buildErr   error
)

func testGuest(t *testing.T) *Guest {
	t.Helper()
	buildOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		builtGuest, buildErr = Build(ctx, os.Getenv("QEMUFS_GUEST_DIR"))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtGuest
}

// vm is one QEMU booting the guest, with the serial console on its stdio
// and QMP on a socket we listened on before QEMU started.
type vm struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // serial console lines, \r stripped
	qmp    *qmpConn
	exited chan struct{}
	err    error // Wait's result, valid after exited is closed
}

func boot(t *testing.T, action Action, extra ...string) *vm {
	t.Helper()
	g := testGuest(t)
	dir := t.TempDir()

	// Listen first and hand the socket to QEMU (as libvirt does): the
	// connection is queued until QEMU accepts it, no waiting for a path.
	sock := filepath.Join(dir, "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	lnFile, err := ln.(*net.UnixListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer lnFile.Close()

	args := []string{"-machine", "pc", "-accel", "tcg", "-m", "128", "-nodefaults",
		"-display", "none", "-serial", "stdio",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off", "-mon", "chardev=qmp,mode=control"}
	args = append(args, g.Args(action)...)
	args = append(args, extra...)
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.ExtraFiles = []*os.File{lnFile}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	v := &vm{cmd: cmd, stdin: stdin, lines: make(chan string, 1024), exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			select {
			case v.lines <- line:
			default: // nobody reads that far; drop
			}
		}
		v.err = cmd.Wait()
		close(v.exited)
	}()
	t.Cleanup(func() {
		// End QEMU by its pid (exec.Cmd signals the pid it started).
		_ = cmd.Process.Kill()
		<-v.exited
	})

	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	v.qmp, err = newQMP(conn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return v
}

// waitLine reads serial lines until one satisfies match.
func (v *vm) waitLine(t *testing.T, what string, match func(string) bool) {
	t.Helper()
	deadline := time.After(bootTimeout)
	for {
		select {
		case l := <-v.lines:
			if match(l) {
				return
			}
		case <-v.exited:
			t.Fatalf("QEMU exited (%v) before the console showed %s", v.err, what)
		case <-deadline:
			t.Fatalf("console did not show %s within %v", what, bootTimeout)
		}
	}
}

func (v *vm) waitReady(t *testing.T) {
	t.Helper()
	v.waitLine(t, ReadyLine, func(l string) bool { return strings.Contains(l, ReadyLine) })
}

func (v *vm) waitExit(t *testing.T) {
	t.Helper()
	select {
	case <-v.exited:
	case <-time.After(bootTimeout):
		t.Fatalf("QEMU did not exit within %v", bootTimeout)
	}
}

// qmpConn is the smallest QMP client that serves these tests: one command
// at a time, events queued.
type qmpConn struct {
	conn    net.Conn
	events  chan qmpMessage
	replies chan qmpMessage
}

type qmpMessage struct {
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

func newQMP(conn net.Conn) (*qmpConn, error) {
	q := &qmpConn{conn: conn, events: make(chan qmpMessage, 256), replies: make(chan qmpMessage, 1)}
	dec := json.NewDecoder(conn)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	go func() {
		defer close(q.events)
		for {
			var m qmpMessage
			if err := dec.Decode(&m); err != nil {
				return
			}
			if m.Event != "" {
				q.events <- m
			} else {
				q.replies <- m
			}
		}
	}()
	if err := q.execute("qmp_capabilities"); err != nil {
		return nil, err
	}
	return q, nil
}

func (q *qmpConn) execute(cmd string) error {
	if _, err := fmt.Fprintf(q.conn, `{"execute":%q}`+"\n", cmd); err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case m := <-q.replies:
		if m.Error != nil {
			return fmt.Errorf("qmp %s: %s: %s", cmd, m.Error.Class, m.Error.Desc)
		}
		return nil
	case <-time.After(bootTimeout):
		return fmt.Errorf("qmp %s: no reply within %v", cmd, bootTimeout)
	}
}

// waitEvent returns the first event named name, failing on EOF or timeout.
func (q *qmpConn) waitEvent(t *testing.T, name string) qmpMessage {
	t.Helper()
	deadline := time.After(bootTimeout)
	for {
		select {
		case m, ok := <-q.events:
			if !ok {
				t.Fatalf("QMP closed before event %s", name)
			}
			if m.Event == name {
				return m
			}
		case <-deadline:
			t.Fatalf("no QMP event %s within %v", name, bootTimeout)
		}
	}
}

func TestBuildIsCached(t *testing.T) {
	g := testGuest(t)
	for _, p := range []string{g.Kernel, g.Initrd} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Fatalf("output %s missing or empty: %v", p, err)
		}
	}
	if g.ReadyLine != ReadyLine {
		t.Errorf("ready line: want %q, got %q", ReadyLine, g.ReadyLine)
	}
	// A second build must be a no-op that leaves the outputs untouched.
	before, err := os.Stat(g.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g2, err := Build(ctx, filepath.Dir(g.Kernel))
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(g2.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	if !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("rebuild changed %s (mtime %v -> %v)", g2.Initrd, before.ModTime(), after.ModTime())
	}
}

func TestPowerButton(t *testing.T) {
	v := boot(t, ActionNone)
	start := time.Now()
	v.waitReady(t)
	t.Logf("ready line after %v", time.Since(start).Round(time.Millisecond))
	if err := v.qmp.execute("system_powerdown"); err != nil {
		t.Fatal(err)
	}
	ev := v.qmp.waitEvent(t, "SHUTDOWN")
	var data struct {
		Guest  bool   `json:"guest"`
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal(ev.Data, &data); err != nil {
		t.Fatal(err)
	}
	if !data.Guest || data.Reason != "guest-shutdown" {
		t.Errorf("SHUTDOWN: want guest=true reason=guest-shutdown, got %s", ev.Data)
	}
	v.waitExit(t)
	if v.err != nil {
		t.Errorf("QEMU exit: %v", v.err)
	}
}

func TestSerialShell(t *testing.T) {
	v := boot(t, ActionNone)
	v.waitReady(t)
	steps := []struct {
		name  string
		input string
		want  func(line string) bool
	}{
		// The terminal echoes the input; the output is a line of its own.
		{"arithmetic", "echo $((6*7))", equal("42")},
		// Opening /dev/tty fails (ENXIO) without a controlling terminal.
		{"controlling tty", "( : </dev/tty ) && echo CTTY-OK", equal("CTTY-OK")},
		// The shell exits and init starts a new one. Input typed while the
		// old shell exits is lost, so wait for the new shell's banner.
		{"respawn", "exit", func(l string) bool { return strings.Contains(l, "built-in shell (ash)") }},
		{"after respawn", "echo again-$((1+1))", equal("again-2")},
	}
	for _, s := range steps {
		if _, err := io.WriteString(v.stdin, s.input+"\n"); err != nil {
			t.Fatalf("%s: write console: %v", s.name, err)
		}
		v.waitLine(t, s.name, s.want)
	}
}

func equal(want string) func(string) bool {
	return func(l string) bool { return strings.TrimSpace(l) == want }
}

func TestActions(t *testing.T) {
	type eventData struct {
		Guest  bool   `json:"guest"`
		Reason string `json:"reason"`
		Action string `json:"action"`
	}
	tests := []struct {
		action Action
		extra  []string
		event  string
		want   eventData
	}{
		// QEMU 7.2's default panic action is poweroff.
		{ActionPanic, []string{"-device", "pvpanic"}, "GUEST_PANICKED", eventData{Action: "poweroff"}},
		{ActionPoweroff, nil, "SHUTDOWN", eventData{Guest: true, Reason: "guest-shutdown"}},
		{ActionReboot, nil, "RESET", eventData{Guest: true, Reason: "guest-reset"}},
	}
	for _, tc := range tests {
		t.Run(string(tc.action), func(t *testing.T) {
			v := boot(t, tc.action, tc.extra...)
			v.waitReady(t)
			ev := v.qmp.waitEvent(t, tc.event)
			var got eventData
			if err := json.Unmarshal(ev.Data, &got); err != nil {
				t.Fatalf("%s data %s: %v", tc.event, ev.Data, err)
			}
			if got != tc.want {
				t.Errorf("%s data:\n- want: %+v\n-  got: %+v", tc.event, tc.want, got)
			}
		})
	}
}
