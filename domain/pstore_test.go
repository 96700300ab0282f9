package domain

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/domain/qemutest"
)

// pstoreXML is libvirt's pstore-acpi-erst case (a q35 guest whose ERST
// device sits on a pcie-to-pci-bridge), with the domain type and backing
// file given.
func pstoreXML(typ, path, pstore string) string {
	return `<domain type='` + typ + `'>
  <name>guest</name>
  <uuid>63840878-0deb-4095-97e6-fc444d9bc9fa</uuid>
  <memory unit='KiB'>1048576</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' index='0' model='none'/>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'>
      <model name='pcie-root-port'/><target chassis='1' port='0x8'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0' multifunction='on'/>
    </controller>
    <controller type='pci' index='2' model='pcie-to-pci-bridge'>
      <model name='pcie-pci-bridge'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </controller>
    <memballoon model='none'/>
    ` + strings.ReplaceAll(pstore, "@PATH@", path) + `
  </devices>
</domain>`
}

// TestPstoreArgv: the backend and device are libvirt 9.0's, and an
// address-less pstore gets a conventional PCI slot.
func TestPstoreArgv(t *testing.T) {
	for _, tc := range []struct {
		name, pstore string
		want         []string
	}{
		{"libvirt case", `<pstore backend='acpi-erst'><path>@PATH@</path><size unit='KiB'>8</size>
		  <address type='pci' domain='0x0000' bus='0x02' slot='0x01' function='0x0'/></pstore>`, []string{
			"-object", `{"qom-type":"memory-backend-file","id":"mempstore0","mem-path":"/tmp/guest_acpi_esrt","size":8192,"share":true}`,
			"-device", `{"driver":"acpi-erst","id":"pstore0","memdev":"mempstore0","bus":"pci.2","addr":"0x1"}`,
			"-msg", "timestamp=on"}},
		{"address assigned", `<pstore backend='acpi-erst'><path>@PATH@</path><size unit='M'>1</size></pstore>`, []string{
			"-object", `{"qom-type":"memory-backend-file","id":"mempstore0","mem-path":"/tmp/guest_acpi_esrt","size":1048576,"share":true}`,
			"-device", `{"driver":"acpi-erst","id":"pstore0","memdev":"mempstore0","bus":"pci.2","addr":"0x1"}`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Parse([]byte(pstoreXML("kvm", "/tmp/guest_acpi_esrt", tc.pstore)))
			if err != nil {
				t.Fatal(err)
			}
			if err := Expand(d, nil); err != nil {
				t.Fatal(err)
			}
			cmd, err := BuildCommand(d, CommandOptions{QMPSocket: "/run/q.qmp", DomainDir: "/run/d",
				ExtraArgs: []string{"-sandbox", "on"}})
			if err != nil {
				t.Fatal(err)
			}
			line := strings.Join(cmd.Args, "\n")
			if !strings.Contains(line, strings.Join(tc.want, "\n")) {
				t.Errorf("argv lacks\n%s\nin\n%s", strings.Join(tc.want, "\n"), line)
			}
			if !strings.Contains(line, "-sandbox\non\n-object\n{\"qom-type\":\"memory-backend-file\"") {
				t.Errorf("the pstore does not follow the sandbox as in libvirt's argv")
			}
			found := false
			for _, hp := range d.HostPaths() {
				if hp.Path == "/tmp/guest_acpi_esrt" && !hp.ReadOnly {
					found = true
				}
			}
			if !found {
				t.Errorf("HostPaths lacks the writable pstore file: %v", d.HostPaths())
			}
		})
	}
}

// TestPstoreParseErrors: every malformed pstore is refused, naming it.
func TestPstoreParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, pstore, err string }{
		{"no backend", `<pstore><path>/p</path><size unit='KiB'>8</size></pstore>`, "attribute backend is required"},
		{"other backend", `<pstore backend='efi'><path>/p</path><size unit='KiB'>8</size></pstore>`, `unknown value "efi"`},
		{"no path", `<pstore backend='acpi-erst'><size unit='KiB'>8</size></pstore>`, "element <path> is required"},
		{"relative path", `<pstore backend='acpi-erst'><path>p</path><size unit='KiB'>8</size></pstore>`, "must be absolute"},
		{"no size", `<pstore backend='acpi-erst'><path>/p</path></pstore>`, "element <size> is required"},
		{"odd size", `<pstore backend='acpi-erst'><path>/p</path><size unit='KiB'>12</size></pstore>`, "not a multiple of the ACPI ERST record size"},
		{"unknown child", `<pstore backend='acpi-erst'><path>/p</path><size unit='KiB'>8</size><driver/></pstore>`, "unknown element <driver>"},
		{"two", `<pstore backend='acpi-erst'><path>/p</path><size unit='KiB'>8</size></pstore><pstore backend='acpi-erst'><path>/q</path><size unit='KiB'>8</size></pstore>`, "only one <pstore>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(pstoreXML("kvm", "/p", tc.pstore)))
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "pstore") {
				t.Fatalf("error %v, want one naming pstore and containing %q", err, tc.err)
			}
		})
	}
}

// TestPstoreRealQEMU starts QEMU 7.2 (TCG) paused with the pstore argv:
// QEMU accepts the backend and device and maps the file.
func TestPstoreRealQEMU(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "erst.img")
	d, err := Parse([]byte(pstoreXML("qemu", path, `<pstore backend='acpi-erst'><path>@PATH@</path><size unit='KiB'>64</size></pstore>`)))
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := BuildCommand(d, CommandOptions{QMPFD: qemutest.QMPFD, DomainDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), qemutest.Timeout)
	defer cancel()
	r, err := qemutest.Run(ctx, dir, cmd.Path, cmd.Args, cmd.Env)
	if err != nil {
		t.Fatalf("QEMU refused the pstore argv: %v\n%s", err, cmd)
	}
	if r.Status != "prelaunch" {
		t.Errorf("status %q", r.Status)
	}
	st, err := os.Stat(path)
	if err != nil || st.Size() != 64<<10 {
		t.Errorf("backing file: %v size %v, want 64 KiB", err, st)
	}
}
