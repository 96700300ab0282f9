package storage

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/qemufs/qemufs/internal/atomicfile"
	"github.com/qemufs/qemufs/internal/errkind"
	"github.com/qemufs/qemufs/internal/objtable"
)

// SecretLookup returns a secret's value by UUID, or by usage when uuid
// is empty (the secret driver's Lookup).
type SecretLookup func(uuid, usageType, usageID string) ([]byte, error)

// Options configure a Manager.
type Options struct {
	// ConfigDir keeps the pool definitions (NAME.xml) and autostart marks.
	ConfigDir string
	// RunDir keeps the marks of active pools, and short-lived secret
	// files for qemu-img.
	RunDir string
	// Secret gives the passphrases of encrypted volumes; nil: none.
	Secret SecretLookup
	// Logger receives the manager's own messages; nil discards them.
	Logger *log.Logger
}

// Manager runs the storage pools of one instance.
type Manager struct {
	opts Options
	logf func(string, ...any)

	mu    sync.Mutex // guards pools, inUse and the entries' fields
	pools *objtable.Table[*entry]
	inUse func(path string) string
}

// SetInUse tells the manager who uses an image: f names the running guest
// that has path open ("" when none). A volume in use is not deleted.
func (m *Manager) SetInUse(f func(path string) string) {
	m.mu.Lock()
	m.inUse = f
	m.mu.Unlock()
}

// user is the guest using path, "" when none (or when nobody tells).
func (m *Manager) user(path string) string {
	m.mu.Lock()
	f := m.inUse
	m.mu.Unlock()
	if f == nil {
		return ""
	}
	return f(path)
}

// entry is one pool: a slot made by mkdir, defined by its config.xml.
type entry struct {
	objtable.Base // Op serialises start, destroy, build, define, volume changes
	def           *Pool
	active        bool
	// slots are volumes made by mkdir and not yet created.
	slots  map[string]bool
	volErr map[string]string
}

// New loads the definitions; pools a previous daemon left active stay so
// (a mounted fs pool only while it is still mounted).
func New(opts Options) (*Manager, error) {
	m := &Manager{opts: opts, logf: func(string, ...any) {}}
	m.pools = objtable.New[*entry]("pool", opts.ConfigDir, &m.mu)
	if opts.Logger != nil {
		m.logf = opts.Logger.Printf
	}
	for _, d := range []string{opts.ConfigDir, filepath.Join(opts.ConfigDir, "autostart"), opts.RunDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("storage: %w", err)
		}
	}
	files, _ := filepath.Glob(filepath.Join(opts.ConfigDir, "*.xml"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		p, err := ParsePool(data)
		if err != nil || p.Name+".xml" != filepath.Base(f) {
			m.logf("pool %s: %v (definition skipped)", f, err)
			continue
		}
		e := newEntry(p.Name)
		e.def, e.Autostart = p, m.pools.Marked(p.Name)
		if _, err := os.Stat(m.activePath(p.Name)); err == nil {
			e.active = p.Type != "fs" && p.Type != "netfs" || isMountpoint(p.Target)
			if !e.active {
				os.Remove(m.activePath(p.Name))
			}
		}
		m.mu.Lock()
		m.pools.Put(e)
		m.mu.Unlock()
	}
	return m, nil
}

func newEntry(name string) *entry {
	return &entry{Base: objtable.Base{Name: name}, slots: map[string]bool{}, volErr: map[string]string{}}
}

func (m *Manager) activePath(name string) string { return filepath.Join(m.opts.RunDir, name+".active") }

func (m *Manager) lookup(name string) (*entry, error) { return m.pools.Lookup(name) }

// Names lists the pools, sorted.
func (m *Manager) Names() []string { return m.pools.Names() }

// Exists tells whether name is a pool or an empty slot.
func (m *Manager) Exists(name string) bool { return m.pools.Exists(name) }

// Create makes an empty slot, defined by a later Define.
func (m *Manager) Create(name string) error {
	if !NameRE.MatchString(name) {
		return errkind.Errorf(kindInvalid, "pool name %q: use letters, digits and _ . + - (not starting with . + -)", name)
	}
	return m.pools.Add(newEntry(name))
}

