package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/harness"
)

// A hostile unprivileged user against a system mount (docs/reliability.md):
// the test account, in the admin group (it may define and start guests),
// tries path tricks in names, disks that lead to files it may not use,
// oversized writes and thousands of open handles. Nothing outside its
// permissions may happen, and the daemon must stay whole.

// listTree lists the files below dir (relative paths), for before/after
// comparisons of the instance's directories.
func listTree(dir string) []string {
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func diffLists(before, after []string) []string {
	seen := map[string]bool{}
	for _, b := range before {
		seen[b] = true
	}
	var added []string
	for _, a := range after {
		if !seen[a] {
			added = append(added, a)
		}
	}
	return added
}

func hostileMount(t *testing.T) *harness.Mount {
	needTestUser(t)
	return harness.Start(t, harness.Options{System: true, QEMUConf: `admin_group = "` + testGroup + `"`})
}

// TestHostileNames: names that would escape the tree, hide, collide with
// the static files or the instance's own directories, or are too long,
// are all refused, and nothing appears in the instance's directories.
func TestHostileNames(t *testing.T) {
	t.Parallel()
	m := hostileMount(t)
	etc, lib := m.ConfigDir(), filepath.Join(m.Root, "var/lib/qemufs/qemu")
	beforeEtc, beforeLib := listTree(etc), listTree(lib)
	for _, tc := range []struct{ name, want string }{
		{"..", "File exists"},
		{".", "File exists"},
		{".hidden", "Invalid argument"},
		{"a/b", "No such file"},
		{"networks", "File exists"},
		{"capabilities.xml", "File exists"},
		{"version", "File exists"},
		{"domcapabilities", "File exists"},
		{"from-native", "File exists"},
		{"nvram", "Invalid argument"},
		{"x\ny", "Invalid argument"},
		{strings.Repeat("a", 250), "Invalid argument"},
		{strings.Repeat("a", 300), "Invalid argument"},
	} {
		out, err := asTestUser(true, nil, "mkdir", "--", m.Dir+"/"+tc.name)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("mkdir %q: %v %q, want %s", tc.name, err, strings.TrimSpace(out), tc.want)
		}
	}
	// A <name> that differs from the directory, with a path in it.
	if out, err := asTestUser(true, nil, "mkdir", m.Path("ok")); err != nil {
		t.Fatalf("mkdir ok: %v %s", err, out)
	}
	bad := filepath.Join(m.Base, "bad.xml")
	os.WriteFile(bad, []byte(strings.Replace(cheapXML("x", 64), "<name>x</name>", "<name>../../../etc/evil</name>", 1)), 0o644)
	if out, err := asTestUser(true, nil, "sh", "-c", `cat "$1" > "$2"`, "-", bad, m.Path("ok", "config.xml")); err == nil || !strings.Contains(out, "Invalid argument") {
		t.Errorf("define with <name>../../../etc/evil</name>: %v %q, want EINVAL", err, out)
	}
	if msg := m.ErrorOf("ok"); !strings.Contains(msg, "does not match") && !strings.Contains(msg, "contains '/'") {
		t.Errorf("error = %q", msg)
	}
	// Writes to the static files and files in the root are refused.
	for _, argv := range [][]string{
		{"sh", "-c", `echo x > "$1"`, "-", m.Path("capabilities.xml")},
		{"sh", "-c", `echo x > "$1"`, "-", m.Path("newfile")},
		{"ln", "-s", "/etc/shadow", m.Path("link")},
		{"mv", m.Path("ok"), m.Path("ok2")},
	} {
		if out, err := asTestUser(true, nil, argv...); err == nil {
			t.Errorf("%v succeeded: %s", argv, out)
		}
	}
	if added := diffLists(beforeEtc, listTree(etc)); len(added) > 0 {
		t.Errorf("new files in %s: %v", etc, added)
	}
	if added := diffLists(beforeLib, listTree(lib)); len(added) > 0 {
		t.Errorf("new files in %s: %v", lib, added)
	}
	if _, err := os.Lstat("/etc/evil"); err == nil {
		t.Error("/etc/evil exists")
	}
}

