package harness

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// swtpmDir is the instance's swtpm directory of kind "run", "lib" or "log"
// (run/swtpm, lib/swtpm, log/swtpm of an embedded instance; the system
// instance's /run/qemufs/swtpm, /var/lib/qemufs/swtpm, /var/log/qemufs/swtpm).
func (m *Mount) swtpmDir(kind string) string {
	if !m.opts.System {
		return filepath.Join(m.Root, kind, "swtpm")
	}
	return filepath.Join(m.Root, map[string]string{
		"run": "run/qemufs/swtpm", "lib": "var/lib/qemufs/swtpm", "log": "var/log/qemufs/swtpm",
	}[kind])
}

// SwtpmPid is the pid in NAME's swtpm pid file (0: none). The pid is
// tracked, so the test's cleanup kills it if the test left it running.
func (m *Mount) SwtpmPid(name string) int {
	data, err := os.ReadFile(filepath.Join(m.swtpmDir("run"), name+"-swtpm.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if pid > 0 {
		m.t.Cleanup(func() {
			if exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); filepath.Base(exe) == "swtpm" {
				WaitKill(pid, syscall.SIGKILL)
			}
		})
	}
	return pid
}

// SwtpmSocket is NAME's swtpm control socket.
func (m *Mount) SwtpmSocket(name string) string {
	return filepath.Join(m.swtpmDir("run"), name+"-swtpm.sock")
}

// SwtpmLog is NAME's swtpm log.
func (m *Mount) SwtpmLog(name string) string {
	return filepath.Join(m.swtpmDir("log"), name+"-swtpm.log")
}

// SwtpmState is the state directory of the TPM of the domain with uuid:
// lib/swtpm/UUID (its tpm2 or tpm1.2 subdirectory holds the state).
func (m *Mount) SwtpmState(uuid string) string {
	return filepath.Join(m.swtpmDir("lib"), uuid)
}
