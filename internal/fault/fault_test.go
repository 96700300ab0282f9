package fault

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct{ in, step, action string }{
		{"", "", "kill"},
		{"start.spawned", "start.spawned", "kill"},
		{" define.synced:kill ", "define.synced", "kill"},
		{"start.spawned:qemu-stop", "start.spawned", "qemu-stop"},
		{"save.paused:qemu-kill", "save.paused", "qemu-kill"},
	} {
		s, a := parse(tc.in)
		if s != tc.step || a != tc.action {
			t.Errorf("parse(%q) = %q, %q; want %q, %q", tc.in, s, a, tc.step, tc.action)
		}
	}
}

// TestPointPid: another step's name does nothing; the named step stops the
// given process once, and only once.
func TestPointPid(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	defer cmd.Process.Kill()
	step, action = "x.y", "qemu-stop"
	defer func() { step, action = parse("") }()
	PointPid("x.z", cmd.Process.Pid)
	if stopped(cmd.Process.Pid) {
		t.Fatal("another step stopped the process")
	}
	PointPid("x.y", cmd.Process.Pid)
	deadline := time.Now().Add(time.Minute)
	for !stopped(cmd.Process.Pid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !stopped(cmd.Process.Pid) {
		t.Fatal("the named step did not stop the process")
	}
	syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
	PointPid("x.y", cmd.Process.Pid) // fired already: nothing
	time.Sleep(50 * time.Millisecond)
	if stopped(cmd.Process.Pid) {
		t.Error("the step fired twice")
	}
}

func stopped(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	st := string(data)
	i := strings.LastIndexByte(st, ')')
	return i >= 0 && i+2 < len(st) && st[i+2] == 'T'
}
