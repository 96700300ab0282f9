package domain

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

const hotplugBase = `<domain type='qemu'><name>h</name><uuid>0b0e2c66-5a3e-4c9e-9d3c-6f1f3f2d0a11</uuid>
<memory unit='MiB'>64</memory><os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
<disk type='file'><source file='/var/lib/a.raw'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
<interface type='user'><model type='virtio'/></interface>
<serial type='pty'/></devices></domain>`

func expanded(t *testing.T, xml string) *Domain {
	t.Helper()
	d, err := Parse([]byte(xml))
	if err != nil {
		t.Fatal(err)
	}
	if err := Expand(d, nil); err != nil {
		t.Fatal(err)
	}
	return d
}

// steps renders HotplugSteps as "command args" lines.
func steps(t *testing.T, d *Domain, v Device, base int) []string {
	t.Helper()
	ss, _, _, err := d.HotplugSteps(v, HotplugOptions{Command: CommandOptions{DomainDir: "/run/d"}, NodeBase: base})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range ss {
		out = append(out, s.Command+" "+string(s.Args)+" | "+s.Undo+" "+string(s.UndoArgs))
	}
	return out
}

func TestAddDevice(t *testing.T) {
	d := expanded(t, hotplugBase)
	orig := string(d.XML())
	x, v, implicit, err := d.AddDevice([]byte(`<disk type='file'><source file='/var/lib/b.raw'/><target dev='vdb' bus='virtio'/></disk>`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(d.XML()) != orig {
		t.Error("AddDevice changed the definition it was called on")
	}
	if v.Alias() != "virtio-disk1" || len(implicit) != 0 {
		t.Errorf("alias %q, implicit %d", v.Alias(), len(implicit))
	}
	if !strings.Contains(string(v.XML()), "type='pci'") || !strings.Contains(string(v.XML()), "<driver name='qemu' type='raw'/>") {
		t.Errorf("device not expanded:\n%s", v.XML())
	}
	// Expanding the result again changes nothing: the ABI is pinned.
	again := x.Clone()
	Expand(again, nil)
	if string(again.XML()) != string(x.XML()) {
		t.Error("the attached definition is not stable under expansion")
	}
	// The expanded device added to the persistent definition keeps its
	// address and alias.
	y, w, _, err := d.AddDevice(v.XML(), nil)
	if err != nil || string(w.XML()) != string(v.XML()) {
		t.Errorf("re-adding the expanded device: %v\n%s\nvs\n%s", err, w.XML(), v.XML())
	}
	_ = y

	// A channel brings its virtio-serial controller; a NIC gets a MAC.
	_, ch, implicit, err := d.AddDevice([]byte(`<channel type='unix'><target type='virtio' name='org.test.0'/></channel>`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if ch.Alias() != "channel0" || len(implicit) != 1 || implicit[0].Describe() != "controller virtio-serial 0 (virtio-serial0)" {
		t.Errorf("channel %q, implicit %v", ch.Alias(), implicit)
	}
	_, nic, _, err := d.AddDevice([]byte(`<interface type='user'/>`), nil)
	if err != nil || !strings.Contains(string(nic.XML()), "<mac address='52:54:00:") || nic.Alias() != "net1" {
		t.Errorf("NIC %v:\n%s", err, nic.XML())
	}

	bad := []struct{ name, xml, msg string }{
		{"empty", "", "empty"},
		{"syntax", "<disk", "XML syntax"},
		{"not a device", "<os/>", "not a device"},
		{"alias only", "<alias name='x'/>", "detach"},
		{"duplicate target", `<disk type='file'><source file='/b'/><target dev='vda' bus='virtio'/></disk>`, "vda"},
		{"duplicate alias", `<disk type='file'><source file='/b'/><target dev='vdc' bus='virtio'/><alias name='net0'/></disk>`, "net0"},
		{"bad attribute", `<disk type='bogus'><target dev='vdc'/></disk>`, "bogus"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := d.AddDevice([]byte(tt.xml), nil)
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("AddDevice: %v, want an error mentioning %q", err, tt.msg)
			}
		})
	}
}

func TestHotpluggable(t *testing.T) {
	d := expanded(t, hotplugBase)
	for _, tt := range []struct {
		xml string
		ok  bool
	}{
		{`<disk type='file'><source file='/b'/><target dev='vdb' bus='virtio'/></disk>`, true},
		{`<disk type='file'><source file='/b'/><target dev='sdb' bus='usb'/></disk>`, true},
		{`<disk type='file'><source file='/b'/><target dev='hdb' bus='ide'/></disk>`, false},
		{`<interface type='user'/>`, true},
		{`<controller type='scsi' model='virtio-scsi'/>`, true},
		{`<controller type='pci' model='pci-bridge'/>`, false},
		{`<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>`, true},
		{`<serial type='pty'/>`, false},
		{`<serial type='pty'><target type='pci-serial'/></serial>`, true},
		{`<console type='pty'><target type='virtio'/></console>`, true},
		{`<video><model type='vga'/></video>`, false},
	} {
		_, v, _, err := d.AddDevice([]byte(tt.xml), nil)
		if err != nil {
			t.Errorf("%s: %v", tt.xml, err)
			continue
		}
		if err := v.Hotpluggable(); (err == nil) != tt.ok {
			t.Errorf("%s: Hotpluggable %v, want ok=%v", tt.xml, err, tt.ok)
		}
	}
}

func TestHotplugSteps(t *testing.T) {
	d := expanded(t, hotplugBase)
	add := func(xml string) (*Domain, Device) {
		t.Helper()
		x, v, _, err := d.AddDevice([]byte(xml), nil)
		if err != nil {
			t.Fatal(err)
		}
		return x, v
	}
	x, v := add(`<disk type='file'><driver name='qemu' type='qcow2'/><source file='/t.qcow2'/>
<backingStore type='file'><format type='raw'/><source file='/b.raw'/></backingStore><target dev='vdb' bus='virtio'/></disk>`)
	got := steps(t, x, v, 7)
	want := []string{
		`blockdev-add {"driver":"file","filename":"/b.raw","node-name":"libvirt-8-storage","auto-read-only":true,"discard":"unmap"} | blockdev-del {"node-name":"libvirt-8-storage"}`,
		`blockdev-add {"node-name":"libvirt-8-format","read-only":true,"driver":"raw","file":"libvirt-8-storage"} | blockdev-del {"node-name":"libvirt-8-format"}`,
		`blockdev-add {"driver":"file","filename":"/t.qcow2","node-name":"libvirt-9-storage","auto-read-only":true,"discard":"unmap"} | blockdev-del {"node-name":"libvirt-9-storage"}`,
		`blockdev-add {"node-name":"libvirt-9-format","read-only":false,"driver":"qcow2","file":"libvirt-9-storage","backing":"libvirt-8-format"} | blockdev-del {"node-name":"libvirt-9-format"}`,
		`device_add {"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x5","drive":"libvirt-9-format","id":"virtio-disk1"} | device_del {"id":"virtio-disk1"}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("disk steps:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	_, nodes, high, _ := x.HotplugSteps(v, HotplugOptions{NodeBase: 7})
	if strings.Join(nodes, ",") != "libvirt-9-format,libvirt-9-storage,libvirt-8-format,libvirt-8-storage" || high != 9 {
		t.Errorf("nodes %v high %d", nodes, high)
	}

	bd := expanded(t, strings.Replace(hotplugBase, "<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'/><boot order='1'/>", 1))
	x, v, _, err := bd.AddDevice([]byte(`<disk type='file'><source file='/c.raw'/><target dev='vdc' bus='virtio'/><boot order='3'/></disk>`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := steps(t, x, v, 0); !strings.Contains(got[len(got)-1], `"bootindex":3`) {
		t.Errorf("boot order not passed as bootindex:\n%s", strings.Join(got, "\n"))
	}

	x, v = add(`<interface type='user'><model type='virtio'/></interface>`)
	got = steps(t, x, v, 0)
	id := v.Alias()
	if len(got) != 2 || got[0] != `netdev_add {"type":"user","id":"host`+id+`"} | netdev_del {"id":"host`+id+`"}` ||
		!strings.Contains(got[1], `"netdev":"host`+id+`","id":"`+id+`","mac":"52:54:00:`) {
		t.Errorf("NIC steps:\n%s", strings.Join(got, "\n"))
	}

	x, v = add(`<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>`)
	got = steps(t, x, v, 0)
	if len(got) != 2 || got[0] != `object-add {"qom-type":"rng-random","id":"objrng0","filename":"/dev/urandom"} | object-del {"id":"objrng0"}` {
		t.Errorf("rng steps:\n%s", strings.Join(got, "\n"))
	}

	x, v = add(`<serial type='unix'><source mode='bind' path='/run/s.sock'/><target type='pci-serial'/></serial>`)
	got = steps(t, x, v, 0)
	if len(got) != 2 || got[0] != `chardev-add {"id":"charserial1","backend":{"type":"socket","data":{"addr":{"type":"unix","data":{"path":"/run/s.sock"}},"server":true,"wait":false}}} | chardev-remove {"id":"charserial1"}` {
		t.Errorf("serial steps:\n%s", strings.Join(got, "\n"))
	}

	// A controller: only its own device_add, not the others'.
	x, v = add(`<controller type='scsi' model='virtio-scsi'/>`)
	got = steps(t, x, v, 0)
	if len(got) != 1 || !strings.HasPrefix(got[0], `device_add {"driver":"virtio-scsi-pci","id":"scsi0"`) {
		t.Errorf("controller steps:\n%s", strings.Join(got, "\n"))
	}
}

func TestChardevAdd(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"pty,id=c1", `{"id":"c1","backend":{"type":"pty","data":{}}}`},
		{"file,id=c2,path=/var/log/a,,b", `{"id":"c2","backend":{"type":"file","data":{"out":"/var/log/a,b"}}}`},
		{"socket,id=c3,host=127.0.0.1,port=4555,telnet=on,server=on,wait=off", `{"id":"c3","backend":{"type":"socket","data":{"addr":{"type":"inet","data":{"host":"127.0.0.1","port":"4555"}},"server":true,"wait":false,"telnet":true}}}`},
		{"tty,id=c4,path=/dev/ttyS1", `{"id":"c4","backend":{"type":"serial","data":{"device":"/dev/ttyS1"}}}`},
		{"udp,id=c5,host=127.0.0.1,port=9,localport=10", `{"id":"c5","backend":{"type":"udp","data":{"remote":{"type":"inet","data":{"host":"127.0.0.1","port":"9"}},"local":{"type":"inet","data":{"host":"","port":"10"}}}}}`},
		{"pty,id=c6,logfile=/l,logappend=on", `{"id":"c6","backend":{"type":"pty","data":{"logfile":"/l","logappend":true}}}`},
	} {
		got, err := chardevAdd(tt.in)
		if err != nil || string(got) != tt.want {
			t.Errorf("chardevAdd(%q) = %s, %v\nwant %s", tt.in, got, err, tt.want)
		}
		var m map[string]any
		if json.Unmarshal(got, &m) != nil {
			t.Errorf("chardevAdd(%q) is not JSON", tt.in)
		}
	}
	if _, err := chardevAdd("vdagent,id=x"); err == nil {
		t.Error("an unknown backend was translated")
	}
}

