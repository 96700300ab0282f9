package driver

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// incomingHook makes d's bound on an incoming migration's wait expire
// when the test sends on the channel it returns, instead of after the
// configured time, which each wait sends on asked.
func incomingHook(d *Driver) (fire chan time.Time, asked chan time.Duration) {
	fire, asked = make(chan time.Time), make(chan time.Duration, 8)
	d.incomingTimer = func(t time.Duration) <-chan time.Time {
		asked <- t
		return fire
	}
	return fire, asked
}

// waitIncoming has NAME at d wait for an incoming migration of xml on
// loopback (args are migrate-incoming's options) and returns its job.
func waitIncoming(t *testing.T, d *Driver, name, xml, args string) *migrationJob {
	t.Helper()
	if !d.Exists(name) {
		if err := d.Create(name); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.PrepareIncoming(name, []byte(xml)); err != nil {
		t.Fatalf("incoming.xml: %v", err)
	}
	if err := d.Control(context.Background(), name, "migrate-incoming tcp:127.0.0.1:0"+args); err != nil {
		t.Fatalf("migrate-incoming: %v", err)
	}
	if st, _ := d.StateLine(name); st != "paused (migrating)" {
		t.Fatalf("state %q, want paused (migrating)", st)
	}
	dm, err := d.lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return jobOf(dm)
}

func waitStateLine(t *testing.T, d *Driver, name, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, _ := d.StateLine(name)
		if st == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: state %q, want %q", name, st, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLog waits until NAME's QEMU log has a line containing want.
func waitLog(t *testing.T, d *Driver, name, want string) {
	t.Helper()
	p, _ := d.LogPath(name)
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the log has no %q:\n%s", name, want, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func diskXML(name, path string) string {
	return strings.Replace(minimalXML(name), "<devices>", "<devices><disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='"+
		path+"'/><target dev='vda' bus='virtio'/></disk>", 1)
}

// TestIncomingTimeout: a destination waiting for an incoming migration
// whose data never comes aborts it by itself once the bound expires
// (qemu.conf migration_incoming_timeout): QEMU ended, the disks it made
// for a storage copy removed, a transient domain an empty slot again and
// a persistent one shut off, the reason in error.
func TestIncomingTimeout(t *testing.T) {
	d := newDriver(t)
	d.conf.MigrationIncomingTimeout = 7
	fire, asked := incomingHook(d)
	disk := filepath.Join(t.TempDir(), "copied.img")
	for _, c := range []struct {
		name, xml, args, after string
		persistent             bool
	}{
		{name: "transient", xml: minimalXML("transient"), after: "undefined"},
		{name: "persistent", xml: minimalXML("persistent"), persistent: true, after: "shut off (failed)"},
		{name: "copy", xml: diskXML("copy", disk), args: " --copy-storage=vda:1048576", after: "undefined"},
	} {
		if c.persistent {
			d.Create(c.name)
			if err := d.Define(c.name, []byte(c.xml)); err != nil {
				t.Fatal(err)
			}
			x, _ := d.Config(c.name) // the same domain (its UUID)
			c.xml = string(x)
		}
		waitIncoming(t, d, c.name, c.xml, c.args)
		if a := <-asked; a != 7*time.Second {
			t.Errorf("%s: the wait is bounded by %s, want qemu.conf's 7s", c.name, a)
		}
		pid, _ := d.Pid(c.name)
		fire <- time.Now()
		waitStateLine(t, d, c.name, c.after)
		msg, _ := d.LastError(c.name)
		for _, want := range []string{"no migration data arrived from the source within 7s", "migration_incoming_timeout", "still at the source"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: error %q lacks %q", c.name, msg, want)
			}
		}
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("%s: QEMU (pid %d) still runs", c.name, pid)
		}
		if info, _ := d.MigrationInfo(c.name); !strings.Contains(string(info), "Failed") {
			t.Errorf("%s: migration file:\n%s", c.name, info)
		}
		if x, _ := d.Config(c.name); c.persistent != (len(x) > 0) {
			t.Errorf("%s: persistent definition after the abort: %q", c.name, x)
		}
	}
	if _, err := os.Stat(disk); err == nil {
		t.Errorf("the disk made for the storage copy is left: %s", disk)
	}
}

