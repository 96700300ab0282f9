package dac

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/security/internal/sectest"
)

func TestLookup(t *testing.T) {
	id, err := Lookup("nobody", "")
	if err != nil {
		t.Skipf("no nobody user: %v", err)
	}
	if id.UID != 65534 || id.User != "nobody" {
		t.Errorf("nobody = %+v", id)
	}
	num, err := Lookup("+65534", "+65534")
	if err != nil {
		t.Fatal(err)
	}
	if num.UID != 65534 || num.GID != 65534 || num.User != "nobody" {
		t.Errorf("+65534:+65534 = %+v", num)
	}
	if num.Label() != "+65534:+65534" {
		t.Errorf("Label = %q", num.Label())
	}
	root, err := Lookup("root", "root")
	if err != nil || !root.IsRoot() {
		t.Errorf("root = %+v, %v", root, err)
	}
	for _, bad := range [][2]string{{"no-such-user-qemufs", ""}, {"nobody", "no-such-group-qemufs"}, {"", ""}, {"+4000000", ""}} {
		if _, err := Lookup(bad[0], bad[1]); err == nil {
			t.Errorf("Lookup(%q, %q) succeeded", bad[0], bad[1])
		}
	}
}

func TestAllows(t *testing.T) {
	id := Identity{UID: 100, GID: 200, Groups: []uint32{300}}
	cases := []struct {
		o    Owner
		want Access
		ok   bool
	}{
		{Owner{100, 0, 0o600}, Read | Write, true},
		{Owner{100, 0, 0o400}, Read | Write, false},
		{Owner{1, 200, 0o640}, Read, true},
		{Owner{1, 300, 0o640}, Read, true}, // supplementary group
		{Owner{1, 300, 0o640}, Write, false},
		{Owner{1, 1, 0o644}, Read, true},
		{Owner{1, 1, 0o700}, Search, false},
		{Owner{1, 1, 0o701}, Search, true},
		{Owner{100, 1, 0o077}, Read, false}, // owner bits win over other
	}
	for _, c := range cases {
		if got := id.Allows(c.o, c.want); got != c.ok {
			t.Errorf("Allows(%+v, %d) = %v, want %v", c.o, c.want, got, c.ok)
		}
	}
	if !(Identity{}).Allows(Owner{1, 1, 0}, Read|Write) {
		t.Error("root denied")
	}
}

func TestWant(t *testing.T) {
	id := Identity{UID: 100, GID: 200}
	cases := []struct {
		name    string
		cur     Owner
		g       Grant
		dir     bool
		want    Owner
		changed bool
	}{
		{"exclusive file", Owner{0, 0, 0o644}, Exclusive, false, Owner{100, 200, 0o644}, true},
		{"exclusive opens owner bits", Owner{0, 0, 0o000}, Exclusive, false, Owner{100, 200, 0o600}, true},
		{"exclusive dir", Owner{0, 0, 0o755}, Exclusive, true, Owner{100, 200, 0o755}, true},
		{"exclusive already", Owner{100, 200, 0o600}, Exclusive, false, Owner{100, 200, 0o600}, false},
		{"shared read, world readable", Owner{0, 0, 0o644}, SharedRead, false, Owner{0, 0, 0o644}, false},
		{"shared read, private", Owner{0, 0, 0o600}, SharedRead, false, Owner{0, 200, 0o640}, true},
		{"shared rw, group readable", Owner{0, 0, 0o640}, SharedReadWrite, false, Owner{0, 200, 0o660}, true},
		{"shared rw, already", Owner{0, 200, 0o660}, SharedReadWrite, false, Owner{0, 200, 0o660}, false},
	}
	for _, c := range cases {
		got, changed := Want(id, c.cur, c.g, c.dir)
		if got != c.want || changed != c.changed {
			t.Errorf("%s: Want = %+v, %v; want %+v, %v", c.name, got, changed, c.want, c.changed)
		}
	}
}

func TestCheckSearch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a directory another user cannot search")
	}
	id := Identity{UID: 65534, GID: 65534, User: "nobody", Group: "nogroup"}
	top := sectest.SearchableTempDir(t)
	closed := filepath.Join(top, "closed")
	open := filepath.Join(closed, "open")
	if err := os.MkdirAll(open, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(closed, 0o700)
	disk := filepath.Join(open, "disk.img")
	err := CheckSearch(id, disk)
	var se *SearchError
	if !errors.As(err, &se) || se.Dir != closed {
		t.Fatalf("err = %v, want SearchError for %s", err, closed)
	}
	if !strings.Contains(err.Error(), "chmod o+x "+closed) {
		t.Errorf("message %q does not say to run chmod o+x %s", err, closed)
	}
	os.Chmod(closed, 0o701)
	if err := CheckSearch(id, disk); err != nil {
		t.Errorf("after chmod o+x: %v", err)
	}
	os.Chmod(closed, 0o710)
	os.Chown(closed, 0, 65534)
	if err := CheckSearch(id, disk); err != nil {
		t.Errorf("searchable through the group: %v", err)
	}
	if err := CheckSearch(Identity{}, disk); err != nil {
		t.Errorf("root: %v", err)
	}
	if err := CheckSearch(id, "relative/disk"); err == nil {
		t.Error("relative path accepted")
	}
}

func TestApply(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, nil, 0o600)
	want := Owner{UID: 65534, GID: 65534, Mode: 0o640}
	if err := Apply(f, want); err != nil {
		t.Fatal(err)
	}
	got, _, err := Stat(f)
	if err != nil || got != want {
		t.Errorf("after Apply: %+v, %v; want %+v", got, err, want)
	}
}
