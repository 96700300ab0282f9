package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// TestAgent: the booted test guest runs qemu-ga on its agent channel.
// NAME/agent passes commands through (guest-ping, guest-info, a shell's
// exec 3<> session), taints the domain custom-ga-command; NAME/interfaces
// shows the guest's addresses from the agent once udhcpc configured eth0;
// a re-attached daemon reaches the agent again; reboot --mode=agent reboots the guest and shutdown --mode=agent powers
// it off.
func TestAgent(t *testing.T) {
	t.Parallel()
	const mac = "52:54:00:aa:bb:01"
	m := harness.Start(t, harness.Options{})
	m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, harness.AgentDevices(mac)))

	if strings.Contains(m.Read("g", "live.xml"), "custom-ga-command") {
		t.Error("live.xml tainted before any agent use")
	}
	live := m.Read("g", "live.xml")
	if !strings.Contains(live, ".d/org.qemu.guest_agent.0'") && !strings.Contains(live, `.d/org.qemu.guest_agent.0"`) {
		t.Errorf("live.xml does not show the agent socket:\n%s", live)
	}
	// qemu-ga opened its port (QEMU's VSERPORT_CHANGE): live.xml says so.
	if err := waitLive(m, "g", "org.qemu.guest_agent.0' state='connected'"); err != nil {
		t.Error(err)
	}
	m.WaitAgent("g", harness.BootTimeout)
	got, err := m.Agent("g", `{"execute":"guest-ping"}`, reply)
	if err != nil {
		t.Fatal(err)
	}
	if got != `{"return": {}}` {
		t.Errorf("guest-ping: %q", got)
	}
	got, err = m.Agent("g", `{"execute":"guest-info"}`, reply)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Return struct {
			Version  string `json:"version"`
			Commands []struct {
				Name string `json:"name"`
			} `json:"supported_commands"`
		} `json:"return"`
	}
	if err := json.Unmarshal([]byte(got), &info); err != nil || info.Return.Version == "" || len(info.Return.Commands) == 0 {
		t.Errorf("guest-info: %.200s (%v)", got, err)
	}
	t.Logf("qemu-ga %s, %d commands", info.Return.Version, len(info.Return.Commands))
	if !strings.Contains(m.Read("g", "live.xml"), "custom-ga-command") {
		t.Error("live.xml lacks the custom-ga-command taint")
	}
	if !strings.Contains(m.QEMULog("g"), "tainted: custom-ga-command") {
		t.Error("log lacks the custom-ga-command taint")
	}

	// A shell session on one descriptor; an agent error is a reply.
	out, err := bash(time.Minute, `exec 3<>"$1"
echo '{"execute":"guest-ping"}' >&3; head -1 <&3
echo '{"execute":"guest-no-such-command"}' >&3; head -1 <&3`, m.Path("g", "agent"))
	if err != nil {
		t.Fatalf("shell session: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || lines[0] != `{"return": {}}` || !strings.Contains(lines[1], `"CommandNotFound"`) {
		t.Errorf("shell session: %q", out)
	}
	// Garbage is refused with EINVAL and a reason.
	err = m.Send("not json\n", "g", "agent")
	if !errors.Is(err, syscall.EINVAL) || !strings.Contains(m.ErrorOf("g"), "agent: expected a JSON object") {
		t.Errorf("garbage: %v (error: %s)", err, m.ErrorOf("g"))
	}

	// Round trip through the mount (a sync and the command), for the record.
	f, err := os.OpenFile(m.Path("g", "agent"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var rtts []time.Duration
	buf := make([]byte, 4096)
	for i := 0; i < 20; i++ {
		t0 := time.Now()
		if _, err := f.WriteString(`{"execute":"guest-ping"}`); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Read(buf); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(t0))
	}
	f.Close()
	t.Logf("agent guest-ping round trip through the mount: median %.3f ms over %d", medianMillis(rtts), len(rtts))

	// Addresses: lo at once, eth0 once DHCP configured it.
	if err := m.Send("udhcpc -i eth0 -n -q -t 20 && echo DHCP-$((40+2))\n", "g", "console"); err != nil {
		t.Fatal(err)
	}
	m.WaitConsole("g", "DHCP-42", harness.BootTimeout)
	ifs := m.Read("g", "interfaces")
	for _, want := range []string{"lo 00:00:00:00:00:00 ipv4 127.0.0.1/8\n", "eth0 " + mac + " ipv4 10.0.2.15/24\n"} {
		if !strings.Contains(ifs, want) {
			t.Errorf("interfaces lacks %q:\n%s", want, ifs)
		}
	}

	// A new daemon (the old one killed under the guest) reaches the
	// agent through the same socket.
	m.KillDaemon()
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Agent("g", `{"execute":"guest-ping"}`, reply); err != nil || got != `{"return": {}}` {
		t.Errorf("guest-ping after re-attach: %q, %v", got, err)
	}

	// reboot --mode=agent: the guest reboots itself (the ready line again).
	m.MustCtl("g", "reboot --mode=agent")
	m.WaitConsoleCount("g", guest.ReadyLine, 2, harness.BootTimeout)
	if st := m.State("g"); st != "running (booted)" {
		t.Errorf("state after reboot --mode=agent: %s", st)
	}
	if !strings.Contains(m.QEMULog("g"), "guest-shutdown mode=reboot") {
		t.Error("log does not say how the reboot was asked for")
	}

	m.MustCtl("g", "shutdown --mode=agent")
	if st := m.State("g"); st != "shut off (shutdown)" {
		t.Errorf("state after shutdown --mode=agent: %s", st)
	}
	if !strings.Contains(m.QEMULog("g"), "guest-shutdown mode=powerdown") {
		t.Error("log does not say how the shutdown was asked for")
	}
}

// TestAgentAbsent: a guest whose agent does not answer (qemu-ga stopped
// with SIGSTOP: the channel is open, nobody reads it) gives EIO "guest
// agent is not responding" within the sync timeout, the same when the
// agent is gone (the channel closed: at once), and shutdown --mode=agent
// fails without touching the guest, while acpi,agent falls back to the
// power button. A guest without the channel has no agent (ENODEV).
func TestAgentAbsent(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("bare", bareXML("bare", ""))
	m.MustCtl("bare", "start --paused")
	if _, err := os.OpenFile(m.Path("bare", "agent"), os.O_RDWR, 0); !errors.Is(err, syscall.ENODEV) ||
		!strings.Contains(m.ErrorOf("bare"), "no guest agent channel") {
		t.Errorf("agent of a guest without the channel: %v (error: %s), want ENODEV", err, m.ErrorOf("bare"))
	}
	if err := m.Ctl("bare", "shutdown --mode=agent"); !errors.Is(err, syscall.ENODEV) {
		t.Errorf("shutdown --mode=agent without the channel: %v, want ENODEV", err)
	}
	if ifs, err := os.ReadFile(m.Path("bare", "interfaces")); err != nil || len(ifs) != 0 {
		t.Errorf("interfaces of a guest without agent or addresses: %q, %v", ifs, err)
	}
	m.MustCtl("bare", "destroy")

	m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, harness.AgentDevices("52:54:00:aa:bb:02")))
	m.WaitAgent("g", harness.BootTimeout)
	// The shell prints the marker only after kill returned.
	m.Send("kill -STOP $(pidof qemu-ga) && echo STOPPED-$((1+1))\n", "g", "console")
	m.WaitConsole("g", "STOPPED-2", harness.BootTimeout)
	start := time.Now()
	_, err := m.Agent("g", `{"execute":"guest-ping"}`, time.Minute)
	took := time.Since(start)
	if !errors.Is(err, syscall.EIO) || !strings.Contains(m.ErrorOf("g"), "guest agent is not responding") {
		t.Fatalf("stopped agent: %v (error: %s), want EIO not responding", err, m.ErrorOf("g"))
	}
	t.Logf("stopped agent: %s after %v", m.ErrorOf("g"), took.Round(time.Millisecond))
	if err := m.Ctl("g", "shutdown --mode=agent"); !errors.Is(err, syscall.EIO) {
		t.Errorf("shutdown --mode=agent with a stopped agent: %v, want EIO", err)
	}
	if st := m.State("g"); st != "running (booted)" {
		t.Errorf("state after the failed agent shutdown: %s", st)
	}

	m.Send("kill -CONT $(pidof qemu-ga) && echo CONT-$((1+1))\n", "g", "console")
	m.WaitConsole("g", "CONT-2", harness.BootTimeout)
	m.WaitAgent("g", harness.BootTimeout) // after SIGCONT
	m.Send("kill $(pidof qemu-ga); sleep 1; echo KILLED-$((1+1))\n", "g", "console")
	m.WaitConsole("g", "KILLED-2", harness.BootTimeout)
	if err := waitLive(m, "g", "org.qemu.guest_agent.0' state='disconnected'"); err != nil {
		t.Error(err)
	}
	if _, err := m.Agent("g", `{"execute":"guest-ping"}`, time.Minute); !errors.Is(err, syscall.EIO) ||
		!strings.Contains(m.ErrorOf("g"), "guest agent is not responding") {
		t.Errorf("agent gone: %v (error: %s)", err, m.ErrorOf("g"))
	}
	// interfaces: the agent fails and user-mode networking has no other
	// source, so its error shows.
	if _, err := os.ReadFile(m.Path("g", "interfaces")); !errors.Is(err, syscall.EIO) {
		t.Errorf("interfaces without an agent: %v, want EIO", err)
	}
	m.MustCtl("g", "shutdown --mode=acpi,agent")
	if st := m.State("g"); st != "shut off (shutdown)" {
		t.Errorf("state after shutdown --mode=acpi,agent: %s", st)
	}
	if !strings.Contains(m.QEMULog("g"), "pressing the ACPI power button") {
		t.Error("log does not show the fallback to ACPI")
	}
}

