package lsm

import (
	"os"
	"path/filepath"
	"testing"
)

// withProbes points the probe paths into a temporary tree.
func withProbes(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	old := []string{SELinuxFS, AppArmorEnabledFile, ProcSelf}
	SELinuxFS = filepath.Join(dir, "selinux")
	AppArmorEnabledFile = filepath.Join(dir, "apparmor-enabled")
	ProcSelf = filepath.Join(dir, "self")
	os.MkdirAll(filepath.Join(ProcSelf, "attr", "apparmor"), 0o755)
	t.Cleanup(func() { SELinuxFS, AppArmorEnabledFile, ProcSelf = old[0], old[1], old[2] })
	return dir
}

func TestProbes(t *testing.T) {
	withProbes(t)
	if SELinuxEnabled() || AppArmorEnabled() {
		t.Fatal("empty tree reports an LSM")
	}
	os.MkdirAll(SELinuxFS, 0o755)
	os.WriteFile(filepath.Join(SELinuxFS, "enforce"), []byte("0"), 0o644)
	if !SELinuxEnabled() {
		t.Error("permissive SELinux not detected")
	}
	os.WriteFile(AppArmorEnabledFile, []byte("N\n"), 0o644)
	if AppArmorEnabled() {
		t.Error("enabled=N reported as enabled")
	}
	os.WriteFile(AppArmorEnabledFile, []byte("Y\n"), 0o644)
	if !AppArmorEnabled() {
		t.Error("enabled=Y not detected")
	}
	cur := filepath.Join(ProcSelf, "attr", "apparmor", "current")
	for content, want := range map[string]string{
		"unconfined\n":                 "",
		"/usr/sbin/qemufs (enforce)\n": "/usr/sbin/qemufs",
		"qemufs (complain)\x00":        "qemufs",
	} {
		os.WriteFile(cur, []byte(content), 0o644)
		got, ok := AppArmorProfile()
		if got != want || ok != (want != "") {
			t.Errorf("AppArmorProfile(%q) = %q, %v", content, got, ok)
		}
	}
}

func TestSetExecLabel(t *testing.T) {
	if err := SetExecLabel("smack", "x"); err == nil {
		t.Error("unknown model accepted")
	}
	if SELinuxEnabled() {
		t.Skip("SELinux active: writing an exec label would change this test's next exec")
	}
	// Without SELinux the kernel refuses the write: the error says so.
	if err := SetExecLabel(SELinux, "system_u:system_r:svirt_t:s0:c1,c2"); err == nil {
		t.Error("setexeccon succeeded on a host without SELinux")
	}
}
