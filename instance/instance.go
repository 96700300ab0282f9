// Package instance says where one qemufs instance keeps its things — the
// session, embedded and system instances of libvirt's QEMU driver — and
// guards it so that only one daemon serves an instance at a time.
package instance

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Kind is the flavour of an instance, as libvirt's session/embed/system URIs.
type Kind int

// The instance kinds.
const (
	Session Kind = iota
	Embedded
	System
)

func (k Kind) String() string {
	switch k {
	case Session:
		return "session"
	case Embedded:
		return "embedded"
	case System:
		return "system"
	}
	return "unknown"
}

// MaxSocketPath is the longest UNIX socket path the kernel accepts
// (sizeof(sun_path) minus the terminating NUL).
const MaxSocketPath = 107

// socketSuffixLen is the length of the longest socket name qemufs puts in
// RunDir for a domain, beyond the domain name: "/" + name + ".qmp" and the
// per-domain directory for other sockets ("/NAME.d/vnc.sock").
const socketSuffixLen = len("/.d/vnc.sock")

// Instance is the set of directories and files of one instance.
type Instance struct {
	Kind Kind
	// Name identifies the instance in cgroup names and messages:
	// "system" ("system-HASH" relocated), "session-UID" or "embed-HASH".
	Name string
	// Root is the root directory of an embedded instance, or the prefix
	// of a relocated system instance (NewSystemUnder).
	Root string
	// ConfigFile is qemu.conf.
	ConfigFile string
	// ConfigDir holds the persistent domain definitions (NAME.xml) and
	// the autostart marks (autostart/NAME).
	ConfigDir string
	// LibDir holds per-domain persistent state (nvram, ...).
	LibDir string
	// RunDir holds QMP sockets and status files of running domains.
	RunDir string
	// LogDir holds each domain's log and pid file.
	LogDir string
	// CacheDir holds the capabilities cache.
	CacheDir string
	// SwtpmRunDir, SwtpmLibDir and SwtpmLogDir are for swtpm (TPM emulation).
	SwtpmRunDir, SwtpmLibDir, SwtpmLogDir string
	// PKIDir holds TLS material (etc/pki/qemu).
	PKIDir string
	// UID and GID own the instance (the invoking user for session).
	UID, GID int
}

// NewSession returns the session instance of the invoking user, located by
// the XDG base directory variables of env (os.Getenv when nil).
func NewSession(getenv func(string) string) (*Instance, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	home := getenv("HOME")
	xdg := func(key, def string) (string, error) {
		if v := getenv(key); v != "" {
			if !filepath.IsAbs(v) {
				return "", fmt.Errorf("%s=%q is not an absolute path", key, v)
			}
			return v, nil
		}
		if home == "" {
			return "", fmt.Errorf("neither %s nor HOME is set", key)
		}
		return filepath.Join(home, def), nil
	}
	config, err := xdg("XDG_CONFIG_HOME", ".config")
	if err != nil {
		return nil, err
	}
	state, err := xdg("XDG_STATE_HOME", ".local/state")
	if err != nil {
		return nil, err
	}
	cache, err := xdg("XDG_CACHE_HOME", ".cache")
	if err != nil {
		return nil, err
	}
	uid := os.Getuid()
	runtime := getenv("XDG_RUNTIME_DIR")
	if runtime == "" {
		// The XDG spec asks for a fallback with similar properties: a
		// private directory on a local filesystem with a short path.
		runtime = filepath.Join(os.TempDir(), "qemufs-run-"+strconv.Itoa(uid))
	} else if !filepath.IsAbs(runtime) {
		return nil, fmt.Errorf("XDG_RUNTIME_DIR=%q is not an absolute path", runtime)
	}
	base := filepath.Join(config, "qemufs")
	return &Instance{
		Kind:        Session,
		Name:        "session-" + strconv.Itoa(uid),
		ConfigFile:  filepath.Join(base, "qemu.conf"),
		ConfigDir:   filepath.Join(base, "qemu"),
		LibDir:      filepath.Join(base, "qemu", "lib"),
		RunDir:      filepath.Join(runtime, "qemufs", "qemu"),
		LogDir:      filepath.Join(state, "qemufs", "log", "qemu"),
		CacheDir:    filepath.Join(cache, "qemufs", "qemu"),
		SwtpmRunDir: filepath.Join(runtime, "qemufs", "swtpm"),
		SwtpmLibDir: filepath.Join(base, "swtpm"),
		SwtpmLogDir: filepath.Join(state, "qemufs", "log", "swtpm"),
		PKIDir:      filepath.Join(base, "pki", "qemu"),
		UID:         uid,
		GID:         os.Getgid(),
	}, nil
}

