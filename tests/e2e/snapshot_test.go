package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// diskHead returns the first n bytes of what a qcow2 image (with its
// backing chain) holds, read on the host with qemu-img once no QEMU has it.
func diskHead(t *testing.T, img string, n int) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "head")
	cmd := exec.Command("qemu-img", "dd", "-f", "qcow2", "-O", "raw", fmt.Sprintf("bs=%d", n), "count=1", "if="+img, "of="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-img dd: %v: %s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[:n])
}

// imageSnapshots lists the internal snapshots of an image.
func imageSnapshots(t *testing.T, img string) string {
	t.Helper()
	b, err := exec.Command("qemu-img", "snapshot", "-U", "-l", img).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img snapshot -l: %v: %s", err, b)
	}
	return string(b)
}

func listDir(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

// TestSnapshots drives snapshots as a user does, on the system instance
// (QEMU runs as qemu:qemu) with the booted test guest and a qcow2 virtio
// disk: a marker written from the guest, `mkdir snapshots/s1` of the
// running guest (memory and disk), a second marker over the first, `echo
// revert > snapshots/s1/ctl`, and the guest reads the first marker again.
// Then an external snapshot from XML (the guest writes to the new overlay,
// which QEMU's user owns while it runs, the base keeps its data), a
// disk-only snapshot of the shut-off domain and its revert, rmdir (EBUSY
// for an external snapshot with a child), refusals that change nothing,
// and the snapshots surviving a remount.
func TestSnapshots(t *testing.T) {
	t.Parallel()
	uid, gid := qemuIDs(t)
	m := harness.Start(t, harness.Options{System: true})
	img := image(t, m.Base, "disk.qcow2", "qcow2")
	m.Boot("s", harness.GuestXML(t, "s", guest.ActionNone, disk("file", "qcow2", img, "vda", "")))
	snaps := m.Path("s", "snapshots")
	sh := func(cmd, want string) {
		t.Helper()
		if err := m.Send(cmd+"\n", "s", "console"); err != nil {
			t.Fatal(err)
		}
		m.WaitConsole("s", want, boot)
	}
	// mark writes a 6-byte marker at the start of /dev/vda from the guest;
	// look has the guest read it back, past its page cache.
	mark := func(tag, marker string) {
		t.Helper()
		sh(fmt.Sprintf("echo %s | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null; sync; echo %s-$?-DONE", marker, tag), tag+"-0-DONE")
	}
	look := func(tag, want string) {
		t.Helper()
		sh(fmt.Sprintf("echo 3 > /proc/sys/vm/drop_caches; echo %s-$(dd if=/dev/vda bs=6 count=1 2>/dev/null)-END", tag), tag+"-"+want+"-END")
	}

	mark("W1", "MARK-A")
	if got := listDir(t, snaps); got != "create current" {
		t.Errorf("snapshots/ of a domain without snapshots: %q", got)
	}
	t0 := time.Now()
	if err := os.Mkdir(filepath.Join(snaps, "s1"), 0o755); err != nil {
		t.Fatalf("mkdir snapshots/s1: %v (error: %s)", err, m.ErrorOf("s"))
	}
	t.Logf("memory snapshot of the running guest took %v", time.Since(t0))
	x := m.Read("s", "snapshots", "s1", "snapshot.xml")
	for _, want := range []string{"<name>s1</name>", "<state>running</state>", "<memory snapshot='internal'/>",
		"<disk name='vda' snapshot='internal'/>", "<domain type='qemu'>", "<creationTime>"} {
		if !strings.Contains(x, want) {
			t.Errorf("snapshot.xml lacks %q:\n%s", want, x)
		}
	}
	if cur := m.Read("s", "snapshots", "current"); cur != "s1\n" {
		t.Errorf("current %q, want s1", cur)
	}
	if !strings.HasPrefix(m.State("s"), "running") {
		t.Errorf("state after the snapshot: %q", m.State("s"))
	}
	mark("W2", "MARK-B")
	look("R1", "MARK-B")
	t0 = time.Now()
	if err := m.Write("revert\n", "s", "snapshots", "s1", "ctl"); err != nil {
		t.Fatalf("revert: %v (error: %s)", err, m.ErrorOf("s"))
	}
	t.Logf("revert in place took %v", time.Since(t0))
	if st := m.State("s"); st != "running (from snapshot)" && !strings.HasPrefix(st, "running") {
		t.Errorf("state after revert %q", st)
	}
	look("R2", "MARK-A")

	// An external snapshot from XML: QEMU switches to the overlay.
	overlay := filepath.Join(m.Base, "disk.e1.qcow2")
	ext := fmt.Sprintf(`<domainsnapshot>
  <name>e1</name>
  <description>before the upgrade</description>
  <disks>
    <disk name='vda' snapshot='external'>
      <source file='%s'/>
    </disk>
  </disks>
</domainsnapshot>
`, overlay)
	if err := m.Write(ext, "s", "snapshots", "create"); err != nil {
		t.Fatalf("external snapshot: %v (error: %s)", err, m.ErrorOf("s"))
	}
	x = m.Read("s", "snapshots", "e1", "snapshot.xml")
	for _, want := range []string{"<state>disk-snapshot</state>", "<memory snapshot='no'/>", "<parent>\n    <name>s1</name>",
		"<description>before the upgrade</description>", "<disk name='vda' snapshot='external' type='file'>", "<source file='" + overlay + "'/>"} {
		if !strings.Contains(x, want) {
			t.Errorf("e1's snapshot.xml lacks %q:\n%s", want, x)
		}
	}
	if o := ownerOf(t, overlay); o.UID != uid || o.GID != gid {
		t.Errorf("overlay while the guest runs: %v, want QEMU's user %d:%d", o, uid, gid)
	}
	live := m.Read("s", "live.xml")
	if !strings.Contains(live, "<source file='"+overlay+"'/>") || !strings.Contains(live, "<backingStore type='file'>") {
		t.Errorf("live.xml does not show the overlay over the base:\n%s", live)
	}
	mark("W3", "MARK-C")
	look("R3", "MARK-C")
	m.MustCtl("s", "destroy")
	if got := diskHead(t, overlay, 6); got != "MARK-C" {
		t.Errorf("overlay holds %q, want MARK-C", got)
	}
	if got := diskHead(t, img, 6); got != "MARK-A" {
		t.Errorf("base image holds %q, want MARK-A (what it held at the external snapshot)", got)
	}
	if o := ownerOf(t, overlay); o.UID != 0 {
		t.Errorf("overlay after the guest stopped: %v, want root's again", o)
	}
	cfg := m.Read("s", "config.xml")
	if !strings.Contains(cfg, "<source file='"+overlay+"'/>") || !strings.Contains(cfg, "<source file='"+img+"'/>") {
		t.Errorf("config.xml after the external snapshot:\n%s", cfg)
	}

	// A disk-only snapshot of the shut-off domain, taken on the overlay.
	if err := os.Mkdir(filepath.Join(snaps, "off1"), 0o755); err != nil {
		t.Fatalf("mkdir snapshots/off1: %v (error: %s)", err, m.ErrorOf("s"))
	}
	x = m.Read("s", "snapshots", "off1", "snapshot.xml")
	if !strings.Contains(x, "<state>shutoff</state>") || !strings.Contains(x, "<memory snapshot='no'/>") {
		t.Errorf("off1's snapshot.xml:\n%s", x)
	}
	if o, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 512", overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, o)
	}
	if got := diskHead(t, overlay, 6); got != "ZZZZZZ" {
		t.Fatalf("overlay holds %q after the write", got)
	}
	if err := m.Write("revert\n", "s", "snapshots", "off1", "ctl"); err != nil {
		t.Fatalf("revert off1: %v (error: %s)", err, m.ErrorOf("s"))
	}
	if got := diskHead(t, overlay, 6); got != "MARK-C" {
		t.Errorf("overlay holds %q after reverting to off1, want MARK-C", got)
	}
	if st := m.State("s"); st != "shut off (from snapshot)" {
		t.Errorf("state after an offline revert %q", st)
	}
	// revert --running boots the guest on off1's disks: the overlay over
	// the base, both given to QEMU's user.
	if err := m.Write("revert --running\n", "s", "snapshots", "off1", "ctl"); err != nil {
		t.Fatalf("revert --running: %v (error: %s)", err, m.ErrorOf("s"))
	}
	m.WaitConsole("s", harness.Guest(t).ReadyLine, boot)
	if st := m.State("s"); !strings.HasPrefix(st, "running") {
		t.Errorf("state after revert --running %q", st)
	}
	look("R4", "MARK-C")
	if o := ownerOf(t, overlay); o.UID != uid || o.GID != gid {
		t.Errorf("overlay after a restart: %v, want QEMU's user %d:%d", o, uid, gid)
	}
	m.MustCtl("s", "destroy")

	// Refusals: nothing changes, the reason is in error.
	before := listDir(t, snaps)
	cfgBefore := m.Read("s", "config.xml")
	for _, tt := range []struct {
		what string
		do   func() error
		want syscall.Errno
		msg  string
	}{
		{"bad XML", func() error {
			return m.Write("<domainsnapshot><name>x</name><bogus/></domainsnapshot>", "s", "snapshots", "create")
		},
			syscall.EINVAL, "unknown element <bogus>"},
		{"broken XML", func() error {
			return m.Write("<domainsnapshot><name>x</nam></domainsnapshot>", "s", "snapshots", "create")
		},
			syscall.EINVAL, "snapshot XML"},
		{"memory of a shut-off domain", func() error {
			return m.Write("<domainsnapshot><name>x</name><memory snapshot='internal'/></domainsnapshot>", "s", "snapshots", "create")
		}, syscall.EINVAL, "shut off"},
		// The kernel answers this one from its cache: no message.
		{"existing name", func() error { return os.Mkdir(filepath.Join(snaps, "s1"), 0o755) }, syscall.EEXIST, ""},
		{"numeric name", func() error { return os.Mkdir(filepath.Join(snaps, "42"), 0o755) }, syscall.EINVAL, "is a number"},
		{"bad ctl", func() error { return m.Write("revert --sideways\n", "s", "snapshots", "s1", "ctl") }, syscall.EINVAL, "usage: revert"},
		{"external with a child", func() error { return os.Remove(filepath.Join(snaps, "e1")) }, syscall.EBUSY, "off1"},
		{"revert to external with a child", func() error { return m.Write("revert\n", "s", "snapshots", "e1", "ctl") }, syscall.EBUSY, "off1"},
		{"undefine with snapshots", func() error { return m.Remove("s") }, syscall.EBUSY, "snapshot"},
	} {
		err := tt.do()
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.what, err, tt.want)
		}
		if e := m.ErrorOf("s"); tt.msg != "" && !strings.Contains(e, tt.msg) {
			t.Errorf("%s: error %q, want it to mention %q", tt.what, e, tt.msg)
		}
	}
	if got := listDir(t, snaps); got != before {
		t.Errorf("snapshots after refusals: %q, want %q", got, before)
	}
	if got := m.Read("s", "config.xml"); got != cfgBefore {
		t.Error("a refusal changed config.xml")
	}

	// A raw writable disk cannot hold an internal snapshot.
	raw := image(t, m.Base, "raw.img", "raw")
	m.Define("r", harness.GuestXML(t, "r", guest.ActionNone, disk("file", "raw", raw, "vda", "")))
	if err := os.Mkdir(m.Path("r", "snapshots", "x"), 0o755); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("snapshot of a raw disk: %v, want EINVAL", err)
	}
	if e := m.ErrorOf("r"); !strings.Contains(e, "disk vda") || !strings.Contains(e, "raw") {
		t.Errorf("error for a raw disk %q, want it to name disk vda and raw", e)
	}

	// Everything survives a remount.
	xs1 := m.Read("s", "snapshots", "s1", "snapshot.xml")
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, snaps); got != "create current e1 off1 s1" {
		t.Errorf("snapshots after remount: %q", got)
	}
	if got := m.Read("s", "snapshots", "s1", "snapshot.xml"); got != xs1 {
		t.Errorf("s1 after remount:\n%s\nwant\n%s", got, xs1)
	}
	if cur := m.Read("s", "snapshots", "current"); cur != "off1\n" {
		t.Errorf("current after remount %q, want off1", cur)
	}

	// rmdir: off1 leaves the overlay's snapshot table; then reverting to
	// e1 drops what was written on its overlay since (MARK-C), and e1 may
	// go (its overlay stays the disk); s1 leaves the base image.
	if err := os.Remove(filepath.Join(snaps, "off1")); err != nil {
		t.Fatalf("rmdir snapshots/off1: %v (error: %s)", err, m.ErrorOf("s"))
	}
	if err := m.Write("revert\n", "s", "snapshots", "e1", "ctl"); err != nil {
		t.Fatalf("revert e1: %v (error: %s)", err, m.ErrorOf("s"))
	}
	if got := diskHead(t, overlay, 6); got != "MARK-A" {
		t.Errorf("overlay holds %q after reverting to e1, want the base's MARK-A", got)
	}
	for _, n := range []string{"e1", "s1"} {
		if err := os.Remove(filepath.Join(snaps, n)); err != nil {
			t.Fatalf("rmdir snapshots/%s: %v (error: %s)", n, err, m.ErrorOf("s"))
		}
	}
	if l := imageSnapshots(t, overlay); strings.Contains(l, "off1") {
		t.Errorf("off1 still in the overlay:\n%s", l)
	}
	if l := imageSnapshots(t, img); strings.Contains(l, "s1") {
		t.Errorf("s1 still in the base image:\n%s", l)
	}
	if got := listDir(t, snaps); got != "create current" {
		t.Errorf("snapshots after rmdir: %q", got)
	}
	if _, err := os.Stat(overlay); err != nil {
		t.Errorf("the overlay, the disk's image, is gone: %v", err)
	}
	if err := m.Remove("s"); err != nil {
		t.Errorf("undefine after the snapshots are gone: %v (error: %s)", err, m.ErrorOf("s"))
	}
}

