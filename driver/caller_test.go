package driver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/security/dac"
)

// TestCallerMay: what a user may hand QEMU, after symlinks, by the
// owner/group/other rule.
func TestCallerMay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make files of other users")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755) // t.TempDir's parent is 0700
	const uid, gid, other = 5001, 5001, 5002
	mk := func(name string, owner, group int, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, nil, mode)
		os.Chown(p, owner, group)
		os.Chmod(p, mode)
		return p
	}
	mine := mk("mine", uid, gid, 0o600)
	secret := mk("secret", 0, 0, 0o600)
	groupRO := mk("group-ro", other, 6000, 0o640)
	worldRO := mk("world-ro", 0, 0, 0o644)
	link := filepath.Join(dir, "link")
	os.Symlink(secret, link)
	closed := filepath.Join(dir, "closed")
	os.Mkdir(closed, 0o700)
	inClosed := filepath.Join(closed, "f")
	os.WriteFile(inClosed, nil, 0o666)
	userDir := filepath.Join(dir, "userdir")
	os.Mkdir(userDir, 0o755)
	os.Chown(userDir, uid, gid)

	id := dac.Identity{UID: uid, GID: gid, Groups: []uint32{6000}}
	for _, tc := range []struct {
		path     string
		readOnly bool
		want     string // "" allowed, else part of the reason
	}{
		{mine, false, ""},
		{secret, true, "owned by uid 0"},
		{link, true, "a symlink to " + secret},
		{groupRO, true, ""},
		{groupRO, false, "may not read and write"},
		{worldRO, true, ""},
		{worldRO, false, "may not read and write"},
		{inClosed, false, "not searchable"},
		{filepath.Join(userDir, "new.log"), false, ""},
		{filepath.Join(dir, "new.log"), false, "may not create files in"},
	} {
		err := callerMay(id, tc.path, tc.readOnly)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s (ro %v): %v, want allowed", tc.path, tc.readOnly, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s (ro %v): %v, want %q", tc.path, tc.readOnly, err, tc.want)
		}
	}
}

func TestUnder(t *testing.T) {
	dirs := []string{"/var/lib/qemufs/qemu", "/run/x"}
	for p, want := range map[string]bool{
		"/var/lib/qemufs/qemu/nvram/a_VARS.fd": true,
		"/var/lib/qemufs/qemu":                 true,
		"/var/lib/qemufs/qemu2/x":              false,
		"/run/x/../y":                          false,
		"/etc/shadow":                          false,
	} {
		if got := under(p, dirs); got != want {
			t.Errorf("under(%q) = %v, want %v", p, got, want)
		}
	}
}
