package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// hotplugXML is a guest with an empty IDE cdrom (for media changes) and
// the default USB controller (for an unplug that needs no guest).
func hotplugXML(name string) string {
	return fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features><devices>
<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
<serial type='pty'/></devices></domain>`, name)
}

// rawImage makes a sparse raw image.
func rawImage(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 8<<20); err != nil {
		t.Fatal(err)
	}
	return p
}

// qmpOf runs a QMP command on the domain's own connection.
func qmpOf(t *testing.T, d *Driver, name, cmd string, args any) json.RawMessage {
	t.Helper()
	_, r, err := d.current(name)
	if err != nil || r == nil {
		t.Fatalf("%s not running: %v", name, err)
	}
	var out json.RawMessage
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.mon.Execute(ctx, cmd, args, &out); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return out
}

// nodeNames lists QEMU's named block nodes.
func nodeNames(t *testing.T, d *Driver, name string) []string {
	var nodes []struct {
		Node string `json:"node-name"`
	}
	json.Unmarshal(qmpOf(t, d, name, "query-named-block-nodes", nil), &nodes)
	var out []string
	for _, n := range nodes {
		out = append(out, n.Node)
	}
	return out
}

// peripherals lists the ids of QEMU's user-created devices.
func peripherals(t *testing.T, d *Driver, name string) string {
	var props []struct {
		Name string `json:"name"`
	}
	json.Unmarshal(qmpOf(t, d, name, "qom-list", map[string]string{"path": "/machine/peripheral"}), &props)
	var out []string
	for _, p := range props {
		if p.Name != "type" {
			out = append(out, p.Name)
		}
	}
	return " " + strings.Join(out, " ") + " "
}

// aliasAfter is the alias of the device whose XML has marker.
func aliasAfter(xml, marker string) string {
	rest := xml[strings.Index(xml, marker):]
	rest = rest[strings.Index(rest, "<alias name='")+len("<alias name='"):]
	return rest[:strings.IndexByte(rest, '\'')]
}

func liveOf(d *Driver, name string) string { b, _ := d.LiveXML(name); return string(b) }
func cfgOf(d *Driver, name string) string  { b, _ := d.Config(name); return string(b) }

// TestHotplug attaches and detaches devices on a real (paused) QEMU.
// With no guest OS running, a PCI unplug is never acknowledged: that is
// the EBUSY case; USB devices and virtio-serial ports unplug without the
// guest.
func TestHotplug(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	d.Create("h")
	if err := d.Define("h", []byte(hotplugXML("h"))); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "h", "start --paused"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	img := rawImage(t, dir, "b.img")
	req := func(op, xml string) error { return d.DeviceRequest(ctx, "h", op, []byte(xml)) }

	// A virtio disk: PCI address from the allocator, alias, in both
	// definitions with the same address; QEMU has its device and nodes.
	disk := fmt.Sprintf(`<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vdb' bus='virtio'/></disk>`, img)
	if err := req("attach", disk); err != nil {
		t.Fatal(err)
	}
	live, cfg := liveOf(d, "h"), cfgOf(d, "h")
	if !strings.Contains(live, "<alias name='virtio-disk1'/>") || !strings.Contains(live, img) {
		t.Fatalf("live.xml lacks the disk:\n%s", live)
	}
	addr := func(xml string) string {
		i := strings.Index(xml, "virtio-disk1")
		j := strings.Index(xml[i:], "<address")
		return xml[i+j : i+j+strings.Index(xml[i+j:], "/>")]
	}
	if addr(live) != addr(cfg) || !strings.Contains(addr(live), "type='pci'") {
		t.Errorf("addresses differ: live %s, config %s", addr(live), addr(cfg))
	}
	if p := peripherals(t, d, "h"); !strings.Contains(p, " virtio-disk1 ") {
		t.Errorf("QEMU lacks virtio-disk1: %s", p)
	}
	nodesWithDisk := nodeNames(t, d, "h")

	// Refused requests change nothing.
	missing := filepath.Join(dir, "missing.img")
	bad := []struct {
		name, op, xml string
		kind          error
		msg           string
	}{
		{"syntax", "attach", "<disk type='file'>", ErrInvalid, "XML"},
		{"not a device", "attach", "<domain/>", ErrInvalid, "not a device"},
		{"duplicate target", "attach", disk, ErrInvalid, "vdb"},
		{"duplicate alias", "attach", strings.Replace(disk, "vdb", "vdc", 1) + "", ErrInvalid, ""},
		{"missing file", "attach", strings.Replace(strings.Replace(disk, img, missing, 1), "vdb", "vdd", 1), ErrInvalid, "missing.img"},
		{"ide bus", "attach", strings.Replace(strings.Replace(disk, "vdb", "hdb", 1), "virtio", "ide", 1), ErrInvalid, "hot-plugged"},
		{"unknown bus", "attach", strings.Replace(strings.Replace(disk, "vdb", "xda", 1), "virtio", "bogus", 1), ErrInvalid, "bogus"},
		{"video", "attach", "<video><model type='vga'/></video>", ErrInvalid, "cannot be hot-plugged"},
		{"pci address taken", "attach", strings.Replace(strings.Replace(disk, "vdb", "vde", 1), "</disk>", addr(live)+"/></disk>", 1), ErrInvalid, "already used"},
		{"unknown NIC model", "attach", "<interface type='user'><model type='bogus'/></interface>", ErrInvalid, "bogus"},
		{"bad flag", "attach", "--bogus\n" + disk, ErrInvalid, "--bogus"},
		{"detach unknown", "detach", "<alias name='nope'/>", ErrNoDevice, "nope"},
		{"detach no key", "detach", "<interface type='user'/>", ErrInvalid, "mac"},
		{"update not media", "update", disk, ErrInvalid, "cdrom"},
		{"format mismatch", "attach", strings.Replace(strings.Replace(strings.Replace(disk, "vdb", "vdf", 1), "type='raw'", "type='qcow2'", 1), img, rawImage(t, dir, "f.img"), 1), ErrIO, "qcow2"},
	}
	bad[3].xml = strings.Replace(strings.Replace(disk, "vdb", "vdc", 1), "</disk>", "<alias name='virtio-disk1'/></disk>", 1)
	bad[3].msg = "virtio-disk1"
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			err := req(tt.op, tt.xml)
			if !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("%s: %v; want %v mentioning %q", tt.op, err, tt.kind, tt.msg)
			}
			if e, _ := d.LastError("h"); e != err.Error() {
				t.Errorf("error file %q, want %q", e, err)
			}
			if liveOf(d, "h") != live || cfgOf(d, "h") != cfg {
				t.Error("a refused request changed a definition")
			}
			if got := nodeNames(t, d, "h"); strings.Join(got, ",") != strings.Join(nodesWithDisk, ",") {
				t.Errorf("block nodes %v, want %v (not rolled back)", got, nodesWithDisk)
			}
		})
	}

	// No guest acknowledges the PCI unplug: EBUSY, and it stays.
	err := req("detach", "--timeout=1\n<disk><target dev='vdb'/></disk>")
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "did not release") {
		t.Fatalf("detach of an unacknowledged PCI disk: %v, want ErrBusy", err)
	}
	if !strings.Contains(liveOf(d, "h"), "virtio-disk1") || !strings.Contains(cfgOf(d, "h"), "virtio-disk1") {
		t.Error("a refused detach removed the disk from a definition")
	}

	// A USB disk unplugs at once: its nodes go, it leaves both definitions.
	usb := rawImage(t, dir, "u.img")
	usbDisk := fmt.Sprintf(`<disk type='file'><source file='%s'/><target dev='sdb' bus='usb'/></disk>`, usb)
	if err := req("attach", usbDisk); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(liveOf(d, "h"), "usb-disk1") || !strings.Contains(peripherals(t, d, "h"), " usb-disk1 ") {
		t.Fatalf("USB disk not attached:\n%s", liveOf(d, "h"))
	}
	if got := nodeNames(t, d, "h"); len(got) != len(nodesWithDisk)+2 {
		t.Errorf("nodes after USB attach %v", got)
	}
	if err := req("detach", "<alias name='usb-disk1'/>"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(liveOf(d, "h"), "usb-disk1") || strings.Contains(cfgOf(d, "h"), "usb-disk1") || strings.Contains(peripherals(t, d, "h"), " usb-disk1 ") {
		t.Errorf("USB disk still there after detach:\n%s", liveOf(d, "h"))
	}
	if got := nodeNames(t, d, "h"); strings.Join(got, ",") != strings.Join(nodesWithDisk, ",") {
		t.Errorf("nodes after USB detach %v, want %v", got, nodesWithDisk)
	}

	// A NIC (user networking) gets a MAC; a virtio channel brings its
	// virtio-serial controller along.
	if err := req("attach", "<interface type='user'><model type='virtio'/></interface>"); err != nil {
		t.Fatal(err)
	}
	if l := liveOf(d, "h"); !strings.Contains(l, "<mac address='52:54:00:") || !strings.Contains(peripherals(t, d, "h"), " net0 ") {
		t.Errorf("NIC not attached:\n%s", l)
	}
	if err := req("update", "<interface><alias name='net0'/><link state='down'/></interface>"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(liveOf(d, "h"), "<link state='down'/>") {
		t.Error("link state not in live.xml")
	}
	// A tap NIC (QEMU makes the tap, as at start) on USB, which unplugs
	// without a guest: netdev_del closes the tap.
	if _, err := os.Stat("/dev/net/tun"); err == nil && os.Geteuid() == 0 {
		tap := fmt.Sprintf("qfshp%d", os.Getpid()%10000000)
		if err := req("attach", fmt.Sprintf("<interface type='ethernet'><target dev='%s'/><model type='usb-net'/></interface>", tap)); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat("/sys/class/net/" + tap); err != nil {
			t.Errorf("tap %s not made: %v", tap, err)
		}
		if l := liveOf(d, "h"); !strings.Contains(l[strings.Index(l, tap):], "<address type='usb'") {
			t.Errorf("the USB NIC has no USB address:\n%s", l)
		}
		if err := req("detach", "<alias name='"+aliasAfter(liveOf(d, "h"), tap)+"'/>"); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat("/sys/class/net/" + tap); err == nil {
			t.Errorf("tap %s still there after detach", tap)
		}
	}
	chanXML := "<channel type='unix'><target type='virtio' name='org.qemufs.test.0'/></channel>"
	if err := req("attach", chanXML); err != nil {
		t.Fatal(err)
	}
	if p := peripherals(t, d, "h"); !strings.Contains(p, " channel0 ") || !strings.Contains(p, " virtio-serial0 ") {
		t.Errorf("channel or its controller missing in QEMU: %s", p)
	}
	if err := req("detach", chanXML); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(liveOf(d, "h"), "channel0") || strings.Contains(peripherals(t, d, "h"), " channel0 ") {
		t.Error("channel still there after detach")
	}
	var chardevs []struct {
		Label string `json:"label"`
	}
	json.Unmarshal(qmpOf(t, d, "h", "query-chardev", nil), &chardevs)
	for _, c := range chardevs {
		if c.Label == "charchannel0" {
			t.Error("channel's chardev not removed")
		}
	}

	// Media change on the IDE cdrom, then eject.
	iso := rawImage(t, dir, "cd.iso")
	if err := req("update", fmt.Sprintf("<disk type='file' device='cdrom'><source file='%s'/><target dev='hdc'/></disk>", iso)); err != nil {
		t.Fatal(err)
	}
	inserted := func() string {
		var blocks []struct {
			Qdev     string `json:"qdev"`
			Inserted *struct {
				File string `json:"file"`
			} `json:"inserted"`
		}
		json.Unmarshal(qmpOf(t, d, "h", "query-block", nil), &blocks)
		for _, b := range blocks {
			if strings.Contains(b.Qdev, "ide0-1-0") && b.Inserted != nil {
				return b.Inserted.File
			}
		}
		return ""
	}
	if got := inserted(); got != iso {
		t.Errorf("cdrom holds %q, want %s", got, iso)
	}
	if !strings.Contains(liveOf(d, "h"), iso) || !strings.Contains(cfgOf(d, "h"), iso) {
		t.Error("new media not in the definitions")
	}
	if err := req("update", "<disk type='file' device='cdrom'><target dev='hdc'/></disk>"); err != nil {
		t.Fatal(err)
	}
	if got := inserted(); got != "" {
		t.Errorf("cdrom holds %q after eject", got)
	}
	if strings.Contains(liveOf(d, "h"), iso) {
		t.Error("ejected media still in live.xml")
	}

	// --config while running: only config.xml changes.
	cfgOnly := rawImage(t, dir, "c.img")
	before := liveOf(d, "h")
	if err := req("attach", fmt.Sprintf("--config\n<disk type='file'><source file='%s'/><target dev='vdg' bus='virtio'/></disk>", cfgOnly)); err != nil {
		t.Fatal(err)
	}
	if liveOf(d, "h") != before || !strings.Contains(cfgOf(d, "h"), cfgOnly) {
		t.Error("--config attach: live changed or config lacks the disk")
	}

	// A shut-off domain: config only; --live is refused.
	if err := d.Control(ctx, "h", "destroy"); err != nil {
		t.Fatal(err)
	}
	off := rawImage(t, dir, "o.img")
	offDisk := fmt.Sprintf(`<disk type='file'><source file='%s'/><target dev='vdh' bus='virtio'/></disk>`, off)
	if err := req("attach", "--live\n"+offDisk); !errors.Is(err, ErrBusy) {
		t.Errorf("--live attach to a shut-off domain: %v, want ErrBusy", err)
	}
	if err := req("attach", offDisk); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cfgOf(d, "h"), off) {
		t.Error("config lacks the disk attached while shut off")
	}
	if err := req("detach", "<disk><target dev='vdh'/></disk>"); err != nil || strings.Contains(cfgOf(d, "h"), off) {
		t.Errorf("detach while shut off: %v", err)
	}
	// The attached definition starts, with the disk present.
	if err := d.Control(ctx, "h", "start --paused"); err != nil {
		t.Fatal(err)
	}
	if p := peripherals(t, d, "h"); !strings.Contains(p, " virtio-disk1 ") || !strings.Contains(p, " virtio-disk6 ") {
		t.Errorf("restarted guest lacks the attached disks: %s", p)
	}
}

