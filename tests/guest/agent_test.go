package guest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// agentArgs gives the guest a virtio-serial agent channel on a socket in
// dir and a user-mode virtio NIC with mac.
func agentArgs(dir, mac string) (sock string, args []string) {
	sock = filepath.Join(dir, "ga.sock")
	return sock, []string{
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=ga,path=" + sock + ",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=ga,name=org.qemu.guest_agent.0",
		"-netdev", "user,id=net0",
		"-device", "virtio-net-pci,netdev=net0,mac=" + mac,
	}
}

// gaConn is the smallest guest agent client: sync, then one command at a
// time, with a deadline on each.
type gaConn struct {
	conn net.Conn
	rd   *bufio.Reader
}

func dialAgent(t *testing.T, sock string) *gaConn {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return &gaConn{conn: conn, rd: bufio.NewReader(conn)}
}

// sync flushes the agent's parser (0xFF) and runs guest-sync-delimited,
// skipping whatever comes before the 0xFF that starts its reply.
func (g *gaConn) sync(id int) error {
	g.conn.SetDeadline(time.Now().Add(bootTimeout))
	if _, err := fmt.Fprintf(g.conn, "\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id); err != nil {
		return err
	}
	if _, err := g.rd.ReadBytes(0xff); err != nil {
		return fmt.Errorf("guest-sync-delimited: %w", err)
	}
	var r struct{ Return int }
	if err := json.NewDecoder(strings.NewReader(g.line())).Decode(&r); err != nil || r.Return != id {
		return fmt.Errorf("guest-sync-delimited: want return %d, got %+v (%v)", id, r, err)
	}
	return nil
}

func (g *gaConn) line() string {
	l, _ := g.rd.ReadString('\n')
	return l
}

// run sends cmd and decodes the "return" of its reply into out.
func (g *gaConn) run(cmd string, out any) error {
	g.conn.SetDeadline(time.Now().Add(bootTimeout))
	if _, err := io.WriteString(g.conn, cmd+"\n"); err != nil {
		return err
	}
	l := g.line()
	var r struct {
		Return json.RawMessage
		Error  *struct{ Class, Desc string }
	}
	if err := json.Unmarshal([]byte(l), &r); err != nil {
		return fmt.Errorf("%s: reply %q: %w", cmd, l, err)
	}
	if r.Error != nil {
		return fmt.Errorf("%s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(r.Return, out)
}

type gaInterface struct {
	Name        string `json:"name"`
	HWAddr      string `json:"hardware-address"`
	IPAddresses []struct {
		Type    string `json:"ip-address-type"`
		Address string `json:"ip-address"`
		Prefix  int    `json:"prefix"`
	} `json:"ip-addresses"`
}

func hasAddr(ifs []gaInterface, name, mac, addr string) bool {
	for _, i := range ifs {
		if i.Name != name || mac != "" && i.HWAddr != mac {
			continue
		}
		for _, a := range i.IPAddresses {
			if a.Address == addr {
				return true
			}
		}
	}
	return false
}

// TestGuestAgent: with the agent channel, qemu-ga answers by the time the
// ready line shows; udhcpc configures eth0 from QEMU's user network; the
// agent reports both interfaces; guest-shutdown powers the guest off.
func TestGuestAgent(t *testing.T) {
	const mac = "52:54:00:aa:bb:01"
	sock, args := agentArgs(t.TempDir(), mac)
	v := boot(t, ActionNone, args...)
	v.waitReady(t)
	ga := dialAgent(t, sock)
	if err := ga.sync(4242); err != nil {
		t.Fatal(err)
	}
	if err := ga.run(`{"execute":"guest-ping"}`, nil); err != nil {
		t.Fatal(err)
	}
	var info struct {
		Version string `json:"version"`
	}
	if err := ga.run(`{"execute":"guest-info"}`, &info); err != nil || info.Version == "" {
		t.Fatalf("guest-info: %+v, %v", info, err)
	}

	io.WriteString(v.stdin, "udhcpc -i eth0 -n -q -t 20 && echo DHCP-$((1+1))\n")
	v.waitLine(t, "DHCP-2", equal("DHCP-2"))
	var ifs []gaInterface
	if err := ga.run(`{"execute":"guest-network-get-interfaces"}`, &ifs); err != nil {
		t.Fatal(err)
	}
	if !hasAddr(ifs, "lo", "", "127.0.0.1") || !hasAddr(ifs, "eth0", mac, "10.0.2.15") {
		b, _ := json.Marshal(ifs)
		t.Fatalf("interfaces: want lo 127.0.0.1 and eth0 %s 10.0.2.15, got %s", mac, b)
	}
	// guest-shutdown has no reply on success; the guest powers off.
	if _, err := io.WriteString(ga.conn, `{"execute":"guest-shutdown"}`+"\n"); err != nil {
		t.Fatal(err)
	}
	ev := v.qmp.waitEvent(t, "SHUTDOWN")
	if !bytes.Contains(ev.Data, []byte(`"guest": true`)) && !bytes.Contains(ev.Data, []byte(`"guest":true`)) {
		t.Errorf("SHUTDOWN after guest-shutdown: want guest=true, got %s", ev.Data)
	}
	v.waitExit(t)
}

// TestGuestAgentReboot: guest-shutdown mode=reboot resets the guest (the
// reboot /sbin/shutdown -r does).
func TestGuestAgentReboot(t *testing.T) {
	sock, args := agentArgs(t.TempDir(), "52:54:00:aa:bb:02")
	v := boot(t, ActionNone, args...)
	v.waitReady(t)
	ga := dialAgent(t, sock)
	if err := ga.sync(7); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(ga.conn, `{"execute":"guest-shutdown","arguments":{"mode":"reboot"}}`+"\n"); err != nil {
		t.Fatal(err)
	}
	ev := v.qmp.waitEvent(t, "RESET")
	if !bytes.Contains(ev.Data, []byte("guest-reset")) {
		t.Errorf("RESET after guest-shutdown mode=reboot: want reason guest-reset, got %s", ev.Data)
	}
}
