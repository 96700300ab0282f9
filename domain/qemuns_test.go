package domain

import (
	"bytes"
	"strings"
	"testing"
)

const qemuNSXML = `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>ns</name>
  <uuid>00000000-0000-4000-8000-0000000000ee</uuid>
  <memory unit='MiB'>64</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <devices>
    <interface type='user'>
      <mac address='52:54:00:00:00:ee'/>
      <model type='virtio'/>
      <alias name='ua-nic'/>
    </interface>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-fw_cfg'/>
    <qemu:arg value='name=opt/qemufs,string=1'/>
    <qemu:env name='QEMU_TEST' value='a b'/>
  </qemu:commandline>
  <qemu:capabilities>
    <qemu:add capability='blockdev'/>
    <qemu:del capability='device.json'/>
  </qemu:capabilities>
  <qemu:deprecation behavior='reject'/>
  <qemu:override>
    <qemu:device alias='ua-nic'>
      <qemu:frontend>
        <qemu:property name='mac' type='string' value='52:54:00:00:00:ff'/>
        <qemu:property name='x-speed' type='unsigned' value='1000'/>
        <qemu:property name='mq' type='bool' value='true'/>
        <qemu:property name='bus' type='remove'/>
        <qemu:property name='addr' type='remove'/>
      </qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
`

// TestQEMUNamespace checks qemu:commandline, qemu:capabilities,
// qemu:deprecation and qemu:override: their effect on the command line,
// the taints they imply, and that they survive expansion unchanged.
func TestQEMUNamespace(t *testing.T) {
	d, err := Parse([]byte(qemuNSXML))
	if err != nil {
		t.Fatal(err)
	}
	if err := Expand(d, nil); err != nil {
		t.Fatal(err)
	}
	out := string(d.XML())
	i := strings.Index(out, "  <qemu:commandline>")
	j := strings.Index(qemuNSXML, "  <qemu:commandline>")
	if i < 0 || out[i:] != qemuNSXML[j:] {
		t.Errorf("the qemu: namespace did not round-trip:\n%s", out)
	}
	cmd, err := BuildCommand(d, CommandOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := cmd.String()
	for _, want := range []string{
		"QEMU_TEST='a b'",
		"-compat deprecated-input=reject,deprecated-output=hide",
		// device.json deleted: key=value syntax; overrides applied
		"-device virtio-net-pci,netdev=hostua-nic,id=ua-nic,mac=52:54:00:00:00:ff,x-speed=1000,mq=on ",
		"-msg timestamp=on -fw_cfg name=opt/qemufs,string=1",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("%q not in %s", want, s)
		}
	}
	if !strings.HasSuffix(s, "-fw_cfg name=opt/qemufs,string=1") {
		t.Errorf("qemu:arg values are not last: %s", s)
	}
	if got := strings.Join(d.ImpliedTaints(), ","); got != "custom-argv,custom-hypervisor-feature,custom-device" {
		t.Errorf("ImpliedTaints = %s", got)
	}
	// Another prefix for the same namespace is the same thing.
	alt := strings.ReplaceAll(qemuNSXML, "qemu:", "q:")
	alt = strings.Replace(alt, "xmlns:qemu=", "xmlns:q=", 1)
	d2, err := Parse([]byte(alt))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(d2.QEMUArgs(), " "); got != "-fw_cfg name=opt/qemufs,string=1" {
		t.Errorf("QEMUArgs with prefix q: %q", got)
	}
	// An unrelated namespace is kept and ignored.
	other := strings.Replace(withDevices(""), "<devices>", `<metadata><app:x xmlns:app='urn:app'><app:y z='1'/></app:x></metadata><devices>`, 1)
	d3, err := Parse([]byte(other))
	if err != nil {
		t.Fatal(err)
	}
	if err := Expand(d3, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(d3.XML(), []byte(`<app:x xmlns:app='urn:app'>`)) {
		t.Errorf("foreign metadata lost:\n%s", d3.XML())
	}
}
