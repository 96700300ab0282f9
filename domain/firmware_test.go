package domain

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestResolveFirmware checks UEFI autoselection from firmware descriptors.
func TestResolveFirmware(t *testing.T) {
	dir := t.TempDir()
	saved := FirmwareDirs
	FirmwareDirs = []string{dir}
	defer func() { FirmwareDirs = saved }()
	write := func(name, features string) {
		desc := `{"interface-types":["uefi"],"mapping":{"device":"flash",
			"executable":{"filename":"/fw/` + name + `_CODE.fd","format":"raw"},
			"nvram-template":{"filename":"/fw/` + name + `_VARS.fd","format":"raw"}},
			"targets":[{"architecture":"x86_64","machines":["pc-q35-*"]}],"features":[` + features + `]}`
		if err := os.WriteFile(filepath.Join(dir, name+".json"), []byte(desc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("10-ovmf-secure", `"secure-boot","enrolled-keys","requires-smm"`)
	write("20-ovmf", `"acpi-s3"`)
	mk := func(machine, fw string) *Domain {
		d, err := Parse([]byte(`<domain type='qemu'><name>fw</name><memory>65536</memory>
			<os firmware='efi'><type arch='x86_64' machine='` + machine + `'>hvm</type>` + fw + `</os></domain>`))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	d := mk("q35", "")
	cmd, err := BuildCommand(d, CommandOptions{LibDir: "/var/lib/qemufs/fw"})
	if err != nil {
		t.Fatal(err)
	}
	s := cmd.String()
	for _, want := range []string{`"filename":"/fw/10-ovmf-secure_CODE.fd"`, "smm=on", "pflash0=libvirt-pflash0-format",
		`"filename":"/var/lib/qemufs/fw/fw_VARS.fd"`, "driver=cfi.pflash01,property=secure,value=on"} {
		if !strings.Contains(s, want) {
			t.Errorf("%q not in %s", want, s)
		}
	}
	d = mk("q35", "<firmware><feature enabled='no' name='secure-boot'/></firmware>")
	if err := Expand(d, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.ResolveFirmware(); err != nil {
		t.Fatal(err)
	}
	if l, ro := d.Loader(); l != "/fw/20-ovmf_CODE.fd" || !ro {
		t.Errorf("loader %q readonly %v", l, ro)
	}
	if p, tmpl := d.NVRAMPath("/lib"); p != "/lib/fw_VARS.fd" || tmpl != "/fw/20-ovmf_VARS.fd" {
		t.Errorf("NVRAMPath = %q, %q", p, tmpl)
	}
	d = mk("pc", "")
	if _, err := BuildCommand(d, CommandOptions{}); err == nil || !errors.Is(err, ErrUnsupported) ||
		!strings.HasPrefix(err.Error(), "os: firmware='efi': no UEFI firmware descriptor matches") {
		t.Errorf("no match: %v", err)
	}
}

// debianFirmware writes descriptors shaped like Debian 12's ovmf package
// (/usr/share/qemu/firmware) into dir.
func debianFirmware(t *testing.T, dir string) {
	t.Helper()
	for name, d := range map[string]struct{ code, vars, machines, features string }{
		"40-edk2-x86_64-secure-enrolled": {"OVMF_CODE_4M.ms.fd", "OVMF_VARS_4M.ms.fd", `"pc-q35-*"`,
			`"acpi-s3","amd-sev","enrolled-keys","requires-smm","secure-boot","verbose-dynamic"`},
		"50-edk2-x86_64-secure": {"OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.fd", `"pc-q35-*"`,
			`"acpi-s3","amd-sev","requires-smm","secure-boot","verbose-dynamic"`},
		"60-edk2-x86_64": {"OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd", `"pc-i440fx-*","pc-q35-*"`,
			`"acpi-s3","amd-sev","verbose-dynamic"`},
	} {
		desc := `{"description":"test","interface-types":["uefi"],"mapping":{"device":"flash",
			"executable":{"filename":"/usr/share/OVMF/` + d.code + `","format":"raw"},
			"nvram-template":{"filename":"/usr/share/OVMF/` + d.vars + `","format":"raw"}},
			"targets":[{"architecture":"x86_64","machines":[` + d.machines + `]}],"features":[` + d.features + `],"tags":[]}`
		if err := os.WriteFile(filepath.Join(dir, name+".json"), []byte(desc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFirmwareSelection is the descriptor matching table: what a
// definition asks (arch, machine, <firmware> features, <loader>, <smm>)
// against Debian's three OVMF descriptors -> the chosen image or error.
func TestFirmwareSelection(t *testing.T) {
	usr := t.TempDir()
	debianFirmware(t, usr)
	const (
		enrolled = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
		secure   = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
		plain    = "/usr/share/OVMF/OVMF_CODE_4M.fd"
		msVars   = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
		vars     = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	)
	sb := func(v string) string { return `<feature enabled='` + v + `' name='secure-boot'/>` }
	ek := func(v string) string { return `<feature enabled='` + v + `' name='enrolled-keys'/>` }
	cases := []struct {
		name, arch, machine, firmware, loader, extra string
		loaderPath, template                         string
		secureLoader, smm                            bool
		err                                          string // substring; "" for success
	}{
		{name: "virt-install --boot uefi (q35)", machine: "pc-q35-7.2", loaderPath: enrolled, template: msVars, secureLoader: true, smm: true},
		{name: "q35 alias", machine: "q35", loaderPath: enrolled, template: msVars, secureLoader: true, smm: true},
		{name: "secure-boot=yes", machine: "pc-q35-7.2", firmware: sb("yes"), loaderPath: enrolled, template: msVars, secureLoader: true, smm: true},
		{name: "secure-boot=yes enrolled-keys=no", machine: "pc-q35-7.2", firmware: sb("yes") + ek("no"), loaderPath: secure, template: vars, secureLoader: true, smm: true},
		{name: "enrolled-keys=no", machine: "pc-q35-7.2", firmware: ek("no"), loaderPath: secure, template: vars, secureLoader: true, smm: true},
		{name: "secure-boot=no", machine: "pc-q35-7.2", firmware: sb("no"), loaderPath: plain, template: vars},
		{name: "pc", machine: "pc-i440fx-7.2", loaderPath: plain, template: vars},
		{name: "pc alias", machine: "pc", loaderPath: plain, template: vars},
		{name: "q35 smm off", machine: "pc-q35-7.2", extra: "<features><smm state='off'/></features>", loaderPath: plain, template: vars},
		{name: "loader secure=no", machine: "pc-q35-7.2", loader: "<loader secure='no'/>", loaderPath: plain, template: vars},
		{name: "loader secure=yes", machine: "pc-q35-7.2", loader: "<loader secure='yes'/>", loaderPath: enrolled, template: msVars, secureLoader: true, smm: true},
		{name: "sev needs amd-sev", machine: "pc-q35-7.2", extra: "<launchSecurity type='sev'><policy>0x0003</policy></launchSecurity>", loaderPath: enrolled, template: msVars, secureLoader: true, smm: true},
		{name: "loader path fills the template", machine: "pc-q35-7.2",
			loader: "<loader readonly='yes' secure='yes' type='pflash'>" + secure + "</loader>", extra: "<features><smm state='on'/></features>",
			loaderPath: secure, template: vars, secureLoader: true, smm: true},
		{name: "pinned secure loader, secure boot now off", machine: "pc-q35-7.2", firmware: sb("no"),
			loader: "<loader readonly='yes' secure='yes' type='pflash'>" + enrolled + "</loader><nvram template='" + msVars + "'/>",
			err:    "os/loader: firmware='efi': the descriptor of loader " + enrolled + " does not fit the definition (feature secure-boot=yes)"},
		{name: "pinned loader, other template", machine: "pc-q35-7.2",
			loader: "<loader readonly='yes' type='pflash'>" + plain + "</loader><nvram template='" + msVars + "'/>",
			err:    "(another NVRAM template)"},
		{name: "loader no descriptor describes", machine: "pc-q35-7.2", firmware: sb("no"),
			loader: "<loader readonly='yes' type='pflash'>/opt/fw/MINE.fd</loader>", loaderPath: "/opt/fw/MINE.fd"},
		{name: "secure boot on pc", machine: "pc-i440fx-7.2", firmware: sb("yes"), err: "os/type: secure boot (feature 'secure-boot') needs a q35 machine type; machine 'pc-i440fx-7.2'"},
		{name: "secure loader on pc", machine: "pc", loader: "<loader secure='yes'/>", err: "secure boot (<loader secure='yes'>) needs a q35 machine type"},
		{name: "secure boot without SMM", machine: "pc-q35-7.2", firmware: sb("yes"), extra: "<features><smm state='off'/></features>", err: "features/smm: secure boot (feature 'secure-boot') needs SMM"},
		{name: "enrolled keys without secure boot", machine: "pc-q35-7.2", firmware: sb("no") + ek("yes"), err: "feature 'enrolled-keys' needs feature 'secure-boot'"},
		{name: "enrolled keys on pc", machine: "pc-i440fx-7.2", firmware: ek("yes"), err: "no UEFI firmware descriptor matches x86_64 machine 'pc-i440fx-7.2' with enrolled-keys=yes"},
		{name: "sev-snp", machine: "pc-q35-7.2", extra: "<launchSecurity type='sev-snp'/>", err: "no UEFI firmware descriptor matches"},
		{name: "other arch", arch: "aarch64", machine: "virt-7.2", err: "no UEFI firmware descriptor matches aarch64 machine 'virt-7.2' (looked in"},
		{name: "stateless", machine: "pc-q35-7.2", loader: "<loader stateless='yes'/>", err: "no UEFI firmware descriptor matches"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			arch := c.arch
			if arch == "" {
				arch = "x86_64"
			}
			virt := "qemu"
			if strings.Contains(c.extra, "<launchSecurity") {
				virt = "kvm" // only a hardware accelerator protects guest memory
			}
			d, err := Parse([]byte(`<domain type='` + virt + `'><name>fw</name><memory>65536</memory><os firmware='efi'><type arch='` + arch +
				`' machine='` + c.machine + `'>hvm</type>` + wrapFirmware(c.firmware) + c.loader + `</os>` + c.extra + `</domain>`))
			if err != nil {
				t.Fatal(err)
			}
			err = d.ResolveFirmwareIn([]string{usr})
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l := find(d.root, "os", "loader")
			if got := strings.TrimSpace(l.Text()); got != c.loaderPath {
				t.Errorf("loader %s, want %s", got, c.loaderPath)
			}
			if _, tmpl := d.NVRAM(); tmpl != c.template {
				t.Errorf("template %s, want %s", tmpl, c.template)
			}
			if got := attr(l, "secure") == "yes"; got != c.secureLoader {
				t.Errorf("secure=%v, want %v", got, c.secureLoader)
			}
			if got := attr(find(d.root, "features", "smm"), "state") == "on"; got != c.smm {
				t.Errorf("smm on=%v, want %v", got, c.smm)
			}
		})
	}
}

func wrapFirmware(features string) string {
	if features == "" {
		return ""
	}
	return "<firmware>" + features + "</firmware>"
}

// TestFirmwareWriteBack checks the XML a selection leaves, as libvirt
// writes it, and that selecting again changes nothing.
func TestFirmwareWriteBack(t *testing.T) {
	usr := t.TempDir()
	debianFirmware(t, usr)
	d, err := Parse([]byte(`<domain type='qemu'><name>vm</name><memory>65536</memory><os firmware='efi'>
		<type arch='x86_64' machine='pc-q35-7.2'>hvm</type><firmware><feature enabled='yes' name='secure-boot'/></firmware>
		<boot dev='hd'/></os></domain>`))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.ResolveFirmwareIn([]string{usr}); err != nil {
		t.Fatal(err)
	}
	if !d.SetNVRAMPath("/lib/nvram") {
		t.Error("SetNVRAMPath changed nothing")
	}
	x := string(d.XML())
	for _, want := range []string{
		"<firmware>\n      <feature enabled='yes' name='enrolled-keys'/>\n      <feature enabled='yes' name='secure-boot'/>\n    </firmware>\n" +
			"    <loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>\n" +
			"    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>/lib/nvram/vm_VARS.fd</nvram>\n    <boot dev='hd'/>",
		"<smm state='on'/>",
	} {
		if !strings.Contains(x, want) {
			t.Errorf("%q not in\n%s", want, x)
		}
	}
	if err := d.ResolveFirmwareIn([]string{usr}); err != nil || d.SetNVRAMPath("/other") || string(d.XML()) != x {
		t.Errorf("second selection changed the definition (%v):\n%s", err, d.XML())
	}
	cmd, err := BuildCommand(d, CommandOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"-machine pc-q35-7.2,usb=off,smm=on,", "-global driver=cfi.pflash01,property=secure,value=on",
		`"filename":"/lib/nvram/vm_VARS.fd"`, `"filename":"/usr/share/OVMF/OVMF_CODE_4M.ms.fd"`} {
		if !strings.Contains(cmd.String(), want) {
			t.Errorf("%q not in %s", want, cmd)
		}
	}
}

// TestFirmwarePrecedence checks libvirt's descriptor precedence: a file
// in an earlier directory replaces the same name in a later one, an empty
// one masks it, and names order the rest.
func TestFirmwarePrecedence(t *testing.T) {
	inst, etc, usr := t.TempDir(), t.TempDir(), t.TempDir()
	debianFirmware(t, usr)
	dirs := []string{inst, etc, usr}
	pick := func() string {
		t.Helper()
		d, err := Parse([]byte(`<domain type='qemu'><name>vm</name><memory>65536</memory><os firmware='efi'>
			<type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os></domain>`))
		if err != nil {
			t.Fatal(err)
		}
		if err := d.ResolveFirmwareIn(dirs); err != nil {
			return err.Error()
		}
		l, _ := d.Loader()
		return l
	}
	if got := pick(); got != "/usr/share/OVMF/OVMF_CODE_4M.ms.fd" {
		t.Errorf("default: %s", got)
	}
	// /etc masks the enrolled build with an empty file.
	os.WriteFile(filepath.Join(etc, "40-edk2-x86_64-secure-enrolled.json"), nil, 0o644)
	if got := pick(); got != "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd" {
		t.Errorf("masked: %s", got)
	}
	// The instance's directory puts its own image first by name.
	data, _ := os.ReadFile(filepath.Join(usr, "60-edk2-x86_64.json"))
	os.WriteFile(filepath.Join(inst, "10-mine.json"), []byte(strings.ReplaceAll(string(data), "OVMF_CODE_4M.fd", "MINE.fd")), 0o644)
	if got := pick(); got != "/usr/share/OVMF/MINE.fd" {
		t.Errorf("instance override: %s", got)
	}
	// And replaces a system one of the same name.
	os.Remove(filepath.Join(inst, "10-mine.json"))
	os.WriteFile(filepath.Join(inst, "50-edk2-x86_64-secure.json"), []byte(strings.ReplaceAll(string(data), "OVMF_CODE_4M.fd", "MINE.fd")), 0o644)
	if got := pick(); got != "/usr/share/OVMF/MINE.fd" {
		t.Errorf("instance replaces by name: %s", got)
	}
	// A loader named without a template finds it from its descriptor.
	d, _ := Parse([]byte(`<domain type='qemu'><name>vm</name><memory>65536</memory><os>
		<type arch='x86_64' machine='pc-q35-7.2'>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader></os></domain>`))
	if got := d.NVRAMTemplateIn([]string{usr}); got != "/usr/share/OVMF/OVMF_VARS_4M.fd" {
		t.Errorf("template of a named loader: %q", got)
	}
	if got := d.NVRAMTemplateIn([]string{t.TempDir()}); got != "" {
		t.Errorf("template without descriptors: %q", got)
	}
}
