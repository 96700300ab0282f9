package domain

import (
	"strings"
	"testing"
)

// TestChannelSocketPaths: a unix channel without a path gets the socket
// the command line uses, in the run directory, shown in the live XML;
// channels with a path or of other types are left alone.
func TestChannelSocketPaths(t *testing.T) {
	d, err := Parse([]byte(withDevices(`
<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
<channel type='unix'><source mode='bind'/><target type='virtio'/></channel>
<channel type='unix'><source mode='bind' path='/tmp/own.sock'/><target type='virtio' name='x.y'/></channel>
<channel type='pty'><target type='virtio' name='p.q'/></channel>`)))
	if err != nil {
		t.Fatal(err)
	}
	if err := Expand(d, nil); err != nil {
		t.Fatal(err)
	}
	before, err := BuildCommand(d, CommandOptions{DomainDir: "/run/q/t.d"})
	if err != nil {
		t.Fatal(err)
	}
	d.SetChannelSocketPaths("/run/q/t.d")
	want := []string{"/run/q/t.d/org.qemu.guest_agent.0", "/run/q/t.d/charchannel1", "/tmp/own.sock", ""}
	chs := d.Channels()
	if len(chs) != len(want) {
		t.Fatalf("channels: %+v", chs)
	}
	for i, c := range chs {
		if c.Path != want[i] {
			t.Errorf("channel %d (%s): path %q, want %q", i, c.TargetName, c.Path, want[i])
		}
		if p, ok := ChannelSocketPath(c, "/elsewhere"); ok != (want[i] != "") || ok && p != want[i] {
			t.Errorf("ChannelSocketPath(%d) = %q, %v", i, p, ok)
		}
		if want[i] != "" && c.Mode != "bind" {
			t.Errorf("channel %d: mode %q", i, c.Mode)
		}
	}
	// The command line is the same with the paths filled in.
	after, err := BuildCommand(d, CommandOptions{DomainDir: "/run/q/t.d"})
	if err != nil {
		t.Fatal(err)
	}
	if before.String() != after.String() {
		t.Errorf("argv changed:\n%s\n%s", before, after)
	}
	if !strings.Contains(after.String(), "path=/run/q/t.d/org.qemu.guest_agent.0,server=on,wait=off") {
		t.Errorf("agent socket not in argv: %s", after)
	}
	d.SetChannelSocketPaths("/other")
	if d.Channels()[0].Path != want[0] {
		t.Errorf("not idempotent: %q", d.Channels()[0].Path)
	}
}

// TestChannelState: the state of a virtio channel, as live XML shows it,
// survives a round trip through Parse (a re-attach reads live XML back).
func TestChannelState(t *testing.T) {
	d, err := Parse([]byte(withDevices(`<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
<channel type='pty'><target type='guestfwd' address='10.0.2.1' port='4600'/></channel>`)))
	if err != nil {
		t.Fatal(err)
	}
	if err := Expand(d, nil); err != nil {
		t.Fatal(err)
	}
	chs := d.Channels()
	if !d.SetChannelState(chs[0].Alias, "connected") || d.ChannelState(chs[0].Alias) != "connected" {
		t.Fatalf("no virtio channel %q", chs[0].Alias)
	}
	if d.SetChannelState(chs[1].Alias, "connected") || d.SetChannelState("nope", "connected") {
		t.Error("state set on a guestfwd channel or an unknown alias")
	}
	x := d.XML()
	if !strings.Contains(string(x), `name="org.qemu.guest_agent.0" state="connected"`) && !strings.Contains(string(x), `name='org.qemu.guest_agent.0' state='connected'`) {
		t.Errorf("XML lacks the state:\n%s", x)
	}
	back, err := Parse(x)
	if err != nil {
		t.Fatalf("live XML with a channel state does not parse: %v", err)
	}
	if err := back.Validate(nil); err != nil {
		t.Fatalf("live XML with a channel state does not validate: %v", err)
	}
	if _, err := BuildCommand(back, CommandOptions{}); err != nil {
		t.Fatal(err)
	}
}
