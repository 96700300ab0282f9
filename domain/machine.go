package domain

import (
	"strings"

	"github.com/qemufs/qemufs/capabilities"
)

// target is what expansion and argv generation know about the emulator a
// domain runs on: probed capabilities when given, else QEMU 7.2 facts.
type target struct {
	emu *capabilities.Emulator // nil: builtin QEMU 7.2 facts
	// versionNum is major*1000000 + minor*1000 + micro.
	versionNum int
}

// qemu72 is the version assumed without probed capabilities.
const qemu72 = 7002000

func newTarget(emu *capabilities.Emulator) *target {
	t := &target{emu: emu, versionNum: qemu72}
	if emu != nil && emu.VersionNum > 0 {
		t.versionNum = emu.VersionNum
	}
	return t
}

// builtinMachines are QEMU 7.2's x86 machine aliases (qemu-system-x86_64
// -machine help).
var builtinMachines = map[string]string{
	"pc":  "pc-i440fx-7.2",
	"q35": "pc-q35-7.2",
}

// defaultMachine returns the default machine type of an arch.
func (t *target) defaultMachine(arch string) string {
	if t.emu != nil {
		for _, m := range t.emu.Machines {
			if m.Default {
				return m.Name
			}
		}
	}
	switch arch {
	case "x86_64", "i686":
		return "pc-i440fx-7.2"
	}
	return ""
}

// canonicalMachine resolves an alias (pc, q35) to the versioned name.
func (t *target) canonicalMachine(name string) string {
	if t.emu != nil {
		for _, m := range t.emu.Machines {
			if m.Alias == name && m.Name != "" {
				return m.Name
			}
		}
		return name
	}
	if c, ok := builtinMachines[name]; ok {
		return c
	}
	return name
}

// hasDevice reports whether the emulator has a QOM type. Without probed
// capabilities every device QEMU 7.2 x86_64 has is assumed.
func (t *target) hasDevice(name string) bool {
	if t.emu == nil || len(t.emu.Devices) == 0 {
		return true
	}
	return t.emu.Devices[name]
}

// atLeast reports whether the emulator is at least version maj.min.
func (t *target) atLeast(maj, min int) bool {
	return t.versionNum >= maj*1000000+min*1000
}

// defaultEmulator is the binary for a guest arch without capabilities.
func defaultEmulator(arch string) string {
	switch arch {
	case "i686":
		return "/usr/bin/qemu-system-i386"
	case "":
		return "/usr/bin/qemu-system-x86_64"
	case "armv7l", "armv6l":
		return "/usr/bin/qemu-system-arm"
	case "ppc64le":
		return "/usr/bin/qemu-system-ppc64"
	}
	return "/usr/bin/qemu-system-" + arch
}

// machineKind classifies a machine type name.
type machineKind int

const (
	machineOther machineKind = iota
	machineI440FX
	machineQ35
	machineISAPC
	machineMicrovm
)

func kindOf(machine string) machineKind {
	switch {
	case machine == "pc" || strings.HasPrefix(machine, "pc-i440fx") || strings.HasPrefix(machine, "pc-0.") ||
		strings.HasPrefix(machine, "pc-1.") || machine == "xenfv" || strings.HasPrefix(machine, "xenfv-"):
		return machineI440FX
	case machine == "q35" || strings.HasPrefix(machine, "pc-q35"):
		return machineQ35
	case machine == "isapc":
		return machineISAPC
	case machine == "microvm":
		return machineMicrovm
	}
	return machineOther
}

func isX86(arch string) bool { return arch == "x86_64" || arch == "i686" }