// TestHotplugSurvivesRestart: a disk attached before a daemon restart is
// detached by the next daemon with the node names the first one chose,
// and a disk the guest started with by the names its command line gave.
func TestHotplugSurvivesRestart(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	d.Create("r")
	dir := t.TempDir()
	bootDisk := fmt.Sprintf("<disk type='file'><source file='%s'/><target dev='sdc' bus='usb'/></disk>\n<serial", rawImage(t, dir, "boot.img"))
	if err := d.Define("r", []byte(strings.Replace(hotplugXML("r"), "<serial", bootDisk, 1))); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "r", "start --paused"); err != nil {
		t.Fatal(err)
	}
	img := rawImage(t, dir, "u.img")
	if err := d.DeviceRequest(ctx, "r", "attach", []byte(fmt.Sprintf(`<disk type='file'><source file='%s'/><target dev='sdb' bus='usb'/></disk>`, img))); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d2, err := New(d.opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.Control(ctx, "r", "destroy"); d2.Close() })
	// The disk attached by the first daemon and the one the guest started
	// with: both unplug with their nodes.
	if err := d2.DeviceRequest(ctx, "r", "detach", []byte("<alias name='usb-disk1'/>")); err != nil {
		t.Fatal(err)
	}
	if err := d2.DeviceRequest(ctx, "r", "detach", []byte("<disk><target dev='sdc'/></disk>")); err != nil {
		t.Fatal(err)
	}
	if got := nodeNames(t, d2, "r"); len(got) != 0 {
		t.Errorf("nodes %v left after detach", got)
	}
}

