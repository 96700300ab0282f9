package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

func needSwtpm(t *testing.T) {
	t.Helper()
	for _, b := range []string{"swtpm", "swtpm_setup"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed: run scripts/deps.sh (packages swtpm, swtpm-tools)", b)
		}
	}
}

var uuidRe = regexp.MustCompile(`<uuid>([0-9a-f-]+)</uuid>`)

func domainUUID(t *testing.T, m *harness.Mount, name string) string {
	t.Helper()
	u := uuidRe.FindStringSubmatch(m.Read(name, "config.xml"))
	if u == nil {
		t.Fatalf("no uuid in %s's config.xml", name)
	}
	return u[1]
}

// startTime is field 22 of /proc/PID/stat ("" when pid is gone), which
// tells a process from a later one that reuses its pid.
func startTime(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// gone reports whether the process pid that started at st has ended and
// been reaped: no zombie is left.
func gone(pid int, st string) bool {
	return startTime(pid) != st
}

// guestTPM asks the guest's shell which TPM devices its kernel found.
func guestTPM(t *testing.T, m *harness.Mount, name string, n int) {
	t.Helper()
	// The quotes keep the typed line (echoed on the console) from matching.
	cmd := fmt.Sprintf("ls /sys/class/tpm | sed s/^/TPM''DEV%d=/\n", n)
	if err := m.Send(cmd, name, "console"); err != nil {
		t.Fatalf("write console: %v", err)
	}
	m.WaitConsole(name, fmt.Sprintf("TPMDEV%d=tpm0", n), boot)
}

// TestTPM boots the test guest with an emulated TPM in a privileged
// (root-embedded) instance, for a TPM 2.0 on the CRB interface and a TPM
// 1.2 on TIS, and in the system instance for a TPM 2.0 on TIS: swtpm runs as QEMU does (a child of the daemon, QEMU's user,
// QEMU's cgroup), its state is made under lib/swtpm/UUID and owned by
// QEMU's user, the guest's kernel finds the TPM, destroy ends and reaps
// swtpm, and the state is used again at the next start.
func TestTPM(t *testing.T) {
	needSwtpm(t)
	for _, tc := range []struct {
		name, model, version, sub, perm string
		system                          bool
	}{
		{"2.0", "tpm-crb", "2.0", "tpm2", "tpm2-00.permall", false},
		{"1.2", "tpm-tis", "1.2", "tpm1.2", "tpm-00.permall", false},
		{"2.0-system", "tpm-tis", "2.0", "tpm2", "tpm2-00.permall", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			qemuUID, qemuGID := qemuIDs(t)
			m := harness.Start(t, harness.Options{System: tc.system})
			dev := fmt.Sprintf("<tpm model='%s'><backend type='emulator' version='%s'/></tpm>", tc.model, tc.version)
			m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, dev))
			uuid := domainUUID(t, m, "g")
			qemu := m.Pid("g")
			pid := m.SwtpmPid("g")
			if pid <= 0 || !harness.Alive(pid) {
				t.Fatalf("no swtpm running (pid %d); log:\n%s", pid, readOr(m.SwtpmLog("g")))
			}
			st := startTime(pid)
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); filepath.Base(exe) != "swtpm" {
				t.Fatalf("pid %d is %s", pid, exe)
			}
			ps := procStatus(t, pid)
			if ppid, _ := strconv.Atoi(ps["PPid"]); ppid != m.DaemonPid() {
				t.Errorf("swtpm's parent %d, want the daemon %d", ppid, m.DaemonPid())
			}
			if qs := procStatus(t, qemu); ps["Uid"] != qs["Uid"] || ps["Gid"] != qs["Gid"] || ps["Groups"] != qs["Groups"] {
				t.Errorf("swtpm runs as Uid %q Gid %q Groups %q, QEMU as %q %q %q", ps["Uid"], ps["Gid"], ps["Groups"], qs["Uid"], qs["Gid"], qs["Groups"])
			}
			if f := strings.Fields(ps["Uid"]); len(f) == 0 || f[0] != strconv.Itoa(qemuUID) {
				t.Errorf("swtpm's Uid %q, want qemu's %d", ps["Uid"], qemuUID)
			}
			if ps["CapEff"] != "0000000000000000" {
				t.Errorf("swtpm CapEff %s, want none", ps["CapEff"])
			}
			if sc, qc := procCgroups(t, pid), procCgroups(t, qemu); fmt.Sprint(sc) != fmt.Sprint(qc) {
				t.Errorf("swtpm's cgroups %v, QEMU's %v", sc, qc)
			}
			stateDir := filepath.Join(m.SwtpmState(uuid), tc.sub)
			fi, err := os.Stat(filepath.Join(stateDir, tc.perm))
			if err != nil {
				t.Fatalf("TPM state: %v", err)
			}
			if s := fi.Sys().(*syscall.Stat_t); int(s.Uid) != qemuUID || int(s.Gid) != qemuGID {
				t.Errorf("state file owned by %d:%d, want qemu %d:%d", s.Uid, s.Gid, qemuUID, qemuGID)
			}
			if args := m.Read("g", "argv"); !strings.Contains(args, "-chardev socket,id=chrtpm,path="+m.SwtpmSocket("g")+" ") ||
				!strings.Contains(args, "-tpmdev emulator,id=tpm-tpm0,chardev=chrtpm") ||
				!strings.Contains(args, `"driver":"`+tc.model+`","tpmdev":"tpm-tpm0","id":"tpm0"`) {
				t.Errorf("argv lacks the TPM:\n%s", args)
			}
			guestTPM(t, m, "g", 1)

			m.MustCtl("g", "destroy")
			if !gone(pid, st) {
				t.Errorf("swtpm %d still there after destroy (%s)", pid, procStatus(t, pid)["State"])
			}
			if left := m.RuntimeFiles("g"); len(left) > 0 {
				t.Errorf("left behind after destroy: %v", left)
			}

			// Next start: the same state, not made again.
			m.MustCtl("g", "start")
			m.WaitConsole("g", harness.Guest(t).ReadyLine, boot)
			if fi2, err := os.Stat(filepath.Join(stateDir, tc.perm)); err != nil || !os.SameFile(fi, fi2) && fi2.ModTime().Before(fi.ModTime()) {
				t.Errorf("state after restart: %v", err)
			}
			if n := strings.Count(readOr(m.SwtpmLog("g")), "creating the TPM"); n != 1 {
				t.Errorf("the state was made %d times, want once:\n%s", n, readOr(m.SwtpmLog("g")))
			}
			guestTPM(t, m, "g", 2)
			pid2 := m.SwtpmPid("g")
			st2 := startTime(pid2)
			m.MustCtl("g", "shutdown")
			if !gone(pid2, st2) {
				t.Errorf("swtpm %d still there after shutdown", pid2)
			}
			// Undefine removes the state (no persistent_state).
			if err := m.Remove("g"); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(m.SwtpmState(uuid)); err == nil {
				t.Errorf("TPM state %s left after undefine", m.SwtpmState(uuid))
			}
		})
	}
}

