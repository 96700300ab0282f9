package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qemufs/qemufs/capabilities"
	"github.com/qemufs/qemufs/instance"
	"github.com/qemufs/qemufs/stream"
)

var (
	capsOnce sync.Once
	capsVal  *capabilities.Capabilities
	capsErr  error
)

// probe returns the host's capabilities, probed once per test binary.
func probe(t *testing.T) *capabilities.Capabilities {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	capsOnce.Do(func() {
		dir, _ := os.MkdirTemp("", "qemufs-driver-caps-")
		p := capabilities.Prober{CacheDir: dir, Version: "test"}
		capsVal, capsErr = p.Probe(context.Background())
	})
	if capsErr != nil {
		t.Fatal(capsErr)
	}
	return capsVal
}

// newDriver returns a Driver for a fresh embedded instance with QEMU run
// unconfined (the security stack is tested on its own and end to end).
func newDriver(t *testing.T) *Driver {
	t.Helper()
	caps := probe(t)
	root, err := os.MkdirTemp("/tmp", "qd-")
	if err != nil {
		t.Fatal(err)
	}
	inst, err := instance.NewEmbedded(root)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{Instance: inst, Config: instance.DefaultConfig(instance.Embedded), Caps: caps, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, n := range d.Names() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			d.Control(ctx, n, "destroy")
			cancel()
		}
		d.Close()
		os.RemoveAll(root)
	})
	return d
}

func minimalXML(name string) string {
	return fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><serial type='pty'/></devices></domain>`, name)
}

func TestDefineErrors(t *testing.T) {
	d := newDriver(t)
	if err := d.Create("a"); err != nil {
		t.Fatal(err)
	}
	if err := d.Define("a", []byte(minimalXML("a"))); err != nil {
		t.Fatal(err)
	}
	good, _ := d.Config("a")
	tests := []struct {
		name, xml string
		kind      error
		msg       string
	}{
		{"syntax", "<domain type='qemu'><name>a</name>", ErrInvalid, "XML"},
		{"other name", minimalXML("b"), ErrInvalid, "does not match"},
		{"no emulator", strings.Replace(minimalXML("a"), "<devices>", "<devices><emulator>/usr/bin/nope</emulator>", 1), ErrInvalid, "/usr/bin/nope"},
		{"bad type", strings.Replace(minimalXML("a"), "type='qemu'", "type='hvf'", 1), ErrInvalid, "hvf"},
		{"unknown model", strings.Replace(minimalXML("a"), "<devices>", "<devices><video><model type='bogus'/></video>", 1), ErrInvalid, "bogus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := d.Define("a", []byte(tt.xml))
			if !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Define: %v; want %v mentioning %q", err, tt.kind, tt.msg)
			}
			if e, _ := d.LastError("a"); e != err.Error() {
				t.Errorf("LastError %q, want %q", e, err)
			}
			if now, _ := d.Config("a"); string(now) != string(good) {
				t.Error("a failed define changed the definition")
			}
		})
	}
	// A UUID belongs to one domain.
	d.Create("b")
	uuid := strings.Split(strings.Split(string(good), "<uuid>")[1], "</uuid>")[0]
	dup := strings.Replace(minimalXML("b"), "<name>b</name>", "<name>b</name><uuid>"+uuid+"</uuid>", 1)
	if err := d.Define("b", []byte(dup)); !errors.Is(err, ErrExist) {
		t.Errorf("duplicate UUID: %v, want ErrExist", err)
	}
	// Names.
	for _, n := range []string{"", ".", "..", "a/b", ".hidden", strings.Repeat("x", 300)} {
		if err := d.Create(n); !errors.Is(err, ErrInvalid) {
			t.Errorf("Create(%q) = %v, want ErrInvalid", n, err)
		}
	}
	if err := d.Create("a"); !errors.Is(err, ErrExist) {
		t.Errorf("Create of an existing domain: %v", err)
	}
}

func TestControlErrors(t *testing.T) {
	d := newDriver(t)
	d.Create("a")
	ctx := context.Background()
	if err := d.Control(ctx, "a", "start"); !errors.Is(err, ErrInvalid) {
		t.Errorf("start of an empty slot: %v", err)
	}
	d.Define("a", []byte(minimalXML("a")))
	tests := []struct {
		line string
		kind error
	}{
		{"", ErrInvalid},
		{"fly", ErrInvalid},
		{"start --fast", ErrInvalid},
		{"shutdown --timeout=x", ErrInvalid},
		{"autostart maybe", ErrInvalid},
		{"destroy now", ErrInvalid},
		{"destroy", ErrBusy},
		{"suspend", ErrBusy},
		{"shutdown", ErrBusy},
	}
	for _, tt := range tests {
		if err := d.Control(ctx, "a", tt.line); !errors.Is(err, tt.kind) {
			t.Errorf("Control(%q) = %v, want %v", tt.line, err, tt.kind)
		}
	}
	if err := d.Control(ctx, "nope", "start"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown domain: %v", err)
	}
}

// readUntil reads from a stream reader until want appears.
func readUntil(t *testing.T, rd *stream.Reader, want string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var got []byte
	buf := make([]byte, 4096)
	for !strings.Contains(string(got), want) {
		n, err := rd.Read(ctx, buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("waiting for %q: %v; got %q", want, err, got)
		}
	}
	return string(got)
}

// TestPausedLifecycle runs QEMU for real without FUSE: start paused,
// resume, suspend, a QMP session, destroy, and the events of it all.
func TestPausedLifecycle(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	d.Create("a")
	if err := d.Define("a", []byte(minimalXML("a"))); err != nil {
		t.Fatal(err)
	}
	ev, _ := d.Events("a")
	steps := []struct {
		cmd, state string
	}{
		{"start --paused", "paused (user)"},
		{"resume", "running (unpaused)"},
		{"suspend", "paused (user)"},
		{"resume", "running (unpaused)"},
	}
	for _, s := range steps {
		if err := d.Control(ctx, "a", s.cmd); err != nil {
			t.Fatalf("%s: %v", s.cmd, err)
		}
		if got, _ := d.StateLine("a"); got != s.state {
			t.Fatalf("after %s: %q, want %q", s.cmd, got, s.state)
		}
	}
	if err := d.Control(ctx, "a", "start"); !errors.Is(err, ErrBusy) {
		t.Errorf("start of a running domain: %v", err)
	}
	if err := d.Remove("a"); !errors.Is(err, ErrBusy) {
		t.Errorf("Remove of a running domain: %v", err)
	}
	pid, _ := d.Pid("a")
	if pid <= 0 {
		t.Fatal("no pid")
	}
	live, _ := d.LiveXML("a")
	if !strings.Contains(string(live), "/dev/pts/") {
		t.Errorf("live XML lacks the serial pty:\n%s", live)
	}

	s, err := d.OpenMonitor("a", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(ctx, []byte(`{"execute":"query-status","id":7}`+"\n")); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 4096)
	n, err := s.Read(ctx, reply)
	if err != nil || !strings.Contains(string(reply[:n]), `"running"`) || !strings.Contains(string(reply[:n]), `"id": 7`) && !strings.Contains(string(reply[:n]), `"id":7`) {
		t.Fatalf("QMP reply %q, %v", reply[:n], err)
	}
	s.Close()
	h, err := d.OpenMonitor("a", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Write(ctx, []byte("info status\n")); err != nil {
		t.Fatal(err)
	}
	n, err = h.Read(ctx, reply)
	if got := string(reply[:n]); err != nil || got != "VM status: running\n" {
		t.Errorf("HMP info status: %q, %v; want Unix line endings", got, err)
	}
	h.Close()
	if live, _ := d.LiveXML("a"); !strings.Contains(string(live), "custom-monitor") {
		t.Error("QMP use did not taint the domain")
	}

	if err := d.Control(ctx, "a", "destroy"); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.StateLine("a"); got != "shut off (destroyed)" {
		t.Fatalf("after destroy: %q", got)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		if data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(data), ") Z") {
			t.Errorf("QEMU pid %d still exists after destroy", pid)
		}
	}
	files := d.runFiles("a")
	for _, p := range []string{files.QMP, files.Status, files.PidFile} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
	got := readUntil(t, ev, `"stopped"`)
	var order []string
	for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
		i := strings.Index(l, `"event":"`)
		order = append(order, strings.SplitN(l[i+9:], `"`, 2)[0])
	}
	want := "started paused resumed paused resumed stopped"
	if strings.Join(order, " ") != want {
		t.Errorf("events %v, want %s", order, want)
	}
	// The log has the command line and the end of the run.
	log, _ := os.ReadFile(files.Log)
	if !strings.Contains(string(log), "qemu-system-x86_64 -name guest=a") || !strings.Contains(string(log), "shutting down, reason=destroyed") {
		t.Errorf("log:\n%s", log)
	}
}

