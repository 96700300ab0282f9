package capabilities

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const realQEMU = "/usr/bin/qemu-system-x86_64"

// realQEMUDir is a search dir holding only the real qemu-system-x86_64.
func realQEMUDir(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(realQEMU); err != nil {
		t.Skipf("no %s: %v", realQEMU, err)
	}
	dir := t.TempDir()
	if err := os.Symlink(realQEMU, filepath.Join(dir, "qemu-system-x86_64")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func xmllint(t *testing.T, name string, data []byte) {
	t.Helper()
	path, err := exec.LookPath("xmllint")
	if err != nil {
		t.Skip("xmllint not installed (apt-get install libxml2-utils); XML not checked with it")
	}
	cmd := exec.Command(path, "--noout", "-")
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("xmllint %s: %v\n%s", name, err, out)
	}
}

// TestProbeRealQEMU probes the QEMU installed here and checks what the
// issue asks of capabilities.xml: x86_64 with machines pc and q35, domain
// type qemu; kvm and hvf refused with a message naming what is available.
func TestProbeRealQEMU(t *testing.T) {
	dir := realQEMUDir(t)
	p := newTestProber(t, dir)
	start := time.Now()
	caps, err := p.Probe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cold probe: %v", time.Since(start))
	e := caps.Emulators[0]
	if e.Err != "" || e.Arch != "x86_64" || e.VersionNum < 4002000 {
		t.Fatalf("emulator: %+v", e)
	}
	_, pc, err := caps.Lookup("x86_64", "qemu", "pc", "")
	if err != nil || !strings.HasPrefix(pc.Name, "pc-i440fx-") {
		t.Errorf("Lookup pc: %v %v", pc, err)
	}
	_, q35, err := caps.Lookup("x86_64", "qemu", "q35", "")
	if err != nil || !strings.HasPrefix(q35.Name, "pc-q35-") {
		t.Errorf("Lookup q35: %v %v", q35, err)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		if _, _, err := caps.Lookup("x86_64", "kvm", "", ""); err == nil || !strings.Contains(err.Error(), `domain type "kvm" is not available for arch x86_64 on this host (available: qemu)`) {
			t.Errorf("Lookup kvm on a host without /dev/kvm: %v", err)
		}
	}
	if _, _, err := caps.Lookup("x86_64", "hvf", "", ""); err == nil || !strings.Contains(err.Error(), `domain type "hvf" is not available`) {
		t.Errorf("Lookup hvf: %v", err)
	}
	if !e.Devices["virtio-blk-pci"] || !e.Commands["query-cpu-definitions"] {
		t.Errorf("devices/commands not probed: %d devices, %d commands", len(e.Devices), len(e.Commands))
	}
	var usable int
	for _, m := range e.CPUModels {
		if m.Usable {
			usable++
		}
	}
	if usable == 0 || len(e.CPUFeatures) == 0 {
		t.Errorf("CPU models: %d usable of %d, %d features", usable, len(e.CPUModels), len(e.CPUFeatures))
	}
	t.Logf("host CPU: %s %s (%s), %d extra features", caps.Host.CPU.Vendor, caps.Host.CPU.Model, caps.Host.CPU.ModelName, len(caps.Host.CPU.Features))

	x := caps.XML()
	xmllint(t, "capabilities.xml", x)
	for _, want := range []string{
		"<arch name='x86_64'>", "<wordsize>64</wordsize>", "<emulator>" + e.Path + "</emulator>",
		"canonical='" + pc.Name + "'", ">pc</machine>", ">q35</machine>", "<domain type='qemu'/>",
	} {
		if !bytes.Contains(x, []byte(want)) {
			t.Errorf("capabilities.xml lacks %s", want)
		}
	}
	names := caps.DomainCapsNames()
	for _, n := range []string{"x86_64-pc-qemu.xml", "x86_64-q35-qemu.xml", "x86_64-" + q35.Name + "-qemu.xml"} {
		if !contains(names, n) {
			t.Errorf("no domcapabilities %s in %d names", n, len(names))
		}
	}
	dc, err := caps.DomainCapsXML("x86_64-q35-qemu.xml")
	if err != nil {
		t.Fatal(err)
	}
	xmllint(t, "x86_64-q35-qemu.xml", dc)
	for _, want := range []string{"<machine>" + q35.Name + "</machine>", "<domain>qemu</domain>", "<value>virtio</value>", "<mode name='custom' supported='yes'>"} {
		if !bytes.Contains(dc, []byte(want)) {
			t.Errorf("domcapabilities lacks %s", want)
		}
	}
	if testing.Verbose() {
		os.WriteFile(filepath.Join(os.TempDir(), "qemufs-caps.xml"), x, 0o644)
		os.WriteFile(filepath.Join(os.TempDir(), "qemufs-domcaps.xml"), dc, 0o644)
	}

	// Warm: the same probe again comes from the cache, without QEMU.
	start = time.Now()
	warm, err := p.Probe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("warm probe: %v", time.Since(start))
	if !warm.Emulators[0].Cached {
		t.Error("second probe did not use the cache")
	}
	if !bytes.Equal(warm.XML(), x) {
		t.Error("capabilities.xml differs between a fresh and a cached probe")
	}
}

// TestProbeInstalled probes everything installed in /usr/bin in parallel:
// here qemu-system-x86_64, the qemu-system-i386 shell wrapper (the fd it
// inherits survives the wrapper's exec) and qemu-system-x86_64-microvm, a
// second x86_64 emulator that must not shadow the main one.
func TestProbeInstalled(t *testing.T) {
	if _, err := os.Stat(realQEMU); err != nil {
		t.Skip(err)
	}
	p := newTestProber(t, "/usr/bin")
	p.SearchDirs = nil // the defaults
	_, err := os.Stat("/dev/kvm")
	kvmMissing := err != nil
	start := time.Now()
	caps, err := p.Probe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cold probe of %d binaries: %v", len(caps.Emulators), time.Since(start))
	for _, e := range caps.Emulators {
		t.Logf("%s: arch %s, %d machines, %d CPU models, err %q", e.Path, e.Arch, len(e.Machines), len(e.CPUModels), e.Err)
		// Debian's qemu-system-x86_64-microvm is built without TCG: with no
		// KVM here it cannot start, and says so.
		if e.Err != "" && !(kvmMissing && strings.Contains(e.Err, "failed to initialize kvm")) {
			t.Errorf("%s: %s", e.Path, e.Err)
		}
		if want := archFromName(e.Path); want != e.Arch {
			t.Errorf("%s reports arch %s, its name says %s", e.Path, e.Arch, want)
		}
	}
	if e, _, err := caps.Lookup("x86_64", "qemu", "", ""); err != nil || e.Path != realQEMU {
		t.Errorf("Lookup x86_64 picked %v, %v; want %s", e, err, realQEMU)
	}
	if _, err := os.Stat("/usr/bin/qemu-system-i386"); err == nil {
		if e, m, err := caps.Lookup("i686", "qemu", "pc", ""); err != nil || e.Path != "/usr/bin/qemu-system-i386" {
			t.Errorf("Lookup i686: %v %v %v", e, m, err)
		}
	}
	xmllint(t, "capabilities.xml", caps.XML())
}