// NewEmbedded returns the embedded instance rooted at root, with libvirt's
// embedded layout. root must be absolute.
func NewEmbedded(root string) (*Instance, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("root %q: the root directory must be an absolute path", root)
	}
	root = filepath.Clean(root)
	sum := sha256.Sum256([]byte(root))
	return &Instance{
		Kind:        Embedded,
		Name:        "embed-" + hex.EncodeToString(sum[:6]),
		Root:        root,
		ConfigFile:  filepath.Join(root, "etc", "qemu.conf"),
		ConfigDir:   filepath.Join(root, "etc", "qemu"),
		LibDir:      filepath.Join(root, "lib", "qemu"),
		RunDir:      filepath.Join(root, "run", "qemu"),
		LogDir:      filepath.Join(root, "log", "qemu"),
		CacheDir:    filepath.Join(root, "cache", "qemu"),
		SwtpmRunDir: filepath.Join(root, "run", "swtpm"),
		SwtpmLibDir: filepath.Join(root, "lib", "swtpm"),
		SwtpmLogDir: filepath.Join(root, "log", "swtpm"),
		PKIDir:      filepath.Join(root, "etc", "pki", "qemu"),
		UID:         os.Getuid(),
		GID:         os.Getgid(),
	}, nil
}

// NewSystem returns the privileged system instance. Only root may serve it.
func NewSystem() (*Instance, error) {
	return NewSystemUnder("")
}

// NewSystemUnder returns the system instance with every path under prefix
// ("" is /): the same instance relocated, for packaging and for tests that
// need the privileged instance without touching the host's.
func NewSystemUnder(prefix string) (*Instance, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the system instance needs root")
	}
	if prefix != "" && !filepath.IsAbs(prefix) {
		return nil, fmt.Errorf("system prefix %q is not an absolute path", prefix)
	}
	in := &Instance{
		Kind:        System,
		Name:        "system",
		ConfigFile:  "/etc/qemufs/qemu.conf",
		ConfigDir:   "/etc/qemufs/qemu",
		LibDir:      "/var/lib/qemufs/qemu",
		RunDir:      "/run/qemufs/qemu",
		LogDir:      "/var/log/qemufs/qemu",
		CacheDir:    "/var/cache/qemufs/qemu",
		SwtpmRunDir: "/run/qemufs/swtpm",
		SwtpmLibDir: "/var/lib/qemufs/swtpm",
		SwtpmLogDir: "/var/log/qemufs/swtpm",
		PKIDir:      "/etc/qemufs/pki/qemu",
	}
	if prefix != "" {
		in.Root = filepath.Clean(prefix)
		// Its own name, so that relocated instances running side by side
		// (tests) do not share cgroups with each other or the real one.
		sum := sha256.Sum256([]byte(in.Root))
		in.Name = "system-" + hex.EncodeToString(sum[:6])
		for _, p := range []*string{&in.ConfigFile, &in.ConfigDir, &in.LibDir, &in.RunDir, &in.LogDir, &in.CacheDir,
			&in.SwtpmRunDir, &in.SwtpmLibDir, &in.SwtpmLogDir, &in.PKIDir} {
			*p = filepath.Join(in.Root, *p)
		}
	}
	return in, nil
}

