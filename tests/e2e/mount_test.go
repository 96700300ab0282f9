package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// TestPersistence defines a domain, unmounts and mounts again: the
// definition is back byte for byte, shut off.
func TestPersistence(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	m.Define("h", harness.GuestXML(t, "h", guest.ActionNone, ""))
	if err := m.Remove("h"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(m.Path("slot"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := m.Read("g", "config.xml")
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	if m.Exists("g") {
		t.Fatal("g still listed after unmount")
	}
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if got := m.Read("g", "config.xml"); got != conf {
		t.Errorf("config.xml after remount differs:\n%s\nwas:\n%s", got, conf)
	}
	if got := m.State("g"); !strings.HasPrefix(got, "shut off") {
		t.Errorf("state after remount = %q, want shut off", got)
	}
	if m.Exists("h") {
		t.Error("undefined h is back after remount")
	}
	if m.Exists("slot") {
		t.Error("the empty slot (never defined) is back after remount")
	}
}

// TestMountTwice mounts an instance's root a second time while it is
// mounted, at the same and at another mount point: both fail and say why;
// the first mount keeps working.
func TestMountTwice(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	pid := m.DaemonPid()
	other := filepath.Join(m.Base, "m2")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, mp := range []string{m.Dir, other} {
		var stderr bytes.Buffer
		cmd := m.Command("mount", "--root", m.Root, "--daemon", mp)
		cmd.Stderr = &stderr
		err := cmd.Run()
		if err == nil {
			unix.Unmount(other, unix.MNT_DETACH)
			t.Fatalf("second mount at %s succeeded", mp)
		}
		t.Logf("second mount at %s: %s", mp, strings.TrimSpace(stderr.String()))
		if !strings.Contains(stderr.String(), "already mounted") {
			t.Errorf("second mount at %s: %v, stderr %q; want it to say already mounted", mp, err, stderr.String())
		}
	}
	if got := m.DaemonPid(); got != pid {
		t.Errorf("daemon pid %d after the refused mounts, was %d", got, pid)
	}
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
}

// TestMountBadRoot: a root so long that QEMU's sockets would not fit the
// kernel's limit, and a relative root, fail the mount with the reason.
func TestMountBadRoot(t *testing.T) {
	t.Parallel()
	bin := harness.Bin(t)
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests run as root (make test)")
	}
	base := t.TempDir()
	mp := filepath.Join(base, "m")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	long := filepath.Join(base, strings.Repeat("r", 100))
	tests := []struct {
		root string
		want []string
	}{
		{long, []string{"socket", "107", "shorter root"}},
		{"rel/root", []string{"absolute"}},
	}
	for _, tc := range tests {
		var stderr bytes.Buffer
		cmd := exec.Command(bin, "mount", "--root", tc.root, "--daemon", mp)
		cmd.Stderr = &stderr
		err := cmd.Run()
		if err == nil {
			exec.Command(bin, "unmount", mp).Run()
			t.Fatalf("mount --root %s succeeded", tc.root)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("mount --root %s: stderr %q does not mention %q", tc.root, stderr.String(), w)
			}
		}
		t.Logf("mount --root %s: %s", tc.root, strings.TrimSpace(stderr.String()))
	}
}
