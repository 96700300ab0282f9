package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// mount is one embedded qemufs instance (--root) mounted for the bench.
type mount struct {
	bin    string
	root   string // --root
	dir    string // mount point
	pid    int    // the daemon, once mounted
	logDir string
	runDir string
}

func newMount(bin, base, name string) (*mount, error) {
	m := &mount{
		bin:    bin,
		root:   filepath.Join(base, name+"-root"),
		dir:    filepath.Join(base, name),
		logDir: filepath.Join(base, name+"-root", "log/qemu"),
		runDir: filepath.Join(base, name+"-root", "run/qemu"),
	}
	return m, os.MkdirAll(m.dir, 0o755)
}

// mount runs `qemufs mount --root ROOT --daemon DIR`, which returns once
// the tree is ready.
func (m *mount) mount() error {
	out, err := exec.Command(m.bin, "mount", "--root", m.root, "--daemon", m.dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemufs mount: %v: %s%s", err, out, m.daemonLogTail())
	}
	m.pid = m.daemonPid()
	allMounts.Lock()
	allMounts.list = append(allMounts.list, m)
	allMounts.Unlock()
	return nil
}

// unmount runs `qemufs unmount`, which waits for the daemon to exit.
func (m *mount) unmount() error {
	m.notePids()
	out, err := exec.Command(m.bin, "unmount", m.dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemufs unmount: %v: %s", err, out)
	}
	m.pid = 0
	return nil
}

// forceDown is the cleanup of last resort: unmount, else kill the daemon
// by pid and detach the mount.
func (m *mount) forceDown() {
	if m.pid == 0 {
		return
	}
	m.notePids()
	if err := m.unmount(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: cleanup: %v\n", err)
		if m.pid > 0 && isSameExe(m.pid, m.bin) {
			killWait(m.pid, syscall.SIGKILL, 10*time.Second)
		}
		unix.Unmount(m.dir, unix.MNT_DETACH)
		m.pid = 0
	}
}

func isSameExe(pid int, bin string) bool {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return err == nil && filepath.Base(exe) == filepath.Base(bin)
}

// notePids records the instance's running QEMUs for cleanup.
func (m *mount) notePids() { procs.addPidFiles(filepath.Join(m.logDir, "*.pid")) }

func (m *mount) daemonPid() int {
	data, _ := os.ReadFile(filepath.Join(m.dir, "version"))
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "daemon pid "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

func (m *mount) daemonLogTail() string {
	data, _ := os.ReadFile(filepath.Join(m.root, "log/qemufs.log"))
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	if len(data) == 0 {
		return ""
	}
	return "\ndaemon log:\n" + string(data)
}

func (m *mount) path(elem ...string) string {
	return filepath.Join(append([]string{m.dir}, elem...)...)
}

// write writes data to a file of the tree in one write(2), as `echo >`
// does; the error names the domain's `error` file content.
func (m *mount) write(name, file, data string) error {
	f, err := os.OpenFile(m.path(name, file), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, werr := f.Write([]byte(data))
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr != nil {
		msg, _ := os.ReadFile(m.path(name, "error"))
		return fmt.Errorf("%s/%s <- %q: %w: %s", name, file, strings.TrimSpace(data), werr, strings.TrimSpace(string(msg)))
	}
	return nil
}

// ctl writes one command to NAME/ctl.
func (m *mount) ctl(name, cmd string) error {
	err := m.write(name, "ctl", cmd+"\n")
	if strings.HasPrefix(cmd, "start") {
		if pid := m.qemuPid(name); pid > 0 {
			procs.add(pid)
		}
	}
	return err
}

// define makes NAME's directory (when missing) and writes its config.xml.
func (m *mount) define(name, xml string) error {
	if err := os.Mkdir(m.path(name), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return m.write(name, "config.xml", xml)
}

func (m *mount) state(name string) string {
	data, err := os.ReadFile(m.path(name, "state"))
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(string(data))
}

func (m *mount) qemuPid(name string) int { return readPid(m.path(name, "pid")) }

// allMounts are the mounts made, taken down at cleanup.
var allMounts struct {
	sync.Mutex
	list []*mount
}

// mounts returns the mounts made so far.
func mounts() []*mount {
	allMounts.Lock()
	defer allMounts.Unlock()
	return append([]*mount(nil), allMounts.list...)
}
