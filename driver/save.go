package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/internal/fault"
)

// Reasons of the save and restore states, with libvirt's names.
const (
	ReasonSaving       = "saving"        // paused while its memory is saved
	ReasonSaved        = "saved"         // shut off by a save
	ReasonRestored     = "restored"      // running from a save image
	ReasonSaveCanceled = "save canceled" // running again after a failed save
)

// Bounds of a save.
const (
	// saveConnectTimeout bounds how long QEMU takes to connect to the
	// socket qemufs receives the stream on.
	saveConnectTimeout = 60 * time.Second
	// saveStallTimeout cancels a save whose stream stops moving.
	saveStallTimeout = 60 * time.Second
	// saveBandwidth is the migration speed limit during a save: none to
	// speak of (QEMU's default of 32 MiB/s is meant for live migration
	// over a network, not for a paused guest going to a local file).
	saveBandwidth = 1 << 50
	// loadTimeout bounds loading a saved state into QEMU.
	loadTimeout = 10 * time.Minute
)

func init() {
	registerCommand("save [FILE]", func(ctx context.Context, d *Driver, dm *dom, args []string) error {
		switch len(args) {
		case 0:
			return d.save(ctx, dm, d.managedSavePath(dm.name), true)
		case 1:
			if !filepath.IsAbs(args[0]) {
				return errorf(ErrInvalid, "save %s: FILE must be an absolute path, got %q", dm.name, args[0])
			}
			path := filepath.Clean(args[0])
			if err := checkCallerPath(ctx, "save", dm.name, path, false); err != nil { // caller.go
				return err
			}
			if err := d.save(ctx, dm, path, false); err != nil {
				return err
			}
			giveToCaller(ctx, path)
			return nil
		}
		return errBadArgs
	})
	registerCommand("restore FILE [--paused|--running]", func(ctx context.Context, d *Driver, dm *dom, args []string) error {
		var o StartOptions
		var file string
		for _, a := range args {
			switch {
			case a == "--paused":
				o.Paused = true
			case a == "--running":
				o.running = true
			case strings.HasPrefix(a, "-") || file != "":
				return errBadArgs
			default:
				file = a
			}
		}
		if file == "" || o.Paused && o.running {
			return errBadArgs
		}
		if !filepath.IsAbs(file) {
			return errorf(ErrInvalid, "restore %s: FILE must be an absolute path, got %q", dm.name, file)
		}
		if err := checkCallerPath(ctx, "restore", dm.name, filepath.Clean(file), true); err != nil { // caller.go
			return err
		}
		return d.restoreFile(ctx, dm, filepath.Clean(file), o)
	})
	registerCommand("managedsave-remove", noArgs(func(ctx context.Context, d *Driver, dm *dom) error {
		return d.removeManagedSave(dm)
	}))
}

// managedSavePath is where the managed save image of domain name lives.
// The directory's name starts with a dot, which no domain name may, so it
// never meets a domain's own directory under LibDir.
func (d *Driver) managedSavePath(name string) string {
	return filepath.Join(d.inst.LibDir, ".save", name+".save")
}

// hasManagedSave reports whether domain name has a managed save image.
func (d *Driver) hasManagedSave(name string) bool {
	_, err := os.Lstat(d.managedSavePath(name))
	return err == nil
}

// savedXML is the definition a save image carries: the live definition
// (with hot-plugged devices and the addresses QEMU's state refers to)
// without what belongs to this run only (taints, generated labels).
func (r *run) savedXML() []byte {
	r.mu.Lock()
	x := r.live.Clone()
	r.mu.Unlock()
	x.ClearRuntime()
	var labels []domain.SecLabel
	for _, l := range x.SecLabels() {
		if l.Type == "dynamic" {
			l.Label, l.ImageLabel = "", ""
		}
		labels = append(labels, l)
	}
	x.SetSecLabels(labels)
	return x.XML()
}

// migrationInfo is the part of query-migrate's answer a save or a restore
// looks at.
type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	RAM       *struct {
		Transferred int64 `json:"transferred"`
		Total       int64 `json:"total"`
	} `json:"ram"`
}

func (r *run) queryMigrate(ctx context.Context) (migrationInfo, error) {
	var mi migrationInfo
	err := r.mon.Execute(ctx, "query-migrate", nil, &mi)
	return mi, err
}

