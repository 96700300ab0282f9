package driver

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStartJournal: a status file that still says "starting" (the daemon
// died in the middle of a start) makes the next Driver kill that QEMU and
// undo the start: shut off (failed), the reason recorded, no files left.
func TestStartJournal(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	d.Create("a")
	d.Define("a", []byte(minimalXML("a")))
	if err := d.Control(ctx, "a", "start --paused"); err != nil {
		t.Fatal(err)
	}
	pid, _ := d.Pid("a")
	files := d.runFiles("a")
	data, err := os.ReadFile(files.Status)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	// Rewrite the status as a start that had spawned QEMU and not finished.
	var st status
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	st = status{Starting: true, Pid: st.Pid, StartTime: st.StartTime, State: StateShutoff, Reason: ReasonStartingUp, Security: st.Security}
	data, _ = json.Marshal(st)
	if err := os.WriteFile(files.Status, data, 0o600); err != nil {
		t.Fatal(err)
	}

	d2, err := New(d.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if got, _ := d2.StateLine("a"); got != "shut off (failed)" {
		t.Errorf("state %q, want shut off (failed)", got)
	}
	if msg, _ := d2.LastError("a"); !strings.Contains(msg, "interrupted") || !strings.Contains(msg, "was killed") {
		t.Errorf("error %q", msg)
	}
	if alive(pid) { // tpm_test.go
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("QEMU %d still alive", pid)
	}
	for _, p := range []string{files.Status, files.QMP, files.PidFile, files.DomDir} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
	if err := d2.Control(ctx, "a", "start --paused"); err != nil {
		t.Fatalf("start after the undone start: %v", err)
	}
	d2.Control(ctx, "a", "destroy")
}

// TestReattachPending: a QEMU that does not answer its monitor when a new
// Driver re-attaches stays the guest (pid shown, start EBUSY) and is taken
// over once it answers.
func TestReattachPending(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	d.Create("a")
	d.Define("a", []byte(minimalXML("a")))
	if err := d.Control(ctx, "a", "start --paused"); err != nil {
		t.Fatal(err)
	}
	pid, _ := d.Pid("a")
	d.Close()
	syscall.Kill(pid, syscall.SIGSTOP)
	defer syscall.Kill(pid, syscall.SIGCONT)

	d2, err := New(d.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if got, _ := d2.StateLine("a"); got != "paused (unknown)" {
		t.Errorf("pending state %q, want paused (unknown)", got)
	}
	if p, _ := d2.Pid("a"); p != pid {
		t.Errorf("pending pid %d, want %d", p, pid)
	}
	if msg, _ := d2.LastError("a"); !strings.Contains(msg, "re-attach pending") {
		t.Errorf("error %q", msg)
	}
	if err := d2.Control(ctx, "a", "start"); !errors.Is(err, ErrBusy) {
		t.Errorf("start while pending: %v, want ErrBusy", err)
	}
	syscall.Kill(pid, syscall.SIGCONT)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if got, _ := d2.StateLine("a"); got == "paused (user)" {
			break
		}
		if time.Now().After(deadline) {
			got, _ := d2.StateLine("a")
			t.Fatalf("not taken over after SIGCONT: state %q", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := d2.Control(ctx, "a", "resume"); err != nil {
		t.Errorf("resume after the re-attach: %v", err)
	}
	if err := d2.Control(ctx, "a", "destroy"); err != nil {
		t.Fatal(err)
	}
}
