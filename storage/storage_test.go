package storage

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/internal/errkind"
)

func TestParseSize(t *testing.T) {
	cases := []struct {
		v, unit string
		want    uint64
		err     bool
	}{
		{"10", "", 10, false}, {"10", "bytes", 10, false}, {"1", "K", 1024, false}, {"1", "KiB", 1024, false},
		{"1", "KB", 1000, false}, {"2", "M", 2 << 20, false}, {"1", "G", 1 << 30, false}, {"1", "GB", 1e9, false},
		{"1", "T", 1 << 40, false}, {"1", "k", 1024, false}, {"x", "", 0, true}, {"1", "furlongs", 0, true},
		{"-1", "", 0, true}, {"99999999999", "E", 0, true},
	}
	for _, c := range cases {
		got, err := ParseSize(c.v, c.unit)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("ParseSize(%q, %q) = %d, %v; want %d (err %v)", c.v, c.unit, got, err, c.want, c.err)
		}
	}
}

func TestParsePool(t *testing.T) {
	cases := []struct {
		name, xml, err string
		check          func(*Pool) bool
	}{
		{"dir", `<pool type='dir'><name>p</name><target><path>/var/p</path><permissions><mode>0755</mode></permissions></target></pool>`, "",
			func(p *Pool) bool { return p.Type == "dir" && p.Target == "/var/p" && p.Mode == 0o755 }},
		{"dir default mode", `<pool type='dir'><name>p</name><target><path>/var/p</path></target></pool>`, "", func(p *Pool) bool { return p.Mode == 0o711 }},
		{"fs", `<pool type='fs'><name>f</name><source><device path='/dev/sdb1'/><format type='ext4'/></source><target><path>/mnt/f</path></target></pool>`, "",
			func(p *Pool) bool { return p.Device == "/dev/sdb1" && p.Format == "ext4" }},
		{"netfs", `<pool type='netfs'><name>n</name><source><host name='h'/><dir path='/e'/><format type='nfs'/></source><target><path>/mnt/n</path></target></pool>`, "",
			func(p *Pool) bool { return p.Host == "h" && p.Dir == "/e" }},
		{"logical", `<pool type='logical'><name>vg0</name></pool>`, "", func(p *Pool) bool { return p.Target == "/dev/vg0" && p.SourceName == "vg0" }},
		{"fs without device", `<pool type='fs'><name>f</name><target><path>/mnt/f</path></target></pool>`, "<device", nil},
		{"no type", `<pool><name>p</name><target><path>/p</path></target></pool>`, "needs a type", nil},
		{"bad type", `<pool type='zfs'><name>p</name><target><path>/p</path></target></pool>`, "not supported", nil},
		{"relative target", `<pool type='dir'><name>p</name><target><path>p</path></target></pool>`, "absolute", nil},
		{"bad name", `<pool type='dir'><name>a/b</name><target><path>/p</path></target></pool>`, "<name>", nil},
		{"bad uuid", `<pool type='dir'><name>p</name><uuid>x</uuid><target><path>/p</path></target></pool>`, "UUID", nil},
		{"bad mode", `<pool type='dir'><name>p</name><target><path>/p</path><permissions><mode>9</mode></permissions></target></pool>`, "octal", nil},
		{"not xml", `<pool`, "pool XML", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := ParsePool([]byte(c.xml))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want %q", err, c.err)
				}
				return
			}
			if err != nil || !c.check(p) {
				t.Fatalf("%+v %v", p, err)
			}
			p.UUID = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
			back, err := ParsePool(p.XML(1, 2, 3))
			if err != nil || *back != *p {
				t.Fatalf("round trip %+v %v", back, err)
			}
		})
	}
}

