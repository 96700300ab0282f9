package cgroup

import (
	"fmt"
	"os"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

var unixEBUSY = unix.EBUSY

// DefaultDeviceACL is the reference page's list of shared devices every
// guest may use.
var DefaultDeviceACL = []string{"/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/ptmx", "/dev/kvm"}

// ptyMajor is the major number of /dev/pts/N: a guest's pty consoles
// need it, so it is always allowed (as libvirt does).
const ptyMajor = 136

// Device is one device ACL entry.
type Device struct {
	// Path is the node it was resolved from ("" for a wildcard entry).
	Path string `json:"path,omitempty"`
	// Type is "c" or "b".
	Type string `json:"type"`
	// Major and Minor number; -1 is the wildcard.
	Major int64 `json:"major"`
	Minor int64 `json:"minor"`
	// Access is a subset of "rwm".
	Access string `json:"access"`
}

// String is the devices.allow form: "c 1:3 rwm".
func (d Device) String() string {
	n := func(v int64) string {
		if v < 0 {
			return "*"
		}
		return fmt.Sprint(v)
	}
	return fmt.Sprintf("%s %s:%s %s", d.Type, n(d.Major), n(d.Minor), d.Access)
}

// NotDeviceError says that an ACL entry or disk is not a device node.
type NotDeviceError struct{ Path string }

func (e *NotDeviceError) Error() string {
	return fmt.Sprintf("%s is not a block or character device", e.Path)
}

// ResolveDevice stats path (following symlinks, as /dev/disk/by-id links
// are) and returns its ACL entry with the given access.
func ResolveDevice(path, access string) (Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Device{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	var typ string
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		typ = "c"
	case unix.S_IFBLK:
		typ = "b"
	default:
		return Device{}, &NotDeviceError{Path: path}
	}
	return Device{
		Path:   path,
		Type:   typ,
		Major:  int64(unix.Major(st.Rdev)),
		Minor:  int64(unix.Minor(st.Rdev)),
		Access: access,
	}, nil
}

// ResolveACL resolves qemu.conf's cgroup_device_acl (nil: the default
// list). Entries that do not exist on this host are skipped, as libvirt
// does for /dev/kvm on a host without it; an entry that exists but is not
// a device is an error. The pty wildcard is always added.
func ResolveACL(paths []string) ([]Device, error) {
	if paths == nil {
		paths = DefaultDeviceACL
	}
	var out []Device
	for _, p := range paths {
		if !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("cgroup_device_acl: %q is not an absolute path", p)
		}
		d, err := ResolveDevice(p, "rwm")
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("cgroup_device_acl: %w", err)
		}
		out = append(out, d)
	}
	out = append(out, Device{Type: "c", Major: ptyMajor, Minor: -1, Access: "rwm"})
	return out, nil
}

// rules turns an allow list into OCI rules: deny everything, then allow
// each entry (the last matching rule wins, for v1 writes and the v2
// program alike).
func rules(devs []Device) []specs.LinuxDeviceCgroup {
	wild := int64(-1)
	out := []specs.LinuxDeviceCgroup{{Allow: false, Type: "a", Major: &wild, Minor: &wild, Access: "rwm"}}
	for _, d := range devs {
		major, minor := d.Major, d.Minor
		out = append(out, specs.LinuxDeviceCgroup{Allow: true, Type: d.Type, Major: &major, Minor: &minor, Access: d.Access})
	}
	return out
}
