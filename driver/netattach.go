package driver

import (
	"context"
	"os"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/network"
	"github.com/qemufs/qemufs/procmgr"
)

// netAttachments is the host side of a run's interfaces, made at start.
type netAttachments struct {
	attach  map[string]domain.NetAttachment // by interface alias
	inherit []*os.File                      // QEMU inherits them (taps, passt sockets), in fd order
}

// close drops qemufs's copies of the tap files (QEMU keeps its own); on a
// failed start it is what removes the taps.
func (a *netAttachments) close() {
	for _, f := range a.inherit {
		f.Close()
	}
	a.inherit = nil
}

// privileged tells whether this daemon can make host network devices (a
// variable for tests).
var privileged = func() bool { return os.Geteuid() == 0 }

// hostSide is how qemufs connects one interface's host side.
type hostSide int

const (
	sideQEMU  hostSide = iota // QEMU does it itself (user/slirp, socket, vhost-user, unmanaged tap ...)
	sideSlirp                 // type='network' as QEMU's user-mode networking
	sidePasst                 // a passt process of qemufs
	sideTap                   // a TAP device of qemufs (network, bridge, managed ethernet)
)

// plan decides an interface's host side, or why it cannot have one.
// passt is passt's path ("" when not installed).
func (d *Driver) plan(ifc domain.Interface, passt string) (hostSide, error) {
	switch {
	case ifc.Type == "user" && ifc.Backend == "passt":
		if passt == "" {
			return 0, errorf(ErrInvalid, "interface %s: the passt backend needs passt (Debian package passt), which is not installed", ifc.Alias)
		}
		return sidePasst, nil
	case ifc.Type == "network" && (d.nets == nil || !d.nets.Exists(ifc.Source)) && !privileged():
		// A session's type='network' is user-mode networking: passt
		// where installed, else QEMU's own (as libvirt's session). With
		// port forwards it is QEMU's own: Debian 12's passt (2023-03-09)
		// crashes (SIGSEGV in libc) on the first forwarded connection.
		if passt != "" && len(ifc.PortForwards) == 0 {
			return sidePasst, nil
		}
		return sideSlirp, nil
	case ifc.Type == "network" && d.nets == nil:
		return 0, errorf(ErrInvalid, "interface %s: network %q: this instance has no network driver", ifc.Alias, ifc.Source)
	case ifc.Type == "bridge" && !privileged():
		return 0, errorf(ErrPerm, "interface %s: plugging into host bridge %s needs a privileged instance", ifc.Alias, ifc.Source)
	case ifc.Type == "network", ifc.Type == "bridge", ifc.Type == "ethernet" && !ifc.Unmanaged && privileged():
		return sideTap, nil
	}
	return sideQEMU, nil
}

// attachNetworks makes the host side of every interface qemufs manages
// (see plan): passt for <backend type='passt'>, a TAP on the network's
// bridge for type='network' (user-mode networking in an unprivileged
// instance, as libvirt's session does), a TAP on the named host bridge for
// type='bridge', a TAP of qemufs's own for a managed type='ethernet' in a
// privileged instance. firstFD is the fd number the first file gets in
// QEMU. The live definition gets the taps' names.
func (d *Driver) attachNetworks(ctx context.Context, r *run, firstFD int) (*netAttachments, error) {
	a := &netAttachments{attach: map[string]domain.NetAttachment{}}
	passt := passtBinary()
	for _, ifc := range r.live.Interfaces() {
		side, err := d.plan(ifc, passt)
		nextFD := firstFD + len(a.inherit)
		switch {
		case err != nil:
		case side == sideSlirp:
			a.attach[ifc.Alias] = domain.NetAttachment{User: true}
		case side == sidePasst:
			var f *os.File
			var p *procmgr.Process
			if f, p, err = d.startPasst(ctx, r, ifc, passt); err == nil {
				r.mu.Lock()
				r.passts = append(r.passts, p)
				r.mu.Unlock()
				a.inherit = append(a.inherit, f)
				a.attach[ifc.Alias] = domain.NetAttachment{PasstFD: nextFD}
			}
		case side == sideTap:
			var t *network.Tap
			switch ifc.Type {
			case "network":
				t, err = d.nets.Tap(ctx, ifc.Source, ifc.MAC)
			case "bridge":
				t, err = network.OpenTap(ctx, ifc.Source, ifc.MAC, "")
			default:
				t, err = network.OpenTap(ctx, "", ifc.MAC, ifc.TargetDev)
			}
			if err == nil {
				a.inherit = append(a.inherit, t.File)
				a.attach[ifc.Alias] = domain.NetAttachment{TapFD: nextFD}
				r.live.SetInterfaceTarget(ifc.Alias, t.Name)
			}
		}
		if err != nil {
			a.close()
			r.stopPassts()
			return nil, errorf(Kind(err), "start %s: %w", r.dm.name, err)
		}
	}
	return a, nil
}

