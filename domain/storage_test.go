package domain

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func diskDomain(t *testing.T, disks string) *Domain {
	t.Helper()
	d, err := Parse([]byte(`<domain type='qemu'><name>s</name><memory unit='MiB'>64</memory><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>` + disks + `</devices></domain>`))
	if err != nil {
		t.Fatal(err)
	}
	if err := Expand(d, nil); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestEncryptSecret checks the QEMU secret encryption against a known
// vector (the one libvirt's tests give: key 0..31, IV 0..15).
func TestEncryptSecret(t *testing.T) {
	key, iv := make([]byte, 32), make([]byte, 16)
	for i := range key {
		key[i] = byte(i)
	}
	copy(iv, key)
	out, err := EncryptSecret(key, iv, []byte("AQCVn5hO6HzFAhAAq0NCv8jtJcIcE+HOBlMQ1A"))
	if err != nil {
		t.Fatal(err)
	}
	if got := base64.StdEncoding.EncodeToString(out); got != "9eao5F8qtkGt+seB1HYivWIxbtwUu6MQtg1zpj/oDtUsPr1q8wBYM91uEHCn6j/1" {
		t.Fatalf("got %s", got)
	}
	// A whole block of padding when the value fills its blocks.
	if out, _ := EncryptSecret(key, iv, make([]byte, 16)); len(out) != 32 {
		t.Fatalf("padding: %d bytes", len(out))
	}
}

func TestEncryptedDiskArgs(t *testing.T) {
	enc := func(format, attrs string) string {
		return `<disk type='file' device='disk'><driver name='qemu' type='` + format + `'/><source file='/i'><encryption ` + attrs + `><secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption></source><target dev='vda' bus='virtio'/></disk>`
	}
	var asked []string
	opts := CommandOptions{QMPSocket: "/q", DomainDir: "/d", MasterKey: make([]byte, 32), MasterKeyFile: "/d/master-key.aes",
		Secret: func(uuid, typ, id string) ([]byte, error) {
			asked = append(asked, uuid+"|"+typ+"|"+id)
			if uuid == "" && id == "/missing" {
				return nil, errors.New("no secret has usage volume \"/missing\"")
			}
			return []byte("pw"), nil
		}}
	cases := []struct {
		name, disk string
		want, err  []string
	}{
		{"raw luks", enc("raw", "format='luks'"), []string{`"driver":"luks","key-secret":"libvirt-1-format-encryption-secret0"`, `"id":"masterKey0","format":"raw","file":"/d/master-key.aes"`}, nil},
		{"qcow2 luks", enc("qcow2", "format='luks' engine='qemu'"), []string{`"driver":"qcow2","encrypt":{"format":"luks","key-secret":"libvirt-1-format-encryption-secret0"}`}, nil},
		{"qcow2 default", enc("qcow2", ""), []string{`"encrypt":{"format":"luks"`}, nil},
		{"raw default", enc("raw", ""), nil, []string{"only known for qcow2"}},
		{"qcow aes", enc("qcow2", "format='qcow'"), nil, []string{"qcow encryption"}},
		{"librbd", enc("raw", "format='luks' engine='librbd'"), nil, []string{"engine='qemu'"}},
		{"no secret", `<disk type='file'><source file='/i'><encryption format='luks'/></source><target dev='vda' bus='virtio'/></disk>`, nil, []string{"needs a <secret"}},
		{"usage", `<disk type='file'><driver name='qemu' type='raw'/><source file='/i'/><encryption format='luks'><secret type='passphrase' usage='/missing'/></encryption><target dev='vda' bus='virtio'/></disk>`, nil, []string{"/missing"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := diskDomain(t, c.disk)
			if !d.UsesSecrets() {
				t.Fatal("UsesSecrets is false")
			}
			cmd, err := BuildCommand(d, opts)
			if c.err != nil {
				if err == nil || !strings.Contains(err.Error(), c.err[0]) {
					t.Fatalf("err %v, want %q", err, c.err[0])
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s := strings.Join(cmd.Args, " ")
			for _, w := range c.want {
				if !strings.Contains(s, w) {
					t.Errorf("argv lacks %s:\n%s", w, s)
				}
			}
			if strings.Contains(s, "pw") && !strings.Contains(s, `"data":`) {
				t.Errorf("the value is in clear:\n%s", s)
			}
		})
	}
	// Without master key (validation): unsupported, not a definition error.
	_, err := BuildCommand(diskDomain(t, enc("raw", "format='luks'")), CommandOptions{QMPSocket: "/q", DomainDir: "/d"})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("no master key: %v", err)
	}
	if diskDomain(t, `<disk type='file'><source file='/i'/><target dev='vda' bus='virtio'/></disk>`).UsesSecrets() {
		t.Fatal("a plain disk uses secrets")
	}
}

func TestResolveVolumes(t *testing.T) {
	d := diskDomain(t, `<disk type='volume' device='disk'><source pool='p' volume='v'/><target dev='vda' bus='virtio'/></disk>
<disk type='volume' device='disk'><driver name='qemu' type='raw'/><source pool='p' volume='w'/><target dev='vdb' bus='virtio'/></disk>`)
	if v := d.Volumes(); len(v) != 2 || v[0] != (VolumeRef{"vda", "p", "v"}) {
		t.Fatalf("volumes %+v", v)
	}
	if _, err := BuildCommand(d.Clone(), CommandOptions{QMPSocket: "/q", DomainDir: "/d"}); err == nil || !strings.Contains(err.Error(), "not resolved") {
		t.Fatalf("unresolved volume: %v", err)
	}
	err := d.ResolveVolumes(func(r VolumeRef) (VolumeImage, error) {
		if r.Volume == "v" {
			return VolumeImage{Path: "/img/v.qcow2", Format: "qcow2", Backing: []VolumeImage{{Path: "/img/b.qcow2", Format: "qcow2"}, {Path: "/img/base.raw", Format: "raw"}}}, nil
		}
		return VolumeImage{Path: "/dev/sdz", Format: "qcow2", Block: true}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	x := string(d.XML())
	for _, w := range []string{`<disk type='file' device='disk'>`, `<driver name='qemu' type='qcow2'/>`, `<source file='/img/v.qcow2'/>`,
		`<backingStore type='file'>`, `<source file='/img/base.raw'/>`, `<disk type='block' device='disk'>`, `<source dev='/dev/sdz'/>`, `<driver name='qemu' type='raw'/>`} {
		if !strings.Contains(x, w) {
			t.Errorf("resolved XML lacks %s:\n%s", w, x)
		}
	}
	if len(d.Volumes()) != 0 {
		t.Fatal("volumes left after resolving")
	}
	dk := d.Disks()
	if dk[0].Source != "/img/v.qcow2" || strings.Join(dk[0].BackingStore, " ") != "/img/b.qcow2 /img/base.raw" {
		t.Fatalf("disks %+v", dk[0])
	}
	cmd, err := BuildCommand(d, CommandOptions{QMPSocket: "/q", DomainDir: "/d"})
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Join(cmd.Args, " ")
	if !strings.Contains(s, `"driver":"qcow2","file":"libvirt-3-storage","backing":"libvirt-2-format"`) || !strings.Contains(s, `"driver":"raw","file":"libvirt-1-storage"}`) {
		t.Fatalf("argv:\n%s", s)
	}
	// An encrypted volume needs the disk's <encryption>.
	d3 := diskDomain(t, `<disk type='volume'><source pool='p' volume='v'/><target dev='vda' bus='virtio'/></disk>`)
	if err := d3.ResolveVolumes(func(VolumeRef) (VolumeImage, error) {
		return VolumeImage{Path: "/l", Format: "raw", Encrypted: true}, nil
	}); err == nil || !strings.Contains(err.Error(), "<encryption format='luks'>") {
		t.Fatalf("encrypted volume without <encryption>: %v", err)
	}
	d4 := diskDomain(t, `<disk type='volume'><source pool='p' volume='v'><encryption format='luks'><secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption></source><target dev='vda' bus='virtio'/></disk>`)
	if err := d4.ResolveVolumes(func(VolumeRef) (VolumeImage, error) {
		return VolumeImage{Path: "/l", Format: "raw", Encrypted: true}, nil
	}); err != nil {
		t.Fatalf("encrypted volume with <encryption>: %v", err)
	}
	if !strings.Contains(string(d4.XML()), "<source file='/l'>") {
		t.Fatalf("resolved encrypted volume:\n%s", d4.XML())
	}
	// A resolver failure names the disk.
	d2 := diskDomain(t, `<disk type='volume'><source pool='p' volume='v'/><target dev='vda' bus='virtio'/></disk>`)
	if err := d2.ResolveVolumes(func(VolumeRef) (VolumeImage, error) { return VolumeImage{}, errors.New("pool p is not active") }); err == nil || !strings.Contains(err.Error(), "disk vda: pool p") {
		t.Fatalf("resolve error: %v", err)
	}
}
