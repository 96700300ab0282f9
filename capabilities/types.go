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
	Features  []string
}

// NUMACell is one host NUMA node.
type NUMACell struct {
	ID        int
	MemoryKiB uint64
	CPUs      []int
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
}

// Machine is one machine type of an emulator.
type Machine struct {
	Name       string // e.g. pc-i440fx-7.2
	Alias      string // e.g. pc
	MaxCPUs    int
	Default    bool
	Deprecated bool
}

// CPUModel is one named CPU model of an emulator.
type CPUModel struct {
	Name        string
	Typename    string
	Usable      bool // usable with the accelerator it was probed for (TCG)
	Deprecated  bool
	Unavailable []string // features that make it unusable
}
