package cgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/security/internal/sectest"
)

// partition returns a partition name unique to the test, and removes
// whatever is left under it (on v1 and the unified tree) when it ends.
func partition(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("qemufs-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_"))
	t.Cleanup(func() {
		for _, root := range []string{"/sys/fs/cgroup/*", "/sys/fs/cgroup/unified"} {
			parts, _ := filepath.Glob(filepath.Join(root, "*", name))
			top, _ := filepath.Glob(filepath.Join(root, name))
			for _, p := range append(parts, top...) {
				kids, _ := filepath.Glob(filepath.Join(p, "*.qemu"))
				for _, k := range kids {
					if err := os.Remove(k); err != nil {
						t.Errorf("cleanup: %v", err)
					}
				}
				if err := os.Remove(p); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
		}
	})
	return name
}

func requireV1(t *testing.T) {
	t.Helper()
	sectest.RequireRoot(t)
	if Detect() != V1 {
		t.Skip("host has no cgroup v1 controllers")
	}
	if _, err := os.Stat("/sys/fs/cgroup/devices/devices.allow"); err != nil {
		t.Skip("no v1 devices controller")
	}
}

func mustACL(t *testing.T, paths []string, extra ...Device) []Device {
	t.Helper()
	acl, err := ResolveACL(paths)
	if err != nil {
		t.Fatal(err)
	}
	return append(acl, extra...)
}

func TestDeviceACLv1(t *testing.T) {
	requireV1(t)
	tmp := t.TempDir()
	disk := sectest.Loop(t, tmp)
	other := sectest.Loop(t, tmp)
	m, err := New(Options{Version: V1, Partition: partition(t)})
	if err != nil {
		t.Fatal(err)
	}
	d, err := ResolveDevice(disk, "rwm")
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.Create("guest", mustACL(t, nil, d), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := Remove(g); err != nil {
			t.Error(err)
		}
	}()
	list, err := os.ReadFile(filepath.Join(g.Dirs["devices"], "devices.list"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(list), "a *:* rwm") {
		t.Fatalf("devices.list still allows everything:\n%s", list)
	}
	for _, want := range []string{"c 1:3 rwm", fmt.Sprintf("b %d:%d rwm", d.Major, d.Minor), "c 136:* rwm"} {
		if !strings.Contains(string(list), want) {
			t.Errorf("devices.list lacks %q:\n%s", want, list)
		}
	}
	checkAccess(t, g.Procs(), []string{"/dev/null", "/dev/zero", "/dev/urandom", disk}, []string{other})
}

// checkAccess reads one byte of each device from inside the group.
func checkAccess(t *testing.T, procs []string, allowed, denied []string) {
	t.Helper()
	for _, dev := range allowed {
		if out, err := sectest.RunIn(procs, "head", "-c1", dev); err != nil {
			t.Errorf("%s should be allowed: %v: %s", dev, err, out)
		}
	}
	for _, dev := range denied {
		out, err := sectest.RunIn(procs, "head", "-c1", dev)
		if err == nil || !strings.Contains(out, "Operation not permitted") {
			t.Errorf("%s should be denied with EPERM: err=%v output=%q", dev, err, out)
		}
	}
}

func TestLimitsV1(t *testing.T) {
	requireV1(t)
	disk := sectest.Loop(t, t.TempDir())
	m, err := New(Options{Version: V1, Partition: partition(t)})
	if err != nil {
		t.Fatal(err)
	}
	l := Limits{
		CPUShares: 512, CPUPeriod: 100000, CPUQuota: 50000,
		MemoryHardLimit: 256 << 20, MemorySoftLimit: 128 << 20, MemorySwapHardLimit: 512 << 20,
		BlkioDevices: []BlkioDevice{{Path: disk, ReadBytesSec: 1 << 20, WriteIopsSec: 100}},
	}
	g, err := m.Create("tuned", nil, l)
	if err != nil {
		t.Fatal(err)
	}
	dev, _ := ResolveDevice(disk, "")
	majmin := fmt.Sprintf("%d:%d", dev.Major, dev.Minor)
	for _, c := range []struct{ ctrl, file, want string }{
		{"cpu", "cpu.shares", "512"},
		{"cpu", "cpu.cfs_period_us", "100000"},
		{"cpu", "cpu.cfs_quota_us", "50000"},
		{"memory", "memory.limit_in_bytes", fmt.Sprint(256 << 20)},
		{"memory", "memory.soft_limit_in_bytes", fmt.Sprint(128 << 20)},
		{"memory", "memory.memsw.limit_in_bytes", fmt.Sprint(512 << 20)},
		{"blkio", "blkio.throttle.read_bps_device", majmin + " 1048576"},
		{"blkio", "blkio.throttle.write_iops_device", majmin + " 100"},
	} {
		b, err := os.ReadFile(filepath.Join(g.Dirs[c.ctrl], c.file))
		if err != nil {
			t.Errorf("%s: %v", c.file, err)
			continue
		}
		if got := strings.TrimSpace(string(b)); got != c.want {
			t.Errorf("%s = %q, want %q", c.file, got, c.want)
		}
	}
	// Devices were not asked for: the group must allow everything.
	if list, _ := os.ReadFile(filepath.Join(g.Dirs["devices"], "devices.list")); !strings.Contains(string(list), "a *:* rwm") {
		t.Errorf("devices.list = %q, want the inherited allow-all", list)
	}
	if err := Remove(g); err != nil {
		t.Fatal(err)
	}
	for c, d := range g.Dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s cgroup %s still there after Remove", c, d)
		}
		if _, err := os.Stat(filepath.Dir(d)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("partition %s still there after its last guest", filepath.Dir(d))
		}
	}
}

