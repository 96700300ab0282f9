package fsnode

import (
	"fmt"
	"os"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Mount serves the tree of cfg at mountpoint and returns once the kernel
// answers on it.
func Mount(mountpoint string, cfg *Config) (*fuse.Server, error) {
	// Names change only through this mount; attributes are cheap hints
	// (files with changing content are direct I/O, so a stale size never
	// cuts a read short).
	entry, attr := entryTimeout, time.Second
	opts := &fs.Options{
		EntryTimeout: &entry,
		AttrTimeout:  &attr,
		UID:          cfg.Access.UID,
		GID:          cfg.Access.GID,
		MountOptions: fuse.MountOptions{
			FsName:      "qemufs",
			Name:        "qemufs",
			AllowOther:  cfg.Access.Shared,
			DirectMount: os.Geteuid() == 0, // faster, and no fusermount3 needed as root
			MaxWrite:    1 << 20,
			// Every read reply is bytes in memory (ReadResultData): with
			// splice on, go-fuse first tries to splice each one through a
			// pipe, fails, drains the pipe and then writes it; a few
			// system calls more on every read.
			DisableSplice: true,
			Debug:         os.Getenv("QEMUFS_FUSE_DEBUG") != "",
		},
	}
	srv, err := fs.Mount(mountpoint, NewRoot(cfg), opts)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	return srv, nil
}
