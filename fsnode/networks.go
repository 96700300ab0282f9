package fsnode

import (
	"context"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// networkFiles are one network's files (networks/NAME/): config.xml,
// ctl, state, error, leases.
func (r *Root) networkFiles(ctx context.Context, dir *fs.Inode, name string) {
	m := r.cfg.Networks
	r.objectFiles(ctx, dir, name, m)
	r.addFile(ctx, dir, "leases", 0o444, snapshot(func(context.Context) ([]byte, error) { return m.LeasesJSON(name) }))
}

// definedObject is what a secondary driver (networks, pools) offers for
// one of its objects: a definition, commands, a state and its last error.
type definedObject interface {
	Config(name string) ([]byte, error)
	Define(name string, xml []byte) error
	Control(ctx context.Context, name, line string) error
	State(name string) (string, error)
	LastError(name string) string
}

// objectFiles are the files every such object has: config.xml, ctl,
// state and error.
func (r *Root) objectFiles(ctx context.Context, dir *fs.Inode, name string, m definedObject) {
	r.addFile(ctx, dir, "config.xml", 0o660, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		cur, err := m.Config(name)
		if err != nil {
			return nil, 0, err
		}
		return configFile(func(b []byte) error { return m.Define(name, b) }, cur), fuse.FOPEN_DIRECT_IO, nil
	})
	r.addFile(ctx, dir, "ctl", 0o220, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		return &commandHandle{run: func(ctx context.Context, line string) error { return m.Control(ctx, name, line) }},
			fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NONSEEKABLE, nil
	})
	r.addFile(ctx, dir, "state", 0o444, snapshot(func(context.Context) ([]byte, error) { return line(m.State(name)) }))
	r.addFile(ctx, dir, "error", 0o444, snapshot(func(context.Context) ([]byte, error) { return line(m.LastError(name), nil) }))
}
