package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// migrateTimeout bounds one migration of the test guest (TCG, loaded machine).
const migrateTimeout = 3 * time.Minute

// twoHosts starts a qemufs instance on each of two hosts joined by a veth
// pair (network namespaces; the files are shared, as shared storage).
func twoHosts(t *testing.T) (src, dst *harness.Mount, a, b *harness.Host) {
	a, b = harness.NewHostPair(t)
	src = harness.Start(t, harness.Options{Wrap: a.Wrap()})
	dst = harness.Start(t, harness.Options{Wrap: b.Wrap()})
	return src, dst, a, b
}

// TestMigrateLive: the booted test guest moves live over TCP from one host
// to the other; its console output continues there (later numbers of a
// counter started before, no new boot); the states are libvirt's; the
// source's migration file shows the completed job; without --persistent
// the destination's guest is transient and leaves an empty slot when it
// ends. Then it migrates back with --persistent --undefinesource.
func TestMigrateLive(t *testing.T) {
	t.Parallel()
	src, dst, _, b := twoHosts(t)
	g := harness.Guest(t)
	src.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, ""))

	before := src.Follow("g", "console")
	if err := src.Send(counterLoop, "g", "console"); err != nil {
		t.Fatal(err)
	}
	c := waitCountAbove(t, before, 2, boot)
	seen := c[len(c)-1]

	if err := src.Ctl("g", "migrate "+dst.Dir+" --live --uri tcp:"+b.Addr); err != nil {
		t.Fatalf("migrate: %v: %s\nsource log:\n%s\ndestination log:\n%s", err, src.ErrorOf("g"), src.QEMULog("g"), dst.QEMULog("g"))
	}
	if st := src.State("g"); st != "shut off (migrated)" {
		t.Errorf("source state after migrate: %q", st)
	}
	if st := dst.State("g"); st != "running (migrated)" {
		t.Errorf("destination state after migrate: %q", st)
	}
	info := src.Read("g", "migration")
	for _, want := range []string{"Job type:", "Completed", "Outgoing migration", "Total downtime:", "Data processed:"} {
		if !strings.Contains(info, want) {
			t.Errorf("source migration file lacks %q:\n%s", want, info)
		}
	}
	if src.Pid("g") != 0 {
		t.Errorf("source still has a QEMU after the migration")
	}
	if err := before.WaitEnd(30 * time.Second); err != nil {
		t.Errorf("source console reader after the migration: %v", err)
	}
	before.Stop()

	after := dst.Follow("g", "console")
	c = waitCountAbove(t, after, seen+1, boot)
	out := after.Stop()
	if strings.Contains(out, g.ReadyLine) {
		t.Errorf("the guest booted again at the destination: %q", out)
	}
	t.Logf("counter: %d at the source before, %d at the destination after", seen, c[len(c)-1])
	if x := dst.Read("g", "config.xml"); x != "" {
		t.Errorf("destination has a persistent definition without --persistent:\n%s", x)
	}
	if !strings.Contains(src.Read("g", "config.xml"), "<name>g</name>") {
		t.Errorf("source lost its definition without --undefinesource")
	}

	// Back again (compressed, with a bandwidth limit, the address named by
	// the destination), persistent at the (original) source, undefined at
	// the (second) source; the first source's shut-off definition is the
	// same domain (same UUID), which a destination accepts.
	a := src
	if err := dst.Ctl("g", "migrate "+a.Dir+" --live --persistent --undefinesource --compressed --bandwidth 500"); err != nil {
		t.Fatalf("migrate back: %v: %s", err, dst.ErrorOf("g"))
	}
	if st := a.State("g"); st != "running (migrated)" {
		t.Errorf("state after migrating back: %q", st)
	}
	if info := dst.Read("g", "migration"); !strings.Contains(info, "Compression cache") || !strings.Contains(info, "URI:                       tcp:10.99.0.1:") {
		t.Errorf("migration file of the compressed migration back:\n%s", info)
	}
	if st := dst.State("g"); st != "undefined" {
		t.Errorf("second source after --undefinesource: %q", st)
	}
	back := a.Follow("g", "console")
	if err := a.Send("echo BACK-$((6*7))\n", "g", "console"); err != nil {
		t.Fatal(err)
	}
	if err := back.Wait("BACK-42", boot); err != nil {
		t.Errorf("the guest's shell after migrating back: %v", err)
	}
	back.Stop()
	if !strings.Contains(a.Read("g", "config.xml"), "<name>g</name>") {
		t.Errorf("no persistent definition after --persistent")
	}
	a.MustCtl("g", "destroy")
}

