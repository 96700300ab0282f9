package capabilities

import (
	"bytes"
	"encoding/xml"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := 0; i < len(gl) || i < len(wl); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("%s differs at line %d (go test -update rewrites it):\n- want: %s\n-  got: %s", path, i+1, w, g)
			}
		}
	}
}

// fixtureCaps is a host that is not this one: the fixture host with KVM
// and swtpm, an x86_64 emulator with KVM, i686 and aarch64 ones, and a
// broken sparc one.
func fixtureCaps(t *testing.T) *Capabilities {
	t.Helper()
	if basePageKiB != 4 {
		t.Skipf("fixture assumes 4 KiB pages, host has %d KiB", basePageKiB)
	}
	root := fixtureHost(t)
	h := probeHost(root)
	h.Arch, h.KVM, h.SWTPM = "x86_64", true, "/usr/bin/swtpm"
	h.SecModels = []SecModel{
		{Model: "selinux", DOI: "0", BaseLabels: map[string]string{"kvm": "system_u:system_r:svirt_t:s0", "qemu": "system_u:system_r:svirt_tcg_t:s0"}},
		{Model: "dac", DOI: "0", BaseLabels: map[string]string{"kvm": "+107:+107", "qemu": "+107:+107"}},
	}
	fw := findFirmware(root)
	f := strings.Fields
	devices := toSet(f("VGA cirrus-vga virtio-vga virtio-gpu-pci bochs-display ramfb qxl-vga ide-hd ide-cd isa-fdc scsi-hd scsi-block " +
		"virtio-blk-pci virtio-blk-pci-transitional usb-storage ich9-ahci usb-host vfio-pci virtio-rng-pci rng-random rng-builtin " +
		"virtio-9p-pci vhost-user-fs-pci tpm-tis tpm-crb tpm-emulator usb-redir virtio-crypto-pci cryptodev-backend-builtin " +
		"memory-backend-file memory-backend-ram memory-backend-memfd iothread vmcoreinfo vmgenid kvm-accel tcg-accel"))
	commands := toSet(f("query-vnc query-spice blockdev-add blockdev-backup block-dirty-bitmap-add query-cpu-model-expansion"))
	x86 := &Emulator{
		Path: "/usr/bin/qemu-system-x86_64", Arch: "x86_64", Version: "7.2.0", VersionNum: 7002000, Package: "fixture",
		Machines: []Machine{
			{Name: "isapc", MaxCPUs: 1},
			{Name: "pc-i440fx-7.2", Alias: "pc", MaxCPUs: 255, Default: true},
			{Name: "pc-q35-7.2", Alias: "q35", MaxCPUs: 288},
		},
		KVMPresent: true, ProbedAccel: "kvm",
		CPUModels: []CPUModel{
			{Name: "Haswell", AliasOf: "Haswell-v1", Unavailable: []string{"hle", "rtm"}},
			{Name: "Haswell-v1", Vendor: "GenuineIntel", Unavailable: []string{"hle", "rtm"},
				Features: f("fpu sse sse2 pni ssse3 sse4.1 sse4.2 avx avx2 hle rtm lahf-lm")},
			{Name: "Skylake-Client", AliasOf: "Skylake-Client-v1", Usable: true},
			{Name: "Skylake-Client-v1", Vendor: "GenuineIntel", Usable: true,
				Features: f("fpu sse sse2 pni ssse3 sse4.1 sse4.2 avx avx2 lahf-lm tsc-deadline vmx")},
			{Name: "host", Usable: true},
			{Name: "max", Usable: true},
			{Name: "qemu64", AliasOf: "qemu64-v1", Usable: true},
			{Name: "qemu64-v1", Vendor: "AuthenticAMD", Usable: true, Features: f("fpu sse sse2 lahf-lm")},
		},
		CPUFeatures: f("avx avx2 avx512f fpu hle lahf-lm pni rtm sse sse2 sse4.1 sse4.2 ssse3 tsc-deadline vme vmx"),
		Devices:     devices, Commands: commands, Firmware: fw["x86_64"],
	}
	i686 := &Emulator{
		Path: "/usr/bin/qemu-system-i386", Arch: "i686", Version: "7.2.0", VersionNum: 7002000,
		Machines:   []Machine{{Name: "pc-i440fx-7.2", Alias: "pc", MaxCPUs: 255, Default: true}},
		KVMPresent: true, ProbedAccel: "kvm", Devices: devices, Commands: commands, Firmware: fw["i686"],
		CPUModels: []CPUModel{{Name: "qemu32", AliasOf: "qemu32-v1", Usable: true}, {Name: "qemu32-v1", Usable: true}},
	}
	arm := &Emulator{
		Path: "/usr/bin/qemu-system-aarch64", Arch: "aarch64", Version: "7.2.0", VersionNum: 7002000,
		Machines:    []Machine{{Name: "virt-7.2", Alias: "virt", MaxCPUs: 512}},
		ProbedAccel: "tcg", Devices: toSet(f("virtio-blk-device virtio-rng-device rng-random ramfb virtio-gpu-device tcg-accel")),
		CPUModels: []CPUModel{{Name: "cortex-a57", Usable: true}, {Name: "max", Usable: true}},
	}
	broken := &Emulator{Path: "/usr/bin/qemu-system-sparc", Arch: "sparc", Err: "probe /usr/bin/qemu-system-sparc: timed out"}
	emus := []*Emulator{broken, arm, i686, x86}
	for _, e := range emus {
		if e.Err == "" {
			e.Accels = Accels(AccelSupport{TCG: true, KVM: h.KVM}, binaryAccels(e))
		}
	}
	sortEmulators(emus)
	describeHostCPU(&h, emus)
	return &Capabilities{Host: h, Emulators: emus}
}

