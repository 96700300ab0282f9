package driver

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/security/cgroup"
)

// The stats file: `virsh domstats` as key=value lines, one group after
// another (state, cpu, balloon, vcpu, block, net). Values are libvirt's:
// times in nanoseconds, memory in KiB, sizes and byte counters in bytes.

// statsTimeout bounds the QMP queries of one read of stats.
const statsTimeout = 10 * time.Second

// userHZ is the unit of the times in /proc/PID/stat (USER_HZ, 100 on every
// Linux architecture qemufs runs on).
const userHZ = 100

// libvirt's virDomainState numbers.
var stateCodes = map[State]int{
	StateRunning: 1,
	StatePaused:  3,
	StateShutoff: 5,
	StateCrashed: 6,
}

// libvirt's reason numbers per state, by the reason's name as virsh
// prints it (and as qemufs's state file shows it). A reason not listed
// is 0, "unknown".
var reasonCodes = map[State]map[string]int{
	StateRunning: {"unknown": 0, "booted": 1, "migrated": 2, "restored": 3, "from snapshot": 4,
		"unpaused": 5, "migration canceled": 6, "save canceled": 7, "event wakeup": 8, "crashed": 9,
		"post-copy": 10, "post-copy failed": 11},
	StatePaused: {"unknown": 0, "user": 1, "migrating": 2, "saving": 3, "dumping": 4, "I/O error": 5,
		"watchdog": 6, "from snapshot": 7, "shutting down": 8, "creating snapshot": 9, "crashed": 10,
		"starting up": 11, "post-copy": 12, "post-copy failed": 13, "api error": 14,
		ReasonShutdown: 8, // on_poweroff=preserve: libvirt's "shutting down"
	},
	StateShutoff: {"unknown": 0, "shutdown": 1, "destroyed": 2, "crashed": 3, "migrated": 4,
		"saved": 5, "failed": 6, "from snapshot": 7, "daemon": 8},
	StateCrashed: {"unknown": 0, "panicked": 1},
}

// stateNumbers returns libvirt's numbers for a state and its reason.
func stateNumbers(s State, reason string) (state, why int) {
	return stateCodes[s], reasonCodes[s][reason]
}

// statsList collects key=value lines in order.
type statsList struct{ b bytes.Buffer }

func (l *statsList) add(key string, value any) { fmt.Fprintf(&l.b, "%s=%v\n", key, value) }

// Stats returns the domain's statistics as `virsh domstats` gives them, one
// key=value per line. A shut-off domain has the state lines only; an empty
// slot has nothing.
func (d *Driver) Stats(ctx context.Context, name string) ([]byte, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	dm.mu.Lock()
	st, reason, r := dm.state, dm.reason, dm.run
	dm.mu.Unlock()
	if st == StateUndefined {
		return nil, nil
	}
	var l statsList
	sn, rn := stateNumbers(st, reason)
	l.add("state.state", sn)
	l.add("state.state.name", st)
	l.add("state.reason", rn)
	l.add("state.reason.name", reason)
	if r == nil {
		return l.b.Bytes(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	pid, live := r.proc.Pid, r.def()
	if err := r.cpuStats(&l, pid); err != nil {
		return nil, errorf(ErrIO, "stats %s: %w", name, err)
	}
	if err := r.balloonStats(ctx, &l, pid, live); err != nil {
		return nil, errorf(ErrIO, "stats %s: %w", name, err)
	}
	if err := r.vcpuStats(ctx, &l, pid, live); err != nil {
		return nil, errorf(ErrIO, "stats %s: %w", name, err)
	}
	if err := r.blockStats(ctx, &l, live); err != nil {
		return nil, errorf(ErrIO, "stats %s: %w", name, err)
	}
	r.netStats(ctx, &l, live)
	return l.b.Bytes(), nil
}

// cpuTimes are a process's CPU times in nanoseconds.
type cpuTimes struct{ total, user, system uint64 }

// cpuStats gives cpu.time/user/system: from the guest's own cgroup when it
// has one (precise, and it counts every thread QEMU ever had), else from
// /proc/PID/stat.
func (r *run) cpuStats(l *statsList, pid int) error {
	t, err := r.cgroupCPU()
	if err != nil {
		t, err = procCPU(fmt.Sprintf("/proc/%d/stat", pid))
	}
	if err != nil {
		return fmt.Errorf("cpu: %w", err)
	}
	l.add("cpu.time", t.total)
	l.add("cpu.user", t.user)
	l.add("cpu.system", t.system)
	return nil
}

// cgroupCPU reads the CPU accounting of the guest's cgroup.
func (r *run) cgroupCPU() (cpuTimes, error) {
	r.mu.Lock()
	sec := r.sec
	r.mu.Unlock()
	if sec == nil || sec.Cgroup == nil {
		return cpuTimes{}, os.ErrNotExist
	}
	g := sec.Cgroup
	if g.Version == cgroup.V2 {
		data, err := os.ReadFile(filepath.Join(g.Dirs[""], "cpu.stat"))
		if err != nil {
			return cpuTimes{}, err
		}
		return parseCgroup2CPUStat(data)
	}
	dir := g.Dirs["cpuacct"]
	if dir == "" {
		return cpuTimes{}, os.ErrNotExist
	}
	var t cpuTimes
	for _, f := range []struct {
		file string
		v    *uint64
	}{{"cpuacct.usage", &t.total}, {"cpuacct.usage_user", &t.user}, {"cpuacct.usage_sys", &t.system}} {
		data, err := os.ReadFile(filepath.Join(dir, f.file))
		if err != nil {
			return cpuTimes{}, err
		}
		if *f.v, err = strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64); err != nil {
			return cpuTimes{}, fmt.Errorf("%s: %w", f.file, err)
		}
	}
	return t, nil
}

// parseCgroup2CPUStat reads usage_usec, user_usec and system_usec from a
// cgroup v2 cpu.stat, in nanoseconds.
func parseCgroup2CPUStat(data []byte) (cpuTimes, error) {
	var t cpuTimes
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "usage_usec":
			t.total = n * 1000
			found++
		case "user_usec":
			t.user = n * 1000
			found++
		case "system_usec":
			t.system = n * 1000
			found++
		}
	}
	if found != 3 {
		return cpuTimes{}, fmt.Errorf("cpu.stat lacks usage_usec, user_usec or system_usec")
	}
	return t, nil
}

