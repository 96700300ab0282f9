package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// consoleHistory is what a new console reader gets at most (see
// docs/reference.md).
const consoleHistory = 256 << 10

// readUntil reads the stream file path from its start until want was
// read, and returns everything read; it gives up after timeout.
func readUntil(path, want string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out bytes.Buffer
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	type res struct{ err error }
	done := make(chan res, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := f.Read(buf)
			out.Write(buf[:n])
			if strings.Contains(out.String(), want) {
				done <- res{nil}
				return
			}
			if err != nil {
				done <- res{err}
				return
			}
		}
	}()
	select {
	case r := <-done:
		return out.String(), r.err
	case <-ctx.Done():
		return "", errors.New("timed out")
	}
}

// TestConsole: the serial console as a file: a new reader gets the history
// (at most 256 KiB, the newest), every reader gets every byte, echo and
// writes reach the guest's shell, and readers end when the domain stops.
func TestConsole(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	if _, err := os.Open(m.Path("g", "console")); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("open console of a shut-off domain: %v, want EBUSY", err)
	}
	m.MustCtl("g", "start")
	m.WaitConsole("g", g.ReadyLine, boot)

	// Readers opened after the guest printed its ready line still see it.
	a, b := m.Follow("g", "console"), m.Follow("g", "console")
	for _, f := range []*harness.Follower{a, b} {
		if err := f.Wait(g.ReadyLine, boot); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Send("echo hi-$((6*7))\n", "g", "console"); err != nil {
		t.Fatal(err)
	}
	// The shell's idiom: echo > console (open with O_TRUNC).
	out, err := bash(time.Minute, `echo 'echo sh-$((2*3))' > "$1"`, m.Path("g", "console"))
	if err != nil {
		t.Fatalf("echo > console: %v: %s", err, out)
	}
	for _, f := range []*harness.Follower{a, b} {
		for _, want := range []string{"hi-42", "sh-6"} {
			if err := f.Wait(want, boot); err != nil {
				t.Error(err)
			}
		}
	}

	// More output than the history holds: a new reader starts within it,
	// with the newest 256 KiB.
	if err := m.Send("seq 1 50000; echo END-$((40+2))\n", "g", "console"); err != nil {
		t.Fatal(err)
	}
	if err := a.Wait("END-42", 4*boot); err != nil {
		t.Fatal(err)
	}
	hist, err := readUntil(m.Path("g", "console"), "END-42", boot)
	if err != nil {
		t.Fatalf("new reader: %v", err)
	}
	all := a.String()
	if len(all) <= consoleHistory {
		t.Fatalf("only %d bytes of output", len(all))
	}
	if len(hist) > consoleHistory || !strings.Contains(all, hist) || strings.Contains(hist, g.ReadyLine) {
		t.Errorf("a new reader got %d bytes (of %d printed) starting %q; want the newest 256 KiB at most", len(hist), len(all), hist[:min(len(hist), 40)])
	}
	t.Logf("output %d bytes, history for a new reader %d bytes", len(all), len(hist))

	m.MustCtl("g", "destroy")
	for _, f := range []*harness.Follower{a, b} {
		if err := f.WaitEnd(boot); err != nil {
			t.Error(err)
		}
	}
}

// TestConsoleNoSerial: a guest without a serial port has no console.
func TestConsoleNoSerial(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("g", `<domain type='qemu'><name>g</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>`)
	m.MustCtl("g", "start --paused")
	_, err := os.Open(m.Path("g", "console"))
	if !errors.Is(err, syscall.ENODEV) || !strings.Contains(m.ErrorOf("g"), "serial") {
		t.Errorf("open console without a serial port: %v, error %q; want ENODEV and a reason", err, m.ErrorOf("g"))
	}
}

// TestConsoleTmux: an interactive shell on the console, driven through
// tmux the way a user would: keys in, the screen shows the answer.
func TestConsoleTmux(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux is not installed (scripts/deps.sh installs it)")
	}
	m := harness.Start(t, harness.Options{})
	m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, ""))

	// A private tmux server (its own socket), ended at cleanup.
	sock := filepath.Join(t.TempDir(), "tmux.sock")
	tmux := func(args ...string) (string, error) {
		out, err := exec.Command("tmux", append([]string{"-S", sock}, args...)...).CombinedOutput()
		return string(out), err
	}
	console := m.Path("g", "console")
	if out, err := tmux("new-session", "-d", "-s", "c", "-x", "100", "-y", "30",
		"stty raw -echo; cat "+console+" & cat > "+console); err != nil {
		t.Fatalf("tmux new-session: %v: %s", err, out)
	}
	t.Cleanup(func() { tmux("kill-server") })

	screen := func(want string, timeout time.Duration) (string, bool) {
		deadline := time.Now().Add(timeout)
		for {
			out, _ := tmux("capture-pane", "-p", "-t", "c")
			for _, l := range strings.Split(out, "\n") {
				if strings.TrimSpace(l) == want {
					return out, true
				}
			}
			if time.Now().After(deadline) {
				return out, false
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if out, err := tmux("send-keys", "-t", "c", "echo hi-$((6*7))", "Enter"); err != nil {
		t.Fatalf("tmux send-keys: %v: %s", err, out)
	}
	if out, ok := screen("hi-42", boot); !ok {
		t.Fatalf("the pane does not show hi-42:\n%s", out)
	}
	// A second command, to be sure the pane follows the stream.
	tmux("send-keys", "-t", "c", "echo $((5+5))-done", "Enter")
	if out, ok := screen("10-done", boot); !ok {
		t.Fatalf("the pane does not show 10-done:\n%s", out)
	}
}

// TestConsoleWriteInterrupt: a guest that takes no input (paused) holds a
// writer; SIGTERM or SIGINT ends it promptly, and the console still works.
func TestConsoleWriteInterrupt(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("g", bareXML("g", ""))
	m.MustCtl("g", "start --paused")
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd := exec.Command("sh", "-c", `exec head -c 4000000 /dev/zero > "$1"`, "-", m.Path("g", "console"))
		if err := startDefaultSignals(cmd); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if err := harness.WaitBlockedIn(cmd.Process.Pid, syscall.SYS_WRITE, time.Minute); err != nil {
			cmd.Process.Kill()
			t.Fatal(err)
		}
		sent := time.Now()
		cmd.Process.Signal(sig)
		select {
		case <-done:
			t.Logf("writer ended %v after %v", time.Since(sent).Round(time.Millisecond), sig)
		case <-time.After(3 * time.Second):
			t.Fatalf("writer of a paused guest's console still blocked 3s after %v", sig)
		}
	}
	if got := m.State("g"); got != "paused (user)" {
		t.Errorf("state %q", got)
	}
}
