package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qemufs/qemufs/domain"
)

func TestParseMigrateArgs(t *testing.T) {
	for _, c := range []struct {
		args string
		want migrateOptions
		err  string // "" for success; "usage" for errBadArgs
	}{
		{args: "/d", want: migrateOptions{dest: "/d"}},
		{args: "/d/ --live --uri tcp:10.0.0.2:4444 --bandwidth 8 --compressed",
			want: migrateOptions{dest: "/d", live: true, uri: "tcp:10.0.0.2:4444", bandwidth: 8, compressed: true}},
		{args: "--live /d --bandwidth=2 --uri=tcp:[fe80::1]", want: migrateOptions{dest: "/d", live: true, bandwidth: 2, uri: "tcp:[fe80::1]"}},
		{args: "/d --live --postcopy --persistent --undefinesource", want: migrateOptions{dest: "/d", live: true, postcopy: true, persistent: true, undefineSource: true}},
		{args: "/d --offline --persistent", want: migrateOptions{dest: "/d", offline: true, persistent: true}},
		{args: "", err: "usage"},
		{args: "/d /e", err: "usage"},
		{args: "/d --fast", err: "usage"},
		{args: "/d --uri", err: "usage"},
		{args: "d", err: "absolute path"},
		{args: "/d --live --offline", err: "exclude"},
		{args: "/d --offline", err: "needs --persistent"},
		{args: "/d --offline --persistent --bandwidth 3", err: "only the definition"},
		{args: "/d --postcopy", err: "needs --live"},
		{args: "/d --bandwidth 0", err: "positive"},
		{args: "/d --bandwidth x", err: "positive"},
		{args: "/d --uri unix:/x", err: "tcp:HOST"},
		{args: "/d --uri tcp:h:99999", err: "bad port"},
		{args: "/d --uri tcp:", err: "no host"},
		{args: "/d --live --copy-storage-all", want: migrateOptions{dest: "/d", live: true, copyStorage: true}},
	} {
		got, err := parseMigrateArgs(strings.Fields(c.args))
		switch {
		case c.err == "usage":
			if !errors.Is(err, errBadArgs) {
				t.Errorf("%q: err %v, want bad arguments", c.args, err)
			}
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: err %v, want %q", c.args, err, c.err)
			}
		case err != nil:
			t.Errorf("%q: %v", c.args, err)
		case got != c.want:
			t.Errorf("%q: got %+v, want %+v", c.args, got, c.want)
		}
	}
}

func TestParseTCPURI(t *testing.T) {
	for _, c := range []struct {
		uri  string
		host string
		port int
	}{
		{"tcp:10.99.0.2", "10.99.0.2", 0},
		{"tcp:10.99.0.2:49152", "10.99.0.2", 49152},
		{"tcp://host.example:1", "host.example", 1},
		{"tcp:[::1]:7", "::1", 7},
		{"tcp:[::1]", "::1", 0},
	} {
		h, p, err := parseTCPURI(c.uri)
		if err != nil || h != c.host || p != c.port {
			t.Errorf("%q: %q %d %v, want %q %d", c.uri, h, p, err, c.host, c.port)
		}
	}
}

const testCaps = `<capabilities><host><uuid>u1</uuid><cpu><arch>x86_64</arch><model>%MODEL%</model><vendor>%VENDOR%</vendor>%FEATS%</cpu></host>
<guest><os_type>hvm</os_type><arch name='x86_64'><emulator>/usr/bin/qemu-system-x86_64</emulator>
<machine>pc-i440fx-7.2</machine><machine canonical='pc-i440fx-7.2'>pc</machine><machine>pc-q35-7.2</machine>
<domain type='qemu'/><domain type='kvm'/></arch></guest></capabilities>`

