package procmgr

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The helper builds QEMU's private /dev in a mount namespace of its own
// thread (unshare(CLONE_NEWNS) on the locked OS thread that later execs),
// so nothing here is visible to the host:
//
//  1. make every mount private, so that nothing propagates either way;
//  2. detach qemufs's own FUSE mounts from the copy: a QEMU holding a copy
//     of the mount would keep the FUSE connection alive after the daemon
//     unmounts it on the host, and the daemon would never see it end;
//  3. look at the host nodes QEMU may use (before they are hidden);
//  4. clone the host's directory mounts below /dev (devpts, /dev/shm,
//     mqueue, hugetlbfs) as detached trees;
//  5. mount a fresh tmpfs on /dev, recreate the nodes with the host's
//     type, major/minor, mode and owner, and move the cloned trees back.
//
// /dev/pts stays the HOST devpts instance (not newinstance): QEMU's pty
// chardev allocates through /dev/ptmx, and the daemon must be able to open
// the slave path QEMU reports (/dev/pts/N) in the host namespace. /dev/ptmx
// is recreated as the 5:2 node rather than bind-mounted: the kernel looks
// for the devpts instance in a directory "pts" next to the opened ptmx
// node, which for a bind mount of the host's node is the host's /dev, not a
// devpts mount of the namespace.

// devNode is one entry of the private /dev, taken from the host.
type devNode struct {
	path     string
	mode     uint32 // st_mode: type and permissions
	rdev     uint64
	uid, gid uint32
	link     string // symlink target, for symlinks
}

// enterMountNS moves the calling thread, which must be locked to its
// goroutine, into a new mount namespace and prepares the private /dev of
// ns there. Paths under /proc/self would show the main thread's view, so
// it reads /proc/thread-self.
func enterMountNS(ns *MountNamespace) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("mount namespace: unshare: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("mount namespace: make / private: %w", err)
	}
	mounts, err := readMountInfo("/proc/thread-self/mountinfo")
	if err != nil {
		return fmt.Errorf("mount namespace: %w", err)
	}
	if err := detachQemufs(mounts); err != nil {
		return fmt.Errorf("mount namespace: %w", err)
	}
	nodes, err := planDevices(ns.Devices)
	if err != nil {
		return fmt.Errorf("mount namespace: %w", err)
	}
	trees, err := cloneDevMounts(mounts)
	defer func() {
		for _, t := range trees {
			unix.Close(t.fd)
		}
	}()
	if err != nil {
		return fmt.Errorf("mount namespace: %w", err)
	}
	if err := unix.Mount("qemufs-dev", "/dev", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=65536"); err != nil {
		return fmt.Errorf("mount namespace: mount tmpfs on /dev: %w", err)
	}
	for _, n := range nodes {
		if err := n.create(); err != nil {
			return fmt.Errorf("mount namespace: %w", err)
		}
	}
	if err := applyOwners(ns.Owners); err != nil {
		return fmt.Errorf("mount namespace: %w", err)
	}
	for _, t := range trees {
		if err := os.MkdirAll(t.path, 0o755); err != nil {
			return fmt.Errorf("mount namespace: %w", err)
		}
		if err := unix.MoveMount(t.fd, "", unix.AT_FDCWD, t.path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("mount namespace: move host mount to %s: %w", t.path, err)
		}
	}
	for name, target := range map[string]string{
		"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, name); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("mount namespace: %w", err)
		}
	}
	return nil
}

// planDevices looks up the host nodes for paths (all under /dev). Paths
// missing on the host are skipped; symlinks are kept as symlinks and their
// targets under /dev are added. /dev/ptmx is always added (see above).
func planDevices(paths []string) ([]devNode, error) {
	var nodes []devNode
	seen := map[string]bool{}
	var add func(p string, required bool) error
	add = func(p string, required bool) error {
		p = filepath.Clean(p)
		if !strings.HasPrefix(p, "/dev/") {
			if required {
				return fmt.Errorf("device %s is not under /dev", p)
			}
			return nil
		}
		if seen[p] {
			return nil
		}
		seen[p] = true
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil // contract: missing host nodes are skipped
			}
			return fmt.Errorf("device %s: %w", p, err)
		}
		n := devNode{path: p, mode: st.Mode, rdev: st.Rdev, uid: st.Uid, gid: st.Gid}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFDIR:
			nodes = append(nodes, n)
		case unix.S_IFLNK:
			link, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("device %s: %w", p, err)
			}
			n.link = link
			nodes = append(nodes, n)
			if target, err := filepath.EvalSymlinks(p); err == nil {
				return add(target, false)
			}
		default:
			if required {
				return fmt.Errorf("device %s is not a device node (mode %v)", p, os.FileMode(st.Mode&0o777))
			}
		}
		return nil
	}
	for _, p := range paths {
		if err := add(p, true); err != nil {
			return nil, err
		}
	}
	if err := add("/dev/ptmx", false); err != nil {
		return nil, err
	}
	return nodes, nil
}

