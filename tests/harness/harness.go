// Package harness runs qemufs for end-to-end tests: a real binary, a real
// FUSE mount under a private temporary root, and cleanup that ends every
// QEMU the test started, by pid.
package harness

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qemufs/qemufs/tests/guest"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Bin returns the qemufs binary under test: $QEMUFS_BIN (make test sets
// it), else one built from this tree once per test process.
func Bin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("QEMUFS_BIN"); p != "" {
		return p
	}
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "qemufs-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "qemufs")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/qemufs/qemufs/cmd/qemufs").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// Options choose the instance a test mounts.
type Options struct {
	// System mounts the privileged system instance, relocated under the
	// test's directory (QEMUFS_SYSTEM_PREFIX); otherwise an embedded
	// instance (--root).
	System bool
	// QEMUConf is written as the instance's qemu.conf.
	QEMUConf string
	// ColdCache starts without capability cache entries. By default the
	// instance's cache is seeded from one probe per test process, so
	// that parallel mounts on a loaded machine do not each probe every
	// emulator (and time out doing so).
	ColdCache bool
	// NetNS runs the daemon in a network namespace of its own, so that
	// the networks it makes (bridges, firewall tables, dnsmasq) stay off
	// the host's network.
	NetNS bool
	// Wrap, when set, is a command prefix the daemon runs under (`qemufs
	// mount` becomes Wrap + argv), e.g. to enter a network namespace made
	// beforehand (see Host in migrate.go).
	Wrap []string
}

// Mount is one qemufs instance mounted for a test.
type Mount struct {
	t      testing.TB
	bin    string
	opts   Options
	Base   string // the test's private directory (short, world-searchable)
	Root   string // --root, or the system prefix
	Dir    string // the mount point
	LogDir string // QEMU logs and pid files
	RunDir string
	Log    string // the daemon's own log

	mu   sync.Mutex
	pids map[int]bool // QEMUs seen, killed at cleanup
}

