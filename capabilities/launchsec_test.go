package capabilities

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProbeLaunchSecurity reads the KVM parameters of fixture hosts: each
// feature is on only when its parameter says so, and a missing one names
// the file or module the host lacks.
func TestProbeLaunchSecurity(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  LaunchSecurityHost
		why   map[string]string // feature -> substring of Missing
	}{
		{name: "no modules", want: LaunchSecurityHost{},
			why: map[string]string{"sev": "kvm_amd kernel module, which is not loaded", "tdx": "kvm_intel kernel module",
				"s390-pv": "/sys/firmware/uv/prot_virt_host does not exist", "sgx": "/dev/sgx_vepc"}},
		{name: "amd with sev and sev-es", files: map[string]string{
			"sys/module/kvm_amd/parameters/sev": "Y\n", "sys/module/kvm_amd/parameters/sev_es": "1\n",
			"sys/module/kvm_amd/parameters/sev_snp": "N\n"},
			want: LaunchSecurityHost{SEV: true, SEVES: true},
			why:  map[string]string{"sev-snp": `is "N"`, "tdx": "kvm_intel"}},
		{name: "amd module without sev parameters", files: map[string]string{"sys/module/kvm_amd/parameters/npt": "Y\n"},
			why: map[string]string{"sev": "/sys/module/kvm_amd/parameters/sev does not exist"}},
		{name: "intel tdx", files: map[string]string{"sys/module/kvm_intel/parameters/tdx": "Y\n", "dev/sgx_vepc": ""},
			want: LaunchSecurityHost{TDX: true, SGX: true}, why: map[string]string{"sev": "kvm_amd"}},
		{name: "s390 secure execution", files: map[string]string{"sys/firmware/uv/prot_virt_host": "1\n"},
			want: LaunchSecurityHost{S390PV: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for p, v := range tc.files {
				full := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(full, []byte(v), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got := probeLaunchSecurity(root)
			if got.SEV != tc.want.SEV || got.SEVES != tc.want.SEVES || got.SEVSNP != tc.want.SEVSNP ||
				got.TDX != tc.want.TDX || got.S390PV != tc.want.S390PV || got.SGX != tc.want.SGX {
				t.Errorf("probe = %+v, want %+v", got, tc.want)
			}
			for f, sub := range tc.why {
				if m := got.Missing(f); !strings.Contains(m, sub) {
					t.Errorf("Missing(%q) = %q, want it to contain %q", f, m, sub)
				}
			}
			for f, on := range map[string]bool{"sev": got.SEV, "tdx": got.TDX, "s390-pv": got.S390PV} {
				if on && got.Missing(f) != "" {
					t.Errorf("Missing(%q) = %q for a present feature", f, got.Missing(f))
				}
			}
		})
	}
}

// TestSetLaunchSecurity records QEMU's answers, and its refusals as the
// reason.
func TestSetLaunchSecurity(t *testing.T) {
	e := &Emulator{}
	setLaunchSecurity(e, &qmpSEVCapability{}, errors.New("SEV is not enabled in KVM"),
		&qmpSGXCapability{}, errors.New("SGX is not enabled in KVM"))
	if e.SEV != nil || !strings.Contains(e.SEVError, "SEV is not enabled in KVM") || e.SGX != nil || e.SGXError == "" {
		t.Errorf("refusals: %+v", e)
	}
	e = &Emulator{}
	setLaunchSecurity(e, &qmpSEVCapability{CBitPos: 51, ReducedPhysBits: 1, PDH: "pdh"}, nil,
		&qmpSGXCapability{SGX: true, SGX1: true, FLC: true, Sections: []struct {
			Node int    `json:"node"`
			Size uint64 `json:"size"`
		}{{Node: 0, Size: 64 << 20}}}, nil)
	if e.SEV == nil || e.SEV.CBitPos != 51 || e.SEV.ReducedPhysBits != 1 || e.SEV.PDH != "pdh" {
		t.Errorf("SEV = %+v", e.SEV)
	}
	if e.SGX == nil || !e.SGX.SGX1 || e.SGX.SGX2 || len(e.SGX.Sections) != 1 || e.SGX.Sections[0].SizeKiB != 65536 {
		t.Errorf("SGX = %+v", e.SGX)
	}
}

// TestDomainCapsLaunchSecurity: a KVM host with SEV and a QEMU that
// answered query-sev-capabilities lists <sev supported='yes'> with the
// platform's cbitpos; the TCG file of the same host and a host without the
// kernel parameter list it unsupported.
func TestDomainCapsLaunchSecurity(t *testing.T) {
	caps := fixtureCaps(t)
	var x86 *Emulator
	for _, e := range caps.Emulators {
		if e.Arch == "x86_64" {
			x86 = e
		}
	}
	x86.Devices["sev-guest"], x86.Devices["tdx-guest"], x86.Devices["memory-backend-epc"] = true, true, true
	x86.SEV = &SEVCapability{CBitPos: 47, ReducedPhysBits: 1}
	x86.SGX = &SGXCapability{SGX1: true, FLC: true, Sections: []SGXSection{{Node: 0, SizeKiB: 65536}}}
	get := func(name string) string {
		t.Helper()
		x, err := caps.DomainCapsXML(name)
		if err != nil {
			t.Fatal(err)
		}
		xmllint(t, name, x)
		return string(x)
	}
	caps.Host.LaunchSecurity = LaunchSecurityHost{SEV: true, TDX: true, SGX: true}
	kvm := get("x86_64-q35-kvm.xml")
	for _, want := range []string{
		"<sev supported='yes'>\n      <cbitpos>47</cbitpos>\n      <reducedPhysBits>1</reducedPhysBits>\n    </sev>",
		"<tdx supported='yes'/>",
		"<sgx supported='yes'>\n      <flc>yes</flc>\n      <sgx1>yes</sgx1>\n      <sgx2>no</sgx2>\n      <section_size unit='KiB'>65536</section_size>\n      <sections>\n        <section node='0' size='65536' unit='KiB'/>",
		"<s390-pv supported='no'/>",
	} {
		if !strings.Contains(kvm, want) {
			t.Errorf("kvm domcaps lack %q:\n%s", want, kvm)
		}
	}
	tcg := get("x86_64-q35-qemu.xml")
	for _, want := range []string{"<sev supported='no'/>", "<tdx supported='no'/>", "<sgx supported='no'/>"} {
		if !strings.Contains(tcg, want) {
			t.Errorf("TCG domcaps lack %q", want)
		}
	}
	caps.Host.LaunchSecurity = LaunchSecurityHost{}
	none := get("x86_64-q35-kvm.xml")
	for _, want := range []string{"<sev supported='no'/>", "<tdx supported='no'/>", "<sgx supported='no'/>"} {
		if !strings.Contains(none, want) {
			t.Errorf("domcaps of a host without the kernel support lack %q", want)
		}
	}
}

// TestCacheLaunchSecurity: QEMU's SEV and SGX answers survive the cache,
// and an entry made under other host launch-security parameters is not
// used (the key differs), so loading kvm_amd with sev=1 re-probes.
func TestCacheLaunchSecurity(t *testing.T) {
	dir := t.TempDir()
	key := cacheKey{Format: cacheFormat, Path: "/usr/bin/qemu-system-x86_64", Size: 1, MtimeNs: 2, CtimeNs: 3, Qemufs: "t", LaunchSec: ""}
	e := &Emulator{Path: key.Path, Arch: "x86_64", Version: "9.2.0", VersionNum: 9002000,
		SEV: &SEVCapability{CBitPos: 51, ReducedPhysBits: 1, PDH: "pdh"}, SGXError: "query-sgx-capabilities: SGX is not enabled in KVM"}
	if err := storeCache(dir, key, e); err != nil {
		t.Fatal(err)
	}
	got := loadCache(dir, key)
	if got == nil || got.SEV == nil || *got.SEV != *e.SEV || got.SGX != nil || got.SGXError != e.SGXError {
		t.Fatalf("cached: %+v", got)
	}
	key.LaunchSec = "sev,sev-es"
	if loadCache(dir, key) != nil {
		t.Error("an entry probed without SEV was used on a host with SEV")
	}
}

// TestApplyVMTypes: KVM's VM type list overrules a module parameter that
// says Y for SEV-SNP or TDX when KVM cannot create such a VM; no list
// (old kernel) leaves the parameters' answer.
func TestApplyVMTypes(t *testing.T) {
	h := LaunchSecurityHost{SEV: true, SEVSNP: true, TDX: true}
	h.applyVMTypes(0)
	if !h.SEVSNP || !h.TDX {
		t.Fatalf("no VM type list changed the answer: %+v", h)
	}
	h.applyVMTypes(1<<0 | 1<<vmTypeSNP)
	if !h.SEVSNP || h.TDX || !h.SEV {
		t.Fatalf("after types 0x11: %+v", h)
	}
	if m := h.Missing("tdx"); !strings.Contains(m, "KVM cannot create such guests") {
		t.Errorf("Missing(tdx) = %q", m)
	}
	t.Logf("this host's KVM_CAP_VM_TYPES: %#x", kvmVMTypes("/dev/kvm"))
}
