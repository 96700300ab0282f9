package e2e

import (
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// This host has neither AMD SEV nor Intel TDX (nor s390 PV): every
// confidential guest must be refused, with the missing host feature named,
// and never run unprotected.

// b64 is base64 of n bytes (SEV-SNP and TDX blobs of the sizes QEMU wants).
func b64(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }

// confidentialXML is a virt-install-style KVM guest with the given
// <launchSecurity> (q35, UEFI-less direct kernel boot of the test guest).
func confidentialXML(t *testing.T, name, ls string) string {
	x := harness.GuestXML(t, name, guest.ActionNone, "")
	x = strings.Replace(x, "<domain type='qemu'>", "<domain type='kvm'>", 1)
	x = strings.Replace(x, "machine='pc'", "machine='q35'", 1)
	return strings.Replace(x, "</domain>", ls+"\n</domain>", 1)
}

// confidentialCases are the launch security types with the reason this
// host gives for each.
var confidentialCases = []struct{ name, ls, reason string }{
	{"sev", `<launchSecurity type='sev' kernelHashes='yes'><cbitpos>47</cbitpos><reducedPhysBits>1</reducedPhysBits>
  <policy>0x0003</policy><dhCert>AQAAAAAOAAAAQAAAAAOAAAAQAAAAAOAAAAQAAAAAOAAAAQAAAAAOAAA</dhCert><session>IHAVENOIDEA</session></launchSecurity>`,
		"AMD SEV"},
	{"sev-es", `<launchSecurity type='sev'><policy>0x0007</policy></launchSecurity>`, "AMD SEV"},
	{"sev-snp", `<launchSecurity type='sev-snp' authorKey='yes' vcek='no'><policy>0x00030000</policy>
  <idBlock>` + b64(96) + `</idBlock><idAuth>` + b64(4096) + `</idAuth><hostData>` + b64(32) + `</hostData></launchSecurity>`,
		"AMD SEV-SNP"},
	{"tdx", `<launchSecurity type='tdx'><policy>0x10000001</policy><mrConfigId>` + b64(48) + `</mrConfigId>
  <quoteGenerationService/></launchSecurity>`, "Intel TDX"},
}

// hostHas reports whether this host has the kernel side of a type (then
// the refusal cannot be tested here).
func hostHas(typ string) bool {
	param := map[string]string{"sev": "/sys/module/kvm_amd/parameters/sev", "sev-es": "/sys/module/kvm_amd/parameters/sev_es",
		"sev-snp": "/sys/module/kvm_amd/parameters/sev_snp", "tdx": "/sys/module/kvm_intel/parameters/tdx"}[typ]
	b, err := os.ReadFile(param)
	v := strings.TrimSpace(string(b))
	return err == nil && (v == "Y" || v == "1")
}

// TestLaunchSecurityRefused defines each confidential guest through the
// mount. As libvirt's validation does (qemuValidateDomainDef runs at
// define: "SEV launch security is not supported with this QEMU binary"),
// the definition is refused with EINVAL and the missing host feature in
// NAME/error, and an existing definition is left as it was. A definition
// that was stored while the host had the feature (written to the
// instance's etc/qemu before the mount) is refused again at start, before
// any QEMU is spawned.
func TestLaunchSecurityRefused(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	for _, tc := range confidentialCases {
		t.Run(tc.name, func(t *testing.T) {
			if hostHas(tc.name) {
				t.Skipf("this host has %s", tc.name)
			}
			name := "ls-" + tc.name
			if err := os.Mkdir(m.Path(name), 0o755); err != nil {
				t.Fatal(err)
			}
			err := m.Write(confidentialXML(t, name, tc.ls), name, "config.xml")
			if !errors.Is(err, syscall.EINVAL) {
				t.Fatalf("define: %v, want EINVAL (error: %s)", err, m.ErrorOf(name))
			}
			msg := m.ErrorOf(name)
			t.Logf("refused: %s", msg)
			for _, want := range []string{"launchSecurity", "launch security type '" + strings.TrimSuffix(tc.name, "-es") + "' cannot run on this host", tc.reason} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q lacks %q", msg, want)
				}
			}
			if st, c := m.State(name), m.Read(name, "config.xml"); st != "undefined" || c != "" {
				t.Errorf("after the refusal: state %q, config.xml %q", st, c)
			}
		})
	}

	// A good definition stays when a confidential one is written over it.
	good := harness.GuestXML(t, "keep", guest.ActionNone, "")
	m.Define("keep", good)
	before := m.Read("keep", "config.xml")
	err := m.Write(confidentialXML(t, "keep", confidentialCases[0].ls), "keep", "config.xml")
	if !errors.Is(err, syscall.EINVAL) || !strings.Contains(m.ErrorOf("keep"), "AMD SEV") {
		t.Errorf("redefinition: %v (error: %s), want EINVAL naming AMD SEV", err, m.ErrorOf("keep"))
	}
	if after := m.Read("keep", "config.xml"); after != before {
		t.Errorf("the previous definition changed:\n%s", after)
	}

	// Refused at start too: a stored definition from a host with SEV.
	if hostHas("sev") {
		return
	}
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	stored := confidentialXML(t, "old", confidentialCases[0].ls)
	if err := os.WriteFile(filepath.Join(m.Root, "etc", "qemu", "old.xml"), []byte(stored), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if st := m.State("old"); st != "shut off" && !strings.HasPrefix(st, "shut off") {
		t.Fatalf("stored definition: state %q", st)
	}
	err = m.Ctl("old", "start")
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("start: %v, want EINVAL", err)
	}
	msg := m.ErrorOf("old")
	for _, want := range []string{"start old", "launch security type 'sev' cannot run on this host", "AMD SEV"} {
		if !strings.Contains(msg, want) {
			t.Errorf("start error %q lacks %q", msg, want)
		}
	}
	if pid := m.Pid("old"); pid != 0 {
		t.Errorf("a QEMU was started (pid %d)", pid)
	}
	if st := m.State("old"); !strings.HasPrefix(st, "shut off") {
		t.Errorf("state after the refused start: %q", st)
	}
	if log := m.QEMULog("old"); strings.Contains(log, "sev-guest") {
		t.Errorf("QEMU was run with the SEV object:\n%s", log)
	}
}

