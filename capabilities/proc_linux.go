package capabilities

import (
	"os/exec"
	"syscall"
)

// setProbeAttrs makes a probe QEMU die with us (a crashed or killed qemufs
// must not leave probe processes behind) and keeps it out of our process
// group, so a terminal's ^C reaches qemufs, which then kills it by pid.
func setProbeAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
