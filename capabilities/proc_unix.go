//go:build linux || darwin

package capabilities

import (
	"os/exec"
	"syscall"
)

// killProbe kills a probe QEMU and its process group (which it leads, see
// setProbeAttrs): the group's id is the pid we started, so nothing else is
// hit, and a wrapper script's children go too.
func killProbe(cmd *exec.Cmd) {
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Process.Kill()
}
