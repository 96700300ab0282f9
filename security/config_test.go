package security

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/security/apparmor"
	"github.com/qemufs/qemufs/security/cgroup"
	"github.com/qemufs/qemufs/security/selinux"
)

func TestDrivers(t *testing.T) {
	none := Host{}
	se := Host{SELinux: true}
	aaConfined := Host{AppArmor: true, AppArmorConfined: true}
	aaUnconfined := Host{AppArmor: true}
	cases := []struct {
		name       string
		driver     []string
		host       Host
		privileged bool
		want       []string
		err        string
	}{
		{"unset, nothing", nil, none, true, nil, ""},
		{"unset, selinux", nil, se, true, []string{"selinux"}, ""},
		{"unset, selinux session", nil, se, false, []string{"selinux"}, ""},
		{"unset, apparmor confined", nil, aaConfined, true, []string{"apparmor"}, ""},
		{"unset, apparmor unconfined daemon", nil, aaUnconfined, true, nil, ""},
		{"unset, apparmor session", nil, aaConfined, false, nil, ""},
		{"none, selinux host", []string{"none"}, se, true, nil, ""},
		{"none, bare host", []string{"none"}, none, true, nil, ""},
		{"selinux, has", []string{"selinux"}, se, true, []string{"selinux"}, ""},
		{"selinux, hasn't", []string{"selinux"}, none, true, nil, "SELinux is not enabled"},
		{"selinux, apparmor host", []string{"selinux"}, aaConfined, true, nil, "SELinux is not enabled"},
		{"apparmor, unconfined daemon", []string{"apparmor"}, aaUnconfined, true, []string{"apparmor"}, ""},
		{"apparmor, hasn't", []string{"apparmor"}, se, true, nil, "AppArmor is not enabled"},
		{"apparmor, session", []string{"apparmor"}, aaConfined, false, nil, "system instance only"},
		{"none plus selinux", []string{"none", "selinux"}, se, true, nil, "cannot be combined"},
		{"unknown", []string{"smack"}, none, true, nil, "unknown driver"},
		{"dac", []string{"dac"}, none, true, nil, "always active"},
		{"both", []string{"selinux", "apparmor"}, Host{SELinux: true, AppArmor: true}, true, nil, "cannot be active together"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := drivers(Config{SecurityDriver: c.driver, Privileged: c.privileged}, c.host)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want %q", err, c.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, c.want) {
				t.Fatalf("drivers = %v, %v; want %v", got, err, c.want)
			}
		})
	}
}

// system is a privileged config QEMU runs as nobody in, without cgroups
// unless the test asks.
func system() Config {
	return Config{User: "nobody", Group: "nogroup", DynamicOwnership: true, Privileged: true, SeccompSandbox: -1, InstanceName: "test"}
}

func TestNewErrors(t *testing.T) {
	notDev := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDev, nil, 0o600)
	cases := []struct {
		name string
		mod  func(*Config)
		host Host
		want string
	}{
		{"unknown user", func(c *Config) { c.User = "no-such-user-qemufs" }, Host{}, `user "no-such-user-qemufs"`},
		{"unknown group", func(c *Config) { c.Group = "no-such-group-qemufs" }, Host{}, `group "no-such-group-qemufs"`},
		{"ACL entry not a device", func(c *Config) { c.CgroupDeviceACL = []string{"/dev/null", notDev} }, Host{}, notDev + " is not a block or character device"},
		{"inactive driver", func(c *Config) { c.SecurityDriver = []string{"selinux"} }, Host{}, "SELinux is not enabled"},
		{"bad namespace", func(c *Config) { c.Namespaces = []string{"net"} }, Host{}, `"net" is not supported`},
		{"session namespace", func(c *Config) { c.Privileged = false; c.Namespaces = []string{"mount"} }, Host{}, "needs a privileged instance"},
		{"seccomp value", func(c *Config) { c.SeccompSandbox = 2 }, Host{}, "seccomp_sandbox 2"},
		{"bad controller", func(c *Config) { c.CgroupControllers = []string{"cpu", "gpu"} }, Host{Cgroup: cgroup.V1}, `"gpu" is not a cgroup controller`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := system()
			c.mod(&cfg)
			_, err := New(cfg, c.host)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}

func TestModels(t *testing.T) {
	s, err := New(system(), Host{})
	if err != nil {
		t.Fatal(err)
	}
	m := s.Models()
	if len(m) != 1 || m[0].Model != "dac" || m[0].DOI != "0" || m[0].BaseLabels["kvm"] != "+65534:+65534" || m[0].BaseLabels["qemu"] != "+65534:+65534" {
		t.Errorf("models = %+v", m)
	}
	ctx := selinux.DefaultContexts()
	s, err = New(system(), Host{SELinux: true, SELinuxLabeler: &selinux.Memory{}, SELinuxContexts: &ctx})
	if err != nil {
		t.Fatal(err)
	}
	m = s.Models()
	if len(m) != 2 || m[0].Model != "selinux" || m[0].BaseLabels["kvm"] != "system_u:system_r:svirt_t:s0" || m[0].BaseLabels["qemu"] != "system_u:system_r:svirt_tcg_t:s0" || m[1].Model != "dac" {
		t.Errorf("models = %+v", m)
	}
	s, err = New(system(), Host{AppArmor: true, AppArmorConfined: true, AppArmorLoader: &apparmor.Memory{}, AppArmorDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if m = s.Models(); len(m) != 2 || m[0].Model != "apparmor" {
		t.Errorf("models = %+v", m)
	}
}

func TestSetupDirs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	top := searchable(t)
	cfg := system()
	cfg.RunDir, cfg.LibDir, cfg.CacheDir, cfg.LogDir = filepath.Join(top, "run/qemu"), filepath.Join(top, "lib/qemu"), filepath.Join(top, "cache/qemu"), filepath.Join(top, "log/qemu")
	os.MkdirAll(cfg.LogDir, 0o700)
	if _, err := New(cfg, Host{}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{cfg.RunDir, cfg.LibDir, cfg.CacheDir} {
		if o := owner(t, d); o.UID != 65534 || o.GID != 65534 {
			t.Errorf("%s owned by %d:%d, want nobody:nogroup", d, o.UID, o.GID)
		}
	}
	if o := owner(t, cfg.LogDir); o.UID != 0 {
		t.Errorf("log dir given away: %+v", o)
	}
	// A directory QEMU cannot reach is refused at mount, with the fix.
	closed := filepath.Join(top, "closed")
	os.Mkdir(closed, 0o700)
	cfg.RunDir = filepath.Join(closed, "run")
	if _, err := New(cfg, Host{}); err == nil || !strings.Contains(err.Error(), "chmod o+x "+closed) {
		t.Errorf("err = %v, want the chmod o+x advice", err)
	}
}
