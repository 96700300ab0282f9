package fsnode

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/qemufs/qemufs/driver"
)

// domainDir is one domain's directory. Its files are fixed; what they show
// comes from the driver at each open.
type domainDir struct {
	fs.Inode
	root *Root
	name string
}

var (
	_ fs.NodeOnAdder   = (*domainDir)(nil)
	_ fs.NodeGetattrer = (*domainDir)(nil)
	_ fs.NodeCreater   = (*domainDir)(nil)
	_ fs.NodeUnlinker  = (*domainDir)(nil)
	_ fs.NodeOpendirer = (*domainDir)(nil)
)

// OnAdd creates the domain's files.
func (dd *domainDir) OnAdd(ctx context.Context) {
	r, d, name := dd.root, dd.root.cfg.Driver, dd.name
	add := func(parent *fs.Inode, file string, perm uint32, open opener, size func() uint64) {
		ch := parent.NewPersistentInode(ctx, &fileNode{root: r, domain: name, perm: perm, open: open, size: size}, fs.StableAttr{Mode: syscall.S_IFREG})
		parent.AddChild(file, ch, true)
	}
	in := &dd.Inode
	add(in, "config.xml", 0o660, dd.openConfig, func() uint64 { b, _ := d.Config(name); return uint64(len(b)) })
	add(in, "live.xml", 0o440, snapshot(func(context.Context) ([]byte, error) { return d.LiveXML(name) }),
		func() uint64 { b, _ := d.LiveXML(name); return uint64(len(b)) })
	add(in, "ctl", 0o220, dd.openCtl, nil)
	for _, op := range []string{"attach", "detach", "update"} {
		add(in, op, 0o220, dd.openDevice(op), nil)
	}
	add(in, "state", 0o444, snapshot(func(context.Context) ([]byte, error) { return line(d.StateLine(name)) }), nil)
	add(in, "error", 0o444, snapshot(func(context.Context) ([]byte, error) { return line(d.LastError(name)) }), nil)
	add(in, "argv", 0o440, snapshot(func(context.Context) ([]byte, error) { return d.Argv(name) }), nil)
	add(in, "pid", 0o444, snapshot(func(context.Context) ([]byte, error) {
		pid, err := d.Pid(name)
		if err != nil || pid == 0 {
			return nil, err
		}
		return []byte(strconv.Itoa(pid) + "\n"), nil
	}), nil)
	add(in, "log", 0o440, dd.openLog, func() uint64 {
		p, _ := d.LogPath(name)
		fi, err := os.Stat(p)
		if err != nil {
			return 0
		}
		return uint64(fi.Size())
	})
	add(in, "console", 0o660, dd.openConsole, nil)
	add(in, "migration", 0o644, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		if flags&syscall.O_ACCMODE != syscall.O_RDONLY { // echo cancel > migration
			return &commandHandle{run: func(ctx context.Context, line string) error { return d.MigrationControl(ctx, name, line) }}, fuse.FOPEN_DIRECT_IO, nil
		}
		return snapshot(func(context.Context) ([]byte, error) { return d.MigrationInfo(name) })(ctx, flags)
	}, nil)
	add(in, "incoming.xml", 0o220, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		return &xmlHandle{commit: func(_ context.Context, b []byte) error { return d.PrepareIncoming(name, b) }}, fuse.FOPEN_DIRECT_IO, nil
	}, nil)
	add(in, "screen.png", 0o440, snapshot(func(ctx context.Context) ([]byte, error) {
		// Go's SIGURG or a shell's SIGCHLD must not fail the screendump.
		ctx, cancel := userInterrupts(ctx)
		defer cancel()
		b, err := d.Screenshot(ctx, name)
		if err != nil {
			d.RecordError(name, err.Error())
		}
		return b, err
	}), nil)
	add(in, "stats", 0o444, snapshot(func(ctx context.Context) ([]byte, error) {
		ctx, cancel := userInterrupts(ctx)
		defer cancel()
		b, err := d.Stats(ctx, name)
		if err != nil {
			d.RecordError(name, err.Error())
		}
		return b, err
	}), nil)
	add(in, "events", 0o440, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		rd, err := d.Events(name)
		if err != nil {
			return nil, 0, err
		}
		return newLineStream(rd), lineStreamFlags, nil
	}, nil)
	in.AddChild("snapshots", in.NewPersistentInode(ctx, &snapshotsDir{root: r, domain: name}, fs.StableAttr{Mode: syscall.S_IFDIR}), true)
	add(in, "agent", 0o660, dd.openAgent, nil)
	add(in, "interfaces", 0o440, snapshot(func(ctx context.Context) ([]byte, error) {
		ctx, cancel := userInterrupts(ctx)
		defer cancel()
		b, err := d.Interfaces(ctx, name)
		if err != nil {
			d.RecordError(name, err.Error())
		}
		return b, err
	}), nil)
	mon := in.NewPersistentInode(ctx, &dirNode{root: r, perm: 0o550}, fs.StableAttr{Mode: syscall.S_IFDIR})
	in.AddChild("monitor", mon, true)
	add(mon, "qmp", 0o660, dd.openMonitor(false), nil)
	add(mon, "hmp", 0o660, dd.openMonitor(true), nil)
	add(mon, "events", 0o440, func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		rd, err := d.QMPEvents(name)
		if err != nil {
			return nil, 0, err
		}
		return newLineStream(rd), lineStreamFlags, nil
	}, nil)
}