// TestMigrateRefused: a destination that cannot see the guest's disk
// refuses it, with the reason, before anything moves; the guest keeps
// running at the source and the destination keeps nothing. Bad arguments,
// a tree that is no qemufs tree and the source's own tree are refused too.
// Then the same guest migrates with --copy-storage-all (its disk copied
// into an image the destination makes), and last its definition offline.
func TestMigrateRefused(t *testing.T) {
	t.Parallel()
	a, b := harness.NewHostPair(t)
	hidden, err := os.MkdirTemp("/tmp", "qfs-hidden-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(hidden, 0o755)
	t.Cleanup(func() { os.RemoveAll(hidden) })
	disk := filepath.Join(hidden, "data.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	wrap := b.HiddenWrap(t, hidden)
	src := harness.Start(t, harness.Options{Wrap: a.Wrap()})
	dst := harness.Start(t, harness.Options{Wrap: wrap})
	if _, err := os.Stat(dst.Path("capabilities.xml")); err != nil {
		t.Fatalf("the destination's tree is not visible to the test: %v", err)
	}
	extra := `<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='` + disk + `'/><target dev='vdb' bus='virtio'/></disk>`
	src.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, extra))
	pid := src.Pid("g")

	err = src.Ctl("g", "migrate "+dst.Dir+" --live --uri tcp:"+b.Addr)
	if err == nil {
		t.Fatalf("migrating a guest whose disk the destination cannot see succeeded")
	}
	msg := src.ErrorOf("g")
	for _, want := range []string{"disk vdb", disk, "not reachable from the destination", "keeps running"} {
		if !strings.Contains(msg, want) && !(want == "keeps running" && strings.Contains(msg, "refused")) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if st := src.State("g"); st != "running (booted)" {
		t.Errorf("source state after the refused migration: %q", st)
	}
	if src.Pid("g") != pid {
		t.Errorf("source QEMU changed: %d, was %d", src.Pid("g"), pid)
	}
	if dst.Exists("g") {
		t.Errorf("the destination kept a domain directory after refusing: state %q", dst.State("g"))
	}

	for _, c := range []struct{ cmd, want string }{
		{"migrate", "usage: migrate DEST"},
		{"migrate relative/path", "absolute path"},
		{"migrate " + dst.Dir + " --live --offline", "exclude each other"},
		{"migrate " + dst.Dir + " --bandwidth x", "--bandwidth"},
		{"migrate " + dst.Dir + " --uri udp:1.2.3.4", "tcp:HOST"},
		{"migrate " + src.Base, "not a qemufs tree"},
		{"migrate " + src.Dir, "own tree"},
	} {
		if err := src.Ctl("g", c.cmd); err == nil {
			t.Errorf("%q succeeded", c.cmd)
		} else if msg := src.ErrorOf("g"); !strings.Contains(msg, c.want) {
			t.Errorf("%q: error %q lacks %q", c.cmd, msg, c.want)
		}
	}
	if st := src.State("g"); st != "running (booted)" {
		t.Errorf("source state after the refused commands: %q", st)
	}
	if err := src.Ctl("g", "migrate "+dst.Dir+" --offline"); err == nil {
		t.Errorf("an offline migration of a running guest without --persistent succeeded")
	}

	// With --copy-storage-all the destination makes the disk it lacks and
	// the source copies it there (NBD + mirror) with the memory: what the
	// guest wrote to it is in the destination's own image. (The guest's
	// only virtio disk is its /dev/vda, whatever the target's name.)
	if out, err := exec.Command("head", "-c", "14", disk).Output(); err != nil || strings.Contains(string(out), "QEMUFS") {
		t.Fatalf("the disk before the guest writes it: %q %v", out, err)
	}
	con := src.Follow("g", "console")
	if err := src.Send("echo QEMUFS-MARK-$((40+2)) > /dev/vda; sync; echo WROTE-$((6*7))\n", "g", "console"); err != nil {
		t.Fatal(err)
	}
	if err := con.Wait("WROTE-42", boot); err != nil {
		t.Fatalf("writing the disk in the guest: %v", err)
	}
	con.Stop()
	if err := src.Ctl("g", "migrate "+dst.Dir+" --live --copy-storage-all --uri tcp:"+b.Addr); err != nil {
		t.Fatalf("migrate --copy-storage-all: %v: %s\ndestination log:\n%s", err, src.ErrorOf("g"), dst.QEMULog("g"))
	}
	if st := dst.State("g"); st != "running (migrated)" {
		t.Errorf("destination after the storage copy: %q", st)
	}
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(dst.DaemonPid()), "-m", "head", "-c", "14", disk).CombinedOutput()
	if err != nil || string(out) != "QEMUFS-MARK-42" {
		t.Errorf("the destination's copy of the disk starts with %q (%v), want QEMUFS-MARK-42\nsource migration:\n%s\ndestination migration:\n%s\ndestination log:\n%s", out, err, src.Read("g", "migration"), dst.Read("g", "migration"), dst.QEMULog("g"))
	}
	con = dst.Follow("g", "console")
	if err := dst.Send("sync; echo 3 > /proc/sys/vm/drop_caches; head -c 14 /dev/vda; echo\n", "g", "console"); err != nil {
		t.Fatal(err)
	}
	if err := con.Wait("QEMUFS-MARK-42", boot); err != nil {
		t.Errorf("the guest reading its disk at the destination: %v", err)
	}
	con.Stop()
	dst.MustCtl("g", "destroy")

	// Offline: only the definition moves (the destination does not check
	// disks for a definition, as libvirt's offline migration does not).
	if st := src.State("g"); st != "shut off (migrated)" {
		t.Errorf("source after the storage copy: %q", st)
	}
	src.MustCtl("g", "migrate "+dst.Dir+" --offline --persistent --undefinesource")
	if st := dst.State("g"); st != "shut off (unknown)" {
		t.Errorf("destination after the offline migration: %q", st)
	}
	if x := dst.Read("g", "config.xml"); !strings.Contains(x, disk) {
		t.Errorf("destination definition after the offline migration:\n%s", x)
	}
	if st := src.State("g"); st != "undefined" {
		t.Errorf("source after --offline --undefinesource: %q", st)
	}
}

