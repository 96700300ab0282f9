package capabilities

import (
	"os/exec"
	"syscall"
)

// setProbeAttrs makes a probe QEMU die with us (a crashed or killed qemufs
// must not leave probe processes behind) and puts it in a process group of
// its own, so a terminal's ^C reaches only qemufs, and killProbe can end
// whatever a wrapper script started.
func setProbeAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
