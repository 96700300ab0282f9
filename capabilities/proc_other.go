//go:build !linux

package capabilities

import (
	"os/exec"
	"syscall"
)

// setProbeAttrs keeps a probe QEMU out of our process group; this OS has no
// parent-death signal, so qemufs relies on killing it by pid.
func setProbeAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}