// save pauses the guest, streams its state into a save image at path, and
// ends QEMU: the domain is then "shut off (saved)". QEMU sends the stream
// to a socket of qemufs, which writes the file itself, so the image never
// needs to be writable by QEMU's user and QEMU needs no shell (exec:) that
// its sandbox forbids. On any failure the image is not written (a previous
// one at path stays as it was), and a guest that was running runs again.
func (d *Driver) save(ctx context.Context, dm *dom, path string, managed bool) (err error) {
	name := dm.name
	dm.op.Lock()
	defer dm.op.Unlock()
	defer func() {
		if err != nil && ctx.Err() != nil && !errors.Is(err, ErrInterrupted) {
			err = errorf(ErrInterrupted, "save %s: interrupted; the save was cancelled (%v)", name, err)
		}
	}()
	r, err := dm.activeRun("save")
	if err != nil {
		return err
	}
	dm.mu.Lock()
	state, reason := dm.state, dm.reason
	dm.mu.Unlock()
	if state != StateRunning && state != StatePaused {
		return errorf(ErrBusy, "save %s: the domain is %s (%s); only a running or paused guest can be saved", name, state, reason)
	}
	if r.def().MemoryKiB() == 0 {
		return errorf(ErrInvalid, "save %s: the domain has no memory to save", name)
	}
	dir := filepath.Dir(path)
	if managed {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return errorf(ErrIO, "save %s: %w", name, err)
		}
	}
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
		return errorf(ErrInvalid, "save %s: %s exists and is not a regular file", name, path)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errorf(ErrInvalid, "save %s: directory %s does not exist", name, dir)
		}
		return errorf(ErrIO, "save %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	xml := r.savedXML()
	running := state == StateRunning
	hdr := newSaveHeader(xml, running)
	if _, err := tmp.Write(append(hdr.bytes(), xml...)); err != nil {
		return errorf(ErrIO, "save %s: write %s: %w", name, path, err)
	}

	sock := filepath.Join(r.files.DomDir, "save.sock")
	os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return errorf(ErrIO, "save %s: stream socket: %w", name, err)
	}
	defer ln.Close()
	d.chownForQEMU(r, sock)

	t0 := time.Now()
	d.appendLog(r.files.Log, "saving the guest's state to %s", path)
	if running {
		if err := r.pause(ReasonSaving); err != nil {
			return errorf(ErrIO, "save %s: stop: %w", name, err)
		}
		fault.PointPid("save.paused", r.proc.Pid)
		defer func() {
			if err != nil {
				r.resumeAfterFailedSave()
			}
		}()
	}
	var oldBandwidth struct {
		MaxBandwidth int64 `json:"max-bandwidth"`
	}
	if err := r.mon.Execute(ctx, "query-migrate-parameters", nil, &oldBandwidth); err != nil {
		return errorf(ErrIO, "save %s: %w", name, err)
	}
	if err := r.mon.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": saveBandwidth}, nil); err != nil {
		return errorf(ErrIO, "save %s: %w", name, err)
	}
	restoreBandwidth := func() {
		c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.mon.Execute(c, "migrate-set-parameters", map[string]any{"max-bandwidth": oldBandwidth.MaxBandwidth}, nil)
	}

	rcv := receiveStream(ln, &writeback{f: tmp, off: int64(saveHeaderSize + len(xml))})
	if err := r.mon.Execute(ctx, "migrate", map[string]any{"uri": "unix:" + sock}, nil); err != nil {
		rcv.abort()
		restoreBandwidth()
		return errorf(ErrIO, "save %s: migrate: %w", name, err)
	}
	n, werr := d.waitSaved(ctx, r, rcv)
	if werr != nil {
		c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r.mon.Execute(c, "migrate_cancel", nil, nil)
		cancel()
		rcv.abort()
		restoreBandwidth()
		d.appendLog(r.files.Log, "save failed: %v", werr)
		return werr
	}

	fault.Point("save.streamed")
	// The stream is in: complete the header and put the image in place.
	hdr.StreamLen = uint64(n)
	if _, err := tmp.WriteAt(hdr.bytes(), 0); err != nil {
		return errorf(ErrIO, "save %s: write %s: %w", name, path, err)
	}
	if err := tmp.Sync(); err != nil {
		return errorf(ErrIO, "save %s: write %s: %w", name, path, err)
	}
	if err := tmp.Close(); err != nil {
		return errorf(ErrIO, "save %s: write %s: %w", name, path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return errorf(ErrIO, "save %s: %w", name, err)
	}
	syncDir(dir)
	fault.Point("save.renamed")
	d.appendLog(r.files.Log, "saved %d bytes of guest state to %s in %s", n, path, time.Since(t0).Round(time.Millisecond))

	// QEMU is done with this guest: end it; cleanup records "saved".
	r.kill(ReasonSaved)
	<-r.done
	return nil
}

