package e2e

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qemufs/qemufs/security/cgroup"
	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// settle bounds what happens right after a stop (ownership given back,
// cgroup removed): generous for a loaded machine.
const settle = 60 * time.Second

// sandbox is the -sandbox value libvirt passes and qemufs must too.
const sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// qemuIDs returns the uid and gid of the qemu account QEMU runs as.
func qemuIDs(t *testing.T) (int, int) {
	t.Helper()
	u, err := user.Lookup("qemu")
	if err != nil {
		t.Skipf("no qemu account: run scripts/deps.sh as root (%v)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid
}

// procStatus returns the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// procArgs returns QEMU's argv.
func procArgs(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// argAfter returns the argument following flag in args ("" when absent).
func argAfter(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// ids is "U\tU\tU\tU", the four ids of a Uid:/Gid: line.
func ids(n int) string { return strings.Repeat(strconv.Itoa(n)+"\t", 3) + strconv.Itoa(n) }

// owner is a file's owner and permission bits.
type owner struct {
	UID, GID int
	Mode     os.FileMode
}

func (o owner) String() string { return fmt.Sprintf("%d:%d %04o", o.UID, o.GID, o.Mode) }

func ownerOf(t *testing.T, path string) owner {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return owner{int(st.Uid), int(st.Gid), os.FileMode(st.Mode & 0o7777)}
}

// waitFor polls cond until it returns nil, or fails the test with its
// last error after timeout.
func waitFor(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// image makes a disk image with qemu-img, owned by root, mode 0600.
func image(t *testing.T, dir, name, format string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", format, p, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// loopDevice attaches a fresh 16 MiB file to a loop device, detached when
// the test ends. Call it before harness.Start, so that the device is
// detached after the mount's QEMUs are gone.
func loopDevice(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup is not installed")
	}
	f := filepath.Join(t.TempDir(), "loop.img")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f, 16<<20); err != nil {
		t.Fatal(err)
	}
	var out []byte
	var err error
	for i := 0; i < 10; i++ { // another test may take the same free device
		out, err = exec.Command("losetup", "--find", "--show", f).CombinedOutput()
		if err == nil || !bytes.Contains(out, []byte("busy")) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Skipf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Logf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// aliasNode makes a node for device dev at path, readable and writable by
// everyone: only the cgroup can keep QEMU from opening it.
func aliasNode(t *testing.T, dev, path string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(path, unix.S_IFBLK|0o666, int(st.Rdev)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
}

// aclEntry is a device's cgroup v1 devices.list line.
func aclEntry(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	typ := "c"
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		typ = "b"
	}
	return fmt.Sprintf("%s %d:%d rwm", typ, unix.Major(st.Rdev), unix.Minor(st.Rdev))
}

// defaultACL is devices.list for the reference page's default list, as
// far as this host has those devices, plus the ptys.
func defaultACL(t *testing.T) []string {
	var out []string
	for _, p := range []string{"/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/ptmx", "/dev/kvm"} {
		if _, err := os.Stat(p); err == nil {
			out = append(out, aclEntry(t, p))
		}
	}
	return append(out, "c 136:* rwm")
}

// procCgroups maps each cgroup v1 controller of a process to its
// directory; on v2 the key is "".
func procCgroups(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	v := cgroup.Detect()
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		switch {
		case v == cgroup.V1 && f[1] != "" && !strings.HasPrefix(f[1], "name="):
			for _, c := range strings.Split(f[1], ",") {
				out[c] = filepath.Join("/sys/fs/cgroup", f[1], f[2])
			}
		case v == cgroup.V2 && f[1] == "":
			out[""] = filepath.Join("/sys/fs/cgroup", f[2])
		}
	}
	return out
}

// guestCgroups are the directories of the cgroup qemufs makes for domain
// name: per controller below the daemon's own (v1), or next to it (v2),
// in a directory named after the instance.
func guestCgroups(t *testing.T, m *harness.Mount, name string) map[string]string {
	t.Helper()
	pid := m.DaemonPid()
	if pid == 0 {
		t.Fatal("no daemon pid")
	}
	out := procCgroups(t, pid)
	for c, d := range out {
		if c == "" {
			d = filepath.Dir(d)
		}
		out[c] = filepath.Join(d, "qemufs-"+m.InstanceName(), name+".qemu")
	}
	return out
}

// linesOf returns the lines of a file, or nil.
func linesOf(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// mountEntry is one line of /proc/PID/mountinfo.
type mountEntry struct{ point, fstype, source string }

func mounts(t *testing.T, pid int) []mountEntry {
	t.Helper()
	var out []mountEntry
	for _, l := range linesOf(fmt.Sprintf("/proc/%d/mountinfo", pid)) {
		pre, post, ok := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 2 {
			continue
		}
		out = append(out, mountEntry{point: f[4], fstype: g[0], source: g[1]})
	}
	if len(out) == 0 {
		t.Fatalf("no mounts read for pid %d", pid)
	}
	return out
}

// devMount is the mount that /dev shows (the last one on it).
func devMount(ms []mountEntry) mountEntry {
	var dev mountEntry
	for _, e := range ms {
		if e.point == "/dev" {
			dev = e
		}
	}
	return dev
}

// openFlags returns the access mode QEMU holds path open with, or -1.
func openFlags(pid int, path string) int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); l != path {
			continue
		}
		for _, l := range linesOf(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name())) {
			if v, ok := strings.CutPrefix(l, "flags:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				return int(n) & syscall.O_ACCMODE
			}
		}
	}
	return -1
}

// blockdevAdd asks QEMU to open a host device through the mount's QMP.
func blockdevAdd(t *testing.T, m *harness.Mount, name, path, node string) string {
	t.Helper()
	r, err := m.QMP(name, fmt.Sprintf(`{"execute":"blockdev-add","arguments":{"driver":"host_device","filename":%q,"node-name":%q}}`, path, node), time.Minute)
	if err != nil {
		t.Fatalf("blockdev-add %s: %v", path, err)
	}
	return r
}

// disk is a <disk> element for a file or block device.
func disk(typ, format, path, target, extra string) string {
	attr := "file"
	if typ == "block" {
		attr = "dev"
	}
	return fmt.Sprintf(`    <disk type='%s' device='disk'>
      <driver name='qemu' type='%s'/>
      <source %s='%s'/>
      <target dev='%s' bus='virtio'/>%s
    </disk>
`, typ, format, attr, path, target, extra)
}

// withMemtune adds a memtune hard_limit of mib MiB to a domain XML.
func withMemtune(xml string, mib int) string {
	return strings.Replace(xml, "  <vcpu>", fmt.Sprintf("  <memtune><hard_limit unit='MiB'>%d</hard_limit></memtune>\n  <vcpu>", mib), 1)
}

// secXML is what these tests read of capabilities.xml and live.xml.
type secXML struct {
	Models []secModel `xml:"host>secmodel"`
	Labels []secLabel `xml:"seclabel"`
}

type secModel struct {
	Model      string `xml:"model"`
	DOI        string `xml:"doi"`
	BaseLabels []struct {
		Type  string `xml:"type,attr"`
		Label string `xml:",chardata"`
	} `xml:"baselabel"`
}

type secLabel struct {
	Type       string `xml:"type,attr"`
	Model      string `xml:"model,attr"`
	Relabel    string `xml:"relabel,attr"`
	Label      string `xml:"label"`
	ImageLabel string `xml:"imagelabel"`
}

func parseSec(t *testing.T, data string) secXML {
	t.Helper()
	var x secXML
	if err := xml.Unmarshal([]byte(data), &x); err != nil {
		t.Fatal(err)
	}
	return x
}

// TestConfinedGuest starts a guest on the system instance with a qcow2
// image, a read-only image and a loop block device, and checks every
// layer on the running QEMU: its identity and capabilities, the disks
// given to it, the seccomp sandbox, its private /dev, its cgroup with the
// device ACL and memtune, what capabilities.xml and live.xml report, and
// that stopping it gives everything back.
func TestConfinedGuest(t *testing.T) {
	t.Parallel()
	uid, gid := qemuIDs(t)
	loop, other := loopDevice(t), loopDevice(t)
	m := harness.Start(t, harness.Options{System: true})
	g := harness.Guest(t)
	qcow := image(t, m.Base, "disk.qcow2", "qcow2")
	ro := image(t, m.Base, "ro.img", "raw")
	before := map[string]owner{qcow: ownerOf(t, qcow), ro: ownerOf(t, ro), loop: ownerOf(t, loop)}
	const hardLimit = 1024 // MiB
	devs := disk("file", "qcow2", qcow, "vda", "") + disk("file", "raw", ro, "vdb", "\n      <readonly/>") + disk("block", "raw", loop, "vdc", "")
	m.Define("c", withMemtune(harness.GuestXML(t, "c", guest.ActionNone, devs), hardLimit))
	m.MustCtl("c", "start")
	m.WaitConsole("c", g.ReadyLine, boot)
	pid := m.Pid("c")
	if pid == 0 {
		t.Fatal("no pid")
	}
	label := fmt.Sprintf("+%d:+%d", uid, gid)

	t.Run("dac", func(t *testing.T) {
		st := procStatus(t, pid)
		if st["Uid"] != ids(uid) || st["Gid"] != ids(gid) {
			t.Errorf("QEMU runs as Uid %q Gid %q, want qemu (%d:%d)", st["Uid"], st["Gid"], uid, gid)
		}
		if slices.Contains(strings.Fields(st["Groups"]), "0") {
			t.Errorf("QEMU keeps group root: Groups %q", st["Groups"])
		}
		for _, p := range []string{qcow, loop} {
			if o := ownerOf(t, p); o.UID != uid || o.GID != gid || o.Mode&0o600 != 0o600 {
				t.Errorf("%s while running: %v, want qemu's with rw", p, o)
			}
			if f := openFlags(pid, p); f != syscall.O_RDWR {
				t.Errorf("QEMU holds %s with access mode %d, want O_RDWR", p, f)
			}
		}
		if o := ownerOf(t, ro); o.UID != 0 || o.GID != gid || o.Mode != 0o640 {
			t.Errorf("read-only %s while running: %v, want 0:%d 0640", ro, o, gid)
		}
		if f := openFlags(pid, ro); f != syscall.O_RDONLY {
			t.Errorf("QEMU holds read-only %s with access mode %d, want O_RDONLY", ro, f)
		}
	})

	t.Run("capabilities", func(t *testing.T) {
		st := procStatus(t, pid)
		for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapAmb"} {
			if st[k] != "0000000000000000" {
				t.Errorf("%s = %s, want none for a non-root QEMU", k, st[k])
			}
		}
	})

	t.Run("seccomp", func(t *testing.T) {
		if st := procStatus(t, pid); st["Seccomp"] != "2" {
			t.Errorf("Seccomp = %q, want 2 (filter)", st["Seccomp"])
		}
		if got := argAfter(procArgs(t, pid), "-sandbox"); got != sandbox {
			t.Errorf("QEMU's -sandbox %q, want %q", got, sandbox)
		}
		if argv := m.Read("c", "argv"); !strings.Contains(argv, " -sandbox "+sandbox) {
			t.Errorf("argv lacks -sandbox %s:\n%s", sandbox, argv)
		}
	})

	t.Run("namespace", func(t *testing.T) {
		own, _ := os.Readlink("/proc/self/ns/mnt")
		if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); ns == own {
			t.Errorf("QEMU shares the host's mount namespace %s", ns)
		}
		ms := mounts(t, pid)
		if dev := devMount(ms); dev.fstype != "tmpfs" {
			t.Errorf("QEMU's /dev is %+v, want its own tmpfs", dev)
		}
		for _, e := range ms {
			if e.point == m.Dir || strings.HasPrefix(e.fstype, "fuse.qemufs") {
				t.Errorf("QEMU sees a qemufs mount: %+v", e)
			}
		}
		// Its /dev holds the guest's block device (and no other loop device).
		root := fmt.Sprintf("/proc/%d/root", pid)
		if _, err := os.Stat(root + loop); err != nil {
			t.Errorf("QEMU's /dev lacks the guest's disk: %v", err)
		}
		if _, err := os.Stat(root + other); err == nil {
			t.Errorf("QEMU's /dev has %s, which the guest does not use", other)
		}
	})

	t.Run("cgroup", func(t *testing.T) {
		want := guestCgroups(t, m, "c")
		got := procCgroups(t, pid)
		if len(want) == 0 {
			t.Fatal("no cgroup controllers found for the daemon")
		}
		for _, c := range []string{"devices", "memory", "cpu", ""} {
			if w, ok := want[c]; ok && got[c] != w {
				t.Errorf("QEMU's %q cgroup %s, want %s", c, got[c], w)
			} else if ok && !slices.Contains(linesOf(filepath.Join(w, "cgroup.procs")), strconv.Itoa(pid)) {
				t.Errorf("%s/cgroup.procs lacks QEMU's pid %d", w, pid)
			}
		}
		if d, ok := got["devices"]; ok {
			acl := append(defaultACL(t), aclEntry(t, loop))
			if list := linesOf(filepath.Join(d, "devices.list")); !sameSet(list, acl) {
				t.Errorf("devices.list:\n%s\nwant:\n%s", strings.Join(list, "\n"), strings.Join(acl, "\n"))
			}
		} else {
			t.Logf("cgroup v2: the device ACL is an eBPF program; checked by behaviour only")
		}
		limit := ""
		if d, ok := got["memory"]; ok {
			limit = strings.Join(linesOf(filepath.Join(d, "memory.limit_in_bytes")), "")
		} else if d, ok := got[""]; ok {
			limit = strings.Join(linesOf(filepath.Join(d, "memory.max")), "")
		}
		if want := strconv.Itoa(hardLimit << 20); limit != want {
			t.Errorf("memory limit %q, want %s (memtune hard_limit)", limit, want)
		}
		// A device outside the ACL, open to all by mode: QEMU is refused.
		node := filepath.Join(m.Base, "outside")
		aliasNode(t, other, node)
		if r := blockdevAdd(t, m, "c", node, "outside"); !strings.Contains(r, "Operation not permitted") {
			t.Errorf("blockdev-add of %s (%s) outside the ACL: %s", node, other, r)
		}
		// The guest's own device is allowed.
		if r := blockdevAdd(t, m, "c", loop, "again"); !strings.Contains(r, `"return"`) {
			t.Errorf("blockdev-add of the guest's %s: %s", loop, r)
		}
	})

	t.Run("reporting", func(t *testing.T) {
		caps := parseSec(t, m.Read("capabilities.xml"))
		i := slices.IndexFunc(caps.Models, func(s secModel) bool { return s.Model == "dac" })
		if i < 0 {
			t.Fatalf("capabilities.xml has no dac <secmodel>: %+v", caps.Models)
		}
		dac := caps.Models[i]
		if dac.DOI != "0" || len(dac.BaseLabels) == 0 {
			t.Errorf("dac secmodel %+v", dac)
		}
		for _, b := range dac.BaseLabels {
			if b.Label != label {
				t.Errorf("dac baselabel type=%s %q, want %q", b.Type, b.Label, label)
			}
		}
		live := parseSec(t, m.Read("c", "live.xml"))
		found := false
		for _, l := range live.Labels {
			if l.Model == "dac" {
				found = true
				if l.Type != "dynamic" || l.Relabel != "yes" || l.Label != label || l.ImageLabel != label {
					t.Errorf("live.xml dac seclabel %+v, want dynamic, relabel, label %s", l, label)
				}
			}
		}
		if !found {
			t.Errorf("live.xml has no dac <seclabel>: %+v", live.Labels)
		}
	})

	cgroups := guestCgroups(t, m, "c")
	m.MustCtl("c", "destroy")
	waitFor(t, settle, func() error {
		for p, o := range before {
			if got := ownerOf(t, p); got != o {
				return fmt.Errorf("%s after stop: %v, want %v as before", p, got, o)
			}
		}
		for _, d := range cgroups {
			if _, err := os.Stat(d); err == nil {
				return fmt.Errorf("cgroup %s left after stop", d)
			}
		}
		return nil
	})
	// The read-only image is still readable by the daemon's user as before.
	if _, err := os.ReadFile(ro); err != nil {
		t.Error(err)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestRootQEMU: with user = "root" in qemu.conf, QEMU keeps its
// capabilities (as libvirt since 6.0) and disks are not chowned; the
// sandbox stays.
func TestRootQEMU(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{System: true, QEMUConf: "user = \"root\"\ngroup = \"root\"\n"})
	img := image(t, m.Base, "disk.qcow2", "qcow2")
	os.Chown(img, 0, 0)
	before := ownerOf(t, img)
	m.Define("r", harness.GuestXML(t, "r", guest.ActionNone, disk("file", "qcow2", img, "vda", "")))
	m.MustCtl("r", "start")
	pid := m.Pid("r")
	st := procStatus(t, pid)
	if st["Uid"] != ids(0) {
		t.Errorf("Uid %q, want root", st["Uid"])
	}
	if st["CapEff"] == "" || st["CapEff"] == "0000000000000000" {
		t.Errorf("CapEff = %q, want the capabilities of root", st["CapEff"])
	}
	if st["Seccomp"] != "2" {
		t.Errorf("Seccomp = %q, want 2", st["Seccomp"])
	}
	if o := ownerOf(t, img); o != before {
		t.Errorf("disk %v while running, want untouched %v", o, before)
	}
	if l := parseSec(t, m.Read("r", "live.xml")).Labels; len(l) == 0 || l[len(l)-1].Label != "+0:+0" {
		t.Errorf("live.xml seclabels %+v, want dac +0:+0", l)
	}
	m.MustCtl("r", "destroy")
}

// TestConfinementOff: namespaces = [] leaves QEMU in the host's mount
// namespace, seccomp_sandbox = 0 drops the sandbox.
func TestConfinementOff(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{System: true, QEMUConf: "namespaces = []\nseccomp_sandbox = 0\n"})
	m.Define("o", harness.GuestXML(t, "o", guest.ActionNone, ""))
	m.MustCtl("o", "start")
	pid := m.Pid("o")
	own, _ := os.Readlink("/proc/self/ns/mnt")
	if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); ns != own {
		t.Errorf("QEMU's mount namespace %s, want the host's %s", ns, own)
	}
	if dev := devMount(mounts(t, pid)); dev.fstype == "tmpfs" && dev.source == "qemufs-dev" {
		t.Errorf("QEMU has a private /dev: %+v", dev)
	}
	if st := procStatus(t, pid); st["Seccomp"] != "0" {
		t.Errorf("Seccomp = %q, want 0", st["Seccomp"])
	}
	if slices.Contains(procArgs(t, pid), "-sandbox") {
		t.Errorf("QEMU has -sandbox: %q", procArgs(t, pid))
	}
	if argv := m.Read("o", "argv"); strings.Contains(argv, "-sandbox") {
		t.Errorf("argv has -sandbox:\n%s", argv)
	}
	if st := procStatus(t, pid); st["CapEff"] != "0000000000000000" {
		t.Errorf("CapEff = %s, want none", st["CapEff"])
	}
	m.MustCtl("o", "destroy")
}

