// Package fsnode is the FUSE view of a qemufs driver: a root with one
// directory per domain, whose files read state from the driver and write
// commands to it. It holds no state of its own beyond open file handles;
// every driver error becomes one errno here, its text in the domain's
// `error` file.
package fsnode

import (
	"context"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/qemufs/qemufs/capabilities"
	"github.com/qemufs/qemufs/driver"
	"github.com/qemufs/qemufs/network"
	"github.com/qemufs/qemufs/secrets"
	"github.com/qemufs/qemufs/storage"
)

// Config is what the tree shows and who may use it.
type Config struct {
	Driver *driver.Driver
	// Caps backs capabilities.xml and domcapabilities/.
	Caps *capabilities.Capabilities
	// Version is the content of the `version` file.
	Version string
	// Networks backs networks/; nil: no such directory.
	Networks *network.Manager
	// Pools backs pools/; nil: no such directory.
	Pools *storage.Manager
	// Secrets backs secrets/; nil: no such directory.
	Secrets *secrets.Manager
	// FromNative converts a QEMU command line to domain XML.
	FromNative func(args string) ([]byte, error)
	Access     Access
}

// Entry names stay valid for this long in the kernel's cache: they change
// only through this mount (mkdir, rmdir), which updates the cache itself.
const entryTimeout = time.Second

// Root is the mount's root directory.
type Root struct {
	fs.Inode
	cfg     *Config
	started time.Time

	mu         sync.Mutex
	fromNative map[uint32][]byte // last conversion per user
}

var (
	_ fs.NodeOnAdder   = (*Root)(nil)
	_ fs.NodeLookuper  = (*Root)(nil)
	_ fs.NodeReaddirer = (*Root)(nil)
	_ fs.NodeMkdirer   = (*Root)(nil)
	_ fs.NodeRmdirer   = (*Root)(nil)
	_ fs.NodeGetattrer = (*Root)(nil)
	_ fs.NodeCreater   = (*Root)(nil)
	_ fs.NodeUnlinker  = (*Root)(nil)
	_ fs.NodeRenamer   = (*Root)(nil)
	_ fs.NodeOpendirer = (*Root)(nil)
)

// NewRoot returns the root node of a qemufs tree.
func NewRoot(cfg *Config) *Root {
	return &Root{cfg: cfg, started: time.Now(), fromNative: map[uint32][]byte{}}
}

// OnAdd builds the static part of the tree.
func (r *Root) OnAdd(ctx context.Context) {
	caps := r.cfg.Caps
	r.addFile(ctx, &r.Inode, "capabilities.xml", 0o444, snapshot(func(context.Context) ([]byte, error) { return caps.XML(), nil }))
	r.addFile(ctx, &r.Inode, "version", 0o444, snapshot(func(context.Context) ([]byte, error) { return []byte(r.cfg.Version), nil }))
	r.addFile(ctx, &r.Inode, "from-native", 0o666, r.openFromNative)
	if r.cfg.Networks != nil {
		r.addCollection(ctx, &r.Inode, "networks", r.cfg.Networks, r.networkFiles)
	}
	if r.cfg.Pools != nil {
		r.addCollection(ctx, &r.Inode, "pools", r.cfg.Pools, r.poolFiles)
	}
	if r.cfg.Secrets != nil {
		r.addCollection(ctx, &r.Inode, "secrets", r.cfg.Secrets, r.secretFiles)
	}
	dc := r.NewPersistentInode(ctx, &dirNode{root: r, perm: 0o555}, fs.StableAttr{Mode: syscall.S_IFDIR})
	r.AddChild("domcapabilities", dc, true)
	for _, name := range caps.DomainCapsNames() {
		name := name
		r.addFile(ctx, dc, name, 0o444, snapshot(func(context.Context) ([]byte, error) { return caps.DomainCapsXML(name) }))
	}
}

// addFile adds a persistent file node under parent.
func (r *Root) addFile(ctx context.Context, parent *fs.Inode, name string, perm uint32, open opener) *fs.Inode {
	ch := parent.NewPersistentInode(ctx, &fileNode{root: r, perm: perm, open: open}, fs.StableAttr{Mode: syscall.S_IFREG})
	parent.AddChild(name, ch, true)
	return ch
}

