// Package fault is a TEST-ONLY hook for fault injection through the real
// mount (tests/e2e/fault_test.go, docs/reliability.md). The daemon calls
// Point at named steps of its operations (start.spawned, define.synced,
// ...); when the environment variable QEMUFS_FAULT names that step, the
// chosen action happens there, as if the daemon or QEMU had crashed at that
// very point. Unset (always, outside tests), Point is one comparison of an
// empty string: it costs nothing and changes nothing.
//
// QEMUFS_FAULT=STEP[:ACTION], ACTION one of
//
//	kill       (default) the daemon kills itself with SIGKILL
//	qemu-kill  SIGKILL the QEMU of the step (points that know one)
//	qemu-stop  SIGSTOP that QEMU: it stops answering QMP
//
// The variable is read once, at start; an action fires at most once.
package fault

import (
	"os"
	"strings"
	"sync"
	"syscall"
)

// Env names the variable read at start.
const Env = "QEMUFS_FAULT"

var (
	step, action = parse(os.Getenv(Env))
	once         sync.Once
)

func parse(v string) (string, string) {
	s, a, _ := strings.Cut(strings.TrimSpace(v), ":")
	if a == "" {
		a = "kill"
	}
	return s, a
}

// Point is a named step with no process of its own at hand.
func Point(name string) { PointPid(name, 0) }

// PointPid is a named step that knows the pid of the QEMU it concerns, so
// that the qemu-kill and qemu-stop actions can act on it.
func PointPid(name string, pid int) {
	if step == "" || name != step {
		return
	}
	once.Do(func() { fire(pid) })
}

func fire(pid int) {
	switch action {
	case "qemu-kill":
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	case "qemu-stop":
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGSTOP)
		}
	default:
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns: the signal ends the process
	}
}

// Unset reports whether no fault is configured (for callers that would do
// extra work to name a point).
func Unset() bool { return step == "" }
