package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/tests/harness"
)

// Fault injection through the real mount (docs/reliability.md). The
// daemon is mounted with QEMUFS_FAULT=STEP (internal/fault) and dies with
// SIGKILL at that step of an operation; a new daemon is mounted over the
// same instance and must find every guest (re-attached, or cleaned up when
// its start had not finished), every definition whole, and states true.

// cheapXML is a guest without kernel or disk: QEMU idles in the firmware
// (or stays paused) on little memory, cheap enough for many at once.
func cheapXML(name string, mib int) string {
	return fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>%d</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><serial type='pty'/></devices></domain>`, name, mib)
}

// memoryMiB is the memory of the stored definition of NAME, which must
// parse; 0 if there is none.
func memoryMiB(t *testing.T, m *harness.Mount, name string) int {
	t.Helper()
	data, err := m.StoredConfig(name)
	if err != nil {
		t.Fatalf("stored definition of %s: %v", name, err)
	}
	d, err := domain.Parse([]byte(data))
	if err != nil {
		t.Fatalf("stored definition of %s does not parse (half-written?): %v\n%s", name, err, data)
	}
	return int(d.MemoryKiB() / 1024)
}

// livePids returns the QEMU pids found in the pid files of the instance.
func livePids(m *harness.Mount) []int {
	var pids []int
	paths, _ := filepath.Glob(filepath.Join(m.LogDir, "*.pid"))
	for _, p := range paths {
		data, _ := os.ReadFile(p)
		if n, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && n > 0 {
			pids = append(pids, n)
			m.TrackPid(n)
		}
	}
	return pids
}

// noOrphans fails the test for a QEMU of pids still alive that no domain
// of the mount shows as its own: a guest the daemon lost.
func noOrphans(t *testing.T, m *harness.Mount, pids []int, names ...string) {
	t.Helper()
	owned := map[int]bool{}
	for _, n := range names {
		owned[m.Pid(n)] = true
	}
	for _, p := range pids {
		if harness.Alive(p) && !owned[p] {
			t.Errorf("QEMU %d is alive but no domain manages it (lost guest)", p)
		}
	}
}

// tempLeft lists temporary files left in dir by an interrupted write.
func tempLeft(dir string) []string {
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			left = append(left, e.Name())
		}
	}
	return left
}

// unmountSettled unmounts, retrying while the kernel still holds a file
// of the test's last request (its release is asynchronous).
func unmountSettled(t *testing.T, m *harness.Mount) {
	t.Helper()
	var err error
	for i := 0; i < 100; i++ {
		if err = m.Unmount(); err == nil || !strings.Contains(err.Error(), "busy") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// faultCase is one step at which the daemon dies.
type faultCase struct {
	point   string
	setup   func(t *testing.T, m *harness.Mount)       // with a healthy daemon
	trigger func(t *testing.T, m *harness.Mount) error // reaches point
	check   func(t *testing.T, m *harness.Mount)       // after the remount
}

// ctlOp is a trigger that writes one ctl command to f.
func ctlOp(cmd string) func(*testing.T, *harness.Mount) error {
	return func(_ *testing.T, m *harness.Mount) error { return m.Ctl("f", cmd) }
}

func defineOld(t *testing.T, m *harness.Mount) { m.Define("f", cheapXML("f", 64)) }

func startedOld(state string) func(*testing.T, *harness.Mount) {
	return func(t *testing.T, m *harness.Mount) {
		defineOld(t, m)
		if state == "paused" {
			m.MustCtl("f", "start --paused")
		} else {
			m.MustCtl("f", "start")
		}
	}
}

// checkStartUndone: a start the daemon died in the middle of is undone by
// the next daemon (no QEMU left, files cleaned up) and the domain starts
// again.
func checkStartUndone(t *testing.T, m *harness.Mount) {
	if got := m.State("f"); !strings.HasPrefix(got, "shut off") {
		t.Errorf("state = %q after a start interrupted by the daemon's death, want shut off", got)
	}
	if left := m.RuntimeFiles("f"); len(left) > 0 {
		t.Errorf("left behind by the interrupted start: %v", left)
	}
	if !strings.Contains(m.ErrorOf("f"), "start") {
		t.Errorf("error = %q, want it to say the start was interrupted", m.ErrorOf("f"))
	}
	m.MustCtl("f", "start --paused")
	m.MustCtl("f", "destroy")
}

// checkPaused: the guest is alive, managed, and paused.
func checkPaused(t *testing.T, m *harness.Mount) {
	if got := m.State("f"); !strings.HasPrefix(got, "paused") {
		t.Errorf("state = %q, want paused", got)
	}
	if m.Pid("f") == 0 || !harness.Alive(m.Pid("f")) {
		t.Errorf("pid %d not alive", m.Pid("f"))
	}
}

func checkDefinition(want int) func(*testing.T, *harness.Mount) {
	return func(t *testing.T, m *harness.Mount) {
		if got := memoryMiB(t, m, "f"); got != want {
			t.Errorf("stored definition has %d MiB, want %d (old or new, whole)", got, want)
		}
		if d, err := domain.Parse([]byte(m.Read("f", "config.xml"))); err != nil || d.MemoryKiB()/1024 != uint64(want) {
			t.Errorf("config.xml read back: %v", err)
		}
		if left := tempLeft(m.ConfigDir()); len(left) > 0 {
			t.Errorf("temporary files left in %s: %v", m.ConfigDir(), left)
		}
	}
}

func saveImage(m *harness.Mount) string { return filepath.Join(m.Base, "save", "f.img") }

func setupSave(t *testing.T, m *harness.Mount) {
	startedOld("running")(t, m)
	if err := os.MkdirAll(filepath.Dir(saveImage(m)), 0o755); err != nil {
		t.Fatal(err)
	}
}

func faultCases() []faultCase {
	define := func(_ *testing.T, m *harness.Mount) error { return m.Write(cheapXML("f", 96), "f", "config.xml") }
	checkUnsaved := func(t *testing.T, m *harness.Mount) {
		checkPaused(t, m)
		if _, err := os.Stat(saveImage(m)); err == nil {
			t.Errorf("a save interrupted before its rename left an image at %s", saveImage(m))
		}
		if left := tempLeft(filepath.Dir(saveImage(m))); len(left) > 0 {
			t.Logf("note: temporary image left by the interrupted save: %v", left)
		}
		m.MustCtl("f", "resume")
		if got := m.State("f"); !strings.HasPrefix(got, "running") {
			t.Errorf("state after resume = %q", got)
		}
		m.MustCtl("f", "destroy")
	}
	snapSetup := func(t *testing.T, m *harness.Mount) {
		img := filepath.Join(m.Base, "f.qcow2")
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "16M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create: %v: %s", err, out)
		}
		m.Define("f", strings.Replace(cheapXML("f", 64), "<devices>", "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='"+img+"'/><target dev='vda' bus='virtio'/></disk>", 1))
	}
	snapCheck := func(listed bool) func(*testing.T, *harness.Mount) {
		return func(t *testing.T, m *harness.Mount) {
			entries, err := os.ReadDir(m.Path("f", "snapshots"))
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, e := range entries {
				found = found || e.Name() == "s1"
			}
			if found != listed {
				t.Errorf("snapshot s1 listed = %v, want %v", found, listed)
			}
			if listed {
				if _, err := domain.Parse([]byte(m.Read("f", "snapshots", "s1", "snapshot.xml"))); err == nil {
					t.Log("s1's metadata is whole")
				}
			}
			t.Logf("image's internal snapshots after the crash:\n%s", imageSnapshots(t, filepath.Join(m.Base, "f.qcow2")))
			if err := m.Ctl("f", "snapshot s1"); err != nil && listed == false {
				t.Errorf("snapshot s1 again after the crash: %v", err)
			}
			m.MustCtl("f", "snapshot s2")
		}
	}
	// attach: a disk hot-plugged into a running guest with ACPI (PCI
	// hot-plug); the daemon dies after QEMU has the device, and after the
	// definition has it.
	attachDisk := func(m *harness.Mount) string {
		return "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='" + filepath.Join(m.Base, "hot.img") + "'/><target dev='vdb' bus='virtio'/></disk>"
	}
	attachSetup := func(t *testing.T, m *harness.Mount) {
		if err := os.WriteFile(filepath.Join(m.Base, "hot.img"), make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		m.Define("f", strings.Replace(cheapXML("f", 64), "</os>", "</os><features><acpi/></features>", 1))
		m.MustCtl("f", "start")
	}
	attach := func(_ *testing.T, m *harness.Mount) error { return m.Write(attachDisk(m), "f", "attach") }
	attachCheck := func(inConfig bool) func(*testing.T, *harness.Mount) {
		return func(t *testing.T, m *harness.Mount) {
			if got := m.State("f"); !strings.HasPrefix(got, "running") {
				t.Errorf("state = %q after the daemon died in an attach, want running", got)
			}
			cfg := m.Read("f", "config.xml")
			if _, err := domain.Parse([]byte(cfg)); err != nil {
				t.Fatalf("config.xml after the crash: %v", err)
			}
			if has := strings.Contains(cfg, "hot.img"); has != inConfig {
				t.Errorf("config.xml has the attached disk: %v, want %v", has, inConfig)
			}
			m.MustCtl("f", "destroy")
			if !inConfig {
				// The definition never had it: a fresh start has no vdb,
				// and the attach works again.
				m.MustCtl("f", "start")
				if err := m.Write(attachDisk(m), "f", "attach"); err != nil {
					t.Errorf("attach after the crash: %v (%s)", err, m.ErrorOf("f"))
				}
				m.MustCtl("f", "destroy")
			}
		}
	}
	return []faultCase{
		{"attach.plugged", attachSetup, attach, attachCheck(false)},
		{"attach.configured", attachSetup, attach, attachCheck(true)},
		{"snapshot.taken", snapSetup, ctlOp("snapshot s1"), snapCheck(false)},
		{"snapshot.saved", snapSetup, ctlOp("snapshot s1"), snapCheck(true)},
		{"define.written", defineOld, define, checkDefinition(64)},
		{"define.synced", defineOld, define, checkDefinition(64)},
		{"define.renamed", defineOld, define, checkDefinition(96)},
		{"start.prepared", defineOld, ctlOp("start --paused"), checkStartUndone},
		{"start.spawned", defineOld, ctlOp("start --paused"), checkStartUndone},
		{"start.monitor", defineOld, ctlOp("start --paused"), checkStartUndone},
		{"start.status", defineOld, ctlOp("start --paused"), func(t *testing.T, m *harness.Mount) {
			if got := m.State("f"); got != "paused (user)" {
				t.Errorf("state = %q, want paused (user): the start had finished", got)
			}
			m.MustCtl("f", "destroy")
		}},
		{"shutdown.requested", startedOld("running"), ctlOp("shutdown"), func(t *testing.T, m *harness.Mount) {
			// The firmware-only guest ignores the power button: it runs on.
			if got := m.State("f"); !strings.HasPrefix(got, "running") {
				t.Errorf("state = %q, want running", got)
			}
			m.MustCtl("f", "destroy")
		}},
		{"destroy.signalled", startedOld("running"), ctlOp("destroy"), func(t *testing.T, m *harness.Mount) {
			if got := m.State("f"); !strings.HasPrefix(got, "shut off") {
				t.Errorf("state = %q, want shut off", got)
			}
			if left := m.RuntimeFiles("f"); len(left) > 0 {
				t.Errorf("left behind: %v", left)
			}
		}},
		{"save.paused", setupSave, func(_ *testing.T, m *harness.Mount) error { return m.Ctl("f", "save "+saveImage(m)) }, checkUnsaved},
		{"save.streamed", setupSave, func(_ *testing.T, m *harness.Mount) error { return m.Ctl("f", "save "+saveImage(m)) }, checkUnsaved},
		{"save.streamed:managed", setupSave, ctlOp("save"), func(t *testing.T, m *harness.Mount) {
			dir := filepath.Join(m.Root, "lib/qemu/.save")
			if left := tempLeft(dir); len(left) > 0 {
				t.Errorf("temporary images left in %s: %v", dir, left)
			}
			if _, err := os.Stat(filepath.Join(dir, "f.save")); err == nil {
				t.Error("an interrupted managed save left an image")
			}
			checkPaused(t, m)
			m.MustCtl("f", "destroy")
			m.MustCtl("f", "start --paused") // no managed save: a fresh start
			if got := m.State("f"); got != "paused (user)" {
				t.Errorf("start after the interrupted managed save: %q", got)
			}
			m.MustCtl("f", "destroy")
		}},
		{"save.renamed", setupSave, func(_ *testing.T, m *harness.Mount) error { return m.Ctl("f", "save "+saveImage(m)) }, func(t *testing.T, m *harness.Mount) {
			// The image is in place and whole; QEMU had not been ended yet.
			checkPaused(t, m)
			m.MustCtl("f", "destroy")
			m.MustCtl("f", "restore "+saveImage(m)+" --paused")
			if got := m.State("f"); !strings.HasPrefix(got, "paused") {
				t.Errorf("state after restoring the image = %q", got)
			}
			m.MustCtl("f", "destroy")
		}},
	}
}

// TestFaultDaemonKilled kills the daemon at each named step and mounts
// again.
func TestFaultDaemonKilled(t *testing.T) {
	t.Parallel()
	for _, fc := range faultCases() {
		t.Run(fc.point, func(t *testing.T) {
			t.Parallel()
			m := harness.Start(t, harness.Options{})
			fc.setup(t, m)
			unmountSettled(t, m)
			// A ":managed" suffix only names a variant of the case.
			if err := m.MountEnv("QEMUFS_FAULT=" + strings.TrimSuffix(fc.point, ":managed")); err != nil {
				t.Fatal(err)
			}
			daemon := m.DaemonPid()
			err := fc.trigger(t, m)
			if !harness.WaitGone(daemon, 2*time.Minute) {
				t.Fatalf("the daemon did not die at %s (trigger: %v)", fc.point, err)
			}
			if err == nil {
				t.Errorf("the operation succeeded although the daemon died at %s", fc.point)
			}
			pids := livePids(m)
			if err := m.Remount(); err != nil {
				t.Fatal(err)
			}
			noOrphans(t, m, pids, "f")
			fc.check(t, m)
		})
	}
}

// TestFaultQEMUKilled kills QEMU (SIGKILL by pid) at steps of start and
// save: the operation fails with EIO and a reason, the state is shut off
// and nothing is left behind; the daemon lives on.
func TestFaultQEMUKilled(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		point string
		cmd   string
		// wantErr: the operation fails with EIO; maybeErr: QEMU died
		// after the last step that talks to it, so the operation may
		// succeed and the supervisor then finds the guest crashed.
		wantErr, maybeErr bool
		state             string
	}{
		{"start.spawned", "start --paused", true, false, "shut off (failed)"},
		{"start.monitor", "start --paused", false, true, "shut off"},
		{"start.status", "start --paused", false, false, "shut off (crashed)"},
		{"save.paused", "save", true, false, "shut off (crashed)"},
		{"shutdown.requested", "shutdown", false, true, "shut off"},
	} {
		t.Run(tc.point, func(t *testing.T) {
			t.Parallel()
			m := harness.Start(t, harness.Options{})
			m.Define("f", cheapXML("f", 64))
			if tc.cmd == "save" || tc.cmd == "shutdown" {
				m.MustCtl("f", "start")
			}
			unmountSettled(t, m)
			if err := m.MountEnv("QEMUFS_FAULT=" + tc.point + ":qemu-kill"); err != nil {
				t.Fatal(err)
			}
			daemon := m.DaemonPid()
			err := m.Ctl("f", tc.cmd)
			t.Logf("%s with QEMU killed at %s: %v", tc.cmd, tc.point, err)
			switch {
			case tc.maybeErr && err != nil && !errors.Is(err, syscall.EIO):
				t.Errorf("got %v, want success or EIO", err)
			case tc.wantErr && !errors.Is(err, syscall.EIO):
				t.Errorf("got %v, want EIO", err)
			case !tc.wantErr && !tc.maybeErr && err != nil:
				t.Errorf("got %v, want success", err)
			}
			if err != nil && !strings.Contains(m.ErrorOf("f"), "QEMU") && !strings.Contains(m.ErrorOf("f"), "monitor") {
				t.Errorf("error = %q, want a reason naming QEMU or its monitor", m.ErrorOf("f"))
			}
			deadline := time.Now().Add(2 * time.Minute)
			for !strings.HasPrefix(m.State("f"), tc.state) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if got := m.State("f"); !strings.HasPrefix(got, tc.state) {
				t.Errorf("state = %q, want %s", got, tc.state)
			}
			if left := m.RuntimeFiles("f"); len(left) > 0 {
				t.Errorf("left behind: %v", left)
			}
			if !harness.Alive(daemon) {
				t.Fatal("the daemon died")
			}
			m.MustCtl("f", "start --paused")
			m.MustCtl("f", "destroy")
		})
	}
}

// TestFaultQMPHandshakeStall stops QEMU (SIGSTOP) right after it is
// spawned: start's QMP handshake gets no greeting and the start fails with
// EIO within the handshake bound (60 s), killing the stopped QEMU.
func TestFaultQMPHandshakeStall(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("f", cheapXML("f", 64))
	unmountSettled(t, m)
	if err := m.MountEnv("QEMUFS_FAULT=start.spawned:qemu-stop"); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	err := m.Ctl("f", "start --paused")
	took := time.Since(t0)
	pids := livePids(m)
	t.Cleanup(func() {
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGCONT)
		}
	})
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("start with a stopped QEMU: %v, want EIO", err)
	}
	t.Logf("start failed after %v: %s", took.Round(time.Millisecond), m.ErrorOf("f"))
	if !strings.Contains(m.ErrorOf("f"), "QMP") {
		t.Errorf("error = %q, want it to name QMP", m.ErrorOf("f"))
	}
	if got := m.State("f"); got != "shut off (failed)" {
		t.Errorf("state = %q", got)
	}
	for _, p := range pids {
		if harness.WaitGone(p, time.Minute); harness.Alive(p) {
			t.Errorf("stopped QEMU %d left alive", p)
		}
	}
}

// TestFaultQMPStopped stops a running QEMU (SIGSTOP by pid): ctl suspend
// and a monitor command on it return EIO with a reason once the monitor's
// command bound (monitor.DefaultCommandTimeout, 30 s) passes; meanwhile
// another domain and the stopped domain's own state stay responsive.
func TestFaultQMPStopped(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("a", cheapXML("a", 64))
	m.Define("b", cheapXML("b", 64))
	m.MustCtl("a", "start")
	m.MustCtl("b", "start")
	pid := m.Pid("a")
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })

	type result struct {
		err  error
		took time.Duration
	}
	ctl := make(chan result, 1)
	mon := make(chan result, 1)
	t0 := time.Now()
	go func() {
		err := m.Ctl("a", "suspend")
		ctl <- result{err, time.Since(t0)}
	}()
	go func() {
		f, err := os.OpenFile(m.Path("a", "monitor", "qmp"), os.O_RDWR, 0)
		if err != nil {
			mon <- result{err, 0}
			return
		}
		defer f.Close()
		_, err = f.WriteString(`{"execute":"query-status"}` + "\n")
		mon <- result{err, time.Since(t0)}
	}()
	// Meanwhile: b is served, and a's state is read, many times over.
	var served int
	for done := false; !done; {
		select {
		case r := <-ctl:
			ctl <- r
			done = true
		default:
			if got := m.State("a"); !strings.HasPrefix(got, "running") {
				t.Errorf("state of the stopped guest = %q", got)
			}
			if err := m.Ctl("b", "suspend"); err != nil {
				t.Errorf("b suspend while a hangs: %v", err)
			}
			if err := m.Ctl("b", "resume"); err != nil {
				t.Errorf("b resume while a hangs: %v", err)
			}
			served++
			if time.Since(t0) > 5*time.Minute {
				t.Fatal("ctl suspend of the stopped QEMU has not returned after 5 minutes")
			}
		}
	}
	r := <-ctl
	t.Logf("suspend of a stopped QEMU returned after %v: %v; %d rounds of b's ctl and a's state meanwhile", r.took.Round(time.Millisecond), r.err, served)
	if !errors.Is(r.err, syscall.EIO) {
		t.Errorf("suspend of a stopped QEMU: %v, want EIO", r.err)
	}
	if r.err == nil || !strings.Contains(r.err.Error(), "QEMU did not answer within") {
		t.Errorf("suspend error %v does not give the reason", r.err)
	}
	select {
	case r := <-mon:
		t.Logf("monitor/qmp command on the stopped QEMU returned after %v: %v", r.took.Round(time.Millisecond), r.err)
		if !errors.Is(r.err, syscall.EIO) {
			t.Errorf("monitor/qmp command on a stopped QEMU: %v, want EIO", r.err)
		}
	case <-time.After(5 * time.Minute):
		t.Error("monitor/qmp command on the stopped QEMU did not return")
	}
	if served == 0 {
		t.Error("b was never served while a hung")
	}
	syscall.Kill(pid, syscall.SIGCONT)
	m.MustCtl("a", "destroy")
	m.MustCtl("b", "destroy")
}

// fill writes zeros to path until the filesystem is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", path, err)
			}
			return
		}
	}
}

// TestFaultDiskFull runs the instance on a small tmpfs and fills it: a new
// definition and a managed save fail with a clear error (ENOSPC or EIO,
// the reason in error), the previous definition stays whole, the guest
// runs on; with room again, both work.
func TestFaultDiskFull(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("f", cheapXML("f", 64))
	unmountSettled(t, m)
	orig := m.Root + ".orig"
	if err := os.Rename(m.Root, orig); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(m.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", m.Root, "tmpfs", 0, "size=64m,mode=0755"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		m.Ctl("f", "destroy")
		unmountSettled(t, m)
		syscall.Unmount(m.Root, syscall.MNT_DETACH)
	})
	if out, err := exec.Command("cp", "-a", orig+"/.", m.Root+"/").CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	m.MustCtl("f", "start")
	filler := filepath.Join(m.Root, "filler")
	fill(t, filler)

	err := m.Write(cheapXML("f", 96), "f", "config.xml")
	t.Logf("define on a full disk: %v; error: %s", err, m.ErrorOf("f"))
	if !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EIO) {
		t.Errorf("define on a full disk: %v, want ENOSPC or EIO", err)
	}
	if !strings.Contains(m.ErrorOf("f"), "no space left") {
		t.Errorf("error = %q, want the reason (no space left on device)", m.ErrorOf("f"))
	}
	if got := memoryMiB(t, m, "f"); got != 64 {
		t.Errorf("stored definition has %d MiB after a failed define, want the old 64", got)
	}
	if left := tempLeft(m.ConfigDir()); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}

	err = m.Ctl("f", "save")
	t.Logf("managed save on a full disk: %v", err)
	if !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EIO) {
		t.Errorf("save on a full disk: %v, want ENOSPC or EIO", err)
	}
	if got := m.State("f"); !strings.HasPrefix(got, "running") {
		t.Errorf("state after a failed save = %q, want running", got)
	}
	out, _ := exec.Command("find", m.Root, "-type", "f", "(", "-name", "*.tmp*", "-o", "-name", "*.save", ")").CombinedOutput()
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Errorf("left by the failed save: %s", s)
	}

	os.Remove(filler)
	if err := m.Write(cheapXML("f", 96), "f", "config.xml"); err != nil {
		t.Fatalf("define with room again: %v (%s)", err, m.ErrorOf("f"))
	}
	if got := memoryMiB(t, m, "f"); got != 96 {
		t.Errorf("stored definition has %d MiB, want 96", got)
	}
	m.MustCtl("f", "save")
	if got := m.State("f"); got != "shut off (saved)" {
		t.Errorf("state after save = %q", got)
	}
}

// TestFaultReattachStopped kills the daemon while a guest's QEMU is
// stopped (SIGSTOP), and mounts again: the mount must not wait on the
// silent QEMU for long, the other guest is re-attached, and the stopped
// guest's state and error say what is going on.
func TestFaultReattachStopped(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("a", cheapXML("a", 64))
	m.Define("b", cheapXML("b", 64))
	m.Define("c", cheapXML("c", 64))
	m.MustCtl("a", "start --paused")
	m.MustCtl("b", "start --paused")
	m.MustCtl("c", "start --paused")
	pa, pb, pc := m.Pid("a"), m.Pid("b"), m.Pid("c")
	for _, p := range []int{pa, pc} {
		if err := syscall.Kill(p, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		p := p
		t.Cleanup(func() { syscall.Kill(p, syscall.SIGCONT) })
	}
	m.KillDaemon()
	t0 := time.Now()
	if err := m.Remount(); err != nil {
		t.Fatal(err)
	}
	t.Logf("mount with a stopped QEMU took %v", time.Since(t0).Round(time.Millisecond))
	t.Logf("a: state %q, pid %d, error %q", m.State("a"), m.Pid("a"), m.ErrorOf("a"))
	if got := m.State("b"); got != "paused (user)" || m.Pid("b") != pb {
		t.Errorf("b: state %q pid %d, want paused (user) with pid %d", got, m.Pid("b"), pb)
	}
	if m.Pid("a") != pa && harness.Alive(pa) {
		t.Errorf("a: QEMU %d alive but a shows pid %d, state %q", pa, m.Pid("a"), m.State("a"))
	}
	if err := m.Ctl("a", "start"); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("start while the re-attach is pending: %v, want EBUSY", err)
	}
	// destroy kills a QEMU whose re-attach is pending.
	if err := m.Ctl("c", "destroy"); err != nil {
		t.Errorf("destroy of a pending guest: %v", err)
	}
	if got := m.State("c"); got != "shut off (destroyed)" {
		t.Errorf("c after destroy: %q", got)
	}
	if harness.WaitGone(pc, time.Minute); harness.Alive(pc) {
		t.Errorf("c: QEMU %d alive after destroy", pc)
	}
	if left := m.RuntimeFiles("c"); len(left) > 0 {
		t.Errorf("c: left behind: %v", left)
	}
	syscall.Kill(pa, syscall.SIGCONT)
	deadline := time.Now().Add(2 * time.Minute)
	for m.State("a") != "paused (user)" && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if got := m.State("a"); got != "paused (user)" {
		t.Errorf("a after SIGCONT: state %q, want paused (user) (error: %s)", got, m.ErrorOf("a"))
	}
	m.Ctl("a", "destroy")
	m.Ctl("b", "destroy")
}
