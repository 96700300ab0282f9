package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/internal/fault"
	"github.com/qemufs/qemufs/security"
)

// snapshotTimeout bounds one snapshot operation: saving or loading the
// memory of a large guest under TCG takes a while.
const snapshotTimeout = 10 * time.Minute

// Snapshots lists a domain's snapshots, sorted by name.
func (d *Driver) Snapshots(name string) ([]string, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	s, err := d.snaps(dm)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.byName))
	for n := range s.byName {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// SnapshotExists reports whether the domain has the snapshot snap.
func (d *Driver) SnapshotExists(name, snap string) bool {
	_, err := d.SnapshotXML(name, snap)
	return err == nil
}

// SnapshotXML returns the snapshot's domainsnapshot XML, as libvirt's
// snapshot-dumpxml shows it.
func (d *Driver) SnapshotXML(name, snap string) ([]byte, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	s, err := d.snaps(dm)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sn := s.byName[snap]
	if sn == nil {
		return nil, errorf(ErrNotFound, "domain %s has no snapshot %q", name, snap)
	}
	return sn.xml(), nil
}

// SnapshotCurrent returns the name of the domain's current snapshot (the
// parent of the next one), "" when none.
func (d *Driver) SnapshotCurrent(name string) (string, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return "", err
	}
	s, err := d.snaps(dm)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current, nil
}

// SnapshotCreate takes the default snapshot called snap (mkdir
// snapshots/SNAP): disks and memory of an active domain, disks only of a
// shut-off one.
func (d *Driver) SnapshotCreate(ctx context.Context, name, snap string) error {
	if err := checkSnapshotName(snap); err != nil {
		d.RecordError(name, "snapshot "+name+": "+err.Error())
		return errorf(ErrInvalid, "snapshot %s: %w", name, err)
	}
	_, err := d.takeSnapshot(ctx, name, &snapRequest{Name: snap})
	return err
}

// SnapshotCreateXML takes the snapshot a domainsnapshot XML describes
// (written to snapshots/create) and returns its name.
func (d *Driver) SnapshotCreateXML(ctx context.Context, name string, xml []byte) (string, error) {
	req, err := parseSnapshotRequest(xml)
	if err != nil {
		err = errorf(ErrInvalid, "snapshot %s: %w", name, err)
		d.RecordError(name, err.Error())
		return "", err
	}
	return d.takeSnapshot(ctx, name, req)
}