// Remove undefines a pool (EBUSY while active); its volumes stay on disk.
func (m *Manager) Remove(name string) error {
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	if e.active {
		return errkind.Errorf(kindBusy, "undefine pool %s: it is active; destroy it first", name)
	}
	return m.pools.Remove(name)
}

// Config returns the pool's XML with its current sizes; an empty slot has
// none.
func (m *Manager) Config(name string) ([]byte, error) {
	e, err := m.lookup(name)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	def, active := e.def, e.active
	m.mu.Unlock()
	if def == nil {
		return nil, nil
	}
	var capa, alloc, avail uint64
	if active {
		var st syscall.Statfs_t
		if syscall.Statfs(def.Target, &st) == nil {
			bs := uint64(st.Bsize)
			capa, avail = st.Blocks*bs, st.Bavail*bs
			alloc = capa - st.Bfree*bs
		}
	}
	return def.XML(capa, alloc, avail), nil
}

// Define checks a pool XML and stores it as name's definition. An active
// pool keeps its target; a definition that moves it is refused.
func (m *Manager) Define(name string, data []byte) (err error) {
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	defer func() { m.note(e, err) }()
	p, err := ParsePool(data)
	if err != nil {
		return errkind.Errorf(kindInvalid, "define pool %s: %w", name, err)
	}
	if p.Name != name {
		return errkind.Errorf(kindInvalid, "define pool %s: the XML names it %q", name, p.Name)
	}
	if err := hostSupports(p); err != nil {
		return errkind.Errorf(kindInvalid, "define pool %s: %w", name, err)
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	m.mu.Lock()
	var conflict error
	m.pools.Each(func(o *entry) {
		switch {
		case conflict != nil || o == e || o.def == nil:
		case p.UUID != "" && o.def.UUID == p.UUID:
			conflict = errkind.Errorf(kindExist, "define pool %s: pool %s has UUID %s already", name, o.Name, p.UUID)
		case o.def.Target == p.Target:
			conflict = errkind.Errorf(kindExist, "define pool %s: pool %s uses target %s already", name, o.Name, p.Target)
		}
	})
	if conflict != nil {
		m.mu.Unlock()
		return conflict
	}
	old, active := e.def, e.active
	m.mu.Unlock()
	if active && old != nil && (old.Target != p.Target || old.Type != p.Type) {
		return errkind.Errorf(kindBusy, "define pool %s: it is active; destroy it before changing its type or target", name)
	}
	if p.UUID == "" {
		if old != nil {
			p.UUID = old.UUID
		} else {
			p.UUID = newUUID()
		}
	}
	if err := atomicfile.WriteFile(m.pools.DefPath(name), p.XML(0, 0, 0), 0o600); err != nil {
		return errkind.Errorf(kindIO, "define pool %s: %w", name, err)
	}
	m.mu.Lock()
	e.def = p
	m.mu.Unlock()
	return nil
}

func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// note records the outcome of a command as the pool's `error`.
func (m *Manager) note(e *entry, err error) { m.pools.Note(e, err) }

// Control runs one ctl command: start, destroy, refresh, build
// [--overwrite], autostart on|off.
func (m *Manager) Control(ctx context.Context, name, line string) (err error) {
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	defer func() { m.note(e, err) }()
	f := strings.Fields(line)
	switch {
	case len(f) == 1 && f[0] == "start":
		return m.Start(ctx, name)
	case len(f) == 1 && f[0] == "destroy":
		return m.Destroy(ctx, name)
	case len(f) == 1 && f[0] == "refresh":
		return m.Refresh(name)
	case len(f) >= 1 && len(f) <= 2 && f[0] == "build" && (len(f) == 1 || f[1] == "--overwrite"):
		return m.Build(ctx, name, len(f) == 2)
	case len(f) == 2 && f[0] == "autostart" && (f[1] == "on" || f[1] == "off"):
		return m.SetAutostart(name, f[1] == "on")
	}
	return errkind.Errorf(kindInvalid, "pool %s: unknown command %q; commands: start, destroy, refresh, build [--overwrite], autostart on|off", name, strings.TrimSpace(line))
}

// defined returns the entry's definition under e.Op.
func (m *Manager) defined(e *entry, what string) (*Pool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.def == nil {
		return nil, errkind.Errorf(kindInvalid, "%s pool %s: it is not defined (write its config.xml)", what, e.Name)
	}
	return e.def, nil
}

// Build makes the pool's target directory (and for an fs pool with
// --overwrite, the filesystem on its device).
func (m *Manager) Build(ctx context.Context, name string, overwrite bool) error {
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	p, err := m.defined(e, "build")
	if err != nil {
		return err
	}
	if e.active {
		return errkind.Errorf(kindBusy, "build pool %s: it is active", name)
	}
	if err := hostSupports(p); err != nil {
		return errkind.Errorf(kindInvalid, "build pool %s: %w", name, err)
	}
	if err := os.MkdirAll(p.Target, os.FileMode(p.Mode)); err != nil {
		return errkind.Errorf(kindIO, "build pool %s: %w", name, err)
	}
	if err := os.Chmod(p.Target, os.FileMode(p.Mode)); err != nil {
		return errkind.Errorf(kindIO, "build pool %s: %w", name, err)
	}
	if p.Type == "fs" && overwrite {
		if p.Format == "" || p.Format == "auto" {
			return errkind.Errorf(kindInvalid, "build pool %s: --overwrite makes a filesystem: name its type in <source><format type='ext4'/>", name)
		}
		if out, err := exec.CommandContext(ctx, "mkfs", "-t", p.Format, p.Device).CombinedOutput(); err != nil {
			return errkind.Errorf(kindIO, "build pool %s: mkfs -t %s %s: %v: %s", name, p.Format, p.Device, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// Start activates a pool: a dir pool's target must exist; an fs pool's
// device is mounted on it.
func (m *Manager) Start(ctx context.Context, name string) error {
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	p, err := m.defined(e, "start")
	if err != nil {
		return err
	}
	if e.active {
		return errkind.Errorf(kindBusy, "start pool %s: it is active already", name)
	}
	if err := hostSupports(p); err != nil {
		return errkind.Errorf(kindInvalid, "start pool %s: %w", name, err)
	}
	fi, err := os.Stat(p.Target)
	if err != nil || !fi.IsDir() {
		return errkind.Errorf(kindInvalid, "start pool %s: target directory %s does not exist; build the pool first (echo build > ctl)", name, p.Target)
	}
	if p.Type == "fs" {
		if err := mountFS(ctx, p); err != nil {
			return errkind.Errorf(kindIO, "start pool %s: %w", name, err)
		}
	}
	if err := atomicfile.WriteFile(m.activePath(name), []byte(name+"\n"), 0o600); err != nil {
		return errkind.Errorf(kindIO, "start pool %s: %w", name, err)
	}
	m.mu.Lock()
	e.active = true
	m.mu.Unlock()
	return nil
}

// Destroy deactivates a pool (an fs pool is unmounted); volumes stay.
func (m *Manager) Destroy(ctx context.Context, name string) error {
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	p, err := m.defined(e, "destroy")
	if err != nil {
		return err
	}
	if !e.active {
		return errkind.Errorf(kindBusy, "destroy pool %s: it is not active", name)
	}
	if p.Type == "fs" && isMountpoint(p.Target) {
		if out, err := exec.CommandContext(ctx, "umount", p.Target).CombinedOutput(); err != nil {
			return errkind.Errorf(kindBusy, "destroy pool %s: umount %s: %v: %s", name, p.Target, err, strings.TrimSpace(string(out)))
		}
	}
	os.Remove(m.activePath(name))
	m.mu.Lock()
	e.active = false
	e.slots = map[string]bool{}
	m.mu.Unlock()
	return nil
}

// Refresh re-reads the pool's volumes (they are read from the target at
// every listing; this checks the pool is usable).
func (m *Manager) Refresh(name string) error {
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	p, err := m.active(e, "refresh")
	if err != nil {
		return err
	}
	if _, err := os.ReadDir(p.Target); err != nil {
		return errkind.Errorf(kindIO, "refresh pool %s: %w", name, err)
	}
	return nil
}

// active returns the definition of an active pool.
func (m *Manager) active(e *entry, what string) (*Pool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.def == nil || !e.active {
		return nil, errkind.Errorf(kindInvalid, "%s pool %s: it is not active (echo start > ctl)", what, e.Name)
	}
	return e.def, nil
}

// SetAutostart marks the pool to be started when the instance mounts.
func (m *Manager) SetAutostart(name string, on bool) error {
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	if _, err := m.defined(e, "autostart"); err != nil {
		return err
	}
	return m.pools.SetAutostart(e, on)
}

// Autostart starts the inactive pools marked autostart.
func (m *Manager) Autostart(ctx context.Context) {
	m.pools.Autostart(ctx, func(e *entry) bool { return !e.active && e.def != nil }, m.Start, m.logf)
}

// State is "inactive" or "running", and ", autostart" when marked so;
// an empty slot is "undefined".
func (m *Manager) State(name string) (string, error) {
	e, err := m.lookup(name)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := "inactive"
	switch {
	case e.def == nil:
		return "undefined", nil
	case e.active:
		s = "running"
	}
	if e.Autostart {
		s += " autostart"
	}
	return s, nil
}

// LastError is the message of the pool's last failed command.
func (m *Manager) LastError(name string) string { return m.pools.LastError(name) }

// hostSupports tells what the host lacks for a pool type.
func hostSupports(p *Pool) error {
	have := func(bin string) bool { _, err := exec.LookPath(bin); return err == nil }
	switch p.Type {
	case "fs":
		switch {
		case os.Geteuid() != 0:
			return errors.New("pool type 'fs' mounts a filesystem, which needs a privileged (root) instance")
		case !have("mount") || !have("umount"):
			return errors.New("pool type 'fs' needs mount(8) and umount(8) (util-linux)")
		case p.Format != "" && p.Format != "auto" && !kernelHasFS(p.Format):
			return fmt.Errorf("pool type 'fs': the kernel does not support filesystem %q (not in /proc/filesystems)", p.Format)
		}
	case "netfs":
		switch {
		case os.Geteuid() != 0:
			return errors.New("pool type 'netfs' mounts an NFS export, which needs a privileged (root) instance")
		case !have("mount.nfs"):
			return errors.New("pool type 'netfs' needs the NFS client: mount.nfs is not installed (nfs-common)")
		case !kernelHasFS("nfs"):
			return errors.New("pool type 'netfs' needs NFS support in the kernel (no nfs in /proc/filesystems)")
		}
		return errors.New("pool type 'netfs' is not implemented by qemufs yet, although this host has an NFS client")
	case "logical":
		if !have("lvcreate") || !have("vgs") {
			return errors.New("pool type 'logical' needs LVM2: lvcreate and vgs are not installed (lvm2)")
		}
		if data, _ := os.ReadFile("/proc/devices"); !strings.Contains(string(data), "device-mapper") {
			return errors.New("pool type 'logical' needs device-mapper in the kernel (no device-mapper in /proc/devices)")
		}
		return errors.New("pool type 'logical' is not implemented by qemufs yet, although this host has LVM2")
	}
	return nil
}

func kernelHasFS(name string) bool {
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && f[len(f)-1] == name {
			return true
		}
	}
	return false
}

// mountFS mounts an fs pool's device on its target.
func mountFS(ctx context.Context, p *Pool) error {
	if isMountpoint(p.Target) {
		return nil
	}
	if _, err := os.Stat(p.Device); err != nil {
		return fmt.Errorf("source device: %w", err)
	}
	args := []string{}
	if p.Format != "" && p.Format != "auto" {
		args = append(args, "-t", p.Format)
	}
	args = append(args, p.Device, p.Target)
	if out, err := exec.CommandContext(ctx, "mount", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("mount %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// isMountpoint tells whether dir is the root of a mounted filesystem.
func isMountpoint(dir string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && f[4] == filepath.Clean(dir) {
			return true
		}
	}
	return false
}