// TestLaunchSecurityDomcaps reads the domain capabilities through the
// mount: well-formed (xmllint), and SEV, SGX and TDX unsupported on this
// host, for KVM and TCG alike.
func TestLaunchSecurityDomcaps(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	files := []string{"x86_64-q35-qemu.xml"}
	if _, err := os.Stat(m.Path("domcapabilities", "x86_64-q35-kvm.xml")); err == nil {
		files = append(files, "x86_64-q35-kvm.xml")
	}
	for _, f := range files {
		p := m.Path("domcapabilities", f)
		if out, err := exec.Command("xmllint", "--noout", p).CombinedOutput(); err != nil {
			t.Fatalf("xmllint %s: %v: %s", f, err, out)
		}
		for feature, has := range map[string]bool{"sev": hostHas("sev"), "tdx": hostHas("tdx"), "sgx": false} {
			if has {
				continue
			}
			if n := xpath(t, p, "count(/domainCapabilities/features/"+feature+"[@supported='no'])"); n != "1" {
				t.Errorf("%s: <%s supported='no'/> count %s:\n%s", f, feature, n, m.Read("domcapabilities", f))
			}
		}
	}
}

// TestPstoreGuest boots the test guest on the system instance with an
// ACPI ERST pstore: the backing file is created, given to QEMU's user
// while it runs and sized by QEMU, and the guest sees the ERST table.
func TestPstoreGuest(t *testing.T) {
	t.Parallel()
	uid, gid := qemuIDs(t)
	m := harness.Start(t, harness.Options{System: true})
	store := filepath.Join(m.Base, "erst.img")
	dev := "<pstore backend='acpi-erst'><path>" + store + "</path><size unit='KiB'>64</size></pstore>"
	m.Boot("p", harness.GuestXML(t, "p", guest.ActionNone, dev))
	fi, err := os.Stat(store)
	if err != nil {
		t.Fatalf("backing file: %v", err)
	}
	if fi.Size() != 64<<10 {
		t.Errorf("backing file is %d bytes, want 64 KiB", fi.Size())
	}
	if o := ownerOf(t, store); o.UID != uid || o.GID != gid {
		t.Errorf("backing file while running: %v, want qemu's (%d:%d)", o, uid, gid)
	}
	// One output line: the marker (computed by the guest's shell, so the
	// echoed command line does not match it) and the ACPI table names.
	if err := m.Send("echo TABLES-$((6*7)) $(ls /sys/firmware/acpi/tables/)\n", "p", "console"); err != nil {
		t.Fatal(err)
	}
	out, err := m.WaitStream("TABLES-42", boot, "p", "console")
	if err != nil {
		t.Fatalf("console: %v\n%s", err, out)
	}
	if !strings.Contains(out, " ERST") {
		t.Errorf("the guest has no ERST table:\n%s", out)
	}
	if args := m.Read("p", "argv"); !strings.Contains(args, `"driver":"acpi-erst"`) {
		t.Errorf("argv lacks acpi-erst: %s", args)
	}
	m.MustCtl("p", "destroy")
	if o := ownerOf(t, store); o.UID != 0 {
		t.Errorf("backing file after the guest stopped: %v, want its owner back (root)", o)
	}
}

// TestNotHonouredRefused: an element qemufs accepts in the schema but
// cannot act on is refused at define with EINVAL naming it, instead of
// a guest started without it.
func TestNotHonouredRefused(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	if err := os.Mkdir(m.Path("v"), 0o755); err != nil {
		t.Fatal(err)
	}
	x := harness.GuestXML(t, "v", guest.ActionNone, "")
	// vCPU 1 enabled by hot-plug at start, which qemufs cannot do.
	x = strings.Replace(x, "<vcpu>1</vcpu>", "<vcpu current='1'>2</vcpu>\n  <vcpus><vcpu id='0' enabled='no' hotpluggable='yes'/><vcpu id='1' enabled='yes' hotpluggable='yes'/></vcpus>", 1)
	err := m.Write(x, "v", "config.xml")
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("define: %v, want EINVAL (error: %s)", err, m.ErrorOf("v"))
	}
	if msg := m.ErrorOf("v"); !strings.Contains(msg, "<vcpus> is not supported") {
		t.Errorf("error %q does not name <vcpus>", msg)
	}
	if st := m.State("v"); st != "undefined" {
		t.Errorf("state %q after the refusal", st)
	}
}