// TestHotplugKinds attaches the other device classes to a real paused
// QEMU and checks QEMU has them, and unplugs those that need no guest.
func TestHotplugKinds(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	d := newDriver(t)
	ctx := context.Background()
	d.Create("k")
	floppy := "<disk type='file' device='floppy'><target dev='fda' bus='fdc'/></disk>\n<serial"
	if err := d.Define("k", []byte(strings.Replace(hotplugXML("k"), "<serial", floppy, 1))); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "k", "start --paused"); err != nil {
		t.Fatal(err)
	}
	req := func(op, xml string) {
		t.Helper()
		if err := d.DeviceRequest(ctx, "k", op, []byte(xml)); err != nil {
			t.Fatalf("%s %s: %v", op, xml, err)
		}
	}
	dir := t.TempDir()
	base := rawImage(t, dir, "base.raw")
	top := filepath.Join(dir, "top.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	nodes0 := len(nodeNames(t, d, "k"))

	// qcow2 with its backing chain, on a SCSI controller attached first:
	// four nodes (two layers), all gone after detach.
	req("attach", "<controller type='scsi' model='virtio-scsi'/>")
	if !strings.Contains(peripherals(t, d, "k"), " scsi0 ") {
		t.Fatalf("no scsi0 in QEMU: %s", peripherals(t, d, "k"))
	}
	req("attach", fmt.Sprintf(`<disk type='file'><driver name='qemu' type='qcow2'/><source file='%s'/>
<backingStore type='file'><format type='raw'/><source file='%s'/></backingStore><target dev='sdc' bus='scsi'/></disk>`, top, base))
	if got := len(nodeNames(t, d, "k")); got != nodes0+4 {
		t.Errorf("%d block nodes after attaching a two-layer disk, want %d", got, nodes0+4)
	}
	var blocks []struct {
		Qdev     string `json:"qdev"`
		Inserted *struct {
			File        string `json:"file"`
			BackingFile string `json:"backing_file"`
		} `json:"inserted"`
	}
	json.Unmarshal(qmpOf(t, d, "k", "query-block", nil), &blocks)
	found := false
	for _, b := range blocks {
		if b.Inserted != nil && b.Inserted.File == top {
			found = true
		}
	}
	if !found {
		t.Errorf("QEMU has no disk on %s: %+v", top, blocks)
	}
	req("detach", "<disk><target dev='sdc'/></disk>")
	if got := len(nodeNames(t, d, "k")); got != nodes0 {
		t.Errorf("%d block nodes after detach, want %d", got, nodes0)
	}

	// An rng: its backend object and device.
	req("attach", "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>")
	var objs []struct {
		Name string `json:"name"`
	}
	json.Unmarshal(qmpOf(t, d, "k", "qom-list", map[string]string{"path": "/objects"}), &objs)
	hasObj := false
	for _, o := range objs {
		hasObj = hasObj || o.Name == "objrng0"
	}
	if !hasObj || !strings.Contains(peripherals(t, d, "k"), " rng0 ") {
		t.Errorf("rng not in QEMU: objects %+v, devices %s", objs, peripherals(t, d, "k"))
	}

	// Floppy media in and out.
	fd := rawImage(t, dir, "fd.img")
	req("update", fmt.Sprintf("<disk type='file' device='floppy'><source file='%s'/><target dev='fda'/></disk>", fd))
	floppyFile := func() string {
		var blocks []struct {
			Qdev     string `json:"qdev"`
			Inserted *struct {
				File string `json:"file"`
			} `json:"inserted"`
		}
		json.Unmarshal(qmpOf(t, d, "k", "query-block", nil), &blocks)
		for _, b := range blocks {
			if strings.Contains(b.Qdev, "fdc0-0-0") && b.Inserted != nil {
				return b.Inserted.File
			}
		}
		return ""
	}
	if got := floppyFile(); got != fd {
		t.Errorf("floppy holds %q, want %s", got, fd)
	}
	req("update", "<disk device='floppy'><target dev='fda'/></disk>")
	if got := floppyFile(); got != "" {
		t.Errorf("floppy holds %q after eject", got)
	}

	// A USB serial port on a pty: its chardev and device; unplugged at once.
	req("attach", "<serial type='pty'><target type='usb-serial' port='1'/></serial>")
	l := liveOf(d, "k")
	if !strings.Contains(peripherals(t, d, "k"), " serial1 ") {
		t.Fatalf("usb-serial not in QEMU: %s\n%s", peripherals(t, d, "k"), l)
	}
	req("detach", "<alias name='serial1'/>")
	if strings.Contains(peripherals(t, d, "k"), " serial1 ") || strings.Contains(liveOf(d, "k"), "serial1") {
		t.Error("usb-serial still there after detach")
	}
}

