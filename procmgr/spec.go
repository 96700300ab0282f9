package procmgr

import "os"

// Spec describes one QEMU process to start. The driver fills the command,
// the security stack fills credentials, namespace and cgroup fields; procmgr
// only carries them out.
type Spec struct {
	// Name identifies the process in errors and logs (the domain name).
	Name string
	// Path is the emulator binary; Args are its arguments (without argv[0]).
	Path string
	Args []string
	// Env is the complete environment of the process.
	Env []string
	// Dir is the working directory. It must never be on a qemufs mount.
	Dir string
	// LogPath receives QEMU's stdout and stderr (opened in append mode).
	LogPath string
	// PidPath, when set, is written with the pid once the process runs.
	PidPath string

	// Credential, when non-nil, is the user the process runs as; set right
	// before exec. A non-root credential leaves the process with no
	// capabilities; root keeps them.
	Credential *Credential
	// MountNS, when non-nil, runs the process in a private mount namespace
	// with its own /dev.
	MountNS *MountNamespace
	// CgroupProcs are cgroup.procs files the process writes itself into
	// before exec, so it never runs outside its cgroups.
	CgroupProcs []string
	// ExtraFiles are inherited as fds 3, 4, ... (as in os/exec).
	ExtraFiles []*os.File `json:"-"`
	// Label, when set, is applied to the exec'ed process by the security
	// driver that owns it (SELinux exec context or AppArmor profile).
	Label *ExecLabel

	// Logf, when set, is told each start-up step as it completes or fails
	// ("spawn.Helper: ok (3.1ms)"), for the daemon's debug log.
	Logf func(format string, args ...any) `json:"-"`
}

// Credential is the identity QEMU runs as.
type Credential struct {
	UID, GID uint32
	Groups   []uint32
}

// MountNamespace describes a private mount namespace for QEMU.
type MountNamespace struct {
	// Devices are the device nodes recreated in the private /dev (for
	// example /dev/null, /dev/kvm, a disk's /dev/loop0). Missing host nodes
	// are skipped.
	Devices []string
}

// ExecLabel is an LSM label applied at exec.
type ExecLabel struct {
	// Model is "selinux" or "apparmor".
	Model string
	// Value is the SELinux context or the AppArmor profile name.
	Value string
}