// TestMigrateFailures: the network is cut in the middle of a throttled
// migration, then the destination's QEMU is killed in the middle of one;
// each time the migration fails with its reason, the guest keeps running
// at the source (its shell answers) and the destination keeps nothing.
// Last, with the network back, the migration succeeds.
func TestMigrateFailures(t *testing.T) {
	t.Parallel()
	src, dst, _, b := twoHosts(t)
	src.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	pid := src.Pid("g")
	cmd := "migrate " + dst.Dir + " --live --bandwidth 1 --uri tcp:" + b.Addr

	alive := func(tag string) {
		t.Helper()
		if st := src.State("g"); st != "running (migration canceled)" {
			t.Errorf("%s: source state %q", tag, st)
		}
		if src.Pid("g") != pid {
			t.Errorf("%s: source QEMU changed", tag)
		}
		f := src.Follow("g", "console")
		defer f.Stop()
		if err := src.Send("echo ALIVE-$((40+2))\n", "g", "console"); err != nil {
			t.Fatal(err)
		}
		if err := f.Wait("ALIVE-42", boot); err != nil {
			t.Errorf("%s: the guest's shell at the source: %v", tag, err)
		}
		if dst.Exists("g") {
			t.Errorf("%s: the destination kept the domain: %q", tag, dst.State("g"))
		}
	}
	// waitMoving waits until the migration sends data.
	waitMoving := func() {
		t.Helper()
		deadline := time.Now().Add(migrateTimeout)
		for time.Now().Before(deadline) {
			info := src.Read("g", "migration")
			if strings.Contains(info, "Phase:                     migrating") && dataProcessed(info) > 0 && dst.Pid("g") > 0 {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("the migration did not start: %s", src.Read("g", "migration"))
	}

	// 0. Cancelled by the user (virsh domjobabort).
	done := make(chan error, 1)
	go func() { done <- src.Ctl("g", cmd) }()
	waitMoving()
	if !strings.Contains(src.Read("g", "migration"), "Job type:                  Unbounded") {
		t.Errorf("migration file during the migration:\n%s", src.Read("g", "migration"))
	}
	if st := src.State("g"); st != "running (booted)" {
		t.Errorf("source state during a live migration: %q", st)
	}
	if st := dst.State("g"); st != "paused (migrating)" {
		t.Errorf("destination state during the migration: %q", st)
	}
	if err := src.Write("cancel\n", "g", "migration"); err != nil {
		t.Fatalf("cancel: %v: %s", err, src.ErrorOf("g"))
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a cancelled migration succeeded")
		}
	case <-time.After(migrateTimeout):
		t.Fatal("the migration did not end after the cancel")
	}
	if msg := src.ErrorOf("g"); !strings.Contains(msg, "cancelled (cancel written to migration)") {
		t.Errorf("error after the cancel: %q", msg)
	}
	if !strings.Contains(src.Read("g", "migration"), "Failed") {
		t.Errorf("migration file after the cancel:\n%s", src.Read("g", "migration"))
	}
	alive("cancelled")

	// 1. The network goes down in the middle.
	go func() { done <- src.Ctl("g", cmd) }()
	waitMoving()
	time.Sleep(time.Second)
	if err := b.LinkDown(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the migration succeeded with the network cut")
		}
	case <-time.After(migrateTimeout):
		t.Fatal("the migration did not end after the network was cut")
	}
	if msg := src.ErrorOf("g"); !strings.Contains(msg, "network") || !strings.Contains(msg, "keeps running here") {
		t.Errorf("error after the cut: %q", msg)
	} else {
		t.Logf("error after the cut: %s", msg)
	}
	if err := b.LinkUp(); err != nil {
		t.Fatal(err)
	}
	alive("network cut")

	// 2. The destination's QEMU dies in the middle.
	go func() { done <- src.Ctl("g", cmd) }()
	waitMoving()
	dpid := dst.Pid("g")
	dst.TrackPid(dpid)
	harness.WaitKill(dpid, 9)
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the migration succeeded with the destination's QEMU killed")
		}
	case <-time.After(migrateTimeout):
		t.Fatal("the migration did not end after the destination's QEMU was killed")
	}
	if msg := src.ErrorOf("g"); !strings.Contains(msg, "keeps running here") {
		t.Errorf("error after the destination died: %q", msg)
	} else {
		t.Logf("error after the destination died: %s", msg)
	}
	alive("destination killed")

	// 3. Now it works.
	if err := src.Ctl("g", "migrate "+dst.Dir+" --live --uri tcp:"+b.Addr); err != nil {
		t.Fatalf("migrate after the failures: %v: %s", err, src.ErrorOf("g"))
	}
	if st := dst.State("g"); st != "running (migrated)" {
		t.Errorf("destination state: %q", st)
	}
	dst.MustCtl("g", "destroy")
	if st := dst.State("g"); st != "undefined" {
		t.Errorf("a transient guest's slot after destroy: %q", st)
	}
}

