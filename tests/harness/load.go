package harness

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DaemonStats is what the load and hostile-user tests watch for leaks in
// the daemon (docs/reliability.md).
type DaemonStats struct {
	FDs        int // open file descriptors (/proc/PID/fd)
	Threads    int
	RSSKiB     int // VmRSS
	HWMKiB     int // VmHWM, the peak RSS
	Goroutines int // from QEMUFS_PPROF's goroutine profile; -1 without it
}

func (s DaemonStats) String() string {
	return fmt.Sprintf("fds %d, threads %d, RSS %d KiB (peak %d KiB), goroutines %d", s.FDs, s.Threads, s.RSSKiB, s.HWMKiB, s.Goroutines)
}

// FreeLocalAddr returns a loopback address with a free port, for
// QEMUFS_PPROF.
func FreeLocalAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Stats reads the daemon's figures; pprofAddr ("" for none) is where it
// serves QEMUFS_PPROF.
func Stats(pid int, pprofAddr string) (DaemonStats, error) {
	var s DaemonStats
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.FDs = len(fds)
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "VmRSS:":
			s.RSSKiB = n
		case "VmHWM:":
			s.HWMKiB = n
		case "Threads:":
			s.Threads = n
		}
	}
	s.Goroutines = -1
	if pprofAddr != "" {
		c := http.Client{Timeout: time.Minute}
		resp, err := c.Get("http://" + pprofAddr + "/debug/pprof/goroutine?debug=1")
		if err != nil {
			return s, err
		}
		defer resp.Body.Close()
		head, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		// "goroutine profile: total N"
		if _, v, ok := strings.Cut(strings.SplitN(string(head), "\n", 2)[0], "total "); ok {
			s.Goroutines, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return s, nil
}

// GuestCgroups lists the guest cgroups (NAME.qemu) of this instance that
// exist now, in every controller hierarchy.
func (m *Mount) GuestCgroups() []string {
	name := m.InstanceName()
	data, err := os.ReadFile("/proc/self/cgroup")
	if name == "" || err != nil {
		return nil
	}
	unified := "/sys/fs/cgroup/unified"
	if _, err := os.Stat(unified); err != nil {
		unified = "/sys/fs/cgroup"
	}
	var found []string
	seen := map[string]bool{}
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
			guests, _ := filepath.Glob(filepath.Join(root, base, "qemufs-"+name, "*.qemu"))
			for _, g := range guests {
				if !seen[g] {
					seen[g] = true
					found = append(found, g)
				}
			}
		}
	}
	return found
}
