package fsnode

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// benignSignals are signals a process handles without meaning "stop what
// you are doing": SIGCHLD (a shell's child ended), SIGURG (Go's goroutine
// preemption), SIGWINCH and SIGCONT. The kernel sends FUSE an interrupt
// for any handled signal, so a waiting ctl write would fail with EINTR
// whenever a shell's background job ends or the Go runtime preempts.
const benignSignals = 1<<(17-1) | 1<<(23-1) | 1<<(28-1) | 1<<(18-1)

// interruptPoll is how often, after an interrupt that came from a benign
// signal, the caller is checked for a signal that does mean stop: the
// kernel sends one interrupt per request, so a later Ctrl-C shows only in
// the caller's pending signals.
const interruptPoll = 50 * time.Millisecond

// userInterrupts returns a context that is cancelled when the FUSE request
// of ctx is interrupted by a signal other than a benign one, so that a
// command waiting for a guest ends on Ctrl-C but not on SIGCHLD.
func userInterrupts(ctx context.Context) (context.Context, context.CancelFunc) {
	fc, ok := ctx.(*fuse.Context)
	if !ok {
		return context.WithCancel(ctx)
	}
	pid := int(fc.Caller.Pid)
	out, cancel := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		select {
		case <-ctx.Done():
		case <-out.Done():
			return
		}
		t := time.NewTicker(interruptPoll)
		defer t.Stop()
		for {
			if stopSignalPending(pid) {
				cancel()
				return
			}
			select {
			case <-t.C:
			case <-out.Done():
				return
			}
		}
	}()
	return out, cancel
}

// stopSignalPending reports whether process pid has a pending, unblocked
// signal other than the benign ones; when it cannot tell, it says yes.
func stopSignalPending(pid int) bool {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return true
	}
	defer f.Close()
	var pending, blocked uint64
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		switch k {
		case "SigPnd", "ShdPnd":
			if err != nil {
				return true
			}
			pending |= n
		case "SigBlk":
			blocked = n
		}
	}
	return pending&^blocked&^benignSignals != 0
}