// resumeAfterFailedSave runs a guest again that a failed save paused.
func (r *run) resumeAfterFailedSave() {
	dm := r.dm
	resumed := false
	r.runStateChange(func() error {
		if !dm.transition(StatePaused, StateRunning, ReasonSaveCanceled, EventResumed) {
			return nil // not paused by the save: nothing to do
		}
		if err := r.qmp.Cont(); err != nil {
			dm.setState(StatePaused, ReasonSaving)
			r.d.appendLog(r.files.Log, "resuming after the failed save: %v", err)
			return err
		}
		resumed = true
		return nil
	})
	if resumed {
		r.saveStatus()
	}
}

// streamReceiver copies the one connection QEMU makes to a file.
type streamReceiver struct {
	ln      *net.UnixListener
	written atomic.Int64
	done    chan struct{} // closed when the copy has ended
	n       int64
	err     error

	mu      sync.Mutex
	conn    *net.UnixConn
	aborted bool
}

// receiveStream accepts one connection on ln and copies it to w.
func receiveStream(ln *net.UnixListener, w io.Writer) *streamReceiver {
	s := &streamReceiver{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		ln.SetDeadline(time.Now().Add(saveConnectTimeout))
		c, err := ln.AcceptUnix()
		if err != nil {
			s.err = fmt.Errorf("QEMU did not connect to the stream socket: %w", err)
			return
		}
		s.mu.Lock()
		s.conn = c
		aborted := s.aborted
		s.mu.Unlock()
		defer c.Close()
		if aborted {
			s.err = errors.New("aborted")
			return
		}
		s.n, s.err = io.CopyBuffer(countingWriter{w, &s.written}, c, make([]byte, 1<<20))
	}()
	return s
}

// abort ends the copy and waits for it.
func (s *streamReceiver) abort() {
	s.mu.Lock()
	s.aborted = true
	if s.conn != nil {
		s.conn.Close()
	}
	s.mu.Unlock()
	s.ln.Close()
	<-s.done
}

// writeback writes the stream to the image file and starts the kernel's
// writeback of each written stretch as it goes (sync_file_range), so that
// the fsync that makes the image durable has little left to do.
type writeback struct {
	f        *os.File
	off      int64 // file offset of the next write
	unsynced int64 // bytes written since the last writeback started
}