func (r *Root) attr(out *fuse.Attr, mode uint32) {
	out.Mode = mode
	out.Uid, out.Gid = r.cfg.Access.UID, r.cfg.Access.GID
	t := r.started
	out.SetTimes(&t, &t, &t)
}

// Getattr describes the root directory.
func (r *Root) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.attr(&out.Attr, syscall.S_IFDIR|r.cfg.Access.mode(0o775))
	return 0
}

// Lookup finds a static file or a domain directory.
func (r *Root) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch := r.GetChild(name)
	if ch != nil {
		if _, isDom := ch.Operations().(*domainDir); !isDom {
			fillEntry(ctx, ch, out)
			return ch, 0
		}
		if r.cfg.Driver.Exists(name) {
			fillEntry(ctx, ch, out)
			return ch, 0
		}
		r.RmChild(name)
		return nil, syscall.ENOENT
	}
	if !r.cfg.Driver.Exists(name) {
		return nil, syscall.ENOENT
	}
	ch = r.newDomainDir(ctx, name)
	fillEntry(ctx, ch, out)
	return ch, 0
}

func (r *Root) newDomainDir(ctx context.Context, name string) *fs.Inode {
	return r.NewInode(ctx, &domainDir{root: r, name: name}, fs.StableAttr{Mode: syscall.S_IFDIR})
}

// fillEntry fills a lookup answer from the node's own Getattr.
func fillEntry(ctx context.Context, ch *fs.Inode, out *fuse.EntryOut) {
	if g, ok := ch.Operations().(fs.NodeGetattrer); ok {
		var a fuse.AttrOut
		g.Getattr(ctx, nil, &a)
		out.Attr = a.Attr
	}
	out.SetEntryTimeout(entryTimeout)
}

// Opendir lets those who may read the directory list it: with a read
// group, others may not.
func (r *Root) Opendir(ctx context.Context) syscall.Errno {
	return r.cfg.Access.allow(ctx, 0o775, 4)
}

// Readdir lists the static files and every domain.
func (r *Root) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	var entries []fuse.DirEntry
	for name, ch := range r.Children() {
		if _, isDom := ch.Operations().(*domainDir); !isDom {
			entries = append(entries, fuse.DirEntry{Name: name, Mode: ch.Mode()})
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	for _, n := range r.cfg.Driver.Names() {
		entries = append(entries, fuse.DirEntry{Name: n, Mode: syscall.S_IFDIR})
	}
	return fs.NewListDirStream(entries), 0
}

// Mkdir makes an empty domain slot.
func (r *Root) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := r.cfg.Access.allow(ctx, 0o775, 2); e != 0 {
		return nil, e
	}
	if r.GetChild(name) != nil && !r.isDomain(name) {
		return nil, syscall.EEXIST
	}
	if err := r.cfg.Driver.Create(name); err != nil {
		return nil, errno(err)
	}
	ch := r.newDomainDir(ctx, name)
	fillEntry(ctx, ch, out)
	return ch, 0
}

func (r *Root) isDomain(name string) bool {
	ch := r.GetChild(name)
	if ch == nil {
		return false
	}
	_, ok := ch.Operations().(*domainDir)
	return ok
}

// Rmdir undefines a domain; EBUSY while it runs.
func (r *Root) Rmdir(ctx context.Context, name string) syscall.Errno {
	if e := r.cfg.Access.allow(ctx, 0o775, 2); e != 0 {
		return e
	}
	if !r.isDomain(name) && r.GetChild(name) != nil {
		return syscall.ENOTDIR
	}
	return errno(r.cfg.Driver.Remove(name))
}

// Create refuses new files: the root holds domains (mkdir) only.
func (r *Root) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EPERM
}

// Unlink refuses: files of the tree cannot be removed.
func (r *Root) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

// Rename refuses: a domain is renamed by defining it under a new name.
func (r *Root) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EPERM
}

// dirNode is a static directory (domcapabilities, monitor).
type dirNode struct {
	fs.Inode
	root *Root
	perm uint32
}

var (
	_ fs.NodeGetattrer = (*dirNode)(nil)
	_ fs.NodeOpendirer = (*dirNode)(nil)
)

func (d *dirNode) Opendir(ctx context.Context) syscall.Errno {
	return d.root.cfg.Access.allow(ctx, d.perm, 4)
}

func (d *dirNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.root.attr(&out.Attr, syscall.S_IFDIR|d.root.cfg.Access.mode(d.perm))
	return 0
}