// TestHostileDiskPaths: a disk (or a chardev's output file) that is, or
// leads through a symlink to, a file the user may not use is refused with
// EACCES at start, and the file keeps its owner and mode; the user's own
// image starts.
func TestHostileDiskPaths(t *testing.T) {
	t.Parallel()
	m := hostileMount(t)
	uid, gid := testIDs(t)
	// A secret of root's and a file of another user, stand-ins for
	// /etc/shadow and a neighbour's image (never chown the real ones).
	secret := filepath.Join(m.Base, "secret")
	os.WriteFile(secret, []byte("root's secret\n"), 0o600)
	other := filepath.Join(m.Base, "other.img")
	os.WriteFile(other, make([]byte, 1<<20), 0o600)
	os.Chown(other, 4242, 4242)
	home := filepath.Join(m.Base, "home")
	os.Mkdir(home, 0o755)
	os.Chown(home, uid, gid)
	mine := filepath.Join(home, "mine.img")
	if out, err := asTestUser(true, nil, "sh", "-c", `head -c 1048576 /dev/zero > "$1" && chmod 600 "$1" && ln -s "$2" "$3" && ln -s "$4" "$5" && mkdir "$6" && ln -s /etc "$7"`, "-",
		mine, secret, filepath.Join(home, "link-secret"), other, filepath.Join(home, "link-other"), filepath.Join(home, "d"), filepath.Join(home, "etc")); err != nil {
		t.Fatalf("user's files: %v %s", err, out)
	}
	disk := func(path string) string {
		return "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='" + path + "'/><target dev='vda' bus='virtio'/></disk>"
	}
	serial := func(path string) string {
		return "<serial type='file'><source path='" + path + "'/></serial>"
	}
	ownerOf := func(p string) string {
		fi, err := os.Stat(p)
		if err != nil {
			return err.Error()
		}
		st := fi.Sys().(*syscall.Stat_t)
		return fmt.Sprintf("%d:%d %04o", st.Uid, st.Gid, fi.Mode().Perm())
	}
	watched := map[string]string{secret: ownerOf(secret), other: ownerOf(other), "/etc": ownerOf("/etc")}
	for i, tc := range []struct {
		what, devices string
		ok            bool
	}{
		{"root's file directly", disk(secret), false},
		{"a symlink to root's file", disk(filepath.Join(home, "link-secret")), false},
		{"a symlink to another user's image", disk(filepath.Join(home, "link-other")), false},
		{"a serial output through a symlinked /etc", serial(filepath.Join(home, "etc", "qemufs-evil")), false},
		{"the user's own image", disk(mine), true},
		{"a serial output in the user's directory", serial(filepath.Join(home, "d", "serial.log")), true},
	} {
		name := fmt.Sprintf("h%d", i)
		m.Define(name, strings.Replace(cheapXML(name, 64), "<devices>", "<devices>"+tc.devices, 1))
		out, err := asTestUser(true, nil, "bash", "-c", `echo start --paused > "$1"`, "-", m.Path(name, "ctl"))
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s: start: %v %s (error: %s)", tc.what, err, out, m.ErrorOf(name))
		case !tc.ok && (err == nil || !strings.Contains(out, denied)):
			t.Errorf("%s: start: %v %q, want EACCES (error: %s)", tc.what, err, strings.TrimSpace(out), m.ErrorOf(name))
		case !tc.ok:
			t.Logf("%s: %s", tc.what, m.ErrorOf(name))
		}
		if tc.ok && err == nil {
			m.MustCtl(name, "destroy")
		}
	}
	// The same files hot-plugged into a running guest, and as a new medium.
	m.Define("hp", strings.Replace(cheapXML("hp", 64), "</os>", "</os><features><acpi/></features>", 1)) // ACPI: PCI hot-plug
	m.MustCtl("hp", "start --paused")
	for _, tc := range []struct{ what, file, xml string }{
		{"attach root's file", "attach", strings.Replace(disk(secret), "vda", "vdb", 1)},
		{"attach a symlink to another user's image", "attach", strings.Replace(disk(filepath.Join(home, "link-other")), "vda", "vdc", 1)},
		{"attach a serial output through a symlinked /etc", "attach", "<serial type='file'><source path='" + filepath.Join(home, "etc", "qemufs-evil") + "'/><target type='usb-serial'/></serial>"},
	} {
		out, err := asTestUser(true, nil, "bash", "-c", `printf '%s' "$2" > "$1"`, "-", m.Path("hp", tc.file), tc.xml)
		if err == nil || !strings.Contains(out, denied) {
			t.Errorf("%s: %v %q, want EACCES (error: %s)", tc.what, err, strings.TrimSpace(out), m.ErrorOf("hp"))
		} else {
			t.Logf("%s: %s", tc.what, m.ErrorOf("hp"))
		}
	}
	if out, err := asTestUser(true, nil, "bash", "-c", `printf '%s' "$2" > "$1"`, "-", m.Path("hp", "attach"), strings.Replace(disk(mine), "vda", "vdd", 1)); err != nil {
		t.Errorf("attach of the user's own image: %v %s (error: %s)", err, out, m.ErrorOf("hp"))
	}
	m.MustCtl("hp", "destroy")
	for p, was := range watched {
		if now := ownerOf(p); now != was {
			t.Errorf("%s: owner and mode %s, were %s", p, now, was)
		}
	}
	if _, err := os.Lstat("/etc/qemufs-evil"); err == nil {
		os.Remove("/etc/qemufs-evil")
		t.Error("/etc/qemufs-evil was created")
	}
}

