package fsnode

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/qemufs/qemufs/driver"
)

// Access decides who may do what on a mount. A session mount is reachable
// by its owner only (the kernel refuses others without allow_other); a
// system mount is shared, and qemufs checks each request itself because one
// file mode cannot express both an admin group and a read group.
type Access struct {
	// Shared is set for the system mount (allow_other).
	Shared bool
	// UID and GID own every file: the session user, or root and the
	// admin group.
	UID, GID uint32
	// AdminGID may read and write (root always may); -1 for none.
	AdminGID int
	// ReadGID may only read; -1 for none. When it is set, others get no
	// access at all: no file opens, no directory listings (a name they
	// already know still answers stat).
	ReadGID int
}

type class int

const (
	classOther class = iota
	classReader
	classAdmin
)

// classify places the caller of ctx.
func (a *Access) classify(ctx context.Context) class {
	if !a.Shared {
		return classAdmin
	}
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return classOther
	}
	if c.Uid == 0 || c.Uid == a.UID {
		return classAdmin
	}
	groups := callerGroups(c)
	if a.AdminGID >= 0 && groups[uint32(a.AdminGID)] {
		return classAdmin
	}
	if a.ReadGID >= 0 && groups[uint32(a.ReadGID)] {
		return classReader
	}
	return classOther
}

// callerGroups returns the primary and supplementary groups of the caller;
// FUSE passes only the primary one, the rest comes from /proc.
func callerGroups(c *fuse.Caller) map[uint32]bool {
	g := map[uint32]bool{c.Gid: true}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", c.Pid))
	if err != nil {
		return g
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "Groups:"); ok {
			for _, f := range strings.Fields(rest) {
				if n, err := strconv.ParseUint(f, 10, 32); err == nil {
					g[uint32(n)] = true
				}
			}
			break
		}
	}
	return g
}

// mode returns the permission bits shown for a file whose nominal bits are
// perm: owner-only on a session mount; on a shared mount others lose their
// bits when a read group takes their place.
func (a *Access) mode(perm uint32) uint32 {
	if !a.Shared {
		return perm & 0o700
	}
	if a.ReadGID >= 0 {
		return perm &^ 0o007
	}
	return perm
}

// check allows or refuses an open with flags on a file with perm bits
// (owner bits for admins).
func (a *Access) check(ctx context.Context, perm uint32, flags uint32) syscall.Errno {
	want := uint32(0)
	switch flags & syscall.O_ACCMODE {
	case syscall.O_RDONLY:
		want = 4
	case syscall.O_WRONLY:
		want = 2
	default:
		want = 6
	}
	if flags&syscall.O_TRUNC != 0 {
		want |= 2
	}
	return a.allow(ctx, perm, want)
}

// allow checks want (rwx bits, 4/2/1) against perm for the caller.
func (a *Access) allow(ctx context.Context, perm, want uint32) syscall.Errno {
	var have uint32
	switch a.classify(ctx) {
	case classAdmin:
		have = (perm >> 6) & 7
	case classReader:
		have = (perm >> 6) & 5 // read and search only
	default:
		if a.ReadGID < 0 {
			have = perm & 5
		}
	}
	if want&^have != 0 {
		return syscall.EACCES
	}
	return 0
}

// withCaller passes the FUSE caller on to the driver, which checks that a
// guest started on a user's behalf uses only files that user may use
// (driver/caller.go).
func withCaller(ctx context.Context) context.Context {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return ctx
	}
	dc := driver.Caller{UID: c.Uid, GID: c.Gid}
	for g := range callerGroups(c) {
		if g != c.Gid {
			dc.Groups = append(dc.Groups, g)
		}
	}
	return driver.WithCaller(ctx, dc)
}
