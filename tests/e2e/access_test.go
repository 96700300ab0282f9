package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// The unprivileged account scripts/deps.sh makes for these tests, and the
// group it is a member of (used as admin_group or read_group).
const (
	testUser  = "qemufs-test"
	testGroup = "qemufs-admin"
)

// needTestUser skips the test when the test account is missing.
func needTestUser(t *testing.T) {
	t.Helper()
	if _, err := user.Lookup(testUser); err != nil {
		t.Skipf("no %s account: run scripts/deps.sh as root (%v)", testUser, err)
	}
	if _, err := user.LookupGroup(testGroup); err != nil {
		t.Skipf("no %s group: run scripts/deps.sh as root (%v)", testGroup, err)
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) is not installed")
	}
}

// asTestUser runs argv as the test account: with its groups from
// /etc/group (a member of testGroup), or with none at all.
func asTestUser(withGroups bool, env []string, argv ...string) (string, error) {
	groups := "--init-groups"
	if !withGroups {
		groups = "--clear-groups"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := append([]string{"--reuid=" + testUser, "--regid=" + testUser, groups, "--"}, argv...)
	cmd := exec.CommandContext(ctx, "setpriv", args...)
	cmd.Dir = "/"
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// denied is what the tools print for EACCES.
const denied = "Permission denied"

// accessOps are requests a user makes of a mount with a shut-off domain d;
// rmdir comes last (it undefines d when allowed).
var accessOps = []struct {
	name string
	argv func(m *harness.Mount, xml string) []string
}{
	{"list", func(m *harness.Mount, _ string) []string { return []string{"ls", m.Dir} }},
	{"read state", func(m *harness.Mount, _ string) []string { return []string{"cat", m.Path("d", "state")} }},
	{"read config.xml", func(m *harness.Mount, _ string) []string { return []string{"cat", m.Path("d", "config.xml")} }},
	{"mkdir", func(m *harness.Mount, _ string) []string { return []string{"mkdir", m.Path("u")} }},
	{"define", func(m *harness.Mount, xml string) []string {
		return []string{"bash", "-c", `cat "$1" > "$2"`, "-", xml, m.Path("d", "config.xml")}
	}},
	{"ctl", func(m *harness.Mount, _ string) []string {
		return []string{"bash", "-c", `echo bogus > "$1"`, "-", m.Path("d", "ctl")}
	}},
	{"monitor", func(m *harness.Mount, _ string) []string {
		return []string{"bash", "-c", `exec 3<>"$1"`, "-", m.Path("d", "monitor", "qmp")}
	}},
	{"rmdir", func(m *harness.Mount, _ string) []string { return []string{"rmdir", m.Path("d")} }},
}

// TestSystemMountAccess runs every request as an unprivileged user of a
// system mount, in and out of the qemu.conf group: root and admin_group
// write, read_group only reads, everyone else reads what is public (or
// nothing when a read group is set) and gets EACCES on every write.
func TestSystemMountAccess(t *testing.T) {
	t.Parallel()
	needTestUser(t)
	// Results in accessOps order: "" is success, denied is EACCES,
	// anything else a failure past the permission check (printed so).
	var (
		readOnly  = []string{"", "", denied, denied, denied, denied, denied, denied}
		noAccess  = []string{denied, denied, denied, denied, denied, denied, denied, denied}
		readGroup = []string{"", "", "", denied, denied, denied, denied, denied}
		admin     = []string{"", "", "", "", "", "Invalid argument", "Device or resource busy", ""}
	)
	tests := []struct {
		name      string
		conf      string
		member    []string // the user in testGroup
		nonMember []string // the same user without it
	}{
		{"no groups", "", readOnly, readOnly},
		{"admin_group", `admin_group = "` + testGroup + `"`, admin, readOnly},
		{"read_group", `read_group = "` + testGroup + `"`, readGroup, noAccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := harness.Start(t, harness.Options{System: true, QEMUConf: tt.conf})
			xml := harness.GuestXML(t, "d", guest.ActionNone, "")
			m.Define("d", xml)
			xmlFile := filepath.Join(m.Base, "d.xml")
			if err := os.WriteFile(xmlFile, []byte(xml), 0o644); err != nil {
				t.Fatal(err)
			}
			// The member goes last: as an admin it undefines d.
			for _, run := range []struct {
				who    string
				groups bool
				want   []string
			}{{"not in " + testGroup, false, tt.nonMember}, {"in " + testGroup, true, tt.member}} {
				for i, op := range accessOps {
					out, err := asTestUser(run.groups, nil, op.argv(m, xmlFile)...)
					want := run.want[i]
					switch {
					case want == "" && err != nil:
						t.Errorf("%s: %s: %v: %s", run.who, op.name, err, out)
					case want != "" && (err == nil || !strings.Contains(out, want)):
						t.Errorf("%s: %s: got %v %q, want %q", run.who, op.name, err, strings.TrimSpace(out), want)
					}
				}
			}
			// Root may always write.
			if err := os.Mkdir(m.Path("root"), 0o755); err != nil {
				t.Errorf("root: mkdir: %v", err)
			}
		})
	}
}

// TestEmbeddedMountAccess: a mount without allow_other (embedded or
// session) is its owner's alone; the kernel refuses everyone else.
func TestEmbeddedMountAccess(t *testing.T) {
	t.Parallel()
	needTestUser(t)
	m := harness.Start(t, harness.Options{})
	m.Define("d", harness.GuestXML(t, "d", guest.ActionNone, ""))
	for _, groups := range []bool{true, false} {
		for _, argv := range [][]string{
			{"ls", m.Dir},
			{"cat", m.Path("version")},
			{"stat", m.Path("d", "state")},
			{"mkdir", m.Path("u")},
		} {
			if out, err := asTestUser(groups, nil, argv...); err == nil || !strings.Contains(out, denied) {
				t.Errorf("%s as %s: got %v %q, want %s", strings.Join(argv, " "), testUser, err, strings.TrimSpace(out), denied)
			}
		}
	}
	if got := m.State("d"); got != "shut off (unknown)" {
		t.Errorf("owner reads state %q", got)
	}
}

// TestSessionMount mounts a session instance as the unprivileged test
// user: nobody else, root included, may use it; its QEMU runs as that
// user, without capabilities, in the sandbox, and with none of the
// privileged layers (no cgroup, no private /dev, no chown).
func TestSessionMount(t *testing.T) {
	t.Parallel()
	needTestUser(t)
	if out, err := asTestUser(true, nil, "sh", "-c", "exec 3<>/dev/fuse"); err != nil {
		t.Skipf("%s cannot open /dev/fuse (%s), so no user can mount a session here; Debian's default mode is 0666",
			testUser, strings.TrimSpace(out))
	}
	u, _ := user.Lookup(testUser)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	base, err := os.MkdirTemp("/tmp", "qfs-sess-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	dir := func(name string) string { return filepath.Join(base, name) }
	for _, d := range []string{"m", "config", "state", "cache", "run"} {
		if err := os.Mkdir(dir(d), 0o700); err != nil {
			t.Fatal(err)
		}
		os.Chown(dir(d), uid, gid)
	}
	os.Chmod(dir("m"), 0o755)
	bin := dir("qemufs")
	if data, err := os.ReadFile(harness.Bin(t)); err != nil || os.WriteFile(bin, data, 0o755) != nil {
		t.Fatalf("copy qemufs where %s can run it: %v", testUser, err)
	}
	xml := dir("g.xml")
	if err := os.WriteFile(xml, []byte(harness.GuestXML(t, "g", guest.ActionNone, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"HOME=/nonexistent", "XDG_CONFIG_HOME=" + dir("config"), "XDG_STATE_HOME=" + dir("state"),
		"XDG_CACHE_HOME=" + dir("cache"), "XDG_RUNTIME_DIR=" + dir("run"), "M=" + dir("m"), "X=" + xml}
	as := func(script string) (string, error) { return asTestUser(true, env, "bash", "-c", script) }
	if out, err := asTestUser(true, env, bin, "mount", "--daemon", dir("m")); err != nil {
		t.Fatalf("session mount as %s: %v: %s", testUser, err, out)
	}
	t.Cleanup(func() {
		pid := sessionPid(dir("state"), "qemufs/log/qemu/g.pid")
		if out, err := asTestUser(true, env, bin, "unmount", dir("m")); err != nil {
			t.Logf("unmount: %v: %s", err, out)
			unix.Unmount(dir("m"), unix.MNT_DETACH)
			if d := sessionDaemon(dir("state")); d > 0 {
				harness.WaitKill(d, syscall.SIGKILL)
			}
		}
		if pid > 0 && harness.Alive(pid) {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.Contains(exe, "qemu") {
				harness.WaitKill(pid, syscall.SIGKILL)
			}
		}
	})

	if _, err := os.ReadDir(dir("m")); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("root lists the user's session mount: %v, want EACCES", err)
	}
	out, err := as(`set -e; mkdir "$M/g"; cat "$X" > "$M/g/config.xml"; echo start > "$M/g/ctl"; cat "$M/g/pid"`)
	if err != nil {
		t.Fatalf("start as %s: %v: %s", testUser, err, out)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(out))
	st := procStatus(t, pid)
	if st["Uid"] != ids(uid) || st["CapEff"] != "0000000000000000" || st["Seccomp"] != "2" {
		t.Errorf("session QEMU: Uid %q CapEff %q Seccomp %q, want %s's, none, 2", st["Uid"], st["CapEff"], st["Seccomp"], testUser)
	}
	own, _ := os.Readlink("/proc/self/ns/mnt")
	if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); ns != own {
		t.Errorf("session QEMU in mount namespace %s, want the host's", ns)
	}
	if cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); strings.Contains(string(cg), "qemufs-") {
		t.Errorf("session QEMU in a qemufs cgroup:\n%s", cg)
	}
	live, err := as(`cat "$M/g/live.xml"`)
	if err != nil {
		t.Fatal(err, live)
	}
	label := fmt.Sprintf("+%d:+%d", uid, gid)
	if l := parseSec(t, live).Labels; len(l) != 1 || l[0].Model != "dac" || l[0].Relabel != "no" || l[0].Label != label {
		t.Errorf("session live.xml seclabels %+v, want dac %s without relabeling", l, label)
	}
	if out, err := as(`echo destroy > "$M/g/ctl" && cat "$M/g/state"`); err != nil || strings.TrimSpace(out) != "shut off (destroyed)" {
		t.Errorf("destroy: %v: %s", err, out)
	}
}

// sessionPid reads a pid file below the session's state directory.
func sessionPid(state, rel string) int {
	b, _ := os.ReadFile(filepath.Join(state, rel))
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// sessionDaemon finds the session daemon's pid in its log.
func sessionDaemon(state string) int {
	b, _ := os.ReadFile(filepath.Join(state, "qemufs/log/qemufs.log"))
	m := regexp.MustCompile(`mounted at .* \(pid (\d+)\)`).FindAllSubmatch(b, -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(string(m[len(m)-1][1]))
	return n
}