// previewNetAttach is attachNetworks without making anything, for the argv
// file: the fds are the numbers a start would give, the host side absent.
func (d *Driver) previewNetAttach(def *domain.Domain, firstFD int) map[string]domain.NetAttachment {
	out := map[string]domain.NetAttachment{}
	passt := passtBinary()
	for _, ifc := range def.Interfaces() {
		side, err := d.plan(ifc, passt)
		switch {
		case err != nil:
		case side == sideSlirp:
			out[ifc.Alias] = domain.NetAttachment{User: true}
		case side == sidePasst:
			out[ifc.Alias] = domain.NetAttachment{PasstFD: firstFD}
			firstFD++
		case side == sideTap:
			out[ifc.Alias] = domain.NetAttachment{TapFD: firstFD}
			firstFD++
		}
	}
	return out
}

// files are the files for procmgr.Spec.ExtraFiles, in fd order.
func (a *netAttachments) files() []*os.File { return a.inherit }

// hotplugHostSide makes the host side of an interface being hot-plugged
// into r's QEMU, as attachNetworks does at start (see plan), and hands its
// file to QEMU with getfd; opts gets the attachment for building the
// netdev, live the tap's name. The returned undo closes the named fd in
// QEMU and ends passt (a tap goes with the last file that holds it).
func (d *Driver) hotplugHostSide(ctx context.Context, r *run, live *domain.Domain, ifc domain.Interface, opts *domain.CommandOptions) (func(), error) {
	passt := passtBinary()
	side, err := d.plan(ifc, passt)
	if err != nil {
		return nil, err
	}
	if opts.NetAttach == nil {
		opts.NetAttach = map[string]domain.NetAttachment{}
	}
	var f *os.File
	var p *procmgr.Process
	a := domain.NetAttachment{FDName: "host" + ifc.Alias}
	switch side {
	case sideQEMU:
		return func() {}, nil
	case sideSlirp:
		opts.NetAttach[ifc.Alias] = domain.NetAttachment{User: true}
		return func() {}, nil
	case sidePasst:
		if f, p, err = d.startPasst(ctx, r, ifc, passt); err != nil {
			return nil, err
		}
		a.Passt = true
	case sideTap:
		var t *network.Tap
		switch ifc.Type {
		case "network":
			t, err = d.nets.Tap(ctx, ifc.Source, ifc.MAC)
		case "bridge":
			t, err = network.OpenTap(ctx, ifc.Source, ifc.MAC, "")
		default:
			t, err = network.OpenTap(ctx, "", ifc.MAC, ifc.TargetDev)
		}
		if err != nil {
			return nil, err
		}
		f = t.File
		live.SetInterfaceTarget(ifc.Alias, t.Name)
	}
	defer f.Close() // QEMU has its own copy once getfd succeeds
	stopPasst := func() {
		if p != nil {
			p.Kill()
			<-p.Done()
			p.Cleanup()
		}
	}
	if err := r.mon.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": a.FDName}, nil, f); err != nil {
		stopPasst()
		return nil, errorf(ErrIO, "interface %s: pass its host side to QEMU: %w", ifc.Alias, err)
	}
	if p != nil {
		r.mu.Lock()
		r.passts = append(r.passts, p)
		r.mu.Unlock()
	}
	opts.NetAttach[ifc.Alias] = a
	return func() {
		c, cancel := qmpContext(context.Background())
		defer cancel()
		r.mon.Execute(c, "closefd", map[string]any{"fdname": a.FDName}, nil)
	}, nil
}
