package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tracker remembers every QEMU the bench caused to run, by pid and start
// time, so that cleanup can end exactly those and nothing else.
type tracker struct {
	mu   sync.Mutex
	pids map[int]uint64 // pid -> start time (clock ticks since boot)
}

var procs = &tracker{pids: map[int]uint64{}}

// add records pid if it is a running QEMU.
func (t *tracker) add(pid int) {
	st, ok := startTime(pid)
	if !ok || !isQEMU(pid) {
		return
	}
	t.mu.Lock()
	t.pids[pid] = st
	t.mu.Unlock()
}

// addPidFiles records the QEMUs named by the pid files matching glob.
func (t *tracker) addPidFiles(glob string) {
	paths, _ := filepath.Glob(glob)
	for _, p := range paths {
		if pid := readPid(p); pid > 0 {
			t.add(pid)
		}
	}
}

// alive returns the recorded QEMUs that still run.
func (t *tracker) alive() []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []int
	for pid, st := range t.pids {
		if cur, ok := startTime(pid); ok && cur == st {
			out = append(out, pid)
		} else {
			delete(t.pids, pid)
		}
	}
	return out
}

// killAll ends every recorded QEMU still running (SIGKILL by pidfd).
func (t *tracker) killAll() int {
	pids := t.alive()
	for _, pid := range pids {
		killWait(pid, syscall.SIGKILL, 10*time.Second)
	}
	return len(pids)
}

func readPid(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return n
}

// startTime reads field 22 of /proc/PID/stat, which tells a pid's process
// from a later one that got the same pid.
func startTime(pid int) (uint64, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, false
	}
	if f[0] == "Z" {
		return 0, false
	}
	n, err := strconv.ParseUint(f[19], 10, 64)
	return n, err == nil
}

// isQEMU guards against signalling a recycled pid.
func isQEMU(pid int) bool {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return err == nil && strings.Contains(filepath.Base(exe), "qemu")
}

// killWait signals pid through a pidfd and waits until it has exited.
func killWait(pid int, sig syscall.Signal, timeout time.Duration) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	unix.PidfdSendSignal(fd, sig, nil, 0)
	waitPidfd(fd, timeout)
}

// waitPidfd waits until the process of pidfd fd has exited; it reports
// whether it did within timeout.
func waitPidfd(fd int, timeout time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		n, err := unix.Poll(fds, int(left/time.Millisecond)+1)
		if n > 0 {
			return true
		}
		if err != nil && err != unix.EINTR {
			return false
		}
	}
}

// vmRSS is a process's resident set size in KiB, from /proc/PID/status.
func vmRSS(pid int) int {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
	}
	return 0
}

// removeCgroupPartitions removes the cgroup directories that qemufs made
// for the embedded instance at root ("qemufs-embed-HASH", below the
// daemon's cgroup, which is the bench's) once they are empty: qemufs
// leaves the instance's partition behind at unmount, and a guest's own
// cgroup when its daemon was killed. rmdir only: a cgroup with processes
// stays.
func removeCgroupPartitions(root string) {
	sum := sha256.Sum256([]byte(filepath.Clean(root)))
	name := "qemufs-embed-" + hex.EncodeToString(sum[:6])
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return
	}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		ctrl := strings.TrimPrefix(f[1], "name=")
		if ctrl == "" {
			ctrl = "unified"
			if _, err := os.Stat("/sys/fs/cgroup/unified"); err != nil {
				ctrl = ""
			}
		}
		for _, c := range strings.Split(ctrl, ",") {
			dir := filepath.Join("/sys/fs/cgroup", c, f[2], name)
			guests, _ := filepath.Glob(filepath.Join(dir, "*.qemu"))
			for _, g := range guests {
				os.Remove(g)
			}
			os.Remove(dir)
		}
	}
}
