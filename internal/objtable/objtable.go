// Package objtable is the table of named objects that a secondary driver
// (networks, storage pools) keeps for one instance: the slots mkdir makes,
// lookup by name, each object's last error, and its definition and
// autostart mark on disk (DIR/NAME.xml, DIR/autostart/NAME), as libvirt
// keeps them.
package objtable

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/qemufs/qemufs/internal/atomicfile"
	"github.com/qemufs/qemufs/internal/errkind"
)

// Base is what every object of a table has; the drivers' entries embed it.
type Base struct {
	Op        sync.Mutex // serialises the commands on the object
	Name      string
	Autostart bool   // guarded by the table's lock
	LastErr   string // guarded by the table's lock
}

func (b *Base) base() *Base { return b }

// Object is a pointer to a struct that embeds Base.
type Object interface{ base() *Base }

// Table holds the objects of one kind. Its lock is the owner's, which
// also guards the owner's fields of the objects.
type Table[E Object] struct {
	kind string // "network", "pool": names the objects in messages
	dir  string
	mu   *sync.Mutex
	objs map[string]E
}

// New returns an empty table of kind whose definitions live in dir,
// guarded by mu.
func New[E Object](kind, dir string, mu *sync.Mutex) *Table[E] {
	return &Table[E]{kind: kind, dir: dir, mu: mu, objs: map[string]E{}}
}

// DefPath is where name's definition is kept.
func (t *Table[E]) DefPath(name string) string { return filepath.Join(t.dir, name+".xml") }

// AutostartPath is name's autostart mark.
func (t *Table[E]) AutostartPath(name string) string {
	return filepath.Join(t.dir, "autostart", name)
}

// Marked tells whether name has an autostart mark on disk (at load).
func (t *Table[E]) Marked(name string) bool {
	_, err := os.Stat(t.AutostartPath(name))
	return err == nil
}

// Lookup returns the object called name.
func (t *Table[E]) Lookup(name string) (E, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.objs[name]
	if !ok {
		return e, errkind.Errorf(errkind.ErrNotFound, "%s %q does not exist", t.kind, name)
	}
	return e, nil
}

// Get returns the object called name and whether there is one; the
// caller holds the lock.
func (t *Table[E]) Get(name string) (E, bool) {
	e, ok := t.objs[name]
	return e, ok
}

// Names lists the objects, sorted.
func (t *Table[E]) Names() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.objs))
	for n := range t.objs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Exists tells whether name is an object or an empty slot.
func (t *Table[E]) Exists(name string) bool {
	_, err := t.Lookup(name)
	return err == nil
}

// Add puts e in the table, refusing a name that is taken.
func (t *Table[E]) Add(e E) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	name := e.base().Name
	if _, ok := t.objs[name]; ok {
		return errkind.Errorf(errkind.ErrExist, "%s %q exists already", t.kind, name)
	}
	t.objs[name] = e
	return nil
}

// Put puts e in the table, replacing any object of its name; the caller
// holds the lock.
func (t *Table[E]) Put(e E) { t.objs[e.base().Name] = e }

// Each calls f for every object; the caller holds the lock.
func (t *Table[E]) Each(f func(E)) {
	for _, e := range t.objs {
		f(e)
	}
}

// Remove deletes name's definition and autostart mark, then the object.
// The caller holds the object's Op and has checked it may go.
func (t *Table[E]) Remove(name string) error {
	for _, p := range []string{t.DefPath(name), t.AutostartPath(name)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return errkind.Errorf(errkind.ErrIO, "undefine %s %s: %w", t.kind, name, err)
		}
	}
	t.mu.Lock()
	delete(t.objs, name)
	t.mu.Unlock()
	return nil
}

// Note records the outcome of a command as the object's last error.
func (t *Table[E]) Note(e E, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := e.base()
	b.LastErr = ""
	if err != nil {
		b.LastErr = err.Error()
	}
}

// LastError is the message of name's last failed command.
func (t *Table[E]) LastError(name string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.objs[name]; ok {
		return e.base().LastErr
	}
	return ""
}

// SetAutostart writes or removes e's autostart mark. The caller holds
// e's Op and has checked that it is defined.
func (t *Table[E]) SetAutostart(e E, on bool) error {
	b := e.base()
	var err error
	if on {
		err = atomicfile.WriteFile(t.AutostartPath(b.Name), []byte(b.Name+"\n"), 0o600)
	} else if err = os.Remove(t.AutostartPath(b.Name)); errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if err != nil {
		return errkind.Errorf(errkind.ErrIO, "autostart %s %s: %w", t.kind, b.Name, err)
	}
	t.mu.Lock()
	b.Autostart = on
	t.mu.Unlock()
	return nil
}

// Autostart starts, in name order, the objects marked autostart for which
// idle (called under the lock) is true, noting and logging failures.
func (t *Table[E]) Autostart(ctx context.Context, idle func(E) bool, start func(ctx context.Context, name string) error, logf func(string, ...any)) {
	for _, name := range t.Names() {
		e, err := t.Lookup(name)
		if err != nil {
			continue
		}
		t.mu.Lock()
		want := e.base().Autostart && idle(e)
		t.mu.Unlock()
		if !want {
			continue
		}
		err = start(ctx, name)
		t.Note(e, err)
		if err != nil {
			logf("autostart %s %s: %v", t.kind, name, err)
		}
	}
}
