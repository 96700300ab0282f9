package security

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/security/apparmor"
	"github.com/qemufs/qemufs/security/cgroup"
	"github.com/qemufs/qemufs/security/dac"
	"github.com/qemufs/qemufs/security/internal/sectest"
	"github.com/qemufs/qemufs/security/selinux"
)

func searchable(t *testing.T) string {
	t.Helper()
	sectest.RequireRoot(t)
	return sectest.SearchableTempDir(t)
}

func owner(t *testing.T, p string) dac.Owner {
	t.Helper()
	o, _, err := dac.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// mkfile makes a root-owned file with the given mode.
func mkfile(t *testing.T, dir, name string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("data"), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode) // past the umask
	os.Chown(p, 0, 0)
	return p
}

// snapshot records the owner of each path, to compare after Restore.
func snapshot(t *testing.T, paths ...string) map[string]dac.Owner {
	m := map[string]dac.Owner{}
	for _, p := range paths {
		m[p] = owner(t, p)
	}
	return m
}

func unchanged(t *testing.T, before map[string]dac.Owner) {
	t.Helper()
	for p, o := range before {
		if got := owner(t, p); got != o {
			t.Errorf("%s: owner %+v, want it back to %+v", p, got, o)
		}
	}
}

func TestPrepareDAC(t *testing.T) {
	dir := searchable(t)
	disk := mkfile(t, dir, "disk.img", 0o600)
	isoPrivate := mkfile(t, dir, "private.iso", 0o600)
	isoPublic := mkfile(t, dir, "public.iso", 0o644)
	shared := mkfile(t, dir, "shared.img", 0o640)
	kernel := mkfile(t, dir, "vmlinuz", 0o600)
	nvram := mkfile(t, dir, "nvram.fd", 0o600)
	link := filepath.Join(dir, "link.img")
	os.Symlink(disk, link)
	gdir := filepath.Join(dir, "guest.d")
	os.Mkdir(gdir, 0o700)
	before := snapshot(t, disk, isoPrivate, isoPublic, shared, kernel, nvram, gdir)

	s, err := New(system(), Host{})
	if err != nil {
		t.Fatal(err)
	}
	g := &Guest{
		Name: "dac", UUID: "u1", VirtType: "qemu",
		Disks: []Disk{
			{Path: link},
			{Path: isoPrivate, ReadOnly: true},
			{Path: isoPublic, ReadOnly: true},
			{Path: shared, Shareable: true},
		},
		Reads: []string{kernel}, Writes: []string{nvram}, Dirs: []string{gdir},
		Sockets: []string{filepath.Join(gdir, "qmp.sock")},
	}
	spec := &procmgr.Spec{Path: "/usr/bin/qemu-system-x86_64", Args: []string{"-S"}}
	rec, err := s.Prepare(context.Background(), g, spec)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]dac.Owner{
		disk:       {UID: 65534, GID: 65534, Mode: 0o600}, // exclusive: handed over
		isoPrivate: {UID: 0, GID: 65534, Mode: 0o640},     // read-only: group read added, owner kept
		isoPublic:  {UID: 0, GID: 0, Mode: 0o644},         // already readable: untouched
		shared:     {UID: 0, GID: 65534, Mode: 0o660},     // shareable: group read-write
		kernel:     {UID: 0, GID: 65534, Mode: 0o640},
		nvram:      {UID: 65534, GID: 65534, Mode: 0o600},
		gdir:       {UID: 65534, GID: 65534, Mode: 0o700},
	}
	for p, o := range want {
		if got := owner(t, p); got != o {
			t.Errorf("%s during run: %+v, want %+v", filepath.Base(p), got, o)
		}
	}
	if owner(t, link) != want[disk] {
		t.Error("symlinked disk: target not chowned")
	}
	if c := spec.Credential; c == nil || c.UID != 65534 || c.GID != 65534 {
		t.Errorf("credential = %+v", c)
	}
	if !slices.Equal(spec.Args, append([]string{"-S"}, SeccompArgs...)) {
		t.Errorf("args = %v", spec.Args)
	}
	if spec.MountNS == nil || !slices.Contains(spec.MountNS.Devices, "/dev/null") || slices.Contains(spec.MountNS.Devices, "/dev/kvm") != fileExists("/dev/kvm") {
		t.Errorf("mount namespace = %+v", spec.MountNS)
	}
	if spec.Label != nil || spec.CgroupProcs != nil {
		t.Errorf("label %+v / cgroup %v on a host without them", spec.Label, spec.CgroupProcs)
	}
	labels := rec.SecLabels()
	if len(labels) != 1 || labels[0] != (SecLabel{Model: "dac", Type: "dynamic", Relabel: true, Label: "+65534:+65534", ImageLabel: "+65534:+65534"}) {
		t.Errorf("seclabels = %+v", labels)
	}

	// The record survives JSON, and a restarted daemon restores from it.
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	var loaded Record
	if err := json.Unmarshal(b, &loaded); err != nil {
		t.Fatal(err)
	}
	s2, err := New(system(), Host{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Reattach(&loaded); err != nil {
		t.Fatal(err)
	}
	if err := s2.Restore(context.Background(), &loaded); err != nil {
		t.Fatal(err)
	}
	unchanged(t, before)
	// Restoring twice is harmless.
	if err := s2.Restore(context.Background(), &loaded); err != nil {
		t.Error(err)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestSharedFilesRestoredByLastGuest: two guests use the same read-only
// image; the first to stop must not take it away from the other.
func TestSharedFilesRestoredByLastGuest(t *testing.T) {
	dir := searchable(t)
	iso := mkfile(t, dir, "boot.iso", 0o600)
	before := snapshot(t, iso)
	s, err := New(system(), Host{})
	if err != nil {
		t.Fatal(err)
	}
	var recs []*Record
	for i := 0; i < 2; i++ {
		r, err := s.Prepare(context.Background(), &Guest{Name: fmt.Sprint("g", i), Disks: []Disk{{Path: iso, ReadOnly: true}}}, &procmgr.Spec{})
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	if err := s.Restore(context.Background(), recs[0]); err != nil {
		t.Fatal(err)
	}
	if got := owner(t, iso); got.GID != 65534 {
		t.Errorf("after the first guest stopped: %+v, want still readable by the second", got)
	}
	if err := s.Restore(context.Background(), recs[1]); err != nil {
		t.Fatal(err)
	}
	unchanged(t, before)
}

func TestPrepareErrorsLeaveNothing(t *testing.T) {
	dir := searchable(t)
	disk := mkfile(t, dir, "disk.img", 0o600)
	closed := filepath.Join(dir, "closed")
	os.Mkdir(closed, 0o700)
	hidden := mkfile(t, closed, "hidden.img", 0o600)
	before := snapshot(t, disk, hidden)
	cgroups := Host{Cgroup: cgroup.Detect()}
	cases := []struct {
		name string
		host Host
		cfg  func(*Config)
		g    Guest
		want string
	}{
		{"parent without search bit", Host{}, nil, Guest{Disks: []Disk{{Path: disk}, {Path: hidden}}}, "run 'chmod o+x " + closed + "'"},
		{"missing disk", Host{}, nil, Guest{Disks: []Disk{{Path: disk}, {Path: filepath.Join(dir, "nope.img")}}}, "nope.img is not accessible: no such file or directory"},
		{"relative disk", Host{}, nil, Guest{Disks: []Disk{{Path: "disk.img"}}}, "not an absolute path"},
		{"static label, inactive driver", Host{}, nil, Guest{Disks: []Disk{{Path: disk}}, SecLabels: []SecLabelRequest{{Model: "selinux", Type: "static", Label: "system_u:system_r:svirt_t:s0:c1,c2"}}}, "selinux security driver is not active"},
		{"static label, no driver at all", Host{}, nil, Guest{Disks: []Disk{{Path: disk}}, SecLabels: []SecLabelRequest{{Type: "static", Label: "x"}}}, "none is active"},
		{"tune without cgroups", Host{}, nil, Guest{Disks: []Disk{{Path: disk}}, Tune: cgroup.Limits{CPUShares: 100}}, "need cgroups"},
		{"not usable, no dynamic ownership", Host{}, func(c *Config) { c.DynamicOwnership = false }, Guest{Disks: []Disk{{Path: disk}}}, "cannot use it and its ownership is not managed"},
		{"unknown DAC user", Host{}, nil, Guest{Disks: []Disk{{Path: disk}}, SecLabels: []SecLabelRequest{{Model: "dac", Type: "static", Label: "no-such-user-qemufs:root"}}}, "no-such-user-qemufs"},
		// Fails in the cgroup step, after the disk was chowned: the chown
		// must be undone.
		{"cgroup refuses limits", cgroups, nil, Guest{Disks: []Disk{{Path: disk}}, Tune: cgroup.Limits{CPUPeriod: 5}}, "cputune period 5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := system()
			cfg.InstanceName = fmt.Sprintf("test-%d", os.Getpid())
			if c.cfg != nil {
				c.cfg(&cfg)
			}
			s, err := New(cfg, c.host)
			if err != nil {
				t.Fatal(err)
			}
			c.g.Name = "bad"
			spec := &procmgr.Spec{}
			rec, err := s.Prepare(context.Background(), &c.g, spec)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			if rec != nil || spec.Credential != nil || spec.CgroupProcs != nil {
				t.Errorf("a failed Prepare returned %+v and filled %+v", rec, spec)
			}
			unchanged(t, before)
			if left, _ := filepath.Glob("/sys/fs/cgroup/*/qemufs-" + cfg.InstanceName + "/*.qemu"); len(left) > 0 {
				t.Errorf("cgroups left: %v", left)
			}
			if len(s.holds) != 0 {
				t.Errorf("holds left: %v", s.holds)
			}
		})
	}
}

// TestOwnDirsWithoutDynamicOwnership: the guest's own directories are
// QEMU's even with dynamic_ownership = 0 or relabel='no' (else no guest
// could start), and are given back at Restore; its disks are left alone.
func TestOwnDirsWithoutDynamicOwnership(t *testing.T) {
	dir := searchable(t)
	disk := mkfile(t, dir, "disk.img", 0o666)
	gdir := filepath.Join(dir, "g.d")
	if err := os.Mkdir(gdir, 0o700); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, disk, gdir)
	no := false
	for _, c := range []struct {
		name string
		cfg  func(*Config)
		lbl  []SecLabelRequest
	}{
		{"dynamic_ownership off", func(c *Config) { c.DynamicOwnership = false }, nil},
		{"relabel no", func(*Config) {}, []SecLabelRequest{{Model: "dac", Relabel: &no}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := system()
			c.cfg(&cfg)
			s, err := New(cfg, Host{})
			if err != nil {
				t.Fatal(err)
			}
			g := &Guest{Name: "own", Disks: []Disk{{Path: disk}}, Dirs: []string{gdir}, SecLabels: c.lbl,
				Sockets: []string{filepath.Join(gdir, "vnc.sock")}}
			rec, err := s.Prepare(context.Background(), g, &procmgr.Spec{})
			if err != nil {
				t.Fatal(err)
			}
			if o := owner(t, gdir); o.UID != 65534 {
				t.Errorf("guest directory owned by %+v, want nobody", o)
			}
			if o := owner(t, disk); o != before[disk] {
				t.Errorf("disk %+v, want untouched", o)
			}
			if err := s.Restore(context.Background(), rec); err != nil {
				t.Fatal(err)
			}
			unchanged(t, before)
		})
	}
}

// fakeSELinux is a stack on a host whose SELinux is an in-memory labeler.
func fakeSELinux(t *testing.T, cfg Config) (*Stack, *selinux.Memory) {
	t.Helper()
	mem := &selinux.Memory{Default: "unconfined_u:object_r:user_tmp_t:s0"}
	ctx := selinux.DefaultContexts()
	s, err := New(cfg, Host{SELinux: true, SELinuxLabeler: mem, SELinuxContexts: &ctx})
	if err != nil {
		t.Fatal(err)
	}
	return s, mem
}

func TestPrepareSELinux(t *testing.T) {
	dir := searchable(t)
	disk := mkfile(t, dir, "disk.img", 0o644)
	iso := mkfile(t, dir, "boot.iso", 0o644)
	shared := mkfile(t, dir, "shared.img", 0o666)
	kept := mkfile(t, dir, "kept.img", 0o666)
	kernel := mkfile(t, dir, "vmlinuz", 0o644)
	s, mem := fakeSELinux(t, system())
	g := &Guest{Name: "se", VirtType: "kvm",
		Disks: []Disk{{Path: disk}, {Path: iso, ReadOnly: true}, {Path: shared, Shareable: true}, {Path: kept, NoRelabel: []string{"selinux"}}},
		Reads: []string{kernel}}
	spec := &procmgr.Spec{}
	rec, err := s.Prepare(context.Background(), g, spec)
	if err != nil {
		t.Fatal(err)
	}
	l := rec.SELinux
	if l == nil || l.Type != "dynamic" || !strings.HasPrefix(l.Process, "system_u:system_r:svirt_t:s0:c") {
		t.Fatalf("label = %+v", l)
	}
	if spec.Label == nil || *spec.Label != (procmgr.ExecLabel{Model: "selinux", Value: l.Process}) {
		t.Errorf("exec label = %+v", spec.Label)
	}
	label := func(p string) string { v, _ := mem.FileLabel(p); return v }
	for p, want := range map[string]string{
		disk:   l.Image,
		iso:    "system_u:object_r:svirt_content_t:s0",
		shared: "system_u:object_r:svirt_image_t:s0",
		kernel: "system_u:object_r:svirt_content_t:s0",
		kept:   mem.Default,
	} {
		if got := label(p); got != want {
			t.Errorf("%s labeled %q, want %q", filepath.Base(p), got, want)
		}
	}
	sl := rec.SecLabels()
	if len(sl) != 2 || sl[0].Model != "selinux" || sl[0].Label != l.Process || sl[0].ImageLabel != l.Image || !sl[0].Relabel || sl[1].Model != "dac" {
		t.Errorf("seclabels = %+v", sl)
	}

	// A second guest may not take the first one's exclusive disk.
	if _, err := s.Prepare(context.Background(), &Guest{Name: "thief", Disks: []Disk{{Path: disk}}}, &procmgr.Spec{}); err == nil || !strings.Contains(err.Error(), "for another running guest") {
		t.Errorf("second guest on an exclusive disk: err = %v", err)
	}
	if err := s.Restore(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{disk, iso, shared, kernel, kept} {
		if got := label(p); got != mem.Default {
			t.Errorf("%s after Restore: %q, want the original %q", filepath.Base(p), got, mem.Default)
		}
	}
	if s.sel.MCS.InUse() != 0 {
		t.Errorf("%d MCS pairs still held", s.sel.MCS.InUse())
	}
}

func TestSELinuxStaticAndRestart(t *testing.T) {
	dir := searchable(t)
	disk := mkfile(t, dir, "disk.img", 0o666)
	s, mem := fakeSELinux(t, system())
	static := "system_u:system_r:svirt_t:s0:c100,c200"
	rec, err := s.Prepare(context.Background(), &Guest{Name: "static", Disks: []Disk{{Path: disk}},
		SecLabels: []SecLabelRequest{{Type: "static", Label: static}}}, &procmgr.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	if rec.SELinux.Process != static || rec.SELinux.Relabel {
		t.Errorf("static label = %+v", rec.SELinux)
	}
	if got, _ := mem.FileLabel(disk); got != mem.Default {
		t.Errorf("static relabel=no guest relabeled its disk to %s", got)
	}
	// Many dynamic guests; none gets the static pair or another's pair.
	seen := map[string]bool{"c100,c200": true}
	var recs []*Record
	for i := 0; i < 200; i++ {
		r, err := s.Prepare(context.Background(), &Guest{Name: fmt.Sprint("d", i)}, &procmgr.Spec{})
		if err != nil {
			t.Fatal(err)
		}
		if seen[r.SELinux.MCS] {
			t.Fatalf("guest %d got %s, already in use", i, r.SELinux.MCS)
		}
		seen[r.SELinux.MCS] = true
		recs = append(recs, r)
	}
	// Restart: a new stack learns the running guests from their records.
	s2, _ := fakeSELinux(t, system())
	for _, r := range append(recs, rec) {
		b, _ := json.Marshal(r)
		var back Record
		json.Unmarshal(b, &back)
		if err := s2.Reattach(&back); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 200; i++ {
		r, err := s2.Prepare(context.Background(), &Guest{Name: fmt.Sprint("n", i)}, &procmgr.Spec{})
		if err != nil {
			t.Fatal(err)
		}
		if seen[r.SELinux.MCS] {
			t.Fatalf("after restart a new guest got %s, held by a running guest", r.SELinux.MCS)
		}
		s2.Restore(context.Background(), r)
	}
	// Static relabel=yes: the image label follows the static categories.
	yes := true
	r, err := s2.Prepare(context.Background(), &Guest{Name: "static2", Disks: []Disk{{Path: mkfile(t, dir, "d2.img", 0o666)}},
		SecLabels: []SecLabelRequest{{Model: "selinux", Type: "static", Relabel: &yes, Label: "system_u:system_r:svirt_t:s0:c5,c6"}}}, &procmgr.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	if r.SELinux.Image != "system_u:object_r:svirt_image_t:s0:c5,c6" {
		t.Errorf("static relabel image = %s", r.SELinux.Image)
	}
}

func TestPrepareAppArmor(t *testing.T) {
	dir := searchable(t)
	disk := mkfile(t, dir, "disk.img", 0o644)
	iso := mkfile(t, dir, "boot.iso", 0o644)
	profiles := t.TempDir()
	ld := &apparmor.Memory{}
	s, err := New(system(), Host{AppArmor: true, AppArmorConfined: true, AppArmorLoader: ld, AppArmorDir: profiles})
	if err != nil {
		t.Fatal(err)
	}
	uuid := "11111111-2222-3333-4444-555555555555"
	spec := &procmgr.Spec{Path: "/usr/bin/qemu-system-x86_64", LogPath: filepath.Join(dir, "g.log")}
	sockdir := filepath.Join(dir, "sock.d")
	os.Mkdir(sockdir, 0o700)
	g := &Guest{Name: "aa", UUID: uuid, Disks: []Disk{{Path: disk}, {Path: iso, ReadOnly: true}}, Dirs: []string{sockdir}, Sockets: []string{filepath.Join(sockdir, "g.qmp")},
		Connects: []string{"/run/qemufs/swtpm/aa-swtpm.sock"}}
	rec, err := s.Prepare(context.Background(), g, spec)
	if err != nil {
		t.Fatal(err)
	}
	name := "libvirt-" + uuid
	if rec.AppArmor != name || spec.Label == nil || *spec.Label != (procmgr.ExecLabel{Model: "apparmor", Value: name}) {
		t.Errorf("record %q, exec label %+v", rec.AppArmor, spec.Label)
	}
	files, err := os.ReadFile(filepath.Join(profiles, name+".files"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"` + disk + `" rwk,`, `"` + iso + `" rk,`, `"/usr/bin/qemu-system-x86_64" rmix,`, `"` + spec.LogPath + `" w,`, `"` + g.Sockets[0] + `" rw,`, `"` + g.Connects[0] + `" rw,`} {
		if !strings.Contains(string(files), want) {
			t.Errorf(".files lacks %s:\n%s", want, files)
		}
	}
	if !slices.Equal(ld.Loaded(), []string{name}) {
		t.Errorf("loaded = %v", ld.Loaded())
	}
	if sl := rec.SecLabels(); sl[0] != (SecLabel{Model: "apparmor", Type: "dynamic", Relabel: true, Label: name, ImageLabel: name}) {
		t.Errorf("seclabels = %+v", sl)
	}
	if err := s.Restore(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	if len(ld.Loaded()) != 0 {
		t.Errorf("still loaded after Restore: %v", ld.Loaded())
	}
	if left, _ := filepath.Glob(filepath.Join(profiles, "libvirt-*")); len(left) != 0 {
		t.Errorf("profile files left: %v", left)
	}
	// A guest without a uuid cannot be named.
	if _, err := s.Prepare(context.Background(), &Guest{Name: "nouuid"}, &procmgr.Spec{}); err == nil {
		t.Error("AppArmor guest without uuid accepted")
	}
}

// TestPrepareCgroup starts nothing but places a shell in the guest's
// cgroup, as procmgr does, and checks the device ACL from inside.
func TestPrepareCgroup(t *testing.T) {
	dir := searchable(t)
	if cgroup.Detect() != cgroup.V1 {
		t.Skip("no cgroup v1 here")
	}
	disk := sectest.Loop(t, dir)
	other := sectest.Loop(t, dir)
	before := snapshot(t, disk)
	cfg := system()
	cfg.InstanceName = fmt.Sprintf("test-%d", os.Getpid())
	s, err := New(cfg, Host{Cgroup: cgroup.V1})
	if err != nil {
		t.Fatal(err)
	}
	spec := &procmgr.Spec{}
	rec, err := s.Prepare(context.Background(), &Guest{Name: "cg", Disks: []Disk{{Path: disk}},
		Tune: cgroup.Limits{CPUShares: 256, MemoryHardLimit: 512 << 20}}, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Restore(context.Background(), rec)
	if len(spec.CgroupProcs) == 0 || !strings.Contains(spec.CgroupProcs[0], "/qemufs-"+cfg.InstanceName+"/cg.qemu/") {
		t.Fatalf("cgroup procs = %v", spec.CgroupProcs)
	}
	if got := owner(t, disk); got.UID != 65534 {
		t.Errorf("block device not handed over: %+v", got)
	}
	if !slices.Contains(spec.MountNS.Devices, disk) {
		t.Errorf("namespace devices %v lack the disk", spec.MountNS.Devices)
	}
	for _, c := range []struct{ ctrl, file, want string }{{"cpu", "cpu.shares", "256"}, {"memory", "memory.limit_in_bytes", fmt.Sprint(512 << 20)}} {
		b, _ := os.ReadFile(filepath.Join(rec.Cgroup.Dirs[c.ctrl], c.file))
		if strings.TrimSpace(string(b)) != c.want {
			t.Errorf("%s = %q, want %s", c.file, b, c.want)
		}
	}
	for _, dev := range []string{"/dev/null", disk} {
		if out, err := sectest.RunIn(spec.CgroupProcs, "head", "-c1", dev); err != nil {
			t.Errorf("%s denied: %v %s", dev, err, out)
		}
	}
	if out, err := sectest.RunIn(spec.CgroupProcs, "head", "-c1", other); err == nil || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("%s outside the ACL: err %v, %q", other, err, out)
	}
	if err := s.Restore(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	unchanged(t, before)
	for _, d := range spec.CgroupProcs {
		if fileExists(filepath.Dir(d)) {
			t.Errorf("cgroup %s left after Restore", filepath.Dir(d))
		}
	}
}

func TestSession(t *testing.T) {
	dir := t.TempDir()
	disk := mkfile(t, dir, "disk.img", 0o600)
	before := snapshot(t, disk)
	s, err := New(Config{User: "nobody", SeccompSandbox: 0, InstanceName: "session-0"}, Host{Cgroup: cgroup.Detect()})
	if err != nil {
		t.Fatal(err)
	}
	spec := &procmgr.Spec{}
	rec, err := s.Prepare(context.Background(), &Guest{Name: "s", Disks: []Disk{{Path: disk}}}, spec)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Credential != nil || spec.MountNS != nil || spec.CgroupProcs != nil || len(spec.Args) != 0 {
		t.Errorf("session spec = %+v", spec)
	}
	unchanged(t, before)
	if rec.DAC.Relabel || rec.DAC.Label != fmt.Sprintf("+%d:+%d", os.Geteuid(), os.Getegid()) {
		t.Errorf("session DAC label = %+v", rec.DAC)
	}
}

// TestArgs: Args is what Prepare appends, so argv shows what runs.
func TestArgs(t *testing.T) {
	for _, sb := range []int{-1, 0, 1} {
		s, err := New(Config{SeccompSandbox: sb, InstanceName: "session-0"}, Host{})
		if err != nil {
			t.Fatal(err)
		}
		spec := &procmgr.Spec{}
		if _, err := s.Prepare(context.Background(), &Guest{Name: "a"}, spec); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(s.Args(), spec.Args) || (sb != 0) != (len(spec.Args) > 0) {
			t.Errorf("seccomp_sandbox %d: Args() = %q, Prepare added %q", sb, s.Args(), spec.Args)
		}
	}
}

// TestFileInOwnDir: a writable file inside one of the guest's own
// directories (an NVRAM the XML puts in the guest's lib directory), which
// QEMU's user cannot search yet, is granted: Prepare gives the directory
// first. The same file elsewhere behind a closed directory is refused.
func TestFileInOwnDir(t *testing.T) {
	dir := searchable(t)
	gdir := filepath.Join(dir, "g.lib")
	if err := os.Mkdir(gdir, 0o700); err != nil {
		t.Fatal(err)
	}
	nvram := mkfile(t, gdir, "g_VARS.fd", 0o600)
	before := snapshot(t, gdir, nvram)
	s, err := New(system(), Host{})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := s.Prepare(context.Background(), &Guest{Name: "own", Dirs: []string{gdir}, Writes: []string{nvram}}, &procmgr.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	if o := owner(t, nvram); o.UID != 65534 {
		t.Errorf("NVRAM owned by %+v, want QEMU's user (nobody)", o)
	}
	if err := s.Restore(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	unchanged(t, before)
	if _, err := s.Prepare(context.Background(), &Guest{Name: "other", Writes: []string{nvram}}, &procmgr.Spec{}); err == nil ||
		!strings.Contains(err.Error(), "run 'chmod o+x "+gdir+"'") {
		t.Errorf("a file behind a closed directory that is not the guest's: %v", err)
	}
	unchanged(t, before)
}
