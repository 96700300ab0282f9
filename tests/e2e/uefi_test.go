package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/harness"
)

// UEFI guests with Debian's real OVMF (scripts/deps.sh installs ovmf),
// under TCG, defined with the XML virt-install writes. Debian's OVMF is a
// RELEASE build: it says nothing on the isa-debugcon port, but its boot
// manager and shell talk on the serial console, which is what these tests
// read.

// firmwareTimeout bounds OVMF's way to its boot manager under TCG on a
// loaded machine (about 15 s when idle).
const firmwareTimeout = 4 * time.Minute

// virtInstallUEFI is what `virt-install --print-xml --name NAME
// --virt-type qemu --memory 256 --machine MACHINE --nodisks --network
// none --graphics none --osinfo linux2022 --boot uefi[,firmware.*]`
// writes; osExtra goes inside <os> (the <firmware> block of firmware.*
// options, an <nvram>).
func virtInstallUEFI(name, machine, osExtra string) string {
	return `<domain type="qemu">
  <name>` + name + `</name>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://libosinfo.org/linux/2022"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory>262144</memory>
  <currentMemory>262144</currentMemory>
  <vcpu>1</vcpu>
  <os firmware="efi">
    <type arch="x86_64" machine="` + machine + `">hvm</type>` + osExtra + `
    <boot dev="hd"/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <clock offset="utc">
    <timer name="rtc" tickpolicy="catchup"/>
    <timer name="pit" tickpolicy="delay"/>
    <timer name="hpet" present="no"/>
  </clock>
  <pm>
    <suspend-to-mem enabled="no"/>
    <suspend-to-disk enabled="no"/>
  </pm>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <console type="pty"/>
    <memballoon model="virtio"/>
    <rng model="virtio">
      <backend model="random">/dev/urandom</backend>
    </rng>
  </devices>
</domain>
`
}

// needOVMF skips when Debian's OVMF is not installed.
func needOVMF(t *testing.T) {
	t.Helper()
	for _, f := range []string{"/usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json",
		"/usr/share/qemu/firmware/60-edk2-x86_64.json", "/usr/share/OVMF/OVMF_VARS_4M.fd"} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("OVMF not installed (scripts/deps.sh installs ovmf): %v", err)
		}
	}
}

// mustRunning checks QMP's view of the guest: running.
func mustRunning(t *testing.T, m *harness.Mount, name string) {
	t.Helper()
	out, err := m.QMP(name, `{"execute":"query-status"}`, time.Minute)
	var reply struct {
		Return struct {
			Status  string `json:"status"`
			Running bool   `json:"running"`
		} `json:"return"`
	}
	if err != nil || json.Unmarshal([]byte(out), &reply) != nil || !reply.Return.Running || reply.Return.Status != "running" {
		t.Fatalf("query-status: %s %v", out, err)
	}
}

