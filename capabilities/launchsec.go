package capabilities

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// LaunchSecurityHost is what the host kernel offers confidential guests
// (<launchSecurity>), read from the KVM module parameters and firmware
// files libvirt reads. A false field has its reason in Missing, so that a
// refused start can name the host feature that is absent.
type LaunchSecurityHost struct {
	// SEV, SEVES and SEVSNP are kvm_amd's sev, sev_es and sev_snp
	// parameters (AMD Secure Encrypted Virtualization, its Encrypted
	// State and Secure Nested Paging generations).
	SEV, SEVES, SEVSNP bool
	// TDX is kvm_intel's tdx parameter (Intel Trust Domain Extensions).
	TDX bool
	// S390PV is /sys/firmware/uv/prot_virt_host (IBM Secure Execution).
	S390PV bool
	// SGX is the SGX virtual EPC device, /dev/sgx_vepc.
	SGX bool
	// Why maps a feature name ("sev", "sev-es", "sev-snp", "tdx",
	// "s390-pv", "sgx") that is false to what the host lacks.
	Why map[string]string `json:",omitempty"`
}

// Missing returns why the host lacks feature ("sev", "sev-es", "sev-snp",
// "tdx", "s390-pv", "sgx"), "" when it has it.
func (h LaunchSecurityHost) Missing(feature string) string {
	ok := map[string]bool{"sev": h.SEV, "sev-es": h.SEVES, "sev-snp": h.SEVSNP, "tdx": h.TDX,
		"s390-pv": h.S390PV, "sgx": h.SGX}[feature]
	if ok {
		return ""
	}
	if w := h.Why[feature]; w != "" {
		return w
	}
	return "the host does not offer " + feature
}

// launchSecurityParams are the host files probed for each feature: the
// file, the kernel module it belongs to ("" for none) and what the
// feature is called in messages.
var launchSecurityParams = []struct {
	feature, file, module, what string
}{
	{"sev", "sys/module/kvm_amd/parameters/sev", "kvm_amd", "AMD SEV"},
	{"sev-es", "sys/module/kvm_amd/parameters/sev_es", "kvm_amd", "AMD SEV-ES"},
	{"sev-snp", "sys/module/kvm_amd/parameters/sev_snp", "kvm_amd", "AMD SEV-SNP"},
	{"tdx", "sys/module/kvm_intel/parameters/tdx", "kvm_intel", "Intel TDX"},
	{"s390-pv", "sys/firmware/uv/prot_virt_host", "", "IBM Secure Execution (s390 protected virtualization)"},
}

// probeLaunchSecurity reads the launch-security facts of the host under
// root ("/" on a real host).
func probeLaunchSecurity(root string) LaunchSecurityHost {
	h := LaunchSecurityHost{Why: map[string]string{}}
	set := map[string]*bool{"sev": &h.SEV, "sev-es": &h.SEVES, "sev-snp": &h.SEVSNP, "tdx": &h.TDX, "s390-pv": &h.S390PV}
	for _, p := range launchSecurityParams {
		path := filepath.Join(root, p.file)
		data, err := os.ReadFile(path)
		shown := "/" + p.file
		switch {
		case err != nil && p.module != "" && !exists(filepath.Join(root, "sys/module", p.module)):
			h.Why[p.feature] = fmt.Sprintf("%s needs the %s kernel module, which is not loaded (no %s)", p.what, p.module, shown)
		case err != nil:
			h.Why[p.feature] = fmt.Sprintf("%s is not available: %s does not exist", p.what, shown)
		default:
			v := strings.TrimSpace(string(data))
			if v == "Y" || v == "y" || v == "1" {
				*set[p.feature] = true
			} else {
				h.Why[p.feature] = fmt.Sprintf("%s is disabled on this host (%s is %q)", p.what, shown, v)
			}
		}
	}
	if exists(filepath.Join(root, "dev/sgx_vepc")) {
		h.SGX = true
	} else {
		h.Why["sgx"] = "Intel SGX is not available: /dev/sgx_vepc does not exist"
	}
	if len(h.Why) == 0 {
		h.Why = nil
	}
	return h
}