// TestSnapshotAccess: on a system mount, users outside admin_group may
// list snapshots and read which is current, but not read their
// definitions, take, revert or delete them.
func TestSnapshotAccess(t *testing.T) {
	t.Parallel()
	needTestUser(t)
	m := harness.Start(t, harness.Options{System: true})
	m.Define("d", harness.GuestXML(t, "d", guest.ActionNone, ""))
	if err := os.Mkdir(m.Path("d", "snapshots", "s1"), 0o755); err != nil {
		t.Fatalf("root: mkdir snapshots/s1: %v (error: %s)", err, m.ErrorOf("d"))
	}
	for _, tt := range []struct {
		what string
		argv []string
		want string // "" for success
	}{
		{"list", []string{"ls", m.Path("d", "snapshots")}, ""},
		{"read current", []string{"cat", m.Path("d", "snapshots", "current")}, ""},
		{"read snapshot.xml", []string{"cat", m.Path("d", "snapshots", "s1", "snapshot.xml")}, denied},
		{"take", []string{"mkdir", m.Path("d", "snapshots", "s2")}, denied},
		{"take from XML", []string{"bash", "-c", `echo '<domainsnapshot/>' > "$1"`, "-", m.Path("d", "snapshots", "create")}, denied},
		{"revert", []string{"bash", "-c", `echo revert > "$1"`, "-", m.Path("d", "snapshots", "s1", "ctl")}, denied},
		{"delete", []string{"rmdir", m.Path("d", "snapshots", "s1")}, denied},
	} {
		out, err := asTestUser(false, nil, tt.argv...)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v: %s", tt.what, err, out)
		case tt.want != "" && (err == nil || !strings.Contains(out, tt.want)):
			t.Errorf("%s: got %v %q, want %q", tt.what, err, strings.TrimSpace(out), tt.want)
		}
	}
	if got := listDir(t, m.Path("d", "snapshots")); got != "create current s1" {
		t.Errorf("snapshots after the refusals: %q", got)
	}
}