// TestCgroupDeviceACL: cgroup_device_acl replaces the default list, so a
// device named there opens; an entry that is not a device fails the
// mount with a message naming it.
func TestCgroupDeviceACL(t *testing.T) {
	t.Parallel()
	extra := loopDevice(t)
	acl := []string{"/dev/null", "/dev/urandom", "/dev/ptmx", extra}
	conf := `cgroup_device_acl = ["` + strings.Join(acl, `", "`) + `"]` + "\n"
	m := harness.Start(t, harness.Options{System: true, QEMUConf: conf})
	m.Define("a", harness.GuestXML(t, "a", guest.ActionNone, ""))
	m.MustCtl("a", "start")
	pid := m.Pid("a")
	if d, ok := procCgroups(t, pid)["devices"]; ok {
		var want []string
		for _, p := range acl {
			want = append(want, aclEntry(t, p))
		}
		want = append(want, "c 136:* rwm")
		if list := linesOf(filepath.Join(d, "devices.list")); !sameSet(list, want) {
			t.Errorf("devices.list:\n%s\nwant:\n%s", strings.Join(list, "\n"), strings.Join(want, "\n"))
		}
	}
	node := filepath.Join(m.Base, "allowed")
	aliasNode(t, extra, node)
	if r := blockdevAdd(t, m, "a", node, "extra"); !strings.Contains(r, `"return"`) {
		t.Errorf("blockdev-add of %s (%s, in cgroup_device_acl): %s", node, extra, r)
	}
	m.MustCtl("a", "destroy")

	// A file that is not a device, in place of the list.
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	bad := `cgroup_device_acl = ["/dev/null", "/etc/passwd"]` + "\n"
	if err := os.WriteFile(filepath.Join(m.Root, "etc/qemufs/qemu.conf"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	err := m.Mount()
	if err == nil || !strings.Contains(err.Error(), "cgroup_device_acl: /etc/passwd is not a block or character device") {
		t.Errorf("mount with a non-device ACL entry: %v", err)
	}
}

// TestStartRefused: a start the security stack refuses fails with a clear
// message and leaves nothing behind: no QEMU, no cgroup, disks untouched.
func TestStartRefused(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{System: true})
	closed := filepath.Join(m.Base, "closed")
	if err := os.Mkdir(closed, 0o700); err != nil {
		t.Fatal(err)
	}
	hidden := image(t, closed, "disk.qcow2", "qcow2")
	open := image(t, m.Base, "open.qcow2", "qcow2")
	tests := []struct {
		name    string
		devices string
		outside string // extra XML outside <devices>
		want    []string
	}{
		{"search bit", disk("file", "qcow2", open, "vda", "") + disk("file", "qcow2", hidden, "vdb", ""), "",
			[]string{"not searchable by qemu", "chmod o+x " + closed}},
		{"disk relabel no", strings.Replace(disk("file", "qcow2", open, "vda", ""), open+"'/>",
			open+"'>\n        <seclabel model='dac' relabel='no'/>\n      </source>", 1), "",
			[]string{open, "ownership is not managed"}},
		{"static selinux label", disk("file", "qcow2", open, "vda", ""),
			"  <seclabel type='static' model='selinux' relabel='no'><label>system_u:system_r:svirt_t:s0:c1,c2</label></seclabel>\n",
			[]string{"selinux", "not active"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("refused%d", i)
			before := map[string]owner{open: ownerOf(t, open), hidden: ownerOf(t, hidden)}
			xml := harness.GuestXML(t, name, guest.ActionNone, tt.devices)
			xml = strings.Replace(xml, "</domain>", tt.outside+"</domain>", 1)
			m.Define(name, xml)
			err := m.Ctl(name, "start")
			if err == nil {
				t.Fatalf("start succeeded")
			}
			if !errors.Is(err, syscall.EINVAL) {
				t.Errorf("start: %v, want EINVAL", err)
			}
			msg := m.ErrorOf(name)
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
			if st := m.State(name); !strings.HasPrefix(st, "shut off") {
				t.Errorf("state %q", st)
			}
			if pid := m.Pid(name); pid != 0 {
				t.Errorf("pid %d after a refused start", pid)
			}
			if p := qemuNamed(name); p != 0 {
				t.Errorf("a QEMU for %s runs: pid %d", name, p)
			}
			for c, d := range guestCgroups(t, m, name) {
				if _, err := os.Stat(d); err == nil {
					t.Errorf("%s cgroup %s left", c, d)
				}
			}
			for p, o := range before {
				if got := ownerOf(t, p); got != o {
					t.Errorf("%s: %v, want %v as before", p, got, o)
				}
			}
		})
	}
}

// qemuNamed returns the pid of a process whose argv has -name guest=NAME,
// or 0 (names are unique to the test).
func qemuNamed(name string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(b, []byte("\x00guest="+name+",")) {
			return pid
		}
	}
	return 0
}

