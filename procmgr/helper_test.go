package procmgr

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/qemufs/qemufs/tests/guest"
	"golang.org/x/sys/unix"
)

func TestCredential(t *testing.T) {
	ownCaps := statusField(t, os.Getpid(), "CapEff")
	tests := []struct {
		name      string
		cred      Credential
		mountNS   bool
		wantUID   string
		wantGID   string
		wantCaps  string
		wantGroup string
	}{
		{"nobody direct", Credential{UID: 65534, GID: 65534}, false, "65534\t65534\t65534\t65534", "65534\t65534\t65534\t65534", "0000000000000000", ""},
		{"nobody helper", Credential{UID: 65534, GID: 65534}, true, "65534\t65534\t65534\t65534", "65534\t65534\t65534\t65534", "0000000000000000", ""},
		{"nobody groups", Credential{UID: 65534, GID: 65534, Groups: []uint32{100, 65534}}, true, "65534\t65534\t65534\t65534", "65534\t65534\t65534\t65534", "0000000000000000", "100 65534"},
		{"root helper", Credential{UID: 0, GID: 0}, true, "0\t0\t0\t0", "0\t0\t0\t0", ownCaps, ""},
		{"root direct", Credential{UID: 0, GID: 0}, false, "0\t0\t0\t0", "0\t0\t0\t0", ownCaps, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := Spec{Path: "/bin/sleep", Args: []string{"1000"}, Dir: "/", Credential: &tc.cred}
			if tc.mountNS {
				spec.MountNS = &MountNamespace{Devices: []string{"/dev/null"}}
			}
			p := startT(t, spec)
			for _, f := range []struct{ name, want string }{
				{"Uid", tc.wantUID}, {"Gid", tc.wantGID}, {"CapEff", tc.wantCaps},
				{"CapPrm", tc.wantCaps}, {"Groups", tc.wantGroup},
			} {
				if got := statusField(t, p.Pid, f.name); got != f.want {
					t.Errorf("%s: want %q, got %q", f.name, f.want, got)
				}
			}
			if tc.cred.UID != 0 {
				if got := statusField(t, p.Pid, "CapAmb"); got != "0000000000000000" {
					t.Errorf("CapAmb: %s", got)
				}
			}
		})
	}
}

