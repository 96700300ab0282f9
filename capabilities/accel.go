package capabilities

import "os"

// AccelSupport says which accelerators a host or a QEMU binary supports.
type AccelSupport struct {
	TCG bool // software emulation (a binary may be built without it)
	KVM bool // host: KVM device usable; binary: query-kvm "present"
	HVF bool // host: kern.hv_support (macOS); binary: has the hvf-accel type
}

// Accels decides which accelerators a binary can use on this host: those
// both support, in QEMU's order of preference for probing ("tcg" first as
// libvirt lists domain types). The result is what <domain type=...> lists
// in capabilities.xml, with "tcg" shown as type 'qemu'.
func Accels(host, binary AccelSupport) []string {
	var accels []string
	if host.TCG && binary.TCG {
		accels = append(accels, "tcg")
	}
	if host.KVM && binary.KVM {
		accels = append(accels, "kvm")
	}
	if host.HVF && binary.HVF {
		accels = append(accels, "hvf")
	}
	return accels
}

// binaryAccels is what a probed binary supports. Binaries that do not list
// QOM types (old or fake ones) are assumed to have TCG.
func binaryAccels(e *Emulator) AccelSupport {
	return AccelSupport{
		TCG: len(e.Devices) == 0 || e.Devices[tcgAccelType],
		KVM: e.KVMPresent,
		HVF: e.Devices[hvfAccelType],
	}
}

// kvmUsable reports whether the KVM device exists and this process may open
// it read-write, which is what QEMU needs to use it.
func kvmUsable(dev string) bool {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// QOM types of QEMU's accelerators.
const (
	hvfAccelType = "hvf-accel"
	tcgAccelType = "tcg-accel"
)