const writebackChunk = 8 << 20

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	w.unsynced += int64(n)
	if w.unsynced >= writebackChunk {
		// Errors only mean the file system lacks it: fsync still follows.
		unix.SyncFileRange(int(w.f.Fd()), w.off-w.unsynced, w.unsynced, unix.SYNC_FILE_RANGE_WRITE)
		w.unsynced = 0
	}
	return n, err
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// waitSaved waits until QEMU finished sending the stream and says the
// migration completed. It fails when the migration fails, the file cannot
// be written, the stream stalls, QEMU dies or the caller gives up.
func (d *Driver) waitSaved(ctx context.Context, r *run, rcv *streamReceiver) (int64, error) {
	name := r.dm.name
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last, lastMove := int64(-1), time.Now()
	for waiting := true; waiting; {
		select {
		case <-rcv.done:
			waiting = false
		case <-r.proc.Done():
			return 0, errorf(ErrIO, "save %s: QEMU ended during the save (%s)%s", name, r.proc.Exit(), logTail(r.files.Log))
		case <-ctx.Done():
			return 0, errorf(ErrInterrupted, "save %s: interrupted; the save was cancelled", name)
		case <-tick.C:
			mi, err := r.queryMigrate(ctx)
			if err != nil {
				return 0, errorf(ErrIO, "save %s: %w", name, err)
			}
			if mi.Status == "failed" || mi.Status == "cancelled" {
				return 0, errorf(ErrIO, "save %s: QEMU's migration %s: %s", name, mi.Status, mi.ErrorDesc)
			}
			if n := rcv.written.Load(); n != last {
				last, lastMove = n, time.Now()
			} else if time.Since(lastMove) > saveStallTimeout {
				return 0, errorf(ErrIO, "save %s: no progress for %s (%d bytes written, migration %s)", name, saveStallTimeout, n, mi.Status)
			}
		}
	}
	// QEMU closed the stream: it has finished, one way or the other.
	deadline := time.Now().Add(30 * time.Second)
	for pause := time.Millisecond; ; pause = min(2*pause, 100*time.Millisecond) {
		mi, err := r.queryMigrate(ctx)
		if err != nil {
			return 0, errorf(ErrIO, "save %s: %w", name, err)
		}
		switch mi.Status {
		case "completed":
			if rcv.err != nil {
				return 0, errorf(ErrIO, "save %s: writing the image: %w", name, rcv.err)
			}
			return rcv.n, nil
		case "failed", "cancelled":
			if rcv.err != nil {
				return 0, errorf(ErrIO, "save %s: writing the image: %w (QEMU: %s)", name, rcv.err, mi.ErrorDesc)
			}
			return 0, errorf(ErrIO, "save %s: QEMU's migration %s: %s", name, mi.Status, mi.ErrorDesc)
		}
		if time.Now().After(deadline) {
			return 0, errorf(ErrIO, "save %s: the stream ended but QEMU's migration is still %q", name, mi.Status)
		}
		time.Sleep(pause)
	}
}

// incoming is a saved state that a start loads into QEMU instead of
// booting the guest (StartOptions.incoming).
type incoming struct {
	img *saveImage
	fd  int // the image's fd number in QEMU
}

// loadIncoming feeds QEMU (started with -incoming defer) the saved state
// and waits until it is loaded. In QEMU 7.2 a stream QEMU cannot load makes
// it exit, which the error reports with QEMU's own words.
func (d *Driver) loadIncoming(ctx context.Context, r *run, in *incoming) error {
	name := r.dm.name
	rejected := func(err error) error {
		select {
		case <-r.proc.Done():
			return errorf(ErrIO, "start %s: QEMU could not load the saved state from %s (%s)%s", name, in.img.path, r.proc.Exit(), logTail(r.files.Log))
		case <-time.After(2 * time.Second):
		}
		return errorf(ErrIO, "start %s: loading the saved state from %s: %w%s", name, in.img.path, err, logTail(r.files.Log))
	}
	ctx, cancel := context.WithTimeout(ctx, loadTimeout)
	defer cancel()
	t0 := time.Now()
	if err := r.mon.Execute(ctx, "migrate-incoming", map[string]any{"uri": fmt.Sprintf("fd:%d", in.fd)}, nil); err != nil {
		return rejected(err)
	}
	for pause := time.Millisecond; ; pause = min(2*pause, 50*time.Millisecond) {
		mi, err := r.queryMigrate(ctx)
		if err != nil {
			return rejected(err)
		}
		switch mi.Status {
		case "completed":
			r.d.appendLog(r.files.Log, "guest state loaded from %s in %s", in.img.path, time.Since(t0).Round(time.Millisecond))
			return nil
		case "failed", "cancelled":
			return rejected(fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc))
		}
		select {
		case <-r.proc.Done():
			return rejected(errors.New("QEMU ended"))
		case <-time.After(pause):
		}
	}
}

// restoreFile starts a shut-off domain from the save image at path.
func (d *Driver) restoreFile(ctx context.Context, dm *dom, path string, o StartOptions) error {
	ctx = context.WithoutCancel(ctx) // as a start: see startLocked
	dm.op.Lock()
	defer dm.op.Unlock()
	dm.mu.Lock()
	def, active := dm.def, dm.run != nil
	dm.mu.Unlock()
	switch {
	case def == nil:
		return errorf(ErrInvalid, "restore %s: the domain is not defined: write its config.xml first (restore fills a defined domain)", dm.name)
	case active:
		return errorf(ErrBusy, "restore %s: the domain is running", dm.name)
	case d.hasManagedSave(dm.name):
		return errorf(ErrBusy, "restore %s: the domain has a managed save image (%s); start it, or discard it with managedsave-remove, first",
			dm.name, d.managedSavePath(dm.name))
	}
	return d.restoreImage(ctx, dm, def, path, o, false)
}

