package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/qemufs/qemufs/internal/fault"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/monitor"
	"github.com/qemufs/qemufs/security"
	"golang.org/x/sys/unix"
)

// DefaultDetachTimeout bounds how long a detach waits for the guest to
// release a device (QEMU's DEVICE_DELETED event).
const DefaultDetachTimeout = 10 * time.Second

// Device events, published on the domain's events stream with the
// device's alias as detail.
const (
	EventDeviceAdded   = "device-added"
	EventDeviceRemoved = "device-removed"
	EventDeviceUpdated = "device-updated"
)

// DeviceOptions say which definitions an attach, detach or update
// changes, as virsh's --live and --config: neither means the live guest
// and the persistent definition when the domain runs (attach-device
// --persistent), the persistent definition alone when it is shut off.
type DeviceOptions struct {
	Live, Config bool
	// Persistent is both when the domain runs, config.xml when it does
	// not (virsh's --persistent).
	Persistent bool
	// Timeout bounds a detach's wait for the guest (0: DefaultDetachTimeout).
	Timeout time.Duration
}

// ParseDeviceRequest splits what was written to attach, detach or update:
// optional flag lines (--live, --config, --persistent, --timeout=N)
// before the device XML.
func ParseDeviceRequest(data []byte) (DeviceOptions, []byte, error) {
	var o DeviceOptions
	s := string(data)
	for {
		s = strings.TrimLeft(s, " \t\r\n")
		if !strings.HasPrefix(s, "--") {
			break
		}
		word, rest, _ := strings.Cut(s, "\n")
		for _, f := range strings.Fields(word) {
			switch {
			case f == "--live":
				o.Live = true
			case f == "--config":
				o.Config = true
			case f == "--persistent":
				o.Persistent = true
			case strings.HasPrefix(f, "--timeout="):
				n, err := strconv.ParseFloat(strings.TrimPrefix(f, "--timeout="), 64)
				if err != nil || n <= 0 || n > 3600 {
					return o, nil, errorf(ErrInvalid, "bad flag %q: want --timeout=SECONDS (0 < SECONDS <= 3600)", f)
				}
				o.Timeout = time.Duration(n * float64(time.Second))
			default:
				return o, nil, errorf(ErrInvalid, "unknown flag %q (flags: --live, --config, --persistent, --timeout=N)", f)
			}
		}
		s = rest
	}
	return o, []byte(s), nil
}

// DeviceRequest runs what was written to a domain's attach, detach or
// update file (op): flag lines, then one device XML.
func (d *Driver) DeviceRequest(ctx context.Context, name, op string, data []byte) (err error) {
	dm, err := d.lookup(name)
	if err != nil {
		return err
	}
	defer func() { dm.noteResult(err) }()
	o, xml, err := ParseDeviceRequest(data)
	if err != nil {
		return errorf(ErrInvalid, "%s %s: %w", op, name, err)
	}
	switch op {
	case "attach":
		return d.attach(ctx, dm, xml, o)
	case "detach":
		return d.detach(ctx, dm, xml, o)
	case "update":
		return d.update(ctx, dm, xml, o)
	}
	return errorf(ErrInvalid, "%s: unknown device operation %q", name, op)
}

// AttachDevice adds a device (see DeviceRequest).
func (d *Driver) AttachDevice(ctx context.Context, name string, xml []byte, o DeviceOptions) error {
	return d.withDom(name, func(dm *dom) error { return d.attach(ctx, dm, xml, o) })
}

// DetachDevice removes a device (see DeviceRequest).
func (d *Driver) DetachDevice(ctx context.Context, name string, xml []byte, o DeviceOptions) error {
	return d.withDom(name, func(dm *dom) error { return d.detach(ctx, dm, xml, o) })
}

// UpdateDevice changes a device's media or link state (see DeviceRequest).
func (d *Driver) UpdateDevice(ctx context.Context, name string, xml []byte, o DeviceOptions) error {
	return d.withDom(name, func(dm *dom) error { return d.update(ctx, dm, xml, o) })
}

func (d *Driver) withDom(name string, fn func(dm *dom) error) (err error) {
	dm, err := d.lookup(name)
	if err != nil {
		return err
	}
	defer func() { dm.noteResult(err) }()
	return fn(dm)
}