// Start mounts a fresh instance; it is unmounted, and its QEMUs killed, when
// the test ends.
func Start(t testing.TB, opts Options) *Mount {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests run as root (make test)")
	}
	// Short and searchable by QEMU's user: socket paths are limited to 108
	// bytes and a privileged instance runs QEMU as another user.
	base, err := os.MkdirTemp("/tmp", "qfs-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	m := &Mount{t: t, bin: Bin(t), opts: opts, Base: base, Dir: filepath.Join(base, "m"), pids: map[int]bool{}}
	if opts.System {
		m.Root = filepath.Join(base, "s")
		m.LogDir = filepath.Join(m.Root, "var/log/qemufs/qemu")
		m.RunDir = filepath.Join(m.Root, "run/qemufs/qemu")
		m.Log = filepath.Join(m.Root, "var/log/qemufs/qemufs.log")
	} else {
		m.Root = filepath.Join(base, "r")
		m.LogDir = filepath.Join(m.Root, "log/qemu")
		m.RunDir = filepath.Join(m.Root, "run/qemu")
		m.Log = filepath.Join(m.Root, "log/qemufs.log")
	}
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if opts.QEMUConf != "" {
		conf := filepath.Join(m.Root, "etc/qemu.conf")
		if opts.System {
			conf = filepath.Join(m.Root, "etc/qemufs/qemu.conf")
		}
		os.MkdirAll(filepath.Dir(conf), 0o755)
		if err := os.WriteFile(conf, []byte(opts.QEMUConf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if !opts.ColdCache {
		m.seedCapsCache(t)
	}
	t.Cleanup(m.cleanup)
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	return m
}

// MountArgs are the arguments of `qemufs mount` for this instance.
func (m *Mount) MountArgs() []string {
	if m.opts.System {
		return []string{"mount", "--system", "--daemon", m.Dir}
	}
	return []string{"mount", "--root", m.Root, "--daemon", m.Dir}
}

// Command returns a qemufs command for this instance (the system prefix set).
func (m *Mount) Command(args ...string) *exec.Cmd {
	argv := append([]string{m.bin}, args...)
	if m.opts.NetNS && len(args) > 0 && args[0] == "mount" {
		argv = netnsWrap(argv)
	}
	if len(m.opts.Wrap) > 0 && len(args) > 0 && args[0] == "mount" {
		argv = append(append([]string{}, m.opts.Wrap...), argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = os.Environ()
	if m.opts.System {
		cmd.Env = append(cmd.Env, "QEMUFS_SYSTEM_PREFIX="+m.Root)
	}
	return cmd
}

// Mount (re)mounts the instance with `qemufs mount --daemon`.
func (m *Mount) Mount() error {
	out, err := m.Command(m.MountArgs()...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemufs %s: %v: %s\ndaemon log:\n%s", strings.Join(m.MountArgs(), " "), err, out, m.tail())
	}
	return nil
}

// Unmount runs `qemufs unmount`, which waits for the daemon to exit.
func (m *Mount) Unmount() error {
	m.notePids()
	out, err := m.Command("unmount", m.Dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemufs unmount: %v: %s", err, out)
	}
	return nil
}

// DaemonPid is the pid of the daemon serving the mount.
func (m *Mount) DaemonPid() int {
	data, _ := os.ReadFile(filepath.Join(m.Dir, "version"))
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "daemon pid "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// KillDaemon kills the daemon with SIGKILL and waits until it is gone; the
// mount is left dead, as after a crash.
func (m *Mount) KillDaemon() {
	m.t.Helper()
	m.notePids()
	pid := m.DaemonPid()
	if pid == 0 {
		m.t.Fatal("no daemon pid in version")
	}
	WaitKill(pid, syscall.SIGKILL)
}

// WaitKill sends sig to pid and waits until the process has exited.
func WaitKill(pid int, sig syscall.Signal) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	unix.PidfdSendSignal(fd, sig, nil, 0)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for i := 0; i < 600; i++ {
		if n, _ := unix.Poll(fds, 100); n > 0 {
			return
		}
	}
}

// Path joins elem below the mount point.
func (m *Mount) Path(elem ...string) string {
	return filepath.Join(append([]string{m.Dir}, elem...)...)
}

// Read returns a file of the tree as a string; failure ends the test.
func (m *Mount) Read(elem ...string) string {
	m.t.Helper()
	data, err := os.ReadFile(m.Path(elem...))
	if err != nil {
		m.t.Fatal(err)
	}
	return string(data)
}

// Write writes data to a file of the tree in one write(2), as `echo > f`
// does, and returns the errno of write or close.
func (m *Mount) Write(data string, elem ...string) error {
	f, err := os.OpenFile(m.Path(elem...), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, werr := f.Write([]byte(data))
	cerr := f.Close()
	if werr != nil {
		return werr
	}
	return cerr
}

// Define makes the domain directory (if needed) and writes its config.xml.
func (m *Mount) Define(name, xml string) {
	m.t.Helper()
	if err := os.Mkdir(m.Path(name), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		m.t.Fatal(err)
	}
	if err := m.Write(xml, name, "config.xml"); err != nil {
		m.t.Fatalf("define %s: %v; error: %s", name, err, m.ErrorOf(name))
	}
}

// Ctl writes one command to NAME/ctl; the error includes NAME/error.
func (m *Mount) Ctl(name, cmd string) error {
	if err := m.Write(cmd+"\n", name, "ctl"); err != nil {
		return fmt.Errorf("%s: %w (error: %s)", cmd, err, m.ErrorOf(name))
	}
	m.notePids()
	return nil
}

// MustCtl is Ctl that ends the test on failure.
func (m *Mount) MustCtl(name, cmd string) {
	m.t.Helper()
	if err := m.Ctl(name, cmd); err != nil {
		m.t.Fatalf("%s: %v\nlog:\n%s", name, err, m.QEMULog(name))
	}
}

// ErrorOf returns NAME/error without its newline.
func (m *Mount) ErrorOf(name string) string {
	data, _ := os.ReadFile(m.Path(name, "error"))
	return strings.TrimSpace(string(data))
}

// State returns NAME/state without its newline.
func (m *Mount) State(name string) string {
	data, err := os.ReadFile(m.Path(name, "state"))
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(string(data))
}

// Pid returns QEMU's pid from NAME/pid, 0 when none.
func (m *Mount) Pid(name string) int {
	data, _ := os.ReadFile(m.Path(name, "pid"))
	n, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return n
}

// QEMULog returns NAME's QEMU log, read from the instance's log dir.
func (m *Mount) QEMULog(name string) string {
	data, _ := os.ReadFile(filepath.Join(m.LogDir, name+".log"))
	return string(data)
}

// WaitState waits until NAME/state equals want.
func (m *Mount) WaitState(name, want string, timeout time.Duration) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := m.State(name)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: state %q, want %q after %v\nerror: %s\nlog:\n%s", name, got, want, timeout, m.ErrorOf(name), m.QEMULog(name))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitStream reads the stream file elem (console, events, ...) until it
// has printed want, and returns what it read. The read runs in `grep`, so
// the timeout interrupts a blocked read the way a user's Ctrl-C does.
func (m *Mount) WaitStream(want string, timeout time.Duration, elem ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "grep", "-a", "-m1", "-F", "--", want, m.Path(elem...))
	cmd.Stdout = &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%q not seen in %s within %v: %v", want, strings.Join(elem, "/"), timeout, err)
	}
	return out.String(), nil
}

// WaitConsole waits for want on NAME/console; failure ends the test.
func (m *Mount) WaitConsole(name, want string, timeout time.Duration) {
	m.t.Helper()
	if _, err := m.WaitStream(want, timeout, name, "console"); err != nil {
		m.t.Fatalf("%s: %v\nlog:\n%s", name, err, m.QEMULog(name))
	}
}

// notePids remembers the QEMUs the instance runs now, to kill at cleanup
// whatever the test did.
func (m *Mount) notePids() {
	paths, _ := filepath.Glob(filepath.Join(m.LogDir, "*.pid"))
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range paths {
		data, _ := os.ReadFile(p)
		if n, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && n > 0 {
			m.pids[n] = true
		}
	}
}

// TrackPid adds a pid for cleanup to kill.
func (m *Mount) TrackPid(pid int) {
	m.mu.Lock()
	m.pids[pid] = true
	m.mu.Unlock()
}

func (m *Mount) tail() string {
	data, _ := os.ReadFile(m.Log)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

func (m *Mount) cleanup() {
	m.notePids()
	m.stopNetworks()
	if pid := m.DaemonPid(); pid > 0 {
		if err := m.Unmount(); err != nil {
			m.t.Logf("cleanup: %v", err)
			WaitKill(pid, syscall.SIGKILL)
		}
	}
	unix.Unmount(m.Dir, unix.MNT_DETACH) // a dead mount after KillDaemon
	m.mu.Lock()
	pids := m.pids
	m.mu.Unlock()
	for pid := range pids {
		if isQEMU(pid) {
			WaitKill(pid, syscall.SIGKILL)
		}
	}
	m.removeCgroups()
	if m.t.Failed() {
		m.t.Logf("daemon log (%s):\n%s", m.Log, m.tail())
	}
	os.RemoveAll(m.Base)
}

// isQEMU guards against killing a recycled pid.
func isQEMU(pid int) bool {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return err == nil && strings.Contains(filepath.Base(exe), "qemu")
}

var (
	guestOnce sync.Once
	guestVal  *guest.Guest
	guestErr  error
)

// Guest returns the test guest (built on first use, cached outside git),
// with its kernel and initrd copied where QEMU's user can read them.
func Guest(t testing.TB) *guest.Guest {
	t.Helper()
	guestOnce.Do(func() {
		dir := os.Getenv("QEMUFS_GUEST_DIR")
		if dir == "" {
			home, _ := os.UserHomeDir()
			dir = filepath.Join(home, ".cache", "qemufs-test-guest")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		g, err := guest.Build(ctx, dir)
		if err != nil {
			guestErr = err
			return
		}
		if err := publishGuest(g); err != nil {
			guestErr = err
			return
		}
		guestVal = g
	})
	if guestErr != nil {
		t.Fatalf("test guest: %v", guestErr)
	}
	return guestVal
}

// GuestXML is a domain XML that boots the test guest: ACPI (for shutdown),
// a pty serial console, user networking off; extra is added to <devices>,
// action picks what the guest does once up (poweroff, panic, ...).
func GuestXML(t testing.TB, name string, action guest.Action, extra string) string {
	return Guest(t).DomainXML(name, action, extra, "")
}

// Remove undefines NAME (rmdir).
func (m *Mount) Remove(name string) error { return os.Remove(m.Path(name)) }

// Exists reports whether NAME is listed at the root.
func (m *Mount) Exists(name string) bool {
	entries, _ := os.ReadDir(m.Dir)
	for _, e := range entries {
		if e.Name() == name {
			return true
		}
	}
	return false
}

// publishGuest copies the guest's kernel and initrd where QEMU's user can
// read them, and points g at the copies. The directory is named by their
// content and shared by every test process, so runs do not pile up copies
// in /tmp; files are written to a temporary name and renamed, as other
// test processes may publish the same guest at once.
func publishGuest(g *guest.Guest) error {
	h := sha256.New()
	var data [2][]byte
	for i, f := range []string{g.Kernel, g.Initrd} {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		data[i] = b
		h.Write(b)
	}
	pub := fmt.Sprintf("/tmp/qfs-guest-%x", h.Sum(nil)[:8])
	if err := os.Mkdir(pub, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if fi, err := os.Stat(pub); err != nil || !fi.IsDir() || fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("%s is not a directory of ours", pub)
	}
	os.Chmod(pub, 0o755)
	for i, f := range []*string{&g.Kernel, &g.Initrd} {
		dst := filepath.Join(pub, filepath.Base(*f))
		if cur, err := os.ReadFile(dst); err != nil || !bytes.Equal(cur, data[i]) {
			tmp, err := os.CreateTemp(pub, ".tmp-")
			if err != nil {
				return err
			}
			_, err = tmp.Write(data[i])
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Chmod(tmp.Name(), 0o644)
			}
			if err == nil {
				err = os.Rename(tmp.Name(), dst)
			}
			if err != nil {
				os.Remove(tmp.Name())
				return err
			}
		}
		*f = dst
	}
	return nil
}

var (
	capsOnce sync.Once
	capsDir  string
	capsErr  error
)

// seedCapsCache copies the capability cache entries of one probe, made once
// per test process with `qemufs capabilities`, into the instance's cache.
func (m *Mount) seedCapsCache(t testing.TB) {
	t.Helper()
	capsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "qfs-caps-")
		if err != nil {
			capsErr = err
			return
		}
		cmd := exec.Command(m.bin, "capabilities")
		cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+dir, "XDG_CONFIG_HOME="+dir+"/config")
		if out, err := cmd.CombinedOutput(); err != nil {
			capsErr = fmt.Errorf("qemufs capabilities: %v: %.300s", err, out)
			return
		}
		capsDir = filepath.Join(dir, "qemufs", "qemu", "capabilities")
	})
	if capsErr != nil {
		t.Fatal(capsErr)
	}
	dst := filepath.Join(m.Root, "cache", "qemu", "capabilities")
	if m.opts.System {
		dst = filepath.Join(m.Root, "var", "cache", "qemufs", "qemu", "capabilities")
	}
	entries, err := os.ReadDir(capsDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(capsDir, e.Name()))
		if err == nil {
			err = os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
