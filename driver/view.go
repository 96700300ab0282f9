package driver

import (
	"context"
	"os"
	"path/filepath"

	"github.com/qemufs/qemufs/capabilities"
	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/stream"
)

// LiveXML returns the definition the running QEMU was started with, with
// runtime detail (ports, ptys, labels, taints); empty when not running.
func (d *Driver) LiveXML(name string) ([]byte, error) {
	_, r, err := d.current(name)
	if err != nil || r == nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.liveXML, nil
}

// current returns the domain called name and its run (nil when shut off).
func (d *Driver) current(name string) (*dom, *run, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, nil, err
	}
	dm.mu.Lock()
	defer dm.mu.Unlock()
	return dm, dm.run, nil
}

// Pid returns QEMU's pid, 0 when not running.
func (d *Driver) Pid(name string) (int, error) {
	dm, r, err := d.current(name)
	if err != nil {
		return 0, err
	}
	if r == nil {
		dm.mu.Lock()
		defer dm.mu.Unlock()
		if dm.pending != nil {
			return dm.pending.proc.Pid, nil // reattach_pending.go
		}
		return 0, nil
	}
	return r.proc.Pid, nil
}

// LogPath returns the path of the domain's log file.
func (d *Driver) LogPath(name string) (string, error) {
	if _, err := d.lookup(name); err != nil {
		return "", err
	}
	return d.runFiles(name).Log, nil
}

// Argv returns the QEMU command line for the persistent definition, on one
// line: environment, binary, arguments.
func (d *Driver) Argv(name string) ([]byte, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	dm.mu.Lock()
	def := dm.def
	dm.mu.Unlock()
	if def == nil {
		return nil, nil
	}
	return d.NativeArgv(def, name)
}

// NativeArgv builds the command line for def as `argv` and to-native show it.
func (d *Driver) NativeArgv(def *domain.Domain, name string) ([]byte, error) {
	emu, _, err := d.caps.Lookup(def.Arch(), def.Type(), def.Machine(), def.Emulator())
	if err != nil {
		emu = nil // show what would run; start reports the problem
	}
	r := newRun(d, &dom{name: name})
	r.live = def.Clone()
	if port, auto := vncAutoport(r.live); !auto {
		r.vncPort = port
	}
	if err := d.resolveVolumes(context.Background(), r); err != nil {
		return nil, errorf(ErrInvalid, "argv %s: %w", name, err)
	}
	copts := commandOptions(d, r, emu, 0)
	copts.NetAttach = d.previewNetAttach(r.live, 4)
	d.previewSecrets(r, &copts)
	cmd, err := domain.BuildCommand(r.live, copts)
	if err != nil {
		return nil, errorf(ErrInvalid, "argv %s: %w", name, err)
	}
	if d.sec != nil {
		cmd.Args = append(cmd.Args, d.sec.Args()...) // as Prepare adds them at start
	}
	return []byte(cmd.String() + "\n"), nil
}

// QMPEvents returns a reader of the running domain's QMP events from now
// on; it ends when the domain stops. For a domain that is not running it
// ends at once.
func (d *Driver) QMPEvents(name string) (*stream.Reader, error) {
	_, r, err := d.current(name)
	if err != nil {
		return nil, err
	}
	if r == nil {
		l := stream.New(1, true)
		l.Close()
		return l.Follow(), nil
	}
	return r.qmpEvents.Follow(), nil
}

// Screenshot returns a PNG of the guest's display.
func (d *Driver) Screenshot(ctx context.Context, name string) ([]byte, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	r, err := dm.activeRun("screenshot")
	if err != nil {
		return nil, err
	}
	if !hasDisplay(r.def()) {
		return nil, errorf(ErrNoDevice, "screenshot %s: the domain has no display (add a <video> or <graphics> device)", name)
	}
	f, err := os.CreateTemp(r.files.DomDir, "screen-*.png")
	if err != nil {
		return nil, errorf(ErrIO, "screenshot %s: %w", name, err)
	}
	path := f.Name()
	f.Close()
	defer os.Remove(path)
	d.chownForQEMU(r, path)
	if err := r.mon.Execute(ctx, "screendump", map[string]any{"filename": path, "format": "png"}, nil); err != nil {
		if ctx.Err() != nil {
			return nil, errorf(ErrInterrupted, "screenshot %s: interrupted", name)
		}
		return nil, errorf(ErrIO, "screenshot %s: %w", name, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, errorf(ErrIO, "screenshot %s: %w", name, err)
	}
	return data, nil
}

// commandOptions gives BuildCommand the runtime facts of run r; qmpFD > 0
// hands QEMU its QMP socket as that fd instead of a path.
func commandOptions(d *Driver, r *run, emu *capabilities.Emulator, qmpFD int) domain.CommandOptions {
	home := filepath.Join(d.inst.LibDir, r.dm.name)
	return domain.CommandOptions{
		Emulator:    emu,
		QMPSocket:   r.files.QMP,
		QMPFD:       qmpFD,
		DomainDir:   r.files.DomDir,
		TPMSocket:   d.tpmFiles(r.dm.name).Socket,
		LibDir:      home,
		VNCPort:     r.vncPort,
		SpicePort:   r.spicePort,
		VNCListen:   d.conf.VNCListen,
		SpiceListen: d.conf.SpiceListen,
		Home:        home,
	}
}

// refreshLive re-renders live.xml from the live definition and run facts.
func (r *run) refreshLive() {
	r.mu.Lock()
	defer r.mu.Unlock()
	live := r.live
	if r.vncPort > 0 {
		live.SetGraphicsPort("vnc", r.vncPort)
	}
	if r.spicePort > 0 {
		live.SetGraphicsPort("spice", r.spicePort)
	}
	if r.sec != nil {
		var labels []domain.SecLabel
		for _, l := range r.sec.SecLabels() {
			labels = append(labels, domain.SecLabel{Model: l.Model, Type: l.Type, Relabel: l.Relabel, Label: l.Label, ImageLabel: l.ImageLabel})
		}
		live.SetSecLabels(labels)
	}
	for t := range r.taints {
		live.AddTaint(t)
	}
	r.liveXML = live.XML()
}

// noteTaints records the taints the definition itself carries (qemu:
// namespace pass-through), as libvirt logs them at start.
func (d *Driver) noteTaints(r *run) {
	for _, t := range r.live.ImpliedTaints() {
		r.taints[t] = true
		d.appendLog(r.files.Log, "Domain id=%d is tainted: %s", r.proc.Pid, t)
	}
	r.refreshLive()
}