// TestNoDynamicOwnership: with dynamic_ownership = 0 qemufs leaves disks
// alone: a disk QEMU's user cannot use is refused with a message saying
// so; one the admin gave to that user starts and keeps its owner.
func TestNoDynamicOwnership(t *testing.T) {
	t.Parallel()
	uid, gid := qemuIDs(t)
	m := harness.Start(t, harness.Options{System: true, QEMUConf: "dynamic_ownership = 0\n"})
	img := image(t, m.Base, "disk.qcow2", "qcow2")
	m.Define("n", harness.GuestXML(t, "n", guest.ActionNone, disk("file", "qcow2", img, "vda", "")))
	if err := m.Ctl("n", "start"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("start with a disk only root can use: %v, want EINVAL", err)
	}
	if msg := m.ErrorOf("n"); !strings.Contains(msg, img) || !strings.Contains(msg, "dynamic_ownership") {
		t.Errorf("error %q does not name the disk and dynamic_ownership", msg)
	}
	if err := os.Chown(img, uid, gid); err != nil {
		t.Fatal(err)
	}
	before := ownerOf(t, img)
	m.MustCtl("n", "start")
	if st := procStatus(t, m.Pid("n")); st["Uid"] != ids(uid) {
		t.Errorf("Uid %q, want qemu's", st["Uid"])
	}
	if l := parseSec(t, m.Read("n", "live.xml")).Labels; len(l) == 0 || l[len(l)-1].Relabel != "no" {
		t.Errorf("live.xml seclabels %+v, want dac with relabel='no'", l)
	}
	m.MustCtl("n", "destroy")
	if o := ownerOf(t, img); o != before {
		t.Errorf("disk %v after stop, want %v untouched", o, before)
	}
}

