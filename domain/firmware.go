package domain

import (
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/beevik/etree"
)

// FirmwareDirs are the system directories QEMU firmware descriptors
// (QEMU's docs/interop/firmware.json) are read from, highest precedence
// first. As with libvirt and QEMU, a descriptor in an earlier directory
// hides one of the same file name in a later one, an empty file (or a
// link to /dev/null) hides it without replacing it, and the survivors
// are tried in file-name order. The driver puts the instance's own
// directory (its config dir's "firmware") in front of these.
var FirmwareDirs = []string{"/etc/qemu/firmware", "/usr/share/qemu/firmware"}

// FirmwareSearchDirs returns the descriptor directories of an instance:
// its own directory first (ignored when ""), then FirmwareDirs.
func FirmwareSearchDirs(instanceDir string) []string {
	if instanceDir == "" {
		return FirmwareDirs
	}
	return append([]string{instanceDir}, FirmwareDirs...)
}

// firmwareDesc is the part of a firmware descriptor qemufs uses.
type firmwareDesc struct {
	file string // where it was read, for messages

	InterfaceTypes []string `json:"interface-types"`
	Mapping        struct {
		Device     string `json:"device"`
		Mode       string `json:"mode"` // split (default), combined, stateless
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

// firmwareRequest is what a definition asks of its UEFI firmware.
type firmwareRequest struct {
	arch, machine string
	// features are the <os><firmware><feature> wishes by name (yes/no).
	features map[string]bool
	loader   string // <loader> path, "" to select one
	// loaderType is <loader type> ("" unset); format its format ("raw").
	loaderType, format string
	template           string // <nvram template>
	secure, smm        string // <loader secure>, <features><smm state>: yes/no/""
	stateless          bool
	// needs are descriptor features the rest of the definition implies
	// (amd-sev for <launchSecurity type='sev'>).
	needs []string
}

// firmwareRequestOf reads the request of d.
func (d *Domain) firmwareRequestOf() firmwareRequest {
	os_ := child(d.root, "os")
	l := child(os_, "loader")
	r := firmwareRequest{
		arch: d.Arch(), machine: d.Machine(), features: map[string]bool{},
		loader: strings.TrimSpace(text(l)), loaderType: attr(l, "type"),
		format: attrOr(l, "format", "raw"), template: attr(child(os_, "nvram"), "template"),
		secure: attr(l, "secure"), stateless: attr(l, "stateless") == "yes",
	}
	if r.arch == "" {
		r.arch = "x86_64"
	}
	for _, f := range children(child(os_, "firmware"), "feature") {
		r.features[attr(f, "name")] = attr(f, "enabled") == "yes"
	}
	if smm := find(d.root, "features", "smm"); smm != nil {
		r.smm = "yes"
		if attr(smm, "state") == "off" {
			r.smm = "no"
		}
	}
	switch attr(child(d.root, "launchSecurity"), "type") {
	case "sev":
		r.needs = append(r.needs, "amd-sev")
	case "sev-snp":
		r.needs = append(r.needs, "amd-sev-snp")
	case "tdx":
		r.needs = append(r.needs, "intel-tdx")
	}
	return r
}

// wantsSecureBoot reports whether the request asks for secure boot.
func (r firmwareRequest) wantsSecureBoot() bool {
	return r.features["secure-boot"] || r.secure == "yes"
}

// isQ35 reports whether machine is a q35 type (canonical or alias).
func isQ35(machine string) bool {
	return machine == "q35" || strings.HasPrefix(machine, "pc-q35-")
}

// check refuses requests no firmware can meet: secure boot
// outside q35 or without SMM, enrolled keys without secure boot.
func (r firmwareRequest) check() error {
	if on, ok := r.features["enrolled-keys"]; ok && on {
		if sb, ok := r.features["secure-boot"]; ok && !sb {
			return &Error{Path: "os/firmware", Msg: "feature 'enrolled-keys' needs feature 'secure-boot', which is disabled"}
		}
	}
	if !r.wantsSecureBoot() || (r.arch != "x86_64" && r.arch != "i686") {
		return nil // other arches have no SMM to require
	}
	what := "secure boot (feature 'secure-boot')"
	if r.secure == "yes" {
		what = "secure boot (<loader secure='yes'>)"
	}
	if !isQ35(r.machine) {
		return &Error{Path: "os/type", Msg: fmt.Sprintf("%s needs a q35 machine type; machine '%s' has no SMM-protected flash (use machine='q35')", what, r.machine)}
	}
	if r.smm == "no" {
		return &Error{Path: "features/smm", Msg: what + " needs SMM: <smm state='off'/> conflicts with it"}
	}
	return nil
}

// firmwareMatch tells whether desc fits r; when not, why (for tests and
// messages).
func firmwareMatch(desc firmwareDesc, r firmwareRequest) (bool, string) {
	if !has(desc.InterfaceTypes, "uefi") {
		return false, "not UEFI"
	}
	if desc.Mapping.Device != "flash" || desc.Mapping.Executable.Filename == "" {
		return false, "not a flash image"
	}
	if r.loaderType != "" && r.loaderType != "pflash" {
		return false, "loader type '" + r.loaderType + "' is not pflash"
	}
	if r.loader != "" && !samePath(r.loader, desc.Mapping.Executable.Filename) {
		return false, "another executable"
	}
	if f := desc.Mapping.Executable.Format; f != "" && f != r.format {
		return false, "format " + f
	}
	stateless := desc.Mapping.Mode == "stateless"
	switch {
	case r.stateless && !stateless:
		return false, "has a variable store (stateless asked)"
	case !r.stateless && stateless:
		return false, "stateless"
	}
	if r.template != "" && !samePath(r.template, desc.Mapping.NVRAMTemplate.Filename) {
		return false, "another NVRAM template"
	}
	target := false
	for _, t := range desc.Targets {
		if t.Architecture != r.arch {
			continue
		}
		for _, m := range t.Machines {
			if machineGlob(m, r.machine) {
				target = true
			}
		}
	}
	if !target {
		return false, "no target " + r.arch + " " + r.machine
	}
	names := make([]string, 0, len(r.features))
	for n := range r.features {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if has(desc.Features, name) != r.features[name] {
			return false, fmt.Sprintf("feature %s=%s", name, yesNo(has(desc.Features, name)))
		}
	}
	smm := has(desc.Features, "requires-smm")
	switch {
	case r.secure == "yes" && !(smm && has(desc.Features, "secure-boot")):
		return false, "not secure-boot with SMM (<loader secure='yes'>)"
	case r.secure == "no" && smm:
		return false, "requires SMM (<loader secure='no'>)"
	case r.smm == "no" && smm:
		return false, "requires SMM (<smm state='off'>)"
	}
	for _, n := range r.needs {
		if !has(desc.Features, n) {
			return false, "lacks " + n
		}
	}
	return true, ""
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// machineGlob matches a descriptor's machine pattern against a machine
// type; the aliases q35 and pc stand for their versioned names.
func machineGlob(pattern, machine string) bool {
	switch machine {
	case "q35":
		machine = "pc-q35-latest"
	case "pc":
		machine = "pc-i440fx-latest"
	}
	ok, _ := path.Match(pattern, machine)
	return ok
}

// samePath compares two file names as written (a descriptor describes
// the file it names: OVMF_CODE_4M.ms.fd is a link to the secboot image
// but comes with other variables).
func samePath(a, b string) bool {
	return filepath.Clean(a) == filepath.Clean(b)
}

// selectFirmware returns the first descriptor matching r, or an error
// saying what was asked and what exists.
func selectFirmware(descs []firmwareDesc, dirs []string, r firmwareRequest) (firmwareDesc, error) {
	var seen []string
	for _, desc := range descs {
		if ok, _ := firmwareMatch(desc, r); ok {
			return desc, nil
		}
		seen = append(seen, filepath.Base(desc.file))
	}
	asked := r.arch + " machine '" + r.machine + "'"
	var wishes []string
	for _, n := range []string{"secure-boot", "enrolled-keys"} {
		if on, ok := r.features[n]; ok {
			wishes = append(wishes, n+"="+yesNo(on))
		}
	}
	if r.secure != "" {
		wishes = append(wishes, "loader secure="+r.secure)
	}
	if r.loader != "" {
		wishes = append(wishes, "loader "+r.loader)
	}
	if len(wishes) > 0 {
		asked += " with " + strings.Join(wishes, ", ")
	}
	found := "there are none"
	if len(seen) > 0 {
		found = "found " + strings.Join(seen, ", ")
	}
	return firmwareDesc{}, &Error{Path: "os", Msg: fmt.Sprintf("firmware='efi': no UEFI firmware descriptor matches %s (looked in %s: %s); install OVMF (Debian: apt install ovmf) or give <loader>",
		asked, strings.Join(dirs, ", "), found), Err: ErrUnsupported}
}

// ResolveFirmware is ResolveFirmwareIn(FirmwareDirs).
func (d *Domain) ResolveFirmware() error { return d.ResolveFirmwareIn(FirmwareDirs) }

// ResolveFirmwareIn does firmware autoselection for <os firmware='efi'>
// as libvirt does, from the descriptors in dirs (highest precedence
// first): the first descriptor, in file-name order, whose architecture,
// machine glob and features match the definition (<firmware><feature
// name='secure-boot'|'enrolled-keys'>, <loader secure/type/format>,
// <smm>, <launchSecurity>) is written back into d: <firmware> features
// as the image has them, <loader readonly='yes' [secure='yes']
// type='pflash'>, <nvram template>, and <features><smm state='on'/> for
// images that require SMM. With a <loader> path already given it only
// fills in a missing <nvram template> from the descriptor of that path.
// Secure boot outside q35, or with SMM off, is refused; no match is an
// error wrapping ErrUnsupported. The driver calls it at define (so the
// stored definition pins the firmware) and on the live definition at
// start; BuildCommand calls it on its copy.
func (d *Domain) ResolveFirmwareIn(dirs []string) error {
	os_ := child(d.root, "os")
	efi := attr(os_, "firmware") == "efi"
	r := d.firmwareRequestOf()
	if efi || r.secure == "yes" {
		if err := r.check(); err != nil {
			return err
		}
	}
	if !efi {
		return nil
	}
	if r.loader != "" {
		return d.checkGivenLoader(loadFirmwareDescs(dirs), r)
	}
	desc, err := selectFirmware(loadFirmwareDescs(dirs), dirs, r)
	if err != nil {
		return err
	}
	fw := ensure(os_, "firmware")
	for _, n := range []string{"enrolled-keys", "secure-boot"} {
		if _, asked := r.features[n]; !asked {
			f := fw.CreateElement("feature")
			f.CreateAttr("enabled", yesNo(has(desc.Features, n)))
			f.CreateAttr("name", n)
		}
	}
	sortFeatures(fw)
	l := ensure(os_, "loader")
	setAttr(l, "readonly", "yes")
	if has(desc.Features, "secure-boot") && has(desc.Features, "requires-smm") {
		setAttr(l, "secure", "yes")
	}
	setAttr(l, "type", "pflash")
	l.SetText(desc.Mapping.Executable.Filename)
	if t := desc.Mapping.NVRAMTemplate.Filename; t != "" && desc.Mapping.Mode != "stateless" {
		n := ensure(os_, "nvram")
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

// checkGivenLoader handles firmware='efi' with a <loader> path (one the
// user gave, or one selected before and read back): a loader that
// descriptors describe must fit the rest of the request, as with libvirt,
// so that a definition whose <firmware> features were edited does not keep
// running the old image; a fitting descriptor supplies a missing <nvram
// template>. A loader no descriptor describes is taken as given.
func (d *Domain) checkGivenLoader(descs []firmwareDesc, r firmwareRequest) error {
	why := ""
	for _, desc := range descs {
		if !samePath(desc.Mapping.Executable.Filename, r.loader) {
			continue
		}
		ok, reason := firmwareMatch(desc, r)
		if !ok {
			why = reason
			continue
		}
		if t := desc.Mapping.NVRAMTemplate.Filename; t != "" && r.template == "" && !r.stateless && desc.Mapping.Mode != "stateless" {
			setAttr(ensure(child(d.root, "os"), "nvram"), "template", t)
		}
		return nil
	}
	if why == "" {
		return nil
	}
	return &Error{Path: "os/loader", Msg: fmt.Sprintf("firmware='efi': the descriptor of loader %s does not fit the definition (%s); "+
		"remove <loader> and the <nvram> template to select the firmware again (and start --reset-nvram)", r.loader, why)}
}

// sortFeatures orders <firmware><feature> by name, as libvirt writes them.
func sortFeatures(fw *etree.Element) {
	fs := children(fw, "feature")
	sort.SliceStable(fs, func(i, j int) bool { return attr(fs[i], "name") < attr(fs[j], "name") })
	for _, f := range fs {
		fw.RemoveChild(f)
	}
	for _, f := range fs {
		fw.AddChild(f)
	}
}

// findTemplate returns the NVRAM template of the UEFI descriptor whose
// executable is loader, "" when none describes it.
func findTemplate(descs []firmwareDesc, loader string) string {
	for _, desc := range descs {
		if desc.Mapping.Device == "flash" && samePath(desc.Mapping.Executable.Filename, loader) {
			if t := desc.Mapping.NVRAMTemplate.Filename; t != "" {
				return t
			}
		}
	}
	return ""
}

// NVRAMTemplateIn returns the template to create d's variable store from:
// <nvram template>, else the template of the firmware descriptor (in
// dirs) whose executable is the <loader> path; "" when neither exists.
func (d *Domain) NVRAMTemplateIn(dirs []string) string {
	if t := attr(find(d.root, "os", "nvram"), "template"); t != "" {
		return t
	}
	l, _ := d.Loader()
	if l == "" {
		return ""
	}
	return findTemplate(loadFirmwareDescs(dirs), l)
}

// SetNVRAMPath gives a guest that needs a UEFI variable store and names
// none (see NVRAMPath) the file dir/NAME_VARS.fd, written into <nvram>,
// as libvirt names /var/lib/libvirt/qemu/nvram/NAME_VARS.fd at define.
// It reports whether it changed d.
func (d *Domain) SetNVRAMPath(dir string) bool {
	n := find(d.root, "os", "nvram")
	if nvramFile(n) != "" {
		return false
	}
	p, _ := d.NVRAMPath(dir)
	if p == "" {
		return false
	}
	ensure(child(d.root, "os"), "nvram").SetText(p)
	return true
}

func has(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// loadFirmwareDescs reads the descriptors in dirs (highest precedence
// first), by file name: an earlier directory's file hides a later one's,
// an empty file hides without replacing, unreadable or malformed files
// are skipped.
func loadFirmwareDescs(dirs []string) []firmwareDesc {
	byName := map[string]string{}
	for i := len(dirs) - 1; i >= 0; i-- {
		files, _ := filepath.Glob(filepath.Join(dirs[i], "*.json"))
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
		if err != nil || len(strings.TrimSpace(string(data))) == 0 {
			continue // masked (empty or /dev/null) or unreadable
		}
		var desc firmwareDesc
		if json.Unmarshal(data, &desc) == nil {
			desc.file = byName[n]
			out = append(out, desc)
		}
	}
	return out
}
