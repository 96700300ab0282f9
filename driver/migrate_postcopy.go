package driver

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/qemufs/qemufs/domain"
)

// userfaultfdSysctl gives userfaultfd(2) to processes without
// CAP_SYS_PTRACE when it is 1.
const userfaultfdSysctl = "/proc/sys/vm/unprivileged_userfaultfd"

// capSysPtrace is CAP_SYS_PTRACE's bit in /proc/PID/status's CapEff.
const capSysPtrace = 19

// checkUserfaultfd says whether a QEMU may use userfaultfd(2), which an
// incoming post-copy migration needs: QEMU 7.2 calls the syscall (it
// opens /dev/userfaultfd only from 8.1), which the kernel allows a
// process with CAP_SYS_PTRACE (ptrace), and any process when the sysctl
// at path is 1. A host without the sysctl (no userfaultfd at all, or a
// kernel older than 5.2, where it is not restricted) is left to QEMU to
// judge.
func checkUserfaultfd(path string, ptrace bool) error {
	if ptrace {
		return nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("post-copy needs userfaultfd for QEMU, and %s cannot be read: %v", path, unwrapPathError(err))
	}
	if v := strings.TrimSpace(string(b)); v != "1" {
		return fmt.Errorf("post-copy needs userfaultfd for QEMU: set vm.unprivileged_userfaultfd=1 on the destination host "+
			"(it is %s there, and QEMU runs without CAP_SYS_PTRACE), or migrate without --postcopy", v)
	}
	return nil
}

// qemuHasPtrace says whether the QEMU of def would run with
// CAP_SYS_PTRACE: as root (qemu.conf user = "root", or a static DAC label
// of root), which keeps this daemon's capabilities, and the daemon has it.
func (d *Driver) qemuHasPtrace(def *domain.Domain) bool {
	root := os.Geteuid() == 0
	if d.sec != nil {
		root = d.sec.Identity().IsRoot()
	}
	for _, l := range def.SecLabels() {
		if l.Model == "dac" && l.Type == "static" {
			u, _, _ := strings.Cut(l.Label, ":")
			root = u == "root" || u == "+0"
		}
	}
	return root && ownCapability(capSysPtrace)
}

// ownCapability says whether this process has capability bit in its
// effective set.
func ownCapability(bit uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<bit) != 0
		}
	}
	return false
}