// devNodes lists the device nodes below root (a /dev), by path relative to
// it, not descending into mounts (pts, shm...).
func devNodes(t *testing.T, root string) map[string]os.FileInfo {
	t.Helper()
	var rootSt unix.Stat_t
	if err := unix.Stat(root, &rootSt); err != nil {
		t.Fatal(err)
	}
	out := map[string]os.FileInfo{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			var st unix.Stat_t
			if err := unix.Stat(p, &st); err == nil && st.Dev != rootSt.Dev {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode()&(fs.ModeDevice|fs.ModeCharDevice) != 0 {
			out[strings.TrimPrefix(p, root+"/")] = fi
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func keys(m map[string]os.FileInfo) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestMountNS runs QEMU with a pty chardev in a private mount namespace and
// checks its /dev from the host: only the listed devices (plus ptmx) with
// the host's numbers, mode and owner; the host's devpts; private mounts;
// and a pty slave QEMU reports that the host can open.
func TestMountNS(t *testing.T) {
	devices := []string{"/dev/null", "/dev/zero", "/dev/urandom", "/dev/does-not-exist"}
	want := []string{"null", "ptmx", "urandom", "zero"}
	if _, err := os.Stat("/dev/net/tun"); err == nil {
		devices = append(devices, "/dev/net/tun")
		want = append(want, "net/tun")
		sort.Strings(want)
	}
	spec, sock := qemuSpec(t, "-chardev", "pty,id=c0")
	spec.MountNS = &MountNamespace{Devices: devices}
	p := startT(t, spec)
	q := dialQMP(t, sock)

	if self, err := os.Readlink("/proc/self/ns/mnt"); err != nil {
		t.Fatal(err)
	} else if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p.Pid)); err != nil || ns == self {
		t.Fatalf("QEMU's mount namespace %q, ours %q (%v)", ns, self, err)
	}

	root := fmt.Sprintf("/proc/%d/root/dev", p.Pid)
	nodes := devNodes(t, root)
	if got := keys(nodes); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("device nodes in QEMU's /dev:\n- want: %v\n-  got: %v", want, got)
	}
	for name := range nodes {
		var host, ns unix.Stat_t
		if err := unix.Stat("/dev/"+name, &host); err != nil {
			t.Fatal(err)
		}
		if err := unix.Stat(root+"/"+name, &ns); err != nil {
			t.Fatal(err)
		}
		if host.Mode != ns.Mode || host.Rdev != ns.Rdev || host.Uid != ns.Uid || host.Gid != ns.Gid {
			t.Errorf("%s: host mode %o rdev %x owner %d:%d, namespace mode %o rdev %x owner %d:%d",
				name, host.Mode, host.Rdev, host.Uid, host.Gid, ns.Mode, ns.Rdev, ns.Uid, ns.Gid)
		}
	}
	for _, link := range []string{"fd", "stdin", "stdout", "stderr"} {
		if _, err := os.Readlink(root + "/" + link); err != nil {
			t.Errorf("/dev/%s: %v", link, err)
		}
	}

	mounts, err := readMountInfoFull(fmt.Sprintf("/proc/%d/mountinfo", p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	hostMounts, err := readMountInfoFull("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	byPoint := map[string]mountLine{}
	for _, m := range mounts {
		byPoint[m.point] = m // the last one is on top
		if strings.Contains(m.optional, "shared:") || strings.Contains(m.optional, "master:") {
			t.Errorf("mount %s propagates (%s); want private", m.point, m.optional)
		}
	}
	if m := byPoint["/dev"]; m.fstype != "tmpfs" {
		t.Errorf("/dev: want tmpfs, got %q", m.fstype)
	}
	hostPts := ""
	for _, m := range hostMounts {
		if m.point == "/dev/pts" {
			hostPts = m.devno
		}
	}
	if m := byPoint["/dev/pts"]; m.fstype != "devpts" || m.devno != hostPts {
		t.Errorf("/dev/pts: want the host's devpts %s, got %s %s", hostPts, m.fstype, m.devno)
	}
	if m := byPoint["/dev/shm"]; m.fstype != "tmpfs" {
		t.Errorf("/dev/shm: want tmpfs, got %q", m.fstype)
	}

	// The pty QEMU allocated inside the namespace lives in the host's
	// devpts: the driver opens it by the path QEMU reports.
	var chardevs []struct {
		Label    string `json:"label"`
		Filename string `json:"filename"`
	}
	q.run(t, "query-chardev", &chardevs)
	var pty string
	for _, c := range chardevs {
		if c.Label == "c0" {
			pty = strings.TrimPrefix(c.Filename, "pty:")
		}
	}
	if !strings.HasPrefix(pty, "/dev/pts/") {
		t.Fatalf("no pty for c0 in %+v", chardevs)
	}
	f, err := os.OpenFile(pty, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open QEMU's pty %s from the host: %v", pty, err)
	}
	f.Close()
}

type mountLine struct {
	point, fstype, devno, optional string
}

func readMountInfoFull(path string) ([]mountLine, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []mountLine
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		pre, post, _ := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		out = append(out, mountLine{point: f[4], devno: f[2], optional: strings.Join(f[6:], " "), fstype: g[0]})
	}
	return out, nil
}

// TestMountNSDetachesQemufs: a qemufs FUSE mount is not copied into QEMU's
// namespace, so unmounting it on the host ends the FUSE session even while
// QEMU runs.
func TestMountNSDetachesQemufs(t *testing.T) {
	mnt := t.TempDir()
	server, err := gofs.Mount(mnt, &gofs.Inode{}, &gofs.Options{
		MountOptions: fuse.MountOptions{Name: "qemufs", FsName: "qemufs"},
	})
	if err != nil {
		t.Fatalf("fuse mount: %v", err)
	}
	served := make(chan struct{})
	go func() { server.Wait(); close(served) }()
	t.Cleanup(func() {
		server.Unmount()
		<-served
	})
	p := startT(t, Spec{Path: "/bin/sleep", Args: []string{"1000"}, MountNS: &MountNamespace{}})
	mounts, err := readMountInfo(fmt.Sprintf("/proc/%d/mountinfo", p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if isQemufsMount(m) {
			t.Errorf("qemufs mount %s copied into QEMU's namespace", m.Point)
		}
	}
	if err := server.Unmount(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-served:
	case <-p.Done():
		t.Fatal("process ended")
	}
}

// cgroupT creates a cgroup under root for the test and removes it at
// cleanup (after the test's processes ended: cleanups run last-in first-out,
// so create it before starting processes).
func cgroupT(t *testing.T, root string) string {
	t.Helper()
	dir, err := os.MkdirTemp(root, "qemufs-procmgr-test-")
	if err != nil {
		t.Skipf("cannot create a cgroup under %s: %v", root, err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
	return dir
}

func TestCgroupProcs(t *testing.T) {
	v1 := cgroupT(t, "/sys/fs/cgroup/pids")
	v2 := cgroupT(t, "/sys/fs/cgroup/unified")
	spec := Spec{
		Path: "/bin/sleep", Args: []string{"1000"},
		CgroupProcs: []string{v1 + "/cgroup.procs", v2 + "/cgroup.procs"},
		Credential:  &Credential{UID: 65534, GID: 65534},
	}
	p := startT(t, spec)
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{":pids:/" + filepath.Base(v1) + "\n", "0::/" + filepath.Base(v2) + "\n"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("/proc/%d/cgroup lacks %q:\n%s", p.Pid, want, data)
		}
	}
	// The process is in the cgroup as itself: the pid written was its own.
	procs, err := os.ReadFile(v1 + "/cgroup.procs")
	if err != nil || strings.TrimSpace(string(procs)) != fmt.Sprint(p.Pid) {
		t.Errorf("%s/cgroup.procs: %q, %v; want %d", v1, procs, err, p.Pid)
	}
	p.Kill()
	waitDone(t, p)
}

// TestHelperErrors: a failing helper step gives a precise error and leaves
// no process behind.
func TestHelperErrors(t *testing.T) {
	shmFile, err := os.CreateTemp("/dev/shm", "procmgr-test-")
	if err != nil {
		t.Fatal(err)
	}
	shmFile.Close()
	t.Cleanup(func() { os.Remove(shmFile.Name()) })
	root := t.TempDir()
	if err := os.Chmod(root, 0o700); err != nil {
		t.Fatal(err)
	}
	nobody := &Credential{UID: 65534, GID: 65534}
	tests := []struct {
		name string
		spec Spec
		want string
		is   error
	}{
		{"device outside /dev", Spec{MountNS: &MountNamespace{Devices: []string{"/tmp/disk.img"}}},
			"start g: mount namespace: device /tmp/disk.img is not under /dev", nil},
		{"not a device", Spec{MountNS: &MountNamespace{Devices: []string{shmFile.Name()}}},
			"start g: mount namespace: device " + shmFile.Name() + " is not a device node (mode -rw-------)", nil},
		{"missing cgroup", Spec{CgroupProcs: []string{"/sys/fs/cgroup/pids/qemufs-no-such-group/cgroup.procs"}},
			"start g: cgroup: open /sys/fs/cgroup/pids/qemufs-no-such-group/cgroup.procs: no such file or directory", syscall.ENOENT},
		{"cgroup directory", Spec{CgroupProcs: []string{"/sys/fs/cgroup/pids"}},
			"start g: cgroup: open /sys/fs/cgroup/pids: is a directory", syscall.EISDIR},
		{"unknown label model", Spec{Label: &ExecLabel{Model: "smack", Value: "x"}},
			`start g: exec label: unknown security model "smack"`, nil},
		{"working directory as nobody", Spec{MountNS: &MountNamespace{}, Credential: nobody, Dir: root},
			"start g: working directory: chdir " + root + ": permission denied", syscall.EACCES},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.Name, tc.spec.Path, tc.spec.Args = "g", "/bin/sleep", []string{"1000"}
			before := children(t)
			p, err := Start(t.Context(), tc.spec)
			if err == nil {
				p.Kill()
				<-p.Done()
				t.Fatalf("Start succeeded, want %q", tc.want)
			}
			if err.Error() != tc.want {
				t.Errorf("error:\n- want: %q\n-  got: %q", tc.want, err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tc.is)
			}
			for pid := range children(t) {
				if !before[pid] {
					t.Errorf("process %d left behind", pid)
				}
			}
		})
	}
}

// TestHelperLabelNoLSM: on this host (no LSM) an exec label cannot be
// applied, and Start says so instead of starting an unconfined QEMU.
func TestHelperLabelNoLSM(t *testing.T) {
	if data, err := os.ReadFile("/sys/kernel/security/lsm"); err == nil &&
		(strings.Contains(string(data), "selinux") || strings.Contains(string(data), "apparmor")) {
		t.Skipf("an LSM is active (%s): the write may succeed", data)
	}
	_, err := Start(t.Context(), Spec{Name: "g", Path: "/bin/true",
		Label: &ExecLabel{Model: ModelSELinux, Value: "system_u:system_r:svirt_t:s0:c1,c2"}})
	const want = `start g: exec label: selinux "system_u:system_r:svirt_t:s0:c1,c2": write /proc/thread-self/attr/exec: `
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error:\n- want: %q...\n-  got: %v", want, err)
	}
	var he *HelperError
	if !errors.As(err, &he) || he.Step != "helper.Label" {
		t.Errorf("want a HelperError from helper.Label, got %#v", err)
	}
}

// fakeAttr records attribute writes.
type fakeAttr struct {
	have   map[string]bool
	err    error
	writes []string
}

func (f *fakeAttr) exists(name string) bool { return f.have[name] }
func (f *fakeAttr) write(name string, value []byte) error {
	f.writes = append(f.writes, name+"="+string(value))
	return f.err
}

func TestApplyExecLabel(t *testing.T) {
	tests := []struct {
		name   string
		label  *ExecLabel
		have   map[string]bool
		err    error
		writes []string
		want   string
	}{
		{"none", nil, nil, nil, nil, ""},
		{"selinux", &ExecLabel{Model: "selinux", Value: "system_u:system_r:svirt_t:s0:c1,c2"}, nil, nil,
			[]string{"exec=system_u:system_r:svirt_t:s0:c1,c2"}, ""},
		{"apparmor stacked", &ExecLabel{Model: "apparmor", Value: "libvirt-1234"}, map[string]bool{"apparmor/exec": true}, nil,
			[]string{"apparmor/exec=exec libvirt-1234"}, ""},
		{"apparmor legacy", &ExecLabel{Model: "apparmor", Value: "libvirt-1234"}, nil, nil,
			[]string{"exec=exec libvirt-1234"}, ""},
		{"write fails", &ExecLabel{Model: "selinux", Value: "bad"}, nil, syscall.EINVAL,
			[]string{"exec=bad"}, `exec label: selinux "bad": write /proc/thread-self/attr/exec: invalid argument`},
		{"empty", &ExecLabel{Model: "selinux"}, nil, nil, nil, "exec label: empty selinux label"},
		{"unknown model", &ExecLabel{Model: "tomoyo", Value: "x"}, nil, nil, nil, `exec label: unknown security model "tomoyo"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := &fakeAttr{have: tc.have, err: tc.err}
			err := applyExecLabel(a, tc.label)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("error:\n- want: %q\n-  got: %q", tc.want, got)
			}
			if strings.Join(a.writes, "|") != strings.Join(tc.writes, "|") {
				t.Errorf("writes:\n- want: %q\n-  got: %q", tc.writes, a.writes)
			}
		})
	}
}

// TestDeadSpare: a spare helper that died while it waited is replaced.
func TestDeadSpare(t *testing.T) {
	flushSpares()
	spares.mu.Lock()
	h := spares.spare
	spares.mu.Unlock()
	if h == nil {
		t.Fatal("no spare helper after Init")
	}
	// Our child, not reaped: safe to signal by pid.
	if err := unix.Kill(h.pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Wait until it is dead (its pidfd turns readable).
	pfd := []unix.PollFd{{Fd: int32(h.pidfd), Events: unix.POLLIN}}
	if _, err := unix.Poll(pfd, int(testTimeout.Milliseconds())); err != nil {
		t.Fatal(err)
	}
	before := children(t)
	p := startT(t, Spec{Path: "/bin/sleep", Args: []string{"1000"}, MountNS: &MountNamespace{}})
	if p.Pid == h.pid {
		t.Fatalf("started in the dead spare %d", h.pid)
	}
	if before[h.pid] {
		t.Logf("dead spare %d was still a zombie before Start", h.pid)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", h.pid)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dead spare %d not reaped: %v", h.pid, err)
	}
}

// TestManyExtraFiles: more ExtraFiles than a spare has room for get a
// helper of their own, and arrive in order.
func TestManyExtraFiles(t *testing.T) {
	dir := t.TempDir()
	var files []*os.File
	for i := 0; i < helperSlots+8; i++ {
		f, err := os.Create(filepath.Join(dir, fmt.Sprint("f", i)))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	spec := fdProbe(t, files)
	spec.MountNS = &MountNamespace{}
	got := probedFds(t, spec)
	want := map[int]string{0: "/dev/null", 1: spec.LogPath, 2: spec.LogPath}
	for i, f := range files {
		want[3+i] = f.Name()
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("fds:\n- want: %v\n-  got: %v", want, got)
	}
}

// TestGuestConsoleThroughNamespace boots the test guest in a private mount
// namespace with its serial port on a pty: the daemon side opens the pty
// slave QEMU reports, sees the guest's ready line and uses its shell.
func TestGuestConsoleThroughNamespace(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	g, err := guest.Build(ctx, os.Getenv("QEMUFS_GUEST_DIR"))
	if err != nil {
		t.Fatal(err)
	}
	spec, sock := qemuSpec(t)
	spec.Args = append([]string{"-machine", "pc", "-m", "128", "-nodefaults", "-display", "none",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
		"-chardev", "pty,id=s0", "-serial", "chardev:s0"}, g.Args(guest.ActionNone)...)
	// As root: the guest's files live in root's cache directory.
	spec.MountNS = &MountNamespace{Devices: []string{"/dev/null", "/dev/zero", "/dev/urandom", "/dev/kvm"}}
	p := startT(t, spec)
	q := dialQMP(t, sock)
	var chardevs []struct {
		Label    string `json:"label"`
		Filename string `json:"filename"`
	}
	q.run(t, "query-chardev", &chardevs)
	var pty string
	for _, c := range chardevs {
		if c.Label == "s0" && strings.HasPrefix(c.Filename, "pty:") {
			pty = strings.TrimPrefix(c.Filename, "pty:")
		}
	}
	console, err := os.OpenFile(pty, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open the guest's pty %q from the host: %v", pty, err)
	}
	defer console.Close()
	// Raw mode: no echo or line editing on our side of the pty.
	tio, err := unix.IoctlGetTermios(int(console.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tio.Lflag &^= unix.ECHO | unix.ICANON
	tio.Oflag &^= unix.OPOST
	if err := unix.IoctlSetTermios(int(console.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 256)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(console)
		for sc.Scan() {
			lines <- strings.TrimRight(sc.Text(), "\r")
		}
	}()
	wait := func(want string) {
		t.Helper()
		deadline := time.After(2 * time.Minute)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("console closed before %q", want)
				}
				if strings.TrimSpace(l) == want {
					return
				}
			case <-p.Done():
				t.Fatalf("QEMU ended (%v) before %q", p.Exit(), want)
			case <-deadline:
				t.Fatalf("no %q on the console", want)
			}
		}
	}
	t0 := time.Now()
	wait(guest.ReadyLine)
	t.Logf("ready line after %v", time.Since(t0).Round(time.Millisecond))
	if _, err := console.WriteString("echo $((6*7))\n"); err != nil {
		t.Fatal(err)
	}
	wait("42")
	t.Logf("shell answered after %v", time.Since(t0).Round(time.Millisecond))
	q.run(t, "system_powerdown", nil)
	waitDone(t, p)
	t.Logf("powered off after %v", time.Since(t0).Round(time.Millisecond))
	if e := p.Exit(); e.Code != 0 {
		t.Errorf("QEMU after the guest powered off: %v", e)
	}
}

// TestMountNSOwners gives the private /dev/null and /dev/zero other owners
// and modes: QEMU's copies have them, the host's nodes keep theirs, and an
// owner for a node that is not there is skipped.
func TestMountNSOwners(t *testing.T) {
	var hostNull, hostZero unix.Stat_t
	if err := unix.Stat("/dev/null", &hostNull); err != nil {
		t.Fatal(err)
	}
	unix.Stat("/dev/zero", &hostZero)
	spec, _ := qemuSpec(t)
	spec.MountNS = &MountNamespace{
		Devices: []string{"/dev/null", "/dev/zero"},
		Owners: map[string]NodeOwner{
			"/dev/null":         {UID: 4242, GID: 4343, Mode: 0o600},
			"/dev/zero":         {UID: 0, GID: 4444, Mode: 0o660},
			"/dev/not-in-there": {UID: 1, GID: 1, Mode: 0o600},
		},
	}
	p := startT(t, spec)
	root := fmt.Sprintf("/proc/%d/root/dev", p.Pid)
	for _, c := range []struct {
		name     string
		uid, gid uint32
		mode     uint32
		host     unix.Stat_t
	}{
		{"null", 4242, 4343, 0o600, hostNull},
		{"zero", 0, 4444, 0o660, hostZero},
	} {
		var ns, host unix.Stat_t
		if err := unix.Stat(root+"/"+c.name, &ns); err != nil {
			t.Fatal(err)
		}
		if ns.Uid != c.uid || ns.Gid != c.gid || ns.Mode&0o7777 != c.mode || ns.Rdev != c.host.Rdev {
			t.Errorf("namespace /dev/%s: owner %d:%d mode %o rdev %x, want %d:%d %o %x", c.name, ns.Uid, ns.Gid, ns.Mode&0o7777, ns.Rdev, c.uid, c.gid, c.mode, c.host.Rdev)
		}
		unix.Stat("/dev/"+c.name, &host)
		if host.Uid != c.host.Uid || host.Gid != c.host.Gid || host.Mode != c.host.Mode {
			t.Errorf("host /dev/%s changed: %d:%d %o", c.name, host.Uid, host.Gid, host.Mode)
		}
	}
	if _, err := os.Lstat(root + "/not-in-there"); err == nil {
		t.Error("an owner created a node")
	}
}
