package secrets

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	cases := []struct {
		name, xml string
		want      Secret
		err       string
	}{
		{name: "volume", xml: `<secret ephemeral='no' private='yes'><uuid>0A81F5B2-8403-7b23-c8d6-21ccc2f80d6f</uuid><description>d</description><usage type='volume'><volume>/var/a.img</volume></usage></secret>`,
			want: Secret{UUID: "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f", Private: true, Description: "d", UsageType: "volume", UsageID: "/var/a.img"}},
		{name: "ceph", xml: `<secret><usage type='ceph'><name>client.admin</name></usage></secret>`, want: Secret{UsageType: "ceph", UsageID: "client.admin"}},
		{name: "iscsi", xml: `<secret ephemeral='yes'><usage type='iscsi'><target>iqn.x</target></usage></secret>`, want: Secret{Ephemeral: true, UsageType: "iscsi", UsageID: "iqn.x"}},
		{name: "tls", xml: `<secret><usage type='tls'><name>t</name></usage></secret>`, want: Secret{UsageType: "tls", UsageID: "t"}},
		{name: "vtpm", xml: `<secret><usage type='vtpm'><name>v</name></usage></secret>`, want: Secret{UsageType: "vtpm", UsageID: "v"}},
		{name: "no usage", xml: `<secret/>`, want: Secret{}},
		{name: "bad uuid", xml: `<secret><uuid>nope</uuid></secret>`, err: "not a UUID"},
		{name: "bad private", xml: `<secret private='maybe'/>`, err: "private"},
		{name: "bad usage", xml: `<secret><usage type='disk'/></secret>`, err: "want volume"},
		{name: "usage without id", xml: `<secret><usage type='volume'/></secret>`, err: "<volume>"},
		{name: "not xml", xml: `<secret`, err: "secret XML"},
		{name: "other root", xml: `<domain/>`, err: "secret XML"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Parse([]byte(c.xml))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *s != c.want {
				t.Fatalf("got %+v want %+v", *s, c.want)
			}
			back, err := Parse(s.XML())
			if err != nil || *back != *s {
				t.Fatalf("round trip: %+v, %v", back, err)
			}
		})
	}
}

const u1 = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"

func newMgr(t *testing.T, dir string) *Manager {
	t.Helper()
	m, err := New(Options{ConfigDir: filepath.Join(dir, "etc"), KeyFile: filepath.Join(dir, "lib", "secrets.key")})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestValueAtRest(t *testing.T) {
	dir := t.TempDir()
	m := newMgr(t, dir)
	if fi, err := os.Stat(filepath.Join(dir, "lib", "secrets.key")); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	if err := m.Create("not-a-uuid"); !errors.Is(err, kindInvalid) {
		t.Fatalf("create bad name: %v", err)
	}
	if err := m.Create(u1); err != nil {
		t.Fatal(err)
	}
	if err := m.SetValue(u1, []byte("x")); !errors.Is(err, kindInvalid) {
		t.Fatalf("value before definition: %v", err)
	}
	if err := m.Define(u1, []byte(`<secret><uuid>11111111-2222-3333-4444-555555555555</uuid></secret>`)); !errors.Is(err, kindInvalid) {
		t.Fatalf("other uuid: %v", err)
	}
	if err := m.Define(u1, []byte(`<secret private='no'><usage type='volume'><volume>/a</volume></usage></secret>`)); err != nil {
		t.Fatal(err)
	}
	if err := m.SetValue(u1, []byte("hunter2-passphrase\n")); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "etc", u1+".value"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "hunter2") {
		t.Fatal("value stored in clear")
	}
	v, err := m.Value(u1)
	if err != nil || string(v) != "hunter2-passphrase" {
		t.Fatalf("value %q %v", v, err)
	}
	// A new manager over the same directories reads it back.
	m2 := newMgr(t, dir)
	if v, err := m2.Lookup("", "volume", "/a"); err != nil || string(v) != "hunter2-passphrase" {
		t.Fatalf("after reload: %q %v", v, err)
	}
	// Private: not readable through Value, still through Lookup.
	if err := m2.Define(u1, []byte(`<secret private='yes'><usage type='volume'><volume>/a</volume></usage></secret>`)); err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Value(u1); !errors.Is(err, kindPerm) || !strings.Contains(err.Error(), "private") {
		t.Fatalf("private value: %v", err)
	}
	if v, err := m2.Lookup(strings.ToUpper(u1), "", ""); err != nil || string(v) != "hunter2-passphrase" {
		t.Fatalf("lookup private: %q %v", v, err)
	}
	// A usage taken by another secret is refused.
	const u2 = "11111111-2222-3333-4444-555555555555"
	m2.Create(u2)
	if err := m2.Define(u2, []byte(`<secret><usage type='volume'><volume>/a</volume></usage></secret>`)); !errors.Is(err, kindExist) {
		t.Fatalf("usage clash: %v", err)
	}
	// A replaced key file: the value no longer decrypts, with the reason.
	if err := os.WriteFile(filepath.Join(dir, "lib", "secrets.key"), make([]byte, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	m3 := newMgr(t, dir)
	if _, err := m3.Lookup(u1, "", ""); !errors.Is(err, kindIO) || !strings.Contains(err.Error(), "key file") {
		t.Fatalf("wrong key: %v", err)
	}
	// A short key file is refused.
	os.WriteFile(filepath.Join(dir, "lib", "secrets.key"), []byte("short"), 0o600)
	if _, err := New(Options{ConfigDir: filepath.Join(dir, "etc"), KeyFile: filepath.Join(dir, "lib", "secrets.key")}); err == nil {
		t.Fatal("short key accepted")
	}
	if _, err := m3.Lookup("99999999-2222-3333-4444-555555555555", "", ""); !errors.Is(err, kindNotFound) {
		t.Fatalf("missing secret: %v", err)
	}
}

func TestEphemeral(t *testing.T) {
	dir := t.TempDir()
	m := newMgr(t, dir)
	m.Create(u1)
	if err := m.Define(u1, []byte(`<secret ephemeral='yes'/>`)); err != nil {
		t.Fatal(err)
	}
	if err := m.SetValue(u1, []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, err := m.Lookup(u1, "", ""); err != nil || string(v) != "v" {
		t.Fatalf("%q %v", v, err)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "etc", "*")); len(files) != 0 {
		t.Fatalf("ephemeral secret on disk: %v", files)
	}
	if err := m.Define(u1, []byte(`<secret ephemeral='no'/>`)); !errors.Is(err, kindInvalid) {
		t.Fatalf("ephemeral change: %v", err)
	}
	if err := m.Remove(u1); err != nil || m.Exists(u1) {
		t.Fatalf("remove: %v", err)
	}
}
