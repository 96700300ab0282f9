package e2e

import (
	"testing"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// boot is generous: TCG on a loaded 2-core machine.
const boot = harness.BootTimeout

// TestLifecycle boots the test guest through the mount: define, start, see
// the ready line on the console, shut down by ACPI, start again, destroy,
// redefine, undefine.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	if got := m.State("g"); got != "shut off (unknown)" {
		t.Fatalf("state after define = %q", got)
	}
	m.MustCtl("g", "start")
	if got := m.State("g"); got != "running (booted)" {
		t.Fatalf("state after start = %q", got)
	}
	m.WaitConsole("g", g.ReadyLine, boot)
	m.MustCtl("g", "shutdown")
	if got := m.State("g"); got != "shut off (shutdown)" {
		t.Fatalf("state after shutdown = %q", got)
	}
	m.MustCtl("g", "start")
	m.WaitConsole("g", g.ReadyLine, boot)
	m.MustCtl("g", "destroy")
	if got := m.State("g"); got != "shut off (destroyed)" {
		t.Fatalf("state after destroy = %q", got)
	}
	m.Define("g", harness.GuestXML(t, "g", guest.ActionPoweroff, ""))
	m.MustCtl("g", "start")
	m.WaitState("g", "shut off (shutdown)", boot)
	if err := m.Remove("g"); err != nil {
		t.Fatal(err)
	}
	if m.Exists("g") {
		t.Fatal("g still listed after rmdir")
	}
}
