package instance

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestEmbeddedLayout(t *testing.T) {
	in, err := NewEmbedded("/srv/vm/")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"ConfigFile": "/srv/vm/etc/qemu.conf", "ConfigDir": "/srv/vm/etc/qemu", "LibDir": "/srv/vm/lib/qemu",
		"RunDir": "/srv/vm/run/qemu", "LogDir": "/srv/vm/log/qemu", "CacheDir": "/srv/vm/cache/qemu",
		"SwtpmRunDir": "/srv/vm/run/swtpm", "SwtpmLibDir": "/srv/vm/lib/swtpm", "SwtpmLogDir": "/srv/vm/log/swtpm",
		"PKIDir": "/srv/vm/etc/pki/qemu",
	}
	v := reflect.ValueOf(in).Elem()
	for field, path := range want {
		if got := v.FieldByName(field).String(); got != path {
			t.Errorf("%s: got %q, want %q", field, got, path)
		}
	}
	if !strings.HasPrefix(in.Name, "embed-") {
		t.Errorf("name %q", in.Name)
	}
	if _, err := NewEmbedded("relative/dir"); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("relative root: got %v, want an error saying it must be absolute", err)
	}
}

func TestSessionXDG(t *testing.T) {
	env := map[string]string{"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1000", "XDG_CACHE_HOME": "/tmp/c"}
	in, err := NewSession(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	for got, want := range map[string]string{
		in.ConfigFile: "/home/u/.config/qemufs/qemu.conf",
		in.ConfigDir:  "/home/u/.config/qemufs/qemu",
		in.LogDir:     "/home/u/.local/state/qemufs/log/qemu",
		in.CacheDir:   "/tmp/c/qemufs/qemu",
		in.RunDir:     "/run/user/1000/qemufs/qemu",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	env["XDG_CONFIG_HOME"] = "rel"
	if _, err := NewSession(func(k string) string { return env[k] }); err == nil {
		t.Error("relative XDG_CONFIG_HOME accepted")
	}
}

func TestSocketPathLimit(t *testing.T) {
	short, _ := NewEmbedded("/tmp/x")
	if err := short.CheckSocketPaths(50); err != nil {
		t.Errorf("short root: %v", err)
	}
	long, _ := NewEmbedded("/tmp/" + strings.Repeat("d", 90))
	err := long.CheckSocketPaths(50)
	if err == nil || !strings.Contains(err.Error(), "107") || !strings.Contains(err.Error(), "shorter root") {
		t.Errorf("long root: got %v, want a clear limit error", err)
	}
}

func TestLockExcludesSecondDaemon(t *testing.T) {
	in, _ := NewEmbedded(t.TempDir())
	if err := in.Create(); err != nil {
		t.Fatal(err)
	}
	l, err := in.Acquire("/mnt/a")
	if err != nil {
		t.Fatal(err)
	}
	_, err = in.Acquire("/mnt/b")
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "/mnt/a") {
		t.Errorf("second acquire: got %v, want ErrLocked naming /mnt/a", err)
	}
	l.Release()
	l2, err := in.Acquire("/mnt/b")
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	l2.Release()
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		check   func(c *Config) bool
		wantErr string
		warn    string
	}{
		{name: "strings ints lists comments", text: `
# a comment
user = "qemu"   # trailing
group = 'kvm'
dynamic_ownership = 0
seccomp_sandbox = 1
cgroup_device_acl = [
    "/dev/null", "/dev/full",   # comment inside
    "/dev/zero",
]
remote_display_port_min = 5910
`, check: func(c *Config) bool {
			return c.User == "qemu" && c.Group == "kvm" && !c.DynamicOwnership && c.SeccompSandbox == 1 &&
				reflect.DeepEqual(c.CgroupDeviceACL, []string{"/dev/null", "/dev/full", "/dev/zero"}) && c.RemoteDisplayPortMin == 5910
		}},
		{name: "security_driver as string", text: `security_driver = "none"`,
			check: func(c *Config) bool { return reflect.DeepEqual(c.SecurityDriver, []string{"none"}) }},
		{name: "empty namespaces", text: `namespaces = []`,
			check: func(c *Config) bool { return len(c.Namespaces) == 0 && c.Namespaces != nil }},
		{name: "unknown key warns", text: "frobnicate = 1\nuser = \"x\"", warn: `line 1: unknown key "frobnicate"`,
			check: func(c *Config) bool { return c.User == "x" }},
		{name: "string for int", text: `seccomp_sandbox = "yes"`, wantErr: "1: seccomp_sandbox: expected an integer, got a string"},
		{name: "bad bool", text: `dynamic_ownership = 2`, wantErr: "dynamic_ownership: expected 0 or 1"},
		{name: "unquoted", text: `user = qemu`, wantErr: "user: bad value \"qemu\": strings need quotes"},
		{name: "unterminated list", text: `cgroup_device_acl = [ "/dev/null", `, wantErr: "unterminated list"},
		{name: "unterminated string", text: "user = \"qemu\n", wantErr: "unterminated string"},
		{name: "missing equals", text: `user "qemu"`, wantErr: "1: expected '=' after user"},
		{name: "bad namespace", text: `namespaces = ["net"]`, wantErr: `"net" is not one of mount`},
		{name: "port range", text: "remote_display_port_min = 6000\nremote_display_port_max = 5999", wantErr: "is above"},
		{name: "port low", text: "remote_display_port_min = 10", wantErr: "out of range"},
		{name: "incoming timeout", text: "migration_incoming_timeout = 0",
			check: func(c *Config) bool { return c.MigrationIncomingTimeout == 0 }},
		{name: "incoming timeout negative", text: "migration_incoming_timeout = -1", wantErr: "out of range"},
		{name: "error line number", text: "user = \"a\"\n\n\ngroup = 3", wantErr: "4: group: expected a string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig(Embedded)
			warnings, err := c.Parse([]byte(tt.text))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("- want error containing: %q\n-  got: %v", tt.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.warn != "" && (len(warnings) == 0 || !strings.Contains(warnings[0], tt.warn)) {
				t.Errorf("warnings %q, want %q", warnings, tt.warn)
			}
			if !tt.check(c) {
				t.Errorf("config not as expected: %+v", c)
			}
		})
	}
}

