// Package driver is the core of qemufs: one Driver per mounted instance owns
// the domain table, runs lifecycle operations (define, start, shutdown,
// destroy, ...) under a per-domain lock, supervises running guests and
// publishes their events. It knows nothing of FUSE; package fsnode is a thin
// view over it.
package driver

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/qemufs/qemufs/capabilities"
	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/instance"
	"github.com/qemufs/qemufs/internal/atomicfile"
	"github.com/qemufs/qemufs/network"
	"github.com/qemufs/qemufs/secrets"
	"github.com/qemufs/qemufs/security"
	"github.com/qemufs/qemufs/storage"
	"github.com/qemufs/qemufs/stream"
)

// Options configure a Driver.
type Options struct {
	Instance *instance.Instance
	Config   *instance.Config
	// Caps are the probed capabilities; definitions are validated
	// against them.
	Caps *capabilities.Capabilities
	// Security confines QEMU; nil runs it unconfined (as the invoking user).
	Security *security.Stack
	// Networks is the instance's network driver, which connects
	// type='network' interfaces; nil: none (user-mode networking for them
	// when unprivileged).
	Networks *network.Manager
	// Pools is the instance's storage driver, which resolves
	// <disk type='volume'> at start; nil: such disks are refused.
	Pools *storage.Manager
	// Secrets is the instance's secret driver, which gives encrypted
	// disks their passphrases; nil: such disks are refused.
	Secrets *secrets.Manager
	// Logger receives the daemon's own messages; nil discards them.
	Logger *log.Logger
	// Version is qemufs's version, written to each guest's log.
	Version string

	// incomingTimer is Driver.incomingTimer from the start, for tests of
	// what re-attach arms.
	incomingTimer func(time.Duration) <-chan time.Time
}

// Limits on stream history kept in memory per domain.
const (
	eventsHistory  = 64 << 10
	consoleHistory = 256 << 10
)

// Driver manages the domains of one instance.
type Driver struct {
	opts   Options
	inst   *instance.Instance
	conf   *instance.Config
	caps   *capabilities.Capabilities
	sec    *security.Stack
	nets   *network.Manager
	pools  *storage.Manager
	secs   *secrets.Manager
	leases LeaseSource // DHCP leases for `interfaces`; the network driver's
	logf   func(format string, args ...any)
	ports  *portAllocator

	// incomingTimer, when set, replaces time.After for the bound on an
	// incoming migration's wait (tests fire it when they choose).
	incomingTimer func(time.Duration) <-chan time.Time

	mu      sync.Mutex
	doms    map[string]*dom
	closing bool
	wg      sync.WaitGroup // supervisors and background restarts
}

// dom is one domain: a slot made by mkdir, defined once config.xml is written.
type dom struct {
	name string
	// op serialises lifecycle operations (ctl commands, define, undefine).
	op sync.Mutex

	// mu guards the fields below; it is held only briefly, so reads of
	// state or XML never wait for a lifecycle operation.
	mu        sync.Mutex
	def       *domain.Domain // nil for an empty slot
	defXML    []byte
	autostart bool
	state     State
	reason    string
	lastErr   string
	run       *run // non-nil while QEMU runs
	pending   *run // a re-attached QEMU whose monitor has not answered yet (reattach_pending.go)
	removed   bool

	events *stream.Log // lifecycle events; lives across runs
	snaps  snapSet     // snapshots (snapshot.go), loaded on first use
}

// New returns a Driver for an instance: it loads the persistent definitions
// and re-attaches to every guest a previous daemon left running. It does
// not autostart anything; call Autostart.
func New(opts Options) (*Driver, error) {
	if opts.Instance == nil || opts.Config == nil {
		return nil, errors.New("driver: Instance and Config are required")
	}
	d := &Driver{
		opts: opts,
		inst: opts.Instance,
		conf: opts.Config,
		caps: opts.Caps,
		sec:  opts.Security,
		nets: opts.Networks,
		doms: map[string]*dom{},

		incomingTimer: opts.incomingTimer,
	}
	d.pools, d.secs = opts.Pools, opts.Secrets
	if d.caps == nil {
		d.caps = &capabilities.Capabilities{}
	}
	if d.nets != nil {
		d.leases = networkLeases{d.nets}
	}
	d.logf = func(string, ...any) {}
	if opts.Logger != nil {
		d.logf = opts.Logger.Printf
	}
	d.ports = newPortAllocator(d.conf.RemoteDisplayPortMin, d.conf.RemoteDisplayPortMax)
	if err := d.inst.Create(); err != nil {
		return nil, err
	}
	if err := d.loadDefinitions(); err != nil {
		return nil, err
	}
	d.removeSaveTemps() // startjournal.go
	d.reattachAll()
	return d, nil
}

// MaxNameLen is the longest domain name: QEMU's sockets live in the run
// directory and must fit the kernel's 108-byte limit.
func (d *Driver) MaxNameLen() int {
	n := instance.MaxSocketPath - len(d.inst.RunDir) - len("/.d/vnc.sock")
	if n > 200 {
		n = 200
	}
	return n
}