func TestCreateErrorsLeaveNothing(t *testing.T) {
	requireV1(t)
	part := partition(t)
	m, err := New(Options{Version: V1, Partition: part})
	if err != nil {
		t.Fatal(err)
	}
	notDev := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDev, nil, 0o600)
	weightErr := "no proportional weight"
	if _, err := os.Stat("/sys/fs/cgroup/blkio/blkio.weight"); err == nil {
		weightErr = "" // this host supports it: no error expected from that case
	}
	cases := []struct {
		name string
		l    Limits
		want string
	}{
		{"swap below hard", Limits{MemoryHardLimit: 2 << 20, MemorySwapHardLimit: 1 << 20}, "below hard_limit"},
		{"period range", Limits{CPUPeriod: 10}, "period 10"},
		{"blkio not a device", Limits{BlkioDevices: []BlkioDevice{{Path: notDev, ReadBytesSec: 1}}}, "not a block or character device"},
		{"blkio weight", Limits{BlkioWeight: 500}, weightErr},
	}
	for _, c := range cases {
		if c.want == "" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			_, err := m.Create("bad", nil, c.l)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
			if dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + part); len(dirs) > 0 {
				// the partition may exist from nothing but must hold no guest
				for _, d := range dirs {
					if kids, _ := filepath.Glob(filepath.Join(d, "*.qemu")); len(kids) > 0 {
						t.Errorf("left behind: %v", kids)
					}
				}
			}
		})
	}
}