// TestConfinementAcrossRestart: what a guest was given is given back by
// the next daemon when the one that started it was killed: at stop after
// re-attaching, and at mount when QEMU died while no daemon ran.
func TestConfinementAcrossRestart(t *testing.T) {
	t.Parallel()
	uid, _ := qemuIDs(t)
	m := harness.Start(t, harness.Options{System: true})
	type guestRun struct {
		img     string
		before  owner
		cgroups map[string]string
		pid     int
	}
	runs := map[string]*guestRun{}
	for _, name := range []string{"stopped", "died"} {
		img := image(t, m.Base, name+".qcow2", "qcow2")
		r := &guestRun{img: img, before: ownerOf(t, img)}
		m.Define(name, harness.GuestXML(t, name, guest.ActionNone, disk("file", "qcow2", img, "vda", "")))
		m.MustCtl(name, "start")
		r.pid, r.cgroups = m.Pid(name), guestCgroups(t, m, name)
		runs[name] = r
	}
	m.KillDaemon()
	harness.WaitKill(runs["died"].pid, syscall.SIGKILL)
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	gone := func(r *guestRun) func() error {
		return func() error {
			if o := ownerOf(t, r.img); o != r.before {
				return fmt.Errorf("%s: %v, want %v as before", r.img, o, r.before)
			}
			for _, d := range r.cgroups {
				if _, err := os.Stat(d); err == nil {
					return fmt.Errorf("cgroup %s left", d)
				}
			}
			return nil
		}
	}
	waitFor(t, settle, gone(runs["died"]))
	if st := m.State("stopped"); st != "running (booted)" {
		t.Fatalf("stopped: state %q after re-attach", st)
	}
	if o := ownerOf(t, runs["stopped"].img); o.UID != uid {
		t.Errorf("disk of the re-attached guest: %v, want qemu's", o)
	}
	m.MustCtl("stopped", "destroy")
	waitFor(t, settle, gone(runs["stopped"]))
}