// String names the instance for messages, e.g. "embedded instance /srv/vm".
func (in *Instance) String() string {
	if in.Kind == Embedded {
		return "embedded instance " + in.Root
	}
	return in.Kind.String() + " instance"
}

// Dirs lists the instance's directories in creation order.
func (in *Instance) Dirs() []string {
	return []string{in.ConfigDir, filepath.Join(in.ConfigDir, "autostart"), in.LibDir,
		in.RunDir, in.LogDir, in.CacheDir, in.SwtpmRunDir, in.SwtpmLibDir, in.SwtpmLogDir, in.PKIDir}
}

// Create makes the instance's directories. Private instances keep them
// owner-only; the system instance's run dir is reachable for QEMU's user.
func (in *Instance) Create() error {
	mode := os.FileMode(0o700)
	if in.Kind == System {
		mode = 0o755
	}
	rootExisted := true
	if in.Root != "" {
		if _, err := os.Stat(in.Root); errors.Is(err, os.ErrNotExist) {
			rootExisted = false
		}
	}
	for _, d := range in.Dirs() {
		if err := os.MkdirAll(d, mode); err != nil {
			return fmt.Errorf("%s: %w", in, err)
		}
	}
	if in.Kind == Session || in.Root == "" {
		return nil
	}
	// A privileged instance's QEMU runs as another user and must reach
	// the run, lib and cache directories (their last component is given
	// to it): the directories qemufs made on the way get the search bit.
	var ways []string
	if !rootExisted {
		ways = append(ways, in.Root)
	}
	for _, d := range []string{in.RunDir, in.LibDir, in.CacheDir, in.SwtpmRunDir, in.SwtpmLibDir} {
		for p := filepath.Dir(d); strings.HasPrefix(p, in.Root+"/"); p = filepath.Dir(p) {
			ways = append(ways, p)
		}
	}
	for _, p := range ways {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%s: %w", in, err)
		}
		if fi.Mode().Perm()&0o011 != 0o011 {
			if err := os.Chmod(p, fi.Mode().Perm()|0o011); err != nil {
				return fmt.Errorf("%s: %w", in, err)
			}
		}
	}
	return nil
}

// CheckSocketPaths fails when a domain socket under RunDir could exceed the
// kernel's limit for names up to maxName bytes; it names the limit and the
// root to shorten.
func (in *Instance) CheckSocketPaths(maxName int) error {
	longest := len(in.RunDir) + socketSuffixLen + maxName
	if longest > MaxSocketPath {
		return fmt.Errorf("%s: socket paths under %s would be up to %d bytes for a %d-byte domain name; UNIX sockets allow %d: use a shorter root directory",
			in, in.RunDir, longest, maxName, MaxSocketPath)
	}
	return nil
}

// Lock is held by the daemon serving an instance.
type Lock struct {
	f *os.File
}

// ErrLocked is wrapped by Acquire when another daemon serves the instance.
var ErrLocked = errors.New("instance already in use")

// Acquire takes the instance's lock, recording who holds it and where it is
// mounted so that a second daemon can say so.
func (in *Instance) Acquire(mountpoint string) (*Lock, error) {
	path := filepath.Join(filepath.Dir(in.RunDir), "qemufs.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", in, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		who := strings.TrimSpace(string(holder))
		if who == "" {
			who = "another qemufs"
		}
		return nil, fmt.Errorf("%s is already mounted (%s): %w", in, who, ErrLocked)
	}
	f.Truncate(0)
	fmt.Fprintf(f, "pid %d at %s\n", os.Getpid(), mountpoint)
	return &Lock{f: f}, nil
}

// Release drops the lock.
func (l *Lock) Release() error {
	l.f.Truncate(0)
	return l.f.Close()
}
