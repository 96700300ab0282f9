package procmgr

import "os"

// Spec describes one QEMU process to start. The driver fills the command,
// the security stack fills credentials, namespace and cgroup fields; procmgr
// only carries them out.
type Spec struct {
	// Name identifies the process in errors and logs (the domain name).
	Name string
	// Path is the emulator binary (absolute); Args are its arguments
	// (without argv[0], which is Path).
	Path string
	Args []string
	// Env is the complete environment of the process (nil: empty).
	Env []string
	// Dir is the working directory (absolute; entered as Credential). It
	// must never be on a qemufs mount. Empty: the daemon's.
	Dir string
	// LogPath receives QEMU's stdout and stderr (opened in append mode,
	// created 0600; empty: /dev/null). Stdin is always /dev/null.
	LogPath string
	// PidPath, when set, is written atomically with the pid ("PID\n") once
	// the process runs; Process.Cleanup removes it.
	PidPath string

	// Credential, when non-nil, is the user the process runs as; set right
	// before exec. A non-root credential leaves the process with no
	// capabilities; root keeps them.
	Credential *Credential
	// MountNS, when non-nil, runs the process in a private mount namespace
	// (all mounts private) with its own /dev; see MountNamespace.
	MountNS *MountNamespace
	// CgroupProcs are cgroup.procs files (v1 or v2) the process writes
	// itself into before exec, so it never runs outside its cgroups.
	CgroupProcs []string
	// ExtraFiles are inherited as fds 3, 4, ... (as in os/exec). No other fd
	// of the daemon is inherited (after Init).
	ExtraFiles []*os.File `json:"-"`
	// Label, when set, is applied to the exec'ed process (SELinux exec
	// context or AppArmor profile, through /proc/thread-self/attr); Start
	// fails if the LSM refuses it.
	Label *ExecLabel

	// Logf, when set, is told each start-up step as it completes or fails
	// ("spawn.Helper: ok (3.1ms)"), for the daemon's debug log.
	Logf func(format string, args ...any) `json:"-"`
}

// Credential is the identity QEMU runs as.
type Credential struct {
	UID, GID uint32
	Groups   []uint32 // supplementary groups; nil: none
}

// MountNamespace describes a private mount namespace for QEMU. Its /dev is
// a fresh tmpfs holding the Devices, /dev/ptmx, the symlinks fd, stdin,
// stdout and stderr, and the host's directory mounts below /dev (devpts,
// /dev/shm, mqueue, hugetlbfs) bind-mounted: /dev/pts is the host's devpts
// instance, so a pty QEMU allocates is the /dev/pts/N the daemon opens.
// qemufs's own FUSE mounts are detached in the namespace.
type MountNamespace struct {
	// Devices are the device nodes recreated in the private /dev (for
	// example /dev/null, /dev/kvm, a disk's /dev/loop0), with the host's
	// type, major/minor, mode and owner. Paths must be under /dev; host
	// symlinks stay symlinks (and their targets are added); missing host
	// nodes are skipped.
	Devices []string
	// Owners gives nodes of the private /dev (among Devices) another
	// owner and mode than the host's: a host that keeps /dev/kvm root-only
	// can still let QEMU's user open QEMU's own copy, as a distribution's
	// kvm group would. Only device nodes are changed; a path that is not
	// one in the private /dev is skipped.
	Owners map[string]NodeOwner `json:",omitempty"`
}

// NodeOwner is the owner and permission bits of a private /dev node.
type NodeOwner struct {
	UID, GID uint32
	Mode     uint32 // permission bits, e.g. 0o600
}

// ExecLabel is an LSM label applied at exec.
type ExecLabel struct {
	// Model is "selinux" or "apparmor".
	Model string
	// Value is the SELinux context or the AppArmor profile name.
	Value string
}
