// Package cgroup gives each guest its own control group: the device ACL
// (cgroup v1's devices.allow/deny, or on v2 an eBPF program that this
// package attaches and replaces itself) and the cputune, memtune and
// blkiotune limits. Groups are created with containerd's cgroups library
// and described by a JSON-serialisable Group, so that a restarted daemon
// can remove them.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	cgroups "github.com/containerd/cgroups/v3"
)

// Version is the cgroup hierarchy in use.
type Version int

// Versions.
const (
	None Version = iota // no usable cgroup mount
	V1                  // per-controller hierarchies (legacy or hybrid hosts)
	V2                  // the unified hierarchy
)

func (v Version) String() string {
	switch v {
	case V1:
		return "v1"
	case V2:
		return "v2"
	}
	return "none"
}

// Detect returns the hierarchy to use on this host: v2 only on a unified
// host; a hybrid host keeps its controllers (devices included) on v1.
func Detect() Version {
	switch cgroups.Mode() {
	case cgroups.Unified:
		return V2
	case cgroups.Legacy, cgroups.Hybrid:
		return V1
	}
	return None
}

// DefaultControllers is libvirt's default cgroup_controllers list.
var DefaultControllers = []string{"cpu", "devices", "memory", "blkio", "cpuset", "cpuacct"}

