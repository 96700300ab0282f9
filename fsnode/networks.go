package fsnode

import (
	"context"
	"sort"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/qemufs/qemufs/network"
)

// networksDir is MOUNTPOINT/networks: one directory per network, made by
// mkdir and defined by writing its config.xml, as domains are.
type networksDir struct {
	fs.Inode
	root *Root
	nets *network.Manager
}

var (
	_ fs.NodeLookuper  = (*networksDir)(nil)
	_ fs.NodeReaddirer = (*networksDir)(nil)
	_ fs.NodeMkdirer   = (*networksDir)(nil)
	_ fs.NodeRmdirer   = (*networksDir)(nil)
	_ fs.NodeGetattrer = (*networksDir)(nil)
	_ fs.NodeOpendirer = (*networksDir)(nil)
)

func (n *networksDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.root.attr(&out.Attr, syscall.S_IFDIR|n.root.cfg.Access.mode(0o775))
	return 0
}

func (n *networksDir) Opendir(ctx context.Context) syscall.Errno {
	return n.root.cfg.Access.allow(ctx, 0o775, 4)
}

// Lookup finds a network's directory.
func (n *networksDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if !n.nets.Exists(name) {
		if n.GetChild(name) != nil {
			n.RmChild(name)
		}
		return nil, syscall.ENOENT
	}
	ch := n.GetChild(name)
	if ch == nil {
		ch = n.NewInode(ctx, &networkDir{root: n.root, nets: n.nets, name: name}, fs.StableAttr{Mode: syscall.S_IFDIR})
	}
	fillEntry(ctx, ch, out)
	return ch, 0
}

// Readdir lists the networks.
func (n *networksDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	names := n.nets.Names()
	sort.Strings(names)
	entries := make([]fuse.DirEntry, len(names))
	for i, name := range names {
		entries[i] = fuse.DirEntry{Name: name, Mode: syscall.S_IFDIR}
	}
	return fs.NewListDirStream(entries), 0
}

// Mkdir makes an empty network slot.
func (n *networksDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := n.root.cfg.Access.allow(ctx, 0o775, 2); e != 0 {
		return nil, e
	}
	if err := n.nets.Create(name); err != nil {
		return nil, errno(err)
	}
	ch := n.NewInode(ctx, &networkDir{root: n.root, nets: n.nets, name: name}, fs.StableAttr{Mode: syscall.S_IFDIR})
	fillEntry(ctx, ch, out)
	return ch, 0
}

// Rmdir undefines a network; EBUSY while it is active.
func (n *networksDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	if e := n.root.cfg.Access.allow(ctx, 0o775, 2); e != 0 {
		return e
	}
	return errno(n.nets.Remove(name))
}

// networkDir is one network: config.xml, ctl, state, error, leases.
type networkDir struct {
	fs.Inode
	root *Root
	nets *network.Manager
	name string
}

var (
	_ fs.NodeOnAdder   = (*networkDir)(nil)
	_ fs.NodeGetattrer = (*networkDir)(nil)
	_ fs.NodeOpendirer = (*networkDir)(nil)
)

func (nd *networkDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	nd.root.attr(&out.Attr, syscall.S_IFDIR|nd.root.cfg.Access.mode(0o775))
	return 0
}

func (nd *networkDir) Opendir(ctx context.Context) syscall.Errno {
	return nd.root.cfg.Access.allow(ctx, 0o775, 4)
}

// OnAdd creates the network's files.
func (nd *networkDir) OnAdd(ctx context.Context) {
	m, name, r := nd.nets, nd.name, nd.root
	r.addFile(ctx, &nd.Inode, "config.xml", 0o660, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		cur, err := m.Config(name)
		if err != nil {
			return nil, 0, err
		}
		return &xmlHandle{commit: func(_ context.Context, b []byte) error { return m.Define(name, b) }, snapshot: cur}, fuse.FOPEN_DIRECT_IO, nil
	})
	r.addFile(ctx, &nd.Inode, "ctl", 0o220, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		return &commandHandle{run: func(ctx context.Context, line string) error { return m.Control(ctx, name, line) }},
			fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NONSEEKABLE, nil
	})
	r.addFile(ctx, &nd.Inode, "state", 0o444, snapshot(func(context.Context) ([]byte, error) { return line(m.State(name)) }))
	r.addFile(ctx, &nd.Inode, "error", 0o444, snapshot(func(context.Context) ([]byte, error) { return line(m.LastError(name), nil) }))
	r.addFile(ctx, &nd.Inode, "leases", 0o444, snapshot(func(context.Context) ([]byte, error) { return m.LeasesJSON(name) }))
}
