package capabilities

// Capabilities is what probing found: the host and every usable emulator.
type Capabilities struct {
	Host      Host
	Emulators []*Emulator
}

// Host describes the machine qemufs runs on (libvirt's <host>).
type Host struct {
	UUID      string
	Arch      string // libvirt arch name: x86_64, aarch64, ...
	CPU       HostCPU
	NUMA      []NUMACell
	IOMMU     bool
	SecModels []SecModel

	// PageSizesKiB lists the page sizes the host offers (base page first,
	// then huge pages), in KiB.
	PageSizesKiB []uint64
	// Caches lists the host's shared CPU cache banks (level 3 when the
	// host has one, else the last level found).
	Caches []CacheBank
	// PowerManagement lists host suspend targets libvirt-style:
	// "suspend_mem", "suspend_disk", "suspend_hybrid".
	PowerManagement []string
	// MigrationTransports lists URI transports for live migration ("tcp").
	MigrationTransports []string
	// SWTPM is the path of the swtpm binary (TPM emulator backend), "" when
	// the host has none.
	SWTPM string
	// HVF reports that macOS Hypervisor.framework is usable (always false
	// elsewhere).
	HVF bool
	// KVM reports that the KVM device is present and can be opened (by
	// QEMU's user, when the prober was told how to check).
	KVM bool
	// KVMDenied says why a KVM device that is present is not usable by
	// QEMU's user ("" otherwise), for error messages.
	KVMDenied string
	// LaunchSecurity is what the host offers confidential guests (SEV,
	// SEV-ES, SEV-SNP, TDX, s390 PV, SGX), with the reason for each it
	// lacks.
	LaunchSecurity LaunchSecurityHost
}

// HostCPU is the host processor as libvirt reports it.
type HostCPU struct {
	Vendor    string // Intel, AMD, ...
	Model     string // the closest QEMU CPU model name
	ModelName string // /proc/cpuinfo "model name"
	Microcode string
	Sockets   int
	Dies      int
	Cores     int
	Threads   int
	// Features lists the host features (QEMU spelling) that the model does
	// not already imply: libvirt's <feature name=.../> under <host><cpu>.
	// When no model could be matched it lists every known host feature.
	Features []string

	// Family, ModelNum and Stepping are the CPUID signature (x86).
	Family, ModelNum, Stepping int
	// PhysAddrBits is the physical address width ("address sizes").
	PhysAddrBits int
	// Flags is the raw /proc/cpuinfo flags list (Linux spelling), kept to
	// compute host-model for each emulator without re-reading the host.
	Flags []string
}

// NUMACell is one host NUMA node.
type NUMACell struct {
	ID        int
	MemoryKiB uint64
	CPUs      []int

	// Pages counts the free-able pages of each size reserved on the node
	// (base pages: MemoryKiB / base size; huge pages: nr_hugepages).
	Pages []PageCount
	// Distances to every node, from /sys/devices/system/node/nodeN/distance.
	Distances []NUMADistance
	// Topology gives each of CPUs its place (same order as CPUs).
	Topology []CPUTopology
}

// PageCount is how many pages of one size a NUMA cell holds.
type PageCount struct {
	SizeKiB uint64
	Count   uint64
}

// NUMADistance is the distance from a cell to cell ID.
type NUMADistance struct {
	ID    int
	Value int
}

// CPUTopology places one host CPU (libvirt's <cpu id socket_id ...>).
type CPUTopology struct {
	ID       int
	SocketID int
	DieID    int
	CoreID   int
	Siblings []int
}

// CacheBank is one CPU cache instance shared by some CPUs.
type CacheBank struct {
	ID      int
	Level   int
	Type    string // both, code, data
	SizeKiB uint64
	CPUs    []int
}

// SecModel is an active security model (libvirt's <secmodel>).
type SecModel struct {
	Model string // selinux, apparmor, dac
	DOI   string
	// BaseLabels maps a virt type ("kvm", "qemu") to the base label.
	BaseLabels map[string]string
}

// Emulator is what one QEMU binary reported about itself.
type Emulator struct {
	Path    string
	Arch    string // libvirt arch name (x86_64, i686, aarch64, ...)
	Version string // "7.2.22"
	// VersionNum is major*1000000 + minor*1000 + micro.
	VersionNum int
	Package    string
	Machines   []Machine
	// Accels lists the accelerators usable on this host with this binary:
	// "tcg", and "kvm"/"hvf" when the host and binary support them.
	Accels    []string
	CPUModels []CPUModel
	// Devices holds the QOM type names the binary knows (qom-list-types).
	Devices map[string]bool
	// Commands holds the QMP command names (query-commands).
	Commands map[string]bool
	// Err is set when probing this binary failed or timed out; such an
	// emulator is reported, but no domain can use it.
	Err string

	// KVMPresent is query-kvm's "present": the binary was built with KVM.
	KVMPresent bool
	// ProbedAccel is the accelerator QEMU ran with while probing ("tcg" or
	// "kvm"); CPUModel.Usable is relative to it.
	ProbedAccel string
	// CPUFeatures lists every boolean CPU feature property the binary knows
	// (QEMU spelling), when its models were expanded (host arch only).
	CPUFeatures []string
	// Firmware lists the firmware images found on the host for this arch.
	Firmware []Firmware
	// Cached is true when these facts came from the cache, not a new probe.
	Cached bool

	// SEV is the answer to query-sev-capabilities, nil when QEMU could not
	// give one (SEVError says why: no SEV in KVM, no KVM, an old QEMU).
	SEV      *SEVCapability
	SEVError string
	// SGX is the answer to query-sgx-capabilities, nil when none
	// (SGXError says why).
	SGX      *SGXCapability
	SGXError string
}

// Machine is one machine type of an emulator.
type Machine struct {
	Name       string // e.g. pc-i440fx-7.2
	Alias      string // e.g. pc
	MaxCPUs    int
	Default    bool
	Deprecated bool

	DefaultCPUType   string // QOM type of the default CPU, "" if none
	DefaultRAMID     string // id of the main RAM backend (-machine memory-backend)
	NUMAMemSupported bool   // legacy -numa node,mem= is still accepted
	HotplugCPUs      bool
}

// CPUModel is one named CPU model of an emulator.
type CPUModel struct {
	Name        string
	Typename    string
	Usable      bool // usable with the accelerator it was probed for (TCG)
	Deprecated  bool
	Unavailable []string // features that make it unusable

	// AliasOf names the versioned model this name stands for ("" if none).
	AliasOf string
	// Vendor is the CPUID vendor string ("GenuineIntel"), when expanded.
	Vendor string
	// Features are the features the model enables (QEMU spelling), known
	// only for models that were expanded (host-arch emulators).
	Features []string
}

// Firmware is one firmware image a guest may boot.
type Firmware struct {
	Path string
	// Interface is "bios" or "uefi".
	Interface string
	// Device is "memory" (loaded as ROM) or "flash" (pflash).
	Device string
	// NVRAMTemplate is the variable store template for flash images.
	NVRAMTemplate string
	// Machines are glob patterns of machine types it supports (empty: all).
	Machines []string
	// Features from the firmware descriptor: "secure-boot", "requires-smm"...
	Features []string
}