// TestUEFISecureBoot: virt-install's secure-boot guest (q35, firmware
// feature secure-boot) on the system instance, so QEMU runs as the qemu
// user. The descriptor with enrolled Microsoft keys is chosen and pinned
// in the stored definition, SMM and the secure pflash are on, the NVRAM
// file the XML names (which does not exist yet: the issue's "is not
// accessible") is created from the enrolled template, and the firmware
// enforces secure boot: it refuses to start its own unsigned shell.
func TestUEFISecureBoot(t *testing.T) {
	t.Parallel()
	needOVMF(t)
	m := harness.Start(t, harness.Options{System: true})
	nvram := filepath.Join(m.Root, "var/lib/qemufs/qemu/sb/sb_VARS.fd")
	m.Define("sb", virtInstallUEFI("sb", "q35", `
    <firmware>
      <feature enabled="yes" name="secure-boot"/>
    </firmware>
    <nvram>`+nvram+`</nvram>`))
	conf := m.Read("sb", "config.xml")
	for _, want := range []string{"machine='pc-q35-7.2'",
		"<feature enabled='yes' name='enrolled-keys'/>\n      <feature enabled='yes' name='secure-boot'/>",
		"<loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>",
		"<nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>" + nvram + "</nvram>",
		"<smm state='on'/>"} {
		if !strings.Contains(conf, want) {
			t.Errorf("config.xml lacks %q:\n%s", want, conf)
		}
	}
	if _, err := os.Stat(nvram); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("NVRAM before the first start: %v", err)
	}
	m.MustCtl("sb", "start")
	mustRunning(t, m, "sb")
	log := m.QEMULog("sb")
	for _, want := range []string{"-machine pc-q35-7.2,usb=off,smm=on,", "-global driver=cfi.pflash01,property=secure,value=on",
		`"filename":"/usr/share/OVMF/OVMF_CODE_4M.ms.fd"`, `"filename":"` + nvram + `"`} {
		if !strings.Contains(log, want) {
			t.Errorf("QEMU's command line lacks %q:\n%s", want, log)
		}
	}
	// While it runs, the store belongs to QEMU's user (qemu).
	if fi, err := os.Stat(nvram); err != nil || fi.Sys().(*syscall.Stat_t).Uid == 0 {
		t.Errorf("NVRAM while running: %v, owner uid 0 (want QEMU's user)", err)
	}
	m.WaitConsole("sb", "BdsDxe:", firmwareTimeout)
	m.WaitConsole("sb", "Security Violation", firmwareTimeout)
	mustRunning(t, m, "sb")
	m.MustCtl("sb", "destroy")
	tmpl, _ := os.ReadFile("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
	got, err := os.ReadFile(nvram)
	if err != nil || len(got) != len(tmpl) {
		t.Fatalf("NVRAM after the run: %d bytes, %v; want a copy of the %d-byte template", len(got), err, len(tmpl))
	}
	// Shut off, it is the daemon's again (docs/uefi.md: ownership).
	if fi, err := os.Stat(nvram); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("NVRAM after the run: %v %v; want root's, mode 0600", fi.Mode(), err)
	}

	// Switching secure boot off: the pinned secure loader no longer fits;
	// without it the plain image is chosen, and --reset-nvram gives its
	// empty variable store.
	off := strings.Replace(conf, "<feature enabled='yes' name='secure-boot'/>", "<feature enabled='no' name='secure-boot'/>", 1)
	off = strings.Replace(off, "<feature enabled='yes' name='enrolled-keys'/>", "<feature enabled='no' name='enrolled-keys'/>", 1)
	err = m.Write(off, "sb", "config.xml")
	if !errors.Is(err, syscall.EINVAL) || !strings.Contains(m.ErrorOf("sb"), "does not fit the definition (feature enrolled-keys=yes)") {
		t.Errorf("redefine with secure boot off and the secure loader: %v, %q", err, m.ErrorOf("sb"))
	}
	off = strings.Replace(off, "<loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>", "", 1)
	off = strings.Replace(off, "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>", "<nvram>", 1)
	m.Define("sb", off)
	if conf := m.Read("sb", "config.xml"); !strings.Contains(conf, "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>") ||
		!strings.Contains(conf, "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>"+nvram+"</nvram>") {
		t.Errorf("secure boot off: not the plain image:\n%s", conf)
	}
	m.MustCtl("sb", "start --paused --reset-nvram")
	plain, _ := os.ReadFile("/usr/share/OVMF/OVMF_VARS_4M.fd")
	if got, err := os.ReadFile(nvram); err != nil || !bytes.Equal(got, plain) {
		t.Errorf("after start --reset-nvram the store is not the plain template (%v)", err)
	}
	m.MustCtl("sb", "destroy")
}

