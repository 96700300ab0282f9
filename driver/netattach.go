package driver

import (
	"context"
	"os"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/network"
)

// netAttachments is the host side of a run's interfaces, made at start.
type netAttachments struct {
	attach map[string]domain.NetAttachment // by interface alias
	taps   []*network.Tap                  // QEMU inherits their files
}

// close drops qemufs's copies of the tap files (QEMU keeps its own); on a
// failed start it is what removes the taps.
func (a *netAttachments) close() {
	for _, t := range a.taps {
		t.File.Close()
	}
	a.taps = nil
}

// privileged tells whether this daemon can make host network devices.
func privileged() bool { return os.Geteuid() == 0 }

// attachNetworks makes the host side of every interface qemufs manages:
// a TAP on the network's bridge for type='network' (user-mode networking
// in an unprivileged instance, as libvirt's session does), a TAP on the
// named host bridge for type='bridge', a TAP of qemufs's own for a managed
// type='ethernet' in a privileged instance. firstFD is the fd number the
// first tap gets in QEMU. The live definition gets the taps' names.
func (d *Driver) attachNetworks(ctx context.Context, r *run, firstFD int) (*netAttachments, error) {
	a := &netAttachments{attach: map[string]domain.NetAttachment{}}
	add := func(ifc domain.Interface, t *network.Tap) {
		a.taps = append(a.taps, t)
		a.attach[ifc.Alias] = domain.NetAttachment{TapFD: firstFD + len(a.taps) - 1}
		r.live.SetInterfaceTarget(ifc.Alias, t.Name)
	}
	for _, ifc := range r.live.Interfaces() {
		var (
			t   *network.Tap
			err error
		)
		switch {
		case ifc.Type == "network" && (d.nets == nil || !d.nets.Exists(ifc.Source)) && !privileged():
			a.attach[ifc.Alias] = domain.NetAttachment{User: true}
			continue
		case ifc.Type == "network" && d.nets == nil:
			err = errorf(ErrInvalid, "interface %s: network %q: this instance has no network driver", ifc.Alias, ifc.Source)
		case ifc.Type == "network":
			t, err = d.nets.Tap(ctx, ifc.Source, ifc.MAC)
		case ifc.Type == "bridge" && !privileged():
			err = errorf(ErrPerm, "interface %s: plugging into host bridge %s needs a privileged instance", ifc.Alias, ifc.Source)
		case ifc.Type == "bridge":
			t, err = network.OpenTap(ctx, ifc.Source, ifc.MAC, "")
		case ifc.Type == "ethernet" && !ifc.Unmanaged && privileged():
			t, err = network.OpenTap(ctx, "", ifc.MAC, ifc.TargetDev)
		default:
			continue
		}
		if err != nil {
			a.close()
			return nil, errorf(Kind(err), "start %s: %w", r.dm.name, err)
		}
		add(ifc, t)
	}
	return a, nil
}

// files are the tap files for procmgr.Spec.ExtraFiles, in fd order.
func (a *netAttachments) files() []*os.File {
	var out []*os.File
	for _, t := range a.taps {
		out = append(out, t.File)
	}
	return out
}
