package domain

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/capabilities"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// argvOpts are the options the golden argv files are made with.
var argvOpts = CommandOptions{
	QMPSocket: "/run/qemufs/test.qmp",
	DomainDir: "/run/qemufs/test.d",
	LibDir:    "/var/lib/qemufs/test",
	Home:      "/var/lib/qemufs/test",
	VNCPort:   5901,
	ExtraArgs: []string{"-sandbox", "on,obsolete=deny"},
}

// TestBuildCommandGolden checks small definitions against their exact
// command line (testdata/argv/NAME.args) and their expanded form
// (testdata/argv/NAME.expanded.xml).
func TestBuildCommandGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/argv/*.xml")
	var inputs []string
	for _, f := range files {
		if !strings.HasSuffix(f, ".expanded.xml") {
			inputs = append(inputs, f)
		}
	}
	if len(inputs) < 4 {
		t.Fatalf("only %d golden inputs", len(inputs))
	}
	for _, f := range inputs {
		name := strings.TrimSuffix(filepath.Base(f), ".xml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			d, err := Parse(data)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if err := Expand(d, nil); err != nil {
				t.Fatalf("Expand: %v", err)
			}
			cmd, err := BuildCommand(d, argvOpts)
			if err != nil {
				t.Fatalf("BuildCommand: %v", err)
			}
			golden(t, strings.TrimSuffix(f, ".xml")+".args", []byte(cmd.String()+"\n"))
			golden(t, strings.TrimSuffix(f, ".xml")+".expanded.xml", d.XML())
		})
	}
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n got: %s\nwant: %s", path, got, want)
	}
}

// TestCommandString checks the one-line shell form.
func TestCommandString(t *testing.T) {
	c := &Command{
		Env:  []string{"LC_ALL=C", "HOME=/var/lib/a b"},
		Path: "/usr/bin/qemu-system-x86_64",
		Args: []string{"-name", "guest=x,debug-threads=on", "-device", `{"driver":"x"}`, "-append", "it's", ""},
	}
	want := `LC_ALL=C HOME='/var/lib/a b' /usr/bin/qemu-system-x86_64 -name guest=x,debug-threads=on -device '{"driver":"x"}' -append 'it'\''s' ''`
	if got := c.String(); got != want {
		t.Errorf("String():\n got %s\nwant %s", got, want)
	}
}

const base = `<domain type='qemu'>
  <name>t</name>
  <uuid>00000000-0000-4000-8000-0000000000aa</uuid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>%s</devices>
</domain>`

func withDevices(devs string) string { return strings.Replace(base, "%s", devs, 1) }

// TestParseErrors checks that bad definitions are rejected with a message
// naming the element and attribute at fault.
func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, xml, want string
	}{
		{"empty", ``, `empty document`},
		{"syntax", `<domain type='qemu'><name>x</name>`, `XML syntax error: line 1: unexpected EOF`},
		{"root", `<vm/>`, `root element is <vm>, expected <domain>`},
		{"no type", `<domain><name>x</name><memory>1024</memory><os><type>hvm</type></os></domain>`,
			`domain: attribute type is required (qemu, kvm or hvf)`},
		{"xen type", strings.Replace(withDevices(""), "type='qemu'", "type='xen'", 1),
			`domain: domain type "xen" is not supported by the QEMU driver (use qemu, kvm or hvf)`},
		{"bad name", strings.Replace(withDevices(""), "<name>t</name>", "<name>a/b</name>", 1),
			`name: "a/b" contains '/'`},
		{"bad uuid", strings.Replace(withDevices(""), "00000000-0000-4000-8000-0000000000aa", "nope", 1),
			`uuid: malformed UUID "nope"`},
		{"no memory", strings.Replace(withDevices(""), "<memory unit='MiB'>64</memory>", "", 1),
			`domain: element <memory> is required`},
		{"bad unit", strings.Replace(withDevices(""), "unit='MiB'", "unit='parsecs'", 1),
			`memory: unknown unit "parsecs"`},
		{"no os", strings.Replace(withDevices(""), "<os><type arch='x86_64' machine='pc'>hvm</type></os>", "", 1),
			`domain: element <os> is required`},
		{"bad arch", strings.Replace(withDevices(""), "x86_64", "x86-64", 1),
			`os/type: attribute arch: unknown value "x86-64" (expected one of: ` + strings.Join(knownArches, ", ") + `)`},
		{"unknown top", strings.Replace(withDevices(""), "<os>", "<bogus/><os>", 1),
			`bogus: unknown element <bogus> (expected one of: `},
		{"disk no dev", withDevices(`<disk type='file' device='disk'><source file='/a.img'/><target dev='vda'/></disk>
			<disk type='file' device='disk'><source file='/b.img'/><target bus='virtio'/></disk>`),
			`devices/disk[2]/target: attribute dev is required`},
		{"disk no target", withDevices(`<disk type='file'><source file='/a.img'/></disk>`),
			`devices/disk[1]: element <target> is required`},
		{"disk dup target", withDevices(`<disk type='file'><source file='/a.img'/><target dev='vda'/></disk>
			<disk type='file'><source file='/b.img'/><target dev='vda'/></disk>`),
			`devices/disk[2]/target: target dev "vda" is already used by devices/disk[1]`},
		{"disk cache", withDevices(`<disk type='file'><driver name='qemu' cache='fast'/><source file='/a.img'/><target dev='vda'/></disk>`),
			`devices/disk[1]/driver: attribute cache: unknown value "fast" (expected one of: default, none, writethrough, writeback, directsync, unsafe)`},
		{"disk relative", withDevices(`<disk type='file'><source file='a.img'/><target dev='vda'/></disk>`),
			`devices/disk[1]/source: attribute file: path "a.img" must be absolute`},
		{"disk no source", withDevices(`<disk type='file' device='disk'><target dev='vda'/></disk>`),
			`devices/disk[1]: a disk of type 'file' requires <source file='...'/>`},
		{"lun on ide", withDevices(`<disk type='block' device='lun'><source dev='/dev/sda'/><target dev='hda' bus='ide'/></disk>`),
			`devices/disk[1]/target: a disk with device='lun' requires bus='scsi', not "ide"`},
		{"bad mac", withDevices(`<interface type='user'><mac address='52:54:00:zz:00:01'/></interface>`),
			`devices/interface[1]/mac: attribute address: malformed MAC address "52:54:00:zz:00:01"`},
		{"multicast mac", withDevices(`<interface type='user'><mac address='01:54:00:00:00:01'/></interface>`),
			`devices/interface[1]/mac: attribute address: 01:54:00:00:00:01 is a multicast MAC address`},
		{"serial file no path", withDevices(`<serial type='file'/>`),
			`devices/serial[1]: a serial of type "file" requires <source path='...'/>`},
		{"graphics port", withDevices(`<graphics type='vnc' port='80'/>`),
			`devices/graphics[1]: attribute port: VNC port 80 is below 5900`},
		{"unknown device", withDevices(`<gadget/>`),
			`devices/gadget[1]: unknown element <gadget> (expected one of: `},
		{"controller type", withDevices(`<controller type='nvme' index='0'/>`),
			`devices/controller[1]: attribute type: unknown value "nvme"`},
		{"on_reboot", strings.Replace(withDevices(""), "<devices>", "<on_reboot>explode</on_reboot><devices>", 1),
			`on_reboot: unknown value "explode" (expected one of: destroy, restart, preserve, rename-restart)`},
		{"qemu arg", strings.Replace(strings.Replace(withDevices(""), "<domain type='qemu'>",
			"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>", 1),
			"</devices>", "</devices><qemu:commandline><qemu:arg/></qemu:commandline>", 1),
			`qemu:commandline/qemu:arg: attribute value is required`},
		{"qemu override type", strings.Replace(strings.Replace(withDevices(""), "<domain type='qemu'>",
			"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>", 1),
			"</devices>", `</devices><qemu:override><qemu:device alias='ua-x'><qemu:frontend>
			<qemu:property name='p' type='float' value='1'/></qemu:frontend></qemu:device></qemu:override>`, 1),
			`qemu:override/qemu:device/qemu:frontend/qemu:property: attribute type: unknown value "float" (expected one of: string, unsigned, signed, bool, remove)`},
		{"boot mixed", strings.Replace(withDevices(`<disk type='file'><source file='/a.img'/><target dev='vda'/><boot order='1'/></disk>`),
			"<type arch='x86_64' machine='pc'>hvm</type>", "<type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/>", 1),
			`devices/disk[1]/boot: per-device boot order cannot be used together with os/boot`},
		{"topology", strings.Replace(withDevices(""), "<devices>",
			"<vcpu>8</vcpu><cpu><topology sockets='1' cores='2' threads='2'/></cpu><devices>", 1),
			`cpu/topology: CPU topology (4 CPUs) is smaller than the vCPU count 8`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.xml))
			if err == nil {
				t.Fatalf("Parse accepted it, want error %q", c.want)
			}
			if !strings.HasPrefix(err.Error(), c.want) {
				t.Errorf("error:\n got %q\nwant %q", err.Error(), c.want)
			}
			var de *Error
			if !errors.As(err, &de) {
				t.Errorf("error is %T, want *Error", err)
			}
		})
	}
}

// TestExpandIdempotent checks that expansion is a fixed point, and that a
// formatted expanded definition parses back to the same bytes.
func TestExpandIdempotent(t *testing.T) {
	files, _ := filepath.Glob("testdata/argv/*.xml")
	for _, f := range files {
		if strings.HasSuffix(f, ".expanded.xml") {
			continue
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, _ := os.ReadFile(f)
			d, err := Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			if err := Expand(d, nil); err != nil {
				t.Fatal(err)
			}
			once := d.XML()
			d2, err := Parse(once)
			if err != nil {
				t.Fatalf("expanded XML does not parse: %v\n%s", err, once)
			}
			if !bytes.Equal(d2.XML(), once) {
				t.Fatalf("format round trip changed the XML:\n%s\n----\n%s", once, d2.XML())
			}
			if err := Expand(d2, nil); err != nil {
				t.Fatal(err)
			}
			if twice := d2.XML(); !bytes.Equal(twice, once) {
				t.Fatalf("second Expand changed the XML:\n%s\n----\n%s", once, twice)
			}
		})
	}
}

// TestExpandDefaults checks what expansion fills in a bare definition.
func TestExpandDefaults(t *testing.T) {
	d, err := Parse([]byte(`<domain type='qemu'><memory>65536</memory><os><type>hvm</type></os>
		<devices><interface type='user'/><interface type='user'/></devices></domain>`))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.SetName("bare"); err != nil {
		t.Fatal(err)
	}
	if err := Expand(d, nil); err != nil {
		t.Fatal(err)
	}
	checks := []struct{ what, got, want string }{
		{"name", d.Name(), "bare"},
		{"arch", d.Arch(), "x86_64"},
		{"machine", d.Machine(), "pc-i440fx-7.2"},
		{"emulator", d.Emulator(), "/usr/bin/qemu-system-x86_64"},
		{"on_poweroff", d.OnPoweroff(), "destroy"},
		{"on_reboot", d.OnReboot(), "restart"},
		{"on_crash", d.OnCrash(), "destroy"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
		}
	}
	if len(d.UUID()) != 36 {
		t.Errorf("no UUID generated: %q", d.UUID())
	}
	nics := d.Interfaces()
	if len(nics) != 2 || !strings.HasPrefix(nics[0].MAC, "52:54:00:") || nics[0].MAC == nics[1].MAC {
		t.Errorf("MACs not generated or not unique: %+v", nics)
	}
	if nics[0].Model != "rtl8139" || nics[0].Alias != "net0" || nics[1].Alias != "net1" {
		t.Errorf("NIC defaults: %+v", nics)
	}
	// Expanding a copy with the same UUID gives the same MACs.
	d3, _ := Parse([]byte(`<domain type='qemu'><name>bare</name><uuid>` + d.UUID() + `</uuid><memory>65536</memory>
		<os><type>hvm</type></os><devices><interface type='user'/><interface type='user'/></devices></domain>`))
	if err := Expand(d3, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d3.XML(), d.XML()) {
		t.Errorf("expansion is not deterministic:\n%s\n----\n%s", d.XML(), d3.XML())
	}
	// Machine canonical names come from capabilities when given.
	caps := &capabilities.Capabilities{Host: capabilities.Host{Arch: "x86_64"}, Emulators: []*capabilities.Emulator{{
		Path: "/usr/bin/qemu-system-x86_64", Arch: "x86_64", VersionNum: 7002000, Accels: []string{"tcg"},
		Machines: []capabilities.Machine{{Name: "pc-q35-9.9", Alias: "q35"}, {Name: "pc-i440fx-9.9", Alias: "pc", Default: true}},
	}}}
	for _, c := range []struct{ in, want string }{{"q35", "pc-q35-9.9"}, {"", "pc-i440fx-9.9"}, {"pc-q35-6.2", "pc-q35-6.2"}} {
		m := ""
		if c.in != "" {
			m = " machine='" + c.in + "'"
		}
		d, err := Parse([]byte(`<domain type='qemu'><name>m</name><memory>65536</memory><os><type arch='x86_64'` + m + `>hvm</type></os></domain>`))
		if err != nil {
			t.Fatal(err)
		}
		if err := Expand(d, caps); err != nil {
			t.Fatal(err)
		}
		if d.Machine() != c.want {
			t.Errorf("machine %q expanded to %q, want %q", c.in, d.Machine(), c.want)
		}
	}
}

// TestAccessors checks the typed views the driver and security layer use.
func TestAccessors(t *testing.T) {
	data, _ := os.ReadFile("testdata/argv/disks.xml")
	d, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := Expand(d, nil); err != nil {
		t.Fatal(err)
	}
	disks := d.Disks()
	want := []Disk{
		{Type: "file", Device: "disk", Source: "/images/root.qcow2", Format: "qcow2", Target: "vda", Bus: "virtio", Alias: "virtio-disk0"},
		{Type: "file", Device: "disk", Source: "/images/data.raw", Format: "raw", Target: "hdb", Bus: "ide", Alias: "ide0-0-1"},
		{Type: "file", Device: "cdrom", Source: "/images/install.iso", Format: "raw", Target: "sda", Bus: "sata", ReadOnly: true, Alias: "sata0-0-0"},
		{Type: "block", Device: "disk", Source: "/dev/sdz", Format: "raw", Target: "sdb", Bus: "scsi", Alias: "scsi0-0-1"},
	}
	if len(disks) != len(want) {
		t.Fatalf("Disks() = %+v", disks)
	}
	for i := range want {
		if disks[i].Source != want[i].Source || disks[i].Format != want[i].Format || disks[i].Bus != want[i].Bus ||
			disks[i].ReadOnly != want[i].ReadOnly || disks[i].Alias != want[i].Alias || disks[i].Type != want[i].Type ||
			disks[i].Device != want[i].Device {
			t.Errorf("disk %d = %+v, want %+v", i, disks[i], want[i])
		}
	}
	g := d.Graphics()
	if len(g) != 1 || g[0].Type != "vnc" || !g[0].AutoPort || g[0].Port != -1 {
		t.Errorf("Graphics() = %+v", g)
	}
	data, _ = os.ReadFile("testdata/argv/kernel.xml")
	k, _ := Parse(data)
	if k.Kernel() != "/boot/vmlinuz" || k.Initrd() != "/boot/initrd.img" || k.Cmdline() != "console=ttyS0 root=/dev/vda" {
		t.Errorf("kernel/initrd/cmdline: %q %q %q", k.Kernel(), k.Initrd(), k.Cmdline())
	}
	if k.MemoryKiB() != 131072 || k.VCPUs() != 2 || k.OnReboot() != "destroy" {
		t.Errorf("memory %d vcpus %d on_reboot %s", k.MemoryKiB(), k.VCPUs(), k.OnReboot())
	}
	paths := map[string]bool{}
	for _, p := range k.HostPaths() {
		paths[p.Path] = p.ReadOnly
	}
	if ro, ok := paths["/boot/vmlinuz"]; !ok || !ro {
		t.Errorf("HostPaths() lacks the read-only kernel: %v", paths)
	}
}

// TestLiveView checks the mutators the driver uses to build live.xml.
func TestLiveView(t *testing.T) {
	data, _ := os.ReadFile("testdata/argv/disks.xml")
	d, _ := Parse(data)
	_ = d.SetName("d1")
	if err := Expand(d, nil); err != nil {
		t.Fatal(err)
	}
	before := d.XML()
	live := d.Clone()
	live.root.FindElement("devices").CreateElement("serial") // a pty serial for the alias test
	if err := Expand(live, nil); err != nil {
		t.Fatal(err)
	}
	if err := live.SetChardevPath("serial0", "/dev/pts/7"); err != nil {
		t.Fatal(err)
	}
	if err := live.SetChardevPath("nope", "/dev/pts/8"); err == nil {
		t.Error("SetChardevPath accepted an unknown alias")
	}
	if err := live.SetGraphicsPort("vnc", 5901); err != nil {
		t.Fatal(err)
	}
	if err := live.SetGraphicsListen("vnc", "0.0.0.0"); err != nil {
		t.Fatal(err)
	}
	if err := live.SetGraphicsPort("spice", 5902); err == nil {
		t.Error("SetGraphicsPort accepted a display type the domain lacks")
	}
	live.SetSecLabels([]SecLabel{{Type: "dynamic", Model: "selinux", Relabel: true, Label: "system_u:system_r:svirt_t:s0:c1,c2"},
		{Type: "none", Model: "dac"}})
	live.AddTaint("custom-monitor")
	live.AddTaint("custom-monitor")
	live.AddTaint("custom-argv")
	if !bytes.Equal(d.XML(), before) {
		t.Fatal("mutating the clone changed the original")
	}
	re, err := Parse(live.XML())
	if err != nil {
		t.Fatalf("live XML does not parse: %v\n%s", err, live.XML())
	}
	if got := re.Serials(); len(got) != 1 || got[0].Path != "/dev/pts/7" || got[0].Alias != "serial0" {
		t.Errorf("Serials() = %+v", got)
	}
	if g := re.Graphics(); g[0].Port != 5901 || !g[0].AutoPort || g[0].Listen != "0.0.0.0" {
		t.Errorf("Graphics() = %+v", g)
	}
	if s := re.SecLabels(); len(s) != 2 || s[0].Label != "system_u:system_r:svirt_t:s0:c1,c2" || s[1].Model != "dac" || s[1].Relabel {
		t.Errorf("SecLabels() = %+v", s)
	}
	if tn := re.Taints(); len(tn) != 2 || tn[0] != "custom-monitor" || tn[1] != "custom-argv" {
		t.Errorf("Taints() = %v", tn)
	}
	if !strings.Contains(string(live.XML()), `<qemufs:runtime xmlns:qemufs='https://qemufs.dev/xmlns/runtime/1'>`) {
		t.Errorf("runtime metadata not in the expected form:\n%s", live.XML())
	}
	re.ClearRuntime()
	if len(re.Taints()) != 0 || strings.Contains(string(re.XML()), "metadata") {
		t.Errorf("ClearRuntime left: %s", re.XML())
	}
}

// TestValidate checks the host checks.
func TestValidate(t *testing.T) {
	mk := func(typ, emu string) *Domain {
		d, err := Parse([]byte(`<domain type='` + typ + `'><name>v</name><memory>65536</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>
			<devices><emulator>` + emu + `</emulator></devices></domain>`))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	dir := t.TempDir()
	notExec := filepath.Join(dir, "qemu")
	if err := os.WriteFile(notExec, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	caps := &capabilities.Capabilities{Host: capabilities.Host{Arch: "x86_64"}, Emulators: []*capabilities.Emulator{{
		Path: "/usr/bin/qemu-system-x86_64", Arch: "x86_64", VersionNum: 7002000, Accels: []string{"tcg"},
		Machines: []capabilities.Machine{{Name: "pc-i440fx-7.2", Alias: "pc", Default: true}},
	}}}
	smallCaps := &capabilities.Capabilities{Host: caps.Host, Emulators: []*capabilities.Emulator{{
		Path: "/usr/bin/qemu-system-x86_64", Arch: "x86_64", VersionNum: 7002000, Accels: []string{"tcg"},
		Machines: caps.Emulators[0].Machines,
		Devices: map[string]bool{"piix3-usb-uhci": true, "virtio-balloon-pci": true, "memory-backend-ram": true,
			"rtl8139": true, "cirrus-vga": true},
	}}}
	withNIC := func(d *Domain) *Domain {
		n := child(d.root, "devices").CreateElement("interface")
		n.CreateAttr("type", "user")
		n.CreateElement("model").CreateAttr("type", "virtio")
		return d
	}
	withBridge := func(d *Domain) *Domain {
		n := child(d.root, "devices").CreateElement("interface")
		n.CreateAttr("type", "bridge")
		n.CreateElement("source").CreateAttr("bridge", "br0")
		return d
	}
	cases := []struct {
		name        string
		d           *Domain
		caps        *capabilities.Capabilities
		want        string
		unsupported bool
	}{
		{"missing emulator", mk("qemu", "/nonexistent/qemu"), nil, "devices/emulator: emulator /nonexistent/qemu: no such file or directory", false},
		{"not executable", mk("qemu", notExec), nil, "devices/emulator: emulator " + notExec + " is not an executable file", false},
		{"ok no caps", mk("qemu", "/usr/bin/qemu-system-x86_64"), nil, "", false},
		{"ok caps", mk("qemu", "/usr/bin/qemu-system-x86_64"), caps, "", false},
		{"kvm", mk("kvm", "/usr/bin/qemu-system-x86_64"), caps, `os/type: domain type "kvm" is not available for arch x86_64 on this host (available: qemu)`, true},
		{"missing device", withNIC(mk("qemu", "/usr/bin/qemu-system-x86_64")), smallCaps,
			`devices: emulator /usr/bin/qemu-system-x86_64 has no device type "virtio-net-pci" (needed by -device {"driver":"virtio-net-pci"`, true},
		{"host networking left for start", withBridge(mk("qemu", "/usr/bin/qemu-system-x86_64")), smallCaps, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.d.Validate(c.caps)
			if c.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), c.want) {
				t.Fatalf("Validate error %v, want %q", err, c.want)
			}
			if errors.Is(err, ErrUnsupported) != c.unsupported {
				t.Errorf("errors.Is(ErrUnsupported) = %v", !c.unsupported)
			}
		})
	}
}

// TestLifecycleArgs checks how on_* actions reach the command line.
func TestLifecycleArgs(t *testing.T) {
	cases := []struct {
		extra string
		want  []string
		not   []string
	}{
		{"", []string{"-no-shutdown"}, []string{"-action"}},
		{"<on_reboot>destroy</on_reboot>", []string{"-no-shutdown", "-action reboot=shutdown"}, nil},
		{"<on_crash>preserve</on_crash>", []string{"-no-shutdown"}, []string{"-action panic"}},
	}
	for _, c := range cases {
		x := strings.Replace(withDevices(""), "<devices>", c.extra+"<devices>", 1)
		d, err := Parse([]byte(x))
		if err != nil {
			t.Fatal(err)
		}
		cmd, err := BuildCommand(d, CommandOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s := cmd.String()
		for _, w := range c.want {
			if !strings.Contains(s, w) {
				t.Errorf("%s: %q not in %s", c.extra, w, s)
			}
		}
		for _, w := range c.not {
			if strings.Contains(s, w) {
				t.Errorf("%s: %q in %s", c.extra, w, s)
			}
		}
	}
	d, _ := Parse([]byte(withDevices(`<panic model='isa'/>`)))
	cmd, err := BuildCommand(d, CommandOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s := cmd.String(); !strings.Contains(s, "-action panic=pause") || !strings.Contains(s, `{"driver":"pvpanic","ioport":1285}`) {
		t.Errorf("panic device: %s", s)
	}
}

// TestTuning checks the tuning the driver applies with cgroups.
func TestTuning(t *testing.T) {
	x := strings.Replace(withDevices(""), "<devices>", `<vcpu cpuset='0-3,^2'>2</vcpu>
  <memtune><hard_limit unit='MiB'>256</hard_limit><soft_limit>131072</soft_limit></memtune>
  <blkiotune><weight>500</weight><device><path>/dev/sda</path><weight>700</weight><read_bytes_sec>1000</read_bytes_sec></device></blkiotune>
  <cputune><shares>2048</shares><period>100000</period><quota>-1</quota><vcpupin vcpu='1' cpuset='3'/><emulatorpin cpuset='0-1'/></cputune>
  <numatune><memory mode='interleave' nodeset='0'/></numatune>
  <resource><partition>/machine/qemufs</partition></resource><devices>`, 1)
	d, err := Parse([]byte(x))
	if err != nil {
		t.Fatal(err)
	}
	tu := d.Tuning()
	if tu.MemoryHardLimitKiB != 262144 || tu.MemorySoftLimitKiB != 131072 || tu.BlkioWeight != 500 ||
		len(tu.BlkioDevices) != 1 || tu.BlkioDevices[0].Weight != 700 || tu.BlkioDevices[0].ReadBytesSec != 1000 ||
		tu.CPUShares != 2048 || tu.CPUPeriod != 100000 || tu.CPUQuota != -1 || len(tu.VCPUPins[1]) != 1 ||
		tu.VCPUPins[1][0] != 3 || len(tu.EmulatorPin) != 2 || tu.NUMAMode != "interleave" ||
		len(tu.NUMANodeset) != 1 || tu.Partition != "/machine/qemufs" || len(tu.VCPUCPUSet) != 3 {
		t.Errorf("Tuning() = %+v", tu)
	}
	bad := strings.Replace(x, "<vcpupin vcpu='1'", "<vcpupin vcpu='5'", 1)
	if _, err := Parse([]byte(bad)); err == nil || err.Error() != "cputune/vcpupin: vCPU 5 does not exist (the domain has 2)" {
		t.Errorf("vcpupin error: %v", err)
	}
}

// TestCheckHost checks the start-time host checks against this host (no
// /dev/kvm, no such PCI device, no hugetlbfs mount are facts here; each
// case is skipped where the host does have the thing).
func TestCheckHost(t *testing.T) {
	cases := []struct {
		name, xml, want, needsAbsent string
	}{
		{"kvm", strings.Replace(withDevices(""), "type='qemu'", "type='kvm'", 1),
			"domain: domain type 'kvm' needs /dev/kvm, which this host does not have (use type='qemu')", "/dev/kvm"},
		{"pci hostdev", withDevices(`<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x7f' slot='0x1f' function='0x7'/></source></hostdev>`),
			"devices/hostdev[1]: host PCI device 0000:7f:1f.7 does not exist", "/sys/bus/pci/devices/0000:7f:1f.7"},
		{"serial dev", withDevices(`<serial type='dev'><source path='/dev/ttyNOPE9'/></serial>`),
			"devices/serial[1]: host device /dev/ttyNOPE9 does not exist", "/dev/ttyNOPE9"},
		{"ok", withDevices(`<serial type='pty'/>`), "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.needsAbsent != "" {
				if _, err := os.Stat(c.needsAbsent); err == nil {
					t.Skipf("%s exists on this host", c.needsAbsent)
				}
			}
			d, err := Parse([]byte(c.xml))
			if err != nil {
				t.Fatal(err)
			}
			err = d.CheckHost()
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || err.Error() != c.want || !errors.Is(err, ErrUnsupported) {
				t.Fatalf("CheckHost = %v, want %q", err, c.want)
			}
		})
	}
}

// TestDiskNoRelabel: a disk source's <seclabel relabel='no'> reaches the
// security layer, per model (none named: all).
func TestDiskNoRelabel(t *testing.T) {
	d, err := Parse([]byte(`<domain type='qemu'><name>n</name><memory>65536</memory><os><type arch='x86_64'>hvm</type></os><devices>
<disk type='file'><source file='/a'><seclabel model='dac' relabel='no'/></source><target dev='vda'/></disk>
<disk type='file'><source file='/b'><seclabel relabel='no'/></source><target dev='vdb'/></disk>
<disk type='file'><source file='/c'><seclabel model='selinux' relabel='yes'><label>x</label></seclabel></source><target dev='vdc'/></disk>
</devices></domain>`))
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"dac"}, {"dac", "selinux"}, nil}
	for i, dk := range d.Disks() {
		if !slices.Equal(dk.NoRelabel, want[i]) {
			t.Errorf("%s: NoRelabel %q, want %q", dk.Source, dk.NoRelabel, want[i])
		}
	}
}
