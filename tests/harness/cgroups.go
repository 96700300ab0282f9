package harness

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/qemufs/qemufs/instance"
)

// InstanceName is the instance's name as qemufs uses it in cgroup paths
// ("embed-HASH", "system-HASH").
func (m *Mount) InstanceName() string {
	var in *instance.Instance
	var err error
	if m.opts.System {
		in, err = instance.NewSystemUnder(m.Root)
	} else {
		in, err = instance.NewEmbedded(m.Root)
	}
	if err != nil {
		return ""
	}
	return in.Name
}

// removeCgroups removes the guest cgroups of this instance that no daemon
// was left to remove: a guest still running at unmount and killed by the
// cleanup, or one whose daemon was killed. The kernel removes only
// empty cgroups, so a live process is never affected.
func (m *Mount) removeCgroups() {
	name := m.InstanceName()
	if name == "" {
		return
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return
	}
	unified := "/sys/fs/cgroup/unified"
	if _, err := os.Stat(unified); err != nil {
		unified = "/sys/fs/cgroup"
	}
	// The daemon shares this process's cgroups: qemufs puts an instance's
	// guests below them (v1) or next to them (v2).
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 || strings.HasPrefix(f[1], "name=") {
			continue
		}
		root := filepath.Join("/sys/fs/cgroup", f[1])
		if f[1] == "" {
			root = unified
		}
		for _, base := range []string{f[2], filepath.Dir(f[2])} {
			part := filepath.Join(root, base, "qemufs-"+name)
			guests, _ := filepath.Glob(filepath.Join(part, "*.qemu"))
			for _, g := range guests {
				os.Remove(g)
			}
			os.Remove(part)
		}
	}
}
