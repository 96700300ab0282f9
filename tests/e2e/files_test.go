package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// TestRuntimeFiles checks argv, live.xml, pid and log through a run.
func TestRuntimeFiles(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))

	argv := m.Read("g", "argv")
	if strings.Count(argv, "\n") != 1 || !strings.HasSuffix(argv, "\n") {
		t.Errorf("argv is not one line:\n%s", argv)
	}
	if !regexp.MustCompile(`^LC_ALL=C ([A-Z_]+=\S* )*/\S*qemu-system-x86_64 `).MatchString(argv) {
		t.Errorf("argv does not start with env vars then the binary:\n%s", argv)
	}
	for _, want := range []string{"-name guest=g", g.Kernel, "-no-shutdown"} {
		if !strings.Contains(argv, want) {
			t.Errorf("argv lacks %q:\n%s", want, argv)
		}
	}
	if live := m.Read("g", "live.xml"); live != "" {
		t.Errorf("live.xml of a shut-off domain:\n%s", live)
	}

	m.MustCtl("g", "start")
	m.WaitConsole("g", g.ReadyLine, boot)
	live := m.Read("g", "live.xml")
	pty := regexp.MustCompile(`<source path='(/dev/pts/\d+)'/>`).FindStringSubmatch(live)
	if pty == nil || !strings.Contains(live, "tty='"+pty[1]+"'") {
		t.Errorf("live.xml lacks the serial pty path:\n%s", live)
	}
	// (a console on the serial port mirrors it, alias included)
	for _, want := range []string{"<alias name='serial0'/>", "<alias name='pci.0'/>"} {
		if !strings.Contains(live, want) {
			t.Errorf("live.xml lacks %s:\n%s", want, live)
		}
	}
	if conf := m.Read("g", "config.xml"); strings.Contains(conf, "/dev/pts/") {
		t.Errorf("config.xml has the runtime pty:\n%s", conf)
	}
	pid := m.Pid("g")
	data, err := os.ReadFile(filepath.Join(m.LogDir, "g.pid"))
	if n, _ := strconv.Atoi(strings.TrimSpace(string(data))); err != nil || n != pid || !harness.Alive(pid) {
		t.Errorf("pid file %q (%v), pid %d", data, err, pid)
	}
	log := m.Read("g", "log")
	cmdline := regexp.MustCompile(`(?m)^LC_ALL=C .*qemu-system-x86_64 .*-name guest=g.*$`).FindString(log)
	if cmdline == "" {
		t.Errorf("log lacks the command line:\n%s", log)
	}
	if !strings.Contains(log, "starting up") {
		t.Errorf("log lacks the start note:\n%s", log)
	}

	m.MustCtl("g", "destroy")
	log = m.Read("g", "log")
	if !strings.Contains(log, "shutting down, reason=destroyed") {
		t.Errorf("log lacks the stop reason:\n%s", log)
	}
	if live := m.Read("g", "live.xml"); live != "" {
		t.Errorf("live.xml after destroy:\n%s", live)
	}
	if got := m.Pid("g"); got != 0 {
		t.Errorf("pid %d after destroy", got)
	}
	if left := m.RuntimeFiles("g"); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestGraphicsAutoport starts VNC and SPICE displays with autoport side by
// side: each gets its own port from qemu.conf's range, shown in live.xml.
func TestGraphicsAutoport(t *testing.T) {
	t.Parallel()
	// A range of its own: other tests' instances probe the default one.
	m := harness.Start(t, harness.Options{QEMUConf: "remote_display_port_min = 5990\nremote_display_port_max = 5999\n"})
	seen := map[string]string{}
	for _, d := range []struct{ name, graphics string }{
		{"vnc", "<graphics type='vnc' port='-1'/>"},
		{"spice1", "<graphics type='spice' autoport='yes'/>"},
		{"spice2", "<graphics type='spice' port='-1'/>"},
	} {
		m.Define(d.name, harness.GuestXML(t, d.name, guest.ActionNone, "    "+d.graphics))
		m.MustCtl(d.name, "start --paused")
		live := m.Read(d.name, "live.xml")
		port := regexp.MustCompile(`<graphics type='\w+'[^>]* port='(599\d)'`).FindStringSubmatch(live)
		if port == nil {
			t.Errorf("%s: live.xml lacks a port in 5990..5999:\n%s", d.name, live)
			continue
		}
		if other, ok := seen[port[1]]; ok {
			t.Errorf("%s and %s both got port %s", other, d.name, port[1])
		}
		seen[port[1]] = d.name
	}
	for _, n := range []string{"vnc", "spice1", "spice2"} {
		if got := m.State(n); got != "paused (user)" {
			t.Errorf("%s: state %q", n, got)
		}
	}
	// A port is free again once its guest stops.
	m.MustCtl("spice1", "destroy")
	m.MustCtl("spice1", "start --paused")
	for _, n := range []string{"vnc", "spice1", "spice2"} {
		m.MustCtl(n, "destroy")
	}
}