// uffdSysctl lets processes without CAP_SYS_PTRACE (QEMU here) use
// userfaultfd(2), which QEMU 7.2 needs for post-copy.
const uffdSysctl = "/proc/sys/vm/unprivileged_userfaultfd"

// memDirtier, typed into the guest's shell, rewrites 16 MiB of its memory
// (a file in its RAM root) five times a second.
const memDirtier = "dd if=/dev/urandom of=/dirty.src bs=1M count=16 2>/dev/null; while :; do cp /dirty.src /dirty; sleep 0.2; done &\n"

// dataProcessed is the "Data processed" of a migration file, in MiB.
func dataProcessed(info string) float64 {
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(l, "Data processed:"); ok {
			n, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " MiB"), 64)
			return n
		}
	}
	return 0
}

// TestMigratePostcopy: with vm.unprivileged_userfaultfd=0 the destination
// refuses a post-copy migration before anything moves (QEMU runs without
// CAP_SYS_PTRACE and QEMU 7.2 needs the userfaultfd(2) syscall), saying
// what to do; the guest keeps running at the source and the destination
// keeps nothing. With it at 1, a throttled live migration of a guest that
// keeps dirtying its memory switches to post-copy after its first pass: the guest runs at the destination while
// its memory still arrives, and its console continues there. The sysctl
// is the host's, but no other test depends on it; its value is restored.
func TestMigratePostcopy(t *testing.T) {
	t.Parallel()
	old, err := os.ReadFile(uffdSysctl)
	if err != nil {
		t.Skipf("this kernel has no %s (no userfaultfd): %v", uffdSysctl, err)
	}
	was := strings.TrimSpace(string(old))
	setSysctl := func(v string) error {
		if v == was {
			return nil
		}
		return os.WriteFile(uffdSysctl, []byte(v+"\n"), 0o644)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(uffdSysctl, []byte(was+"\n"), 0o644); err != nil {
			t.Errorf("restoring %s to %s: %v", uffdSysctl, was, err)
		}
	})
	src, dst, _, b := twoHosts(t)
	g := harness.Guest(t)
	src.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	pid := src.Pid("g")
	// 16 MiB/s: QEMU completes a pre-copy pass when what is left would
	// go within its 300 ms downtime limit, 4.8 MiB here; the guest keeps
	// 16 MiB of its memory dirty (memDirtier), so the migration cannot
	// end before the switch to post-copy, whenever the switch comes.
	cmd := "migrate " + dst.Dir + " --live --postcopy --bandwidth 16 --uri tcp:" + b.Addr

	// (a) No userfaultfd for QEMU: refused before anything moves.
	if err := setSysctl("0"); err != nil {
		t.Logf("cannot set %s to 0 (%v): the refusal is not checked", uffdSysctl, err)
	} else {
		err := src.Ctl("g", cmd)
		msg := src.ErrorOf("g")
		if err == nil {
			t.Fatalf("post-copy with vm.unprivileged_userfaultfd=0 succeeded")
		}
		for _, want := range []string{"userfaultfd", "set vm.unprivileged_userfaultfd=1 on the destination host"} {
			if !strings.Contains(msg, want) {
				t.Errorf("refusal %q lacks %q", msg, want)
			}
		}
		if st := src.State("g"); st != "running (booted)" {
			t.Errorf("source after the refused post-copy: %q, want untouched", st)
		}
		if src.Pid("g") != pid {
			t.Errorf("source QEMU changed: %d, was %d", src.Pid("g"), pid)
		}
		if dst.Exists("g") {
			t.Errorf("the destination kept the domain after refusing post-copy: %q", dst.State("g"))
		}
		if l := dst.QEMULog("g"); strings.Contains(l, "qemu-system") {
			t.Errorf("the destination started a QEMU before refusing:\n%s", l)
		}
		t.Logf("refused: %s", msg)
	}

	// (b) With userfaultfd: post-copy.
	if err := setSysctl("1"); err != nil {
		t.Skipf("cannot set %s to 1 (%v): post-copy cannot run on this host", uffdSysctl, err)
	}
	before := src.Follow("g", "console")
	if err := src.Send(memDirtier+counterLoop, "g", "console"); err != nil {
		t.Fatal(err)
	}
	c := waitCountAbove(t, before, 1, boot)
	seen := c[len(c)-1]
	if err := src.Ctl("g", cmd); err != nil {
		t.Fatalf("migrate --postcopy: %v: %s\nsource log:\n%s\ndestination log:\n%s", err, src.ErrorOf("g"), src.QEMULog("g"), dst.QEMULog("g"))
	}
	info := src.Read("g", "migration")
	if !strings.Contains(info, "Post-copy:") || !strings.Contains(info, "Completed") {
		t.Errorf("the migration did not go through post-copy:\n%s", info)
	}
	t.Logf("source migration file:\n%s", info)
	if st := src.State("g"); st != "shut off (migrated)" {
		t.Errorf("source state: %q", st)
	}
	if st := dst.State("g"); st != "running (migrated)" {
		t.Errorf("destination state: %q", st)
	}
	before.Stop()
	after := dst.Follow("g", "console")
	waitCountAbove(t, after, seen+1, boot)
	if out := after.Stop(); strings.Contains(out, g.ReadyLine) {
		t.Errorf("the guest booted again at the destination: %q", out)
	}
	dst.MustCtl("g", "destroy")
}

