//go:build !linux

package capabilities

import (
	"os/exec"
	"syscall"
)

// setProbeAttrs puts a probe QEMU in a process group of its own (see
// killProbe); this OS has no parent-death signal, so qemufs relies on
// killing it.
func setProbeAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}
