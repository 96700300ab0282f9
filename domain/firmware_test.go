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
