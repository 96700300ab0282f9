package capabilities

import (
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// firmwareDescriptorDirs hold QEMU firmware descriptors (docs/interop/
// firmware.json); a file in /etc overrides one of the same name in /usr.
var firmwareDescriptorDirs = []string{"etc/qemu/firmware", "usr/share/qemu/firmware"}

// knownFirmware is where distributions put firmware without a descriptor.
var knownFirmware = map[string][]Firmware{
	"x86_64": {
		{Path: "/usr/share/seabios/bios-256k.bin", Interface: "bios", Device: "memory"},
		{Path: "/usr/share/seabios/bios.bin", Interface: "bios", Device: "memory"},
		{Path: "/usr/share/qemu/bios-256k.bin", Interface: "bios", Device: "memory"},
		{Path: "/usr/share/qemu/bios.bin", Interface: "bios", Device: "memory"},
		{Path: "/usr/share/OVMF/OVMF_CODE_4M.fd", Interface: "uefi", Device: "flash", NVRAMTemplate: "/usr/share/OVMF/OVMF_VARS_4M.fd"},
		{Path: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", Interface: "uefi", Device: "flash", NVRAMTemplate: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd", Features: []string{"secure-boot", "requires-smm"}, Machines: []string{"pc-q35-*"}},
		{Path: "/usr/share/OVMF/OVMF_CODE.fd", Interface: "uefi", Device: "flash", NVRAMTemplate: "/usr/share/OVMF/OVMF_VARS.fd"},
		{Path: "/usr/share/OVMF/OVMF_CODE.secboot.fd", Interface: "uefi", Device: "flash", NVRAMTemplate: "/usr/share/OVMF/OVMF_VARS.fd", Features: []string{"secure-boot", "requires-smm"}, Machines: []string{"pc-q35-*"}},
		{Path: "/usr/share/edk2/ovmf/OVMF_CODE.fd", Interface: "uefi", Device: "flash", NVRAMTemplate: "/usr/share/edk2/ovmf/OVMF_VARS.fd"},
		{Path: "/usr/share/qemu/edk2-x86_64-code.fd", Interface: "uefi", Device: "flash", NVRAMTemplate: "/usr/share/qemu/edk2-i386-vars.fd"},
	},
	"aarch64": {
		{Path: "/usr/share/AAVMF/AAVMF_CODE.fd", Interface: "uefi", Device: "flash", NVRAMTemplate: "/usr/share/AAVMF/AAVMF_VARS.fd"},
		{Path: "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", Interface: "uefi", Device: "flash"},
		{Path: "/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", Interface: "uefi", Device: "flash", NVRAMTemplate: "/usr/share/edk2/aarch64/vars-template-pflash.raw"},
		{Path: "/usr/share/qemu/edk2-aarch64-code.fd", Interface: "uefi", Device: "flash", NVRAMTemplate: "/usr/share/qemu/edk2-arm-vars.fd"},
	},
}

func init() {
	// i686 guests boot the same SeaBIOS images.
	for _, f := range knownFirmware["x86_64"] {
		if f.Interface == "bios" {
			knownFirmware["i686"] = append(knownFirmware["i686"], f)
		}
	}
}

// descriptor is the part of a QEMU firmware descriptor we use.
type descriptor struct {
	InterfaceTypes []string `json:"interface-types"`
	Mapping        struct {
		Device     string `json:"device"`
		Filename   string `json:"filename"`
		Executable struct {
			Filename string `json:"filename"`
		} `json:"executable"`
		NVRAMTemplate struct {
			Filename string `json:"filename"`
		} `json:"nvram-template"`
	} `json:"mapping"`
	Targets []struct {
		Architecture string   `json:"architecture"`
		Machines     []string `json:"machines"`
	} `json:"targets"`
	Features []string `json:"features"`
}

// findFirmware lists the firmware images present under root for each arch:
// those QEMU firmware descriptors describe, then the well-known paths.
// extraDirs are descriptor directories (absolute, not under root) that take
// precedence over the system ones: the instance's own.
func findFirmware(root string, extraDirs ...string) map[string][]Firmware {
	out := map[string][]Firmware{}
	seen := map[string]bool{}
	add := func(arch string, f Firmware) {
		if seen[arch+"\x00"+f.Path] {
			return
		}
		if _, err := os.Stat(filepath.Join(root, f.Path)); err != nil {
			return
		}
		seen[arch+"\x00"+f.Path] = true
		out[arch] = append(out[arch], f)
	}
	dirs := append([]string(nil), extraDirs...)
	for _, d := range firmwareDescriptorDirs {
		dirs = append(dirs, filepath.Join(root, d))
	}
	byName := map[string]string{}
	for i := len(dirs) - 1; i >= 0; i-- {
		files, _ := filepath.Glob(filepath.Join(dirs[i], "*.json"))
		for _, f := range files {
			byName[filepath.Base(f)] = f
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names) // descriptors are ordered by name: priority
	for _, n := range names {
		data, err := os.ReadFile(byName[n])
		if err != nil {
			continue
		}
		var d descriptor
		if json.Unmarshal(data, &d) != nil {
			continue
		}
		f := Firmware{Device: d.Mapping.Device, Features: d.Features}
		switch d.Mapping.Device {
		case "flash":
			f.Path, f.NVRAMTemplate = d.Mapping.Executable.Filename, d.Mapping.NVRAMTemplate.Filename
		case "memory":
			f.Path = d.Mapping.Filename
		default:
			continue
		}
		for _, it := range d.InterfaceTypes {
			if it == "uefi" || it == "bios" {
				f.Interface = it
			}
		}
		if f.Path == "" || f.Interface == "" {
			continue
		}
		for _, t := range d.Targets {
			g := f
			g.Machines = t.Machines
			add(libvirtArch(t.Architecture), g)
		}
	}
	archs := make([]string, 0, len(knownFirmware))
	for a := range knownFirmware {
		archs = append(archs, a)
	}
	sort.Strings(archs)
	for _, a := range archs {
		for _, f := range knownFirmware[a] {
			add(a, f)
		}
	}
	return out
}

// firmwareFor returns the images usable by machine (glob patterns match
// either the machine name or its alias).
func firmwareFor(fw []Firmware, m Machine) []Firmware {
	var out []Firmware
	for _, f := range fw {
		if len(f.Machines) == 0 {
			out = append(out, f)
			continue
		}
		for _, pat := range f.Machines {
			if ok, _ := path.Match(pat, m.Name); ok {
				out = append(out, f)
				break
			}
			if ok, _ := path.Match(pat, m.Alias); ok && m.Alias != "" {
				out = append(out, f)
				break
			}
		}
	}
	return out
}

func hasFeature(f Firmware, name string) bool {
	for _, x := range f.Features {
		if strings.EqualFold(x, name) {
			return true
		}
	}
	return false
}