// procCPU reads utime and stime of a /proc/PID/stat or
// /proc/PID/task/TID/stat file, in nanoseconds.
func procCPU(path string) (cpuTimes, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return cpuTimes{}, err
	}
	return parseProcStat(data)
}

// parseProcStat parses the utime and stime fields (14 and 15) of a
// proc stat line; the command name (field 2) may hold spaces and ')'.
func parseProcStat(data []byte) (cpuTimes, error) {
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return cpuTimes{}, fmt.Errorf("malformed stat %.80q", s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return cpuTimes{}, fmt.Errorf("malformed stat %.80q", s)
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	sy, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return cpuTimes{}, fmt.Errorf("malformed stat %.80q", s)
	}
	const ns = uint64(time.Second) / userHZ
	return cpuTimes{total: (u + sy) * ns, user: u * ns, system: sy * ns}, nil
}

// parseSchedstatWait returns the run-queue wait time (the second field of
// /proc/.../schedstat), in nanoseconds.
func parseSchedstatWait(data []byte) (uint64, error) {
	f := strings.Fields(string(data))
	if len(f) < 2 {
		return 0, fmt.Errorf("malformed schedstat %q", data)
	}
	return strconv.ParseUint(f[1], 10, 64)
}

// parseVmRSS returns VmRSS of a /proc/PID/status, in KiB.
func parseVmRSS(data []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
		return strconv.ParseUint(v, 10, 64)
	}
	return 0, fmt.Errorf("no VmRSS line")
}

// liveHasBalloon reports whether the live definition has a working balloon.
func liveHasBalloon(live *domain.Domain) bool {
	m := live.MemBalloon().Model
	return m != "" && m != "none"
}

// balloonStats gives balloon.current (what the guest has now: QEMU's
// balloon when there is one, else currentMemory), balloon.maximum
// (<memory>) and balloon.rss (QEMU's resident memory).
func (r *run) balloonStats(ctx context.Context, l *statsList, pid int, live *domain.Domain) error {
	cur := live.CurrentMemoryKiB()
	if liveHasBalloon(live) {
		var b struct {
			Actual uint64 `json:"actual"`
		}
		if err := r.mon.Execute(ctx, "query-balloon", nil, &b); err != nil {
			return fmt.Errorf("balloon: %w", err)
		}
		cur = b.Actual >> 10
	}
	l.add("balloon.current", cur)
	l.add("balloon.maximum", live.MemoryKiB())
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		if rss, err := parseVmRSS(data); err == nil {
			l.add("balloon.rss", rss)
		}
	}
	return nil
}

// statsCPU is one entry of query-cpus-fast.
type statsCPU struct {
	Index  int `json:"cpu-index"`
	Thread int `json:"thread-id"`
}

// statsQueryCPUs returns the vCPUs QEMU runs, by index.
func (r *run) statsQueryCPUs(ctx context.Context) ([]statsCPU, error) {
	var cpus []statsCPU
	if err := r.mon.Execute(ctx, "query-cpus-fast", nil, &cpus); err != nil {
		return nil, err
	}
	sort.Slice(cpus, func(i, j int) bool { return cpus[i].Index < cpus[j].Index })
	return cpus, nil
}

