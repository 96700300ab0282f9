package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// hotplugWait bounds a guest boot and a guest's reaction to a hot-plug on a
// loaded machine.
const hotplugWait = 180 * time.Second

// TestHotplugDisk: a raw disk attached to the booted guest through the
// mount shows up in the guest, takes its writes, is owned by QEMU's user
// while attached (QEMU runs as qemu:qemu in a system instance) and goes
// back to its owner, and out of the guest and live.xml, when detached.
func TestHotplugDisk(t *testing.T) {
	t.Parallel()
	uid, gid := qemuIDs(t)
	m := harness.Start(t, harness.Options{System: true})
	img := image(t, m.Base, "hot.raw", "raw")
	before := ownerOf(t, img)
	bootDisk := image(t, m.Base, "boot.raw", "raw")
	m.Define("hp", harness.GuestXML(t, "hp", guest.ActionNone, disk("file", "raw", bootDisk, "vda", "")))
	m.MustCtl("hp", "start")
	m.WaitConsole("hp", guest.ReadyLine, hotplugWait)

	diskXML := disk("file", "raw", img, "vdb", "")
	if err := m.Write(diskXML, "hp", "attach"); err != nil {
		t.Fatalf("attach: %v (error: %s)\nlog:\n%s", err, m.ErrorOf("hp"), m.QEMULog("hp"))
	}
	if o := ownerOf(t, img); o.UID != uid || o.GID != gid {
		t.Errorf("attached disk owned by %v, want qemu %d:%d", o, uid, gid)
	}
	live := m.Read("hp", "live.xml")
	if !strings.Contains(live, "<alias name='virtio-disk1'/>") || !strings.Contains(m.Read("hp", "config.xml"), img) {
		t.Fatalf("the disk is not in live.xml and config.xml:\n%s", live)
	}
	// The guest names virtio disks in the order it finds them: the boot
	// disk is vda, this one vdb.
	m.WaitGuest("hp", "cat /proc/partitions", hotplugWait, func(s string) bool { return strings.Contains(s, "vdb") })
	m.WaitGuest("hp", "echo QEMUFS-HOTPLUG-MARK | dd of=/dev/vdb conv=fsync 2>/dev/null; echo rc=$?", time.Minute,
		func(s string) bool { return strings.Contains(s, "rc=0") })
	data := make([]byte, 64)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Read(data)
	f.Close()
	if !strings.HasPrefix(string(data), "QEMUFS-HOTPLUG-MARK") {
		t.Errorf("the image does not hold what the guest wrote: %q", data)
	}

	if err := m.Write("--timeout=120\n<disk><target dev='vdb'/></disk>", "hp", "detach"); err != nil {
		t.Fatalf("detach: %v (error: %s)", err, m.ErrorOf("hp"))
	}
	m.WaitGuest("hp", "cat /proc/partitions", hotplugWait, func(s string) bool {
		return strings.Contains(s, "vda") && !strings.Contains(s, "vdb")
	})
	if l := m.Read("hp", "live.xml"); strings.Contains(l, "virtio-disk1") {
		t.Errorf("live.xml still has the disk:\n%s", l)
	}
	if strings.Contains(m.Read("hp", "config.xml"), img) {
		t.Error("config.xml still has the disk")
	}
	if o := ownerOf(t, img); o != before {
		t.Errorf("detached disk owned by %v, want %v back", o, before)
	}

	// A disk still attached when the daemon dies is given back when the
	// next daemon sees the guest stop: the status file's security record
	// has it.
	img2 := image(t, m.Base, "hot2.raw", "raw")
	before2 := ownerOf(t, img2)
	if err := m.Write(disk("file", "raw", img2, "vdc", ""), "hp", "attach"); err != nil {
		t.Fatalf("attach: %v (error: %s)", err, m.ErrorOf("hp"))
	}
	if o := ownerOf(t, img2); o.UID != uid {
		t.Errorf("second disk owned by %v", o)
	}
	m.KillDaemon()
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m.Read("hp", "live.xml"), img2) {
		t.Error("the re-attached guest's live.xml lost the hot-plugged disk")
	}
	m.MustCtl("hp", "destroy")
	waitFor(t, settle, func() error {
		if o := ownerOf(t, img2); o != before2 {
			return errors.New("hot-plugged disk owned by " + o.String() + " after stop, want " + before2.String())
		}
		return nil
	})
}