// TestIncomingTimeoutProgressing: once migration data arrives, the bound
// no longer applies: neither a memory stream (the source's QEMU
// connected) nor a storage copy's first writes to the disks the
// destination serves over NBD (before the memory moves) are aborted when
// it expires.
func TestIncomingTimeoutProgressing(t *testing.T) {
	ctx := context.Background()
	src, dst := newDriver(t), newDriver(t)
	fire, _ := incomingHook(dst)

	// Memory: the source's QEMU sends, throttled, so that the migration
	// is still running when the bound expires.
	src.Create("g")
	if err := src.Define("g", []byte(minimalXML("g"))); err != nil {
		t.Fatal(err)
	}
	if err := src.Control(ctx, "g", "start --paused"); err != nil {
		t.Fatal(err)
	}
	sdm, _ := src.lookup("g")
	sr := sdm.run
	j := waitIncoming(t, dst, "g", string(sr.savedXML()), "")
	if err := sr.mon.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": 16 << 10}, nil); err != nil {
		t.Fatal(err)
	}
	if err := sr.mon.Execute(ctx, "migrate", map[string]any{"uri": j.uri}, nil); err != nil {
		t.Fatal(err)
	}
	defer sr.mon.Execute(ctx, "migrate_cancel", nil, nil)
	ddm, _ := dst.lookup("g")
	dr := ddm.run
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := dr.queryMigrateStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Status != "" && st.Status != "none" && st.Status != "setup" {
			break // the source's QEMU connected
		}
		if time.Now().After(deadline) {
			t.Fatalf("the destination's QEMU got no data: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	fire <- time.Now()
	waitLog(t, dst, "g", "data is arriving (QEMU's incoming migration is")
	if st, _ := dst.StateLine("g"); st != "paused (migrating)" {
		t.Errorf("a receiving destination after the bound: %q", st)
	}

	// Storage: the source's mirror writes into the exported disk.
	disk := filepath.Join(t.TempDir(), "copied.img")
	j = waitIncoming(t, dst, "c", diskXML("c", disk), " --copy-storage=vda:1048576")
	addr, _, _ := strings.Cut(strings.TrimPrefix(j.nbd, "tcp:"), " ")
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x55 0 64k", "nbd://"+addr+"/vda").CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io writing the export: %v: %s", err, out)
	}
	fire <- time.Now()
	waitLog(t, dst, "c", "data is arriving (the source writes block node")
	if st, _ := dst.StateLine("c"); st != "paused (migrating)" {
		t.Errorf("a destination receiving a storage copy after the bound: %q", st)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Errorf("the disk being copied: %v", err)
	}
}

// TestIncomingReattach: a guest waiting for an incoming migration when
// the destination's daemon restarts is taken over still waiting: its job
// is back (migrate-abort works, the NBD exports show), and the bound on
// the wait is armed again, removing the disk made for a storage copy
// when it expires.
func TestIncomingReattach(t *testing.T) {
	d := newDriver(t)
	d.conf.MigrationIncomingTimeout = 7
	disk := filepath.Join(t.TempDir(), "copied.img")
	waitIncoming(t, d, "a", minimalXML("a"), "")
	waitIncoming(t, d, "b", diskXML("b", disk), " --copy-storage=vda:1048576")
	pids := map[string]int{}
	for _, n := range []string{"a", "b"} {
		pids[n], _ = d.Pid(n)
	}
	d.Close()

	opts := d.opts
	fire, asked := make(chan time.Time), make(chan time.Duration, 8)
	opts.incomingTimer = func(t time.Duration) <-chan time.Time { asked <- t; return fire }
	d2, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before newDriver's, which knows only the closed d
		for _, n := range d2.Names() {
			d2.Control(context.Background(), n, "destroy")
		}
		d2.Close()
	})
	for _, n := range []string{"a", "b"} {
		if st, _ := d2.StateLine(n); st != "paused (migrating)" {
			t.Errorf("%s after the restart: %q", n, st)
		}
		if p, _ := d2.Pid(n); p != pids[n] {
			t.Errorf("%s: pid %d, want %d", n, p, pids[n])
		}
		if a := <-asked; a != 7*time.Second {
			t.Errorf("the wait is bounded by %s after the restart, want 7s", a)
		}
	}
	if info, _ := d2.MigrationInfo("b"); !strings.Contains(string(info), "NBD") {
		t.Errorf("b's migration file after the restart lacks its NBD exports:\n%s", info)
	}
	if err := d2.Control(context.Background(), "a", "migrate-abort"); err != nil {
		t.Fatalf("migrate-abort after the restart: %v", err)
	}
	waitStateLine(t, d2, "a", "undefined")
	close(fire) // every bound expires; only b's guest still waits
	waitStateLine(t, d2, "b", "undefined")
	if msg, _ := d2.LastError("b"); !strings.Contains(msg, "no migration data arrived") {
		t.Errorf("b's error: %q", msg)
	}
	for n, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("%s: QEMU (pid %d) still runs", n, pid)
		}
	}
	if _, err := os.Stat(disk); err == nil {
		t.Errorf("the disk made for the storage copy is left: %s", disk)
	}
}
