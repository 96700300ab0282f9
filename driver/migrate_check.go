package driver

import (
	"encoding/xml"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/qemufs/qemufs/domain"
)

// hostCaps is the part of a capabilities.xml a migration checks.
type hostCaps struct {
	Host struct {
		UUID string `xml:"uuid"`
		CPU  struct {
			Arch     string `xml:"arch"`
			Model    string `xml:"model"`
			Vendor   string `xml:"vendor"`
			Features []struct {
				Name string `xml:"name,attr"`
			} `xml:"feature"`
		} `xml:"cpu"`
	} `xml:"host"`
	Guests []struct {
		Arch struct {
			Name     string `xml:"name,attr"`
			Emulator string `xml:"emulator"`
			Machines []struct {
				Name      string `xml:",chardata"`
				Canonical string `xml:"canonical,attr"`
			} `xml:"machine"`
			Domains []struct {
				Type string `xml:"type,attr"`
			} `xml:"domain"`
		} `xml:"arch"`
	} `xml:"guest"`
}

func parseHostCaps(b []byte) (*hostCaps, error) {
	var c hostCaps
	if err := xml.Unmarshal(b, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *hostCaps) features() map[string]bool {
	m := map[string]bool{}
	for _, f := range c.Host.CPU.Features {
		m[f.Name] = true
	}
	return m
}

// domCapsCPU is the CPU part of a domcapabilities file.
type domCapsCPU struct {
	CPU struct {
		Modes []struct {
			Name      string `xml:"name,attr"`
			Supported string `xml:"supported,attr"`
			Models    []struct {
				Name   string `xml:",chardata"`
				Usable string `xml:"usable,attr"`
			} `xml:"model"`
			Blockers []struct {
				Model    string `xml:"model,attr"`
				Features []struct {
					Name string `xml:"name,attr"`
				} `xml:"feature"`
			} `xml:"blockers"`
		} `xml:"mode"`
	} `xml:"cpu"`
}

// guestCPU is the guest's <cpu>: its mode, model and required features.
type guestCPU struct {
	mode     string
	model    string
	required []string
}

func cpuOf(def *domain.Domain) guestCPU {
	var g guestCPU
	cpu := def.Root().SelectElement("cpu")
	if cpu == nil {
		return g
	}
	g.mode = cpu.SelectAttrValue("mode", "custom")
	if m := cpu.SelectElement("model"); m != nil {
		g.model = strings.TrimSpace(m.Text())
	}
	for _, f := range cpu.SelectElements("feature") {
		if p := f.SelectAttrValue("policy", "require"); p == "require" || p == "force" {
			g.required = append(g.required, f.SelectAttrValue("name", ""))
		}
	}
	return g
}

// checkDestTree checks that dest is the tree of another qemufs instance,
// before anything is written there.
func (d *Driver) checkDestTree(dest string) error {
	ver, err := os.ReadFile(filepath.Join(dest, "version"))
	if err != nil {
		return errorf(ErrInvalid, "%s is not a qemufs tree (reading its version: %v)", dest, unwrapPathError(err))
	}
	if !strings.HasPrefix(string(ver), "qemufs ") {
		return errorf(ErrInvalid, "%s is not a qemufs tree (its version file says %q)", dest, firstLine(ver))
	}
	if daemonPid(ver) != os.Getpid() {
		return nil // our own tree names our pid
	}
	// The same pid: this daemon, or one on another host (or in another
	// pid namespace) that has it too.
	dc, sc, err := d.hostCapsOf(dest)
	if err != nil {
		return err
	}
	if dc.Host.UUID == sc.Host.UUID {
		return errorf(ErrInvalid, "%s is this instance's own tree; the destination must be another instance", dest)
	}
	return nil
}

// checkDestHost checks that the host whose tree is dest can run guest:
// its emulator, machine type and domain type, and a compatible CPU (the
// reference's "Migration CPU model compatibility"). It only reads dest,
// so it may run while the destination prepares. Disk paths are checked
// by the destination itself when it prepares (PrepareIncoming): only it
// knows what it sees.
func (d *Driver) checkDestHost(dest string, guest *domain.Domain) error {
	dc, sc, err := d.hostCapsOf(dest)
	if err != nil {
		return err
	}
	return checkCompatible(guest, sc, dc, func(name string) ([]byte, error) {
		return os.ReadFile(filepath.Join(dest, "domcapabilities", name))
	})
}

// hostCapsOf reads the capabilities of the destination (dest) and of this
// host.
func (d *Driver) hostCapsOf(dest string) (dst, src *hostCaps, err error) {
	capsXML, err := os.ReadFile(filepath.Join(dest, "capabilities.xml"))
	if err != nil {
		return nil, nil, errorf(ErrIO, "reading the destination's capabilities.xml: %v", unwrapPathError(err))
	}
	if dst, err = parseHostCaps(capsXML); err != nil {
		return nil, nil, errorf(ErrIO, "the destination's capabilities.xml: %v", err)
	}
	if src, err = parseHostCaps(d.caps.XML()); err != nil {
		return nil, nil, errorf(ErrIO, "this host's capabilities: %v", err)
	}
	return dst, src, nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

func daemonPid(ver []byte) int {
	for _, l := range strings.Split(string(ver), "\n") {
		if v, ok := strings.CutPrefix(l, "daemon pid "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// checkCompatible is the host-side check of a migration of guest from the
// host src describes to the host dst describes; domcaps reads one of the
// destination's domcapabilities files.
func checkCompatible(guest *domain.Domain, src, dst *hostCaps, domcaps func(name string) ([]byte, error)) error {
	arch, virt, machine, emulator := guest.Arch(), guest.Type(), guest.Machine(), guest.Emulator()
	found := false
	var archs []string
	for _, g := range dst.Guests {
		a := g.Arch
		archs = append(archs, a.Name)
		if a.Name != arch {
			continue
		}
		if emulator != "" && a.Emulator != emulator {
			continue
		}
		found = true
		hasType := false
		var types []string
		for _, dt := range a.Domains {
			types = append(types, dt.Type)
			hasType = hasType || dt.Type == virt
		}
		if !hasType {
			return errorf(ErrInvalid, "the destination cannot run domain type %q for %s (it has: %s)", virt, arch, strings.Join(types, ", "))
		}
		hasMachine := false
		for _, m := range a.Machines {
			hasMachine = hasMachine || strings.TrimSpace(m.Name) == machine
		}
		if !hasMachine {
			return errorf(ErrInvalid, "the destination's emulator %s has no machine type %q (the guest's ABI needs the same one)", a.Emulator, machine)
		}
		break
	}
	if !found {
		if emulator != "" {
			return errorf(ErrInvalid, "the destination has no emulator %s for arch %s", emulator, arch)
		}
		return errorf(ErrInvalid, "the destination has no emulator for arch %s (it has: %s)", arch, strings.Join(archs, ", "))
	}

	cpu := cpuOf(guest)
	switch cpu.mode {
	case "host-passthrough", "host-model":
		// The guest sees (much of) this host's CPU: the destination must
		// have a superset of its features, from the same vendor.
		if src.Host.CPU.Vendor != dst.Host.CPU.Vendor {
			return errorf(ErrInvalid, "the guest's CPU is %s (host CPU vendor %s) but the destination's CPU vendor is %s", cpu.mode, src.Host.CPU.Vendor, dst.Host.CPU.Vendor)
		}
		if missing := missingFeatures(src.features(), dst.features()); len(missing) > 0 {
			return errorf(ErrInvalid, "the guest's CPU is %s and the destination's host CPU (%s) lacks features of this host's (%s): %s", cpu.mode, dst.Host.CPU.Model, src.Host.CPU.Model, strings.Join(missing, ", "))
		}
		if cpu.mode == "host-passthrough" && src.Host.CPU.Model != dst.Host.CPU.Model {
			return errorf(ErrInvalid, "the guest's CPU is host-passthrough, which needs identical hosts; this host's CPU is %s, the destination's %s", src.Host.CPU.Model, dst.Host.CPU.Model)
		}
	case "custom", "":
		if cpu.model == "" {
			break // QEMU's default model, present wherever the machine is
		}
		name := arch + "-" + machine + "-" + virt + ".xml"
		b, err := domcaps(name)
		if err != nil {
			return errorf(ErrIO, "reading the destination's domcapabilities/%s: %v", name, unwrapPathError(err))
		}
		var dcx domCapsCPU
		if err := xml.Unmarshal(b, &dcx); err != nil {
			return errorf(ErrIO, "the destination's domcapabilities/%s: %v", name, err)
		}
		usable, listed := "", false
		var blockers []string
		for _, m := range dcx.CPU.Modes {
			if m.Name != "custom" {
				continue
			}
			for _, mm := range m.Models {
				if strings.TrimSpace(mm.Name) == cpu.model {
					listed, usable = true, mm.Usable
				}
			}
			for _, b := range m.Blockers {
				if b.Model == cpu.model {
					for _, f := range b.Features {
						blockers = append(blockers, f.Name)
					}
				}
			}
		}
		switch {
		case !listed:
			return errorf(ErrInvalid, "the destination's emulator has no CPU model %q", cpu.model)
		case usable == "no":
			return errorf(ErrInvalid, "CPU model %q is not usable on the destination (missing: %s)", cpu.model, strings.Join(blockers, ", "))
		}
		if virt != "qemu" && len(cpu.required) > 0 {
			// With KVM a required feature must be in the host CPU; TCG
			// emulates what it knows.
			have := dst.features()
			var missing []string
			for _, f := range cpu.required {
				if !have[f] {
					missing = append(missing, f)
				}
			}
			if len(missing) > 0 {
				return errorf(ErrInvalid, "the guest's CPU requires features the destination's host CPU lacks: %s", strings.Join(missing, ", "))
			}
		}
	}
	return nil
}

func missingFeatures(src, dst map[string]bool) []string {
	var out []string
	for f := range src {
		if !dst[f] {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}