// TestHotplugNICAndMedia: a NIC attached to the booted guest appears in
// it and goes when detached; a CD-ROM's media is changed and ejected.
func TestHotplugNICAndMedia(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	iso := m.Base + "/cd.iso"
	mark := "QEMUFS-CDROM-MARK"
	if err := os.WriteFile(iso, append([]byte(mark), make([]byte, 64<<10)...), 0o644); err != nil {
		t.Fatal(err)
	}
	cdrom := `<controller type='scsi' model='virtio-scsi'/>
    <disk type='file' device='cdrom'><target dev='sda' bus='scsi'/></disk>`
	m.Define("nm", harness.GuestXML(t, "nm", guest.ActionNone, cdrom))
	m.MustCtl("nm", "start")
	m.WaitConsole("nm", guest.ReadyLine, hotplugWait)

	if err := m.Write("<interface type='user'><model type='virtio'/></interface>", "nm", "attach"); err != nil {
		t.Fatalf("attach NIC: %v (error: %s)", err, m.ErrorOf("nm"))
	}
	live := m.Read("nm", "live.xml")
	if !strings.Contains(live, "<interface type='user'>") || !strings.Contains(live, "<mac address='52:54:00:") {
		t.Fatalf("NIC not in live.xml:\n%s", live)
	}
	m.WaitGuest("nm", "ls /sys/class/net", hotplugWait, func(s string) bool { return strings.Contains(s, "eth0") })
	// Link state: the guest sees the carrier go and come back.
	carrier := "ip link set eth0 up; cat /sys/class/net/eth0/carrier"
	m.WaitGuest("nm", carrier, hotplugWait, func(s string) bool { return strings.TrimSpace(s) == "1" })
	if err := m.Write("<interface><alias name='net0'/><link state='down'/></interface>", "nm", "update"); err != nil {
		t.Fatalf("link down: %v (error: %s)", err, m.ErrorOf("nm"))
	}
	m.WaitGuest("nm", carrier, hotplugWait, func(s string) bool { return strings.TrimSpace(s) == "0" })
	if err := m.Write("<interface><alias name='net0'/><link state='up'/></interface>", "nm", "update"); err != nil {
		t.Fatalf("link up: %v (error: %s)", err, m.ErrorOf("nm"))
	}
	m.WaitGuest("nm", carrier, hotplugWait, func(s string) bool { return strings.TrimSpace(s) == "1" })
	if err := m.Write("--timeout=120\n<alias name='net0'/>", "nm", "detach"); err != nil {
		t.Fatalf("detach NIC: %v (error: %s)", err, m.ErrorOf("nm"))
	}
	m.WaitGuest("nm", "ls /sys/class/net", hotplugWait, func(s string) bool { return !strings.Contains(s, "eth0") })
	if strings.Contains(m.Read("nm", "live.xml"), "<interface") {
		t.Error("NIC still in live.xml after detach")
	}

	// A detach that gives up waiting (EBUSY) is finished when the guest
	// lets the device go afterwards.
	if err := m.Write("<interface type='user'><model type='virtio'/></interface>", "nm", "attach"); err != nil {
		t.Fatalf("attach NIC: %v (error: %s)", err, m.ErrorOf("nm"))
	}
	m.WaitGuest("nm", "ls /sys/class/net", hotplugWait, func(s string) bool { return strings.Contains(s, "eth0") })
	alias := "net0" // the first one left, so the name is free again
	if !strings.Contains(m.Read("nm", "live.xml"), "<alias name='"+alias+"'/>") {
		t.Fatalf("the NIC is not %s:\n%s", alias, m.Read("nm", "live.xml"))
	}
	switch err := m.Write("--timeout=0.001\n<alias name='"+alias+"'/>", "nm", "detach"); {
	case errors.Is(err, syscall.EBUSY):
		if !strings.Contains(m.Read("nm", "live.xml"), alias) {
			t.Error("the NIC left live.xml though detach said EBUSY")
		}
		waitFor(t, hotplugWait, func() error {
			if strings.Contains(m.Read("nm", "live.xml"), "<interface") {
				return errors.New("the NIC the guest released late is still in live.xml")
			}
			if strings.Contains(m.Read("nm", "config.xml"), "<interface") {
				return errors.New("the NIC the guest released late is still in config.xml")
			}
			return nil
		})
	case err != nil:
		t.Fatalf("detach: %v (error: %s)", err, m.ErrorOf("nm"))
	default:
		t.Log("the guest released the NIC within 1 ms; the late path was not exercised")
	}
	m.WaitGuest("nm", "ls /sys/class/net", hotplugWait, func(s string) bool { return !strings.Contains(s, "eth0") })

	// Media in: the guest reads the image's first bytes from the drive.
	media := "<disk type='file' device='cdrom'><source file='" + iso + "'/><target dev='sda'/></disk>"
	if err := m.Write(media, "nm", "update"); err != nil {
		t.Fatalf("update media: %v (error: %s)", err, m.ErrorOf("nm"))
	}
	if !strings.Contains(m.Read("nm", "live.xml"), iso) || !strings.Contains(m.Read("nm", "config.xml"), iso) {
		t.Error("new media not in live.xml and config.xml")
	}
	m.WaitGuest("nm", "dd if=/dev/sr0 bs=2048 count=1 2>/dev/null | head -c 17; echo", hotplugWait, func(s string) bool { return strings.Contains(s, mark) })
	// Eject.
	if err := m.Write("<disk type='file' device='cdrom'><target dev='sda'/></disk>", "nm", "update"); err != nil {
		t.Fatalf("eject: %v (error: %s)", err, m.ErrorOf("nm"))
	}
	if strings.Contains(m.Read("nm", "live.xml"), iso) {
		t.Error("ejected media still in live.xml")
	}
	m.WaitGuest("nm", "dd if=/dev/sr0 bs=2048 count=1 >/dev/null 2>&1; echo rc=$?", time.Minute, func(s string) bool { return strings.Contains(s, "rc=1") })

	// A link set down stays down across a restart: config.xml has it and
	// start applies it.
	if err := m.Write("<interface type='user'><model type='virtio'/><link state='down'/></interface>", "nm", "attach"); err != nil {
		t.Fatalf("attach NIC with link down: %v (error: %s)", err, m.ErrorOf("nm"))
	}
	m.WaitGuest("nm", carrier, hotplugWait, func(s string) bool { return strings.TrimSpace(s) == "0" })
	m.MustCtl("nm", "destroy")
	m.MustCtl("nm", "start")
	m.WaitConsole("nm", guest.ReadyLine, hotplugWait)
	m.WaitGuest("nm", carrier, hotplugWait, func(s string) bool { return strings.TrimSpace(s) == "0" })
	m.MustCtl("nm", "destroy")
}