// TestUEFIFirmwareErrors: requests no firmware can meet are refused at
// define with the reason, leaving the previous definition; a pflash
// loader whose variable store is missing and has no template says so.
func TestUEFIFirmwareErrors(t *testing.T) {
	t.Parallel()
	needOVMF(t)
	m := harness.Start(t, harness.Options{})
	m.Define("e", virtInstallUEFI("e", "pc", ""))
	before := m.Read("e", "config.xml")
	if !strings.Contains(before, "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>") {
		t.Errorf("pc guest's loader:\n%s", before)
	}
	for _, c := range []struct{ xml, msg string }{
		{virtInstallUEFI("e", "pc", `<firmware><feature enabled="yes" name="secure-boot"/></firmware>`),
			"needs a q35 machine type; machine 'pc-i440fx-7.2'"},
		{strings.Replace(virtInstallUEFI("e", "q35", `<firmware><feature enabled="yes" name="secure-boot"/></firmware>`),
			"<apic/>", "<apic/><smm state='off'/>", 1), "features/smm: secure boot (feature 'secure-boot') needs SMM"},
		{virtInstallUEFI("e", "q35", `<firmware><feature enabled="no" name="secure-boot"/><feature enabled="yes" name="enrolled-keys"/></firmware>`),
			"feature 'enrolled-keys' needs feature 'secure-boot'"},
	} {
		err := m.Write(c.xml, "e", "config.xml")
		if !errors.Is(err, syscall.EINVAL) || !strings.Contains(m.ErrorOf("e"), c.msg) {
			t.Errorf("define: %v, error %q; want EINVAL and %q", err, m.ErrorOf("e"), c.msg)
		}
		if got := m.Read("e", "config.xml"); got != before {
			t.Errorf("a refused definition changed config.xml:\n%s", got)
		}
	}
	// A pflash loader with no <nvram template> and no descriptor.
	fake := filepath.Join(m.Base, "CODE.fd")
	if err := os.WriteFile(fake, make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	m.Define("n", strings.Replace(virtInstallUEFI("n", "pc", ""), `<os firmware="efi">`,
		`<os><loader readonly="yes" type="pflash">`+fake+`</loader>`, 1))
	err := m.Ctl("n", "start")
	if !errors.Is(err, syscall.EINVAL) || !strings.Contains(m.ErrorOf("n"), "no NVRAM template matches the loader "+fake) {
		t.Errorf("start without a template: %v; want EINVAL and 'no NVRAM template matches the loader'", err)
	}
	if got := m.State("n"); !strings.HasPrefix(got, "shut off") {
		t.Errorf("state after the failed start: %q", got)
	}
	if err := m.Ctl("n", "start --reset-nvram --bogus"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("start with a bad flag: %v", err)
	}
}

// TestUEFINVRAM: a UEFI guest on pc (virt-install --machine pc --boot
// uefi: OVMF without secure boot, whose shell starts). A variable the
// guest writes persists across a restart in lib/qemu/nvram/NAME_VARS.fd,
// which is not recreated; start --reset-nvram restores the template;
// rmdir keeps the store, `undefine --nvram` removes it.
func TestUEFINVRAM(t *testing.T) {
	t.Parallel()
	needOVMF(t)
	m := harness.Start(t, harness.Options{})
	nvram := filepath.Join(m.Root, "lib/qemu/nvram/u_VARS.fd")
	tmpl, err := os.ReadFile("/usr/share/OVMF/OVMF_VARS_4M.fd")
	if err != nil {
		t.Fatal(err)
	}
	m.Define("u", virtInstallUEFI("u", "pc", ""))
	if conf := m.Read("u", "config.xml"); !strings.Contains(conf, "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>"+nvram+"</nvram>") {
		t.Errorf("config.xml names no NVRAM under lib/qemu/nvram:\n%s", conf)
	}
	const (
		guid  = "6e3b7c1a-52f2-4f0e-9a5d-1d0c1a2b3c4d"
		value = "71 00 65 00 6D 00 75 00 66 00 73 00" // L"qemufs"
	)
	// The shell's prompt ends no line, so the console is followed as
	// bytes; each run's console starts empty.
	var con *harness.Follower
	seen := func(want string, n int) {
		t.Helper()
		deadline := time.Now().Add(firmwareTimeout)
		for strings.Count(con.String(), want) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%q not seen %d times on the console within %v:\n%q", want, n, firmwareTimeout, con.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	shell := func(n int, cmd string) {
		t.Helper()
		seen("Shell> ", n)
		if err := m.Send(cmd+"\r", "u", "console"); err != nil {
			t.Fatal(err)
		}
	}
	m.MustCtl("u", "start")
	con = m.Follow("u", "console")
	mustRunning(t, m, "u")
	seen("UEFI Interactive Shell", 1)
	shell(1, "setvar QfsTest -guid "+guid+" -nv -bs =L\"qemufs\"")
	shell(2, "setvar QfsTest -guid "+guid)
	seen(value, 1)
	con.Stop()
	m.MustCtl("u", "destroy")
	first, err := os.ReadFile(nvram)
	if err != nil || bytes.Equal(first, tmpl) {
		t.Fatalf("NVRAM after the first run: %v; unchanged from the template: %v", err, bytes.Equal(first, tmpl))
	}

	// Second start: the same store, with the variable.
	m.MustCtl("u", "start")
	con = m.Follow("u", "console")
	seen("UEFI Interactive Shell", 1)
	shell(1, "setvar QfsTest -guid "+guid)
	seen(value, 1)
	con.Stop()
	m.MustCtl("u", "destroy")

	// --reset-nvram: the template again (paused: the firmware has not run).
	m.MustCtl("u", "start --paused --reset-nvram")
	if got, err := os.ReadFile(nvram); err != nil || !bytes.Equal(got, tmpl) {
		t.Errorf("NVRAM after start --reset-nvram differs from the template (%v)", err)
	}
	m.MustCtl("u", "destroy")

	// undefine keeps the directory; --nvram removes the store.
	if err := m.Ctl("u", "undefine --nvram"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(nvram); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("NVRAM after undefine --nvram: %v", err)
	}
	if got := m.State("u"); got != "undefined" {
		t.Errorf("state after undefine: %q", got)
	}
	// rmdir keeps a store (virsh undefine --keep-nvram).
	m.Define("u", virtInstallUEFI("u", "pc", ""))
	m.MustCtl("u", "start --paused")
	m.MustCtl("u", "destroy")
	if err := m.Remove("u"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(nvram); err != nil {
		t.Errorf("NVRAM after rmdir: %v (rmdir keeps it)", err)
	}
}

// TestUEFIDomCapabilities: domcapabilities lists the firmware that
// exists: efi, the OVMF images the descriptors give for that machine, and
// secure boot only where a secure-boot image fits (q35). A descriptor in
// the instance's etc/qemu/firmware comes first, in domcapabilities and in
// the selection.
func TestUEFIDomCapabilities(t *testing.T) {
	t.Parallel()
	needOVMF(t)
	m := harness.Start(t, harness.Options{})
	osPart := func(name string) string {
		t.Helper()
		x := m.Read("domcapabilities", name)
		i, j := strings.Index(x, "<os supported='yes'>"), strings.Index(x, "</os>")
		if i < 0 || j < i {
			t.Fatalf("%s has no supported <os>:\n%s", name, x)
		}
		return x[i:j]
	}
	q35, pc := osPart("x86_64-pc-q35-7.2-qemu.xml"), osPart("x86_64-pc-i440fx-7.2-qemu.xml")
	for _, want := range []string{"<value>efi</value>", "<value>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</value>",
		"<value>/usr/share/OVMF/OVMF_CODE_4M.secboot.fd</value>", "<value>/usr/share/OVMF/OVMF_CODE_4M.fd</value>",
		"<enum name='secure'>\n        <value>yes</value>\n        <value>no</value>"} {
		if !strings.Contains(q35, want) {
			t.Errorf("q35 domcapabilities lack %q:\n%s", want, q35)
		}
	}
	for _, want := range []string{"<value>efi</value>", "<value>/usr/share/OVMF/OVMF_CODE_4M.fd</value>",
		"<enum name='secure'>\n        <value>no</value>\n      </enum>"} {
		if !strings.Contains(pc, want) {
			t.Errorf("pc domcapabilities lack %q:\n%s", want, pc)
		}
	}
	if strings.Contains(pc, "OVMF_CODE_4M.ms.fd") || strings.Contains(pc, "OVMF_CODE_4M.secboot.fd") {
		t.Errorf("pc domcapabilities list q35-only secure-boot images:\n%s", pc)
	}

	// The instance's own descriptor, read at the next mount.
	mine := filepath.Join(m.Base, "MINE_CODE.fd")
	code, err := os.ReadFile("/usr/share/OVMF/OVMF_CODE_4M.fd")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mine, code, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(m.Root, "etc/qemu/firmware")
	os.MkdirAll(dir, 0o755)
	desc := `{"interface-types":["uefi"],"mapping":{"device":"flash","executable":{"filename":"` + mine +
		`","format":"raw"},"nvram-template":{"filename":"/usr/share/OVMF/OVMF_VARS_4M.fd","format":"raw"}},` +
		`"targets":[{"architecture":"x86_64","machines":["pc-i440fx-*"]}],"features":[]}`
	if err := os.WriteFile(filepath.Join(dir, "30-mine.json"), []byte(desc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if pc := osPart("x86_64-pc-i440fx-7.2-qemu.xml"); !strings.Contains(pc, "<value>"+mine+"</value>") {
		t.Errorf("domcapabilities lack the instance's firmware %s:\n%s", mine, pc)
	}
	m.Define("o", virtInstallUEFI("o", "pc", ""))
	if conf := m.Read("o", "config.xml"); !strings.Contains(conf, "type='pflash'>"+mine+"</loader>") {
		t.Errorf("the instance's descriptor was not chosen:\n%s", conf)
	}
}
