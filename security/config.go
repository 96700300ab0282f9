// Package security is qemufs's security stack for QEMU: the layers of the
// "Driver security architecture" of libvirt's QEMU driver, each active as
// far as the host supports it. A Stack is built once per instance from
// qemu.conf and host probing (New); for every start it prepares the
// guest's files, labels and cgroup and fills the procmgr.Spec (Prepare),
// and it undoes all of that at stop (Restore), also after a daemon restart
// from the JSON Record it returned (Reattach, then Restore).
//
// The layers live in subpackages, one job each: dac (identity and file
// ownership), cgroup (per-guest cgroup, device ACL, tunables), selinux and
// apparmor (sVirt), lsm (the kernel calls). This package only combines
// them: mount namespace and seccomp need no more than a field of the Spec
// and two arguments.
package security

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/qemufs/qemufs/security/apparmor"
	"github.com/qemufs/qemufs/security/cgroup"
	"github.com/qemufs/qemufs/security/lsm"
	"github.com/qemufs/qemufs/security/selinux"
)

// DefaultUser and DefaultGroup are who QEMU runs as in a privileged
// instance when qemu.conf does not say: a system account the install
// creates, as distributions do (the reference page recommends 'qemu').
const (
	DefaultUser  = "qemu"
	DefaultGroup = "qemu"
)

// Config is what qemu.conf says, as the driver parsed it.
type Config struct {
	// User and Group QEMU runs as in a privileged instance (names or
	// "+N"); empty means DefaultUser/DefaultGroup. A session instance
	// ignores them: QEMU runs as the session's user.
	User, Group string
	// DynamicOwnership is qemu.conf's dynamic_ownership, whose default is
	// on: set it true unless qemu.conf says 0.
	DynamicOwnership bool
	// SecurityDriver is security_driver: empty probes the host (SELinux,
	// else AppArmor), ["none"] disables the LSM drivers, otherwise each
	// named driver must be active on the host. DAC is always on.
	SecurityDriver []string
	// CgroupControllers is cgroup_controllers; nil means libvirt's
	// default list, an empty list disables cgroups.
	CgroupControllers []string
	// CgroupDeviceACL is cgroup_device_acl; nil means the default list.
	CgroupDeviceACL []string
	// Namespaces is namespaces; nil means ["mount"] for a privileged
	// instance and none for a session.
	Namespaces []string
	// SeccompSandbox is seccomp_sandbox: -1 unset (on), 0 off, 1 on.
	SeccompSandbox int
	// Privileged is true for the system instance and an embedded
	// instance run as root, false for a session.
	Privileged bool
	// InstanceName names the instance in cgroup paths: "system",
	// "session-1000", "embed-<hash>".
	InstanceName string
	// RunDir, LibDir and CacheDir are the instance's qemu directories;
	// in a privileged instance New makes them QEMU's (QEMU creates its
	// sockets and state there). LogDir stays the daemon's: QEMU writes
	// its log through a descriptor opened before it drops privileges.
	RunDir, LibDir, CacheDir, LogDir string
}

// Host is what probing found, plus the backends of the drivers this
// host cannot exercise for real (nil means the real one).
type Host struct {
	// SELinux is true when selinuxfs is mounted.
	SELinux bool
	// AppArmor is true when the AppArmor module is enabled.
	AppArmor bool
	// AppArmorConfined is true when the daemon itself runs under an
	// AppArmor profile: auto-probing activates AppArmor sVirt only then,
	// as the reference page says of libvirtd.
	AppArmorConfined bool
	// Cgroup is the hierarchy to use; CgroupMount its mount point
	// ("" is /sys/fs/cgroup).
	Cgroup      cgroup.Version
	CgroupMount string
	// KVM is true when /dev/kvm exists.
	KVM bool

	// SELinuxLabeler labels files (nil: the security.selinux xattr).
	SELinuxLabeler selinux.Labeler
	// SELinuxContexts are the policy's base contexts (nil: read from
	// the host policy).
	SELinuxContexts *selinux.Contexts
	// AppArmorLoader loads profiles (nil: apparmor_parser).
	AppArmorLoader apparmor.Loader
	// AppArmorDir holds the guest profiles and TEMPLATE ("" is
	// /etc/apparmor.d/libvirt).
	AppArmorDir string
}

// ProbeHost returns the facts of this host.
func ProbeHost() Host {
	_, confined := lsm.AppArmorProfile()
	_, kvmErr := os.Stat("/dev/kvm")
	return Host{
		SELinux:          lsm.SELinuxEnabled(),
		AppArmor:         lsm.AppArmorEnabled(),
		AppArmorConfined: confined,
		Cgroup:           cgroup.Detect(),
		KVM:              kvmErr == nil,
	}
}

// SeccompArgs are the QEMU arguments of the seccomp sandbox, as libvirt
// passes them.
var SeccompArgs = []string{"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"}

// drivers decides the active LSM drivers from security_driver and the
// host: probing picks SELinux, else AppArmor (a privileged instance whose
// daemon is confined); a named driver must be active.
func drivers(cfg Config, h Host) ([]string, error) {
	active := map[string]bool{
		lsm.SELinux:  h.SELinux,
		lsm.AppArmor: h.AppArmor && cfg.Privileged,
	}
	why := map[string]string{
		lsm.SELinux:  "SELinux is not enabled on this host",
		lsm.AppArmor: "AppArmor is not enabled on this host",
	}
	if h.AppArmor && !cfg.Privileged {
		why[lsm.AppArmor] = "AppArmor sVirt confines the system instance only"
	}
	switch {
	case len(cfg.SecurityDriver) == 0:
		if active[lsm.SELinux] {
			return []string{lsm.SELinux}, nil
		}
		if active[lsm.AppArmor] && h.AppArmorConfined {
			return []string{lsm.AppArmor}, nil
		}
		return nil, nil
	case slices.Contains(cfg.SecurityDriver, "none"):
		if len(cfg.SecurityDriver) > 1 {
			return nil, fmt.Errorf("security_driver: \"none\" cannot be combined with other drivers")
		}
		return nil, nil
	}
	var out []string
	for _, d := range cfg.SecurityDriver {
		switch d {
		case lsm.SELinux, lsm.AppArmor:
			if !active[d] {
				return nil, fmt.Errorf("security_driver %q: %s", d, why[d])
			}
			if slices.Contains(out, d) {
				return nil, fmt.Errorf("security_driver %q: listed twice", d)
			}
			out = append(out, d)
		case "dac":
			return nil, fmt.Errorf("security_driver: \"dac\" is always active and is not listed")
		default:
			return nil, fmt.Errorf("security_driver %q: unknown driver (selinux, apparmor or none)", d)
		}
	}
	if len(out) > 1 {
		return nil, fmt.Errorf("security_driver: %s cannot be active together", strings.Join(out, " and "))
	}
	return out, nil
}