// TestHotplugErrors: every refused request gets its errno and a reason
// in `error`, and leaves the guest and both definitions as they were.
func TestHotplugErrors(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	img := image(t, m.Base, "e.raw", "raw")
	m.Define("he", harness.GuestXML(t, "he", guest.ActionNone, disk("file", "raw", img, "vdb", "")))
	m.MustCtl("he", "start --paused")
	live, cfg := m.Read("he", "live.xml"), m.Read("he", "config.xml")
	other := image(t, m.Base, "o.raw", "raw")
	tests := []struct {
		name, file, data string
		errno            syscall.Errno
		msg              string
	}{
		{"bad XML", "attach", "<disk type='file'><source", syscall.EINVAL, "XML"},
		{"not a device", "attach", "<bogus/>", syscall.EINVAL, "not a device"},
		{"duplicate target", "attach", disk("file", "raw", other, "vdb", ""), syscall.EINVAL, "vdb"},
		{"duplicate alias", "attach", disk("file", "raw", other, "vdc", "<alias name='virtio-disk1'/>"), syscall.EINVAL, "virtio-disk1"},
		{"missing file", "attach", disk("file", "raw", m.Base+"/nope.raw", "vdd", ""), syscall.EINVAL, "nope.raw"},
		{"unsupported bus", "attach", strings.Replace(disk("file", "raw", other, "hdb", ""), "virtio", "ide", 1), syscall.EINVAL, "hot-plugged"},
		{"not hot-pluggable", "attach", "<video><model type='vga'/></video>", syscall.EINVAL, "hot-plugged"},
		{"bad flag", "attach", "--now\n" + disk("file", "raw", other, "vde", ""), syscall.EINVAL, "--now"},
		{"detach unknown alias", "detach", "<alias name='ua-none'/>", syscall.ENODEV, "ua-none"},
		{"update a plain disk", "update", disk("file", "raw", other, "vdb", ""), syscall.EINVAL, "cdrom"},
		{"QEMU refuses the image", "attach", disk("file", "qcow2", other, "vdf", ""), syscall.EIO, "qcow2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := m.Write(tt.data, "he", tt.file)
			if !errors.Is(err, tt.errno) {
				t.Fatalf("write %s: %v, want %v", tt.file, err, tt.errno)
			}
			if msg := m.ErrorOf("he"); !strings.Contains(msg, tt.msg) {
				t.Errorf("error %q does not mention %q", msg, tt.msg)
			}
			if m.Read("he", "live.xml") != live || m.Read("he", "config.xml") != cfg {
				t.Error("a refused request changed live.xml or config.xml")
			}
			if st := m.State("he"); st != "paused (user)" {
				t.Errorf("state %q after a refused request", st)
			}
		})
	}
	// No guest OS runs to acknowledge a PCI unplug: EBUSY, and the disk
	// stays in live.xml.
	err := m.Write("--timeout=1\n<disk><target dev='vdb'/></disk>", "he", "detach")
	if !errors.Is(err, syscall.EBUSY) || !strings.Contains(m.ErrorOf("he"), "did not release") {
		t.Errorf("unacknowledged detach: %v (error %q), want EBUSY", err, m.ErrorOf("he"))
	}
	if !strings.Contains(m.Read("he", "live.xml"), "virtio-disk1") {
		t.Error("the disk left live.xml though the guest did not release it")
	}
	m.MustCtl("he", "destroy")
}

