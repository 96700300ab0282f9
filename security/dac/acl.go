package dac

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// POSIX access ACLs: device nodes such as /dev/kvm often grant access by
// ACL (udev's uaccess, "setfacl -m g:kvm:rw") rather than by their mode
// bits, so a check of whether QEMU's user can open one reads the ACL too.

// ACL entry tags (linux/posix_acl.h).
const (
	ACLUserObj  = 0x01 // the owner
	ACLUser     = 0x02 // a named user
	ACLGroupObj = 0x04 // the owning group
	ACLGroup    = 0x08 // a named group
	ACLMask     = 0x10 // the most named entries and the group get
	ACLOther    = 0x20 // everyone else
)

// ACLEntry is one entry of a POSIX access ACL.
type ACLEntry struct {
	Tag  uint16 // one of the ACL* tags
	Perm Access // rwx bits
	ID   uint32 // uid or gid for user and group entries
}

// ParseACL decodes the system.posix_acl_access extended attribute.
func ParseACL(b []byte) ([]ACLEntry, error) {
	if len(b) < 4 || (len(b)-4)%8 != 0 {
		return nil, fmt.Errorf("posix ACL: bad length %d", len(b))
	}
	if v := binary.LittleEndian.Uint32(b); v != 2 {
		return nil, fmt.Errorf("posix ACL: version %d", v)
	}
	var out []ACLEntry
	for p := 4; p+8 <= len(b); p += 8 {
		out = append(out, ACLEntry{
			Tag:  binary.LittleEndian.Uint16(b[p:]),
			Perm: Access(binary.LittleEndian.Uint16(b[p+2:]) & 7),
			ID:   binary.LittleEndian.Uint32(b[p+4:]),
		})
	}
	return out, nil
}

// EncodeACL is ParseACL's inverse (tests and tools set ACLs with it).
func EncodeACL(entries []ACLEntry) []byte {
	b := make([]byte, 4+8*len(entries))
	binary.LittleEndian.PutUint32(b, 2)
	for i, e := range entries {
		p := 4 + 8*i
		binary.LittleEndian.PutUint16(b[p:], e.Tag)
		binary.LittleEndian.PutUint16(b[p+2:], uint16(e.Perm))
		id := e.ID
		if e.Tag != ACLUser && e.Tag != ACLGroup {
			id = 0xffffffff // ACL_UNDEFINED_ID
		}
		binary.LittleEndian.PutUint32(b[p+4:], id)
	}
	return b
}

// ReadACL returns path's access ACL, nil when it has none (or the
// filesystem has no ACLs).
func ReadACL(path string) ([]ACLEntry, error) {
	buf := make([]byte, 1024)
	n, err := unix.Getxattr(path, "system.posix_acl_access", buf)
	switch {
	case errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP):
		return nil, nil
	case err != nil:
		return nil, &os.PathError{Op: "getxattr", Path: path, Err: err}
	}
	return ParseACL(buf[:n])
}

// AllowsWithACL is Allows with the kernel's ACL algorithm when acl is not
// empty: the owner entry for the owner, a named user entry (masked), then
// the owning group and named groups (masked; any one granting all of want
// suffices), else the other entry.
func (id Identity) AllowsWithACL(o Owner, acl []ACLEntry, want Access) bool {
	if len(acl) == 0 || id.IsRoot() {
		return id.Allows(o, want)
	}
	mask := Access(7)
	for _, e := range acl {
		if e.Tag == ACLMask {
			mask = e.Perm
		}
	}
	has := func(p Access) bool { return p&want == want }
	for _, e := range acl {
		if e.Tag == ACLUserObj && o.UID == id.UID {
			return has(e.Perm)
		}
	}
	for _, e := range acl {
		if e.Tag == ACLUser && e.ID == id.UID {
			return has(e.Perm & mask)
		}
	}
	matched := false
	for _, e := range acl {
		var in bool
		switch e.Tag {
		case ACLGroupObj:
			in = id.inGroup(o.GID)
		case ACLGroup:
			in = id.inGroup(e.ID)
		}
		if in {
			matched = true
			if has(e.Perm & mask) {
				return true
			}
		}
	}
	if matched {
		return false
	}
	for _, e := range acl {
		if e.Tag == ACLOther {
			return has(e.Perm)
		}
	}
	return false
}
