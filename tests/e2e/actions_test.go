package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// withActions adds top-level elements (on_poweroff, on_reboot, on_crash)
// to a GuestXML, where libvirt puts them: before <devices>.
func withActions(xml, elems string) string {
	return strings.Replace(xml, "  <devices>", "  "+elems+"\n  <devices>", 1)
}

// panicDevice lets QEMU see a guest panic (GUEST_PANICKED).
const panicDevice = "    <panic model='isa'/>"

// TestKilledExternally: QEMU killed by someone else while mounted is a
// crash, and error says QEMU ended unexpectedly.
func TestKilledExternally(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	harness.WaitKill(m.Pid("g"), syscall.SIGKILL)
	m.WaitState("g", "shut off (crashed)", boot)
	if msg := m.ErrorOf("g"); !strings.Contains(msg, "QEMU ended unexpectedly") || !strings.Contains(msg, "killed") {
		t.Errorf("error = %q, want it to say QEMU ended unexpectedly (killed)", msg)
	}
	if left := m.RuntimeFiles("g"); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if log := m.QEMULog("g"); !strings.Contains(log, "shutting down, reason=crashed") {
		t.Errorf("log lacks the crash:\n%s", log)
	}
}

// TestQMPQuit: quit through monitor/qmp is a shutdown, as in libvirt.
func TestQMPQuit(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	reply, err := m.QMP("g", `{"execute":"quit"}`, time.Minute)
	if err != nil || !strings.Contains(reply, `"return"`) {
		t.Errorf("quit: %q, %v", reply, err)
	}
	m.WaitState("g", "shut off (shutdown)", boot)
	if msg := m.ErrorOf("g"); msg != "" {
		t.Errorf("error after quit = %q", msg)
	}
}

// TestOnPoweroffRestart: a guest that powers off with on_poweroff=restart
// comes back in a new QEMU. The restart uses the persistent definition, so
// the test redefines the guest to stay up once restarted.
func TestOnPoweroffRestart(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Define("g", withActions(harness.GuestXML(t, "g", guest.ActionPoweroff, ""), "<on_poweroff>restart</on_poweroff>"))
	m.MustCtl("g", "start")
	pid := m.Pid("g")
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	if !strings.Contains(m.Read("g", "live.xml"), "qemufs.action=poweroff") {
		t.Error("live.xml changed with the redefinition")
	}
	m.WaitPid("g", pid, boot)
	if got := m.State("g"); got != "running (booted)" {
		t.Errorf("state after restart = %q", got)
	}
	if harness.Alive(pid) {
		t.Errorf("the first QEMU %d is still alive", pid)
	}
	m.WaitConsole("g", g.ReadyLine, boot)
	if strings.Contains(m.Read("g", "live.xml"), "qemufs.action=poweroff") {
		t.Error("the restart did not use the new definition")
	}
	m.MustCtl("g", "destroy")
}

// TestOnRebootDestroy: a guest that reboots with on_reboot=destroy ends.
func TestOnRebootDestroy(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("g", withActions(harness.GuestXML(t, "g", guest.ActionReboot, ""), "<on_reboot>destroy</on_reboot>"))
	m.MustCtl("g", "start")
	pid := m.Pid("g")
	m.WaitState("g", "shut off (shutdown)", boot)
	if harness.Alive(pid) {
		t.Errorf("QEMU %d still alive", pid)
	}
	if msg := m.ErrorOf("g"); msg != "" {
		t.Errorf("error = %q", msg)
	}
}

// TestOnCrash: a guest panic with on_crash=preserve keeps QEMU, crashed
// (panicked); with on_crash=destroy it ends, shut off (crashed).
func TestOnCrash(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("p", withActions(harness.GuestXML(t, "p", guest.ActionPanic, panicDevice), "<on_crash>preserve</on_crash>"))
	m.Define("d", withActions(harness.GuestXML(t, "d", guest.ActionPanic, panicDevice), "<on_crash>destroy</on_crash>"))
	m.MustCtl("p", "start")
	m.MustCtl("d", "start")
	pp, pd := m.Pid("p"), m.Pid("d")

	m.WaitState("p", "crashed (panicked)", boot)
	if !harness.Alive(pp) || m.Pid("p") != pp {
		t.Errorf("preserved QEMU %d gone (pid file says %d)", pp, m.Pid("p"))
	}
	m.WaitState("d", "shut off (crashed)", boot)
	if harness.Alive(pd) {
		t.Errorf("QEMU %d alive after on_crash=destroy", pd)
	}
	if log := m.QEMULog("d"); !strings.Contains(log, "panicked") {
		t.Errorf("d's log does not mention the panic:\n%s", log)
	}
	m.MustCtl("p", "destroy")
	if got := m.State("p"); got != "shut off (destroyed)" {
		t.Errorf("p after destroy = %q", got)
	}
}