func TestFindRemoveUpdate(t *testing.T) {
	d := expanded(t, hotplugBase)
	mac := attr(child(children(child(d.root, "devices"), "interface")[0], "mac"), "address")
	for _, tt := range []struct{ spec, alias string }{
		{"<alias name='virtio-disk0'/>", "virtio-disk0"},
		{"<disk><target dev='vda'/></disk>", "virtio-disk0"},
		{"<interface><mac address='" + strings.ToUpper(mac) + "'/></interface>", "net0"},
		{"<serial><target port='0'/></serial>", "serial0"},
		{"<alias name='serial0'/>", "serial0"},
	} {
		v, err := d.FindDevice([]byte(tt.spec))
		if err != nil || v.Alias() != tt.alias {
			t.Errorf("FindDevice(%s) = %q, %v; want %s", tt.spec, v.Alias(), err, tt.alias)
		}
	}
	if _, err := d.FindDevice([]byte("<alias name='nope'/>")); !errors.Is(err, ErrNoSuchDevice) {
		t.Errorf("unknown alias: %v", err)
	}
	if _, err := d.FindDevice([]byte("<interface type='user'/>")); err == nil || errors.Is(err, ErrNoSuchDevice) {
		t.Errorf("interface without a key: %v", err)
	}
	if _, err := d.FindDevice([]byte("<alias name='net0'/>")); err != nil {
		t.Error(err)
	}
	if _, err := d.FindDevice([]byte("<disk><alias name='net0'/></disk>")); err == nil {
		t.Error("an alias of another class matched")
	}
	x, v, err := d.RemoveDevice([]byte("<alias name='serial0'/>"))
	if err != nil || v.Tag() != "serial" || strings.Contains(string(x.XML()), "serial0") {
		t.Errorf("RemoveDevice serial0: %v\n%s", err, x.XML())
	}

	// Media change and eject; link state; other changes refused.
	x, ch, err := d.UpdateDevice([]byte("<disk type='file' device='cdrom'><driver type='raw'/><source file='/i.iso'/><target dev='hdc'/></disk>"), nil)
	if err != nil || ch.Kind != "media" || !strings.Contains(string(ch.New.XML()), "/i.iso") || strings.Contains(string(ch.Old.XML()), "/i.iso") {
		t.Fatalf("media change: %v %+v", err, ch)
	}
	y, ch, err := x.UpdateDevice([]byte("<disk device='cdrom'><target dev='hdc'/></disk>"), nil)
	if err != nil || strings.Contains(string(y.XML()), "/i.iso") || !strings.Contains(string(ch.Old.XML()), "/i.iso") {
		t.Errorf("eject: %v\n%s", err, y.XML())
	}
	_, ch, err = d.UpdateDevice([]byte("<interface><alias name='net0'/><link state='down'/></interface>"), nil)
	if err != nil || ch.Kind != "link" || ch.LinkUp || !strings.Contains(string(ch.New.XML()), "<link state='down'/>") {
		t.Errorf("link: %v %+v", err, ch)
	}
	for _, spec := range []string{
		"<disk><target dev='vda'/><source file='/x'/></disk>",
		"<interface><alias name='net0'/><model type='e1000'/></interface>",
		"<serial><alias name='serial0'/></serial>",
	} {
		if _, _, err := d.UpdateDevice([]byte(spec), nil); err == nil {
			t.Errorf("UpdateDevice(%s) accepted", spec)
		}
	}
}

func TestBlockNodes(t *testing.T) {
	d := expanded(t, strings.Replace(hotplugBase, "<serial", "<disk type='file'><source file='/c.raw'/><target dev='vdc' bus='virtio'/></disk><serial", 1))
	nodes, high, err := BlockNodes(d, CommandOptions{DomainDir: "/run/d"})
	if err != nil {
		t.Fatal(err)
	}
	// As the command line numbers them: from the number of sources down.
	if strings.Join(nodes["virtio-disk0"], ",") != "libvirt-2-format,libvirt-2-storage" ||
		strings.Join(nodes["virtio-disk2"], ",") != "libvirt-1-format,libvirt-1-storage" || high != 2 || len(nodes) != 2 {
		t.Errorf("nodes %v, high %d", nodes, high)
	}
}