// known lists the controller names qemu.conf may use.
var known = []string{"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "net_cls", "perf_event"}

// Options configure a Manager.
type Options struct {
	// Version selects the hierarchy; None means Detect().
	Version Version
	// Mountpoint is where the hierarchy is mounted: for v1 the directory
	// holding one mount per controller, for v2 the unified mount. Empty
	// means /sys/fs/cgroup.
	Mountpoint string
	// Controllers are qemu.conf's cgroup_controllers; nil means
	// DefaultControllers, an empty list means no cgroups at all.
	Controllers []string
	// Partition names the directory that holds this instance's guests,
	// created next to (v2) or below (v1) the daemon's own cgroup, for
	// example "qemufs-system".
	Partition string
}

// Manager creates and removes guest cgroups for one qemufs instance.
type Manager struct {
	version     Version
	mountpoint  string
	partition   string
	controllers []string // configured controllers available on the host
	mu          sync.Mutex
}

// New checks the configured controllers and returns a Manager. A name
// that is not a cgroup controller is an error; a known controller the
// host does not mount is left out (see Controllers).
func New(opts Options) (*Manager, error) {
	m := &Manager{version: opts.Version, mountpoint: opts.Mountpoint, partition: opts.Partition}
	if m.version == None {
		m.version = Detect()
	}
	if m.mountpoint == "" {
		m.mountpoint = "/sys/fs/cgroup"
	}
	if m.partition == "" || strings.ContainsAny(m.partition, "/\x00") || m.partition[0] == '.' {
		return nil, fmt.Errorf("cgroup partition %q: must be a plain directory name", m.partition)
	}
	want := opts.Controllers
	if want == nil {
		want = DefaultControllers
	}
	for _, c := range want {
		if c == "name=systemd" || c == "systemd" {
			continue // libvirt accepts it; qemufs does not register with systemd
		}
		if !slices.Contains(known, c) {
			return nil, fmt.Errorf("cgroup_controllers: %q is not a cgroup controller (known: %s)", c, strings.Join(known, ", "))
		}
		if m.available(c) && !slices.Contains(m.controllers, c) {
			m.controllers = append(m.controllers, c)
		}
	}
	return m, nil
}

// Version is the hierarchy this Manager uses.
func (m *Manager) Version() Version { return m.version }

// Controllers lists the configured controllers the host has.
func (m *Manager) Controllers() []string { return slices.Clone(m.controllers) }

// Has reports whether controller c is configured and available.
func (m *Manager) Has(c string) bool { return slices.Contains(m.controllers, c) }

func (m *Manager) available(c string) bool {
	switch m.version {
	case V1:
		_, err := os.Stat(filepath.Join(m.mountpoint, c, "cgroup.procs"))
		return err == nil
	case V2:
		switch c {
		case "devices":
			return true // an eBPF program, not a controller
		case "freezer":
			return true // cgroup.freeze is built in
		}
		b, err := os.ReadFile(filepath.Join(m.mountpoint, "cgroup.controllers"))
		return err == nil && slices.Contains(strings.Fields(string(b)), v2Name(c))
	}
	return false
}

// v2Name maps a v1 controller name to its unified counterpart.
func v2Name(c string) string {
	switch c {
	case "cpuacct":
		return "cpu"
	case "blkio":
		return "io"
	}
	return c
}

// Group is one guest's cgroup, as recorded for removal after a restart.
type Group struct {
	Version Version `json:"version"`
	// Dirs maps a controller ("" on v2) to the group's absolute directory.
	Dirs map[string]string `json:"dirs"`
	// Devices is the device ACL in force (empty when not controlled).
	Devices []Device `json:"devices,omitempty"`
}

// Procs lists the cgroup.procs files a process writes itself into to
// join the group (one per distinct directory).
func (g *Group) Procs() []string {
	var out []string
	for _, c := range slices.Sorted(mapsKeys(g.Dirs)) {
		p := filepath.Join(g.Dirs[c], "cgroup.procs")
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

func mapsKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// Create makes the guest's cgroup, named after the guest, below this
// instance's partition, with the device ACL (nil: devices not controlled)
// and the limits applied. On error nothing is left behind.
func (m *Manager) Create(name string, devices []Device, l Limits) (*Group, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("cgroup for %q: bad guest name", name)
	}
	if err := l.check(m); err != nil {
		return nil, fmt.Errorf("cgroup for %s: %w", name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var g *Group
	var err error
	switch m.version {
	case V1:
		g, err = m.createV1(escape(name), devices, l)
	case V2:
		g, err = m.createV2(escape(name), devices, l)
	default:
		return nil, fmt.Errorf("cgroup for %s: no cgroup hierarchy on this host", name)
	}
	if err != nil {
		return nil, fmt.Errorf("cgroup for %s: %w", name, err)
	}
	return g, nil
}

// escape turns a guest name into a directory name that cannot collide
// with a cgroup's own files ("tasks", "cpu.shares", "cgroup.procs"...):
// names get a ".qemu" suffix, which no kernel file has.
func escape(name string) string {
	if name == "." || name == ".." {
		name = "_" + name
	}
	return name + ".qemu"
}

// Remove deletes the group (its processes must have exited) and, when it
// was the last guest, the partition directory.
func (m *Manager) Remove(g *Group) error { return Remove(g) }

// Remove deletes a recorded group; it needs no Manager, so that a Record
// loaded after a restart can always be undone. Directories already gone
// are not an error.
func Remove(g *Group) error {
	if g == nil {
		return nil
	}
	var errs []error
	seen := map[string]bool{}
	for _, c := range slices.Sorted(mapsKeys(g.Dirs)) {
		d := g.Dirs[c]
		if seen[d] {
			continue
		}
		seen[d] = true
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			if errors.Is(err, unixEBUSY) {
				err = fmt.Errorf("remove cgroup %s: still has processes %v: %w", d, members(d), err)
			}
			errs = append(errs, err)
			continue
		}
		// The partition goes with its last guest; busy or not empty is fine.
		_ = os.Remove(filepath.Dir(d))
	}
	return errors.Join(errs...)
}

func members(dir string) []string {
	f, err := os.Open(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		out = append(out, s.Text())
	}
	return out
}

// ownCgroups returns the calling process's cgroup path per v1 controller
// and its unified path ("" when it has none).
func ownCgroups() (map[string]string, string, error) {
	return cgroups.ParseCgroupFileUnified("/proc/self/cgroup")
}