// TestTPMReattach kills the daemon with SIGKILL under a TPM guest and
// mounts again: swtpm still runs, the guest still has its TPM, and swtpm
// ends with the guest (stopped by the new daemon, by pid).
func TestTPMReattach(t *testing.T) {
	needSwtpm(t)
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"))
	pid := m.SwtpmPid("g")
	st := startTime(pid)
	if pid <= 0 {
		t.Fatal("no swtpm")
	}
	m.KillDaemon()
	if !harness.Alive(pid) {
		t.Fatal("swtpm died with the daemon")
	}
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if got := m.State("g"); got != "running (booted)" {
		t.Fatalf("state after re-attach %q (error: %s)", got, m.ErrorOf("g"))
	}
	if startTime(pid) != st {
		t.Fatal("swtpm is not the same process after re-attach")
	}
	guestTPM(t, m, "g", 1)
	m.MustCtl("g", "destroy")
	// It has ended. The daemon that started it is gone, so it is init's
	// child now and init's to reap (this sandbox's init may leave the
	// zombie): only the daemon's own children are checked for that.
	if harness.Alive(pid) {
		t.Errorf("re-attached swtpm %d still running after destroy: %s", pid, readOr(fmt.Sprintf("/proc/%d/status", pid)))
	}
	if left := m.RuntimeFiles("g"); len(left) > 0 {
		t.Errorf("left behind after destroy: %v", left)
	}
}

func readOr(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(data)
}
