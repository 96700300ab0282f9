package capabilities

import "os"

// Accels decides which accelerators a binary can use on this host, in order
// of preference for probing: TCG is always there; KVM needs a usable KVM
// device on the host (hostKVM) and a binary built with KVM (binaryKVM: QMP
// query-kvm reports "present"); HVF needs Hypervisor.framework (hostHVF,
// macOS only) and a binary that knows the hvf accelerator (binaryHVF).
//
// The result is what <domain type=...> lists in capabilities.xml, with "tcg"
// shown as type 'qemu'.
func Accels(hostKVM, binaryKVM, hostHVF, binaryHVF bool) []string {
	accels := []string{"tcg"}
	if hostKVM && binaryKVM {
		accels = append(accels, "kvm")
	}
	if hostHVF && binaryHVF {
		accels = append(accels, "hvf")
	}
	return accels
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

// hvfAccelType is the QOM type of QEMU's HVF accelerator.
const hvfAccelType = "hvf-accel"
