package security

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/qemufs/qemufs/procmgr"
)

// TestHotplugSELinux: a disk hot-plugged with its backing file gets the
// guest's image label (the backing file the read-only one), as at start,
// and both get their labels back at unplug; the Record keeps the changes,
// so a Restore after a restart gives them back too.
func TestHotplugSELinux(t *testing.T) {
	dir := searchable(t)
	boot := mkfile(t, dir, "boot.img", 0o644)
	top := mkfile(t, dir, "top.qcow2", 0o644)
	base := mkfile(t, dir, "base.raw", 0o644)
	later := mkfile(t, dir, "later.img", 0o644)
	s, mem := fakeSELinux(t, system())
	rec, err := s.Prepare(context.Background(), &Guest{Name: "hs", VirtType: "kvm", Disks: []Disk{{Path: boot}}}, &procmgr.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	label := func(p string) string { v, _ := mem.FileLabel(p); return v }
	for _, d := range []Disk{{Path: top}, {Path: base, ReadOnly: true}, {Path: later}} {
		if err := s.AddDisk(context.Background(), rec, d); err != nil {
			t.Fatal(err)
		}
	}
	for p, want := range map[string]string{
		top:   rec.SELinux.Image,
		base:  "system_u:object_r:svirt_content_t:s0",
		later: rec.SELinux.Image,
	} {
		if got := label(p); got != want {
			t.Errorf("%s labeled %q after AddDisk, want %q", filepath.Base(p), got, want)
		}
	}
	for _, p := range []string{top, base} {
		if err := s.RemoveDisk(context.Background(), rec, p); err != nil {
			t.Fatal(err)
		}
		if got := label(p); got != mem.Default {
			t.Errorf("%s labeled %q after RemoveDisk, want %q back", filepath.Base(p), got, mem.Default)
		}
	}
	if got := label(later); got != rec.SELinux.Image {
		t.Errorf("a disk still plugged lost its label: %q", got)
	}
	// Stop: the boot disk and the one still plugged go back.
	if err := s.Restore(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{boot, later} {
		if got := label(p); got != mem.Default {
			t.Errorf("%s labeled %q after Restore, want %q", filepath.Base(p), got, mem.Default)
		}
	}
}