// TestStateCommands: suspend, resume, reset and reboot change the state as
// libvirt does, in the same QEMU.
func TestStateCommands(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	m.MustCtl("g", "start")
	pid := m.Pid("g")
	m.WaitConsole("g", g.ReadyLine, boot)
	steps := []struct{ cmd, state string }{
		{"suspend", "paused (user)"},
		{"suspend", "paused (user)"},
		{"resume", "running (unpaused)"},
	}
	for _, s := range steps {
		m.MustCtl("g", s.cmd)
		if got := m.State("g"); got != s.state {
			t.Errorf("after %s: state %q, want %q", s.cmd, got, s.state)
		}
	}
	reply, err := m.QMP("g", `{"execute":"query-status"}`, time.Minute)
	if err != nil || !strings.Contains(reply, `"running"`) {
		t.Errorf("query-status after resume: %q, %v", reply, err)
	}

	m.MustCtl("g", "reset")
	m.WaitConsoleCount("g", g.ReadyLine, 2, boot)
	if got := m.State("g"); got != "running (unpaused)" {
		t.Errorf("after reset: state %q", got)
	}

	ev := m.Follow("g", "events")
	m.MustCtl("g", "reboot")
	m.WaitConsoleCount("g", g.ReadyLine, 3, boot)
	if got := m.State("g"); got != "running (booted)" {
		t.Errorf("after reboot: state %q", got)
	}
	if err := ev.Wait(`"rebooted"`, boot); err != nil {
		t.Error(err)
	}
	if got := ev.Stop(); strings.Contains(got, `"paused"`) || strings.Contains(got, `"stopped"`) {
		t.Errorf("events of a reboot:\n%s", got)
	}
	if got := m.Pid("g"); got != pid {
		t.Errorf("pid %d after the commands, was %d", got, pid)
	}
	m.MustCtl("g", "suspend")
	m.MustCtl("g", "shutdown --timeout=1")
	if got := m.State("g"); !strings.HasPrefix(got, "shut off") {
		t.Errorf("after shutdown of a paused guest: %q", got)
	}
}

// TestAutostart: a domain marked autostart starts when the instance is
// mounted; unmarked, it stays off.
func TestAutostart(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	m.MustCtl("g", "autostart on")
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if got := m.State("g"); got != "running (booted)" {
		t.Fatalf("state after mount = %q (error: %s)", got, m.ErrorOf("g"))
	}
	m.TrackPid(m.Pid("g"))
	m.WaitConsole("g", g.ReadyLine, boot)
	m.MustCtl("g", "destroy")
	m.MustCtl("g", "autostart off")
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if got := m.State("g"); !strings.HasPrefix(got, "shut off") {
		t.Errorf("state after mount with autostart off = %q", got)
	}
}

// TestAutodestroy: a guest started with --autodestroy ends with the mount,
// whether it is unmounted or its daemon dies.
func TestAutodestroy(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	m.Define("k", harness.GuestXML(t, "k", guest.ActionNone, ""))
	m.MustCtl("g", "start --autodestroy")
	m.MustCtl("k", "start")
	pid, keep := m.Pid("g"), m.Pid("k")
	m.WaitConsole("g", g.ReadyLine, boot)
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	if harness.Alive(pid) {
		t.Errorf("QEMU %d alive after unmount", pid)
	}
	if !harness.Alive(keep) {
		t.Errorf("QEMU %d of a guest without --autodestroy died with the unmount", keep)
	}
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	// As libvirt: a new daemon knows no reason for a domain that was off.
	if got := m.State("g"); got != "shut off (unknown)" {
		t.Errorf("state after remount = %q", got)
	}
	if log := m.QEMULog("g"); !strings.Contains(log, "shutting down, reason=destroyed") {
		t.Errorf("log lacks the destroy:\n%s", log)
	}
	if got := m.State("k"); got != "running (booted)" {
		t.Errorf("k after remount = %q", got)
	}

	// The daemon dies instead: the next one destroys the guest.
	m.MustCtl("g", "start --autodestroy")
	pid = m.Pid("g")
	m.KillDaemon()
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if got := m.State("g"); got != "shut off (destroyed)" {
		t.Errorf("state after kill -9 and mount = %q", got)
	}
	if harness.Alive(pid) {
		t.Errorf("QEMU %d alive after kill -9 and mount", pid)
	}
	if left := m.RuntimeFiles("g"); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	m.MustCtl("k", "destroy")
}