// TestMigrateDaemonKilled: the source daemon dies (kill -9, through the
// fault points) after the destination prepared the incoming guest, and
// after QEMU sent the whole guest but before the destination runs it. After
// a remount no guest is lost and both states are true. The destination
// bounds its wait for data (migration_incoming_timeout, 15 s here): the
// guest waiting for a source that never sends is aborted by the
// destination itself, the reason in its error; the guest whose data all
// arrived is not, and is settled through the destination's ctl, as after
// a failed libvirt migration.
func TestMigrateDaemonKilled(t *testing.T) {
	t.Parallel()
	const bound = "15s"
	for _, point := range []string{"migrate.prepared", "migrate.sent"} {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			a, b := harness.NewHostPair(t)
			src := harness.Start(t, harness.Options{Wrap: a.Wrap()})
			dst := harness.Start(t, harness.Options{Wrap: b.Wrap(), QEMUConf: "migration_incoming_timeout = 15\n"})
			src.Define("g", strings.Replace(cheapXML("g", 64), "</os>", "</os><features><acpi/></features>", 1))
			src.MustCtl("g", "start")
			pid := src.Pid("g")
			src.Unmount()
			if err := src.MountEnv("QEMUFS_FAULT=" + point); err != nil {
				t.Fatal(err)
			}
			daemon := src.DaemonPid()
			err := src.Ctl("g", "migrate "+dst.Dir+" --live --uri tcp:"+b.Addr)
			if !harness.WaitGone(daemon, migrateTimeout) {
				t.Fatalf("the source daemon did not die at %s (migrate: %v)", point, err)
			}
			if err := src.Remount(); err != nil {
				t.Fatal(err)
			}
			if got := src.Pid("g"); got != pid || !harness.Alive(pid) {
				t.Fatalf("source guest: pid %d (was %d), alive %v: the guest was lost", got, pid, harness.Alive(pid))
			}
			switch point {
			case "migrate.prepared":
				// Nothing moved: the source runs on; the destination's
				// waiting guest is aborted once the bound expires (it
				// may have been already), and a new migration works.
				if st := src.State("g"); !strings.HasPrefix(st, "running") {
					t.Errorf("source state %q, want running", st)
				}
				if st := dst.State("g"); st != "paused (migrating)" && st != "undefined" {
					t.Errorf("destination state %q, want paused (migrating) until the bound expires", st)
				}
				dpid := dst.Pid("g")
				dst.WaitState("g", "undefined", migrateTimeout)
				msg := dst.ErrorOf("g")
				for _, want := range []string{"no migration data arrived from the source within " + bound, "still at the source"} {
					if !strings.Contains(msg, want) {
						t.Errorf("the destination's error %q lacks %q", msg, want)
					}
				}
				t.Logf("the destination's error: %s", msg)
				if dpid > 0 && harness.Alive(dpid) {
					t.Errorf("the destination's waiting QEMU (pid %d) still runs", dpid)
				}
				if err := src.Ctl("g", "migrate "+dst.Dir+" --live --uri tcp:"+b.Addr); err != nil {
					t.Fatalf("migrate again: %v: %s", err, src.ErrorOf("g"))
				}
				if st := dst.State("g"); st != "running (migrated)" {
					t.Errorf("destination after the new migration: %q", st)
				}
				dst.MustCtl("g", "destroy")
			case "migrate.sent":
				// The whole guest is at the destination, paused at both
				// ends; the bound does not end it (its data arrived):
				// the destination runs it, the source's copy goes.
				if st := dst.State("g"); st != "paused (migrating)" {
					t.Errorf("destination state %q, want paused (migrating)", st)
				}
				if st := src.State("g"); !strings.HasPrefix(st, "paused") {
					t.Errorf("source state %q, want paused (QEMU sent the guest)", st)
				}
				waitLogLine(t, dst, "g", "data is arriving (QEMU's incoming migration is completed)")
				if st := dst.State("g"); st != "paused (migrating)" {
					t.Errorf("destination state %q after the bound expired, want paused (migrating)", st)
				}
				if err := dst.Ctl("g", "migrate-finish"); err != nil {
					t.Fatalf("finish at the destination: %v", err)
				}
				if st := dst.State("g"); st != "running (migrated)" {
					t.Errorf("destination after finish: %q", st)
				}
				src.MustCtl("g", "destroy")
				dst.MustCtl("g", "destroy")
			}
		})
	}
}

// waitLogLine waits until NAME's QEMU log at m has a line containing want.
func waitLogLine(t *testing.T, m *harness.Mount, name, want string) {
	t.Helper()
	deadline := time.Now().Add(migrateTimeout)
	for !strings.Contains(m.QEMULog(name), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s's log has no %q:\n%s", name, want, m.QEMULog(name))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