// restoreImage starts dm from the save image at path. The caller holds
// dm.op and checked that dm is defined and shut off. On failure the image
// and the definition are untouched and the domain stays shut off.
func (d *Driver) restoreImage(ctx context.Context, dm *dom, def *domain.Domain, path string, o StartOptions, managed bool) (err error) {
	op := "restore"
	if managed {
		op = "start"
	}
	defer func() {
		if err != nil {
			dm.mu.Lock()
			if dm.run == nil {
				dm.state, dm.reason = StateShutoff, ReasonFailed
				if managed {
					dm.reason = ReasonSaved // the image stays for the next try
				}
			}
			dm.mu.Unlock()
		}
	}()
	img, err := openSaveImage(path)
	if err != nil {
		return errorf(Kind(err), "%s %s: %w", op, dm.name, err)
	}
	defer img.Close()
	if n := img.def.Name(); n != dm.name {
		return errorf(ErrInvalid, "%s %s: save image %s is of domain %q, not %q", op, dm.name, path, n, dm.name)
	}
	if u := img.def.UUID(); !strings.EqualFold(u, def.UUID()) {
		return errorf(ErrInvalid, "%s %s: save image %s is of a domain with UUID %s; this domain's UUID is %s", op, dm.name, path, u, def.UUID())
	}
	if err := img.def.Validate(d.caps); err != nil {
		return errorf(ErrInvalid, "%s %s: the definition in save image %s: %w", op, dm.name, path, err)
	}
	o.Paused = o.Paused || !img.running && !o.running
	o.incoming = &incoming{img: img}
	return d.start(ctx, dm, img.def, o)
}

// startManagedSave is the part of a start that concerns a managed save
// image: with one, the start restores it (and removes it once the guest
// runs) unless --force-boot asked to discard it. handled is false when the
// start is to boot as usual. The caller holds dm.op.
func (d *Driver) startManagedSave(ctx context.Context, dm *dom, def *domain.Domain, o StartOptions) (handled bool, err error) {
	path := d.managedSavePath(dm.name)
	if !d.hasManagedSave(dm.name) {
		return false, nil
	}
	if o.ForceBoot {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return true, errorf(ErrIO, "start %s: discard the managed save image: %w", dm.name, err)
		}
		syncDir(filepath.Dir(path))
		d.appendLog(d.runFiles(dm.name).Log, "managed save image %s discarded (--force-boot)", path)
		return false, nil
	}
	if err := d.restoreImage(ctx, dm, def, path, o, true); err != nil {
		return true, err
	}
	if err := os.Remove(path); err != nil {
		d.appendLog(d.runFiles(dm.name).Log, "removing the restored managed save image: %v", err)
	}
	syncDir(filepath.Dir(path))
	return true, nil
}

// removeManagedSave discards a shut-off domain's managed save image
// (virsh managedsave-remove); without one it does nothing, as virsh.
func (d *Driver) removeManagedSave(dm *dom) error {
	dm.op.Lock()
	defer dm.op.Unlock()
	dm.mu.Lock()
	defined := dm.def != nil
	dm.mu.Unlock()
	if !defined {
		return errorf(ErrInvalid, "managedsave-remove %s: the domain is not defined", dm.name)
	}
	path := d.managedSavePath(dm.name)
	if err := os.Remove(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return errorf(ErrIO, "managedsave-remove %s: %w", dm.name, err)
	}
	syncDir(filepath.Dir(path))
	dm.mu.Lock()
	if dm.run == nil && dm.state == StateShutoff && dm.reason == ReasonSaved {
		dm.reason = ReasonUnknown
	}
	dm.mu.Unlock()
	return nil
}

// checkUndefineSaved refuses to undefine a domain that has a managed save
// image, as virsh undefine does without --managed-save: the image would
// be lost with the definition it needs. The caller holds dm.op.
func (d *Driver) checkUndefineSaved(dm *dom) error {
	if !d.hasManagedSave(dm.name) {
		return nil
	}
	return errorf(ErrBusy, "undefine %s: the domain has a managed save image (%s); discard it first with `echo managedsave-remove > ctl` (or start it)",
		dm.name, d.managedSavePath(dm.name))
}