// checkName rejects names that cannot be a directory or a file name.
func (d *Driver) checkName(name string) error {
	switch {
	case name == "":
		return errorf(ErrInvalid, "empty domain name")
	case name == "." || name == "..":
		return errorf(ErrInvalid, "domain name %q is not allowed", name)
	case strings.ContainsRune(name, '/'):
		return errorf(ErrInvalid, "domain name %q contains '/'", name)
	case name == "nvram":
		// lib/qemu/NAME is a guest's home, and lib/qemu/nvram holds
		// every guest's UEFI variables: that guest's QEMU would own it.
		return errorf(ErrInvalid, "domain name %q is reserved (the instance keeps every guest's NVRAM in lib/qemu/nvram)", name)
	case strings.HasPrefix(name, "."):
		return errorf(ErrInvalid, "domain name %q starts with '.'", name)
	case strings.ContainsAny(name, "\x00\n"):
		return errorf(ErrInvalid, "domain name %q contains a control character", name)
	case len(name) > d.MaxNameLen():
		return errorf(ErrInvalid, "domain name %q is %d bytes; this instance allows %d (UNIX socket paths under %s are limited to %d bytes)",
			name, len(name), d.MaxNameLen(), d.inst.RunDir, instance.MaxSocketPath)
	}
	return nil
}

func (d *Driver) defPath(name string) string {
	return filepath.Join(d.inst.ConfigDir, name+".xml")
}

func (d *Driver) autostartPath(name string) string {
	return filepath.Join(d.inst.ConfigDir, "autostart", name)
}

func (d *Driver) loadDefinitions() error {
	entries, err := os.ReadDir(d.inst.ConfigDir)
	if err != nil {
		return fmt.Errorf("load definitions: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), ".xml.tmp") {
			// A definition write that a crash interrupted before its
			// rename (atomicfile): the old definition stands.
			os.Remove(filepath.Join(d.inst.ConfigDir, e.Name()))
			d.logf("removed %s, left by an interrupted definition write", e.Name())
			continue
		}
		name, ok := strings.CutSuffix(e.Name(), ".xml")
		if !ok || e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(d.inst.ConfigDir, e.Name()))
		if err != nil {
			d.logf("load %s: %v", name, err)
			continue
		}
		def, err := domain.Parse(data)
		if err != nil {
			// Keep going: one bad file must not hide the other domains.
			d.logf("load %s: %v (definition skipped)", name, err)
			continue
		}
		dm := d.newDom(name)
		dm.def, dm.defXML = def, def.XML()
		dm.state, dm.reason = StateShutoff, ReasonUnknown
		if d.hasManagedSave(name) {
			dm.reason = ReasonSaved
		}
		if _, err := os.Stat(d.autostartPath(name)); err == nil {
			dm.autostart = true
		}
		d.doms[name] = dm
	}
	return nil
}

func (d *Driver) newDom(name string) *dom {
	return &dom{name: name, events: stream.New(eventsHistory, true), state: StateUndefined}
}

// lookup returns the domain called name.
func (d *Driver) lookup(name string) (*dom, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return nil, errorf(ErrIO, "domain %q: qemufs is shutting down", name)
	}
	dm, ok := d.doms[name]
	if !ok {
		return nil, errorf(ErrNotFound, "domain %q not found", name)
	}
	return dm, nil
}