func TestParseVolume(t *testing.T) {
	cases := []struct {
		name, xml, err string
		want           Volume
	}{
		{"raw", `<volume><name>a.img</name><capacity unit='M'>8</capacity></volume>`, "", Volume{Name: "a.img", Capacity: 8 << 20, Format: "raw"}},
		{"qcow2 backing", `<volume><name>b</name><capacity unit='G'>1</capacity><allocation>0</allocation><target><format type='qcow2'/><permissions><mode>0644</mode></permissions></target><backingStore><path>/p/base</path><format type='raw'/></backingStore></volume>`, "",
			Volume{Name: "b", Capacity: 1 << 30, HasAlloc: true, Format: "qcow2", Mode: 0o644, BackingPath: "/p/base", BackingFormat: "raw"}},
		{"luks", `<volume><name>c</name><capacity>1048576</capacity><target><format type='raw'/><encryption format='luks'><secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption></target></volume>`, "",
			Volume{Name: "c", Capacity: 1 << 20, Format: "raw", Encrypted: true, SecretUUID: "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"}},
		{"no capacity", `<volume><name>a</name></volume>`, "<capacity>", Volume{}},
		{"alloc > cap", `<volume><name>a</name><capacity>1</capacity><allocation>2</allocation></volume>`, "exceeds", Volume{}},
		{"bad unit", `<volume><name>a</name><capacity unit='X'>1</capacity></volume>`, "unit", Volume{}},
		{"bad format", `<volume><name>a</name><capacity>1</capacity><target><format type='vmdk'/></target></volume>`, "raw or qcow2", Volume{}},
		{"raw backing", `<volume><name>a</name><capacity>1</capacity><backingStore><path>/x</path></backingStore></volume>`, "qcow2", Volume{}},
		{"qcow encryption", `<volume><name>a</name><capacity>1</capacity><target><encryption format='qcow'/></target></volume>`, "luks", Volume{}},
		{"encryption without secret", `<volume><name>a</name><capacity>1</capacity><target><encryption format='luks'/></target></volume>`, "secret", Volume{}},
		{"bad name", `<volume><name>../x</name><capacity>1</capacity></volume>`, "<name>", Volume{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := ParseVolume([]byte(c.xml))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want %q", err, c.err)
				}
				return
			}
			if err != nil || *v != c.want {
				t.Fatalf("got %+v %v\nwant %+v", v, err, c.want)
			}
		})
	}
}

func needQemuImg(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (scripts/deps.sh installs qemu-utils)")
	}
}