// targets resolves the flags against the domain's state: which
// definitions change. The caller holds dm.op.
func (dm *dom) targets(op string, o DeviceOptions) (def *domain.Domain, r *run, live, config bool, err error) {
	dm.mu.Lock()
	def, r = dm.def, dm.run
	dm.mu.Unlock()
	if def == nil {
		return nil, nil, false, false, errorf(ErrInvalid, "%s %s: the domain is not defined", op, dm.name)
	}
	live, config = o.Live, o.Config
	if !live && !config || o.Persistent {
		live, config = live || r != nil, true
	}
	if live && r == nil {
		return nil, nil, false, false, errorf(ErrBusy, "%s %s: the domain is not running (use --config to change its definition only)", op, dm.name)
	}
	return def, r, live, config, nil
}

// hotplugState is what a run's hot-plugs need to remember: the block
// nodes of each disk (to delete them at unplug) and the highest node
// number in use. It lives in the run's private directory, so it goes
// with the run and survives a daemon restart.
type hotplugState struct {
	Nodes map[string][]string `json:"nodes"`
	High  int                 `json:"high"`
}

func (r *run) hotplugPath() string { return filepath.Join(r.files.DomDir, "hotplug.json") }

// hotplugState loads the run's state; before the first hot-plug it is
// what the command line gave the disks the guest started with.
func (d *Driver) hotplugState(r *run) (*hotplugState, error) {
	st := &hotplugState{}
	if f, err := os.OpenFile(r.hotplugPath(), os.O_RDONLY|unix.O_NOFOLLOW, 0); err == nil {
		err = json.NewDecoder(f).Decode(st)
		f.Close()
		if err == nil && st.Nodes != nil {
			return st, nil
		}
	}
	nodes, high, err := domain.BlockNodes(r.def(), d.liveCommandOptions(r))
	if err != nil {
		return nil, err
	}
	return &hotplugState{Nodes: nodes, High: high}, nil
}

// saveHotplugState writes the state through a fresh temporary file
// (O_EXCL, so a link QEMU's user left in its directory is never
// followed) renamed over the old one; like the status file it skips
// fsync, as the run directory does not outlive a reboot.
func (r *run) saveHotplugState(st *hotplugState) error {
	b, _ := json.Marshal(st)
	f, err := os.CreateTemp(r.files.DomDir, ".hotplug-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), r.hotplugPath())
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("hotplug state: %w", err)
	}
	return nil
}

// liveCommandOptions are the command options of r's QEMU, for building
// its devices as at start.
func (d *Driver) liveCommandOptions(r *run) domain.CommandOptions {
	live := r.def()
	emu, _, err := d.caps.Lookup(live.Arch(), live.Type(), live.Machine(), live.Emulator())
	if err != nil {
		emu = nil
	}
	o := commandOptions(d, r, emu, 0)
	// The interfaces qemufs connected at start build as they did (their
	// fds are long consumed; only the shape of the command line matters).
	o.NetAttach = d.previewNetAttach(live, 4)
	return o
}

// qmpTimer runs a hot-plug's QMP commands and adds up their round trips,
// so the log (and the bench) can tell qemufs's own time from QEMU's.
type qmpTimer struct {
	r     *run
	n     int
	spent time.Duration
}

func (q *qmpTimer) exec(ctx context.Context, cmd string, args any, result any) error {
	t0 := time.Now()
	err := q.r.mon.Execute(ctx, cmd, args, result)
	q.spent += time.Since(t0)
	q.n++
	return err
}

// qmpContext bounds a hot-plug's QMP commands; it outlives the caller's
// interrupt so that a half-done hot-plug is always finished or undone.
func qmpContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
}

// qemuErr is the kind of a failed QMP command: QEMU refusing it (bad
// device arguments, a bus that does not hot-plug) is the request's fault
// as far as the user can tell, but it happened in QEMU: EIO.
func qemuErr(op, name string, err error) error {
	var qe *monitor.Error
	if errors.As(err, &qe) {
		hint := ""
		if strings.Contains(qe.Desc, "does not support hotplugging") {
			hint = " (PCI hot-plug needs ACPI, <features><acpi/></features>, on an i440fx machine, and a free pcie-root-port on q35)"
		}
		return errorf(ErrIO, "%s %s: QEMU refused it: %s%s", op, name, qe.Desc, hint)
	}
	return errorf(ErrIO, "%s %s: %w", op, name, err)
}

