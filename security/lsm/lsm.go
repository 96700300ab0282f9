// Package lsm holds the few calls into the kernel's Linux Security Module
// interfaces that qemufs needs: which LSMs are active, SELinux file labels
// (the security.selinux extended attribute) and the label a process takes
// at its next exec. It imports nothing of qemufs, so procmgr's exec helper
// can call SetExecLabel; everything above it works against small interfaces
// so that it is testable on hosts without SELinux or AppArmor.
package lsm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Paths probed on the host; variables so that tests can point them elsewhere.
var (
	// SELinuxFS is where selinuxfs is mounted when SELinux is active.
	SELinuxFS = "/sys/fs/selinux"
	// AppArmorEnabledFile reads "Y" when the AppArmor module is enabled.
	AppArmorEnabledFile = "/sys/module/apparmor/parameters/enabled"
	// ProcSelf is the /proc directory of the calling process.
	ProcSelf = "/proc/self"
)

// Model names, as libvirt spells them in <secmodel> and <seclabel>.
const (
	SELinux  = "selinux"
	AppArmor = "apparmor"
)

const selinuxXattr = "security.selinux"

// SELinuxEnabled reports whether SELinux is active: selinuxfs is mounted
// and exposes its enforce switch (enforcing or permissive alike).
func SELinuxEnabled() bool {
	_, err := os.Stat(SELinuxFS + "/enforce")
	return err == nil
}

// AppArmorEnabled reports whether the AppArmor module is enabled.
func AppArmorEnabled() bool {
	b, err := os.ReadFile(AppArmorEnabledFile)
	return err == nil && strings.TrimSpace(string(b)) == "Y"
}

// AppArmorProfile returns the AppArmor profile confining the calling
// process, and false when it is unconfined or AppArmor is absent. libvirt
// activates AppArmor sVirt only when its daemon runs under a profile.
func AppArmorProfile() (string, bool) {
	for _, p := range []string{ProcSelf + "/attr/apparmor/current", ProcSelf + "/attr/current"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// "name (enforce)" or "unconfined".
		s := strings.TrimSpace(strings.TrimRight(string(b), "\x00"))
		if name, _, ok := strings.Cut(s, " ("); ok {
			s = name
		}
		if s == "" || s == "unconfined" {
			return "", false
		}
		return s, true
	}
	return "", false
}

// FileLabel returns the SELinux label of path (lgetfilecon): the
// security.selinux extended attribute, without following a final symlink.
func FileLabel(path string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(path, selinuxXattr, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			return "", &os.PathError{Op: "getfilecon", Path: path, Err: err}
		}
		return string(bytes.TrimRight(buf[:n], "\x00")), nil
	}
}

// SetFileLabel sets the SELinux label of path (lsetfilecon).
func SetFileLabel(path, label string) error {
	if err := unix.Lsetxattr(path, selinuxXattr, append([]byte(label), 0), 0); err != nil {
		return &os.PathError{Op: "setfilecon", Path: path, Err: err}
	}
	return nil
}

// SetExecLabel makes the calling thread's next execve run under the given
// label: an SELinux context (setexeccon) or an AppArmor profile
// (aa_change_onexec). The caller must have locked its OS thread and must
// exec from that thread, since the attribute is per task.
func SetExecLabel(model, value string) error {
	var paths []string
	var data string
	switch model {
	case SELinux:
		paths = []string{"/proc/thread-self/attr/exec"}
		data = value
	case AppArmor:
		// Newer kernels expose AppArmor's own directory, which works even
		// when another LSM owns the generic attr files.
		paths = []string{"/proc/thread-self/attr/apparmor/exec", "/proc/thread-self/attr/exec"}
		data = "exec " + value
	default:
		return fmt.Errorf("set exec label: unknown model %q", model)
	}
	var err error
	for _, p := range paths {
		if err = os.WriteFile(p, []byte(data), 0); err == nil {
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			break
		}
	}
	return fmt.Errorf("set %s exec label %q: %w", model, value, err)
}