func caps(t *testing.T, model, vendor string, feats ...string) *hostCaps {
	var f strings.Builder
	for _, n := range feats {
		f.WriteString("<feature name='" + n + "'/>")
	}
	x := strings.NewReplacer("%MODEL%", model, "%VENDOR%", vendor, "%FEATS%", f.String()).Replace(testCaps)
	c, err := parseHostCaps([]byte(x))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const testDomCaps = `<domainCapabilities><cpu>
<mode name='host-passthrough' supported='no'/>
<mode name='custom' supported='yes'><model usable='yes'>qemu64</model><model usable='no'>Icelake-Server</model>
<blockers model='Icelake-Server'><feature name='avx512f'/></blockers></mode></cpu></domainCapabilities>`

func TestCheckCompatible(t *testing.T) {
	src := caps(t, "Icelake-Server", "Intel", "avx2", "sha-ni")
	for _, c := range []struct {
		name, virt, machine, emulator, cpu string
		dst                                *hostCaps
		err                                string
	}{
		{name: "plain", virt: "qemu", machine: "pc-i440fx-7.2", dst: caps(t, "Skylake", "AMD")},
		{name: "kvm q35", virt: "kvm", machine: "pc-q35-7.2", dst: src},
		{name: "machine missing", virt: "qemu", machine: "pc-i440fx-8.0", dst: src, err: `no machine type "pc-i440fx-8.0"`},
		{name: "emulator missing", virt: "qemu", machine: "pc-i440fx-7.2", emulator: "/opt/qemu", dst: src, err: "no emulator /opt/qemu"},
		{name: "custom usable", virt: "qemu", machine: "pc-i440fx-7.2", cpu: `<cpu mode='custom'><model>qemu64</model></cpu>`, dst: src},
		{name: "custom not usable", virt: "qemu", machine: "pc-i440fx-7.2", cpu: `<cpu mode='custom'><model>Icelake-Server</model></cpu>`, dst: src, err: "not usable on the destination (missing: avx512f)"},
		{name: "custom unknown", virt: "qemu", machine: "pc-i440fx-7.2", cpu: `<cpu><model>Foo</model></cpu>`, dst: src, err: `no CPU model "Foo"`},
		{name: "kvm feature missing", virt: "kvm", machine: "pc-i440fx-7.2", cpu: `<cpu><model>qemu64</model><feature policy='require' name='sha-ni'/></cpu>`, dst: caps(t, "Skylake", "Intel", "avx2"), err: "lacks: sha-ni"},
		{name: "host-model superset", virt: "kvm", machine: "pc-i440fx-7.2", cpu: `<cpu mode='host-model'/>`, dst: caps(t, "Sapphire", "Intel", "avx2", "sha-ni", "amx")},
		{name: "host-model subset", virt: "kvm", machine: "pc-i440fx-7.2", cpu: `<cpu mode='host-model'/>`, dst: caps(t, "Skylake", "Intel", "avx2"), err: "lacks features of this host's (Icelake-Server): sha-ni"},
		{name: "host-model vendor", virt: "kvm", machine: "pc-i440fx-7.2", cpu: `<cpu mode='host-model'/>`, dst: caps(t, "EPYC", "AMD", "avx2", "sha-ni"), err: "vendor is AMD"},
		{name: "passthrough other model", virt: "kvm", machine: "pc-i440fx-7.2", cpu: `<cpu mode='host-passthrough'/>`, dst: caps(t, "Sapphire", "Intel", "avx2", "sha-ni"), err: "identical hosts"},
		{name: "passthrough same", virt: "kvm", machine: "pc-i440fx-7.2", cpu: `<cpu mode='host-passthrough'/>`, dst: src},
	} {
		emu := ""
		if c.emulator != "" {
			emu = "<emulator>" + c.emulator + "</emulator>"
		}
		x := `<domain type='` + c.virt + `'><name>g</name><memory>65536</memory><os><type arch='x86_64' machine='` + c.machine + `'>hvm</type></os>` + c.cpu + `<devices>` + emu + `</devices></domain>`
		def, err := domain.Parse([]byte(x))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		err = checkCompatible(def, src, c.dst, func(name string) ([]byte, error) {
			if name != "x86_64-"+c.machine+"-"+c.virt+".xml" {
				t.Errorf("%s: read domcapabilities %q", c.name, name)
			}
			return []byte(testDomCaps), nil
		})
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: err %v, want %q", c.name, err, c.err)
		}
	}
}

// TestCheckUserfaultfd: post-copy is refused at the destination, with
// what to do, when QEMU cannot have userfaultfd(2) there.
func TestCheckUserfaultfd(t *testing.T) {
	dir := t.TempDir()
	sysctl := func(v string) string {
		p := filepath.Join(dir, "v"+strings.TrimSpace(v))
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		name   string
		path   string
		ptrace bool
		err    string // "" for allowed
	}{
		{"sysctl 1", sysctl("1\n"), false, ""},
		{"sysctl 0", sysctl("0\n"), false, "set vm.unprivileged_userfaultfd=1 on the destination host"},
		{"sysctl 0, QEMU with CAP_SYS_PTRACE", sysctl("0\n"), true, ""},
		{"no sysctl: QEMU judges", filepath.Join(dir, "missing"), false, ""},
		{"unreadable", dir, false, "cannot be read"},
	} {
		err := checkUserfaultfd(c.path, c.ptrace)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), "userfaultfd")):
			t.Errorf("%s: err %v, want %q", c.name, err, c.err)
		}
	}
}

func TestRefusalKind(t *testing.T) {
	for _, c := range []struct {
		err       error
		def, want error
	}{
		{fmt.Errorf("no (%w)", syscall.EINVAL), ErrIO, ErrInvalid},
		{fmt.Errorf("no (%w)", syscall.EBUSY), ErrIO, ErrBusy},
		{fmt.Errorf("no (%w)", syscall.EEXIST), ErrInvalid, ErrExist},
		{fmt.Errorf("no (%w)", syscall.EIO), ErrInvalid, ErrInvalid},
		{errors.New("no"), ErrIO, ErrIO},
	} {
		if got := refusalKind(c.err, c.def); got != c.want {
			t.Errorf("%v (default %v): %v, want %v", c.err, c.def, got, c.want)
		}
	}
}