func testIDs(t *testing.T) (int, int) {
	out, err := exec.Command("id", "-u", testUser).Output()
	if err != nil {
		t.Fatal(err)
	}
	var uid, gid int
	fmt.Sscan(string(out), &uid)
	out, _ = exec.Command("id", "-g", testUser).Output()
	fmt.Sscan(string(out), &gid)
	return uid, gid
}

// TestHostileWrites: a 100 MiB config.xml and a write at an offset of a
// terabyte are refused with EFBIG (the reason in error), the daemon's
// memory stays bounded, and the definition is untouched.
func TestHostileWrites(t *testing.T) {
	t.Parallel()
	m := hostileMount(t)
	m.Define("w", cheapXML("w", 64))
	before, _ := harness.Stats(m.DaemonPid(), "")
	out, err := asTestUser(true, nil, "sh", "-c", `{ printf '<domain type="qemu"><name>w</name><!--'; head -c 104857600 /dev/zero | tr '\0' ' '; printf -- '--></domain>'; } > "$1"`, "-", m.Path("w", "config.xml"))
	if err == nil || !strings.Contains(out, "too large") {
		t.Errorf("100 MiB config.xml: %v %q, want EFBIG", err, strings.TrimSpace(out))
	}
	t.Logf("100 MiB write: %s; error: %s", strings.TrimSpace(out), m.ErrorOf("w"))
	if !strings.Contains(m.ErrorOf("w"), "larger than") {
		t.Errorf("error = %q, want the reason", m.ErrorOf("w"))
	}
	out, err = asTestUser(true, nil, "dd", "if=/dev/zero", "of="+m.Path("w", "config.xml"), "bs=1", "count=1", "seek=1T", "conv=notrunc")
	if err == nil || !strings.Contains(out, "too large") {
		t.Errorf("write at 1 TiB: %v %q, want EFBIG", err, strings.TrimSpace(out))
	}
	out, err = asTestUser(true, nil, "sh", "-c", `head -c 104857600 /dev/zero | tr '\0' 'a' > "$1"`, "-", m.Path("from-native"))
	if err == nil || !strings.Contains(out, "too large") {
		t.Errorf("100 MiB from-native: %v %q, want EFBIG", err, strings.TrimSpace(out))
	}
	after, _ := harness.Stats(m.DaemonPid(), "")
	t.Logf("daemon before: %v; after: %v", before, after)
	if grow := after.HWMKiB - before.HWMKiB; grow > 64*1024 {
		t.Errorf("the daemon's peak RSS grew by %d KiB for refused writes", grow)
	}
	if got := memoryMiB(t, m, "w"); got != 64 {
		t.Errorf("definition has %d MiB, want the old 64", got)
	}
}

