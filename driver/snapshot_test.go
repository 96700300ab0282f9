package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/instance"
)

func TestCheckSnapshotName(t *testing.T) {
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"s1", true}, {"before-upgrade", true}, {"2026-01-01", true}, {"a b", true},
		{"", false}, {".", false}, {"..", false}, {".hidden", false}, {"a/b", false},
		{"12", false}, {"a\nb", false}, {"create", false}, {"current", false}, {strings.Repeat("x", 201), false},
	} {
		if err := checkSnapshotName(tt.name); (err == nil) != tt.ok {
			t.Errorf("checkSnapshotName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestParseSnapshotRequest(t *testing.T) {
	tests := []struct {
		name, xml string
		want      *snapRequest
		err       string
	}{
		{"empty element", `<domainsnapshot/>`, &snapRequest{}, ""},
		{"full", `<domainsnapshot><name>s1</name><description>before</description><memory snapshot='no'/>
			<disks><disk name='vda' snapshot='external'><driver type='qcow2'/><source file='/x/o.qcow2'/></disk><disk name='vdb' snapshot='no'/></disks></domainsnapshot>`,
			&snapRequest{Name: "s1", Description: "before", Memory: "no", Disks: []snapDisk{
				{Name: "vda", Snapshot: "external", Source: "/x/o.qcow2", Format: "qcow2"}, {Name: "vdb", Snapshot: "no"}}}, ""},
		{"source implies external", `<domainsnapshot><disks><disk name='vda'><source file='/o'/></disk></disks></domainsnapshot>`,
			&snapRequest{Disks: []snapDisk{{Name: "vda", Snapshot: "external", Source: "/o"}}}, ""},
		{"syntax", `<domainsnapshot><name>s1</domainsnapshot>`, nil, "snapshot XML"},
		{"wrong root", `<domain/>`, nil, "want <domainsnapshot>"},
		{"unknown element", `<domainsnapshot><color>red</color></domainsnapshot>`, nil, "unknown element <color>"},
		{"redefine", `<domainsnapshot><name>a</name><state>running</state></domainsnapshot>`, nil, "<state> is set by qemufs"},
		{"bad name", `<domainsnapshot><name>a/b</name></domainsnapshot>`, nil, "contains '/'"},
		{"numeric name", `<domainsnapshot><name>3</name></domainsnapshot>`, nil, "is a number"},
		{"external memory", `<domainsnapshot><memory snapshot='external' file='/m'/></domainsnapshot>`, nil, "not supported"},
		{"bad memory", `<domainsnapshot><memory snapshot='maybe'/></domainsnapshot>`, nil, "want 'internal' or 'no'"},
		{"disk without name", `<domainsnapshot><disks><disk snapshot='no'/></disks></domainsnapshot>`, nil, "lacks its name"},
		{"bad disk mode", `<domainsnapshot><disks><disk name='vda' snapshot='all'/></disks></domainsnapshot>`, nil, "snapshot='all'"},
		{"relative overlay", `<domainsnapshot><disks><disk name='vda' snapshot='external'><source file='o.qcow2'/></disk></disks></domainsnapshot>`, nil, "not absolute"},
		{"raw overlay", `<domainsnapshot><disks><disk name='vda' snapshot='external'><driver type='raw'/></disk></disks></domainsnapshot>`, nil, "only qcow2"},
		{"source on internal", `<domainsnapshot><disks><disk name='vda' snapshot='internal'><source file='/o'/></disk></disks></domainsnapshot>`, nil, "for snapshot='external' only"},
		{"twice", `<domainsnapshot><name>a</name><name>b</name></domainsnapshot>`, nil, "given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSnapshotRequest([]byte(tt.xml))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one mentioning %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// planDomain has a qcow2 disk, a raw disk, a read-only disk and an empty
// CD-ROM drive.
func planDomain(t *testing.T, dir string) *domain.Domain {
	t.Helper()
	def, err := domain.Parse([]byte(fmt.Sprintf(`<domain type='qemu'><name>p</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%[1]s/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%[1]s/b.img'/><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%[1]s/ro.img'/><target dev='vdc' bus='virtio'/><readonly/></disk>
<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
</devices></domain>`, dir)))
	if err != nil {
		t.Fatal(err)
	}
	return def
}

func TestPlanSnapshot(t *testing.T) {
	dir := t.TempDir()
	def := planDomain(t, dir)
	os.WriteFile(filepath.Join(dir, "taken.qcow2"), nil, 0o600)
	noRaw := []snapDisk{{Name: "vdb", Snapshot: "no"}}
	tests := []struct {
		name   string
		req    snapRequest
		active bool
		memory string
		modes  string // vda vdb vdc hdc
		err    string
	}{
		{"raw disk refused", snapRequest{Name: "s"}, true, "", "", "disk vdb (" + dir + "/b.img) is a raw image: internal snapshots need qcow2"},
		{"running: memory", snapRequest{Name: "s", Disks: noRaw}, true, "internal", "internal no no no", ""},
		{"shut off: disks only", snapRequest{Name: "s", Disks: noRaw}, false, "no", "internal no no no", ""},
		{"shut off with memory", snapRequest{Name: "s", Memory: "internal", Disks: noRaw}, false, "", "", "no memory state"},
		{"running disk-only internal", snapRequest{Name: "s", Memory: "no", Disks: noRaw}, true, "", "", "disk-only internal snapshot of an active domain"},
		{"external by default for the rest", snapRequest{Name: "s", Disks: []snapDisk{{Name: "vda", Snapshot: "external"}}}, true, "no", "external external no no", ""},
		{"external by path", snapRequest{Name: "s", Disks: []snapDisk{{Name: dir + "/a.qcow2", Snapshot: "external"}, {Name: "vdb", Snapshot: "no"}}}, false, "no", "external no no no", ""},
		{"mixed", snapRequest{Name: "s", Disks: []snapDisk{{Name: "vda", Snapshot: "internal"}, {Name: "vdb", Snapshot: "external"}}}, false, "", "", "mixing internal and external"},
		{"memory with external", snapRequest{Name: "s", Memory: "internal", Disks: []snapDisk{{Name: "vda", Snapshot: "external"}}}, true, "", "", "internal memory state with external"},
		{"unknown disk", snapRequest{Name: "s", Disks: []snapDisk{{Name: "sdz", Snapshot: "no"}}}, false, "", "", `no disk "sdz" (disks: vda, vdb, vdc, hdc)`},
		{"disk twice", snapRequest{Name: "s", Disks: []snapDisk{{Name: "vdb", Snapshot: "no"}, {Name: dir + "/b.img", Snapshot: "no"}}}, false, "", "", "named twice"},
		{"read-only disk", snapRequest{Name: "s", Disks: []snapDisk{{Name: "vdc", Snapshot: "internal"}, {Name: "vdb", Snapshot: "no"}}}, false, "", "", "read-only"},
		{"empty drive", snapRequest{Name: "s", Disks: []snapDisk{{Name: "hdc", Snapshot: "external"}}}, false, "", "", "no media"},
		{"overlay exists", snapRequest{Name: "s", Disks: []snapDisk{{Name: "vda", Snapshot: "external", Source: dir + "/taken.qcow2"}, {Name: "vdb", Snapshot: "no"}}}, false, "", "", "exists already"},
		{"overlay dir missing", snapRequest{Name: "s", Disks: []snapDisk{{Name: "vda", Snapshot: "external", Source: dir + "/nope/o.qcow2"}, {Name: "vdb", Snapshot: "no"}}}, false, "", "", "does not exist"},
		{"no qcow2 for memory", snapRequest{Name: "s", Disks: []snapDisk{{Name: "vda", Snapshot: "no"}, {Name: "vdb", Snapshot: "no"}}}, true, "", "", "no writable qcow2 disk"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			memory, plans, err := planSnapshot(def, &tt.req, tt.active)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one mentioning %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var modes []string
			for _, p := range plans {
				modes = append(modes, p.mode)
			}
			if memory != tt.memory || strings.Join(modes, " ") != tt.modes {
				t.Errorf("memory %s, disks %v; want %s, %s", memory, modes, tt.memory, tt.modes)
			}
		})
	}
	// The domain's own <disk snapshot='no'> is the disk's default.
	own := def.Clone()
	own.Root().FindElement("./devices/disk[2]").CreateAttr("snapshot", "no")
	if memory, plans, err := planSnapshot(own, &snapRequest{Name: "s"}, true); err != nil || memory != "internal" || plans[1].mode != "no" {
		t.Errorf("with vdb snapshot='no' in the domain: %s %+v %v", memory, plans, err)
	}
	_, plans, _ := planSnapshot(def, &snapRequest{Name: "s1", Disks: []snapDisk{{Name: "vda", Snapshot: "external"}}}, false)
	if plans[0].overlay != dir+"/a.s1" || plans[1].overlay != dir+"/b.s1" {
		t.Errorf("default overlays %s, %s; want libvirt's names %s/a.s1, %s/b.s1", plans[0].overlay, plans[1].overlay, dir, dir)
	}
}

func TestSnapshotMetaRoundTrip(t *testing.T) {
	sn := &snapshot{Name: "s1", Description: "a & b", State: "running", Parent: "s0", Created: 1700000000, Memory: "internal",
		Disks:  []snapDisk{{Name: "vda", Snapshot: "internal"}, {Name: "vdb", Snapshot: "external", Source: "/o.qcow2", Format: "qcow2"}},
		Domain: []byte(minimalXML("a")), Inactive: []byte(minimalXML("a"))}
	out := sn.xml()
	for _, want := range []string{"<domainsnapshot>", "<name>s1</name>", "<state>running</state>", "<parent>\n    <name>s0</name>",
		"<creationTime>1700000000</creationTime>", "<memory snapshot='internal'/>", "<disk name='vda' snapshot='internal'/>",
		"<disk name='vdb' snapshot='external' type='file'>", "<source file='/o.qcow2'/>", "<domain type='qemu'>", "<inactiveDomain type='qemu'>"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("snapshot XML lacks %q:\n%s", want, out)
		}
	}
	back, err := parseSnapshotMeta(out)
	if err != nil {
		t.Fatal(err)
	}
	if string(back.xml()) != string(out) {
		t.Errorf("round trip changed the XML:\n%s\nvs\n%s", back.xml(), out)
	}
	if _, err := domain.Parse(back.Domain); err != nil {
		t.Errorf("stored domain does not parse: %v", err)
	}
}

// qcowXML is a minimal domain with the qcow2 image img as vda.
func qcowXML(name, img string) string {
	return strings.Replace(minimalXML(name), "<devices>", fmt.Sprintf(`<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>`, img), 1)
}

// qcowDomain is a driver with domain "a" defined on a new qcow2 image
// (img), started when start is true.
func qcowDomain(t *testing.T, start bool) (*Driver, context.Context, string) {
	t.Helper()
	needQemuImg(t)
	d := newDriver(t)
	ctx := context.Background()
	img := filepath.Join(d.inst.LibDir, "a.qcow2")
	mkQcow(t, img)
	d.Create("a")
	if err := d.Define("a", []byte(qcowXML("a", img))); err != nil {
		t.Fatal(err)
	}
	if start {
		if err := d.Control(ctx, "a", "start"); err != nil {
			t.Fatal(err)
		}
	}
	return d, ctx, img
}

func needQemuImg(t *testing.T) {
	t.Helper()
	for _, b := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skip(b + " not installed")
		}
	}
}

func mkQcow(t *testing.T, path string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", path, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
}

// qemuIO runs a qemu-io command on an image that no QEMU has open.
func qemuIO(t *testing.T, img, cmd string) string {
	t.Helper()
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", cmd, img).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io %s: %v: %s", cmd, err, out)
	}
	return string(out)
}

