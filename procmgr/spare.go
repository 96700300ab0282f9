package procmgr

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// helperSlots is how many ExtraFiles a spare helper has room for. A Spec
// with more gets a helper started for it.
const helperSlots = 32

// helperProc is an exec helper process waiting for its request.
type helperProc struct {
	pid   int
	pidfd int
	ctrl  int // our end of the control socket
	slots int
	ready bool // its ready byte was read: it waits in receive
}

// helperReady is the byte a helper sends when it is ready for its request.
const helperReady = 'R'

// waitReady reads the helper's ready byte; it blocks for as long as the
// helper's Go runtime takes to start.
func (h *helperProc) waitReady() error {
	var b [1]byte
	for {
		n, err := unix.Read(h.ctrl, b[:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("exec helper: %w", err)
		case n == 0 || b[0] != helperReady:
			return fmt.Errorf("exec helper: exited before it was ready")
		}
		h.ready = true
		return nil
	}
}

// spawnHelper starts /proc/self/exe as an exec helper (see RunHelper for
// its fd table). It runs in a session of its own from the start, so a
// terminal's signals never reach it.
func spawnHelper(slots int) (*helperProc, error) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("exec helper: socketpair: %w", err)
	}
	null, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(sp[0])
		unix.Close(sp[1])
		return nil, fmt.Errorf("exec helper: %w", err)
	}
	files := make([]uintptr, 0, 4+slots)
	for i := 0; i < 3+slots; i++ {
		files = append(files, uintptr(null))
	}
	files = append(files, uintptr(sp[1]))
	pidfd := -1
	pid, err := syscall.ForkExec("/proc/self/exe", []string{HelperArg, HelperArg, strconv.Itoa(slots)}, &syscall.ProcAttr{
		Dir:   "/",
		Env:   []string{},
		Files: files,
		Sys:   &syscall.SysProcAttr{Setsid: true, PidFD: &pidfd},
	})
	unix.Close(null)
	unix.Close(sp[1])
	if err != nil {
		unix.Close(sp[0])
		return nil, fmt.Errorf("exec helper: %w", err)
	}
	if pidfd < 0 {
		h := &helperProc{pid: pid, pidfd: -1, ctrl: sp[0]}
		h.discard()
		return nil, errors.New("exec helper: the kernel gave no pidfd")
	}
	return &helperProc{pid: pid, pidfd: pidfd, ctrl: sp[0], slots: slots}, nil
}

// alive tells whether the helper still runs (it may have been killed while
// it waited).
func (h *helperProc) alive() bool {
	pfd := []unix.PollFd{{Fd: int32(h.pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, 0)
	return err == nil && n == 0
}

// discard kills and reaps the helper. It is our child and not reaped yet,
// so its pid cannot have been reused.
func (h *helperProc) discard() {
	_ = unix.Kill(h.pid, unix.SIGKILL)
	var ws unix.WaitStatus
	for {
		if _, err := unix.Wait4(h.pid, &ws, 0, nil); !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if h.pidfd >= 0 {
		unix.Close(h.pidfd)
	}
	unix.Close(h.ctrl)
}

// spareDelay is how long after a Start the next spare is started: not at
// once, where its Go runtime's start would compete for the CPU with the
// QEMU just started (measured: +10 ms to QMP on 2 busy cores), but once
// that QEMU is up.
var spareDelay = 500 * time.Millisecond

// spares keeps one helper started ahead, and ready, once Init has enabled
// it.
var spares struct {
	mu        sync.Mutex
	enabled   bool
	spare     *helperProc
	scheduled bool           // a refill is scheduled or running
	timer     *time.Timer    // the scheduled refill
	filling   sync.WaitGroup // counts the scheduled or running refill
}

// scheduleRefill starts a spare after delay, unless spares are disabled,
// there is one, or one is on its way.
func scheduleRefill(delay time.Duration) {
	spares.mu.Lock()
	defer spares.mu.Unlock()
	if !spares.enabled || spares.spare != nil || spares.scheduled {
		return
	}
	spares.scheduled = true
	spares.filling.Add(1)
	spares.timer = time.AfterFunc(delay, refill)
}

// refill starts a spare and waits until it is ready. It runs once for
// each scheduleRefill that got through.
func refill() {
	defer spares.filling.Done()
	h, err := spawnHelper(helperSlots)
	if err == nil {
		if err = h.waitReady(); err != nil {
			h.discard()
		}
	}
	spares.mu.Lock()
	defer spares.mu.Unlock()
	spares.scheduled, spares.timer = false, nil
	if err != nil {
		return
	}
	if spares.enabled && spares.spare == nil {
		spares.spare = h
	} else {
		h.discard()
	}
}

// flushSpares runs a scheduled refill now and waits until no refill is
// pending (for tests and benchmarks).
func flushSpares() {
	spares.mu.Lock()
	t := spares.timer
	spares.mu.Unlock()
	if t != nil && t.Stop() {
		refill()
	}
	spares.filling.Wait()
}

// takeHelper returns a helper with room for nfiles ExtraFiles: the spare
// if there is one, or one started now. A new spare is scheduled.
func takeHelper(nfiles int) (*helperProc, error) {
	if nfiles <= helperSlots {
		spares.mu.Lock()
		h := spares.spare
		spares.spare = nil
		spares.mu.Unlock()
		scheduleRefill(spareDelay)
		if h != nil && h.alive() {
			return h, nil
		}
		if h != nil {
			h.discard()
		}
	}
	return spawnHelper(max(nfiles, helperSlots))
}
