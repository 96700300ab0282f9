package capabilities

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrUnsupported is wrapped by Lookup errors: the requested guest cannot run
// on this host.
var ErrUnsupported = errors.New("unsupported on this host")

// Lookup finds the emulator and machine for a guest of arch and virtType
// ("qemu", "kvm", "hvf"). machine and emulator may be empty: then the
// emulator's default machine, and the first emulator of that arch, are used.
// The error names what is available, so a user can fix the domain XML.
func (c *Capabilities) Lookup(arch, virtType, machine, emulator string) (*Emulator, Machine, error) {
	accel := virtType
	if accel == "qemu" || accel == "" {
		accel = "tcg"
	}
	var arches []string
	var ofArch, compatible []*Emulator
	for _, e := range c.Emulators {
		if e.Err != "" {
			continue
		}
		arches = append(arches, e.Arch)
		if emulator != "" && e.Path != emulator {
			continue
		}
		if e.Arch == arch {
			ofArch = append(ofArch, e)
		} else if runsArch(e.Arch, arch) {
			compatible = append(compatible, e)
		}
	}
	if len(ofArch) == 0 {
		// As libvirt: an x86_64 QEMU runs i686 guests, and so on.
		ofArch = compatible
	}
	if len(ofArch) == 0 {
		if emulator != "" {
			return nil, Machine{}, fmt.Errorf("no usable emulator %s for arch %q (known emulators: %s): %w",
				emulator, arch, c.emulatorList(), ErrUnsupported)
		}
		return nil, Machine{}, fmt.Errorf("arch %q: no emulator found (available arches: %s): %w",
			arch, list(arches), ErrUnsupported)
	}
	var accels []string
	for _, e := range ofArch {
		if !contains(e.Accels, accel) {
			accels = append(accels, e.Accels...)
			continue
		}
		if machine == "" {
			for _, m := range e.Machines {
				if m.Default {
					return e, m, nil
				}
			}
			if len(e.Machines) > 0 {
				return e, e.Machines[0], nil
			}
			return nil, Machine{}, fmt.Errorf("emulator %s reports no machine types: %w", e.Path, ErrUnsupported)
		}
		for _, m := range e.Machines {
			if m.Name == machine || m.Alias == machine {
				return e, m, nil
			}
		}
		var names []string
		for _, m := range e.Machines {
			names = append(names, m.Name)
			if m.Alias != "" {
				names = append(names, m.Alias)
			}
		}
		return nil, Machine{}, fmt.Errorf("machine %q is not supported by %s for arch %s (available: %s): %w",
			machine, e.Path, arch, list(names), ErrUnsupported)
	}
	return nil, Machine{}, fmt.Errorf("domain type %q is not available for arch %s on this host (available: %s)%s: %w",
		virtType, arch, list(virtTypes(accels)), c.accelHint(accel), ErrUnsupported)
}

// accelHint says why the host lacks an accelerator, when it does.
func (c *Capabilities) accelHint(accel string) string {
	switch {
	case accel == "kvm" && !c.Host.KVM && c.Host.KVMDenied != "":
		return ": " + c.Host.KVMDenied
	case accel == "kvm" && !c.Host.KVM:
		return ": the host has no usable KVM device (/dev/kvm)"
	case accel == "hvf" && !c.Host.HVF:
		return ": HVF needs macOS with Hypervisor.framework"
	}
	return ""
}

func (c *Capabilities) emulatorList() string {
	var s []string
	for _, e := range c.Emulators {
		if e.Err == "" {
			s = append(s, e.Path+" ("+e.Arch+")")
		}
	}
	return list(s)
}

// virtTypes turns accelerator names into domain type names.
func virtTypes(accels []string) []string {
	var out []string
	for _, a := range accels {
		if a == "tcg" {
			a = "qemu"
		}
		out = append(out, a)
	}
	return out
}

func list(s []string) string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

func contains(s []string, x string) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// runsArch reports whether an emulator of arch emu also runs guests of
// arch guest, as libvirt's virQEMUCapsIsArchSupported says.
func runsArch(emu, guest string) bool {
	switch emu + ">" + guest {
	case "x86_64>i686", "aarch64>armv7l", "armv7l>armv6l", "ppc64>ppc64le":
		return true
	}
	return false
}