func TestLoadConfigMissingAndDefaults(t *testing.T) {
	c, _, err := LoadConfig(filepath.Join(t.TempDir(), "none.conf"), System)
	if err != nil {
		t.Fatal(err)
	}
	if c.User != DefaultQEMUUser || !reflect.DeepEqual(c.Namespaces, []string{"mount"}) || c.MigrationIncomingTimeout != DefaultMigrationIncomingTimeout {
		t.Errorf("system defaults: %+v", c)
	}
	p := filepath.Join(t.TempDir(), "qemu.conf")
	os.WriteFile(p, []byte("user = 5\n"), 0o644)
	if _, _, err := LoadConfig(p, Embedded); err == nil || !strings.HasPrefix(err.Error(), p+":1: user") {
		t.Errorf("got %v, want error prefixed with the file and line", err)
	}
}

// TestSystemUnderName: a relocated system instance has a name of its own,
// so its guests' cgroups never meet those of another instance.
func TestSystemUnderName(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the system instance needs root")
	}
	names := map[string]bool{}
	for _, prefix := range []string{"", "/tmp/a", "/tmp/b"} {
		in, err := NewSystemUnder(prefix)
		if err != nil {
			t.Fatal(err)
		}
		if prefix == "" && in.Name != "system" || prefix != "" && !strings.HasPrefix(in.Name, "system-") || names[in.Name] {
			t.Errorf("NewSystemUnder(%q).Name = %q", prefix, in.Name)
		}
		names[in.Name] = true
	}
}
