package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/containerd/cgroups/v3/cgroup1"
)

func (m *Manager) subsystems() ([]cgroup1.Subsystem, error) {
	var out []cgroup1.Subsystem
	for _, c := range m.controllers {
		var s cgroup1.Subsystem
		switch c {
		case "cpu":
			s = cgroup1.NewCpu(m.mountpoint)
		case "cpuacct":
			s = cgroup1.NewCpuacct(m.mountpoint)
		case "cpuset":
			s = cgroup1.NewCpuset(m.mountpoint)
		case "memory":
			s = cgroup1.NewMemory(m.mountpoint)
		case "devices":
			s = cgroup1.NewDevices(m.mountpoint)
		case "freezer":
			s = cgroup1.NewFreezer(m.mountpoint)
		case "blkio":
			s = cgroup1.NewBlkio(m.mountpoint)
		case "pids":
			s = cgroup1.NewPids(m.mountpoint)
		case "net_cls":
			s = cgroup1.NewNetCls(m.mountpoint)
		case "perf_event":
			s = cgroup1.NewPerfEvent(m.mountpoint)
		default:
			return nil, fmt.Errorf("controller %q has no v1 support", c)
		}
		out = append(out, s)
	}
	return out, nil
}

func (m *Manager) createV1(dir string, devices []Device, l Limits) (*Group, error) {
	if len(m.controllers) == 0 {
		return nil, errors.New("no cgroup controller configured")
	}
	if !m.Has("devices") {
		devices = nil
	}
	res, err := l.v1Resources(devices)
	if err != nil {
		return nil, err
	}
	path := cgroup1.NestedPath(filepath.Join(m.partition, dir))
	g := &Group{Version: V1, Dirs: map[string]string{}, Devices: devices}
	for _, c := range m.controllers {
		rel, err := path(cgroup1.Name(c))
		if err != nil {
			return nil, fmt.Errorf("locate %s cgroup: %w", c, err)
		}
		g.Dirs[c] = filepath.Join(m.mountpoint, c, rel)
	}
	if err := clearStale(g); err != nil {
		return nil, err
	}
	hier := func() ([]cgroup1.Subsystem, error) { return m.subsystems() }
	anyCheck := func(c *cgroup1.InitConfig) error { c.InitCheck = cgroup1.AllowAny; return nil }
	if _, err := cgroup1.New(path, res, cgroup1.WithHierarchy(hier), anyCheck); err != nil {
		_ = Remove(g)
		return nil, err
	}
	return g, nil
}

// clearStale removes an empty group left by a crashed daemon, so that the
// new one starts from clean settings; a group with processes means a QEMU
// for this guest still runs, which is an error.
func clearStale(g *Group) error {
	for _, d := range g.Dirs {
		if _, err := os.Stat(d); err != nil {
			continue
		}
		if p := members(d); len(p) > 0 {
			return fmt.Errorf("cgroup %s already exists with processes %v (is another QEMU for this guest running?)", d, p)
		}
	}
	return Remove(g)
}

// SetDevices changes a live group's device ACL to devs (disk hotplug).
// On v1 only the differences are written, so access that stays allowed
// is never interrupted.
func (m *Manager) SetDevices(g *Group, devs []Device) error {
	if len(g.Devices) == 0 {
		return nil // devices not controlled for this group
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var err error
	switch g.Version {
	case V1:
		err = setDevicesV1(g, devs)
	case V2:
		err = attachDeviceFilter(g.Dirs[""], devs)
	default:
		err = errors.New("no cgroup hierarchy")
	}
	if err != nil {
		return fmt.Errorf("update device ACL: %w", err)
	}
	g.Devices = slices.Clone(devs)
	return nil
}

func setDevicesV1(g *Group, devs []Device) error {
	dir, ok := g.Dirs["devices"]
	if !ok {
		return nil
	}
	for _, d := range g.Devices {
		if !slices.Contains(devs, d) {
			if err := os.WriteFile(filepath.Join(dir, "devices.deny"), []byte(d.String()), 0); err != nil {
				return err
			}
		}
	}
	for _, d := range devs {
		if err := os.WriteFile(filepath.Join(dir, "devices.allow"), []byte(d.String()), 0); err != nil {
			return err
		}
	}
	return nil
}