// TestStaticDACLabel: <seclabel type='static' model='dac'> runs one guest
// as another account, its disk given to that account while it runs.
func TestStaticDACLabel(t *testing.T) {
	t.Parallel()
	needTestUser(t)
	u, _ := user.Lookup(testUser)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	m := harness.Start(t, harness.Options{System: true})
	img := image(t, m.Base, "disk.qcow2", "qcow2")
	before := ownerOf(t, img)
	xml := harness.GuestXML(t, "s", guest.ActionNone, disk("file", "qcow2", img, "vda", ""))
	xml = strings.Replace(xml, "</domain>", "  <seclabel type='static' model='dac' relabel='yes'><label>"+testUser+":"+testUser+"</label></seclabel>\n</domain>", 1)
	m.Define("s", xml)
	m.MustCtl("s", "start")
	if st := procStatus(t, m.Pid("s")); st["Uid"] != ids(uid) || st["Gid"] != ids(gid) {
		t.Errorf("Uid %q Gid %q, want %s's %d:%d", st["Uid"], st["Gid"], testUser, uid, gid)
	}
	if o := ownerOf(t, img); o.UID != uid || o.GID != gid {
		t.Errorf("disk %v while running, want %s's", o, testUser)
	}
	var dac *secLabel
	for _, l := range parseSec(t, m.Read("s", "live.xml")).Labels {
		if l.Model == "dac" {
			dac = &l
		}
	}
	if want := fmt.Sprintf("+%d:+%d", uid, gid); dac == nil || dac.Type != "static" || dac.Label != want {
		t.Errorf("live.xml dac seclabel %+v, want static %s", dac, want)
	}
	m.MustCtl("s", "destroy")
	waitFor(t, settle, func() error {
		if o := ownerOf(t, img); o != before {
			return fmt.Errorf("disk %v after stop, want %v", o, before)
		}
		return nil
	})
}