// diskFiles are the local files of a disk, top image first, for the
// security stack.
func diskFiles(v domain.Device) []security.Disk {
	dk, ok := v.Disk()
	if !ok || dk.Type != "file" && dk.Type != "block" || dk.Source == "" {
		return nil
	}
	out := []security.Disk{{Path: dk.Source, ReadOnly: dk.ReadOnly || dk.Device == "cdrom", Shareable: dk.Shareable, NoRelabel: dk.NoRelabel}}
	for _, b := range dk.BackingStore {
		out = append(out, security.Disk{Path: b, ReadOnly: true})
	}
	return out
}

// deviceFiles are the host files QEMU opens for a device, for the
// security stack: a disk's images, a character device's output and log
// files (made first, as a start makes them). Sockets QEMU creates in the
// guest's own directory need nothing.
func deviceFiles(v domain.Device, create bool) ([]security.Disk, error) {
	if out := diskFiles(v); out != nil {
		return out, nil
	}
	c, ok := v.Chardev()
	if !ok {
		return nil, nil
	}
	var out []security.Disk
	for _, p := range []string{c.Path, c.LogFile} {
		if p == "" || p == c.Path && c.Type != "file" {
			continue
		}
		if create {
			if err := touch(p); err != nil {
				return nil, fmt.Errorf("%s output %s: %w", v.Describe(), p, err)
			}
		}
		out = append(out, security.Disk{Path: p})
	}
	return out, nil
}

// checkSources refuses a disk whose files do not exist, before anything
// changes.
func checkSources(op, name string, v domain.Device) error {
	for _, f := range diskFiles(v) {
		if _, err := os.Stat(f.Path); err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return errorf(ErrInvalid, "%s %s: %s: source %s: %v", op, name, v.Describe(), f.Path, err)
		}
	}
	return nil
}

// confine gives a hot-plugged disk's files to QEMU as a start does
// (ownership, labels, cgroup device ACL, AppArmor rules, the node in
// QEMU's private /dev). It returns the undo. The Record is saved with the
// status, so a restarted daemon restores the files too.
func (d *Driver) confine(ctx context.Context, r *run, files []security.Disk) (func(), error) {
	if d.sec == nil || r.sec == nil || len(files) == 0 {
		return func() {}, nil
	}
	var done []string
	var nodes []string
	undo := func() {
		for i := len(nodes) - 1; i >= 0; i-- {
			os.Remove(nsPath(r, nodes[i]))
		}
		for i := len(done) - 1; i >= 0; i-- {
			if err := d.sec.RemoveDisk(context.WithoutCancel(ctx), r.sec, done[i]); err != nil {
				d.appendLog(r.files.Log, "hot-plug: %v", err)
			}
		}
		r.saveStatus()
	}
	for _, f := range files {
		if err := d.sec.AddDisk(ctx, r.sec, f); err != nil {
			undo()
			return nil, err
		}
		done = append(done, f.Path)
		if p, ok, err := d.nsNode(r, f.Path); err != nil {
			undo()
			return nil, err
		} else if ok {
			nodes = append(nodes, p)
		}
	}
	if err := r.saveStatus(); err != nil {
		undo()
		return nil, err
	}
	return undo, nil
}

// release gives a detached disk's files back (the reverse of confine).
func (d *Driver) release(ctx context.Context, r *run, files []security.Disk) {
	if d.sec == nil || r.sec == nil {
		return
	}
	for i := len(files) - 1; i >= 0; i-- {
		if err := d.sec.RemoveDisk(context.WithoutCancel(ctx), r.sec, files[i].Path); err != nil {
			d.appendLog(r.files.Log, "hot-unplug: %v", err)
		}
		if real, err := filepath.EvalSymlinks(files[i].Path); err == nil && strings.HasPrefix(real, "/dev/") && r.sec.Devices != nil {
			os.Remove(nsPath(r, real))
		}
	}
	r.saveStatus()
}

// nsPath is path inside QEMU's mount namespace, seen from the host.
func nsPath(r *run, path string) string {
	return "/proc/" + strconv.Itoa(r.proc.Pid) + "/root" + path
}

