package fsnode

import (
	"context"
	"sort"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/qemufs/qemufs/driver"
)

// snapshotsDir is a domain's snapshots/ directory: one directory per
// snapshot (mkdir takes one, rmdir deletes one), `create` (write a
// domainsnapshot XML to take the snapshot it describes) and `current`.
type snapshotsDir struct {
	fs.Inode
	root   *Root
	domain string
}

var (
	_ fs.NodeOnAdder   = (*snapshotsDir)(nil)
	_ fs.NodeLookuper  = (*snapshotsDir)(nil)
	_ fs.NodeReaddirer = (*snapshotsDir)(nil)
	_ fs.NodeMkdirer   = (*snapshotsDir)(nil)
	_ fs.NodeRmdirer   = (*snapshotsDir)(nil)
	_ fs.NodeGetattrer = (*snapshotsDir)(nil)
	_ fs.NodeOpendirer = (*snapshotsDir)(nil)
	_ fs.NodeCreater   = (*snapshotsDir)(nil)
	_ fs.NodeUnlinker  = (*snapshotsDir)(nil)
)

// OnAdd creates the fixed files.
func (sd *snapshotsDir) OnAdd(ctx context.Context) {
	r, d, name := sd.root, sd.root.cfg.Driver, sd.domain
	add := func(file string, perm uint32, open opener) {
		ch := sd.NewPersistentInode(ctx, &fileNode{root: r, domain: name, perm: perm, open: open}, fs.StableAttr{Mode: syscall.S_IFREG})
		sd.AddChild(file, ch, true)
	}
	add("create", 0o220, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		return &xmlHandle{requests: true, refuse: func(msg string) { d.RecordError(name, msg) }, commit: func(ctx context.Context, xml []byte) error {
			ctx, cancel := userInterrupts(ctx)
			defer cancel()
			_, err := d.SnapshotCreateXML(withCaller(ctx), name, xml)
			return err
		}}, fuse.FOPEN_DIRECT_IO, nil
	})
	add("current", 0o444, snapshot(func(context.Context) ([]byte, error) { return line(d.SnapshotCurrent(name)) }))
}

func (sd *snapshotsDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	sd.root.attr(&out.Attr, syscall.S_IFDIR|sd.root.cfg.Access.mode(0o775))
	return 0
}

func (sd *snapshotsDir) Opendir(ctx context.Context) syscall.Errno {
	return sd.root.cfg.Access.allow(ctx, 0o775, 4)
}

func (sd *snapshotsDir) isSnap(ch *fs.Inode) bool {
	_, ok := ch.Operations().(*snapDir)
	return ok
}

// Lookup finds a fixed file or a snapshot's directory.
func (sd *snapshotsDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	d := sd.root.cfg.Driver
	ch := sd.GetChild(name)
	if ch != nil && !sd.isSnap(ch) {
		fillEntry(ctx, ch, out)
		return ch, 0
	}
	if !d.SnapshotExists(sd.domain, name) {
		if ch != nil {
			sd.RmChild(name)
		}
		return nil, syscall.ENOENT
	}
	if ch == nil {
		ch = sd.newSnapDir(ctx, name)
	}
	fillEntry(ctx, ch, out)
	return ch, 0
}

func (sd *snapshotsDir) newSnapDir(ctx context.Context, name string) *fs.Inode {
	return sd.NewInode(ctx, &snapDir{root: sd.root, domain: sd.domain, name: name}, fs.StableAttr{Mode: syscall.S_IFDIR})
}

// Readdir lists the fixed files and every snapshot.
func (sd *snapshotsDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	var entries []fuse.DirEntry
	for name, ch := range sd.Children() {
		if !sd.isSnap(ch) {
			entries = append(entries, fuse.DirEntry{Name: name, Mode: ch.Mode()})
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	names, err := sd.root.cfg.Driver.Snapshots(sd.domain)
	if err != nil {
		return nil, errno(err)
	}
	for _, n := range names {
		entries = append(entries, fuse.DirEntry{Name: n, Mode: syscall.S_IFDIR})
	}
	return fs.NewListDirStream(entries), 0
}

// Mkdir takes a snapshot called name, synchronously: with memory while the
// domain runs, of the disks only while it is shut off.
func (sd *snapshotsDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := sd.root.cfg.Access.allow(ctx, 0o775, 2); e != 0 {
		return nil, e
	}
	if ch := sd.GetChild(name); ch != nil && !sd.isSnap(ch) {
		return nil, syscall.EEXIST
	}
	ctx2, cancel := userInterrupts(ctx)
	defer cancel()
	if err := sd.root.cfg.Driver.SnapshotCreate(ctx2, sd.domain, name); err != nil {
		return nil, errno(err)
	}
	ch := sd.newSnapDir(ctx, name)
	fillEntry(ctx, ch, out)
	return ch, 0
}

// Rmdir deletes a snapshot.
func (sd *snapshotsDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	if e := sd.root.cfg.Access.allow(ctx, 0o775, 2); e != 0 {
		return e
	}
	if ch := sd.GetChild(name); ch != nil && !sd.isSnap(ch) {
		return syscall.ENOTDIR
	}
	ctx2, cancel := userInterrupts(ctx)
	defer cancel()
	return errno(sd.root.cfg.Driver.SnapshotDelete(ctx2, sd.domain, name))
}

// Create refuses new files: snapshots are directories (mkdir).
func (sd *snapshotsDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EPERM
}

// Unlink refuses: rmdir a snapshot instead.
func (sd *snapshotsDir) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

// snapDir is one snapshot: snapshot.xml and ctl.
type snapDir struct {
	fs.Inode
	root         *Root
	domain, name string
}

var (
	_ fs.NodeOnAdder   = (*snapDir)(nil)
	_ fs.NodeGetattrer = (*snapDir)(nil)
	_ fs.NodeOpendirer = (*snapDir)(nil)
)

// OnAdd creates the snapshot's files.
func (s *snapDir) OnAdd(ctx context.Context) {
	r, d, dom, snap := s.root, s.root.cfg.Driver, s.domain, s.name
	add := func(file string, perm uint32, open opener, size func() uint64) {
		ch := s.NewPersistentInode(ctx, &fileNode{root: r, domain: dom, perm: perm, open: open, size: size}, fs.StableAttr{Mode: syscall.S_IFREG})
		s.AddChild(file, ch, true)
	}
	add("snapshot.xml", 0o440, snapshot(func(context.Context) ([]byte, error) { return d.SnapshotXML(dom, snap) }),
		func() uint64 { b, _ := d.SnapshotXML(dom, snap); return uint64(len(b)) })
	add("ctl", 0o220, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		return &snapCtlHandle{d: d, domain: dom, snap: snap}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NONSEEKABLE, nil
	}, nil)
}

func (s *snapDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	s.root.attr(&out.Attr, syscall.S_IFDIR|s.root.cfg.Access.mode(0o775))
	return 0
}

func (s *snapDir) Opendir(ctx context.Context) syscall.Errno {
	return s.root.cfg.Access.allow(ctx, 0o775, 4)
}

// snapCtlHandle runs each write to a snapshot's ctl as one command.
type snapCtlHandle struct {
	d            *driver.Driver
	domain, snap string
}

var _ fs.FileWriter = (*snapCtlHandle)(nil)

func (h *snapCtlHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	ctx, cancel := userInterrupts(ctx)
	defer cancel()
	if err := h.d.SnapshotControl(ctx, h.domain, h.snap, string(data)); err != nil {
		return 0, errno(err)
	}
	return uint32(len(data)), 0
}