// TestHotplugQ35: on q35 a PCI device goes to the empty root port that
// expansion keeps for hot-plug; when none is left, attach says so instead
// of adding a root port QEMU could not hot-plug.
func TestHotplugQ35(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	d.Create("q")
	xml := strings.Replace(hotplugXML("q"), "machine='pc'", "machine='q35'", 1)
	xml = strings.Replace(xml, "<target dev='hdc' bus='ide'/>", "<target dev='sda' bus='sata'/>", 1)
	if err := d.Define("q", []byte(xml)); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "q", "start --paused"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	disk := func(dev string) string {
		return fmt.Sprintf(`<disk type='file'><source file='%s'/><target dev='%s' bus='virtio'/></disk>`, rawImage(t, dir, dev+".img"), dev)
	}
	if err := d.DeviceRequest(ctx, "q", "attach", []byte(disk("vdb"))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(peripherals(t, d, "q"), " virtio-disk1 ") {
		t.Fatalf("virtio-disk1 not in QEMU: %s", peripherals(t, d, "q"))
	}
	live := liveOf(d, "q")
	err := d.DeviceRequest(ctx, "q", "attach", []byte(disk("vdc")))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "cannot be hot-plugged") {
		t.Fatalf("attach with no free root port: %v, want ErrInvalid", err)
	}
	if liveOf(d, "q") != live {
		t.Error("a refused attach changed live.xml")
	}
}

func TestParseDeviceRequest(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want DeviceOptions
		xml  string
		err  string
	}{
		{"<disk/>", DeviceOptions{}, "<disk/>", ""},
		{"--live\n<disk/>", DeviceOptions{Live: true}, "<disk/>", ""},
		{"--config --timeout=2.5\n  <disk/>\n", DeviceOptions{Config: true, Timeout: 2500 * time.Millisecond}, "<disk/>\n", ""},
		{"--live\n--config\n<a/>", DeviceOptions{Live: true, Config: true}, "<a/>", ""},
		{"--persistent\n<a/>", DeviceOptions{Persistent: true}, "<a/>", ""},
		{"--bogus\n<a/>", DeviceOptions{}, "", "--bogus"},
		{"--timeout=0\n<a/>", DeviceOptions{}, "", "--timeout"},
		{"--timeout=x\n<a/>", DeviceOptions{}, "", "--timeout"},
	} {
		o, xml, err := ParseDeviceRequest([]byte(tt.in))
		if tt.err != "" {
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: %v, want ErrInvalid mentioning %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || o != tt.want || string(xml) != tt.xml {
			t.Errorf("%q: %+v %q %v; want %+v %q", tt.in, o, xml, err, tt.want, tt.xml)
		}
	}
}
