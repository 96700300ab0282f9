package cgroup

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/qemufs/qemufs/security/internal/sectest"
)

// unifiedMount returns a writable cgroup2 mount: the whole hierarchy on a
// unified host, /sys/fs/cgroup/unified on a hybrid one.
func unifiedMount(t *testing.T) string {
	t.Helper()
	sectest.RequireRoot(t)
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return p
		}
	}
	t.Skip("no cgroup2 mount")
	return ""
}

// TestDeviceFilterV2 attaches the eBPF device ACL to a real v2 group and
// checks it from a process inside: allowed and denied devices, hotplug
// widening and narrowing, and that updates replace the program instead of
// piling programs up.
func TestDeviceFilterV2(t *testing.T) {
	mount := unifiedMount(t)
	tmp := t.TempDir()
	disk := sectest.Loop(t, tmp)
	other := sectest.Loop(t, tmp)
	m, err := New(Options{Version: V2, Mountpoint: mount, Partition: partition(t), Controllers: []string{"devices"}})
	if err != nil {
		t.Fatal(err)
	}
	base := mustACL(t, nil)
	g, err := m.Create("guest", base, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := Remove(g); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(g.Dirs[""]); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there", g.Dirs[""])
		}
	}()
	procs := g.Procs()
	if len(procs) != 1 {
		t.Fatalf("procs = %v, want one unified file", procs)
	}
	checkAccess(t, procs, []string{"/dev/null", "/dev/zero"}, []string{disk, other})

	d, err := ResolveDevice(disk, "rm")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ { // repeated updates must not stack programs
		if err := m.SetDevices(g, append(base, d)); err != nil {
			t.Fatal(err)
		}
	}
	checkAccess(t, procs, []string{"/dev/null", disk}, []string{other})
	if out, err := sectest.RunIn(procs, "dd", "if=/dev/zero", "of="+disk, "bs=512", "count=1"); err == nil {
		t.Errorf("write to a read-only ACL entry succeeded: %s", out)
	}
	ids, err := DeviceFilters(g.Dirs[""])
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 1 {
		t.Errorf("%d device programs attached after 4 updates, want 1", len(ids))
	}
	if err := m.SetDevices(g, base); err != nil {
		t.Fatal(err)
	}
	checkAccess(t, procs, []string{"/dev/null"}, []string{disk})
}
