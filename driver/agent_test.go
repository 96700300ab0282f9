package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qemufs/qemufs/agent"
	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/internal/agenttest"
)

// agentChannelXML is the guest agent channel as libvirt users write it.
const agentChannelXML = `<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`

// withDevices is minimalXML with more devices.
func withDevices(name, devs string) string {
	return strings.Replace(minimalXML(name), "</devices>", devs+"</devices>", 1)
}

// startBare defines and starts a firmware-only guest (no OS: QEMU is up
// in a fraction of a second) with extra devices, its CPUs running.
func startBare(t *testing.T, d *Driver, name, devs string) {
	t.Helper()
	if err := d.Create(name); err != nil {
		t.Fatal(err)
	}
	if err := d.Define(name, []byte(withDevices(name, devs))); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(context.Background(), name, "start"); err != nil {
		t.Fatal(err)
	}
}

// useFakeAgent points every run's agent at a fake qemu-ga, with short
// timeouts, for the rest of the test.
func useFakeAgent(t *testing.T) *agenttest.Server {
	s := agenttest.New(t)
	testAgentPath = func(*run) string { return s.Path }
	agentOptions = agent.Options{SyncTimeout: 500 * time.Millisecond, CommandTimeout: 2 * time.Second, NoReplyWait: 300 * time.Millisecond}
	t.Cleanup(func() {
		testAgentPath = nil
		agentOptions = agent.Options{}
	})
	return s
}

// session runs one command on an agent session and returns the reply line.
func agentCommand(t *testing.T, s *MonitorSession, cmd string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Write(ctx, []byte(cmd)); err != nil {
		return "", err
	}
	buf := make([]byte, 64<<10)
	n, err := s.Read(ctx, buf)
	return string(buf[:n]), err
}