// nsNode creates a hot-plugged block device's node in QEMU's private
// /dev, as the namespace setup did for the disks of the start.
func (d *Driver) nsNode(r *run, path string) (string, bool, error) {
	if r.sec.Devices == nil {
		return "", false, nil // QEMU sees the host's /dev
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil || !strings.HasPrefix(real, "/dev/") {
		return "", false, nil
	}
	var st unix.Stat_t
	if err := unix.Stat(real, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", false, nil
	}
	p := nsPath(r, real)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", false, fmt.Errorf("device node %s in QEMU's /dev: %w", real, err)
	}
	os.Remove(p)
	if err := unix.Mknod(p, st.Mode, int(st.Rdev)); err != nil {
		return "", false, fmt.Errorf("device node %s in QEMU's /dev: %w", real, err)
	}
	unix.Chmod(p, st.Mode&0o7777)
	unix.Chown(p, int(st.Uid), int(st.Gid))
	return real, true, nil
}

// attach adds a device: checked and expanded first, then hot-plugged
// (confined as at start), then recorded in live and persistent
// definitions. Any failure leaves the guest and both definitions as they
// were.
func (d *Driver) attach(ctx context.Context, dm *dom, xml []byte, o DeviceOptions) error {
	t0 := time.Now()
	dm.op.Lock()
	defer dm.op.Unlock()
	name := dm.name
	def, r, live, config, err := dm.targets("attach", o)
	if err != nil {
		return err
	}
	var newLive, newCfg *domain.Domain
	var dev domain.Device
	var implicit []domain.Device
	if live {
		newLive, dev, implicit, err = r.def().AddDevice(xml, d.caps)
		if err != nil {
			return errorf(ErrInvalid, "attach %s: %w", name, err)
		}
		if err := dev.Hotpluggable(); err != nil {
			return errorf(ErrInvalid, "attach %s: %w", name, err)
		}
		for _, v := range implicit {
			if err := v.Hotpluggable(); err != nil {
				return errorf(ErrInvalid, "attach %s: %s needs a new %s, which cannot be hot-plugged (%v); add it to config.xml and restart the guest, or attach with --config", name, dev.Describe(), v.Describe(), err)
			}
		}
	}
	if config {
		src := xml
		if live {
			src = dev.XML() // the same address and alias: a stable ABI
		}
		var cdev domain.Device
		newCfg, cdev, _, err = def.AddDevice(src, d.caps)
		if err != nil && live {
			newCfg, cdev, _, err = def.AddDevice(xml, d.caps)
		}
		if err != nil {
			return errorf(ErrInvalid, "attach %s: config.xml: %w", name, err)
		}
		if !live {
			dev = cdev
		}
	}
	if err := checkSources("attach", name, dev); err != nil {
		return err
	}
	var undo func()
	var q *qmpTimer
	if live {
		if undo, q, err = d.hotplug(ctx, r, newLive, append(implicit, dev)); err != nil {
			return err
		}
		fault.PointPid("attach.plugged", r.proc.Pid)
	}
	if config {
		if err := d.commitConfig(dm, newCfg); err != nil {
			if undo != nil {
				undo()
			}
			return errorf(ErrIO, "attach %s: %w", name, err)
		}
	}
	if live {
		fault.Point("attach.configured")
		r.setLive(newLive)
		dm.publish(EventDeviceAdded, dev.Alias())
		total := time.Since(t0)
		d.appendLog(r.files.Log, "attached %s: %s (QMP: %d commands, %s; qemufs: %s)", dev.Describe(), ms(total), q.n, ms(q.spent), ms(total-q.spent))
	}
	return nil
}

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) + " ms" }

// commitConfig makes def the persistent definition.
func (d *Driver) commitConfig(dm *dom, def *domain.Domain) error {
	out := def.XML()
	if err := writeFileAtomic(d.defPath(dm.name), out, 0o600); err != nil {
		return err
	}
	dm.mu.Lock()
	dm.def, dm.defXML = def, out
	dm.mu.Unlock()
	dm.publish(EventDefined, "updated")
	return nil
}

// setLive makes def the run's live definition and saves the status.
func (r *run) setLive(def *domain.Domain) {
	r.mu.Lock()
	r.live = def
	r.mu.Unlock()
	r.refreshLive()
	r.saveStatus()
}

