package e2e

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