// Names lists the domains (defined and empty slots), sorted.
func (d *Driver) Names() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	names := make([]string, 0, len(d.doms))
	for n := range d.doms {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Exists reports whether a domain or slot called name exists.
func (d *Driver) Exists(name string) bool {
	_, err := d.lookup(name)
	return err == nil
}

// Create makes an empty slot called name (mkdir).
func (d *Driver) Create(name string) error {
	if err := d.checkName(name); err != nil {
		// No domain exists to hold the reason: the daemon's log does.
		d.logf("mkdir: %v", err)
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.doms[name]; ok {
		return errorf(ErrExist, "domain %q already exists", name)
	}
	d.doms[name] = d.newDom(name)
	return nil
}

// Define validates xml in full and, only if it is good, makes it the
// persistent definition of name, expanded for a stable guest ABI. An active
// domain keeps running its old definition until its next start.
func (d *Driver) Define(name string, xml []byte) (err error) {
	dm, err := d.lookup(name)
	if err != nil {
		return err
	}
	dm.op.Lock()
	defer dm.op.Unlock()
	defer func() { dm.noteResult(err) }()

	def, err := domain.Parse(xml)
	if err != nil {
		return errorf(ErrInvalid, "define %s: %w", name, err)
	}
	switch def.Name() {
	case "":
		def.SetName(name)
	case name:
	default:
		return errorf(ErrInvalid, "define %s: <name>%s</name> does not match the directory name %q", name, def.Name(), name)
	}
	if err := def.Validate(d.caps); err != nil {
		return errorf(ErrInvalid, "define %s: %w", name, err)
	}
	dm.mu.Lock()
	old := dm.def
	dm.mu.Unlock()
	if old != nil && def.UUID() == "" {
		def.SetUUID(old.UUID()) // a redefinition keeps the domain's identity
	}
	if err := domain.Expand(def, d.caps); err != nil {
		return errorf(ErrInvalid, "define %s: %w", name, err)
	}
	if err := d.resolveFirmware(def); err != nil { // driver/nvram.go
		return errorf(ErrInvalid, "define %s: %w", name, err)
	}
	if other := d.uuidOwner(def.UUID(), name); other != "" {
		return errorf(ErrExist, "define %s: UUID %s is already used by domain %q", name, def.UUID(), other)
	}
	out := def.XML()
	if err := atomicfile.WriteFileSteps(d.defPath(name), out, 0o600, "define"); err != nil {
		return errorf(ErrIO, "define %s: %w", name, err)
	}
	dm.mu.Lock()
	dm.def, dm.defXML = def, out
	if dm.state == StateUndefined {
		dm.state, dm.reason = StateShutoff, ReasonUnknown
	}
	dm.mu.Unlock()
	detail := "added"
	if old != nil {
		detail = "updated"
	}
	dm.publish(EventDefined, detail)
	return nil
}

func (d *Driver) uuidOwner(uuid, except string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	for n, o := range d.doms {
		if n == except {
			continue
		}
		o.mu.Lock()
		def := o.def
		o.mu.Unlock()
		if def != nil && strings.EqualFold(def.UUID(), uuid) {
			return n
		}
	}
	return ""
}

// Remove undefines name and removes its slot (rmdir). An active domain
// cannot be removed; a UEFI guest's NVRAM is kept (undefine --keep-nvram).
func (d *Driver) Remove(name string) (err error) {
	dm, err := d.lookup(name)
	if err != nil {
		return err
	}
	dm.op.Lock()
	defer dm.op.Unlock()
	defer func() { dm.noteResult(err) }()
	dm.mu.Lock()
	defined := dm.def != nil
	dm.mu.Unlock()
	if defined {
		if err := d.undefineLocked(dm, false); err != nil {
			return err
		}
	} else if err := d.checkUndefine(dm); err != nil {
		return err
	}
	dm.mu.Lock()
	dm.removed = true
	dm.mu.Unlock()
	dm.events.Close()
	d.mu.Lock()
	delete(d.doms, name)
	d.mu.Unlock()
	return nil
}

// checkUndefine refuses to undefine a domain that runs, has a managed
// save image or has snapshots. The caller holds dm.op.
func (d *Driver) checkUndefine(dm *dom) error {
	dm.mu.Lock()
	active := dm.run != nil
	dm.mu.Unlock()
	if active {
		return errorf(ErrBusy, "undefine %s: the domain is active; destroy or shut it down first", dm.name)
	}
	if err := d.checkUndefineSaved(dm); err != nil {
		return err
	}
	if n := d.snapshotCount(dm); n > 0 {
		return errorf(ErrBusy, "undefine %s: the domain has %d snapshot(s); rmdir them under snapshots/ first", dm.name, n)
	}
	return nil
}

// noteResult records the outcome of an operation as the domain's `error`:
// the message of a failure, or nothing after a success.
func (dm *dom) noteResult(err error) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	if err != nil {
		dm.lastErr = err.Error()
	} else {
		dm.lastErr = ""
	}
}

// noteError records a failure that happened outside an operation (a crash).
func (dm *dom) noteError(msg string) {
	dm.mu.Lock()
	dm.lastErr = msg
	dm.mu.Unlock()
}

// Config returns the persistent definition, as expanded; empty for a slot.
func (d *Driver) Config(name string) ([]byte, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	dm.mu.Lock()
	defer dm.mu.Unlock()
	return dm.defXML, nil
}

// LastError returns the domain's last failure, "" when none.
func (d *Driver) LastError(name string) (string, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return "", err
	}
	dm.mu.Lock()
	defer dm.mu.Unlock()
	return dm.lastErr, nil
}

// RecordError stores msg as the domain's last failure; the filesystem uses
// it for failures it detects itself (a bad ctl write, a partial XML).
func (d *Driver) RecordError(name, msg string) {
	if dm, err := d.lookup(name); err == nil {
		dm.noteError(msg)
	}
}

// Events returns a reader of the domain's lifecycle events that sees only
// events from now on. It ends when the domain is undefined.
func (d *Driver) Events(name string) (*stream.Reader, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	return dm.events.Follow(), nil
}

// Close detaches from running guests (they keep running; the next daemon
// re-attaches) and destroys those started with --autodestroy. The Driver
// refuses every request afterwards.
func (d *Driver) Close() {
	d.mu.Lock()
	d.closing = true
	doms := make([]*dom, 0, len(d.doms))
	for _, dm := range d.doms {
		doms = append(doms, dm)
	}
	d.mu.Unlock()
	for _, dm := range doms {
		dm.mu.Lock()
		r := dm.run
		dm.mu.Unlock()
		dm.stopPending()
		if r == nil {
			continue
		}
		if r.autodestroy {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			d.destroy(ctx, dm, ReasonDestroyed)
			cancel()
			continue
		}
		r.detach()
	}
	d.wg.Wait()
}