// hotplug adds devs (controllers a device needs first, the device last)
// to the running QEMU of r, whose live definition will be live. On
// failure everything it added is removed again. It returns the undo for
// a later failure of the caller.
func (d *Driver) hotplug(ctx context.Context, r *run, live *domain.Domain, devs []domain.Device) (func(), *qmpTimer, error) {
	name := r.dm.name
	qctx, cancel := qmpContext(ctx)
	defer cancel()
	st, err := d.hotplugState(r)
	if err != nil {
		return nil, nil, errorf(ErrIO, "attach %s: %w", name, err)
	}
	q := &qmpTimer{r: r}
	var undos []func()
	undoAll := func() {
		for i := len(undos) - 1; i >= 0; i-- {
			undos[i]()
		}
	}
	fail := func(err error) (func(), *qmpTimer, error) {
		undoAll()
		return nil, nil, err
	}
	opts := d.liveCommandOptions(r)
	for _, v := range devs {
		if ifc, ok := v.Interface(); ok {
			undo, err := d.hotplugHostSide(qctx, r, live, ifc, &opts)
			if err != nil {
				return fail(errorf(Kind(err), "attach %s: %w", name, err))
			}
			undos = append(undos, undo)
		}
		steps, nodes, high, err := live.HotplugSteps(v, domain.HotplugOptions{Command: opts, NodeBase: st.High})
		if err != nil {
			return fail(errorf(ErrInvalid, "attach %s: %w", name, err))
		}
		if err := checkCallerDevice(ctx, "attach", name, v); err != nil {
			return fail(err)
		}
		files, err := deviceFiles(v, true)
		if err != nil {
			return fail(errorf(ErrInvalid, "attach %s: %w", name, err))
		}
		relUndo, err := d.confine(ctx, r, files)
		if err != nil {
			return fail(errorf(ErrInvalid, "attach %s: %w", name, err))
		}
		undos = append(undos, relUndo)
		for _, s := range steps {
			if err := q.exec(qctx, s.Command, s.Args, nil); err != nil {
				return fail(qemuErr("attach", name, fmt.Errorf("%s: %w", v.Describe(), err)))
			}
			s := s
			undos = append(undos, func() {
				uctx, cancel := qmpContext(ctx)
				defer cancel()
				if err := r.mon.Execute(uctx, s.Undo, s.UndoArgs, nil); err != nil {
					d.appendLog(r.files.Log, "attach rollback: %s: %v", s.Undo, err)
				}
			})
		}
		if dk, ok := v.Disk(); ok && dk.Alias != "" && len(nodes) > 0 {
			st.Nodes[dk.Alias] = nodes
		}
		if high > st.High {
			st.High = high
		}
		if n, ok := v.Interface(); ok && n.LinkState == "down" {
			if err := q.exec(qctx, "set_link", map[string]any{"name": v.Alias(), "up": false}, nil); err != nil {
				return fail(qemuErr("attach", name, err))
			}
		}
	}
	if err := r.saveHotplugState(st); err != nil {
		return fail(errorf(ErrIO, "attach %s: %w", name, err))
	}
	return undoAll, q, nil
}

// applyLinkStates sets the link of every interface whose definition says
// <link state='down'/> once QEMU is up (the command line has no way to),
// so a link set down with update stays down across a restart.
func (d *Driver) applyLinkStates(ctx context.Context, r *run) error {
	for _, n := range r.def().Interfaces() {
		if n.LinkState != "down" || n.Alias == "" {
			continue
		}
		qctx, cancel := qmpContext(ctx)
		err := r.mon.Execute(qctx, "set_link", map[string]any{"name": n.Alias, "up": false}, nil)
		cancel()
		if err != nil {
			return qemuErr("start", r.dm.name, fmt.Errorf("link of %s: %w", n.Alias, err))
		}
	}
	return nil
}