// TestAgentConfined: the agent works for a confined guest of the system
// instance (QEMU as the unprivileged qemu user in its own namespace,
// creating the channel socket in the run's directory).
func TestAgentConfined(t *testing.T) {
	t.Parallel()
	const mac = "52:54:00:aa:bb:03"
	m := harness.Start(t, harness.Options{System: true})
	m.Boot("c", harness.GuestXML(t, "c", guest.ActionNone, harness.AgentDevices(mac)))
	m.WaitAgent("c", harness.BootTimeout)
	if got, err := m.Agent("c", `{"execute":"guest-ping"}`, reply); err != nil || got != `{"return": {}}` {
		t.Fatalf("guest-ping: %q, %v", got, err)
	}
	if ifs := m.Read("c", "interfaces"); !strings.Contains(ifs, "lo 00:00:00:00:00:00 ipv4 127.0.0.1/8\n") || !strings.Contains(ifs, "eth0 "+mac+" N/A N/A\n") {
		t.Errorf("interfaces before DHCP:\n%s", ifs)
	}
	m.MustCtl("c", "shutdown --mode=agent")
	if st := m.State("c"); st != "shut off (shutdown)" {
		t.Errorf("state after shutdown --mode=agent: %s", st)
	}
}

// waitLive waits until NAME/live.xml contains want (with either quote).
func waitLive(m *harness.Mount, name, want string) error {
	alt := strings.ReplaceAll(want, "'", `"`)
	deadline := time.Now().Add(harness.BootTimeout)
	for {
		live := m.Read(name, "live.xml")
		if strings.Contains(live, want) || strings.Contains(live, alt) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("live.xml of %s lacks %q:\n%s", name, want, live)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
