package corpus_test

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/capabilities"
	"github.com/qemufs/qemufs/domain"
)

// libvirtLibDir is the domain lib directory of libvirt's test suite: the
// SEV blobs are written there and passed by path.
const libvirtLibDir = "/tmp/lib/domain--1-QEMUGuest1"

// corpusEmulator is the emulator a corpus case's caps name: the QEMU
// version of "x86_64-<ver>" (latest is 8.0 in libvirt 9.0), with the
// SEV platform of libvirt's fake host (cbitpos 47, reduced-phys-bits 1).
func corpusEmulator(caps string) *capabilities.Emulator {
	e := &capabilities.Emulator{Path: "/usr/bin/qemu-system-x86_64", Arch: "x86_64", Version: "8.0.0", VersionNum: 8000000,
		SEV: &capabilities.SEVCapability{CBitPos: 47, ReducedPhysBits: 1}}
	switch caps {
	case "x86_64-6.0.0":
		e.Version, e.VersionNum = "6.0.0", 6000000
		e.Machines = []capabilities.Machine{{Name: "pc-i440fx-6.0", Alias: "pc", Default: true, MaxCPUs: 255}}
	}
	return e
}

// argOf returns the values of every occurrence of option opt in args.
func argOf(args []string, opt string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == opt {
			out = append(out, args[i+1])
		}
	}
	return out
}

// qomTypes returns the sorted qom-type of every -object.
func qomTypes(args []string) []string {
	var out []string
	for _, o := range argOf(args, "-object") {
		t := o
		if i := strings.Index(o, `"qom-type":"`); i >= 0 {
			t = o[i+len(`"qom-type":"`):]
			t = t[:strings.IndexByte(t, '"')]
		} else {
			t, _, _ = strings.Cut(o, ",")
		}
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// lsecObject returns the -object whose id is lsec0.
func lsecObject(args []string) string {
	for _, o := range argOf(args, "-object") {
		if strings.Contains(o, `"id":"lsec0"`) || strings.Contains(o, "id=lsec0") {
			return o
		}
	}
	return ""
}

// TestCorpusLaunchSecurity builds the argv of libvirt's launch-security-*
// cases and checks it against libvirt's expected argv: the launch
// security object exactly, the machine options libvirt sets for it, and
// the same set of objects and devices. (libvirt's secret master key is the
// one object qemufs has no use for.)
func TestCorpusLaunchSecurity(t *testing.T) {
	cases := loadCases(t)
	n := 0
	for _, c := range cases {
		if !strings.HasPrefix(c.name, "launch-security-") {
			continue
		}
		n++
		t.Run(c.name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(corpusDir, c.name+".xml"))
			if err != nil {
				t.Fatal(err)
			}
			d, err := domain.Parse(data)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			emu := corpusEmulator(c.caps)
			cmd, err := domain.BuildCommand(d, domain.CommandOptions{Emulator: emu, QMPSocket: "/run/q.qmp",
				DomainDir: libvirtLibDir, LibDir: libvirtLibDir})
			if err != nil {
				t.Fatalf("BuildCommand: %v", err)
			}
			exp, err := os.ReadFile(filepath.Join(corpusDir, c.expected))
			if err != nil {
				t.Fatal(err)
			}
			want := shellSplit(string(exp))
			if got, w := lsecObject(cmd.Args), lsecObject(want); got != w || w == "" {
				t.Errorf("launch security object:\n got: %s\nwant: %s", got, w)
			}
			gm, wm := argOf(cmd.Args, "-machine"), argOf(want, "-machine")
			if len(gm) != 1 || len(wm) != 1 {
				t.Fatalf("-machine: got %q, libvirt %q", gm, wm)
			}
			if gm[0] != wm[0] {
				t.Errorf("-machine:\n got: %s\nwant: %s", gm[0], wm[0])
			}
			var wantTypes []string
			for _, q := range qomTypes(want) {
				if q != "secret" {
					wantTypes = append(wantTypes, q)
				}
			}
			if g, w := strings.Join(qomTypes(cmd.Args), " "), strings.Join(wantTypes, " "); g != w {
				t.Errorf("objects: got %s, libvirt %s", g, w)
			}
			if g, w := strings.Join(deviceDrivers(cmd.Args), " "), strings.Join(deviceDrivers(want), " "); g != w {
				t.Errorf("devices: got %s, libvirt %s", g, w)
			}
		})
	}
	if n < 3 {
		t.Fatalf("only %d launch-security cases in the corpus (libvirt 9.0 has 3)", n)
	}
}

