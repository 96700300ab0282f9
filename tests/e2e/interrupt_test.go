package e2e

import (
	"bytes"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/harness"
)

// TestCtlInterrupt: a ctl command that waits (shutdown of a guest without
// ACPI, which never powers off) keeps waiting through SIGCHLD from a shell's
// background job, and returns EINTR when the shell gets SIGINT.
func TestCtlInterrupt(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("n", `<domain type='qemu'><name>n</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><serial type='pty'/></devices></domain>`)
	m.MustCtl("n", "start")

	script := `trap 'echo got-int' INT
sleep 0.3 &
echo shutdown > ` + m.Path("n", "ctl") + `
echo rc=$?`
	var out bytes.Buffer
	cmd := exec.Command("bash", "-c", script)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// The background sleep ends (SIGCHLD to bash) well within this time.
	select {
	case err := <-done:
		t.Fatalf("shutdown returned early (%v): %s", err, out.String())
	case <-time.After(2 * time.Second):
	}
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("shutdown not interrupted by SIGINT: %s", out.String())
	}
	if s := out.String(); !strings.Contains(s, "Interrupted system call") || !strings.Contains(s, "rc=1") {
		t.Errorf("bash printed %q, want an EINTR write error", s)
	}
	if got := m.State("n"); got != "running (booted)" {
		t.Errorf("state %q after an interrupted shutdown", got)
	}
}
