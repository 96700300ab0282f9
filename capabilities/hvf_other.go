//go:build !darwin

package capabilities

// hvfSupported is false: Hypervisor.framework exists only on macOS.
func hvfSupported() bool { return false }