// TestCorpusNoSilentDrop covers the elements the audit found accepted and
// then not acted on: those now built are checked against libvirt's
// expected argv (the fragment is in libvirt's .args and in ours), those
// refused are refused with the element named.
func TestCorpusNoSilentDrop(t *testing.T) {
	loadCases(t) // skips without the corpus
	built := []struct{ name, fragment string }{
		{"vmcoreinfo", "vmcoreinfo"},
		{"pcihole64", "i440FX-pcihost.pci-hole64-size=1048576K"},
		{"pcihole64-q35", "q35-pcihost.pci-hole64-size=1048576K"},
		{"tseg-explicit-size", "mch.extended-tseg-mbytes=48"},
		{"disk-geometry", `"cyls":16383,"heads":16,"secs":63,"bios-chs-trans":"lba"`},
		{"video-qxl-resolution", "xres"},
		{"kvm-features", "kvm,dirty-ring-size=4096"},
		{"iothreads-ids-pool-sizes", `{"qom-type":"main-loop","id":"main-loop","thread-pool-min":8,"thread-pool-max":16}`},
		{"disk-metadata-cache", `"driver":"qcow2","cache-size":12345,`},
		{"disk-metadata-cache", `"driver":"qcow2","cache-size":1048576,`},
		{"usb-redir-filter-version", "0x08:0x15E1:0x2007:0x0109:1|0x08:0x15E1:0x2007:0x0940:1|-1:-1:-1:-1:0"},
		{"usb-redir-filter", "0x08:0x15E1:0x2007:0x0110:1|-1:-1:-1:-1:0"},
	}
	manifest := map[string]string{}
	for _, c := range loadCases(t) {
		manifest[c.name] = c.expected
	}
	build := func(name string) (*domain.Command, error) {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(corpusDir, name+".xml"))
		if err != nil {
			t.Fatal(err)
		}
		d, err := domain.Parse(data)
		if err != nil {
			t.Fatalf("%s: Parse: %v", name, err)
		}
		return domain.BuildCommand(d, domain.CommandOptions{QMPSocket: "/run/q.qmp", DomainDir: "/run/d"})
	}
	for _, tc := range built {
		t.Run(tc.name, func(t *testing.T) {
			exp, err := os.ReadFile(filepath.Join(corpusDir, manifest[tc.name]))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(strings.Join(shellSplit(string(exp)), " "), tc.fragment) {
				t.Fatalf("libvirt's argv lacks %q (test table wrong)", tc.fragment)
			}
			cmd, err := build(tc.name)
			if err != nil {
				t.Fatalf("BuildCommand: %v", err)
			}
			if got := strings.Join(cmd.Args, " "); !strings.Contains(got, tc.fragment) {
				t.Errorf("argv lacks libvirt's %q:\n%s", tc.fragment, got)
			}
		})
	}
	refused := []struct{ name, element string }{
		{"cpu-hotplug-startup", "<vcpus>"},
		{"cputune", "<iothread_period>"},
		{"disk-transient", "<transient>"},
		{"memory-hotplug-dimm", "<pagesize>"},
		{"memory-hotplug-nvdimm-pmem", "<pmem>"},
		{"numatune-hmat", "<interconnects>"},
		{"net-virtio-teaming", "<teaming>"},
		{"disk-network-http", "<cookies>"},
		{"disk-network-source-auth", "<auth>"},
		{"hugepages-numa-nodeset", "<page>"},
	}
	// 2 MiB pages for all of memory are what qemufs gives: accepted.
	if _, err := build("hugepages-default-2M"); err != nil {
		t.Errorf("hugepages-default-2M: %v", err)
	}
	for _, tc := range refused {
		t.Run("refuse "+tc.name, func(t *testing.T) {
			_, err := build(tc.name)
			var de *domain.Error
			if err == nil || !errors.As(err, &de) || !errors.Is(err, domain.ErrUnsupported) || !strings.Contains(err.Error(), tc.element+" is not supported") {
				t.Fatalf("BuildCommand: %v, want an unsupported error naming %s", err, tc.element)
			}
		})
	}
}
