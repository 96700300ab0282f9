package driver

import (
	"context"
	"errors"
	"fmt"
	"github.com/qemufs/qemufs/domain"
	"os"
	"path/filepath"
	"strings"

	"github.com/qemufs/qemufs/security/dac"
)

// Caller is the user on whose behalf a request runs: the process that
// wrote to ctl, as the filesystem saw it. The daemon runs as root, so
// without it a user allowed to start guests (admin_group of a system
// mount) could have qemufs hand QEMU, and so the guest, any host file:
// a disk whose path is, or leads through a symlink to, /etc/shadow or
// another user's image would be chowned to QEMU's user at start.
type Caller struct {
	UID, GID uint32
	Groups   []uint32
}

type callerKey struct{}

// WithCaller returns ctx carrying the request's caller (fsnode sets it).
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

func callerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// checkCaller refuses (EACCES) a start by a non-root caller whose guest
// would use a host file the caller could not use itself, following
// symlinks to where they lead, as the security stack will: read for a
// read-only path, read and write otherwise, and for a file that does not
// exist yet (a chardev's output, a socket to bind) write on the
// directory it goes into. Files qemufs keeps itself (NVRAM stores, the
// instance's own directories) are not the caller's to own and are
// skipped. A request without a caller (autostart, a re-attach) is the
// daemon's own.
func (d *Driver) checkCaller(ctx context.Context, r *run) error {
	c, ok := callerFrom(ctx)
	if !ok || c.UID == 0 {
		return nil
	}
	id := dac.Identity{UID: c.UID, GID: c.GID, Groups: c.Groups, User: fmt.Sprintf("+%d", c.UID), Group: fmt.Sprintf("+%d", c.GID)}
	own := []string{d.inst.LibDir, d.inst.RunDir, d.inst.LogDir, d.nvramDir()}
	for _, hp := range r.live.HostPaths() {
		if under(hp.Path, own) {
			continue
		}
		if err := callerMay(id, hp.Path, hp.ReadOnly); err != nil {
			return errorf(ErrPerm, "start %s: %s %s: %v; qemufs gives QEMU only what the user starting it (uid %d) may use", r.dm.name, hp.What, hp.Path, err, c.UID)
		}
	}
	return nil
}

// callerMay checks id's access to path (after symlinks).
func callerMay(id dac.Identity, path string, readOnly bool) error {
	want, words := dac.Read|dac.Write, "read and write"
	if readOnly {
		want, words = dac.Read, "read"
	}
	if err := dac.CheckSearch(id, path); err != nil {
		return searchErr(err)
	}
	real, err := filepath.EvalSymlinks(path)
	if errors.Is(err, os.ErrNotExist) {
		// To be made by QEMU or qemufs: the directory must be the
		// caller's to write in.
		dir, derr := filepath.EvalSymlinks(filepath.Dir(path))
		if derr != nil {
			return nil // the security stack reports the missing path
		}
		o, _, serr := dac.Stat(dir)
		if serr != nil {
			return nil
		}
		if err := dac.CheckSearch(id, filepath.Join(dir, "x")); err != nil {
			return searchErr(err)
		}
		if !id.Allows(o, dac.Write|dac.Search) {
			return fmt.Errorf("it does not exist and the user may not create files in %s", dir)
		}
		return nil
	}
	if err != nil {
		return nil // the security stack reports it
	}
	via := ""
	if real != filepath.Clean(path) {
		via = " (a symlink to " + real + ")"
		if err := dac.CheckSearch(id, real); err != nil {
			return fmt.Errorf("it is%s, and %w", via, searchErr(err))
		}
	}
	o, _, err := dac.Stat(real)
	if err != nil {
		return nil
	}
	if !id.Allows(o, want) {
		return fmt.Errorf("it is%s owned by uid %d mode %04o, which the user may not %s", via, o.UID, o.Mode.Perm(), words)
	}
	return nil
}

func searchErr(err error) error {
	var se *dac.SearchError
	if errors.As(err, &se) {
		return fmt.Errorf("directory %s is not searchable by the user", se.Dir)
	}
	return err
}

// under reports whether path is in one of dirs.
func under(path string, dirs []string) bool {
	p := filepath.Clean(path)
	for _, d := range dirs {
		if d != "" && (p == d || strings.HasPrefix(p, d+"/")) {
			return true
		}
	}
	return false
}

// checkCallerPath refuses (EACCES) a host path that a command names
// (save FILE, restore FILE) when a non-root caller could not use it
// itself: the daemon writes and reads it as root, so without this a
// member of admin_group could have a save image written into /etc or read
// any file as an image.
func checkCallerPath(ctx context.Context, op, name, path string, readOnly bool) error {
	c, ok := callerFrom(ctx)
	if !ok || c.UID == 0 {
		return nil
	}
	id := dac.Identity{UID: c.UID, GID: c.GID, Groups: c.Groups}
	if err := callerMay(id, path, readOnly); err != nil {
		return errorf(ErrPerm, "%s %s: %s: %v; qemufs reads and writes only what the user asking (uid %d) may", op, name, path, err, c.UID)
	}
	return nil
}

// giveToCaller makes a file qemufs wrote at a non-root caller's request
// (save FILE) the caller's, so that it can read it back (restore FILE
// checks that it may).
func giveToCaller(ctx context.Context, path string) {
	if c, ok := callerFrom(ctx); ok && c.UID != 0 {
		os.Chown(path, int(c.UID), int(c.GID))
	}
}

// checkCallerDevice is checkCaller for one device being hot-plugged or a
// medium being inserted: a non-root caller may give QEMU only files it
// could use itself. It runs before anything is created or chowned.
func checkCallerDevice(ctx context.Context, op, name string, v domain.Device) error {
	c, ok := callerFrom(ctx)
	if !ok || c.UID == 0 {
		return nil
	}
	id := dac.Identity{UID: c.UID, GID: c.GID, Groups: c.Groups, User: fmt.Sprintf("+%d", c.UID), Group: fmt.Sprintf("+%d", c.GID)}
	files, err := deviceFiles(v, false)
	if err != nil {
		return errorf(ErrInvalid, "%s %s: %w", op, name, err)
	}
	for _, f := range files {
		if err := callerMay(id, f.Path, f.ReadOnly); err != nil {
			return errorf(ErrPerm, "%s %s: %s %s: %v; qemufs gives QEMU only what the user asking (uid %d) may use", op, name, v.Describe(), f.Path, err, c.UID)
		}
	}
	return nil
}