// takeSnapshot runs a snapshot request under the domain's lock.
func (d *Driver) takeSnapshot(ctx context.Context, name string, req *snapRequest) (_ string, err error) {
	dm, err := d.lookup(name)
	if err != nil {
		return "", err
	}
	// Like start, a snapshot runs to its end once begun: a half-taken
	// snapshot is worse than a late one.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapshotTimeout)
	defer cancel()
	dm.op.Lock()
	defer dm.op.Unlock()
	defer func() { dm.noteResult(err) }()
	s, err := d.snaps(dm)
	if err != nil {
		return "", err
	}
	dm.mu.Lock()
	def, defXML, r, state := dm.def, dm.defXML, dm.run, dm.state
	dm.mu.Unlock()
	if def == nil {
		return "", errorf(ErrInvalid, "snapshot %s: the domain is not defined", name)
	}
	now := time.Now()
	if req.Name == "" {
		req.Name = now.UTC().Format("20060102-150405")
		s.mu.Lock()
		for i := 2; s.byName[req.Name] != nil; i++ {
			req.Name = fmt.Sprintf("%s-%d", now.UTC().Format("20060102-150405"), i)
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	exists, parent := s.byName[req.Name] != nil, s.current
	s.mu.Unlock()
	if exists {
		return "", errorf(ErrExist, "snapshot %s: snapshot %q exists already", name, req.Name)
	}
	sn := &snapshot{Name: req.Name, Description: req.Description, Parent: parent, Created: now.Unix()}
	cur := def
	if r != nil {
		r.mu.Lock()
		cur = r.live.Clone()
		sn.Domain = append([]byte(nil), r.liveXML...)
		r.mu.Unlock()
		sn.Inactive = defXML
	} else {
		sn.Domain = defXML
	}
	memory, plans, err := planSnapshot(cur, req, r != nil)
	if err != nil {
		return "", errorf(ErrInvalid, "snapshot %s: %s", name, strings.TrimPrefix(err.Error(), "snapshot: "))
	}
	sn.Memory = memory
	for _, p := range plans {
		if p.mode == modeExternal { // the overlay is made as root: caller.go
			if err := checkCallerPath(ctx, "snapshot", name, p.overlay, false); err != nil {
				return "", err
			}
		}
	}
	for _, p := range plans {
		sd := snapDisk{Name: p.target, Snapshot: p.mode}
		if p.mode == modeExternal {
			sd.Source, sd.Format = p.overlay, "qcow2"
		}
		sn.Disks = append(sn.Disks, sd)
	}
	switch {
	case r == nil:
		sn.State = snapShutoff
	case memory == modeNo:
		sn.State = snapDiskSnapshot
	case state == StateRunning:
		sn.State = snapRunning
	default:
		sn.State = snapPaused
	}

	var undo func()
	switch {
	case r != nil && memory == modeInternal:
		err = d.saveInternalLive(ctx, r, sn.Name, plans)
	case r != nil:
		err = d.externalLive(ctx, dm, r, plans)
	case hasMode(plans, modeExternal):
		err = d.externalOffline(ctx, dm, plans)
	default:
		undo, err = d.internalOffline(ctx, sn.Name, plans)
	}
	if err != nil {
		return "", err
	}
	fault.Point("snapshot.taken")
	if err := d.saveSnapshotNVRAM(name, sn.Name, cur); err != nil {
		if undo != nil {
			undo()
		}
		return "", errorf(ErrIO, "snapshot %s: %s: %w", name, sn.Name, err)
	}
	if err := d.saveSnapshot(dm, sn); err != nil {
		if undo != nil {
			undo()
		}
		d.removeSnapshotNVRAM(name, sn.Name)
		return "", errorf(ErrIO, "snapshot %s: metadata of %s: %w", name, sn.Name, err)
	}
	fault.Point("snapshot.saved")
	s.mu.Lock()
	s.byName[sn.Name] = sn
	s.current = sn.Name
	s.mu.Unlock()
	if err := d.saveCurrent(dm, sn.Name); err != nil {
		return "", errorf(ErrIO, "snapshot %s: snapshot %s was taken, but recording it as current failed: %w", name, sn.Name, err)
	}
	if r != nil {
		d.appendLog(r.files.Log, "snapshot %s taken (memory %s, state %s)", sn.Name, sn.Memory, sn.State)
	}
	return sn.Name, nil
}

func hasMode(plans []diskPlan, mode string) bool {
	for _, p := range plans {
		if p.mode == mode {
			return true
		}
	}
	return false
}

// saveInternalLive saves an internal snapshot with memory in the running
// QEMU: the snapshot-save job, with the memory state in the first disk.
func (d *Driver) saveInternalLive(ctx context.Context, r *run, tag string, plans []diskPlan) error {
	nodes, err := r.formatNodes(ctx)
	if err != nil {
		return errorf(ErrIO, "snapshot %s: %w", r.dm.name, err)
	}
	var devices []string
	for _, p := range plans {
		if p.mode != modeInternal {
			continue
		}
		n := nodes[p.source]
		if n == "" {
			return errorf(ErrIO, "snapshot %s: disk %s: QEMU has no block node for %s", r.dm.name, p.target, p.source)
		}
		devices = append(devices, n)
	}
	r.mu.Lock()
	r.pauseReason = "snapshot"
	r.mu.Unlock()
	err = r.snapshotJob(ctx, "snapshot-save", map[string]any{"tag": tag, "vmstate": devices[0], "devices": devices})
	r.mu.Lock()
	r.pauseReason = ""
	r.mu.Unlock()
	if err != nil {
		return errorf(ErrIO, "snapshot %s: snapshot-save: %w", r.dm.name, err)
	}
	return nil
}

// internalOffline takes internal disk snapshots of a shut-off domain with
// qemu-img; on failure the ones already taken are deleted again. It
// returns how to undo them.
func (d *Driver) internalOffline(ctx context.Context, tag string, plans []diskPlan) (func(), error) {
	var done []string
	undo := func() {
		for _, f := range done {
			qemuImg(context.Background(), "snapshot", "-d", tag, f)
		}
	}
	for _, p := range plans {
		if p.mode != modeInternal {
			continue
		}
		if err := qemuImg(ctx, "snapshot", "-c", tag, p.source); err != nil {
			undo()
			return nil, errorf(ErrIO, "snapshot: disk %s: %w", p.target, err)
		}
		done = append(done, p.source)
	}
	return undo, nil
}

// createOverlays makes the new qcow2 top image of each external disk, on
// top of the disk's current image, and returns each overlay's backing
// chain. With inherit, the overlay takes the owner and mode of the image
// below, so that what QEMU needed of the disk stays true of its new top
// (a shut-off domain, or one QEMU runs as the daemon's user); without, it
// stays the daemon's, mode 0600, for the security stack to grant to the
// running QEMU and take back when it stops. On failure the overlays made
// are removed.
func createOverlays(ctx context.Context, plans []diskPlan, inherit bool) (map[string][]domain.BackingLayer, error) {
	chains := map[string][]domain.BackingLayer{}
	var made []string
	fail := func(err error) (map[string][]domain.BackingLayer, error) {
		for _, f := range made {
			os.Remove(f)
		}
		return nil, err
	}
	for _, p := range plans {
		if p.mode != modeExternal {
			continue
		}
		info, err := imageInfo(ctx, p.source)
		if err != nil {
			return fail(errorf(ErrIO, "snapshot: disk %s: %w", p.target, err))
		}
		format := info[0].Format
		if err := qemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", format, "-b", p.source, "-u", p.overlay, fmt.Sprint(info[0].VirtualSize)); err != nil {
			return fail(errorf(ErrIO, "snapshot: disk %s: %w", p.target, err))
		}
		made = append(made, p.overlay)
		if !inherit {
			os.Chmod(p.overlay, 0o600)
		} else if st, err := os.Stat(p.source); err == nil {
			if sys, ok := statOwner(st); ok {
				os.Chown(p.overlay, sys.uid, sys.gid)
			}
			os.Chmod(p.overlay, st.Mode().Perm())
		}
		chain := []domain.BackingLayer{{Path: p.source, Format: format}}
		for _, l := range info[1:] {
			chain = append(chain, domain.BackingLayer{Path: l.Filename, Format: l.Format})
		}
		chains[p.target] = chain
	}
	return chains, nil
}

// externalOffline takes external disk snapshots of a shut-off domain:
// overlays made with qemu-img, and the definition's disks switched to them.
func (d *Driver) externalOffline(ctx context.Context, dm *dom, plans []diskPlan) error {
	chains, err := createOverlays(ctx, plans, true)
	if err != nil {
		return err
	}
	if err := d.switchDefinition(dm, plans, chains); err != nil {
		for _, p := range plans {
			if p.mode == modeExternal {
				os.Remove(p.overlay)
			}
		}
		return err
	}
	return nil
}

// switchDefinition points the persistent definition's disks at their new
// overlays and stores it. A disk whose persistent source is not the image
// the overlay was made on (redefined while running) is left alone.
func (d *Driver) switchDefinition(dm *dom, plans []diskPlan, chains map[string][]domain.BackingLayer) error {
	dm.mu.Lock()
	def := dm.def.Clone()
	dm.mu.Unlock()
	cur := map[string]string{}
	for _, dk := range def.Disks() {
		cur[dk.Target] = dk.Source
	}
	for _, p := range plans {
		if p.mode != modeExternal || cur[p.target] != p.source {
			continue
		}
		if err := def.SetDiskSource(p.target, p.overlay, "qcow2", chains[p.target]); err != nil {
			return errorf(ErrIO, "snapshot %s: %w", dm.name, err)
		}
	}
	out := def.XML()
	if err := writeFileAtomic(d.defPath(dm.name), out, 0o600); err != nil {
		return errorf(ErrIO, "snapshot %s: store the definition: %w", dm.name, err)
	}
	dm.mu.Lock()
	dm.def, dm.defXML = def, out
	dm.mu.Unlock()
	return nil
}

// externalLive takes external disk snapshots of a running guest: each
// overlay is made, given to QEMU's user, opened by QEMU (blockdev-add) and
// put on top of its disk in one transaction, so that all disks switch at
// the same instant or none does.
func (d *Driver) externalLive(ctx context.Context, dm *dom, r *run, plans []diskPlan) (err error) {
	nodes, err := r.formatNodes(ctx)
	if err != nil {
		return errorf(ErrIO, "snapshot %s: %w", dm.name, err)
	}
	for _, p := range plans {
		if p.mode == modeExternal && nodes[p.source] == "" {
			return errorf(ErrIO, "snapshot %s: disk %s: QEMU has no block node for %s", dm.name, p.target, p.source)
		}
	}
	confined := d.sec != nil && r.sec != nil
	chains, err := createOverlays(ctx, plans, !confined)
	if err != nil {
		return err
	}
	var added []string
	var granted []string
	defer func() {
		if err == nil {
			return
		}
		for _, n := range added {
			r.mon.Execute(context.Background(), "blockdev-del", map[string]any{"node-name": n}, nil)
		}
		for _, f := range granted {
			if e := d.sec.RemoveDisk(context.Background(), r.sec, f); e != nil {
				d.appendLog(r.files.Log, "snapshot: %v", e)
			}
		}
		for _, p := range plans {
			if p.mode == modeExternal {
				os.Remove(p.overlay)
			}
		}
	}()
	stamp := time.Now().UnixMilli()
	var actions []map[string]any
	for _, p := range plans {
		if p.mode != modeExternal {
			continue
		}
		if confined {
			if err := d.sec.AddDisk(ctx, r.sec, security.Disk{Path: p.overlay}); err != nil {
				return errorf(ErrPerm, "snapshot %s: disk %s: overlay %s: %w", dm.name, p.target, p.overlay, err)
			}
			granted = append(granted, p.overlay)
		}
		node := fmt.Sprintf("qfs%x-%s", stamp%0xffffffff, p.target)
		if len(node) > 29 {
			node = node[:29]
		}
		args := map[string]any{
			"driver": "qcow2", "node-name": node + "-f", "backing": nil,
			"file": map[string]any{"driver": "file", "filename": p.overlay, "node-name": node + "-s"},
		}
		if err := r.mon.Execute(ctx, "blockdev-add", args, nil); err != nil {
			return errorf(ErrIO, "snapshot %s: disk %s: open overlay %s: %w", dm.name, p.target, p.overlay, err)
		}
		added = append(added, node+"-f")
		actions = append(actions, map[string]any{"type": "blockdev-snapshot", "data": map[string]any{"node": nodes[p.source], "overlay": node + "-f"}})
	}
	if err := r.mon.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil); err != nil {
		return errorf(ErrIO, "snapshot %s: blockdev-snapshot: %w", dm.name, err)
	}
	added = nil // the overlays are the disks' images now
	r.mu.Lock()
	for _, p := range plans {
		if p.mode == modeExternal {
			r.live.SetDiskSource(p.target, p.overlay, "qcow2", chains[p.target])
		}
	}
	r.mu.Unlock()
	r.refreshLive()
	if e := r.saveStatus(); e != nil {
		d.appendLog(r.files.Log, "snapshot: status file: %v", e)
	}
	if e := d.switchDefinition(dm, plans, chains); e != nil {
		// QEMU writes to the overlays already: the snapshot stands, and
		// config.xml says where it failed.
		return errorf(ErrIO, "snapshot %s: the guest uses the overlays now, but config.xml could not be updated: %w", dm.name, e)
	}
	return nil
}

