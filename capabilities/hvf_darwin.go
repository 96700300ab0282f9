//go:build darwin

package capabilities

import "golang.org/x/sys/unix"

// hvfSupported reports whether macOS Hypervisor.framework is available, as
// the kern.hv_support sysctl says.
func hvfSupported() bool {
	v, err := unix.SysctlUint32("kern.hv_support")
	return err == nil && v == 1
}
