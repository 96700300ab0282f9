package security

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"unsafe"

	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/security/cgroup"
	"github.com/qemufs/qemufs/security/dac"
	"golang.org/x/sys/unix"
)

// KVMDevice is the KVM device node QEMU opens for type='kvm'.
const KVMDevice = "/dev/kvm"

// KVMAccess reports whether QEMU, as the user this instance runs it as,
// will be able to open dev (the KVM device) read-write, so that
// capabilities.xml lists KVM only where a type='kvm' guest starts. The
// daemon's own access is the prober's to check (it opens the device);
// this adds what differs for QEMU's user: the host node's owner, group
// and mode against that user and its groups (a distribution's kvm group),
// unless QEMU gets its own node in a private /dev, which the stack gives
// to QEMU's user (see Prepare). A nil error means QEMU can open it.
func (s *Stack) KVMAccess(dev string) error {
	if dev == "" {
		dev = KVMDevice
	}
	o, _, err := dac.Stat(dev)
	if err != nil {
		return fmt.Errorf("KVM device: %w", err)
	}
	if s.privateNode(dev) || s.id.IsRoot() {
		return nil
	}
	if os.Geteuid() == 0 {
		// As libvirt probes as QEMU's user: the kernel decides, so POSIX
		// ACLs and LSM file rules count too.
		if err := openAs(s.id, dev); err != nil {
			return fmt.Errorf("%w (%v)", kvmAccess(s.id, o, dev, false), err)
		}
		return nil
	}
	return kvmAccess(s.id, o, dev, false)
}

// openAs opens path read-write with the file-system identity of id (its
// uid, gid and groups) on one OS thread of its own, which is discarded
// afterwards: the credentials of the daemon's other threads never change.
// It needs root (CAP_SETUID, CAP_SETGID).
func openAs(id dac.Identity, path string) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, its
		// credentials with it.
		runtime.LockOSThread()
		groups := append([]uint32{}, id.Groups...)
		var gp unsafe.Pointer
		if len(groups) > 0 {
			gp = unsafe.Pointer(&groups[0])
		}
		// Raw system calls change this thread only (the libc wrappers and
		// syscall.Setgroups change every thread of the process).
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(gp), 0); e != 0 {
			errc <- fmt.Errorf("setgroups: %w", e)
			return
		}
		unix.RawSyscall(unix.SYS_SETFSGID, uintptr(id.GID), 0, 0)
		unix.RawSyscall(unix.SYS_SETFSUID, uintptr(id.UID), 0, 0)
		if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uint32(cur) != id.UID {
			errc <- fmt.Errorf("setfsuid %d did not take (fsuid %d)", id.UID, cur)
			return
		}
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err == nil {
			unix.Close(fd)
		}
		errc <- err
	}()
	return <-errc
}

// kvmAccess decides whether id can use the KVM node dev whose host owner
// is o; private says QEMU gets its own copy of the node, given to it.
func kvmAccess(id dac.Identity, o dac.Owner, dev string, private bool) error {
	if id.IsRoot() || id.Allows(o, dac.Read|dac.Write) || private {
		return nil
	}
	return fmt.Errorf("QEMU's user %s cannot open %s (owner %d:%d, mode %04o): "+
		"put %s in the device's group (usually kvm, with mode 0660), or keep qemu.conf's "+
		"mount namespace so that QEMU gets its own node", id, dev, o.UID, o.GID, uint32(o.Mode.Perm()), id.User)
}

// privateNode reports whether guests get their own copy of dev in a
// private /dev (namespaces on, dev in the cgroup device ACL).
func (s *Stack) privateNode(dev string) bool {
	if !s.mountNS {
		return false
	}
	dev = filepath.Clean(dev)
	return slices.ContainsFunc(s.acl, func(d cgroup.Device) bool { return d.Path == dev })
}

// nsOwners are the nodes of QEMU's private /dev that QEMU's user id gets:
// the KVM device, when the host's node does not let id open it (root-only
// /dev/kvm). Owner-only, like a node made for that one process.
func nsOwners(id dac.Identity, devices []string) map[string]procmgr.NodeOwner {
	if id.IsRoot() || !slices.Contains(devices, KVMDevice) {
		return nil
	}
	o, _, err := dac.Stat(KVMDevice)
	if err != nil {
		return nil
	}
	if no, give := kvmOwner(id, o); give {
		return map[string]procmgr.NodeOwner{KVMDevice: no}
	}
	return nil
}

// kvmOwner is the owner QEMU's private KVM node gets for QEMU's user id
// when the host's node, owned o, does not let id open it.
func kvmOwner(id dac.Identity, o dac.Owner) (procmgr.NodeOwner, bool) {
	if id.IsRoot() || id.Allows(o, dac.Read|dac.Write) {
		return procmgr.NodeOwner{}, false
	}
	return procmgr.NodeOwner{UID: id.UID, GID: id.GID, Mode: 0o600}, true
}