func TestAgentSession(t *testing.T) {
	d := newDriver(t)
	fake := useFakeAgent(t)
	fake.Handle("guest-network-get-interfaces", agenttest.Return([]map[string]any{
		{"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": []map[string]any{
			{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8},
			{"ip-address-type": "ipv6", "ip-address": "::1", "prefix": 128}}},
		{"name": "eth0", "hardware-address": "52:54:00:12:34:56", "ip-addresses": []map[string]any{
			{"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24}}},
		{"name": "eth1", "hardware-address": "52:54:00:12:34:57"},
	}))
	startBare(t, d, "a", agentChannelXML)

	s, err := d.OpenAgent("a")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tests := []struct {
		cmd, want, wantErr string
		kind               error
	}{
		{cmd: `{"execute":"guest-ping"}`, want: `{"return":{}}` + "\n"},
		{cmd: "  {\"execute\":\"guest-info\"}\n", want: `{"return":{"supported_commands":[],"version":"7.2.22"}}` + "\n"},
		// An error of the agent is its reply, as for monitor/qmp.
		{cmd: `{"execute":"guest-nope"}`, want: `{"error": {"class": "CommandNotFound", "desc": "The command guest-nope has not been found"}}` + "\n"},
		{cmd: `[1]`, wantErr: "agent: expected a JSON object", kind: ErrInvalid},
		{cmd: `{"execute":`, wantErr: "", want: ""}, // incomplete: kept for the next write
		{cmd: `"guest-ping"}`, want: `{"return":{}}` + "\n"},
		{cmd: `{"arguments":{}}`, wantErr: `a command is a JSON object with "execute"`, kind: ErrInvalid},
	}
	for _, tc := range tests {
		if tc.want == "" && tc.wantErr == "" {
			if _, err := s.Write(context.Background(), []byte(tc.cmd)); err != nil {
				t.Fatalf("%s: %v", tc.cmd, err)
			}
			continue
		}
		got, err := agentCommand(t, s, tc.cmd)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, tc.kind) {
				t.Errorf("%s: want %v %q, got %v", tc.cmd, tc.kind, tc.wantErr, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s:\n- want: %q\n-  got: %q, %v", tc.cmd, tc.want, got, err)
		}
	}
	live, _ := d.LiveXML("a")
	if !strings.Contains(string(live), "custom-ga-command") {
		t.Errorf("live XML lacks the custom-ga-command taint:\n%s", live)
	}
	log, _ := d.LogPath("a")
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "tainted: custom-ga-command") {
		t.Errorf("log lacks the taint:\n%s", b)
	}
	// The live XML shows the agent socket in the run directory.
	sock := filepath.Join(d.runFiles("a").DomDir, AgentChannel)
	if !strings.Contains(string(live), "path=\""+sock+"\"") && !strings.Contains(string(live), "path='"+sock+"'") {
		t.Errorf("live XML lacks the agent socket %s:\n%s", sock, live)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("QEMU's agent socket: %v", err)
	}

	out, err := d.Interfaces(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	want := "lo 00:00:00:00:00:00 ipv4 127.0.0.1/8\nlo 00:00:00:00:00:00 ipv6 ::1/128\neth0 52:54:00:12:34:56 ipv4 10.0.2.15/24\neth1 52:54:00:12:34:57 N/A N/A\n"
	if string(out) != want {
		t.Errorf("interfaces:\n- want: %q\n-  got: %q", want, out)
	}

	// A paused guest's agent cannot answer: EBUSY, as libvirt.
	if err := d.Control(context.Background(), "a", "suspend"); err != nil {
		t.Fatal(err)
	}
	if _, err := agentCommand(t, s, `{"execute":"guest-ping"}`); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "the domain is paused") {
		t.Errorf("agent of a paused guest: %v", err)
	}
	if err := d.Control(context.Background(), "a", "resume"); err != nil {
		t.Fatal(err)
	}
	if got, err := agentCommand(t, s, `{"execute":"guest-ping"}`); err != nil || got != `{"return":{}}`+"\n" {
		t.Errorf("after resume: %q, %v", got, err)
	}

	// The session ends with the run.
	if err := d.Control(context.Background(), "a", "destroy"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(context.Background(), []byte(`{"execute":"guest-ping"}`)); !errors.Is(err, ErrBusy) {
		t.Errorf("write after the run ended: %v, want ErrBusy", err)
	}
	if _, err := d.OpenAgent("a"); !errors.Is(err, ErrBusy) {
		t.Errorf("open of a shut-off domain: %v, want ErrBusy", err)
	}
}

// TestAgentChannelErrors: no channel, or one qemufs cannot reach.
func TestAgentChannelErrors(t *testing.T) {
	d := newDriver(t)
	tests := []struct {
		name, devs, want string
		kind             error
	}{
		{"none", "", "the domain has no guest agent channel", ErrNoDevice},
		{"pty", `<channel type='pty'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`, "the guest agent channel is <channel type='pty'>", ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			startBare(t, d, tc.name, tc.devs)
			_, err := d.OpenAgent(tc.name)
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("OpenAgent: want %v %q, got %v", tc.kind, tc.want, err)
			}
			err = d.Control(context.Background(), tc.name, "shutdown --mode=agent")
			if !errors.Is(err, tc.kind) {
				t.Errorf("shutdown --mode=agent: want %v, got %v", tc.kind, err)
			}
			if st, _ := d.StateLine(tc.name); st != "running (booted)" {
				t.Errorf("state after a failed agent shutdown: %s", st)
			}
		})
	}
}

// TestAgentNotResponding: QEMU runs with the channel but nothing in the
// guest opened it (a firmware-only guest): the agent file and an agent
// shutdown fail at once with EIO "guest agent is not responding", and the
// guest keeps running. An agent that hangs gives the same after the sync
// timeout.
func TestAgentNotResponding(t *testing.T) {
	d := newDriver(t)
	startBare(t, d, "a", agentChannelXML)
	s, err := d.OpenAgent("a")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	_, err = agentCommand(t, s, `{"execute":"guest-ping"}`)
	if !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "guest agent is not responding") {
		t.Fatalf("want ErrIO not responding, got %v", err)
	}
	t.Logf("%v after %v", err, time.Since(start))
	if live, _ := d.LiveXML("a"); !strings.Contains(string(live), `state="disconnected"`) && !strings.Contains(string(live), `state='disconnected'`) {
		t.Errorf("live XML lacks the channel state disconnected:\n%s", live)
	}
	if err := d.Control(context.Background(), "a", "shutdown --mode=agent"); !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "not responding") {
		t.Errorf("shutdown --mode=agent: %v", err)
	}
	if err := d.Control(context.Background(), "a", "reboot --mode=agent"); !errors.Is(err, ErrIO) {
		t.Errorf("reboot --mode=agent: %v", err)
	}
	if st, _ := d.StateLine("a"); st != "running (booted)" {
		t.Errorf("state: %s", st)
	}

	fake := useFakeAgent(t)
	fake.SetSilent(true)
	startBare(t, d, "b", agentChannelXML)
	s2, err := d.OpenAgent("b")
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	_, err = agentCommand(t, s2, `{"execute":"guest-ping"}`)
	if !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "guest agent is not responding: no answer to guest-sync-delimited within 500ms") {
		t.Fatalf("silent agent: %v", err)
	}
	if _, err := d.Interfaces(context.Background(), "b"); !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "not responding") {
		t.Errorf("interfaces with a silent agent and no other source: %v", err)
	}
}

