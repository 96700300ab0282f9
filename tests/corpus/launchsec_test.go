package corpus_test

import (
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