// detach removes a device: the guest is asked to release it (device_del)
// and, once it has (DEVICE_DELETED), its backends are deleted, its files
// given back and it leaves the live and persistent definitions. A guest
// that does not release it in time gets EBUSY; the device stays in
// live.xml until it does.
func (d *Driver) detach(ctx context.Context, dm *dom, spec []byte, o DeviceOptions) error {
	dm.op.Lock()
	defer dm.op.Unlock()
	name := dm.name
	def, r, live, config, err := dm.targets("detach", o)
	if err != nil {
		return err
	}
	var dev domain.Device
	var newCfg *domain.Domain
	if live {
		if dev, err = r.def().FindDevice(spec); err != nil {
			return deviceErr("detach", name, err)
		}
		if err := dev.Hotpluggable(); err != nil {
			return errorf(ErrInvalid, "detach %s: %s cannot be hot-unplugged: %v", name, dev.Describe(), err)
		}
	}
	if config {
		cspec := spec
		if live && dev.Alias() != "" {
			cspec = []byte(fmt.Sprintf("<alias name='%s'/>", dev.Alias()))
		}
		var cerr error
		newCfg, _, cerr = def.RemoveDevice(cspec)
		if cerr != nil && live && errors.Is(cerr, domain.ErrNoSuchDevice) && !o.Config {
			newCfg = nil // attached --live only: nothing to remove from config.xml
		} else if cerr != nil {
			return deviceErr("detach", name, fmt.Errorf("config.xml: %w", cerr))
		}
	}
	if live {
		timeout := o.Timeout
		if timeout == 0 {
			timeout = DefaultDetachTimeout
		}
		if err := d.unplug(ctx, r, dev, timeout, newCfg != nil); err != nil {
			return err
		}
	}
	if newCfg != nil {
		if err := d.commitConfig(dm, newCfg); err != nil {
			return errorf(ErrIO, "detach %s: %w", name, err)
		}
	}
	return nil
}

func deviceErr(op, name string, err error) error {
	if errors.Is(err, domain.ErrNoSuchDevice) {
		return errorf(ErrNoDevice, "%s %s: %w", op, name, err)
	}
	return errorf(ErrInvalid, "%s %s: %w", op, name, err)
}

// unplug asks QEMU to remove dev and waits for the guest to let it go.
// When it gives up waiting, a late release is still finished, and then
// also removes the device from config.xml when withConfig. The caller
// holds dm.op.
func (d *Driver) unplug(ctx context.Context, r *run, dev domain.Device, timeout time.Duration, withConfig bool) error {
	name, id := r.dm.name, dev.Alias()
	if id == "" {
		return errorf(ErrInvalid, "detach %s: %s has no alias, so QEMU cannot name it", name, dev.Describe())
	}
	qctx, cancel := qmpContext(ctx)
	defer cancel()
	events := r.qmpEvents.Follow() // before device_del: the event may come at once
	if err := r.mon.Execute(qctx, "device_del", map[string]string{"id": id}, nil); err != nil {
		var qe *monitor.Error
		if errors.As(err, &qe) && strings.Contains(qe.Desc, "not found") {
			// Already gone (released after an earlier EBUSY while qemufs
			// was not looking): finish the removal.
			return d.finishUnplug(ctx, r, id)
		}
		return qemuErr("detach", name, fmt.Errorf("%s: %w", dev.Describe(), err))
	}
	wctx, wcancel := context.WithTimeout(ctx, timeout)
	released := waitDeleted(wctx, events, id)
	wcancel()
	if !released {
		d.appendLog(r.files.Log, "detach %s: the guest has not released it after %s", dev.Describe(), timeout)
		go d.lateUnplug(r, events, id, withConfig)
		if ctx.Err() != nil {
			return errorf(ErrInterrupted, "detach %s: interrupted while waiting for the guest to release %s; it stays in live.xml until the guest does", name, dev.Describe())
		}
		return errorf(ErrBusy, "detach %s: the guest did not release %s within %s (it stays in live.xml; it is removed if the guest lets it go later; retry, or raise --timeout=N)", name, dev.Describe(), timeout)
	}
	return d.finishUnplug(ctx, r, id)
}

// waitDeleted reads QMP events until DEVICE_DELETED for id, or ctx ends.
func waitDeleted(ctx context.Context, events interface {
	ReadLine(context.Context, []byte) (int, error)
}, id string) bool {
	buf := make([]byte, 1<<16)
	for {
		n, err := events.ReadLine(ctx, buf)
		if n > 0 {
			var ev struct {
				Event string `json:"event"`
				Data  struct {
					Device string `json:"device"`
				} `json:"data"`
			}
			if json.Unmarshal(buf[:n], &ev) == nil && ev.Event == "DEVICE_DELETED" && ev.Data.Device == id {
				return true
			}
		}
		if err != nil {
			return false
		}
	}
}