// TestDirPoolVolumes runs a dir pool with real qemu-img: raw, qcow2 over
// a backing volume, LUKS, and the refusals.
func TestDirPoolVolumes(t *testing.T) {
	needQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	secret := []byte("luks-passphrase")
	m, err := New(Options{ConfigDir: filepath.Join(dir, "etc"), RunDir: filepath.Join(dir, "run"),
		Secret: func(uuid, typ, id string) ([]byte, error) {
			if uuid == "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f" {
				return secret, nil
			}
			return nil, errkind.Errorf(kindNotFound, "secret %s is not defined", uuid)
		}})
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "images")
	if err := m.Create("p"); err != nil {
		t.Fatal(err)
	}
	if err := m.Define("p", []byte(`<pool type='dir'><name>q</name><target><path>`+target+`</path></target></pool>`)); !errors.Is(err, kindInvalid) {
		t.Fatalf("name mismatch: %v", err)
	}
	if err := m.Define("p", []byte(`<pool type='dir'><name>p</name><target><path>`+target+`</path></target></pool>`)); err != nil {
		t.Fatal(err)
	}
	if err := m.Control(ctx, "p", "start"); !errors.Is(err, kindInvalid) || !strings.Contains(err.Error(), "build") {
		t.Fatalf("start before build: %v", err)
	}
	if err := m.CreateVolume("p", "a"); !errors.Is(err, kindInvalid) {
		t.Fatalf("volume in inactive pool: %v", err)
	}
	for _, c := range []string{"build", "start", "refresh", "autostart on"} {
		if err := m.Control(ctx, "p", c); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
	}
	if err := m.Control(ctx, "p", "frobnicate"); !errors.Is(err, kindInvalid) || m.LastError("p") == "" {
		t.Fatalf("bad command: %v", err)
	}
	if s, _ := m.State("p"); s != "running autostart" {
		t.Fatalf("state %q", s)
	}
	define := func(vol, xml string) error {
		if err := m.CreateVolume("p", vol); err != nil {
			return err
		}
		return m.DefineVolume(ctx, "p", vol, []byte(xml))
	}
	if err := define("base.img", `<volume><name>base.img</name><capacity unit='MiB'>4</capacity><allocation unit='MiB'>4</allocation></volume>`); err != nil {
		t.Fatal(err)
	}
	if err := define("top.qcow2", `<volume><name>top.qcow2</name><capacity unit='M'>8</capacity><target><format type='qcow2'/></target><backingStore><path>base.img</path></backingStore></volume>`); err != nil {
		t.Fatal(err)
	}
	if err := define("sec.img", `<volume><name>sec.img</name><capacity unit='M'>4</capacity><target><encryption format='luks'><secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption></target></volume>`); err != nil {
		t.Fatal(err)
	}
	if err := define("sec.qcow2", `<volume><name>sec.qcow2</name><capacity unit='M'>4</capacity><target><format type='qcow2'/><encryption format='luks'><secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption></target></volume>`); err != nil {
		t.Fatal(err)
	}
	if c, _ := m.VolumeConfig(ctx, "p", "sec.qcow2"); !strings.Contains(string(c), "<format type='qcow2'/>") || !strings.Contains(string(c), "<encryption format='luks'/>") {
		t.Errorf("LUKS qcow2 config:\n%s", c)
	}
	// Refusals change nothing.
	if err := define("bad", `<volume><name>bad</name></volume>`); !errors.Is(err, kindInvalid) {
		t.Fatalf("bad XML: %v", err)
	}
	if err := m.DefineVolume(ctx, "p", "base.img", []byte(`<volume><name>base.img</name><capacity>1</capacity></volume>`)); !errors.Is(err, kindExist) {
		t.Fatalf("redefine: %v", err)
	}
	if err := define("nosecret", `<volume><name>nosecret</name><capacity>1048576</capacity><target><encryption format='luks'><secret type='passphrase' uuid='11111111-2222-3333-4444-555555555555'/></encryption></target></volume>`); !errors.Is(err, kindInvalid) || !strings.Contains(err.Error(), "not defined") {
		t.Fatalf("missing secret: %v", err)
	}
	if _, err := os.Stat(filepath.Join(target, "nosecret")); err == nil {
		t.Fatal("a refused volume left its file")
	}

	base, err := m.VolumeConfig(ctx, "p", "base.img")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<capacity unit='bytes'>4194304</capacity>", "<allocation unit='bytes'>4194304</allocation>", "<format type='raw'/>", "<path>" + target + "/base.img</path>", "<mode>0600</mode>"} {
		if !strings.Contains(string(base), want) {
			t.Errorf("base.img config lacks %s:\n%s", want, base)
		}
	}
	top, err := m.VolumeConfig(ctx, "p", "top.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<capacity unit='bytes'>8388608</capacity>", "<format type='qcow2'/>", "<backingStore>\n    <path>" + target + "/base.img</path>\n    <format type='raw'/>"} {
		if !strings.Contains(string(top), want) {
			t.Errorf("top.qcow2 config lacks %s:\n%s", want, top)
		}
	}
	if strings.Contains(string(top), "<allocation unit='bytes'>8388608") {
		t.Errorf("qcow2 allocation is its capacity: %s", top)
	}
	sec, _ := m.VolumeConfig(ctx, "p", "sec.img")
	if !strings.Contains(string(sec), "<encryption format='luks'/>") || !strings.Contains(string(sec), "<format type='raw'/>") {
		t.Errorf("LUKS volume config:\n%s", sec)
	}
	// The LUKS image opens with the secret, and only with it.
	obj := "secret,id=s,data=" + string(secret)
	if out, err := exec.Command("qemu-io", "--object", obj, "-c", "read 0 512", "--image-opts", "driver=luks,key-secret=s,file.filename="+target+"/sec.img").CombinedOutput(); err != nil {
		t.Fatalf("LUKS image with its secret: %v %s", err, out)
	}
	if _, err := exec.Command("qemu-io", "--object", "secret,id=s,data=wrong", "-c", "read 0 512", "--image-opts", "driver=luks,key-secret=s,file.filename="+target+"/sec.img").CombinedOutput(); err == nil {
		t.Fatal("LUKS image opens with a wrong passphrase")
	}
	if out, err := exec.Command("qemu-io", "--object", obj, "-c", "read 0 512", "--image-opts", "driver=qcow2,encrypt.key-secret=s,file.filename="+target+"/sec.qcow2").CombinedOutput(); err != nil {
		t.Fatalf("LUKS qcow2 image with its secret: %v %s", err, out)
	}
	img, err := m.Resolve(ctx, "p", "top.qcow2")
	if err != nil || img.Format != "qcow2" || img.Path != target+"/top.qcow2" || len(img.Backing) != 1 || img.Backing[0].Format != "raw" || img.Backing[0].Path != target+"/base.img" {
		t.Fatalf("resolve: %+v %v", img, err)
	}
	// Refused definitions leave their (empty) slots, as a refused
	// config.xml leaves the directory made by mkdir.
	if got := strings.Join(m.VolumeNames("p"), " "); got != "bad base.img nosecret sec.img sec.qcow2 top.qcow2" {
		t.Fatalf("volumes %q", got)
	}
	if err := m.DeleteVolume("p", "bad"); err != nil || m.VolumeExists("p", "bad") {
		t.Fatalf("drop slot: %v", err)
	}
	// A restarted manager keeps the active pool and its autostart mark.
	m2, err := New(Options{ConfigDir: filepath.Join(dir, "etc"), RunDir: filepath.Join(dir, "run")})
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := m2.State("p"); s != "running autostart" {
		t.Fatalf("after restart: %q", s)
	}
	if err := m.Remove("p"); !errors.Is(err, kindBusy) {
		t.Fatalf("remove active: %v", err)
	}
	if err := m.DeleteVolume("p", "sec.img"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(target + "/sec.img"); err == nil {
		t.Fatal("deleted volume's file remains")
	}
	if err := m.Control(ctx, "p", "destroy"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.VolumePath("p", "base.img"); !errors.Is(err, kindInvalid) {
		t.Fatalf("path in inactive pool: %v", err)
	}
	// At the next mount, an autostart pool starts.
	m3, err := New(Options{ConfigDir: filepath.Join(dir, "etc"), RunDir: filepath.Join(dir, "run")})
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := m3.State("p"); s != "inactive autostart" {
		t.Fatalf("before autostart: %q", s)
	}
	m3.Autostart(ctx)
	if s, _ := m3.State("p"); s != "running autostart" {
		t.Fatalf("after autostart: %q (%s)", s, m3.LastError("p"))
	}
	if err := m3.Control(ctx, "p", "autostart off"); err != nil {
		t.Fatal(err)
	}
	if err := m3.Control(ctx, "p", "destroy"); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove("p"); err != nil {
		t.Fatal(err)
	}
}

func TestPoolTypesHostSupport(t *testing.T) {
	dir := t.TempDir()
	m, _ := New(Options{ConfigDir: filepath.Join(dir, "etc"), RunDir: filepath.Join(dir, "run")})
	m.Create("n")
	err := m.Define("n", []byte(`<pool type='netfs'><name>n</name><source><host name='h'/><dir path='/e'/></source><target><path>/mnt/n</path></target></pool>`))
	if !errors.Is(err, kindInvalid) || !strings.Contains(err.Error(), "netfs") {
		t.Fatalf("netfs: %v", err)
	}
	if c, _ := m.Config("n"); c != nil {
		t.Fatal("a refused definition was stored")
	}
	m.Create("vg")
	err = m.Define("vg", []byte(`<pool type='logical'><name>vg</name></pool>`))
	if !errors.Is(err, kindInvalid) || !strings.Contains(err.Error(), "logical") {
		t.Fatalf("logical: %v", err)
	}
}

// TestFSPool mounts a filesystem pool: a file with ext4 made by build
// --overwrite stands for the block device (mount(8) attaches a loop
// device), volumes are made in it, destroy unmounts it.
func TestFSPool(t *testing.T) {
	needQemuImg(t)
	if err := hostSupports(&Pool{Type: "fs", Format: "ext4"}); err != nil {
		t.Skipf("fs pools on this host: %v", err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	dev := filepath.Join(dir, "dev.img")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, 32<<20); err != nil {
		t.Fatal(err)
	}
	m, _ := New(Options{ConfigDir: filepath.Join(dir, "etc"), RunDir: filepath.Join(dir, "run")})
	target := filepath.Join(dir, "mnt")
	m.Create("f")
	if err := m.Define("f", []byte(`<pool type='fs'><name>f</name><source><device path='`+dev+`'/><format type='ext4'/></source><target><path>`+target+`</path></target></pool>`)); err != nil {
		t.Fatal(err)
	}
	if err := m.Control(ctx, "f", "build --overwrite"); err != nil {
		t.Fatal(err)
	}
	if err := m.Control(ctx, "f", "start"); err != nil {
		if strings.Contains(err.Error(), "mount") {
			t.Skipf("this host cannot loop-mount: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("umount", target).Run() })
	if !isMountpoint(target) {
		t.Fatal("started fs pool is not mounted")
	}
	if err := m.CreateVolume("f", "v.qcow2"); err != nil {
		t.Fatal(err)
	}
	if err := m.DefineVolume(ctx, "f", "v.qcow2", []byte(`<volume><name>v.qcow2</name><capacity unit='M'>4</capacity><target><format type='qcow2'/></target></volume>`)); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := m.Config("f"); !strings.Contains(string(cfg), "<device path='"+dev+"'/>") || strings.Contains(string(cfg), "<capacity unit='bytes'>0<") {
		t.Fatalf("fs pool config:\n%s", cfg)
	}
	if err := m.Control(ctx, "f", "destroy"); err != nil {
		t.Fatal(err)
	}
	if isMountpoint(target) {
		t.Fatal("destroyed fs pool is still mounted")
	}
	if _, err := os.Stat(filepath.Join(target, "v.qcow2")); err == nil {
		t.Fatal("the volume is visible with the filesystem unmounted")
	}
}
