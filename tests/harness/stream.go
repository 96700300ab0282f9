package harness

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Pid is the pid of the follower's reader process.
func (f *Follower) Pid() int { return f.cmd.Process.Pid }

// WaitEnd waits until the stream ended (the reader saw EOF and exited).
func (f *Follower) WaitEnd(timeout time.Duration) error {
	select {
	case <-f.done:
		if !f.cmd.ProcessState.Success() {
			return fmt.Errorf("reader of the stream failed (%v): %q", f.cmd.ProcessState, f.String())
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("stream did not end within %v: %q", timeout, f.String())
	}
}

// WaitBlocked waits until the follower is blocked reading its stream.
func (f *Follower) WaitBlocked(t testing.TB) {
	t.Helper()
	if err := WaitBlockedRead(f.Pid(), time.Minute); err != nil {
		t.Fatal(err)
	}
}

// WaitBlockedRead waits until the thread tid (a process's pid for a
// single-threaded process) sleeps in read(2), which for a stream of the
// tree means it waits for data from qemufs.
func WaitBlockedRead(tid int, timeout time.Duration) error {
	return WaitBlockedIn(tid, syscall.SYS_READ, timeout)
}

// WaitBlockedIn waits until the thread tid sleeps in the system call nr
// (syscall.SYS_READ, syscall.SYS_WRITE...).
func WaitBlockedIn(tid, nr int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if blockedIn(tid, nr) {
			return nil
		}
		if time.Now().After(deadline) {
			sc, _ := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", tid))
			return fmt.Errorf("thread %d not blocked in system call %d after %v (/proc/%d/syscall: %q)", tid, nr, timeout, tid, sc)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// blockedIn reads /proc/TID/syscall (the number of the system call
// the thread is in) and /proc/TID/stat (S: sleeping).
func blockedIn(tid, want int) bool {
	sc, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", tid))
	if err != nil {
		return false
	}
	nr, _, _ := strings.Cut(string(sc), " ")
	if n, err := strconv.Atoi(nr); err != nil || n != want {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", tid))
	if err != nil {
		return false
	}
	s := string(st)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'S'
}