// launchSecurityKey condenses the host's launch-security facts for the
// capabilities cache key: QEMU's answer to query-sev-capabilities and
// query-sgx-capabilities changes when they do.
func launchSecurityKey(root string) string {
	h := probeLaunchSecurity(root)
	var on []string
	for _, f := range []struct {
		name string
		v    bool
	}{{"sev", h.SEV}, {"sev-es", h.SEVES}, {"sev-snp", h.SEVSNP}, {"tdx", h.TDX}, {"s390-pv", h.S390PV}, {"sgx", h.SGX}} {
		if f.v {
			on = append(on, f.name)
		}
	}
	return strings.Join(on, ",")
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// SEVCapability is QEMU's query-sev-capabilities answer: the host's SEV
// platform as QEMU sees it through KVM.
type SEVCapability struct {
	PDH       string `json:"pdh,omitempty"`
	CertChain string `json:"certChain,omitempty"`
	CPU0ID    string `json:"cpu0ID,omitempty"`
	// CBitPos is the page-table bit that marks encrypted memory; libvirt
	// fills <cbitpos> from it when the definition has none.
	CBitPos int `json:"cbitpos"`
	// ReducedPhysBits is how many physical address bits encryption takes.
	ReducedPhysBits int `json:"reducedPhysBits"`
}

// SGXCapability is QEMU's query-sgx-capabilities answer.
type SGXCapability struct {
	SGX1     bool         `json:"sgx1"`
	SGX2     bool         `json:"sgx2"`
	FLC      bool         `json:"flc"`
	Sections []SGXSection `json:"sections,omitempty"`
}

// SGXSection is one EPC section of the host.
type SGXSection struct {
	Node    int    `json:"node"`
	SizeKiB uint64 `json:"sizeKiB"`
}

// QMP reply shapes of the launch-security queries.
type (
	qmpSEVCapability struct {
		PDH             string `json:"pdh"`
		CertChain       string `json:"cert-chain"`
		CPU0ID          string `json:"cpu0-id"`
		CBitPos         int    `json:"cbitpos"`
		ReducedPhysBits int    `json:"reduced-phys-bits"`
	}
	qmpSGXCapability struct {
		SGX      bool `json:"sgx"`
		SGX1     bool `json:"sgx1"`
		SGX2     bool `json:"sgx2"`
		FLC      bool `json:"flc"`
		Sections []struct {
			Node int    `json:"node"`
			Size uint64 `json:"size"`
		} `json:"sections"`
	}
)

// setLaunchSecurity records the answers to query-sev-capabilities and
// query-sgx-capabilities (or why they failed) in e.
func setLaunchSecurity(e *Emulator, sev *qmpSEVCapability, sevErr error, sgx *qmpSGXCapability, sgxErr error) {
	switch {
	case sevErr != nil:
		e.SEVError = "query-sev-capabilities: " + sevErr.Error()
	case sev != nil:
		e.SEV = &SEVCapability{PDH: sev.PDH, CertChain: sev.CertChain, CPU0ID: sev.CPU0ID,
			CBitPos: sev.CBitPos, ReducedPhysBits: sev.ReducedPhysBits}
	}
	switch {
	case sgxErr != nil:
		e.SGXError = "query-sgx-capabilities: " + sgxErr.Error()
	case sgx != nil && sgx.SGX:
		c := &SGXCapability{SGX1: sgx.SGX1, SGX2: sgx.SGX2, FLC: sgx.FLC}
		for _, s := range sgx.Sections {
			c.Sections = append(c.Sections, SGXSection{Node: s.Node, SizeKiB: s.Size / 1024})
		}
		e.SGX = c
	case sgx != nil:
		e.SGXError = "query-sgx-capabilities: SGX is not enabled"
	}
}

// sevXML is the <sev> element of domcapabilities' <features>.
func sevXML(h *Host, e *Emulator, virt string) *node {
	if virt != "kvm" || e.SEV == nil || !h.LaunchSecurity.SEV || !e.Devices["sev-guest"] {
		return el("sev", "supported", "no")
	}
	return el("sev", "supported", "yes").add(
		textEl("cbitpos", itoa(e.SEV.CBitPos)),
		textEl("reducedPhysBits", itoa(e.SEV.ReducedPhysBits)))
}

// sgxXML is the <sgx> element of domcapabilities' <features>.
func sgxXML(h *Host, e *Emulator, virt string) *node {
	if virt != "kvm" || e.SGX == nil || !h.LaunchSecurity.SGX || !e.Devices["memory-backend-epc"] {
		return el("sgx", "supported", "no")
	}
	var total uint64
	secs := el("sections")
	for _, s := range e.SGX.Sections {
		total += s.SizeKiB
		secs.add(el("section", "node", itoa(s.Node), "size", fmt.Sprint(s.SizeKiB), "unit", "KiB"))
	}
	n := el("sgx", "supported", "yes").add(
		textEl("flc", yesNo(e.SGX.FLC)),
		textEl("sgx1", yesNo(e.SGX.SGX1)),
		textEl("sgx2", yesNo(e.SGX.SGX2)),
		textEl("section_size", fmt.Sprint(total), "unit", "KiB"))
	if len(e.SGX.Sections) > 0 {
		n.add(secs)
	}
	return n
}

// tdxXML is the <tdx> element of domcapabilities' <features>.
func tdxXML(h *Host, e *Emulator, virt string) *node {
	return el("tdx", "supported", yesNo(virt == "kvm" && h.LaunchSecurity.TDX && e.Devices["tdx-guest"]))
}

// s390PVXML is the <s390-pv> element of domcapabilities' <features>.
func s390PVXML(h *Host, e *Emulator, virt string) *node {
	return el("s390-pv", "supported", yesNo(virt == "kvm" && h.LaunchSecurity.S390PV && e.Devices["s390-pv-guest"]))
}

// KVM VM types (KVM_CAP_VM_TYPES bits, linux/kvm.h for x86).
const (
	kvmCapVMTypes = 235
	kvmCheckExt   = 0xAE03 // _IO(KVMIO, 0x03)
	vmTypeSNP     = 4      // KVM_X86_SNP_VM
	vmTypeTDX     = 5      // KVM_X86_TDX_VM
)

// kvmVMTypes asks the KVM device which VM types it can create
// (KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES)); 0 when the kernel does not say
// (no device, or a kernel before 6.10 that has no such capability).
func kvmVMTypes(dev string) uint64 {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return 0
	}
	defer f.Close()
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), kvmCheckExt, kvmCapVMTypes)
	if errno != 0 || int64(r) < 0 {
		return 0
	}
	return uint64(r)
}

// applyVMTypes refines the sysfs answers with KVM's own list of VM types,
// when the kernel gives one: SEV-SNP and TDX guests are VM types of
// their own, so a module parameter that says Y while KVM cannot create
// such a VM (no firmware, no TDX module loaded) does not count.
func (h *LaunchSecurityHost) applyVMTypes(types uint64) {
	if types == 0 {
		return
	}
	for _, t := range []struct {
		on      *bool
		bit     uint
		feature string
		what    string
	}{{&h.SEVSNP, vmTypeSNP, "sev-snp", "AMD SEV-SNP"}, {&h.TDX, vmTypeTDX, "tdx", "Intel TDX"}} {
		if *t.on && types&(1<<t.bit) == 0 {
			*t.on = false
			if h.Why == nil {
				h.Why = map[string]string{}
			}
			h.Why[t.feature] = fmt.Sprintf("%s is enabled in the kernel module, but KVM cannot create such guests (KVM_CAP_VM_TYPES is %#x)", t.what, types)
		}
	}
}
