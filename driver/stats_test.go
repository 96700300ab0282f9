package driver

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/domain"
)

func TestParseProcStat(t *testing.T) {
	// Fields after the name: state ppid pgrp session tty tpgid flags minflt
	// cminflt majflt cmajflt utime stime ...
	tests := []struct {
		in   string
		want cpuTimes
		bad  bool
	}{
		{"42 (qemu-system-x86) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0", cpuTimes{3e9, 2.5e9, 0.5e9}, false},
		{"7 (a) b) c) R 1 1 1 0 -1 0 0 0 0 0 1 2 0 0", cpuTimes{30e6, 10e6, 20e6}, false},
		{"7 (CPU 0/TCG) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0", cpuTimes{}, false},
		{"7 no parens 1 2 3", cpuTimes{}, true},
		{"7 (short) S 1 2", cpuTimes{}, true},
		{"7 (x) S 1 1 1 0 -1 0 0 0 0 0 x y 0 0", cpuTimes{}, true},
	}
	for _, tt := range tests {
		got, err := parseProcStat([]byte(tt.in))
		if tt.bad != (err != nil) || got != tt.want {
			t.Errorf("parseProcStat(%q) = %+v, %v; want %+v (error %v)", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

func TestParseCgroup2CPUStat(t *testing.T) {
	got, err := parseCgroup2CPUStat([]byte("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n"))
	if err != nil || got != (cpuTimes{1500000, 1000000, 500000}) {
		t.Errorf("got %+v, %v", got, err)
	}
	if _, err := parseCgroup2CPUStat([]byte("usage_usec 1\n")); err == nil {
		t.Error("incomplete cpu.stat accepted")
	}
}

func TestParseVmRSSAndSchedstat(t *testing.T) {
	rss, err := parseVmRSS([]byte("Name:\tqemu\nVmPeak:\t 1 kB\nVmRSS:\t   123456 kB\nThreads:\t5\n"))
	if err != nil || rss != 123456 {
		t.Errorf("VmRSS %d, %v", rss, err)
	}
	if _, err := parseVmRSS([]byte("Name:\tx\n")); err == nil {
		t.Error("status without VmRSS accepted")
	}
	w, err := parseSchedstatWait([]byte("9000 777 12\n"))
	if err != nil || w != 777 {
		t.Errorf("schedstat wait %d, %v", w, err)
	}
	if _, err := parseSchedstatWait([]byte("1\n")); err == nil {
		t.Error("short schedstat accepted")
	}
}

func TestStateNumbers(t *testing.T) {
	tests := []struct {
		state       State
		reason      string
		st, reason2 int
	}{
		{StateRunning, ReasonBooted, 1, 1},
		{StateRunning, ReasonUnpaused, 1, 5},
		{StatePaused, ReasonUser, 3, 1},
		{StatePaused, "dumping", 3, 4},
		{StatePaused, ReasonShutdown, 3, 8},
		{StatePaused, ReasonIOError, 3, 5},
		{StatePaused, ReasonStartingUp, 3, 11},
		{StateShutoff, ReasonUnknown, 5, 0},
		{StateShutoff, ReasonShutdown, 5, 1},
		{StateShutoff, ReasonDestroyed, 5, 2},
		{StateShutoff, ReasonCrashed, 5, 3},
		{StateShutoff, "saved", 5, 5},
		{StateShutoff, ReasonFailed, 5, 6},
		{StateCrashed, ReasonPanicked, 6, 1},
		{StateRunning, "something new", 1, 0},
	}
	for _, tt := range tests {
		s, r := stateNumbers(tt.state, tt.reason)
		if s != tt.st || r != tt.reason2 {
			t.Errorf("%s (%s) = %d/%d, want %d/%d", tt.state, tt.reason, s, r, tt.st, tt.reason2)
		}
	}
}

func TestQdevIs(t *testing.T) {
	tests := []struct {
		qdev, id string
		want     bool
	}{
		{"/machine/peripheral/virtio-disk0/virtio-backend", "virtio-disk0", true},
		{"/machine/peripheral/virtio-disk0", "virtio-disk0", true},
		{"ide0-1-0", "ide0-1-0", true},
		{"/machine/peripheral/virtio-disk10/virtio-backend", "virtio-disk1", false},
		{"", "", false},
		{"sata0-0-0", "sata0-0-1", false},
	}
	for _, tt := range tests {
		if got := qdevIs(tt.qdev, tt.id); got != tt.want {
			t.Errorf("qdevIs(%q, %q) = %v", tt.qdev, tt.id, got)
		}
	}
}

// TestWriteBlockStats matches QEMU's answers (as QEMU 7.2 gives them for
// -blockdev disks: no device name, a QOM path or id as qdev) to the disks.
func TestWriteBlockStats(t *testing.T) {
	info := `[{"device":"","qdev":"/machine/peripheral/virtio-disk0/virtio-backend","inserted":{"file":"/d/a.qcow2","image":{"virtual-size":1073741824,"actual-size":200704}}},
	          {"device":"","qdev":"ide0-1-0","removable":true}]`
	stats := `[{"device":"","qdev":"ide0-1-0","stats":{"rd_bytes":0}},
	           {"device":"","qdev":"/machine/peripheral/virtio-disk0/virtio-backend","stats":{"rd_bytes":4096,"wr_bytes":512,"rd_operations":3,"wr_operations":1,"flush_operations":2,"rd_total_time_ns":10,"wr_total_time_ns":20,"flush_total_time_ns":30,"wr_highest_offset":8192}}]`
	var bi []statsBlockInfo
	var bs []statsBlockStat
	if err := json.Unmarshal([]byte(info), &bi); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(stats), &bs); err != nil {
		t.Fatal(err)
	}
	disks := []domain.Disk{
		{Target: "vda", Source: "/d/a.qcow2", Alias: "virtio-disk0"},
		{Target: "hdc", Device: "cdrom", Alias: "ide0-1-0"},
		{Target: "vdb", Source: "/d/b.raw", Alias: "virtio-disk1"}, // QEMU lost it
	}
	var l statsList
	writeBlockStats(&l, disks, bi, bs)
	want := `block.count=3
block.0.name=vda
block.0.path=/d/a.qcow2
block.0.rd.reqs=3
block.0.rd.bytes=4096
block.0.rd.times=10
block.0.wr.reqs=1
block.0.wr.bytes=512
block.0.wr.times=20
block.0.fl.reqs=2
block.0.fl.times=30
block.0.allocation=8192
block.0.capacity=1073741824
block.0.physical=200704
block.1.name=hdc
block.1.rd.reqs=0
block.1.rd.bytes=0
block.1.rd.times=0
block.1.wr.reqs=0
block.1.wr.bytes=0
block.1.wr.times=0
block.1.fl.reqs=0
block.1.fl.times=0
block.2.name=vdb
block.2.path=/d/b.raw
`
	if got := l.b.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// TestNetCounters reads a fake /sys/class/net and the HMP tap lookup.
func TestNetCounters(t *testing.T) {
	dir := t.TempDir()
	old := sysClassNet
	sysClassNet = dir
	defer func() { sysClassNet = old }()
	st := filepath.Join(dir, "tap7", "statistics")
	os.MkdirAll(st, 0o755)
	vals := map[string]int{"rx_bytes": 1, "rx_packets": 2, "rx_errors": 3, "rx_dropped": 4, "tx_bytes": 5, "tx_packets": 6, "tx_errors": 7, "tx_dropped": 8}
	for k, v := range vals {
		os.WriteFile(filepath.Join(st, k), []byte(strconv.Itoa(v)+"\n"), 0o644)
	}
	c, err := readNetCounters("tap7")
	if err != nil || c != (netCounters{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Fatalf("counters %+v, %v", c, err)
	}
	if s := c.swapped(); s != (netCounters{5, 6, 7, 8, 1, 2, 3, 4}) {
		t.Errorf("swapped %+v", s)
	}
	if _, err := readNetCounters("nope0"); err == nil {
		t.Error("missing interface read")
	}
	hmp := "net0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n \\ hostnet0: index=0,type=tap,ifname=tap0,script=no,downscript=no\r\nnet1: index=0,type=nic\r\n \\ hostnet1: index=0,type=user,net=10.0.2.0,restrict=off\r\n"
	got := map[string]string{}
	for _, m := range ifnameRe.FindAllStringSubmatch(hmp, -1) {
		got[m[1]] = m[2]
	}
	if len(got) != 1 || got["hostnet0"] != "tap0" {
		t.Errorf("taps from HMP: %v", got)
	}
	for typ, want := range map[string]bool{"ethernet": true, "bridge": true, "network": true, "user": false, "vhostuser": false} {
		if tapBacked(typ) != want {
			t.Errorf("tapBacked(%s) = %v", typ, !want)
		}
	}
}

func TestParseScope(t *testing.T) {
	tests := []struct {
		args         []string
		active       bool
		live, config bool
		rest         string
		bad          bool
	}{
		{[]string{"5"}, true, true, false, "5", false},
		{[]string{"5"}, false, false, true, "5", false},
		{[]string{"--current", "5"}, true, true, false, "5", false},
		{[]string{"5", "--config"}, true, false, true, "5", false},
		{[]string{"--live", "--config", "5"}, true, true, true, "5", false},
		{[]string{"--live", "5"}, false, true, false, "5", false},
		{[]string{"--current", "--live", "5"}, true, false, false, "", true},
		{[]string{"--maximum", "5"}, true, true, false, "--maximum 5", false},
	}
	for _, tt := range tests {
		s, rest, err := parseOpsScope(tt.args, tt.active)
		if tt.bad {
			if err == nil {
				t.Errorf("%v: no error", tt.args)
			}
			continue
		}
		if err != nil || s.live != tt.live || s.config != tt.config || strings.Join(rest, " ") != tt.rest {
			t.Errorf("%v active=%v: %+v %v %v", tt.args, tt.active, s, rest, err)
		}
	}
}

func TestParseKey(t *testing.T) {
	tests := []struct {
		codeset, in string
		want        qmpKey
		bad         bool
	}{
		{"linux", "KEY_A", qmpKey{"qcode", "a"}, false},
		{"linux", "key_leftctrl", qmpKey{"qcode", "ctrl"}, false},
		{"linux", "KEY_ENTER", qmpKey{"qcode", "ret"}, false},
		{"linux", "KEY_SPACE", qmpKey{"qcode", "spc"}, false},
		{"linux", "30", qmpKey{"qcode", "a"}, false},
		{"linux", "0x1c", qmpKey{"qcode", "ret"}, false},
		{"linux", "97", qmpKey{"qcode", "ctrl_r"}, false},
		{"qnum", "30", qmpKey{"number", int64(30)}, false},
		{"qnum", "0x9d", qmpKey{"number", int64(0x9d)}, false},
		{"qnum", "0", qmpKey{}, true},
		{"qnum", "KEY_A", qmpKey{}, true},
		{"linux", "KEY_NOPE", qmpKey{}, true},
		{"linux", "9999", qmpKey{}, true},
		{"linux", "", qmpKey{}, true},
	}
	for _, tt := range tests {
		got, err := parseKey(tt.codeset, tt.in)
		if tt.bad != (err != nil) || got != tt.want {
			t.Errorf("parseKey(%s, %q) = %+v, %v; want %+v (error %v)", tt.codeset, tt.in, got, err, tt.want, tt.bad)
		}
	}
}

// TestKeycodesMatchKernel checks the table's numbers against the kernel's
// header, where it is installed, and that names and numbers are unique.
func TestKeycodesMatchKernel(t *testing.T) {
	names, nums, qcodes := map[string]bool{}, map[int]bool{}, map[string]bool{}
	for _, k := range linuxKeys {
		if names[k.name] || nums[k.linux] || qcodes[k.qcode] {
			t.Errorf("duplicate in %+v", k)
		}
		names[k.name], nums[k.linux], qcodes[k.qcode] = true, true, true
	}
	data, err := os.ReadFile("/usr/include/linux/input-event-codes.h")
	if err != nil {
		t.Skip("no kernel header to compare with")
	}
	re := regexp.MustCompile(`(?m)^#define\s+(KEY_\w+)\s+(0x[0-9a-fA-F]+|\d+)\b`)
	kernel := map[string]int{}
	for _, m := range re.FindAllStringSubmatch(string(data), -1) {
		n, _ := strconv.ParseInt(m[2], 0, 32)
		kernel[m[1]] = int(n)
	}
	for _, k := range linuxKeys {
		if n, ok := kernel[k.name]; !ok || n != k.linux {
			t.Errorf("%s is %d here, %d (present %v) in the kernel header", k.name, k.linux, n, ok)
		}
	}
}
