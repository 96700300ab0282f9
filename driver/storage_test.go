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

	"github.com/qemufs/qemufs/secrets"
	"github.com/qemufs/qemufs/storage"
)

// TestVolumeAndLUKSDisks starts a guest (paused, real QEMU) with a qcow2
// pool volume over a raw one as <disk type='volume'> and a LUKS volume as
// an encrypted file disk: the live definition shows the resolved file and
// backing chain, QEMU opens the LUKS image (so the passphrase reached it
// through the master key), which never appears on its command line; a
// missing volume or secret fails the start with the reason.
func TestVolumeAndLUKSDisks(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (scripts/deps.sh)")
	}
	d := newDriver(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	base := filepath.Dir(d.inst.LibDir)
	sec, err := secrets.New(secrets.Options{ConfigDir: filepath.Join(d.inst.ConfigDir, "secrets"), KeyFile: filepath.Join(base, "secrets", "key")})
	if err != nil {
		t.Fatal(err)
	}
	pools, err := storage.New(storage.Options{ConfigDir: filepath.Join(d.inst.ConfigDir, "storage"), RunDir: filepath.Join(d.inst.RunDir, "storage"), Secret: sec.Lookup})
	if err != nil {
		t.Fatal(err)
	}
	d.pools, d.secs = pools, sec
	const u = "6f1e2a44-9d3c-4b7a-8e21-0c5d7a9b3f10"
	const pass = "driver-test-passphrase"
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(sec.Create(u))
	must(sec.Define(u, []byte(`<secret private='yes'/>`)))
	must(sec.SetValue(u, []byte(pass)))
	images := filepath.Join(base, "images")
	must(pools.Create("p"))
	must(pools.Define("p", []byte(`<pool type='dir'><name>p</name><target><path>`+images+`</path></target></pool>`)))
	must(pools.Control(ctx, "p", "build"))
	must(pools.Control(ctx, "p", "start"))
	for name, xml := range map[string]string{
		"base.img":  `<volume><name>base.img</name><capacity unit='M'>4</capacity></volume>`,
		"top.qcow2": `<volume><name>top.qcow2</name><capacity unit='M'>8</capacity><target><format type='qcow2'/></target><backingStore><path>base.img</path></backingStore></volume>`,
		"luks.img":  `<volume><name>luks.img</name><capacity unit='M'>4</capacity><target><encryption format='luks'><secret type='passphrase' uuid='` + u + `'/></encryption></target></volume>`,
	} {
		if name == "top.qcow2" {
			continue // after its backing volume
		}
		must(pools.CreateVolume("p", name))
		must(pools.DefineVolume(ctx, "p", name, []byte(xml)))
	}
	must(pools.CreateVolume("p", "top.qcow2"))
	must(pools.DefineVolume(ctx, "p", "top.qcow2", []byte(`<volume><name>top.qcow2</name><capacity unit='M'>8</capacity><target><format type='qcow2'/></target><backingStore><path>base.img</path></backingStore></volume>`)))

	xml := func(name, volume, secret string) string {
		return `<domain type='qemu'><name>` + name + `</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<disk type='volume' device='disk'><source pool='p' volume='` + volume + `'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='` + images + `/luks.img'><encryption format='luks'><secret type='passphrase' uuid='` + secret + `'/></encryption></source><target dev='vdb' bus='virtio'/></disk>
<serial type='pty'/></devices></domain>`
	}
	must(d.Create("g"))
	must(d.Define("g", []byte(xml("g", "top.qcow2", u))))
	must(d.Control(ctx, "g", "start --paused"))
	live, err := d.LiveXML("g")
	must(err)
	for _, want := range []string{images + "/top.qcow2", images + "/base.img", "<format type='raw'/>", "<driver name='qemu' type='qcow2'/>"} {
		if !strings.Contains(string(live), want) {
			t.Errorf("live XML lacks %s:\n%s", want, live)
		}
	}
	d.mu.Lock()
	r := d.doms["g"].run
	d.mu.Unlock()
	if fi, err := os.Stat(masterKeyFile(r)); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("master key file: %v %v", fi, err)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", r.proc.Pid))
	if strings.Contains(string(cmdline), pass) || !strings.Contains(string(cmdline), `"key-secret":"libvirt-1-format-encryption-secret0"`) {
		t.Fatalf("QEMU's command line: %q", cmdline)
	}
	// A volume the guest uses (or a backing file of one) is not deleted.
	pools.SetInUse(d.DiskUser)
	for _, v := range []string{"top.qcow2", "base.img"} {
		if err := pools.DeleteVolume("p", v); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "guest g") {
			t.Errorf("delete %s in use: %v", v, err)
		}
	}
	must(d.Control(ctx, "g", "destroy"))
	if u := d.DiskUser(images + "/top.qcow2"); u != "" {
		t.Errorf("a stopped guest still uses top.qcow2: %q", u)
	}
	if _, err := os.Stat(masterKeyFile(r)); err == nil {
		t.Error("the master key outlives the run")
	}

	// A LUKS volume as a volume disk: with its <encryption> it starts,
	// without it the start says what is missing.
	lv := func(name, enc string) string {
		return `<domain type='qemu'><name>` + name + `</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<disk type='volume' device='disk'><source pool='p' volume='luks.img'>` + enc + `</source><target dev='vda' bus='virtio'/></disk>
<serial type='pty'/></devices></domain>`
	}
	must(d.Create("lv"))
	must(d.Define("lv", []byte(lv("lv", `<encryption format='luks'><secret type='passphrase' uuid='`+u+`'/></encryption>`))))
	must(d.Control(ctx, "lv", "start --paused"))
	must(d.Control(ctx, "lv", "destroy"))
	must(d.Create("lvn"))
	must(d.Define("lvn", []byte(lv("lvn", ""))))
	if err := d.Control(ctx, "lvn", "start"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "is encrypted") {
		t.Errorf("LUKS volume without <encryption>: %v", err)
	}
	for _, c := range []struct{ name, vol, secret, want string }{
		{"nov", "nosuch.img", u, "nosuch.img"},
		{"nos", "top.qcow2", "0b0b0b0b-1111-2222-3333-444444444444", "0b0b0b0b-1111-2222-3333-444444444444 is not defined"},
	} {
		must(d.Create(c.name))
		must(d.Define(c.name, []byte(xml(c.name, c.vol, c.secret))))
		err := d.Control(ctx, c.name, "start")
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: start: %v, want EINVAL naming %s", c.name, err, c.want)
		}
		if s, _ := d.StateLine(c.name); !strings.HasPrefix(s, "shut off") {
			t.Errorf("%s: state %q after a failed start", c.name, s)
		}
	}
}