// lateUnplug finishes an unplug the guest completes after detach gave up
// waiting, as long as the run lasts.
func (d *Driver) lateUnplug(r *run, events interface {
	ReadLine(context.Context, []byte) (int, error)
}, id string, withConfig bool) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-r.done:
		case <-r.detached:
		}
		cancel()
	}()
	defer cancel()
	if !waitDeleted(ctx, events, id) {
		return
	}
	dm := r.dm
	dm.op.Lock()
	defer dm.op.Unlock()
	dm.mu.Lock()
	same := dm.run == r
	dm.mu.Unlock()
	if !same {
		return
	}
	if _, err := r.def().FindDevice([]byte(fmt.Sprintf("<alias name='%s'/>", id))); err != nil {
		return // a later detach finished it
	}
	if err := d.finishUnplug(ctx, r, id); err != nil {
		d.appendLog(r.files.Log, "late unplug of %s: %v", id, err)
		return
	}
	if !withConfig {
		return
	}
	dm.mu.Lock()
	def := dm.def
	dm.mu.Unlock()
	if def == nil {
		return
	}
	if cfg, _, err := def.RemoveDevice([]byte(fmt.Sprintf("<alias name='%s'/>", id))); err == nil {
		if err := d.commitConfig(dm, cfg); err != nil {
			d.appendLog(r.files.Log, "late unplug of %s: config.xml: %v", id, err)
		}
	}
}

