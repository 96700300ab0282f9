package harness

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// netnsWrap returns the command line that runs argv in a new network
// namespace with its loopback up: the daemon's bridges, taps, firewall
// tables and dnsmasq then never touch the host's network.
func netnsWrap(argv []string) []string {
	return append([]string{"unshare", "--net", "sh", "-c", `ip link set lo up && exec "$@"`, "sh"}, argv...)
}

// InNetNS runs a command in the daemon's network namespace (nsenter), for
// checks of bridges and firewall tables; it returns the combined output.
func (m *Mount) InNetNS(args ...string) (string, error) {
	pid := m.DaemonPid()
	out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(pid), "-n"}, args...)...).CombinedOutput()
	return string(out), err
}

// networkDir is where the instance keeps active networks' status.
func (m *Mount) networkDir() string { return filepath.Join(m.RunDir, "network") }

// stopNetworks destroys the instance's active networks through the mount,
// and ends any dnsmasq left running, by the pid in its status file.
func (m *Mount) stopNetworks() {
	entries, _ := os.ReadDir(m.Path("networks"))
	for _, e := range entries {
		state, _ := os.ReadFile(m.Path("networks", e.Name(), "state"))
		if strings.TrimSpace(string(state)) == "active" {
			m.Write("destroy\n", "networks", e.Name(), "ctl")
		}
	}
	files, _ := filepath.Glob(filepath.Join(m.networkDir(), "*.json"))
	for _, f := range files {
		var st struct {
			DnsmasqPid int `json:"dnsmasqPid"`
		}
		data, _ := os.ReadFile(f)
		if json.Unmarshal(data, &st) == nil && st.DnsmasqPid > 0 && isExe(st.DnsmasqPid, "dnsmasq") {
			WaitKill(st.DnsmasqPid, syscall.SIGKILL)
		}
	}
}

// isExe guards against signalling a recycled pid.
func isExe(pid int, name string) bool {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return err == nil && filepath.Base(exe) == name
}