// TestHostileHandles opens thousands of console, monitor and log handles
// of one running guest at once: the daemon's fds stay bounded (handles of
// the tree cost it no descriptor, or the open is refused with EMFILE),
// it keeps serving other requests, and everything is back after close.
func TestHostileHandles(t *testing.T) {
	t.Parallel()
	m := hostileMount(t)
	m.Define("h", cheapXML("h", 64))
	m.MustCtl("h", "start --paused")
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	old := lim
	lim.Cur = lim.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)
	daemon := m.DaemonPid()
	// Warm up what the first requests open for good (console, monitor).
	m.MustCtl("h", "resume")
	m.MustCtl("h", "suspend")
	for _, elem := range [][]string{{"h", "console"}, {"h", "monitor", "qmp"}, {"h", "log"}} {
		if f, err := os.OpenFile(m.Path(elem...), os.O_RDONLY, 0); err == nil {
			f.Close()
		}
	}
	time.Sleep(time.Second) // releases are asynchronous
	before, _ := harness.Stats(daemon, "")
	const each = 2000
	var files []*os.File
	refused := map[string]int{}
	t0 := time.Now()
	for _, f := range []struct {
		elem []string
		flag int
	}{{[]string{"h", "console"}, os.O_RDWR}, {[]string{"h", "monitor", "qmp"}, os.O_RDWR}, {[]string{"h", "log"}, os.O_RDONLY}, {[]string{"h", "state"}, os.O_RDONLY}} {
		for i := 0; i < each; i++ {
			fh, err := os.OpenFile(m.Path(f.elem...), f.flag, 0)
			if err != nil {
				refused[strings.Join(f.elem, "/")+": "+err.Error()]++
				continue
			}
			files = append(files, fh)
		}
	}
	during, _ := harness.Stats(daemon, "")
	t.Logf("%d handles open in %v (refused: %v); daemon before: %v; with them open: %v", len(files), time.Since(t0).Round(time.Millisecond), refused, before, during)
	// Still serving.
	if got := m.State("h"); got != "paused (user)" {
		t.Errorf("state with %d handles open = %q", len(files), got)
	}
	m.MustCtl("h", "resume")
	m.MustCtl("h", "suspend")
	for _, f := range files {
		f.Close()
	}
	var after harness.DaemonStats
	for i := 0; i < 100; i++ {
		if after, _ = harness.Stats(daemon, ""); after.FDs <= before.FDs {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("daemon after close: %v", after)
	if during.FDs > before.FDs+64 {
		t.Errorf("the daemon's fds grew from %d to %d with %d handles open: each handle costs it a descriptor", before.FDs, during.FDs, len(files))
	}
	if after.FDs > before.FDs {
		t.Errorf("fd leak: %d after closing every handle, %d before", after.FDs, before.FDs)
	}
	m.MustCtl("h", "destroy")
}

// TestHostileCommandPaths: host paths named in commands (save FILE,
// restore FILE, an external snapshot's overlay) are used by the daemon as
// root, so a user gets only paths it could use itself: no image written
// into /etc, no file of root's read as an image, no overlay made where it
// may not write; in its own directory all of them work.
func TestHostileCommandPaths(t *testing.T) {
	t.Parallel()
	m := hostileMount(t)
	uid, gid := testIDs(t)
	home := filepath.Join(m.Base, "home")
	os.Mkdir(home, 0o755)
	os.Chown(home, uid, gid)
	secret := filepath.Join(m.Base, "secret")
	os.WriteFile(secret, []byte("root's secret\n"), 0o600)
	ctl := func(name, cmd string) (string, error) {
		return asTestUser(true, nil, "bash", "-c", `echo "$2" > "$1"`, "-", m.Path(name, "ctl"), cmd)
	}
	m.Define("c", cheapXML("c", 64))
	if out, err := ctl("c", "start"); err != nil {
		t.Fatalf("start as the user: %v %s (%s)", err, out, m.ErrorOf("c"))
	}
	for _, cmd := range []string{"save /etc/qemufs-evil.img", "save " + secret} {
		if out, err := ctl("c", cmd); err == nil || !strings.Contains(out, denied) {
			t.Errorf("%s: %v %q, want EACCES (error: %s)", cmd, err, strings.TrimSpace(out), m.ErrorOf("c"))
		} else {
			t.Logf("%s: %s", cmd, m.ErrorOf("c"))
		}
	}
	if _, err := os.Lstat("/etc/qemufs-evil.img"); err == nil {
		os.Remove("/etc/qemufs-evil.img")
		t.Error("a save image was written into /etc")
	}
	if got := m.State("c"); !strings.HasPrefix(got, "running") {
		t.Errorf("state after refused saves = %q", got)
	}
	img := filepath.Join(home, "c.img")
	if out, err := ctl("c", "save "+img); err != nil {
		t.Fatalf("save into the user's directory: %v %s (%s)", err, out, m.ErrorOf("c"))
	}
	if out, err := ctl("c", "restore "+secret); err == nil || !strings.Contains(out, denied) {
		t.Errorf("restore of root's file: %v %q, want EACCES", err, strings.TrimSpace(out))
	}
	if out, err := ctl("c", "restore "+img+" --paused"); err != nil {
		t.Errorf("restore of the user's image: %v %s (%s)", err, out, m.ErrorOf("c"))
	}
	m.Ctl("c", "destroy")

	// An external snapshot's overlay where the user may not write.
	disk := filepath.Join(home, "d.qcow2")
	if out, err := asTestUser(true, nil, "qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	m.Define("s", strings.Replace(cheapXML("s", 64), "<devices>", "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='"+disk+"'/><target dev='vda' bus='virtio'/></disk>", 1))
	snap := func(overlay string) (string, error) {
		x := "<domainsnapshot><name>x</name><disks><disk name='vda' snapshot='external'><source file='" + overlay + "'/></disk></disks></domainsnapshot>"
		return asTestUser(true, nil, "bash", "-c", `echo "$2" > "$1"`, "-", m.Path("s", "snapshots", "create"), x)
	}
	if out, err := snap("/etc/qemufs-evil.qcow2"); err == nil || !strings.Contains(out, denied) {
		t.Errorf("overlay in /etc: %v %q, want EACCES (error: %s)", err, strings.TrimSpace(out), m.ErrorOf("s"))
	}
	if _, err := os.Lstat("/etc/qemufs-evil.qcow2"); err == nil {
		os.Remove("/etc/qemufs-evil.qcow2")
		t.Error("an overlay was made in /etc")
	}
	if out, err := snap(filepath.Join(home, "d.overlay.qcow2")); err != nil {
		t.Errorf("overlay in the user's directory: %v %s (%s)", err, out, m.ErrorOf("s"))
	}
}