// finishUnplug deletes what backed a device QEMU has removed, gives its
// files back and drops it from the live definition.
func (d *Driver) finishUnplug(ctx context.Context, r *run, id string) error {
	name := r.dm.name
	spec := []byte(fmt.Sprintf("<alias name='%s'/>", id))
	newLive, dev, err := r.def().RemoveDevice(spec)
	if err != nil {
		return deviceErr("detach", name, err)
	}
	qctx, cancel := qmpContext(ctx)
	defer cancel()
	st, err := d.hotplugState(r)
	if err != nil {
		return errorf(ErrIO, "detach %s: %w", name, err)
	}
	var errs []string
	if dev.Tag() == "disk" {
		for _, n := range st.Nodes[id] {
			if err := r.mon.Execute(qctx, "blockdev-del", map[string]string{"node-name": n}, nil); err != nil {
				errs = append(errs, err.Error())
			}
		}
		delete(st.Nodes, id)
	} else if steps, _, _, err := r.def().HotplugSteps(dev, domain.HotplugOptions{Command: d.liveCommandOptions(r), NodeBase: st.High}); err == nil {
		for i := len(steps) - 1; i >= 0; i-- {
			s := steps[i]
			if s.Command == "device_add" {
				continue
			}
			if err := r.mon.Execute(qctx, s.Undo, s.UndoArgs, nil); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	r.saveHotplugState(st)
	if files, err := deviceFiles(dev, false); err == nil {
		d.release(ctx, r, files)
	}
	r.setLive(newLive)
	r.dm.publish(EventDeviceRemoved, id)
	d.appendLog(r.files.Log, "detached %s", dev.Describe())
	if len(errs) > 0 {
		d.appendLog(r.files.Log, "detach %s: removing its backends: %s", dev.Describe(), strings.Join(errs, "; "))
	}
	return nil
}

// update changes a device in place: cdrom/floppy media (or eject), an
// interface's link state.
func (d *Driver) update(ctx context.Context, dm *dom, spec []byte, o DeviceOptions) error {
	dm.op.Lock()
	defer dm.op.Unlock()
	name := dm.name
	def, r, live, config, err := dm.targets("update", o)
	if err != nil {
		return err
	}
	var newLive, newCfg *domain.Domain
	var ch domain.Change
	if live {
		if newLive, ch, err = r.def().UpdateDevice(spec, d.caps); err != nil {
			return deviceErr("update", name, err)
		}
		if err := checkSources("update", name, ch.New); err != nil {
			return err
		}
	}
	if config {
		var cch domain.Change
		var cerr error
		newCfg, cch, cerr = def.UpdateDevice(spec, d.caps)
		if cerr != nil && live && errors.Is(cerr, domain.ErrNoSuchDevice) && !o.Config {
			newCfg = nil // attached --live only
		} else if cerr != nil {
			return deviceErr("update", name, fmt.Errorf("config.xml: %w", cerr))
		} else if !live {
			// The new media must exist, as for a live change.
			if err := checkSources("update", name, cch.New); err != nil {
				return err
			}
		}
	}
	if live {
		var err error
		switch ch.Kind {
		case "link":
			qctx, cancel := qmpContext(ctx)
			err = r.mon.Execute(qctx, "set_link", map[string]any{"name": ch.New.Alias(), "up": ch.LinkUp}, nil)
			cancel()
			if err != nil {
				err = qemuErr("update", name, err)
			}
		case "media":
			err = d.changeMedia(ctx, r, newLive, ch)
		}
		if err != nil {
			return err
		}
	}
	if newCfg != nil {
		if err := d.commitConfig(dm, newCfg); err != nil {
			return errorf(ErrIO, "update %s: %w", name, err)
		}
	}
	if live {
		r.setLive(newLive)
		dm.publish(EventDeviceUpdated, ch.New.Alias())
		d.appendLog(r.files.Log, "updated %s (%s)", ch.New.Describe(), ch.Kind)
	}
	return nil
}

// changeMedia swaps a cdrom's or floppy's media: the new image is opened
// first, so a failure leaves the old one in; then the tray is opened, the
// old medium removed, the new one inserted and the tray closed, and the
// old nodes are deleted and their files given back.
func (d *Driver) changeMedia(ctx context.Context, r *run, live *domain.Domain, ch domain.Change) error {
	name, id := r.dm.name, ch.Old.Alias()
	qctx, cancel := qmpContext(ctx)
	defer cancel()
	st, err := d.hotplugState(r)
	if err != nil {
		return errorf(ErrIO, "update %s: %w", name, err)
	}
	if err := checkCallerDevice(ctx, "update", name, ch.New); err != nil {
		return err
	}
	oldFiles, newFiles := diskFiles(ch.Old), diskFiles(ch.New)
	same := len(oldFiles) > 0 && len(newFiles) > 0 && oldFiles[0].Path == newFiles[0].Path
	var newNodes []string
	var undos []func()
	undoAll := func() {
		for i := len(undos) - 1; i >= 0; i-- {
			undos[i]()
		}
	}
	if len(newFiles) > 0 {
		steps, nodes, high, err := live.HotplugSteps(ch.New, domain.HotplugOptions{Command: d.liveCommandOptions(r), NodeBase: st.High})
		if err != nil {
			return errorf(ErrInvalid, "update %s: %w", name, err)
		}
		if !same {
			rel, err := d.confine(ctx, r, newFiles)
			if err != nil {
				return errorf(ErrInvalid, "update %s: %w", name, err)
			}
			undos = append(undos, rel)
		}
		for _, s := range steps {
			if s.Command != "blockdev-add" {
				continue
			}
			if err := r.mon.Execute(qctx, s.Command, s.Args, nil); err != nil {
				undoAll()
				return qemuErr("update", name, err)
			}
			s := s
			undos = append(undos, func() { r.mon.Execute(qctx, s.Undo, s.UndoArgs, nil) })
		}
		newNodes, st.High = nodes, max(st.High, high)
	}
	if err := r.mon.Execute(qctx, "blockdev-open-tray", map[string]any{"id": id, "force": true}, nil); err != nil {
		undoAll()
		return qemuErr("update", name, err)
	}
	if err := r.mon.Execute(qctx, "blockdev-remove-medium", map[string]any{"id": id}, nil); err != nil {
		r.mon.Execute(qctx, "blockdev-close-tray", map[string]any{"id": id}, nil)
		undoAll()
		return qemuErr("update", name, err)
	}
	oldNodes := st.Nodes[id]
	if len(newNodes) > 0 {
		if err := r.mon.Execute(qctx, "blockdev-insert-medium", map[string]any{"id": id, "node-name": newNodes[0]}, nil); err != nil {
			if len(oldNodes) > 0 {
				r.mon.Execute(qctx, "blockdev-insert-medium", map[string]any{"id": id, "node-name": oldNodes[0]}, nil)
			}
			r.mon.Execute(qctx, "blockdev-close-tray", map[string]any{"id": id}, nil)
			undoAll()
			return qemuErr("update", name, err)
		}
		if err := r.mon.Execute(qctx, "blockdev-close-tray", map[string]any{"id": id}, nil); err != nil {
			d.appendLog(r.files.Log, "update %s: close tray: %v", id, err)
		}
	}
	for _, n := range oldNodes {
		if err := r.mon.Execute(qctx, "blockdev-del", map[string]string{"node-name": n}, nil); err != nil {
			d.appendLog(r.files.Log, "update %s: delete old node %s: %v", id, n, err)
		}
	}
	if len(newNodes) > 0 {
		st.Nodes[id] = newNodes
	} else {
		delete(st.Nodes, id)
	}
	r.saveHotplugState(st)
	if !same {
		d.release(ctx, r, oldFiles)
	}
	return nil
}
