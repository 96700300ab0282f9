package fsnode

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/qemufs/qemufs/storage"
)

// poolFiles are one pool's files (pools/NAME/): config.xml, ctl, state,
// error and the volumes/ directory.
func (r *Root) poolFiles(ctx context.Context, dir *fs.Inode, name string) {
	m := r.cfg.Pools
	r.objectFiles(ctx, dir, name, m)
	r.addCollection(ctx, dir, "volumes", volumeSet{m, name}, func(ctx context.Context, dir *fs.Inode, vol string) {
		r.volumeFiles(ctx, dir, name, vol)
	})
}

// volumeSet is a pool's volumes as a collection.
type volumeSet struct {
	m    *storage.Manager
	pool string
}

func (v volumeSet) Names() []string          { return v.m.VolumeNames(v.pool) }
func (v volumeSet) Exists(name string) bool  { return v.m.VolumeExists(v.pool, name) }
func (v volumeSet) Create(name string) error { return v.m.CreateVolume(v.pool, name) }
func (v volumeSet) Remove(name string) error { return v.m.DeleteVolume(v.pool, name) }

// volumeFiles are one volume's files: config.xml (writing it creates the
// image), path, error.
func (r *Root) volumeFiles(ctx context.Context, dir *fs.Inode, pool, vol string) {
	m := r.cfg.Pools
	r.addFile(ctx, dir, "config.xml", 0o660, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		cur, err := m.VolumeConfig(ctx, pool, vol)
		if err != nil {
			return nil, 0, err
		}
		return configFile(func(b []byte) error { return m.DefineVolume(context.Background(), pool, vol, b) }, cur), fuse.FOPEN_DIRECT_IO, nil
	})
	r.addFile(ctx, dir, "path", 0o444, snapshot(func(context.Context) ([]byte, error) { return line(m.VolumePath(pool, vol)) }))
	r.addFile(ctx, dir, "error", 0o444, snapshot(func(context.Context) ([]byte, error) { return line(m.VolumeError(pool, vol), nil) }))
}

// secretFiles are one secret's files (secrets/UUID/): config.xml, value,
// state, error.
func (r *Root) secretFiles(ctx context.Context, dir *fs.Inode, name string) {
	m := r.cfg.Secrets
	r.addFile(ctx, dir, "config.xml", 0o660, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		cur, err := m.Config(name)
		if err != nil {
			return nil, 0, err
		}
		return configFile(func(b []byte) error { return m.Define(name, b) }, cur), fuse.FOPEN_DIRECT_IO, nil
	})
	// value: written whole (set at close); read back only when the
	// secret is not private (EACCES, the reason in error, otherwise).
	r.addFile(ctx, dir, "value", 0o660, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		if flags&syscall.O_ACCMODE == syscall.O_RDONLY {
			v, err := m.Value(name)
			if err != nil {
				return nil, 0, err
			}
			return &bytesHandle{data: v}, snapshotFlags, nil
		}
		return &valueHandle{set: func(b []byte) error { return m.SetValue(name, b) }}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NONSEEKABLE, nil
	})
	r.addFile(ctx, dir, "state", 0o444, snapshot(func(context.Context) ([]byte, error) { return line(m.State(name)) }))
	r.addFile(ctx, dir, "error", 0o444, snapshot(func(context.Context) ([]byte, error) { return line(m.LastError(name), nil) }))
}

// valueHandle collects a written value and stores it at close (the
// value is whole only then); a second flush of a dup'd fd does nothing.
type valueHandle struct {
	set func([]byte) error

	mu    sync.Mutex
	buf   []byte
	dirty bool
}

var (
	_ fs.FileWriter  = (*valueHandle)(nil)
	_ fs.FileFlusher = (*valueHandle)(nil)
)

func (h *valueHandle) truncate() {
	h.mu.Lock()
	h.buf = h.buf[:0]
	h.mu.Unlock()
}

func (h *valueHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf = append(h.buf, data...)
	h.dirty = true
	return uint32(len(data)), 0
}

func (h *valueHandle) Flush(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.dirty {
		return 0
	}
	h.dirty = false
	err := h.set(h.buf)
	for i := range h.buf {
		h.buf[i] = 0
	}
	return errno(err)
}
