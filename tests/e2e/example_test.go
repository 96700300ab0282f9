package e2e

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/tests/harness"
)

// referenceExample is the "QEMU emulated guest on x86_64" example of the
// reference page (reference/qemu-driver.txt), with its paths adjusted.
// Dropped: <interface type='network'><source network='default'/>, since
// this host has no libvirt virtual network called "default" (qemufs has
// no network driver to provide one).
const referenceExample = `<domain type='qemu'>
  <name>QEMU-fedora-i686</name>
  <uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>
  <memory>219200</memory>
  <currentMemory>219200</currentMemory>
  <vcpu>2</vcpu>
  <os>
    <type arch='i686' machine='pc'>hvm</type>
    <boot dev='cdrom'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='cdrom'>
      <source file='DIR/boot.iso'/>
      <target dev='hdc'/>
      <readonly/>
    </disk>
    <disk type='file' device='disk'>
      <source file='DIR/fedora.img'/>
      <target dev='hda'/>
    </disk>
    <graphics type='vnc' port='-1'/>
  </devices>
</domain>
`

// TestReferenceExample defines the reference page's emulated guest and
// starts it paused.
func TestReferenceExample(t *testing.T) {
	t.Parallel()
	// Its own VNC ports: instances mounted by other tests probe the
	// default range at the same time, and a port found free by two of
	// them is bound by only one QEMU.
	m := harness.Start(t, harness.Options{QEMUConf: "remote_display_port_min = 5970\nremote_display_port_max = 5989\n"})
	for _, img := range []struct{ name, size string }{{"boot.iso", "1M"}, {"fedora.img", "64M"}} {
		out, err := exec.Command("qemu-img", "create", "-q", "-f", "raw", filepath.Join(m.Base, img.name), img.size).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img: %v: %s", err, out)
		}
	}
	const name = "QEMU-fedora-i686"
	m.Define(name, strings.ReplaceAll(referenceExample, "DIR", m.Base))
	conf := m.Read(name, "config.xml")
	for _, want := range []string{"c7a5fdbd-cdaf-9455-926a-d65c16db1809", "arch='i686'", "<address type='drive'"} {
		if !strings.Contains(conf, want) {
			t.Errorf("config.xml lacks %q:\n%s", want, conf)
		}
	}
	t.Logf("argv: %s", m.Read(name, "argv"))
	m.MustCtl(name, "start --paused")
	if got := m.State(name); got != "paused (user)" {
		t.Errorf("state = %q, want paused (user)", got)
	}
	live := m.Read(name, "live.xml")
	if !regexp.MustCompile(`<graphics type='vnc' port='59[78]\d'`).MatchString(live) {
		t.Errorf("live.xml lacks the VNC port given at start:\n%s", live)
	}
	m.MustCtl(name, "resume")
	if got := m.State(name); got != "running (unpaused)" {
		t.Errorf("state after resume = %q", got)
	}
	m.MustCtl(name, "destroy")
}
