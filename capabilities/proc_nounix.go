//go:build !linux && !darwin

package capabilities

import "os/exec"

// killProbe kills a probe QEMU by pid.
func killProbe(cmd *exec.Cmd) { cmd.Process.Kill() }