// TestHotplugBlockDevice: a block device attached to a confined guest is
// added to its cgroup device ACL, given a node in QEMU's private /dev and
// to QEMU's user; detached, all three are undone. (USB, so that the
// paused guest needs no OS to let it go.)
func TestHotplugBlockDevice(t *testing.T) {
	t.Parallel()
	uid, _ := qemuIDs(t)
	loop := loopDevice(t)
	m := harness.Start(t, harness.Options{System: true})
	before := ownerOf(t, loop)
	m.Define("hb", harness.GuestXML(t, "hb", guest.ActionNone, ""))
	m.MustCtl("hb", "start --paused")
	pid := m.Pid("hb")
	acl := func() []string {
		if d, ok := procCgroups(t, pid)["devices"]; ok {
			return linesOf(filepath.Join(d, "devices.list"))
		}
		return nil
	}
	_, hasACL := procCgroups(t, pid)["devices"]
	entry := aclEntry(t, loop)
	inNS := fmt.Sprintf("/proc/%d/root%s", pid, loop)
	if slices.Contains(acl(), entry) {
		t.Fatalf("%s in the ACL before it was attached", entry)
	}
	xml := "<disk type='block'><driver name='qemu' type='raw'/><source dev='" + loop + "'/><target dev='sdb' bus='usb'/></disk>"
	if err := m.Write(xml, "hb", "attach"); err != nil {
		t.Fatalf("attach %s: %v (error: %s)", loop, err, m.ErrorOf("hb"))
	}
	if hasACL && !slices.Contains(acl(), entry) {
		t.Errorf("devices.list lacks %s after attach:\n%s", entry, strings.Join(acl(), "\n"))
	}
	if o := ownerOf(t, loop); o.UID != uid {
		t.Errorf("attached %s owned by %v, want uid %d", loop, o, uid)
	}
	if _, err := os.Stat(inNS); err != nil {
		t.Errorf("no %s in QEMU's /dev: %v", loop, err)
	}
	if err := m.Write("<disk><target dev='sdb'/></disk>", "hb", "detach"); err != nil {
		t.Fatalf("detach: %v (error: %s)", err, m.ErrorOf("hb"))
	}
	if slices.Contains(acl(), entry) {
		t.Errorf("%s still in devices.list after detach", entry)
	}
	if o := ownerOf(t, loop); o != before {
		t.Errorf("detached %s owned by %v, want %v", loop, o, before)
	}
	if _, err := os.Stat(inNS); err == nil {
		t.Errorf("%s still in QEMU's /dev after detach", loop)
	}

	// A serial port's output file is QEMU's while attached, as at start.
	out := filepath.Join(m.Base, "serial.log")
	if err := os.WriteFile(out, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	outBefore := ownerOf(t, out)
	serial := "<serial type='file'><source path='" + out + "'/><target type='usb-serial' port='1'/></serial>"
	if err := m.Write(serial, "hb", "attach"); err != nil {
		t.Fatalf("attach serial: %v (error: %s)", err, m.ErrorOf("hb"))
	}
	if o := ownerOf(t, out); o.UID != uid {
		t.Errorf("serial output owned by %v while attached, want uid %d", o, uid)
	}
	if err := m.Write("<alias name='serial1'/>", "hb", "detach"); err != nil {
		t.Fatalf("detach serial: %v (error: %s)", err, m.ErrorOf("hb"))
	}
	if o := ownerOf(t, out); o != outBefore {
		t.Errorf("serial output owned by %v after detach, want %v", o, outBefore)
	}
	m.MustCtl("hb", "destroy")
}
