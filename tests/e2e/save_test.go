package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// counterLoop prints CNT0, CNT1, ... once a second in the guest's shell.
const counterLoop = "i=0; while :; do echo CNT$i; i=$((i+1)); sleep 1; done &\n"

var cntRE = regexp.MustCompile(`CNT(\d+)`)

// counts returns the CNT numbers printed in out, in order.
func counts(out string) []int {
	var n []int
	for _, m := range cntRE.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.Atoi(m[1])
		n = append(n, v)
	}
	return n
}

// waitCountAbove follows NAME/console until a CNT number above min shows.
func waitCountAbove(t *testing.T, f *harness.Follower, min int, timeout time.Duration) []int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := counts(f.String())
		if len(c) > 0 && c[len(c)-1] > min {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CNT above %d on the console within %v: %q", min, timeout, f.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSave: a managed save of the booted test guest and the start that
// restores it, with a counter running in the guest that continues where
// it was (no second boot); the saved state survives a remount and blocks
// an undefine; a corrupt image is refused with its reason and loses
// nothing; --force-boot boots afresh.
func TestSave(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	conf := m.Read("g", "config.xml")
	image := filepath.Join(m.Root, "lib/qemu/.save/g.save")

	before := m.Follow("g", "console")
	if err := m.Send(counterLoop, "g", "console"); err != nil {
		t.Fatal(err)
	}
	waitCountAbove(t, before, 2, boot)
	m.MustCtl("g", "save")
	if st := m.State("g"); st != "shut off (saved)" {
		t.Fatalf("state after save: %q", st)
	}
	if err := before.WaitEnd(30 * time.Second); err != nil {
		t.Errorf("console reader after save: %v", err)
	}
	c := counts(before.Stop())
	last := c[len(c)-1]
	st, err := os.Stat(image)
	if err != nil || st.Size() < 1<<20 {
		t.Fatalf("managed save image: %v (%v)", st, err)
	}
	if m.Pid("g") != 0 {
		t.Error("a pid after save")
	}

	// The saved state survives a remount.
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if st := m.State("g"); st != "shut off (saved)" {
		t.Fatalf("state after a remount: %q", st)
	}
	if err := m.Remove("g"); !errors.Is(err, syscall.EBUSY) || !strings.Contains(m.ErrorOf("g"), "managed save") {
		t.Errorf("rmdir of a saved domain: %v (%s), want EBUSY naming the image", err, m.ErrorOf("g"))
	}

	m.MustCtl("g", "start")
	if st := m.State("g"); st != "running (restored)" {
		t.Fatalf("state after start: %q", st)
	}
	after := m.Follow("g", "console")
	c = waitCountAbove(t, after, last, boot)
	if c[0] <= last || c[0] > last+30 {
		t.Errorf("the counter went on from %d at %v, not where it was", last, c)
	}
	if strings.Contains(after.String(), g.ReadyLine) {
		t.Errorf("the guest booted again instead of resuming: %q", after.String())
	}
	if _, err := os.Stat(image); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the managed image is still there after the restore: %v", err)
	}
	if live := m.Read("g", "live.xml"); !strings.Contains(live, "<name>g</name>") {
		t.Errorf("live.xml after restore:\n%s", live)
	}

	// A corrupt (cut-off) image: EINVAL with the reason, nothing lost.
	m.MustCtl("g", "save")
	data, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	cut := data[:len(data)/2]
	if err := os.WriteFile(image, cut, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.Ctl("g", "start"); !errors.Is(err, syscall.EINVAL) || !strings.Contains(m.ErrorOf("g"), "truncated") {
		t.Errorf("start from a cut-off image: %v, want EINVAL saying truncated", err)
	}
	if now, err := os.ReadFile(image); err != nil || len(now) != len(cut) {
		t.Errorf("the image changed after the failed start: %v", err)
	}
	if now := m.Read("g", "config.xml"); now != conf {
		t.Error("the definition changed after the failed start")
	}
	if st := m.State("g"); st != "shut off (saved)" {
		t.Errorf("state after the failed start: %q", st)
	}
	// A stream QEMU cannot load: EIO with QEMU's words.
	bad := append([]byte(nil), data...)
	for i := len(bad) / 2; i < len(bad)/2+4096; i++ {
		bad[i] ^= 0x5a
	}
	os.WriteFile(image, bad, 0o600)
	if err := m.Ctl("g", "start"); !errors.Is(err, syscall.EIO) || !strings.Contains(m.ErrorOf("g"), "could not load") {
		t.Errorf("start from a corrupt stream: %v, want EIO (error: %s)", err, m.ErrorOf("g"))
	}
	if _, err := os.Stat(image); err != nil {
		t.Errorf("the image went after QEMU refused it: %v", err)
	}
	if m.Pid("g") != 0 {
		t.Error("QEMU left running after a failed restore")
	}

	// --force-boot discards it and boots.
	m.MustCtl("g", "start --force-boot")
	if st := m.State("g"); st != "running (booted)" {
		t.Fatalf("state after start --force-boot: %q", st)
	}
	fresh := m.Follow("g", "console")
	if err := fresh.Wait(g.ReadyLine, boot); err != nil {
		t.Errorf("no fresh boot: %v", err)
	}
	if _, err := os.Stat(image); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("--force-boot kept the image: %v", err)
	}
}

// TestSaveFileSystem: save FILE and restore FILE on the system instance,
// where QEMU runs as another user, confined: qemufs writes the image
// itself (root's, 0600) and hands QEMU the open file to restore from.
func TestSaveFileSystem(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{System: true})
	g := harness.Guest(t)
	m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	file := filepath.Join(t.TempDir(), "g.img")
	before := m.Follow("g", "console")
	if err := m.Send(counterLoop, "g", "console"); err != nil {
		t.Fatal(err)
	}
	waitCountAbove(t, before, 1, boot)
	m.MustCtl("g", "save "+file)
	if st := m.State("g"); st != "shut off (saved)" {
		t.Fatalf("state after save FILE: %q", st)
	}
	before.WaitEnd(30 * time.Second)
	c := counts(before.Stop())
	last := c[len(c)-1]
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("image owner %d mode %v, want root's 0600", sys.Uid, st.Mode().Perm())
	}
	// A plain start boots: save FILE leaves no managed image.
	m.MustCtl("g", "start --paused")
	m.MustCtl("g", "destroy")

	m.MustCtl("g", "restore "+file)
	if st := m.State("g"); st != "running (restored)" {
		t.Fatalf("state after restore: %q", st)
	}
	after := m.Follow("g", "console")
	waitCountAbove(t, after, last, boot)
	if strings.Contains(after.String(), g.ReadyLine) {
		t.Errorf("the guest booted again instead of resuming: %q", after.String())
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("restore removed FILE: %v", err)
	}
	m.MustCtl("g", "destroy")
}