// vcpuStats gives vcpu.current/maximum and, per online vCPU (by its QEMU
// index), state (1: running, libvirt's VIR_VCPU_RUNNING), time (the
// thread's CPU time) and wait (its time waiting for a host CPU).
func (r *run) vcpuStats(ctx context.Context, l *statsList, pid int, live *domain.Domain) error {
	cpus, err := r.statsQueryCPUs(ctx)
	if err != nil {
		return fmt.Errorf("vcpu: %w", err)
	}
	l.add("vcpu.current", len(cpus))
	l.add("vcpu.maximum", live.MaxVCPUs())
	for _, c := range cpus {
		p := fmt.Sprintf("vcpu.%d.", c.Index)
		l.add(p+"state", 1)
		task := fmt.Sprintf("/proc/%d/task/%d/", pid, c.Thread)
		if t, err := procCPU(task + "stat"); err == nil {
			l.add(p+"time", t.total)
		}
		if data, err := os.ReadFile(task + "schedstat"); err == nil {
			if w, err := parseSchedstatWait(data); err == nil {
				l.add(p+"wait", w)
			}
		}
	}
	return nil
}

// statsBlockInfo is one entry of query-block.
type statsBlockInfo struct {
	Device   string `json:"device"`
	QDev     string `json:"qdev"`
	Inserted *struct {
		File  string `json:"file"`
		Image struct {
			VirtualSize uint64 `json:"virtual-size"`
			ActualSize  uint64 `json:"actual-size"`
		} `json:"image"`
	} `json:"inserted"`
}

// statsBlockStat is one entry of query-blockstats.
type statsBlockStat struct {
	Device string `json:"device"`
	QDev   string `json:"qdev"`
	Stats  struct {
		RdBytes      uint64 `json:"rd_bytes"`
		WrBytes      uint64 `json:"wr_bytes"`
		RdOps        uint64 `json:"rd_operations"`
		WrOps        uint64 `json:"wr_operations"`
		FlushOps     uint64 `json:"flush_operations"`
		RdTime       uint64 `json:"rd_total_time_ns"`
		WrTime       uint64 `json:"wr_total_time_ns"`
		FlushTime    uint64 `json:"flush_total_time_ns"`
		WrHighOffset uint64 `json:"wr_highest_offset"`
	} `json:"stats"`
}

// qdevIs reports whether QEMU's qdev field (an id, or a QOM path such as
// /machine/peripheral/virtio-disk0/virtio-backend) names device id.
func qdevIs(qdev, id string) bool {
	if id == "" {
		return false
	}
	p := "/machine/peripheral/" + id
	return qdev == id || qdev == p || strings.HasPrefix(qdev, p+"/")
}

// blockStats gives block.count and, per <disk> in definition order, its
// target name, source path, I/O counters (rd/wr/fl reqs, bytes, times) and
// sizes: allocation (highest written offset, as libvirt's QEMU driver),
// capacity (the guest-visible size) and physical (what the image uses on
// the host).
func (r *run) blockStats(ctx context.Context, l *statsList, live *domain.Domain) error {
	var info []statsBlockInfo
	var stats []statsBlockStat
	if err := r.mon.Execute(ctx, "query-block", nil, &info); err != nil {
		return fmt.Errorf("block: %w", err)
	}
	if err := r.mon.Execute(ctx, "query-blockstats", nil, &stats); err != nil {
		return fmt.Errorf("block: %w", err)
	}
	writeBlockStats(l, live.Disks(), info, stats)
	return nil
}

// writeBlockStats matches the definition's disks to QEMU's entries by
// device id (the disk's alias) and writes their lines.
func writeBlockStats(l *statsList, disks []domain.Disk, info []statsBlockInfo, stats []statsBlockStat) {
	l.add("block.count", len(disks))
	for i, dk := range disks {
		p := fmt.Sprintf("block.%d.", i)
		l.add(p+"name", dk.Target)
		var bi *statsBlockInfo
		for j := range info {
			if qdevIs(info[j].QDev, dk.Alias) || info[j].Device != "" && info[j].Device == "drive-"+dk.Alias {
				bi = &info[j]
				break
			}
		}
		if dk.Source != "" && (bi == nil || bi.Inserted != nil) {
			l.add(p+"path", dk.Source)
		}
		for j := range stats {
			s := &stats[j]
			if !qdevIs(s.QDev, dk.Alias) && (s.Device == "" || s.Device != "drive-"+dk.Alias) {
				continue
			}
			l.add(p+"rd.reqs", s.Stats.RdOps)
			l.add(p+"rd.bytes", s.Stats.RdBytes)
			l.add(p+"rd.times", s.Stats.RdTime)
			l.add(p+"wr.reqs", s.Stats.WrOps)
			l.add(p+"wr.bytes", s.Stats.WrBytes)
			l.add(p+"wr.times", s.Stats.WrTime)
			l.add(p+"fl.reqs", s.Stats.FlushOps)
			l.add(p+"fl.times", s.Stats.FlushTime)
			if bi != nil && bi.Inserted != nil {
				l.add(p+"allocation", s.Stats.WrHighOffset)
			}
			break
		}
		if bi != nil && bi.Inserted != nil {
			l.add(p+"capacity", bi.Inserted.Image.VirtualSize)
			l.add(p+"physical", bi.Inserted.Image.ActualSize)
		}
	}
}

