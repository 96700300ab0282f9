// Package dac is the POSIX part of QEMU's confinement (libvirt's "DAC"
// security driver): the identity QEMU runs as, whether that identity can
// reach a file, and the ownership changes that give it access. It only
// computes and applies single changes; remembering and restoring them is
// the security stack's job.
package dac

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Identity is a user and group QEMU runs as, with the user's supplementary
// groups (which count for access checks, like the kernel's).
type Identity struct {
	UID, GID uint32
	Groups   []uint32
	// User and Group are the names, for messages ("+107" when numeric).
	User, Group string
}

// Lookup resolves qemu.conf's user and group. Both accept a name or
// libvirt's "+N" numeric form; an empty group means the user's primary
// group. Supplementary groups come from the group database.
func Lookup(userName, groupName string) (Identity, error) {
	var id Identity
	if userName == "" {
		return id, fmt.Errorf("user: empty name")
	}
	var u *user.User
	if n, ok := numeric(userName); ok {
		id.UID, id.User = n, userName
		u, _ = user.LookupId(strconv.FormatUint(uint64(n), 10))
		if u != nil {
			id.User = u.Username
		}
	} else {
		var err error
		if u, err = user.Lookup(userName); err != nil {
			return id, fmt.Errorf("user %q: %w", userName, err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		id.UID, id.User = uint32(uid), u.Username
	}
	switch {
	case groupName == "" && u == nil:
		return id, fmt.Errorf("user %s: no group given and the user has no entry to take a primary group from", userName)
	case groupName == "":
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		id.GID = uint32(gid)
		id.Group = u.Gid
		if g, err := user.LookupGroupId(u.Gid); err == nil {
			id.Group = g.Name
		}
	default:
		if n, ok := numeric(groupName); ok {
			id.GID, id.Group = n, groupName
			if g, err := user.LookupGroupId(strconv.FormatUint(uint64(n), 10)); err == nil {
				id.Group = g.Name
			}
		} else {
			g, err := user.LookupGroup(groupName)
			if err != nil {
				return id, fmt.Errorf("group %q: %w", groupName, err)
			}
			gid, _ := strconv.ParseUint(g.Gid, 10, 32)
			id.GID, id.Group = uint32(gid), g.Name
		}
	}
	if u != nil {
		if gids, err := u.GroupIds(); err == nil {
			for _, s := range gids {
				if n, err := strconv.ParseUint(s, 10, 32); err == nil && uint32(n) != id.GID {
					id.Groups = append(id.Groups, uint32(n))
				}
			}
		}
	}
	return id, nil
}

// numeric parses libvirt's "+N" form (and a bare number).
func numeric(s string) (uint32, bool) {
	n, err := strconv.ParseUint(strings.TrimPrefix(s, "+"), 10, 32)
	return uint32(n), err == nil
}

// Label is the identity in libvirt's seclabel form, "+UID:+GID".
func (id Identity) Label() string { return fmt.Sprintf("+%d:+%d", id.UID, id.GID) }

// String names the identity for messages: "qemu:qemu (uid 107, gid 107)".
func (id Identity) String() string {
	return fmt.Sprintf("%s:%s (uid %d, gid %d)", id.User, id.Group, id.UID, id.GID)
}

// IsRoot reports whether the identity is root, which passes every
// permission check.
func (id Identity) IsRoot() bool { return id.UID == 0 }

func (id Identity) inGroup(gid uint32) bool {
	if gid == id.GID {
		return true
	}
	for _, g := range id.Groups {
		if g == gid {
			return true
		}
	}
	return false
}

// Access is a set of permission bits in the "other" position: 4 read,
// 2 write, 1 execute/search.
type Access uint32

// Permissions that QEMU needs on a file or directory.
const (
	Read   Access = 4
	Write  Access = 2
	Search Access = 1
)

// Allows reports whether id gets want on a file with the given owner and
// mode, by the classic owner/group/other rule (ACLs are not consulted).
func (id Identity) Allows(o Owner, want Access) bool {
	if id.IsRoot() {
		return true
	}
	perm := uint32(o.Mode.Perm())
	var bits uint32
	switch {
	case o.UID == id.UID:
		bits = perm >> 6
	case id.inGroup(o.GID):
		bits = perm >> 3
	default:
		bits = perm
	}
	return bits&uint32(want) == uint32(want)
}

// Owner is the ownership and permission bits of a file.
type Owner struct {
	UID  uint32      `json:"uid"`
	GID  uint32      `json:"gid"`
	Mode os.FileMode `json:"mode"` // permission bits only
}

// Stat returns the owner of path, following symlinks (as chown does).
func Stat(path string) (Owner, os.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Owner{}, nil, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	return Owner{UID: st.Uid, GID: st.Gid, Mode: fi.Mode().Perm()}, fi, nil
}

// Apply sets path's owner and permission bits to o.
func Apply(path string, o Owner) error {
	if err := os.Chown(path, int(o.UID), int(o.GID)); err != nil {
		return err
	}
	// chown clears set-id bits on some filesystems; chmod restores exactly.
	return os.Chmod(path, o.Mode)
}

// SearchError says that a directory on the way to a file cannot be
// searched by QEMU's identity, and how to fix it.
type SearchError struct {
	Path string // the file QEMU needs
	Dir  string // the first directory lacking the search bit
	ID   Identity
}

func (e *SearchError) Error() string {
	return fmt.Sprintf("%s: directory %s is not searchable by %s; run 'chmod o+x %s' (or give it to that user or group)",
		e.Path, e.Dir, e.ID, e.Dir)
}

// CheckSearch verifies that id can traverse every directory leading to
// path (which must be absolute), the check libvirt leaves to the admin
// and that makes most "permission denied" at start.
func CheckSearch(id Identity, path string) error {
	if id.IsRoot() {
		return nil
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%s: not an absolute path", path)
	}
	dir := filepath.Dir(filepath.Clean(path))
	var dirs []string
	for {
		dirs = append(dirs, dir)
		if dir == "/" {
			break
		}
		dir = filepath.Dir(dir)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		o, _, err := Stat(dirs[i])
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if !id.Allows(o, Search) {
			return &SearchError{Path: path, Dir: dirs[i], ID: id}
		}
	}
	return nil
}

// Grant is how a file is opened up to QEMU.
type Grant int

// Kinds of grant. Exclusive files (a read-write disk, nvram, a per-guest
// directory) are handed over to QEMU's user and group, as libvirt does.
// Shared files (read-only or shareable disks, kernels) may be in use by
// other guests and other users at the same time: they are left alone when
// QEMU can already use them, and otherwise only their group becomes
// QEMU's, with the group bits opened as far as needed; the owner keeps
// every right it had.
const (
	Exclusive Grant = iota
	SharedRead
	SharedReadWrite
)

// Want is the ownership that gives id the grant on a file (a directory
// when dir) owned by cur, and whether that differs from cur.
func Want(id Identity, cur Owner, g Grant, dir bool) (Owner, bool) {
	need := Read
	if g != SharedRead {
		need |= Write
	}
	if dir {
		need |= Search
	}
	if g == Exclusive {
		w := Owner{UID: id.UID, GID: id.GID, Mode: cur.Mode | os.FileMode(need)<<6}
		return w, w != cur
	}
	if id.Allows(cur, need) {
		return cur, false
	}
	return Owner{UID: cur.UID, GID: id.GID, Mode: cur.Mode | os.FileMode(need)<<3}, true
}