// create makes n in the private /dev, with the host's owner and mode.
func (n devNode) create() error {
	if err := os.MkdirAll(filepath.Dir(n.path), 0o755); err != nil {
		return err
	}
	perm := n.mode & 0o7777
	switch n.mode & unix.S_IFMT {
	case unix.S_IFLNK:
		if err := os.Symlink(n.link, n.path); err != nil {
			return err
		}
		if err := os.Lchown(n.path, int(n.uid), int(n.gid)); err != nil {
			return err
		}
		return nil
	case unix.S_IFDIR:
		if err := os.Mkdir(n.path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	default:
		if err := unix.Mknod(n.path, n.mode&unix.S_IFMT|0o600, int(n.rdev)); err != nil {
			return fmt.Errorf("mknod %s: %w", n.path, err)
		}
	}
	if err := os.Chown(n.path, int(n.uid), int(n.gid)); err != nil {
		return err
	}
	// After chown, which clears set-id bits; and free of the umask.
	if err := unix.Chmod(n.path, perm); err != nil {
		return fmt.Errorf("chmod %s: %w", n.path, err)
	}
	return nil
}

// applyOwners gives nodes of the private /dev the owners asked for. It
// runs on the fresh tmpfs only, never following a symlink, so the host's
// nodes are never changed.
func applyOwners(owners map[string]NodeOwner) error {
	for _, p := range slices.Sorted(maps.Keys(owners)) {
		o := owners[p]
		p = filepath.Clean(p)
		if !strings.HasPrefix(p, "/dev/") {
			return fmt.Errorf("owner of %s: not under /dev", p)
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return fmt.Errorf("owner of %s: %w", p, err)
		}
		if t := st.Mode & unix.S_IFMT; t != unix.S_IFCHR && t != unix.S_IFBLK {
			continue
		}
		if err := unix.Lchown(p, int(o.UID), int(o.GID)); err != nil {
			return fmt.Errorf("chown %s: %w", p, err)
		}
		if err := unix.Chmod(p, o.Mode&0o777); err != nil {
			return fmt.Errorf("chmod %s: %w", p, err)
		}
	}
	return nil
}

// mountEntry is one line of /proc/PID/mountinfo.
type mountEntry struct {
	Point  string
	FSType string
	Source string
}

func readMountInfo(path string) ([]mountEntry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseMountInfo(data)
}

func parseMountInfo(data []byte) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 2 {
			return nil, fmt.Errorf("malformed mountinfo line %q", line)
		}
		out = append(out, mountEntry{Point: unescapeMount(f[4]), FSType: g[0], Source: unescapeMount(g[1])})
	}
	return out, sc.Err()
}

// unescapeMount undoes the kernel's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isQemufsMount tells a qemufs FUSE mount (go-fuse names it fuse.qemufs,
// source qemufs).
func isQemufsMount(m mountEntry) bool {
	return m.FSType == "fuse.qemufs" || strings.HasPrefix(m.FSType, "fuse") && m.Source == "qemufs"
}

// detachQemufs lazily unmounts, in this namespace only, every qemufs mount.
func detachQemufs(mounts []mountEntry) error {
	for i := len(mounts) - 1; i >= 0; i-- {
		m := mounts[i]
		if !isQemufsMount(m) {
			continue
		}
		// EINVAL: already gone with a detached parent.
		if err := unix.Unmount(m.Point, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("detach qemufs mount %s: %w", m.Point, err)
		}
	}
	return nil
}

// devTree is a detached clone of a host mount below /dev, and where it
// goes back.
type devTree struct {
	path string
	fd   int
}

// cloneDevMounts clones the outermost directory mounts below /dev (with
// their submounts). File bind mounts are left out: the private /dev holds
// only the nodes asked for.
func cloneDevMounts(mounts []mountEntry) ([]devTree, error) {
	var points []string
	for _, m := range mounts {
		if strings.HasPrefix(m.Point, "/dev/") && !isQemufsMount(m) {
			points = append(points, m.Point)
		}
	}
	sort.Strings(points)
	var trees []devTree
	var last string
	for _, p := range points {
		if p == last || last != "" && strings.HasPrefix(p, last+"/") {
			continue // the same point stacked, or inside a tree already cloned
		}
		if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
			continue
		}
		fd, err := unix.OpenTree(unix.AT_FDCWD, p, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
		if err != nil {
			return trees, fmt.Errorf("clone host mount %s: %w", p, err)
		}
		trees = append(trees, devTree{path: p, fd: fd})
		last = p
	}
	return trees, nil
}