// netCounters are a host interface's counters, as /sys/class/net shows them.
type netCounters struct{ rxBytes, rxPkts, rxErrs, rxDrop, txBytes, txPkts, txErrs, txDrop uint64 }

// sysClassNet is where interface counters are read; a variable for tests.
var sysClassNet = "/sys/class/net"

// readNetCounters reads the statistics of host interface ifname.
func readNetCounters(ifname string) (netCounters, error) {
	var c netCounters
	dir := filepath.Join(sysClassNet, ifname, "statistics")
	for _, f := range []struct {
		name string
		v    *uint64
	}{
		{"rx_bytes", &c.rxBytes}, {"rx_packets", &c.rxPkts}, {"rx_errors", &c.rxErrs}, {"rx_dropped", &c.rxDrop},
		{"tx_bytes", &c.txBytes}, {"tx_packets", &c.txPkts}, {"tx_errors", &c.txErrs}, {"tx_dropped", &c.txDrop},
	} {
		data, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return netCounters{}, err
		}
		n, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
		if err != nil {
			return netCounters{}, fmt.Errorf("%s: %w", f.name, err)
		}
		*f.v = n
	}
	return c, nil
}

// swapped turns a tap's host-side counters into the guest's view: what the
// host sends into the tap is what the guest receives.
func (c netCounters) swapped() netCounters {
	return netCounters{c.txBytes, c.txPkts, c.txErrs, c.txDrop, c.rxBytes, c.rxPkts, c.rxErrs, c.rxDrop}
}

// ifnameRe finds a tap's name in HMP `info network`, for a NIC whose
// definition names none (QEMU then picks tapN).
var ifnameRe = regexp.MustCompile(`(?m)^\s*\\?\s*(\S+):.*\bifname=([^,\s]+)`)

// netStats gives net.count (every <interface>) and, for each NIC that has
// a host interface (a tap: type ethernet, bridge, network), its name and
// counters. A NIC with no host interface (user-mode slirp or passt,
// socket, vhost-user, null) has no host counters: its net.N lines are left
// out, as libvirt does, and net.count still counts it. Counters are the
// guest's view (rx = received by the guest) for bridge and network NICs
// and the host interface's own view for type='ethernet', as libvirt.
func (r *run) netStats(ctx context.Context, l *statsList, live *domain.Domain) {
	nics, targets := live.Interfaces(), live.InterfaceTargets()
	l.add("net.count", len(nics))
	var hmpTaps map[string]string
	for i, n := range nics {
		ifname := targets[i]
		if ifname == "" && tapBacked(n.Type) {
			if hmpTaps == nil {
				hmpTaps = map[string]string{}
				if out, err := r.mon.HMP(ctx, "info network"); err == nil {
					for _, m := range ifnameRe.FindAllStringSubmatch(out, -1) {
						hmpTaps[m[1]] = m[2]
					}
				}
			}
			ifname = hmpTaps["host"+n.Alias]
		}
		if ifname == "" || !tapBacked(n.Type) {
			continue
		}
		c, err := readNetCounters(ifname)
		if err != nil {
			continue
		}
		if n.Type != "ethernet" {
			c = c.swapped()
		}
		p := fmt.Sprintf("net.%d.", i)
		l.add(p+"name", ifname)
		l.add(p+"rx.bytes", c.rxBytes)
		l.add(p+"rx.pkts", c.rxPkts)
		l.add(p+"rx.errs", c.rxErrs)
		l.add(p+"rx.drop", c.rxDrop)
		l.add(p+"tx.bytes", c.txBytes)
		l.add(p+"tx.pkts", c.txPkts)
		l.add(p+"tx.errs", c.txErrs)
		l.add(p+"tx.drop", c.txDrop)
	}
}

// tapBacked reports whether an interface type has a host tap whose
// counters are the NIC's.
func tapBacked(typ string) bool {
	switch typ {
	case "ethernet", "bridge", "network":
		return true
	}
	return false
}