// line turns a one-line answer into file content with a newline.
func line(s string, err error) ([]byte, error) {
	if err != nil || s == "" {
		return nil, err
	}
	return []byte(s + "\n"), nil
}

func (dd *domainDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	dd.root.attr(&out.Attr, syscall.S_IFDIR|dd.root.cfg.Access.mode(0o775))
	return 0
}

func (dd *domainDir) Opendir(ctx context.Context) syscall.Errno {
	return dd.root.cfg.Access.allow(ctx, 0o775, 4)
}

// Create refuses new files: a domain directory has a fixed set.
func (dd *domainDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EPERM
}

// Unlink refuses: rmdir the domain instead.
func (dd *domainDir) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

func (dd *domainDir) openConfig(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
	cur, err := dd.root.cfg.Driver.Config(dd.name)
	if err != nil {
		return nil, 0, err
	}
	// A writer always starts from nothing: the kernel's truncation for
	// O_TRUNC arrives as a SETATTR that need not name this handle, and a
	// definition is replaced whole, never patched in place.
	d, name := dd.root.cfg.Driver, dd.name
	h := &xmlHandle{commit: func(_ context.Context, b []byte) error { return d.Define(name, b) }, snapshot: cur,
		refuse: func(msg string) { d.RecordError(name, msg) }}
	return h, fuse.FOPEN_DIRECT_IO, nil
}

func (dd *domainDir) openCtl(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
	d, name := dd.root.cfg.Driver, dd.name
	// Seekable (though offsets are ignored): OpenSSH's sftp-server seeks
	// before every write, so a tree used over sshfs needs lseek to work
	// (docs/remote.md).
	return &commandHandle{run: func(ctx context.Context, line string) error { return d.Control(withCaller(ctx), name, line) }},
		fuse.FOPEN_DIRECT_IO, nil
}

func (dd *domainDir) openLog(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
	p, err := dd.root.cfg.Driver.LogPath(dd.name)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if os.IsNotExist(err) {
		return &bytesHandle{}, fuse.FOPEN_DIRECT_IO, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("log: %w", err)
	}
	f.Close() // readable now; each read opens it again (osFileHandle)
	return &osFileHandle{path: p}, fuse.FOPEN_DIRECT_IO, nil
}

func (dd *domainDir) openConsole(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
	c, err := dd.root.cfg.Driver.OpenConsole(dd.name)
	if err != nil {
		dd.root.cfg.Driver.RecordError(dd.name, err.Error())
		return nil, 0, err
	}
	return &consoleHandle{c: c, d: dd.root.cfg.Driver, name: dd.name}, streamFlags, nil
}

func (dd *domainDir) openMonitor(hmp bool) opener {
	return func(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
		s, err := dd.root.cfg.Driver.OpenMonitor(dd.name, hmp)
		if err != nil {
			dd.root.cfg.Driver.RecordError(dd.name, err.Error())
			return nil, 0, err
		}
		return &sessionHandle{s: s, d: dd.root.cfg.Driver, name: dd.name}, sessionFlags, nil
	}
}

// openAgent opens a guest agent session (see driver.OpenAgent), handled
// as a monitor session.
func (dd *domainDir) openAgent(ctx context.Context, flags uint32) (fs.FileHandle, uint32, error) {
	s, err := dd.root.cfg.Driver.OpenAgent(dd.name)
	if err != nil {
		dd.root.cfg.Driver.RecordError(dd.name, err.Error())
		return nil, 0, err
	}
	return &sessionHandle{s: s, d: dd.root.cfg.Driver, name: dd.name}, sessionFlags, nil
}

var _ = driver.ErrIO