func TestShutdownModes(t *testing.T) {
	d := newDriver(t)
	fake := useFakeAgent(t)
	var modes []string
	// The fake's guest-shutdown "powers off": QEMU quits, as after a
	// guest poweroff, and answers nothing.
	fake.Handle("guest-shutdown", func(_ context.Context, req *agenttest.Request) agenttest.Response {
		modes = append(modes, string(req.Arguments))
		return agenttest.Response{None: true, Then: func(*agenttest.Request) {
			go func() {
				if dm, err := d.lookup("a"); err == nil {
					if r, err := dm.activeRun("x"); err == nil {
						r.mon.Execute(context.Background(), "quit", nil, nil)
					}
				}
			}()
		}}
	})
	startBare(t, d, "a", agentChannelXML)

	for _, bad := range []string{"shutdown --mode=initctl", "shutdown --mode=", "shutdown --mode=agent,bogus", "reboot --mode=signal", "reboot --now"} {
		err := d.Control(context.Background(), "a", bad)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: want ErrInvalid, got %v", bad, err)
		}
	}
	if err := d.Control(context.Background(), "a", "shutdown --mode=agent"); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.StateLine("a"); st != "shut off (shutdown)" {
		t.Errorf("state after shutdown --mode=agent: %s", st)
	}
	if len(modes) != 1 || modes[0] != `{"mode":"powerdown"}` {
		t.Errorf("guest-shutdown arguments: %v", modes)
	}

	// acpi,agent: an agent that fails falls back to the power button
	// (which a firmware-only guest ignores: --timeout destroys it).
	fake.Handle("guest-shutdown", func(context.Context, *agenttest.Request) agenttest.Response {
		return agenttest.Response{Error: &agenttest.CommandError{Class: "GenericError", Desc: "guest-shutdown has been disabled"}}
	})
	if err := d.Control(context.Background(), "a", "start"); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(context.Background(), "a", "shutdown --mode=agent"); !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "guest-shutdown has been disabled") {
		t.Errorf("agent-only shutdown with a failing agent: %v", err)
	}
	if err := d.Control(context.Background(), "a", "shutdown --mode=acpi,agent --timeout=1"); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.StateLine("a"); st != "shut off (destroyed)" {
		t.Errorf("state: %s", st)
	}
	log, _ := d.LogPath("a")
	b, _ := os.ReadFile(log)
	if !strings.Contains(string(b), "shutdown with the guest agent failed") || !strings.Contains(string(b), "pressing the ACPI power button") {
		t.Errorf("log lacks the fallback:\n%s", b)
	}
}