func TestStaleGroupWithProcessIsRefused(t *testing.T) {
	requireV1(t)
	m, err := New(Options{Version: V1, Partition: partition(t), Controllers: []string{"cpu"}})
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.Create("busy", nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer Remove(g)
	// An empty leftover is recreated silently.
	if _, err := m.Create("busy", nil, Limits{CPUShares: 300}); err != nil {
		t.Fatalf("recreate over an empty leftover: %v", err)
	}
	// A populated one is refused.
	sleeper := exec.Command("sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		sleeper.Process.Kill()
		sleeper.Wait()
	}()
	if err := os.WriteFile(g.Procs()[0], []byte(fmt.Sprint(sleeper.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	_, err = m.Create("busy", nil, Limits{})
	if err == nil || !strings.Contains(err.Error(), "already exists with processes") || !strings.Contains(err.Error(), fmt.Sprint(sleeper.Process.Pid)) {
		t.Fatalf("err = %v, want a refusal naming pid %d", err, sleeper.Process.Pid)
	}
	if err := Remove(g); err == nil || !strings.Contains(err.Error(), "still has processes") {
		t.Errorf("Remove of a populated group: err = %v, want it to name the processes", err)
	}
	sleeper.Process.Kill()
	sleeper.Wait()
	if err := Remove(g); err != nil {
		t.Errorf("Remove after the process exited: %v", err)
	}
}

func TestNew(t *testing.T) {
	cases := []struct {
		opts Options
		want string
	}{
		{Options{Version: V1, Partition: "p", Controllers: []string{"cpu", "bogus"}}, `"bogus" is not a cgroup controller`},
		{Options{Version: V1, Partition: "a/b"}, "plain directory name"},
		{Options{Version: V1, Partition: ""}, "plain directory name"},
		{Options{Version: V1, Partition: "p", Controllers: []string{"name=systemd"}}, ""},
	}
	for _, c := range cases {
		_, err := New(c.opts)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("New(%+v) = %v, want %q", c.opts, err, c.want)
		}
	}
	m, err := New(Options{Version: V1, Mountpoint: t.TempDir(), Partition: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Controllers(); len(got) != 0 {
		t.Errorf("controllers on an empty mount = %v, want none", got)
	}
}

func TestResolveACL(t *testing.T) {
	tmp := t.TempDir()
	file := filepath.Join(tmp, "regular")
	os.WriteFile(file, nil, 0o600)
	acl, err := ResolveACL([]string{"/dev/null", filepath.Join(tmp, "missing")})
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{{Path: "/dev/null", Type: "c", Major: 1, Minor: 3, Access: "rwm"}, {Type: "c", Major: 136, Minor: -1, Access: "rwm"}}
	if !slices.Equal(acl, want) {
		t.Errorf("ResolveACL = %+v, want %+v", acl, want)
	}
	var nd *NotDeviceError
	if _, err := ResolveACL([]string{"/dev/null", file}); !errors.As(err, &nd) || nd.Path != file {
		t.Errorf("regular file in ACL: err = %v, want NotDeviceError", err)
	}
	if _, err := ResolveACL([]string{"dev/null"}); err == nil {
		t.Error("relative ACL entry accepted")
	}
	def, err := ResolveACL(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range def[:len(def)-1] {
		if !slices.Contains(DefaultDeviceACL, d.Path) {
			t.Errorf("default ACL has %s", d.Path)
		}
	}
	if got := (Device{Type: "b", Major: 7, Minor: 0, Access: "r"}).String(); got != "b 7:0 r" {
		t.Errorf("String = %q", got)
	}
}

func TestV2Resources(t *testing.T) {
	l := Limits{CPUShares: 1024, CPUPeriod: 200000, CPUQuota: 50000, MemoryHardLimit: 1 << 30, MemorySoftLimit: 512 << 20, MemorySwapHardLimit: 3 << 29, BlkioWeight: 300}
	r, err := l.v2Resources()
	if err != nil {
		t.Fatal(err)
	}
	if *r.CPU.Weight != 100 {
		t.Errorf("cpu.weight = %d, want 100 (1024 shares)", *r.CPU.Weight)
	}
	if r.CPU.Max != "50000 200000" {
		t.Errorf("cpu.max = %q", r.CPU.Max)
	}
	if *r.Memory.Max != 1<<30 || *r.Memory.High != 512<<20 || *r.Memory.Swap != 1<<29 {
		t.Errorf("memory = max %d high %d swap %d", *r.Memory.Max, *r.Memory.High, *r.Memory.Swap)
	}
	if r.IO.BFQ.Weight != 300 {
		t.Errorf("io weight = %d", r.IO.BFQ.Weight)
	}
	if _, err := (Limits{MemorySwapHardLimit: 1 << 20}).v2Resources(); err == nil {
		t.Error("swap_hard_limit without hard_limit accepted on v2")
	}
	if r, _ := (Limits{CPUQuota: -1}).v2Resources(); r.CPU.Max != "max 100000" {
		t.Errorf("unlimited quota: cpu.max = %q", r.CPU.Max)
	}
}
