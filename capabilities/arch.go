package capabilities

import (
	"path/filepath"
	"runtime"
	"strings"
)

// qemuToArch maps QEMU target names (query-target, qemu-system-<target>) to
// libvirt arch names where they differ.
var qemuToArch = map[string]string{
	"i386": "i686",
	"arm":  "armv7l",
}

// archWordSize is the guest word size of each libvirt arch.
var archWordSize = map[string]int{
	"aarch64": 64, "alpha": 64, "armv6l": 32, "armv7l": 32, "avr": 8, "cris": 32,
	"hppa": 32, "i686": 32, "loongarch64": 64, "m68k": 32, "microblaze": 32,
	"microblazeel": 32, "mips": 32, "mipsel": 32, "mips64": 64, "mips64el": 64,
	"nios2": 32, "or1k": 32, "ppc": 32, "ppc64": 64, "ppc64le": 64, "riscv32": 32,
	"riscv64": 64, "rx": 32, "s390x": 64, "sh4": 32, "sh4eb": 32, "sparc": 32,
	"sparc64": 64, "tricore": 32, "x86_64": 64, "xtensa": 32, "xtensaeb": 32,
}

// libvirtArch turns a QEMU target name into a libvirt arch name.
func libvirtArch(target string) string {
	if a, ok := qemuToArch[target]; ok {
		return a
	}
	return target
}

// qemuTarget is the inverse of libvirtArch.
func qemuTarget(arch string) string {
	for q, a := range qemuToArch {
		if a == arch {
			return q
		}
	}
	return arch
}

// archFromName guesses the arch from a binary name (qemu-system-<target>),
// used when the binary cannot tell (probe failed) and to order emulators.
func archFromName(path string) string {
	base := filepath.Base(path)
	if t, ok := strings.CutPrefix(base, "qemu-system-"); ok {
		// qemu-system-x86_64-microvm: a variant build of x86_64.
		for a := libvirtArch(t); a != ""; {
			if archWordSize[a] > 0 {
				return a
			}
			i := strings.LastIndexByte(a, '-')
			if i < 0 {
				break
			}
			a = libvirtArch(a[:i])
		}
		return libvirtArch(t)
	}
	if base == "qemu-kvm" || base == "qemu" {
		return HostArch()
	}
	return ""
}

// HostArch is the libvirt arch name of the machine qemufs runs on.
func HostArch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "386":
		return "i686"
	case "arm64":
		return "aarch64"
	case "arm":
		return "armv7l"
	case "mips64le":
		return "mips64el"
	case "mipsle":
		return "mipsel"
	case "loong64":
		return "loongarch64"
	}
	return runtime.GOARCH
}

// isX86 reports whether arch is an x86 flavour, where CPU models, ACPI and
// PAE make sense.
func isX86(arch string) bool { return arch == "x86_64" || arch == "i686" }
