package e2e

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// TestErrors makes every kind of bad request through the mount, against a
// running domain g and a shut-off domain h, and checks the errno, the
// message in NAME/error, and that nothing changed: both definitions byte
// for byte, g still running with the same pid.
func TestErrors(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	g := harness.Guest(t)
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	m.Define("h", harness.GuestXML(t, "h", guest.ActionNone, ""))
	m.MustCtl("g", "start")
	m.WaitConsole("g", g.ReadyLine, boot)
	pid := m.Pid("g")
	gConf, hConf := m.Read("g", "config.xml"), m.Read("h", "config.xml")
	uuidG := regexp.MustCompile(`<uuid>([^<]+)</uuid>`).FindStringSubmatch(gConf)
	if uuidG == nil {
		t.Fatalf("no <uuid> in g's config.xml:\n%s", gConf)
	}
	good := harness.GuestXML(t, "g", guest.ActionNone, "")
	long := strings.Repeat("n", 120)

	tests := []struct {
		name  string
		dom   string // whose error file names the problem ("" for mkdir)
		do    func() error
		errno syscall.Errno
		msg   string // in DOM/error
	}{
		{"malformed XML", "g", func() error { return m.Write("<domain type='qemu'><name>g</nam></domain>", "g", "config.xml") }, syscall.EINVAL, "XML"},
		{"unfinished XML", "g", func() error { return m.Write("<domain type='qemu'><name>g</name>", "g", "config.xml") }, syscall.EINVAL, "define g"},
		{"name differs", "g", func() error {
			return m.Write(strings.Replace(good, "<name>g</name>", "<name>other</name>", 1), "g", "config.xml")
		}, syscall.EINVAL, "does not match"},
		{"name with slash", "g", func() error {
			return m.Write(strings.Replace(good, "<name>g</name>", "<name>g/x</name>", 1), "g", "config.xml")
		}, syscall.EINVAL, "'/'"},
		{"missing emulator", "g", func() error {
			return m.Write(strings.Replace(good, "<devices>", "<devices>\n    <emulator>/usr/bin/nope</emulator>", 1), "g", "config.xml")
		}, syscall.EINVAL, "/usr/bin/nope"},
		{"unknown device model", "g", func() error {
			return m.Write(strings.Replace(good, "<devices>", "<devices>\n    <video><model type='nope'/></video>", 1), "g", "config.xml")
		}, syscall.EINVAL, "nope"},
		{"duplicate UUID", "h", func() error {
			x := harness.GuestXML(t, "h", guest.ActionNone, "")
			return m.Write(strings.Replace(x, "<name>h</name>", "<name>h</name>\n  <uuid>"+uuidG[1]+"</uuid>", 1), "h", "config.xml")
		}, syscall.EEXIST, uuidG[1]},
		{"duplicate UUID, new domain", "u", func() error {
			if err := os.Mkdir(m.Path("u"), 0o755); err != nil {
				return err
			}
			x := harness.GuestXML(t, "u", guest.ActionNone, "")
			err := m.Write(strings.Replace(x, "<name>u</name>", "<name>u</name>\n  <uuid>"+uuidG[1]+"</uuid>", 1), "u", "config.xml")
			if c, st := m.Read("u", "config.xml"), m.State("u"); c != "" || st != "undefined" {
				t.Errorf("u after a refused definition: state %q, config.xml:\n%s", st, c)
			}
			return err
		}, syscall.EEXIST, uuidG[1]},
		{"unknown ctl command", "g", func() error { return m.Write("frobnicate\n", "g", "ctl") }, syscall.EINVAL, `unknown command "frobnicate"`},
		{"bad ctl argument", "g", func() error { return m.Write("start --fast\n", "g", "ctl") }, syscall.EINVAL, "--fast"},
		{"start running", "g", func() error { return m.Write("start\n", "g", "ctl") }, syscall.EBUSY, "already running"},
		// As libvirt: resuming a running domain is a no-op success.
		{"resume running", "", func() error { return m.Write("resume\n", "g", "ctl") }, 0, ""},
		{"suspend shut off", "h", func() error { return m.Write("suspend\n", "h", "ctl") }, syscall.EBUSY, "not running"},
		{"rmdir running", "g", func() error { return os.Remove(m.Path("g")) }, syscall.EBUSY, "active"},
		{"mkdir existing", "", func() error { return os.Mkdir(m.Path("g"), 0o755) }, syscall.EEXIST, ""},
		{"mkdir ..", "", func() error { return os.Mkdir(m.Path(".."), 0o755) }, syscall.EEXIST, ""},
		{"mkdir .x", "", func() error { return os.Mkdir(m.Path(".x"), 0o755) }, syscall.EINVAL, `".x"`},
		{"mkdir too long", "", func() error { return os.Mkdir(m.Path(long), 0o755) }, syscall.EINVAL, "107 bytes"},
	}
	for _, tc := range tests {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			err := tc.do()
			if tc.errno == 0 && err != nil || tc.errno != 0 && !errors.Is(err, tc.errno) {
				t.Errorf("got %v, want %v (%s)", err, tc.errno, tc.errno.Error())
			}
			if tc.dom != "" {
				got := m.ErrorOf(tc.dom)
				t.Logf("%v; %s/error: %s", err, tc.dom, got)
				if got == "" || tc.msg != "" && !strings.Contains(got, tc.msg) {
					t.Errorf("%s/error = %q, want it to mention %q", tc.dom, got, tc.msg)
				}
			} else if tc.msg != "" && !strings.Contains(m.DaemonLog(), tc.msg) {
				t.Errorf("daemon log does not mention %q:\n%s", tc.msg, m.DaemonLog())
			}
			if got := m.Read("g", "config.xml"); got != gConf {
				t.Errorf("g/config.xml changed:\n%s", got)
			}
			if got := m.Read("h", "config.xml"); got != hConf {
				t.Errorf("h/config.xml changed:\n%s", got)
			}
			if got := m.State("g"); got != "running (booted)" {
				t.Errorf("g state = %q", got)
			}
			if got := m.Pid("g"); got != pid || !harness.Alive(pid) {
				t.Errorf("g pid = %d, was %d (alive: %v)", got, pid, harness.Alive(pid))
			}
			for _, n := range []string{".x", long} {
				if m.Exists(n) {
					t.Errorf("%q listed after a refused mkdir", n)
				}
			}
		})
	}
	// A good command clears the error.
	m.MustCtl("g", "suspend")
	if got := m.ErrorOf("g"); got != "" {
		t.Errorf("g/error after a successful command = %q", got)
	}
	m.MustCtl("g", "destroy")
}
