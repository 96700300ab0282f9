package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// MountEnv (re)mounts the instance with extra environment for the daemon,
// such as QEMUFS_FAULT=STEP (internal/fault) to make it die at a step.
func (m *Mount) MountEnv(env ...string) error {
	cmd := m.Command(m.MountArgs()...)
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemufs mount (%s): %v: %s\ndaemon log:\n%s", strings.Join(env, " "), err, out, m.tail())
	}
	return nil
}

// WaitGone waits (up to timeout) until pid has exited; it reports whether
// it did.
func WaitGone(pid int, timeout time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return true // no such process
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, _ := unix.Poll(fds, int(timeout/time.Millisecond))
	return n > 0
}

// Remount mounts again after the daemon died: the dead mount is detached
// first, as an administrator would.
func (m *Mount) Remount() error {
	m.notePids()
	unix.Unmount(m.Dir, unix.MNT_DETACH)
	return m.Mount()
}

// ConfigDir is the instance's directory of persistent definitions.
func (m *Mount) ConfigDir() string {
	if m.opts.System {
		return filepath.Join(m.Root, "etc/qemufs/qemu")
	}
	return filepath.Join(m.Root, "etc/qemu")
}

// StoredConfig returns NAME's definition file as the daemon stored it.
func (m *Mount) StoredConfig(name string) (string, error) {
	data, err := os.ReadFile(filepath.Join(m.ConfigDir(), name+".xml"))
	return string(data), err
}
