package harness

import (
	"time"
)

// AgentDevices are the devices that give the test guest a guest agent
// (its virtio-serial channel, qemu-ga starts from the guest's init) and a
// user-mode virtio NIC with mac: `udhcpc -i eth0` on its console gets
// 10.0.2.15 from QEMU's built-in DHCP server.
func AgentDevices(mac string) string {
	return `<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <interface type='user'><mac address='` + mac + `'/><model type='virtio'/></interface>`
}

// Agent opens a session on NAME/agent, writes cmd (one JSON object) and
// returns the first reply line; the read gives up after timeout. A failed
// write returns its error with the domain's error text.
func (m *Mount) Agent(name, cmd string, timeout time.Duration) (string, error) {
	return m.session(name, cmd, timeout, "agent")
}

// WaitAgent waits until NAME's guest agent answers guest-ping through
// NAME/agent (the guest's init starts qemu-ga before its ready line, but
// a loaded machine may keep the guest from answering the first sync in
// time); failure ends the test.
func (m *Mount) WaitAgent(name string, timeout time.Duration) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, err := m.Agent(name, `{"execute":"guest-ping"}`, timeout)
		if err == nil && got == `{"return": {}}` {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: the guest agent did not answer guest-ping within %v: %q, %v\nlog:\n%s", name, timeout, got, err, m.QEMULog(name))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
