package domain

import (
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// FirmwareDirs are where QEMU firmware descriptors (docs/interop/
// firmware.json) are looked for, highest precedence first: a descriptor
// in an earlier directory hides one of the same name in a later one.
var FirmwareDirs = []string{"/etc/qemu/firmware", "/usr/share/qemu/firmware"}

// firmwareDesc is the part of a firmware descriptor qemufs uses.
type firmwareDesc struct {
	InterfaceTypes []string `json:"interface-types"`
	Mapping        struct {
		Device     string `json:"device"`
		Executable struct {
			Filename string `json:"filename"`
			Format   string `json:"format"`
		} `json:"executable"`
		NVRAMTemplate struct {
			Filename string `json:"filename"`
			Format   string `json:"format"`
		} `json:"nvram-template"`
		Filename string `json:"filename"` // device "memory"
	} `json:"mapping"`
	Targets []struct {
		Architecture string   `json:"architecture"`
		Machines     []string `json:"machines"`
	} `json:"targets"`
	Features []string `json:"features"`
}

// ResolveFirmware does firmware autoselection for <os firmware='efi'>
// without a <loader> path: it picks the first matching UEFI descriptor
// (arch, machine, and the <firmware><feature> wishes: secure-boot,
// enrolled-keys) and writes <loader readonly='yes' type='pflash'> and the
// <nvram> template into d, plus <features><smm/> when the firmware needs
// SMM. BuildCommand calls it on its copy; the driver calls it on the live
// definition so live.xml shows what runs. With nothing to select it does
// nothing; with no match the error wraps ErrUnsupported.
func (d *Domain) ResolveFirmware() error {
	os_ := child(d.root, "os")
	if attr(os_, "firmware") != "efi" {
		return nil
	}
	if l := child(os_, "loader"); l != nil && strings.TrimSpace(l.Text()) != "" {
		return nil
	}
	want := map[string]bool{}
	for _, f := range children(child(os_, "firmware"), "feature") {
		want[attr(f, "name")] = attr(f, "enabled") == "yes"
	}
	if attr(child(os_, "loader"), "secure") == "yes" {
		want["secure-boot"] = true
	}
	arch, machine := d.Arch(), d.Machine()
	if arch == "" {
		arch = "x86_64"
	}
	for _, desc := range loadFirmwareDescs() {
		if !firmwareMatches(desc, arch, machine, want) {
			continue
		}
		l := child(os_, "loader")
		if l == nil {
			l = insert(os_, "loader")
		}
		setAttr(l, "readonly", "yes")
		setAttr(l, "type", "pflash")
		if has(desc.Features, "secure-boot") {
			setAttr(l, "secure", "yes")
		}
		l.SetText(desc.Mapping.Executable.Filename)
		if t := desc.Mapping.NVRAMTemplate.Filename; t != "" {
			n := child(os_, "nvram")
			if n == nil {
				n = insert(os_, "nvram")
			}
			if !hasAttr(n, "template") {
				setAttr(n, "template", t)
			}
		}
		if has(desc.Features, "requires-smm") {
			f := ensure(d.root, "features")
			if child(f, "smm") == nil {
				f.CreateElement("smm").CreateAttr("state", "on")
			}
		}
		return nil
	}
	return &Error{Path: "os", Msg: "firmware='efi': no UEFI firmware descriptor matches (looked in " +
		strings.Join(FirmwareDirs, ", ") + "); install OVMF or give <loader>", Err: ErrUnsupported}
}

func has(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// loadFirmwareDescs reads the descriptors, sorted by file name, earlier
// directories hiding later ones.
func loadFirmwareDescs() []firmwareDesc {
	byName := map[string]string{}
	for i := len(FirmwareDirs) - 1; i >= 0; i-- {
		files, _ := filepath.Glob(filepath.Join(FirmwareDirs[i], "*.json"))
		for _, f := range files {
			byName[filepath.Base(f)] = f
		}
	}
	var names []string
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []firmwareDesc
	for _, n := range names {
		data, err := os.ReadFile(byName[n])
		if err != nil {
			continue
		}
		var desc firmwareDesc
		if json.Unmarshal(data, &desc) == nil {
			out = append(out, desc)
		}
	}
	return out
}

func firmwareMatches(desc firmwareDesc, arch, machine string, want map[string]bool) bool {
	if !has(desc.InterfaceTypes, "uefi") || desc.Mapping.Device != "flash" || desc.Mapping.Executable.Filename == "" {
		return false
	}
	target := false
	for _, t := range desc.Targets {
		if t.Architecture != arch {
			continue
		}
		for _, m := range t.Machines {
			if ok, _ := path.Match(m, machine); ok {
				target = true
			}
		}
	}
	if !target {
		return false
	}
	for name, on := range want {
		if has(desc.Features, name) != on {
			return false
		}
	}
	return true
}