// TestReattach closes one Driver with a guest running and opens another on
// the same instance: it takes the guest over.
func TestReattach(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	d.Create("a")
	d.Define("a", []byte(minimalXML("a")))
	if err := d.Control(ctx, "a", "start --paused"); err != nil {
		t.Fatal(err)
	}
	pid, _ := d.Pid("a")
	d.Close()

	d2, err := New(d.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if got, _ := d2.StateLine("a"); got != "paused (user)" {
		t.Fatalf("re-attached state %q", got)
	}
	if p, _ := d2.Pid("a"); p != pid {
		t.Fatalf("pid %d, want %d", p, pid)
	}
	if err := d2.Control(ctx, "a", "resume"); err != nil {
		t.Fatal(err)
	}
	if err := d2.Control(ctx, "a", "destroy"); err != nil {
		t.Fatal(err)
	}
	if got, _ := d2.StateLine("a"); got != "shut off (destroyed)" {
		t.Fatalf("state %q", got)
	}
}

// TestPersistence: definitions and autostart marks survive a new Driver.
func TestPersistence(t *testing.T) {
	d := newDriver(t)
	d.Create("a")
	d.Define("a", []byte(minimalXML("a")))
	if err := d.Control(context.Background(), "a", "autostart on"); err != nil {
		t.Fatal(err)
	}
	before, _ := d.Config("a")
	d.Close()
	d2, err := New(d.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	after, err := d2.Config("a")
	if err != nil || string(after) != string(before) {
		t.Fatalf("definition not kept: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d.inst.ConfigDir, "autostart", "a")); err != nil {
		t.Fatal(err)
	}
	d2.Autostart(context.Background())
	if got, _ := d2.StateLine("a"); got != "running (booted)" {
		t.Fatalf("autostart: %q", got)
	}
	d2.Control(context.Background(), "a", "destroy")
}

func TestStreamEndsOnRemove(t *testing.T) {
	d := newDriver(t)
	d.Create("a")
	rd, _ := d.Events("a")
	if err := d.Remove("a"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := rd.Read(ctx, make([]byte, 10)); err != io.EOF {
		t.Fatalf("events after remove: %v, want EOF", err)
	}
}
