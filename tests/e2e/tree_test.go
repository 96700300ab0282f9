package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/tests/harness"
)

// xpath evaluates expr on an XML file with xmllint, a generic XML tool.
func xpath(t *testing.T, file, expr string) string {
	t.Helper()
	out, err := exec.Command("xmllint", "--xpath", expr, file).CombinedOutput()
	if err != nil {
		t.Fatalf("xmllint --xpath %q %s: %v: %s", expr, file, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestCapabilitiesThroughMount reads capabilities.xml and every
// domcapabilities file with xmllint, and checks that validation agrees with
// them: a virt type the host lacks is refused with the alternatives named.
func TestCapabilitiesThroughMount(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	caps := m.Path("capabilities.xml")
	if out, err := exec.Command("xmllint", "--noout", caps).CombinedOutput(); err != nil {
		t.Fatalf("xmllint: %v: %s", err, out)
	}
	guest := "/capabilities/guest[arch/@name='x86_64']"
	if n := xpath(t, caps, "count("+guest+")"); n == "0" {
		t.Fatal("no x86_64 guest in capabilities.xml")
	}
	for _, machine := range []string{"pc", "q35"} {
		if n := xpath(t, caps, "count("+guest+"/arch/machine[text()='"+machine+"'])"); n == "0" {
			t.Errorf("machine %s not listed for x86_64", machine)
		}
	}
	if n := xpath(t, caps, "count("+guest+"/arch/domain[@type='qemu'])"); n == "0" {
		t.Error("domain type qemu not listed for x86_64")
	}
	if n := xpath(t, caps, "count(/capabilities/host/secmodel[model='dac'])"); n == "0" {
		t.Error("no dac secmodel in capabilities.xml")
	}
	entries, err := os.ReadDir(m.Path("domcapabilities"))
	if err != nil || len(entries) == 0 {
		t.Fatalf("domcapabilities: %v, %d entries", err, len(entries))
	}
	for _, e := range entries {
		p := m.Path("domcapabilities", e.Name())
		if out, err := exec.Command("xmllint", "--noout", p).CombinedOutput(); err != nil {
			t.Errorf("%s: %v: %s", e.Name(), err, out)
		}
	}

	// `qemufs capabilities` prints the same document without a mount.
	out, err := m.Command("capabilities").Output()
	if err != nil || !strings.Contains(string(out), "<capabilities>") {
		t.Fatalf("qemufs capabilities: %v: %.200s", err, out)
	}

	// KVM is not usable here (no /dev/kvm): type='kvm' must be refused
	// with a message naming what is available.
	if _, err := os.Stat("/dev/kvm"); err == nil {
		t.Log("host has /dev/kvm: skipping the type='kvm' refusal")
		return
	}
	if err := os.Mkdir(m.Path("k"), 0o755); err != nil {
		t.Fatal(err)
	}
	xml := `<domain type='kvm'><name>k</name><memory unit='MiB'>64</memory><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>`
	err = m.Write(xml, "k", "config.xml")
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("define type=kvm: %v, want EINVAL", err)
	}
	if msg := m.ErrorOf("k"); !strings.Contains(msg, "kvm") || !strings.Contains(msg, "qemu") {
		t.Errorf("error %q does not name kvm and the available type qemu", msg)
	}
}

// TestNativeConversion uses the root's from-native file (argv in, XML out)
// with the reference page's example, defines the result, and checks
// `qemufs to-native` and `argv` agree on the command line.
func TestNativeConversion(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	args := "LC_ALL=C PATH=/bin HOME=/home/test USER=test LOGNAME=test /usr/bin/qemu -S -M pc -m 214 -smp 1 -nographic -monitor pty -no-acpi -boot c -hda /dev/HostVG/QEMUGuest1 -net none -serial none -parallel none -usb"
	f, err := os.OpenFile(m.Path("from-native"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte(args + "\n")); err != nil {
		t.Fatalf("write from-native: %v", err)
	}
	f.Close()
	xml := m.Read("from-native")
	d, err := domain.Parse([]byte(xml))
	if err != nil {
		t.Fatalf("from-native gave bad XML: %v\n%s", err, xml)
	}
	if d.MemoryKiB() != 219136 || d.VCPUs() != 1 || d.Machine() != "pc" {
		t.Errorf("memory %d KiB, %d vcpus, machine %q; want 219136, 1, pc", d.MemoryKiB(), d.VCPUs(), d.Machine())
	}
	disks := d.Disks()
	if len(disks) != 1 || disks[0].Source != "/dev/HostVG/QEMUGuest1" || disks[0].Target != "hda" {
		t.Errorf("disks %+v, want the block disk /dev/HostVG/QEMUGuest1 as hda", disks)
	}

	// A QEMU command line in a file, through the CLI, and back.
	file := filepath.Join(m.Base, "demo.args")
	os.WriteFile(file, []byte(args), 0o644)
	out, err := m.Command("from-native", file).Output()
	if err != nil || !strings.Contains(string(out), "QEMUGuest1") {
		t.Fatalf("qemufs from-native: %v\n%s", err, out)
	}

	// to-native of a definition the host can run prints what argv shows.
	g := harness.GuestXML(t, "tn", "", "")
	xmlFile := filepath.Join(m.Base, "tn.xml")
	os.WriteFile(xmlFile, []byte(g), 0o644)
	native, err := m.Command("to-native", xmlFile).Output()
	if err != nil {
		t.Fatalf("qemufs to-native: %v", err)
	}
	line := strings.TrimSpace(string(native))
	if !strings.HasPrefix(line, "LC_ALL=C ") || !strings.Contains(line, "/usr/bin/qemu-system-x86_64 -name guest=tn") || strings.Contains(line, "\n") {
		t.Errorf("to-native is not one line of env, binary and args: %s", line)
	}
	m.Define("tn", g)
	argv := strings.TrimSpace(m.Read("tn", "argv"))
	if !strings.Contains(argv, "-kernel "+harness.Guest(t).Kernel) || strings.Contains(argv, "\n") {
		t.Errorf("argv: %s", argv)
	}
}

// TestToolXMLs defines XMLs shaped as virt-install and virsh dumpxml write
// them (not from the corpus) and starts them paused through the mount.
func TestToolXMLs(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	files, _ := filepath.Glob("../../domain/testdata/tools/*.xml")
	if len(files) == 0 {
		t.Fatal("no tool XMLs")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		x := strings.ReplaceAll(string(data), "@DIR@", m.Base)
		d, err := domain.Parse([]byte(x))
		if err != nil {
			t.Fatal(err)
		}
		for _, dk := range d.Disks() {
			if dk.Source == "" {
				continue
			}
			format := dk.Format
			if format == "" {
				format = "raw"
			}
			if out, err := exec.Command("qemu-img", "create", "-q", "-f", format, dk.Source, "16M").CombinedOutput(); err != nil {
				t.Fatalf("qemu-img: %v: %s", err, out)
			}
		}
		name := d.Name()
		m.Define(name, x)
		m.MustCtl(name, "start --paused")
		if got := m.State(name); got != "paused (user)" {
			t.Errorf("%s: state %q after start --paused", filepath.Base(f), got)
		}
		m.MustCtl(name, "destroy")
	}
}
