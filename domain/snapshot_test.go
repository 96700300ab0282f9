package domain

import (
	"strings"
	"testing"
)

const snapDomainXML = `<domain type='qemu'><name>a</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/sdz'/><target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>
<serial type='pty'><alias name='serial0'/></serial>
<graphics type='vnc' autoport='yes'/>
</devices></domain>`

func TestSetDiskSource(t *testing.T) {
	d, err := Parse([]byte(snapDomainXML))
	if err != nil {
		t.Fatal(err)
	}
	chain := []BackingLayer{{Path: "/i/base.qcow2", Format: "qcow2"}, {Path: "/i/root.img", Format: "raw"}}
	if err := d.SetDiskSource("vda", "/i/top.qcow2", "qcow2", chain); err != nil {
		t.Fatal(err)
	}
	out := string(d.XML())
	want := `<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/i/top.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='/i/base.qcow2'/>
        <backingStore type='file'>
          <format type='raw'/>
          <source file='/i/root.img'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>`
	if !strings.Contains(out, want) {
		t.Errorf("disk after SetDiskSource:\n%s\nwant\n%s", out, want)
	}
	dk := d.Disks()[0]
	if dk.Source != "/i/top.qcow2" || dk.Format != "qcow2" || strings.Join(dk.BackingStore, " ") != "/i/base.qcow2 /i/root.img" {
		t.Errorf("Disks() view %+v", dk)
	}
	// Again: the old chain is replaced, not nested.
	if err := d.SetDiskSource("vda", "/i/top2.qcow2", "qcow2", []BackingLayer{{Path: "/i/top.qcow2", Format: "qcow2"}}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(d.XML()), "<backingStore"); n != 2 {
		t.Errorf("%d <backingStore> elements after a second switch, want 2:\n%s", n, d.XML())
	}
	if err := d.SetDiskSource("vdq", "/x", "qcow2", nil); err == nil {
		t.Error("SetDiskSource of an unknown target succeeded")
	}
}

func TestSameGuest(t *testing.T) {
	def, err := Parse([]byte(snapDomainXML))
	if err != nil {
		t.Fatal(err)
	}
	live := def.Clone()
	live.SetGraphicsPort("vnc", 5901)
	live.SetChardevPath("serial0", "/dev/pts/4")
	live.SetSecLabels([]SecLabel{{Model: "dac", Type: "dynamic", Relabel: true, Label: "+107:+107"}})
	live.AddTaint("custom-monitor")
	if !SameGuest(def, live) {
		t.Errorf("a live definition differs from its own by more than runtime detail:\n%s\nvs\n%s",
			def.WithoutRuntime().XML(), live.WithoutRuntime().XML())
	}
	other, _ := Parse([]byte(strings.Replace(snapDomainXML, ">64<", ">96<", 1)))
	if SameGuest(other, live) {
		t.Error("different memory sizes count as the same guest")
	}
	if !strings.Contains(string(live.XML()), "5901") {
		t.Error("WithoutRuntime changed the definition it was given")
	}
}