func init() {
	registerCommand("snapshot [NAME]", func(ctx context.Context, d *Driver, dm *dom, args []string) error {
		switch len(args) {
		case 0:
			_, err := d.takeSnapshot(ctx, dm.name, &snapRequest{})
			return err
		case 1:
			if err := checkSnapshotName(args[0]); err != nil {
				return errorf(ErrInvalid, "snapshot %s: %w", dm.name, err)
			}
			_, err := d.takeSnapshot(ctx, dm.name, &snapRequest{Name: args[0]})
			return err
		}
		return errBadArgs
	})
}

// SnapshotControl runs a command written to snapshots/SNAP/ctl: revert
// [--paused|--running].
func (d *Driver) SnapshotControl(ctx context.Context, name, snap, line string) (err error) {
	dm, err := d.lookup(name)
	if err != nil {
		return err
	}
	defer func() { dm.noteResult(err) }()
	f := strings.Fields(line)
	usage := "revert [--paused|--running]"
	if len(f) == 0 {
		return errorf(ErrInvalid, "snapshot %s/%s: empty command; commands: %s", name, snap, usage)
	}
	if f[0] != "revert" {
		return errorf(ErrInvalid, "snapshot %s/%s: unknown command %q; commands: %s", name, snap, f[0], usage)
	}
	var want string
	for _, a := range f[1:] {
		switch {
		case a == "--paused" && want == "":
			want = snapPaused
		case a == "--running" && want == "":
			want = snapRunning
		default:
			return errorf(ErrInvalid, "snapshot %s/%s: bad arguments for revert: %q; usage: %s", name, snap, strings.Join(f[1:], " "), usage)
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapshotTimeout)
	defer cancel()
	dm.op.Lock()
	defer dm.op.Unlock()
	return d.revert(ctx, dm, snap, want)
}

// revert makes the domain what the snapshot recorded: its definition, its
// disks and, for a snapshot with memory, the running guest. want is
// "running", "paused" or "" (the snapshot's own state). The caller holds
// dm.op.
func (d *Driver) revert(ctx context.Context, dm *dom, snap, want string) error {
	name := dm.name
	s, err := d.snaps(dm)
	if err != nil {
		return err
	}
	s.mu.Lock()
	sn := s.byName[snap]
	s.mu.Unlock()
	if sn == nil {
		return errorf(ErrNotFound, "revert %s: no snapshot %q", name, snap)
	}
	live, err := domain.Parse(sn.Domain)
	if err != nil {
		return errorf(ErrIO, "revert %s: the definition in snapshot %s: %w", name, snap, err)
	}
	inactive := live.WithoutRuntime()
	if len(sn.Inactive) > 0 {
		if inactive, err = domain.Parse(sn.Inactive); err != nil {
			return errorf(ErrIO, "revert %s: the definition in snapshot %s: %w", name, snap, err)
		}
	}
	if want == "" && sn.hasMemory() {
		want = sn.State
	}
	if sn.external() {
		return d.revertExternal(ctx, dm, s, sn, live, inactive, want)
	}
	if err := s.checkNotBacking(sn, live); err != nil {
		return errorf(ErrBusy, "revert %s: %w", name, err)
	}
	dm.mu.Lock()
	r := dm.run
	dm.mu.Unlock()

	if sn.hasMemory() && r != nil && domain.SameGuest(r.def(), live) {
		// The guest runs the configuration the memory belongs to: load
		// the snapshot into it in place.
		if err := d.loadInternal(ctx, r, sn); err != nil {
			return err
		}
		if err := d.revertSnapshotNVRAM(name, snap, live); err != nil {
			return errorf(ErrIO, "revert %s: %w", name, err)
		}
		if err := d.restoreDefinition(dm, inactive); err != nil {
			return err
		}
		d.markCurrent(dm, s, snap)
		return d.settle(ctx, dm, r, want)
	}
	if r != nil {
		// libvirt's way for a snapshot without memory, or a guest whose
		// configuration changed: the running guest ends first.
		if err := d.destroy(ctx, dm, ReasonDestroyed); err != nil {
			return err
		}
	}
	if !sn.hasMemory() {
		for _, dk := range live.Disks() {
			if snapMode(sn, dk.Target) != modeInternal {
				continue
			}
			if err := qemuImg(ctx, "snapshot", "-a", sn.Name, dk.Source); err != nil {
				return errorf(ErrIO, "revert %s: disk %s: %w", name, dk.Target, err)
			}
		}
	}
	if err := d.revertSnapshotNVRAM(name, snap, inactive); err != nil {
		return errorf(ErrIO, "revert %s: %w", name, err)
	}
	if err := d.restoreDefinition(dm, inactive); err != nil {
		return err
	}
	d.markCurrent(dm, s, snap)
	if want == "" {
		dm.setState(StateShutoff, ReasonFromSnapshot)
		return nil
	}
	// Start paused; a memory snapshot is loaded before the CPUs run, into
	// the configuration it was taken of: config.xml of then when that is
	// what ran (it keeps what a run leaves out, static labels say), else
	// what ran, without the run's detail.
	start := inactive
	if sn.hasMemory() && !domain.SameGuest(inactive, live) {
		start = live.WithoutRuntime()
	}
	if err := d.start(ctx, dm, start, StartOptions{Paused: true}); err != nil {
		dm.setState(StateShutoff, ReasonFailed)
		return err
	}
	dm.mu.Lock()
	r = dm.run
	dm.mu.Unlock()
	if sn.hasMemory() {
		if err := d.loadInternal(ctx, r, sn); err != nil {
			d.destroy(ctx, dm, ReasonFailed)
			return err
		}
	}
	return d.settle(ctx, dm, r, want)
}

// revertExternal reverts to an external disk-only snapshot: what was
// written since it was taken is in its overlays, so each overlay is made
// anew, empty, over the image the snapshot was taken of, and the
// definition points at it again. A snapshot with children is refused:
// their state lives in those overlays (internal snapshots in them, or
// overlays on top of them). A running guest is destroyed first, as for
// any snapshot without memory.
func (d *Driver) revertExternal(ctx context.Context, dm *dom, s *snapSet, sn *snapshot, live, inactive *domain.Domain, want string) error {
	name := dm.name
	s.mu.Lock()
	kids := s.children(sn.Name)
	s.mu.Unlock()
	if len(kids) > 0 {
		return errorf(ErrBusy, "revert %s: %s is an external snapshot and snapshots %s were taken on its overlays since; reverting would discard them: delete them first", name, sn.Name, strings.Join(kids, ", "))
	}
	sources := map[string]string{}
	for _, dk := range live.Disks() {
		sources[dk.Target] = dk.Source
	}
	var plans []diskPlan
	for _, sd := range sn.Disks {
		if sd.Snapshot != modeExternal {
			continue
		}
		if sources[sd.Name] == "" || sd.Source == "" {
			return errorf(ErrIO, "revert %s: snapshot %s: disk %s has no recorded image or overlay", name, sn.Name, sd.Name)
		}
		plans = append(plans, diskPlan{target: sd.Name, mode: modeExternal, source: sources[sd.Name], overlay: sd.Source})
	}
	dm.mu.Lock()
	r := dm.run
	dm.mu.Unlock()
	if r != nil {
		if err := d.destroy(ctx, dm, ReasonDestroyed); err != nil {
			return err
		}
	}
	// New overlays under temporary names, renamed over the old ones only
	// when all were made: a failure leaves the disks as they were.
	tmp := make([]diskPlan, len(plans))
	for i, p := range plans {
		tmp[i] = p
		tmp[i].overlay = filepath.Join(filepath.Dir(p.overlay), ".qemufs-revert-"+filepath.Base(p.overlay))
		os.Remove(tmp[i].overlay)
	}
	chains, err := createOverlays(ctx, tmp, true)
	if err != nil {
		return err
	}
	def := inactive.Clone()
	for _, p := range plans {
		if err := def.SetDiskSource(p.target, p.overlay, "qcow2", chains[p.target]); err != nil {
			for _, t := range tmp {
				os.Remove(t.overlay)
			}
			return errorf(ErrIO, "revert %s: %w", name, err)
		}
	}
	for i, p := range plans {
		if err := os.Rename(tmp[i].overlay, p.overlay); err != nil {
			return errorf(ErrIO, "revert %s: disk %s: %w", name, p.target, err)
		}
	}
	if err := d.revertSnapshotNVRAM(name, sn.Name, def); err != nil {
		return errorf(ErrIO, "revert %s: %w", name, err)
	}
	if err := d.restoreDefinition(dm, def); err != nil {
		return err
	}
	d.markCurrent(dm, s, sn.Name)
	if want == "" {
		dm.setState(StateShutoff, ReasonFromSnapshot)
		return nil
	}
	dm.mu.Lock()
	start := dm.def
	dm.mu.Unlock()
	if err := d.start(ctx, dm, start, StartOptions{Paused: true}); err != nil {
		dm.setState(StateShutoff, ReasonFailed)
		return err
	}
	dm.mu.Lock()
	r = dm.run
	dm.mu.Unlock()
	return d.settle(ctx, dm, r, want)
}

// checkNotBacking refuses to revert to an internal snapshot whose image
// has since become the backing file of an external snapshot's overlay:
// writing to it would corrupt what the overlay holds.
func (s *snapSet) checkNotBacking(sn *snapshot, live *domain.Domain) error {
	images := map[string]string{}
	for _, dk := range live.Disks() {
		if snapMode(sn, dk.Target) == modeInternal {
			images[dk.Source] = dk.Target
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for n := range s.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		e := s.byName[n]
		if !e.external() {
			continue
		}
		def, err := domain.Parse(e.Domain)
		if err != nil {
			continue
		}
		for _, dk := range def.Disks() {
			if t, ok := images[dk.Source]; ok && snapMode(e, dk.Target) == modeExternal {
				return fmt.Errorf("disk %s's image %s is the backing file of the overlay of external snapshot %s; reverting would corrupt that overlay: delete %s first", t, dk.Source, n, n)
			}
		}
	}
	return nil
}

// snapMode is how the snapshot took the disk with target dev.
func snapMode(sn *snapshot, target string) string {
	for _, dk := range sn.Disks {
		if dk.Name == target {
			return dk.Snapshot
		}
	}
	return modeNo
}

// markCurrent makes snap the current snapshot.
func (d *Driver) markCurrent(dm *dom, s *snapSet, snap string) {
	s.mu.Lock()
	s.current = snap
	s.mu.Unlock()
	if err := d.saveCurrent(dm, snap); err != nil {
		d.logf("snapshot %s: record current %s: %v", dm.name, snap, err)
	}
}

// loadInternal loads an internal snapshot with memory into the running
// QEMU (snapshot-load). A failed load leaves the CPUs stopped.
func (d *Driver) loadInternal(ctx context.Context, r *run, sn *snapshot) error {
	nodes, err := r.formatNodes(ctx)
	if err != nil {
		return errorf(ErrIO, "revert %s: %w", r.dm.name, err)
	}
	live, err := domain.Parse(sn.Domain)
	if err != nil {
		return errorf(ErrIO, "revert %s: %w", r.dm.name, err)
	}
	var devices []string
	for _, dk := range live.Disks() {
		if snapMode(sn, dk.Target) != modeInternal {
			continue
		}
		n := nodes[dk.Source]
		if n == "" {
			return errorf(ErrIO, "revert %s: disk %s: QEMU has no block node for %s", r.dm.name, dk.Target, dk.Source)
		}
		devices = append(devices, n)
	}
	if len(devices) == 0 {
		return errorf(ErrIO, "revert %s: snapshot %s records no internal disk snapshot", r.dm.name, sn.Name)
	}
	r.mu.Lock()
	r.pauseReason = ReasonFromSnapshot
	r.mu.Unlock()
	err = r.snapshotJob(ctx, "snapshot-load", map[string]any{"tag": sn.Name, "vmstate": devices[0], "devices": devices})
	r.mu.Lock()
	r.pauseReason = ""
	r.mu.Unlock()
	if err != nil {
		return errorf(ErrIO, "revert %s: snapshot-load %s: %w", r.dm.name, sn.Name, err)
	}
	d.appendLog(r.files.Log, "reverted to snapshot %s", sn.Name)
	return nil
}

// settle brings a reverted guest to the wanted state and records it with
// the reason "from snapshot".
func (d *Driver) settle(ctx context.Context, dm *dom, r *run, want string) error {
	st, err := r.qmp.QueryStatus()
	if err != nil {
		return errorf(ErrIO, "revert %s: query-status: %w", dm.name, err)
	}
	err = r.runStateChange(func() error {
		switch {
		case want == snapRunning && !st.Running:
			if err := r.qmp.Cont(); err != nil {
				return errorf(ErrIO, "revert %s: cont: %w", dm.name, err)
			}
		case want != snapRunning && st.Running:
			r.mu.Lock()
			r.pauseReason = ReasonFromSnapshot
			r.mu.Unlock()
			if err := r.qmp.Stop(); err != nil {
				return errorf(ErrIO, "revert %s: stop: %w", dm.name, err)
			}
		}
		if want == snapRunning {
			dm.setState(StateRunning, ReasonFromSnapshot)
		} else {
			dm.setState(StatePaused, ReasonFromSnapshot)
		}
		return nil
	})
	if err != nil {
		return err
	}
	r.saveStatus()
	return nil
}

// restoreDefinition makes def the persistent definition again (validated
// and expanded as a write of config.xml is).
func (d *Driver) restoreDefinition(dm *dom, def *domain.Domain) error {
	def = def.Clone()
	def.ClearRuntime()
	if err := domain.Expand(def, d.caps); err != nil {
		return errorf(ErrInvalid, "revert %s: the snapshot's definition: %w", dm.name, err)
	}
	out := def.XML()
	dm.mu.Lock()
	same := string(out) == string(dm.defXML)
	dm.mu.Unlock()
	if same {
		return nil
	}
	if err := writeFileAtomic(d.defPath(dm.name), out, 0o600); err != nil {
		return errorf(ErrIO, "revert %s: store the definition: %w", dm.name, err)
	}
	dm.mu.Lock()
	dm.def, dm.defXML = def, out
	dm.mu.Unlock()
	dm.publish(EventDefined, "from snapshot")
	return nil
}

// SnapshotDelete deletes a snapshot (rmdir snapshots/SNAP): its internal
// disk snapshots (snapshot-delete while running, qemu-img otherwise) and
// its metadata. Its children become its parent's, as in libvirt. An
// external snapshot with children is refused (EBUSY): their images are
// built on its overlays.
func (d *Driver) SnapshotDelete(ctx context.Context, name, snap string) (err error) {
	dm, err := d.lookup(name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapshotTimeout)
	defer cancel()
	dm.op.Lock()
	defer dm.op.Unlock()
	defer func() { dm.noteResult(err) }()
	s, err := d.snaps(dm)
	if err != nil {
		return err
	}
	s.mu.Lock()
	sn := s.byName[snap]
	kids := s.children(snap)
	s.mu.Unlock()
	if sn == nil {
		return errorf(ErrNotFound, "delete snapshot %s: no snapshot %q", name, snap)
	}
	if sn.external() && len(kids) > 0 {
		return errorf(ErrBusy, "delete snapshot %s: %s is an external snapshot and snapshots %s were taken on top of its overlays; delete them first", name, snap, strings.Join(kids, ", "))
	}
	if !sn.external() {
		if err := d.deleteInternal(ctx, dm, sn); err != nil {
			return err
		}
	}
	// An external snapshot's overlays are the disks' images now: only its
	// metadata goes (libvirt's --metadata).
	s.mu.Lock()
	var changed []*snapshot
	for _, k := range kids {
		c := *s.byName[k]
		c.Parent = sn.Parent
		changed = append(changed, &c)
	}
	s.mu.Unlock()
	for _, c := range changed {
		if err := d.saveSnapshot(dm, c); err != nil {
			return errorf(ErrIO, "delete snapshot %s: re-parent %s: %w", name, c.Name, err)
		}
	}
	if err := os.Remove(filepath.Join(d.snapDir(name), snap+".xml")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return errorf(ErrIO, "delete snapshot %s: %w", name, err)
	}
	d.removeSnapshotNVRAM(name, snap)
	s.mu.Lock()
	for _, c := range changed {
		s.byName[c.Name] = c
	}
	delete(s.byName, snap)
	wasCurrent := s.current == snap
	empty := len(s.byName) == 0
	s.mu.Unlock()
	if wasCurrent {
		d.markCurrent(dm, s, sn.Parent)
	}
	if empty {
		os.Remove(filepath.Join(d.snapDir(name), "current"))
		os.Remove(d.snapDir(name))
	}
	syncDir(filepath.Dir(d.snapDir(name)))
	return nil
}

// deleteInternal removes the snapshot's internal snapshots from its disk
// images. An image that no longer holds it is no error: the metadata must
// stay removable.
func (d *Driver) deleteInternal(ctx context.Context, dm *dom, sn *snapshot) error {
	live, err := domain.Parse(sn.Domain)
	if err != nil {
		return errorf(ErrIO, "delete snapshot %s: the definition in snapshot %s: %w", dm.name, sn.Name, err)
	}
	var files []string
	for _, dk := range live.Disks() {
		if snapMode(sn, dk.Target) == modeInternal {
			files = append(files, dk.Source)
		}
	}
	if len(files) == 0 {
		return nil
	}
	dm.mu.Lock()
	r := dm.run
	dm.mu.Unlock()
	if r != nil {
		nodes, err := r.formatNodes(ctx)
		if err != nil {
			return errorf(ErrIO, "delete snapshot %s: %w", dm.name, err)
		}
		var devices []string
		var offline []string
		for _, f := range files {
			if n := nodes[f]; n != "" {
				devices = append(devices, n)
			} else {
				offline = append(offline, f) // not in use by the guest
			}
		}
		if len(devices) > 0 {
			err := r.snapshotJob(ctx, "snapshot-delete", map[string]any{"tag": sn.Name, "devices": devices})
			if err != nil && !snapshotMissing(err) {
				return errorf(ErrIO, "delete snapshot %s: snapshot-delete %s: %w", dm.name, sn.Name, err)
			}
		}
		files = offline
	}
	for _, f := range files {
		if err := qemuImg(ctx, "snapshot", "-d", sn.Name, f); err != nil && !snapshotMissing(err) {
			return errorf(ErrIO, "delete snapshot %s: %w", dm.name, err)
		}
	}
	return nil
}

// snapshotMissing tells QEMU's "no such snapshot" from real failures.
func snapshotMissing(err error) bool {
	m := err.Error()
	return strings.Contains(m, "not found") || strings.Contains(m, "does not exist") || strings.Contains(m, "No such file")
}

// snapshotCount is how many snapshots a domain has; undefine refuses a
// domain that has any, as libvirt does.
func (d *Driver) snapshotCount(dm *dom) int {
	s, err := d.snaps(dm)
	if err != nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byName)
}
