package fsnode

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// collection is what a collection directory (networks/, pools/,
// pools/P/volumes/, secrets/) shows and changes: mkdir makes an empty
// object, rmdir removes one.
type collection interface {
	Names() []string // sorted
	Exists(name string) bool
	Create(name string) error
	Remove(name string) error
}

// collectionDir is a directory of objects of one kind, each a directory
// whose files open builds.
type collectionDir struct {
	fs.Inode
	root  *Root
	items collection
	// files adds an object's files to its directory.
	files func(ctx context.Context, dir *fs.Inode, name string)
}

var (
	_ fs.NodeLookuper  = (*collectionDir)(nil)
	_ fs.NodeReaddirer = (*collectionDir)(nil)
	_ fs.NodeMkdirer   = (*collectionDir)(nil)
	_ fs.NodeRmdirer   = (*collectionDir)(nil)
	_ fs.NodeGetattrer = (*collectionDir)(nil)
	_ fs.NodeOpendirer = (*collectionDir)(nil)
)

func (n *collectionDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.root.attr(&out.Attr, syscall.S_IFDIR|n.root.cfg.Access.mode(0o775))
	return 0
}

func (n *collectionDir) Opendir(ctx context.Context) syscall.Errno {
	return n.root.cfg.Access.allow(ctx, 0o775, 4)
}

func (n *collectionDir) newChild(ctx context.Context, name string) *fs.Inode {
	return n.NewInode(ctx, &objectDir{root: n.root, name: name, files: n.files}, fs.StableAttr{Mode: syscall.S_IFDIR})
}

// Lookup finds an object's directory.
func (n *collectionDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if !n.items.Exists(name) {
		if n.GetChild(name) != nil {
			n.RmChild(name)
		}
		return nil, syscall.ENOENT
	}
	ch := n.GetChild(name)
	if ch == nil {
		ch = n.newChild(ctx, name)
	}
	fillEntry(ctx, ch, out)
	return ch, 0
}

// Readdir lists the objects.
func (n *collectionDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	names := n.items.Names()
	entries := make([]fuse.DirEntry, len(names))
	for i, name := range names {
		entries[i] = fuse.DirEntry{Name: name, Mode: syscall.S_IFDIR}
	}
	return fs.NewListDirStream(entries), 0
}

// Mkdir makes an empty object, defined by writing its config.xml.
func (n *collectionDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := n.root.cfg.Access.allow(ctx, 0o775, 2); e != 0 {
		return nil, e
	}
	if err := n.items.Create(name); err != nil {
		return nil, errno(err)
	}
	ch := n.newChild(ctx, name)
	fillEntry(ctx, ch, out)
	return ch, 0
}

// Rmdir removes an object (EBUSY while it is active).
func (n *collectionDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	if e := n.root.cfg.Access.allow(ctx, 0o775, 2); e != 0 {
		return e
	}
	return errno(n.items.Remove(name))
}

// objectDir is one object of a collection: its files come from files.
type objectDir struct {
	fs.Inode
	root  *Root
	name  string
	files func(ctx context.Context, dir *fs.Inode, name string)
}

var (
	_ fs.NodeOnAdder   = (*objectDir)(nil)
	_ fs.NodeGetattrer = (*objectDir)(nil)
	_ fs.NodeOpendirer = (*objectDir)(nil)
)

func (d *objectDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.root.attr(&out.Attr, syscall.S_IFDIR|d.root.cfg.Access.mode(0o775))
	return 0
}

func (d *objectDir) Opendir(ctx context.Context) syscall.Errno {
	return d.root.cfg.Access.allow(ctx, 0o775, 4)
}

// OnAdd creates the object's files.
func (d *objectDir) OnAdd(ctx context.Context) { d.files(ctx, &d.Inode, d.name) }

// addCollection adds a collection directory under parent.
func (r *Root) addCollection(ctx context.Context, parent *fs.Inode, name string, items collection, files func(ctx context.Context, dir *fs.Inode, name string)) {
	ch := parent.NewPersistentInode(ctx, &collectionDir{root: r, items: items, files: files}, fs.StableAttr{Mode: syscall.S_IFDIR})
	parent.AddChild(name, ch, true)
}

// configFile is the handle of an object's config.xml: reads see cur, a
// whole written document goes to define. (The one place that names the
// handle type, for all the object trees.)
func configFile(define func([]byte) error, cur []byte) fs.FileHandle {
	return &xmlHandle{commit: func(_ context.Context, b []byte) error { return define(b) }, snapshot: cur}
}