func TestRebootAgent(t *testing.T) {
	d := newDriver(t)
	fake := useFakeAgent(t)
	fake.Handle("guest-shutdown", func(_ context.Context, req *agenttest.Request) agenttest.Response {
		if string(req.Arguments) != `{"mode":"reboot"}` {
			return agenttest.Response{Error: &agenttest.CommandError{Class: "GenericError", Desc: "want mode reboot, got " + string(req.Arguments)}}
		}
		// The guest reboots: QEMU resets it.
		return agenttest.Response{None: true, Then: func(*agenttest.Request) {
			go func() {
				dm, _ := d.lookup("a")
				if r, err := dm.activeRun("x"); err == nil {
					r.mon.Execute(context.Background(), "system_reset", nil, nil)
				}
			}()
		}}
	})
	startBare(t, d, "a", agentChannelXML)
	ev, _ := d.Events("a")
	if err := d.Control(context.Background(), "a", "reboot --mode=agent"); err != nil {
		t.Fatal(err)
	}
	readUntil(t, ev, `"rebooted"`)
	if st, _ := d.StateLine("a"); st != "running (booted)" {
		t.Errorf("state after reboot: %s", st)
	}

	// acpi,agent with a failing agent: the ACPI fake reboot, which a
	// firmware-only guest never completes (the caller gives up).
	fake.Handle("guest-shutdown", func(context.Context, *agenttest.Request) agenttest.Response {
		return agenttest.Response{Error: &agenttest.CommandError{Class: "GenericError", Desc: "disabled"}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := d.Control(ctx, "a", "reboot --mode=agent,acpi"); !errors.Is(err, ErrInterrupted) {
		t.Errorf("reboot --mode=agent,acpi of a guest that ignores ACPI: %v, want ErrInterrupted", err)
	}
	log, _ := d.LogPath("a")
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "reboot with the guest agent failed") {
		t.Errorf("log lacks the fallback to ACPI:\n%s", b)
	}
}

type fakeLeases map[string][]Lease

func (f fakeLeases) Leases(_ context.Context, network string) ([]Lease, error) {
	if l, ok := f[network]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("no network %s", network)
}

// TestLeaseAndARPSources: the sources `interfaces` falls back to.
func TestLeaseAndARPSources(t *testing.T) {
	d := &Driver{}
	nics := []nic{
		{Interface: iface("network", "52:54:00:00:00:01", "default", "net0"), Dev: "vnet0"},
		{Interface: iface("bridge", "52:54:00:00:00:02", "br0", "net1"), Dev: "vnet1"},
		{Interface: iface("user", "52:54:00:00:00:03", "", "net2")},
		{Interface: iface("network", "52:54:00:00:00:04", "isolated", "net3")},
	}
	if got, err := d.leaseAddrs(context.Background(), nics); err != nil || got != nil {
		t.Errorf("without a lease source: %v, %v", got, err)
	}
	d.SetLeaseSource(fakeLeases{
		"default":  {{MAC: "52:54:00:00:00:01", IP: "192.168.122.10", Prefix: 24}, {MAC: "52:54:00:99:99:99", IP: "192.168.122.11", Prefix: 24}},
		"isolated": {{MAC: "52:54:00:00:00:04", IP: "fd00::4", Prefix: 64}},
	})
	defer d.SetLeaseSource(nil)
	got, err := d.leaseAddrs(context.Background(), nics)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(formatIfAddrs(got)); s != "vnet0 52:54:00:00:00:01 ipv4 192.168.122.10/24\nnet3 52:54:00:00:00:04 ipv6 fd00::4/64\n" {
		t.Errorf("leases:\n%s", s)
	}
	d.SetLeaseSource(fakeLeases{})
	if _, err := d.leaseAddrs(context.Background(), nics); err == nil || !strings.Contains(err.Error(), "network default") {
		t.Errorf("failing lease source: %v", err)
	}

	arp := filepath.Join(t.TempDir(), "arp")
	os.WriteFile(arp, []byte(`IP address       HW type     Flags       HW address            Mask     Device
192.168.122.10   0x1         0x2         52:54:00:00:00:01     *        virbr0
10.1.0.7         0x1         0x2         52:54:00:00:00:02     *        br0
10.1.0.8         0x1         0x0         52:54:00:00:00:02     *        br0
10.0.2.15        0x1         0x2         52:54:00:00:00:03     *        eth9
`), 0o644)
	old := arpPath
	arpPath = arp
	defer func() { arpPath = old }()
	got, err = arpAddrs(nics)
	if err != nil {
		t.Fatal(err)
	}
	// Incomplete entries (flags 0x0) and user-mode NICs are left out.
	if s := string(formatIfAddrs(got)); s != "vnet0 52:54:00:00:00:01 ipv4 192.168.122.10/0\nvnet1 52:54:00:00:00:02 ipv4 10.1.0.7/0\n" {
		t.Errorf("ARP:\n%s", s)
	}
}

func iface(typ, mac, source, alias string) domain.Interface {
	return domain.Interface{Type: typ, MAC: mac, Source: source, Alias: alias}
}