// hasPattern reports whether the first 64 KiB of img hold byte p.
func hasPattern(t *testing.T, img string, p byte) bool {
	t.Helper()
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("read -P 0x%x 0 64k", p), img).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("qemu-io read %s: %v: %s", img, err, out)
	}
	return err == nil
}

func imgSnapshots(t *testing.T, img string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", "snapshot", "-U", "-l", img).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img snapshot -l: %v: %s", err, out)
	}
	return string(out)
}

// TestSnapshotOffline: disk-only internal snapshots of a shut-off domain
// with qemu-img, revert, the tree of parents, metadata that survives a new
// Driver, delete with re-parenting, an external snapshot switching the
// definition to its overlay, and refusals that change nothing.
func TestSnapshotOffline(t *testing.T) {
	d, ctx, img := qcowDomain(t, false)
	qemuIO(t, img, "write -P 0xaa 0 64k")
	if err := d.SnapshotCreate(ctx, "a", "s1"); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, img, "write -P 0xbb 0 64k")
	if err := d.SnapshotCreate(ctx, "a", "s2"); err != nil {
		t.Fatal(err)
	}
	if l := imgSnapshots(t, img); !strings.Contains(l, "s1") || !strings.Contains(l, "s2") {
		t.Fatalf("image snapshots:\n%s", l)
	}
	x, _ := d.SnapshotXML("a", "s2")
	for _, want := range []string{"<state>shutoff</state>", "<name>s1</name>", "<memory snapshot='no'/>", "<disk name='vda' snapshot='internal'/>", "<domain type='qemu'>"} {
		if !strings.Contains(string(x), want) {
			t.Errorf("s2 lacks %q:\n%s", want, x)
		}
	}
	if err := d.SnapshotControl(ctx, "a", "s1", "revert"); err != nil {
		t.Fatal(err)
	}
	if !hasPattern(t, img, 0xaa) {
		t.Error("revert to s1 did not bring back its data")
	}
	if st, _ := d.StateLine("a"); st != "shut off (from snapshot)" {
		t.Errorf("state after revert %q", st)
	}
	if cur, _ := d.SnapshotCurrent("a"); cur != "s1" {
		t.Errorf("current %q after revert, want s1", cur)
	}
	if err := d.SnapshotCreate(ctx, "a", "s3"); err != nil { // a second child of s1
		t.Fatal(err)
	}

	// Refusals change nothing.
	before, _ := d.Config("a")
	for _, tt := range []struct {
		do   func() error
		kind error
		msg  string
	}{
		{func() error { return d.SnapshotCreate(ctx, "a", "s1") }, ErrExist, "exists already"},
		{func() error { return d.SnapshotCreate(ctx, "a", "9") }, ErrInvalid, "is a number"},
		{func() error {
			_, err := d.SnapshotCreateXML(ctx, "a", []byte("<domainsnapshot><name>x</name>"))
			return err
		}, ErrInvalid, "snapshot XML"},
		{func() error {
			_, err := d.SnapshotCreateXML(ctx, "a", []byte("<domainsnapshot><name>x</name><memory snapshot='internal'/></domainsnapshot>"))
			return err
		}, ErrInvalid, "shut off"},
		{func() error { return d.SnapshotControl(ctx, "a", "s1", "revert --fast") }, ErrInvalid, "usage: revert"},
		{func() error { return d.SnapshotControl(ctx, "a", "s1", "jump") }, ErrInvalid, "unknown command"},
		{func() error { return d.SnapshotControl(ctx, "a", "nope", "revert") }, ErrNotFound, "no snapshot"},
		{func() error { return d.SnapshotDelete(ctx, "a", "nope") }, ErrNotFound, "no snapshot"},
		{func() error { return d.Remove("a") }, ErrBusy, "3 snapshot(s)"},
	} {
		err := tt.do()
		if !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("got %v, want %v mentioning %q", err, tt.kind, tt.msg)
		}
		if e, _ := d.LastError("a"); err != nil && e != err.Error() {
			t.Errorf("error file %q, want %q", e, err)
		}
	}
	if names, _ := d.Snapshots("a"); strings.Join(names, " ") != "s1 s2 s3" {
		t.Errorf("snapshots after refusals: %v", names)
	}
	if now, _ := d.Config("a"); string(now) != string(before) {
		t.Error("a refused snapshot changed the definition")
	}

	// Deleting s1 makes its children the children of its parent (none)
	// and removes it from the image.
	if err := d.SnapshotDelete(ctx, "a", "s1"); err != nil {
		t.Fatal(err)
	}
	if l := imgSnapshots(t, img); strings.Contains(l, " s1 ") {
		t.Errorf("s1 still in the image:\n%s", l)
	}
	for _, n := range []string{"s2", "s3"} {
		if x, _ := d.SnapshotXML("a", n); strings.Contains(string(x), "<parent>") {
			t.Errorf("%s still has a parent:\n%s", n, x)
		}
	}

	// External: the definition switches to the overlay, the base is its
	// backing file.
	over := filepath.Join(d.inst.LibDir, "a-ext.qcow2")
	ext := fmt.Sprintf("<domainsnapshot><name>e1</name><disks><disk name='vda' snapshot='external'><source file='%s'/></disk></disks></domainsnapshot>", over)
	if n, err := d.SnapshotCreateXML(ctx, "a", []byte(ext)); err != nil || n != "e1" {
		t.Fatalf("external snapshot: %q, %v", n, err)
	}
	cfg, _ := d.Config("a")
	if !strings.Contains(string(cfg), "<source file='"+over+"'/>") || !strings.Contains(string(cfg), "<source file='"+img+"'/>") ||
		!strings.Contains(string(cfg), "<backingStore type='file'>") {
		t.Errorf("definition after the external snapshot:\n%s", cfg)
	}
	if info, err := imageInfo(ctx, over); err != nil || len(info) != 2 || info[1].Filename != img {
		t.Errorf("overlay chain %+v, %v", info, err)
	}
	if err := d.SnapshotControl(ctx, "a", "s2", "revert"); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "external snapshot e1") {
		t.Errorf("revert to an internal snapshot of the overlay's backing file: %v, want ErrBusy naming e1", err)
	}
	if cfg2, _ := d.Config("a"); string(cfg2) != string(cfg) {
		t.Error("a refused revert changed the definition")
	}
	qemuIO(t, over, "write -P 0xee 0 64k")
	if err := d.SnapshotCreate(ctx, "a", "after-e1"); err != nil {
		t.Fatal(err)
	}
	if err := d.SnapshotDelete(ctx, "a", "e1"); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "after-e1") {
		t.Errorf("delete of an external snapshot with a child: %v, want ErrBusy naming it", err)
	}
	if err := d.SnapshotControl(ctx, "a", "e1", "revert"); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "after-e1") {
		t.Errorf("revert to an external snapshot with a child: %v, want ErrBusy naming it", err)
	}
	if !hasPattern(t, over, 0xee) {
		t.Error("a refused revert changed the overlay")
	}
	if err := d.SnapshotDelete(ctx, "a", "after-e1"); err != nil {
		t.Fatal(err)
	}
	// Reverting to it drops what was written since: a new, empty overlay
	// over the image it was taken of.
	if err := d.SnapshotControl(ctx, "a", "e1", "revert"); err != nil {
		t.Fatal(err)
	}
	if hasPattern(t, over, 0xee) || !hasPattern(t, over, 0xaa) {
		t.Error("after reverting to e1 the overlay does not show the base's data")
	}
	if info, err := imageInfo(ctx, over); err != nil || len(info) != 2 || info[1].Filename != img {
		t.Errorf("new overlay's chain %+v, %v; want it over %s", info, err, img)
	}
	if cfg2, _ := d.Config("a"); string(cfg2) != string(cfg) {
		t.Errorf("definition after reverting to e1:\n%s\nwant\n%s", cfg2, cfg)
	}
	if st, _ := d.StateLine("a"); st != "shut off (from snapshot)" {
		t.Errorf("state after reverting to e1 %q", st)
	}

	// A new Driver on the same instance finds them all again.
	d2, err := New(Options{Instance: d.inst, Config: instance.DefaultConfig(instance.Embedded), Caps: d.caps, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if names, _ := d2.Snapshots("a"); strings.Join(names, " ") != "e1 s2 s3" {
		t.Errorf("snapshots after reload: %v", names)
	}
	if cur, _ := d2.SnapshotCurrent("a"); cur != "e1" {
		t.Errorf("current after reload %q", cur)
	}
	x1, _ := d.SnapshotXML("a", "e1")
	x2, _ := d2.SnapshotXML("a", "e1")
	if string(x1) != string(x2) {
		t.Errorf("reloaded metadata differs:\n%s\nvs\n%s", x2, x1)
	}
}

// hmp runs a human monitor command in a's QEMU.
func hmp(t *testing.T, d *Driver, name, line string) string {
	t.Helper()
	_, r, _ := d.current(name)
	if r == nil {
		t.Fatalf("%s is not running", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := r.mon.HMP(ctx, line)
	if err != nil {
		t.Fatalf("hmp %s: %v", line, err)
	}
	return out
}

// TestSnapshotRunning runs QEMU: an internal snapshot with memory
// (snapshot-save), data written after it, revert in place (snapshot-load)
// brings the data back; revert to a shut-off domain starts it from the
// snapshot's memory; an external snapshot of the running guest switches
// QEMU and both definitions to the overlay.
func TestSnapshotRunning(t *testing.T) {
	d, ctx, img := qcowDomain(t, true)
	// qemu-io through the disk's own device, as the guest writes. (Its
	// report goes to QEMU's stdout, so what it wrote is checked on the
	// image once QEMU is gone.)
	write := func(p byte) {
		out := hmp(t, d, "a", fmt.Sprintf(`qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P 0x%x 0 64k"`, p))
		if strings.TrimSpace(out) != "" {
			t.Fatalf("qemu-io write: %s", out)
		}
	}
	destroy := func() {
		if err := d.Control(ctx, "a", "destroy"); err != nil {
			t.Fatal(err)
		}
	}
	state := func(want string) {
		t.Helper()
		st, _ := d.StateLine("a")
		if st != want && !strings.HasPrefix(st, want+" ") {
			t.Errorf("state %q, want %q", st, want)
		}
	}
	write(0xaa)
	if err := d.SnapshotCreate(ctx, "a", "s1"); err != nil {
		t.Fatal(err)
	}
	x, _ := d.SnapshotXML("a", "s1")
	for _, want := range []string{"<state>running</state>", "<memory snapshot='internal'/>", "<inactiveDomain"} {
		if !strings.Contains(string(x), want) {
			t.Errorf("s1 lacks %q:\n%s", want, x)
		}
	}
	state("running")
	write(0xbb)
	pid, _ := d.Pid("a")
	if err := d.SnapshotControl(ctx, "a", "s1", "revert"); err != nil {
		t.Fatal(err)
	}
	state("running (from snapshot)")
	if p, _ := d.Pid("a"); p != pid {
		t.Errorf("revert in place restarted QEMU (pid %d, was %d)", p, pid)
	}
	destroy()
	if !hasPattern(t, img, 0xaa) {
		t.Error("revert in place did not bring back the data of s1")
	}

	// From shut off: started from the snapshot's memory.
	if err := d.SnapshotControl(ctx, "a", "s1", "revert"); err != nil {
		t.Fatal(err)
	}
	state("running")
	write(0xcc)
	if err := d.SnapshotControl(ctx, "a", "s1", "revert --paused"); err != nil {
		t.Fatal(err)
	}
	state("paused (from snapshot)")
	destroy()
	if !hasPattern(t, img, 0xaa) {
		t.Error("revert --paused did not bring back the data of s1")
	}

	// Deleting the running guest's snapshot uses snapshot-delete.
	if err := d.Control(ctx, "a", "start --paused"); err != nil {
		t.Fatal(err)
	}
	if err := d.SnapshotDelete(ctx, "a", "s1"); err != nil {
		t.Fatal(err)
	}
	if l := imgSnapshots(t, img); strings.Contains(l, "s1") {
		t.Errorf("s1 still in the image:\n%s", l)
	}

	// External, live.
	over := filepath.Join(d.inst.LibDir, "a.e1")
	if _, err := d.SnapshotCreateXML(ctx, "a", []byte("<domainsnapshot><name>e1</name><memory snapshot='no'/><disks><disk name='vda' snapshot='external'/></disks></domainsnapshot>")); err != nil {
		t.Fatal(err)
	}
	x, _ = d.SnapshotXML("a", "e1")
	if !strings.Contains(string(x), "<state>disk-snapshot</state>") || !strings.Contains(string(x), "<source file='"+over+"'/>") {
		t.Errorf("e1:\n%s", x)
	}
	_, r, _ := d.current("a")
	nodes, _ := r.formatNodes(ctx)
	if nodes[over] == "" {
		t.Fatalf("QEMU does not use the overlay: %v", nodes)
	}
	write(0xdd)
	for _, f := range []func(string) ([]byte, error){d.LiveXML, d.Config} {
		b, _ := f("a")
		if !strings.Contains(string(b), "<source file='"+over+"'/>") {
			t.Errorf("definition does not use the overlay:\n%s", b)
		}
	}
	destroy()
	if !hasPattern(t, img, 0xaa) {
		t.Error("the base image changed after the external snapshot")
	}
	if !hasPattern(t, over, 0xdd) {
		t.Error("the overlay lacks what the guest wrote")
	}
	// The next start uses the overlay with its backing chain.
	if err := d.Control(ctx, "a", "start --paused"); err != nil {
		t.Fatal(err)
	}
	argv, _ := d.LiveXML("a")
	if !strings.Contains(string(argv), over) {
		t.Errorf("restart does not use the overlay:\n%s", argv)
	}
	// Reverting the running guest to e1 restarts it on a new overlay:
	// what it wrote since (0xdd) is gone.
	pid, _ = d.Pid("a")
	if err := d.SnapshotControl(ctx, "a", "e1", "revert --running"); err != nil {
		t.Fatal(err)
	}
	if p, _ := d.Pid("a"); p == pid || p == 0 {
		t.Errorf("pid %d after reverting to e1, was %d: want a new QEMU", p, pid)
	}
	state("running (from snapshot)")
	destroy()
	if hasPattern(t, over, 0xdd) || !hasPattern(t, over, 0xaa) {
		t.Error("after reverting to e1 the overlay still holds what was written since")
	}
}

// TestSnapshotCtl: the domain's ctl takes snapshots too, named or named
// after the time.
func TestSnapshotCtl(t *testing.T) {
	needQemuImg(t)
	d := newDriver(t)
	ctx := context.Background()
	img := filepath.Join(d.inst.LibDir, "a.qcow2")
	mkQcow(t, img)
	d.Create("a")
	if err := d.SnapshotCreate(ctx, "a", "s0"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "not defined") {
		t.Errorf("snapshot of an empty slot: %v", err)
	}
	if err := d.Define("a", []byte(qcowXML("a", img))); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		line string
		kind error
	}{
		{"snapshot 12", ErrInvalid},
		{"snapshot a b", ErrInvalid},
		{"snapshot named", nil},
		{"snapshot", nil},
	} {
		if err := d.Control(ctx, "a", tt.line); !errors.Is(err, tt.kind) && !(tt.kind == nil && err == nil) {
			t.Errorf("%s: %v, want %v", tt.line, err, tt.kind)
		}
	}
	names, _ := d.Snapshots("a")
	if len(names) != 2 || names[1] != "named" || len(names[0]) != len("20060102-150405") {
		t.Errorf("snapshots %v, want a time-named one and 'named'", names)
	}
	if x, _ := d.SnapshotXML("a", names[0]); !strings.Contains(string(x), "<parent>\n    <name>named</name>") {
		t.Errorf("the second snapshot's parent is not the first:\n%s", x)
	}
}

// TestSnapshotRevertRedefined: a memory snapshot reverted into a guest
// whose configuration changed since restarts QEMU with the snapshot's
// definition (the memory state belongs to it), which becomes config.xml
// again.
func TestSnapshotRevertRedefined(t *testing.T) {
	needQemuImg(t)
	d := newDriver(t)
	ctx := context.Background()
	img := filepath.Join(d.inst.LibDir, "a.qcow2")
	mkQcow(t, img)
	d.Create("a")
	xml := qcowXML("a", img)
	if err := d.Define("a", []byte(xml)); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "a", "start"); err != nil {
		t.Fatal(err)
	}
	pid, _ := d.Pid("a")
	if err := d.SnapshotCreate(ctx, "a", "s1"); err != nil {
		t.Fatal(err)
	}
	if p, _ := d.Pid("a"); p != pid {
		t.Fatal("the snapshot restarted QEMU")
	}
	if err := d.Control(ctx, "a", "destroy"); err != nil {
		t.Fatal(err)
	}
	if err := d.Define("a", []byte(strings.Replace(xml, "<memory unit='MiB'>64</memory>", "<memory unit='MiB'>96</memory>", 1))); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "a", "start"); err != nil {
		t.Fatal(err)
	}
	pid, _ = d.Pid("a")
	if err := d.SnapshotControl(ctx, "a", "s1", "revert --running"); err != nil {
		t.Fatal(err)
	}
	if p, _ := d.Pid("a"); p == pid || p == 0 {
		t.Errorf("QEMU pid %d after revert (was %d): want a new QEMU", p, pid)
	}
	if st, _ := d.StateLine("a"); st != "running (from snapshot)" && !strings.HasPrefix(st, "running") {
		t.Errorf("state %q", st)
	}
	for _, f := range []func(string) ([]byte, error){d.Config, d.LiveXML} {
		b, _ := f("a")
		if !strings.Contains(string(b), "<memory unit='KiB'>65536</memory>") {
			t.Errorf("definition after revert does not have the snapshot's memory size:\n%s", b)
		}
	}
}

// TestSnapshotReattached: a guest a restarted daemon re-attached to takes
// and deletes snapshots like one it started.
func TestSnapshotReattached(t *testing.T) {
	d, ctx, img := qcowDomain(t, true)
	d.Close()
	d2, err := New(Options{Instance: d.inst, Config: instance.DefaultConfig(instance.Embedded), Caps: d.caps, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d2.Control(c, "a", "destroy")
		d2.Close()
	})
	if !d2.Active("a") {
		t.Fatal("not re-attached")
	}
	if err := d2.SnapshotCreate(ctx, "a", "s1"); err != nil {
		t.Fatal(err)
	}
	if x, _ := d2.SnapshotXML("a", "s1"); !strings.Contains(string(x), "<memory snapshot='internal'/>") {
		t.Errorf("s1:\n%s", x)
	}
	if err := d2.SnapshotControl(ctx, "a", "s1", "revert"); err != nil {
		t.Fatal(err)
	}
	if err := d2.SnapshotDelete(ctx, "a", "s1"); err != nil {
		t.Fatal(err)
	}
	if l := imgSnapshots(t, img); strings.Contains(l, "s1") {
		t.Errorf("s1 still in the image:\n%s", l)
	}
}
