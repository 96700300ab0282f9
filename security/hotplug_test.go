package security

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/security/apparmor"
	"github.com/qemufs/qemufs/security/cgroup"
	"github.com/qemufs/qemufs/security/internal/sectest"
)

// TestHotplug adds a block device to a running guest and removes it:
// ownership, device ACL (checked from inside the cgroup) and the AppArmor
// .files follow.
func TestHotplug(t *testing.T) {
	dir := searchable(t)
	if cgroup.Detect() != cgroup.V1 {
		t.Skip("no cgroup v1 here")
	}
	disk := mkfile(t, dir, "boot.img", 0o600)
	loop := sectest.Loop(t, dir)
	before := snapshot(t, loop)
	profiles := t.TempDir()
	cfg := system()
	cfg.InstanceName = fmt.Sprintf("test-%d", os.Getpid())
	s, err := New(cfg, Host{Cgroup: cgroup.V1, AppArmor: true, AppArmorConfined: true, AppArmorLoader: &apparmor.Memory{}, AppArmorDir: profiles})
	if err != nil {
		t.Fatal(err)
	}
	uuid := "0f0f0f0f-1111-2222-3333-444444444444"
	spec := &procmgr.Spec{}
	rec, err := s.Prepare(context.Background(), &Guest{Name: "hot", UUID: uuid, Disks: []Disk{{Path: disk}}}, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Restore(context.Background(), rec)
	filesPath := filepath.Join(profiles, "libvirt-"+uuid+".files")
	readFiles := func() string { b, _ := os.ReadFile(filesPath); return string(b) }
	canRead := func() bool { _, err := sectest.RunIn(spec.CgroupProcs, "head", "-c1", loop); return err == nil }
	if canRead() {
		t.Fatal("loop device readable before it was plugged")
	}

	if err := s.AddDisk(context.Background(), rec, Disk{Path: loop}); err != nil {
		t.Fatal(err)
	}
	if o := owner(t, loop); o.UID != 65534 {
		t.Errorf("hot-plugged device owner %+v", o)
	}
	if !canRead() {
		t.Error("hot-plugged device denied by the cgroup")
	}
	if !strings.Contains(readFiles(), `"`+loop+`" rwk,`) {
		t.Errorf(".files lacks the new disk:\n%s", readFiles())
	}
	if !strings.Contains(readFiles(), `"`+disk+`" rwk,`) {
		t.Errorf(".files lost the boot disk:\n%s", readFiles())
	}
	if err := s.AddDisk(context.Background(), rec, Disk{Path: loop}); err == nil {
		t.Error("the same disk plugged twice")
	}
	if err := s.AddDisk(context.Background(), rec, Disk{Path: filepath.Join(dir, "missing")}); err == nil {
		t.Error("missing disk plugged")
	}

	if err := s.RemoveDisk(context.Background(), rec, loop); err != nil {
		t.Fatal(err)
	}
	unchanged(t, before)
	if canRead() {
		t.Error("unplugged device still allowed")
	}
	if strings.Contains(readFiles(), loop) {
		t.Errorf(".files still lists the unplugged disk:\n%s", readFiles())
	}
	if o := owner(t, disk); o.UID != 65534 {
		t.Error("unplugging one disk gave back another")
	}
}
