package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// echoOnConsole makes the guest's shell print hello-N on its console and waits for
// it. The quotes keep the shell's echo of the typed line from matching.
func echoOnConsole(t *testing.T, m *harness.Mount, name string, n int) {
	t.Helper()
	if err := m.Send(fmt.Sprintf("echo hel''lo-%d\n", n), name, "console"); err != nil {
		t.Fatalf("write console: %v (error: %s)", err, m.ErrorOf(name))
	}
	m.WaitConsole(name, fmt.Sprintf("hello-%d", n), boot)
}

// TestReattach kills the daemon with SIGKILL under a running guest and
// mounts again: the new daemon takes the guest over (same pid, QMP and
// console work) and can shut it down cleanly.
func TestReattach(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	echoOnConsole(t, m, "g", 1)
	pid := m.Pid("g")

	m.KillDaemon()
	if !harness.Alive(pid) {
		t.Fatal("QEMU died with the daemon")
	}
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if got := m.State("g"); got != "running (booted)" {
		t.Errorf("state after re-attach = %q (error: %s)", got, m.ErrorOf("g"))
	}
	if got := m.Pid("g"); got != pid {
		t.Errorf("pid after re-attach = %d, was %d", got, pid)
	}
	reply, err := m.QMP("g", `{"execute":"query-status"}`, time.Minute)
	if err != nil || !strings.Contains(reply, `"running"`) {
		t.Errorf("query-status after re-attach: %q, %v", reply, err)
	}
	echoOnConsole(t, m, "g", 2)
	if !strings.Contains(m.QEMULog("g"), "re-attached") {
		t.Errorf("log does not record the re-attach:\n%s", m.QEMULog("g"))
	}

	m.MustCtl("g", "shutdown")
	if got := m.State("g"); got != "shut off (shutdown)" {
		t.Errorf("state after shutdown = %q", got)
	}
	if harness.Alive(pid) {
		t.Errorf("QEMU %d still alive after shutdown", pid)
	}
	if left := m.RuntimeFiles("g"); len(left) > 0 {
		t.Errorf("left behind after shutdown: %v", left)
	}
}

// TestReattachDead kills the daemon, then QEMU while no daemon runs: the
// next mount finds the guest gone, shut off (crashed), says why in error
// and cleans up its runtime files.
func TestReattachDead(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	pid := m.Pid("g")

	m.KillDaemon()
	harness.WaitKill(pid, syscall.SIGKILL)
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if got := m.State("g"); got != "shut off (crashed)" {
		t.Errorf("state = %q, want shut off (crashed)", got)
	}
	msg := m.ErrorOf("g")
	if !strings.Contains(msg, fmt.Sprint(pid)) || !strings.Contains(msg, "not running") {
		t.Errorf("error = %q, want it to say QEMU %d ended while qemufs was not running", msg, pid)
	}
	if got := m.Pid("g"); got != 0 {
		t.Errorf("pid = %d for a dead guest", got)
	}
	if left := m.RuntimeFiles("g"); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	// It starts again normally.
	m.MustCtl("g", "start")
	m.WaitConsole("g", g.ReadyLine, boot)
	m.MustCtl("g", "destroy")
}

// TestReattachPaused: a guest paused by the user is still paused (user)
// after the daemon was killed and mounted again, and resumes.
func TestReattachPaused(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	m.MustCtl("g", "start --paused")
	pid := m.Pid("g")
	m.KillDaemon()
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if got := m.State("g"); got != "paused (user)" {
		t.Errorf("state after re-attach = %q", got)
	}
	m.MustCtl("g", "resume")
	m.WaitConsole("g", g.ReadyLine, boot)
	if got := m.Pid("g"); got != pid {
		t.Errorf("pid %d, was %d", got, pid)
	}
	m.MustCtl("g", "destroy")
}

// TestReattachStoppedUnseen: a guest that powered off or panicked while
// no daemon ran is left by QEMU stopped (-no-shutdown, -action
// panic=pause); the next daemon honours on_poweroff / on_crash, as libvirt
// does when it reconnects.
func TestReattachStoppedUnseen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		action  guest.Action
		extra   string // devices
		elems   string // actions
		qemu    string // QEMU's run state once the guest acted
		state   string
		running bool // QEMU kept
	}{
		{"poweroff", guest.ActionPoweroff, "", "", "shutdown", "shut off (shutdown)", false},
		{"panic-preserve", guest.ActionPanic, panicDevice, "<on_crash>preserve</on_crash>", "guest-panicked", "crashed (panicked)", true},
		{"panic-destroy", guest.ActionPanic, panicDevice, "<on_crash>destroy</on_crash>", "guest-panicked", "shut off (crashed)", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := harness.Start(t, harness.Options{})
			m.Define("g", withActions(harness.GuestXML(t, "g", tc.action, tc.extra), tc.elems))
			m.MustCtl("g", "start")
			pid := m.Pid("g")
			m.KillDaemon()
			sock := filepath.Join(m.RunDir, "g.qmp")
			deadline := time.Now().Add(boot)
			for {
				reply, err := harness.QMPSocket(sock, `{"execute":"query-status"}`, 10*time.Second)
				if err == nil && strings.Contains(reply, `"`+tc.qemu+`"`) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("guest not in %s after %v: %q, %v", tc.qemu, boot, reply, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err := m.Mount(); err != nil {
				t.Fatal(err)
			}
			m.WaitState("g", tc.state, boot)
			if harness.Alive(pid) != tc.running {
				t.Errorf("QEMU %d alive: %v, want %v", pid, harness.Alive(pid), tc.running)
			}
			if !tc.running {
				if left := m.RuntimeFiles("g"); len(left) > 0 {
					t.Errorf("left behind: %v", left)
				}
			}
		})
	}
}
