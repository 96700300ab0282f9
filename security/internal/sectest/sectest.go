// Package sectest holds helpers for the security packages' tests that
// need real host objects: loop block devices and processes placed in a
// cgroup before they run.
package sectest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RequireRoot skips a test that needs root (the CI runs as root).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// Loop attaches a new loop device to a fresh 1 MiB file in dir and
// detaches it when the test ends. It returns the device path.
func Loop(t testing.TB, dir string) string {
	t.Helper()
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup not installed")
	}
	f := filepath.Join(dir, fmt.Sprintf("loop-backing-%d", len(t.Name())))
	for i := 0; ; i++ {
		if _, err := os.Stat(f); err != nil {
			break
		}
		f = filepath.Join(dir, fmt.Sprintf("loop-backing-%d-%d", len(t.Name()), i))
	}
	if err := os.WriteFile(f, bytes.Repeat([]byte{'x'}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", f).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device available: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// RunIn runs argv in a shell that first writes itself into each of the
// cgroup.procs files, then execs argv: the command never runs outside the
// group, like procmgr's helper. It returns combined output.
func RunIn(procs []string, argv ...string) (string, error) {
	var script strings.Builder
	for _, p := range procs {
		fmt.Fprintf(&script, "echo $$ > %q || exit 99; ", p)
	}
	script.WriteString(`exec "$@"`)
	cmd := exec.Command("/bin/sh", append([]string{"-c", script.String(), "sh"}, argv...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// SearchableTempDir returns t.TempDir() with it and its parent opened
// for search by other users (the testing package makes them 0700), so
// that a QEMU running as another user can reach files below it.
func SearchableTempDir(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{filepath.Dir(d), d} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}
