package cgroup

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/containerd/cgroups/v3/cgroup2"
	"golang.org/x/sys/unix"
)

func (m *Manager) createV2(dir string, devices []Device, l Limits) (*Group, error) {
	_, own, err := ownCgroups()
	if err != nil {
		return nil, fmt.Errorf("read own cgroup: %w", err)
	}
	// A v2 cgroup with processes cannot enable controllers for children
	// (no internal processes), so the partition is a sibling of the
	// daemon's own group, or at the top when the daemon is in the root.
	base := "/"
	if own != "" && own != "/" {
		base = filepath.Dir(own)
	}
	group := filepath.Join(base, m.partition, dir)
	res, err := l.v2Resources()
	if err != nil {
		return nil, err
	}
	g := &Group{Version: V2, Dirs: map[string]string{"": filepath.Join(m.mountpoint, group)}}
	if err := clearStale(g); err != nil {
		return nil, err
	}
	if _, err := cgroup2.NewManager(m.mountpoint, group, res); err != nil {
		_ = Remove(g)
		return nil, err
	}
	if m.Has("devices") && devices != nil {
		if err := attachDeviceFilter(g.Dirs[""], devices); err != nil {
			_ = Remove(g)
			return nil, err
		}
		g.Devices = devices
	}
	return g, nil
}

var memlock sync.Once

// attachDeviceFilter makes devs the device ACL of the v2 group at dir: it
// attaches one program built from the whole list, then detaches every
// program that was there before. Attached programs are ANDed, so in the
// short overlap access is only ever narrower, and they never pile up
// (containerd's own attach would add one per update).
func attachDeviceFilter(dir string, devs []Device) error {
	memlock.Do(func() { _ = rlimit.RemoveMemlock() })
	insts, license, err := cgroup2.DeviceFilter(rules(devs))
	if err != nil {
		return fmt.Errorf("build device filter: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.CGroupDevice, Instructions: insts, License: license})
	if err != nil {
		return fmt.Errorf("load device filter: %w", err)
	}
	defer prog.Close() // the attachment keeps its own reference
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	old, err := link.QueryPrograms(link.QueryOptions{Target: fd, Attach: ebpf.AttachCGroupDevice})
	if err != nil {
		return fmt.Errorf("query device filters of %s: %w", dir, err)
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: fd, Program: prog, Attach: ebpf.AttachCGroupDevice, Flags: unix.BPF_F_ALLOW_MULTI,
	}); err != nil {
		return fmt.Errorf("attach device filter to %s: %w", dir, err)
	}
	var errs []error
	for _, p := range old.Programs {
		op, err := ebpf.NewProgramFromID(p.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := link.RawDetachProgram(link.RawDetachProgramOptions{Target: fd, Program: op, Attach: ebpf.AttachCGroupDevice}); err != nil {
			errs = append(errs, err)
		}
		op.Close()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach old device filters of %s: %w", dir, err)
	}
	return nil
}

// DeviceFilters returns the ids of the eBPF device programs attached to
// the v2 group at dir (one after any number of updates).
func DeviceFilters(dir string) ([]ebpf.ProgramID, error) {
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	r, err := link.QueryPrograms(link.QueryOptions{Target: fd, Attach: ebpf.AttachCGroupDevice})
	if err != nil {
		return nil, err
	}
	var ids []ebpf.ProgramID
	for _, p := range r.Programs {
		ids = append(ids, p.ID)
	}
	return ids, nil
}
