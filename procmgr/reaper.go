package procmgr

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Init prepares the daemon to supervise QEMU. Call it once, early in main
// (after the RunHelper check). It
//
//   - makes the daemon a child subreaper (PR_SET_CHILD_SUBREAPER): processes
//     orphaned below it — a QEMU re-parented when the daemon that started it
//     was killed and this one runs in its place under the same parent, or
//     children QEMU leaves behind — become the daemon's children instead of
//     PID 1's. PID 1 on some hosts reaps orphans only every few seconds, and
//     an unreaped zombie keeps its pid (kill(pid, 0) still succeeds); as
//     their parent the daemon reaps them at once and learns their status.
//   - starts the orphan reaper, which on SIGCHLD reaps adopted orphans.
//   - marks every fd the daemon has inherited (fd 3 and up) close-on-exec,
//     so none leaks into QEMU; the daemon itself can still use them.
//   - keeps one exec helper started ahead (see HelperArg), so that a Start
//     that needs it does not wait for the Go runtime to start in it: this
//     takes the helper path from tens of milliseconds (under load) to a few.
//
// Reaping has one owner per process, so nothing steals exit statuses from
// os/exec: procmgr waits for its own processes by pid (wait4 on a specific
// pid, never wait4(-1)), and the orphan reaper only touches zombies that
// are not procmgr's, belong to a session other than the daemon's, and do
// not lead their own session. os/exec children of the daemon are in the
// daemon's session, or lead their own (Setsid), so they are never touched;
// orphans descending from a QEMU are in QEMU's session. An orphan that
// called setsid itself is not recognised and stays a zombie until the
// daemon exits.
//
// Start and Attach work without Init; orphans then go to PID 1.
func Init() error {
	initOnce.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			initErr = fmt.Errorf("procmgr init: set child subreaper: %w", err)
			return
		}
		// Best effort: kernels before 5.11 lack CLOSE_RANGE_CLOEXEC.
		_ = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGCHLD)
		go func() {
			for range sigs {
				reapOrphans()
			}
		}()
		// Orphans adopted before SIGCHLD was being watched.
		reapOrphans()
		spares.mu.Lock()
		spares.enabled = true
		spares.mu.Unlock()
		scheduleRefill(0)
	})
	return initErr
}

var (
	initOnce sync.Once
	initErr  error
)

// tracked are the pids procmgr waits for itself; the orphan reaper leaves
// them alone.
var tracked = struct {
	sync.Mutex
	pids map[int]int
}{pids: map[int]int{}}

func track(pid int) {
	tracked.Lock()
	tracked.pids[pid]++
	tracked.Unlock()
}

func untrack(pid int) {
	tracked.Lock()
	if tracked.pids[pid]--; tracked.pids[pid] <= 0 {
		delete(tracked.pids, pid)
	}
	tracked.Unlock()
}

func isTracked(pid int) bool {
	tracked.Lock()
	defer tracked.Unlock()
	return tracked.pids[pid] > 0
}

// onReap, when set (by tests), is told each orphan the reaper reaped.
var onReap atomic.Pointer[func(pid int, ws unix.WaitStatus)]

// reapOrphans reaps every zombie child that is an adopted orphan (see
// Init). /proc/PID/task/TID/children is not available on every kernel, so
// it scans /proc; this runs only on SIGCHLD.
func reapOrphans() {
	self := os.Getpid()
	selfSid, err := unix.Getsid(0)
	if err != nil {
		return
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		st, err := readStat(pid)
		if err != nil || st.PPid != self || st.State != 'Z' {
			continue
		}
		if st.Session == selfSid || st.Session == pid || isTracked(pid) {
			continue
		}
		var ws unix.WaitStatus
		if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil && got == pid {
			if f := onReap.Load(); f != nil {
				(*f)(pid, ws)
			}
		}
	}
}