// TestSharedReadOnlyDisk: two guests read one image; the first to stop
// does not take it away from the other, the last gives it back.
func TestSharedReadOnlyDisk(t *testing.T) {
	t.Parallel()
	_, gid := qemuIDs(t)
	m := harness.Start(t, harness.Options{System: true})
	img := image(t, m.Base, "shared.img", "raw")
	before := ownerOf(t, img)
	for _, name := range []string{"r1", "r2"} {
		m.Define(name, harness.GuestXML(t, name, guest.ActionNone, disk("file", "raw", img, "vda", "\n      <readonly/>")))
		m.MustCtl(name, "start")
	}
	m.MustCtl("r1", "destroy")
	if o := ownerOf(t, img); o.GID != gid || o.Mode&0o040 == 0 {
		t.Errorf("shared image %v after the first guest stopped, want still readable by group %d", o, gid)
	}
	if f := openFlags(m.Pid("r2"), img); f != syscall.O_RDONLY {
		t.Errorf("r2 holds the image with access mode %d, want O_RDONLY", f)
	}
	m.MustCtl("r2", "destroy")
	waitFor(t, settle, func() error {
		if o := ownerOf(t, img); o != before {
			return fmt.Errorf("shared image %v after both stopped, want %v", o, before)
		}
		return nil
	})
}

// TestRestoreAfterPoweroff: a guest that powers itself off gives back its
// disk and cgroup as a destroyed one does.
func TestRestoreAfterPoweroff(t *testing.T) {
	t.Parallel()
	uid, _ := qemuIDs(t)
	m := harness.Start(t, harness.Options{System: true})
	img := image(t, m.Base, "disk.qcow2", "qcow2")
	before := ownerOf(t, img)
	m.Define("p", harness.GuestXML(t, "p", guest.ActionPoweroff, disk("file", "qcow2", img, "vda", "")))
	m.MustCtl("p", "start")
	cgroups := guestCgroups(t, m, "p")
	if o := ownerOf(t, img); o.UID != uid && m.State("p") == "running (booted)" {
		t.Errorf("disk %v while running, want qemu's", o)
	}
	m.WaitState("p", "shut off (shutdown)", boot)
	waitFor(t, settle, func() error {
		if o := ownerOf(t, img); o != before {
			return fmt.Errorf("disk %v after poweroff, want %v", o, before)
		}
		for _, d := range cgroups {
			if _, err := os.Stat(d); err == nil {
				return fmt.Errorf("cgroup %s left after poweroff", d)
			}
		}
		return nil
	})
}