func TestCapabilitiesXMLGolden(t *testing.T) {
	caps := fixtureCaps(t)
	if caps.Host.CPU.Model != "Skylake-Client" {
		t.Errorf("host model %q, want Skylake-Client", caps.Host.CPU.Model)
	}
	x := caps.XML()
	golden(t, "capabilities.golden", x)
	xmllint(t, "capabilities.xml", x)
}

func TestDomainCapsGolden(t *testing.T) {
	caps := fixtureCaps(t)
	for _, name := range []string{"x86_64-q35-kvm.xml", "x86_64-pc-qemu.xml", "aarch64-virt-qemu.xml"} {
		t.Run(name, func(t *testing.T) {
			x, err := caps.DomainCapsXML(name)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "domcaps-"+strings.TrimSuffix(name, ".xml")+".golden", x)
			xmllint(t, name, x)
		})
	}
}

// TestDomainCapsNames: every file listed renders, says what its name says,
// and is what domain validation (Lookup) picks; nothing else is listed.
func TestDomainCapsNames(t *testing.T) {
	caps := fixtureCaps(t)
	names := caps.DomainCapsNames()
	want := f2("aarch64-virt-7.2-qemu.xml aarch64-virt-qemu.xml " +
		"i686-pc-i440fx-7.2-kvm.xml i686-pc-i440fx-7.2-qemu.xml i686-pc-kvm.xml i686-pc-qemu.xml " +
		"x86_64-isapc-kvm.xml x86_64-isapc-qemu.xml x86_64-pc-i440fx-7.2-kvm.xml x86_64-pc-i440fx-7.2-qemu.xml " +
		"x86_64-pc-kvm.xml x86_64-pc-q35-7.2-kvm.xml x86_64-pc-q35-7.2-qemu.xml x86_64-pc-qemu.xml x86_64-q35-kvm.xml x86_64-q35-qemu.xml")
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("- want: %v\n-  got: %v", want, names)
	}
	for _, n := range names {
		x, err := caps.DomainCapsXML(n)
		if err != nil {
			t.Fatal(err)
		}
		var dc struct {
			Path    string `xml:"path"`
			Domain  string `xml:"domain"`
			Machine string `xml:"machine"`
			Arch    string `xml:"arch"`
		}
		if err := xml.Unmarshal(x, &dc); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		e, m, err := caps.Lookup(dc.Arch, dc.Domain, strings.TrimSuffix(strings.TrimPrefix(n, dc.Arch+"-"), "-"+dc.Domain+".xml"), "")
		if err != nil || e.Path != dc.Path || m.Name != dc.Machine {
			t.Errorf("%s says %+v; Lookup says %v %v %v", n, dc, e, m, err)
		}
	}
	for _, bad := range []string{"sparc-sun4m-qemu.xml", "x86_64-virt-qemu.xml", "aarch64-virt-kvm.xml", "x86_64-pc-hvf.xml", "../capabilities.xml"} {
		if _, err := caps.DomainCapsXML(bad); !errors.Is(err, ErrUnsupported) {
			t.Errorf("DomainCapsXML(%s) = %v, want ErrUnsupported", bad, err)
		}
	}
}

// TestXMLWellFormed runs every document through encoding/xml too, so the
// shape is checked where xmllint is missing.
func TestXMLWellFormed(t *testing.T) {
	caps := fixtureCaps(t)
	caps.Host.CPU.ModelName = `<weird> & 'quoted' "name"`
	caps.Emulators[0].Path = "/opt/q&a/<qemu>'s"
	docs := map[string][]byte{"capabilities.xml": caps.XML()}
	for _, n := range caps.DomainCapsNames() {
		docs[n], _ = caps.DomainCapsXML(n)
	}
	for n, x := range docs {
		d := xml.NewDecoder(bytes.NewReader(x))
		for {
			_, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", n, err)
			}
		}
	}
	var c struct {
		Guest []struct {
			Arch struct {
				Emulator string `xml:"emulator"`
			} `xml:"arch"`
		} `xml:"guest"`
	}
	xml.Unmarshal(docs["capabilities.xml"], &c)
	if len(c.Guest) == 0 || c.Guest[0].Arch.Emulator != caps.Emulators[0].Path {
		t.Errorf("escaped path did not round-trip: %+v", c)
	}
}

func f2(s string) []string { return strings.Fields(s) }
