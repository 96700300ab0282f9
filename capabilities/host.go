package capabilities

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
)

// probeHost reads the host's facts from /proc and /sys under root ("/" on
// a real host; tests give a fixture tree). Missing files leave fields empty:
// a container or another OS still gets a usable <host>.
func probeHost(root string) Host {
	h := Host{Arch: HostArch(), MigrationTransports: []string{"tcp"}}
	rd := func(p string) []byte {
		b, _ := os.ReadFile(filepath.Join(root, p))
		return b
	}
	ci := parseCPUInfo(rd("proc/cpuinfo"))
	h.CPU = HostCPU{
		Vendor: ci.vendor(), ModelName: ci.modelName, Microcode: ci.microcode,
		Family: ci.family, ModelNum: ci.model, Stepping: ci.stepping, PhysAddrBits: ci.physBits,
		Flags: ci.flags,
	}
	if mc := strings.TrimSpace(string(rd("sys/devices/system/cpu/cpu0/microcode/version"))); mc != "" && h.CPU.Microcode == "" {
		h.CPU.Microcode = mc
	}
	h.CPU.Microcode = microcodeDecimal(h.CPU.Microcode)

	cpus := parseCPUList(strings.TrimSpace(string(rd("sys/devices/system/cpu/online"))))
	if len(cpus) == 0 {
		for i := range max(ci.processors, runtime.NumCPU()) {
			cpus = append(cpus, i)
		}
	}
	topo := readTopology(root, cpus)
	h.CPU.Sockets, h.CPU.Dies, h.CPU.Cores, h.CPU.Threads = summarizeTopology(topo)

	h.PageSizesKiB = []uint64{basePageKiB}
	huge, _ := filepath.Glob(filepath.Join(root, "sys/kernel/mm/hugepages/hugepages-*kB"))
	for _, d := range sortHuge(huge) {
		if n := hugeSize(d); n > 0 {
			h.PageSizesKiB = append(h.PageSizesKiB, n)
		}
	}
	h.NUMA = readNUMA(root, cpus, topo, h.PageSizesKiB, rd)
	h.Caches = readCaches(root, cpus)
	h.IOMMU = nonEmptyDir(filepath.Join(root, "sys/kernel/iommu_groups")) || nonEmptyDir(filepath.Join(root, "sys/class/iommu"))
	state := strings.Fields(string(rd("sys/power/state")))
	mem, disk := contains(state, "mem"), contains(state, "disk")
	if mem {
		h.PowerManagement = append(h.PowerManagement, "suspend_mem")
	}
	if disk {
		h.PowerManagement = append(h.PowerManagement, "suspend_disk")
	}
	if mem && disk {
		h.PowerManagement = append(h.PowerManagement, "suspend_hybrid")
	}
	h.UUID = hostUUID(rd)
	h.LaunchSecurity = probeLaunchSecurity(root)
	if root == "/" || root == "" {
		h.SWTPM, _ = exec.LookPath("swtpm")
	}
	return h
}

// basePageKiB is the host's base page size.
var basePageKiB = uint64(os.Getpagesize() / 1024)

// cpuInfo is the first processor of /proc/cpuinfo.
type cpuInfo struct {
	vendorID, modelName, microcode string
	implementer, part              string // ARM
	family, model, stepping        int
	physBits                       int
	flags                          []string
	processors                     int
}

func parseCPUInfo(data []byte) cpuInfo {
	var ci cpuInfo
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	first := true
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if k == "processor" {
			ci.processors++
			if ci.processors > 1 {
				first = false
			}
		}
		if !first {
			continue
		}
		switch k {
		case "vendor_id":
			ci.vendorID = v
		case "model name":
			ci.modelName = v
		case "cpu family":
			ci.family, _ = strconv.Atoi(v)
		case "model":
			ci.model, _ = strconv.Atoi(v)
		case "stepping":
			ci.stepping, _ = strconv.Atoi(v)
		case "microcode":
			ci.microcode = v
		case "flags", "Features":
			ci.flags = strings.Fields(v)
		case "CPU implementer":
			ci.implementer = v
		case "CPU part":
			ci.part = v
		case "address sizes":
			f := strings.Fields(v)
			if len(f) > 0 {
				ci.physBits, _ = strconv.Atoi(f[0])
			}
		}
	}
	return ci
}

// vendor is the libvirt vendor name.
func (ci cpuInfo) vendor() string {
	switch ci.vendorID {
	case "GenuineIntel":
		return "Intel"
	case "AuthenticAMD":
		return "AMD"
	case "HygonGenuine":
		return "Hygon"
	}
	switch strings.ToLower(ci.implementer) {
	case "0x41":
		return "ARM"
	case "0x51":
		return "Qualcomm"
	case "0x61":
		return "Apple"
	case "0x48":
		return "HiSilicon"
	case "0x43":
		return "Cavium"
	}
	return ci.vendorID
}

// cpuidVendor maps a libvirt vendor name back to the CPUID vendor string
// QEMU's x86 models carry.
func cpuidVendor(v string) string {
	switch v {
	case "Intel":
		return "GenuineIntel"
	case "AMD":
		return "AuthenticAMD"
	case "Hygon":
		return "HygonGenuine"
	}
	return v
}

// microcodeDecimal turns "0xa0011d1" into "167776721", libvirt's format.
func microcodeDecimal(s string) string {
	if s == "" {
		return ""
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(s), "0x"), 16, 64)
	if err != nil {
		return s
	}
	return strconv.FormatUint(n, 10)
}

// parseCPUList parses the kernel's "0-3,8,10-11" lists.
func parseCPUList(s string) []int {
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				continue
			}
		}
		for i := a; i <= b; i++ {
			out = append(out, i)
		}
	}
	return out
}

// formatCPUList is the inverse of parseCPUList, for cache bank cpus='...'.
func formatCPUList(cpus []int) string {
	var parts []string
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(cpus[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", cpus[i], cpus[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

func readInt(path string, def int) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return def
	}
	return n
}

// readTopology places each cpu (socket, die, core, thread siblings).
func readTopology(root string, cpus []int) map[int]CPUTopology {
	topo := make(map[int]CPUTopology, len(cpus))
	for _, c := range cpus {
		d := filepath.Join(root, "sys/devices/system/cpu", "cpu"+strconv.Itoa(c), "topology")
		t := CPUTopology{ID: c,
			SocketID: readInt(filepath.Join(d, "physical_package_id"), 0),
			DieID:    max(readInt(filepath.Join(d, "die_id"), 0), 0),
			CoreID:   readInt(filepath.Join(d, "core_id"), c),
		}
		if b, err := os.ReadFile(filepath.Join(d, "thread_siblings_list")); err == nil {
			t.Siblings = parseCPUList(strings.TrimSpace(string(b)))
		}
		if len(t.Siblings) == 0 {
			t.Siblings = []int{c}
		}
		topo[c] = t
	}
	return topo
}

// summarizeTopology counts sockets, dies per socket, cores per die and
// threads per core, as libvirt's <topology> does.
func summarizeTopology(topo map[int]CPUTopology) (sockets, dies, cores, threads int) {
	sk := map[int]bool{}
	dk := map[[2]int]bool{}
	ck := map[[3]int]bool{}
	threads = 1
	for _, t := range topo {
		sk[t.SocketID] = true
		dk[[2]int{t.SocketID, t.DieID}] = true
		ck[[3]int{t.SocketID, t.DieID, t.CoreID}] = true
		threads = max(threads, len(t.Siblings))
	}
	sockets = max(len(sk), 1)
	dies = max(len(dk)/sockets, 1)
	cores = max(len(ck)/(sockets*dies), 1)
	return sockets, dies, cores, threads
}

// readNUMA reads the NUMA cells; a host without NUMA in sysfs is one cell
// with all memory and cpus.
func readNUMA(root string, cpus []int, topo map[int]CPUTopology, pageSizes []uint64, rd func(string) []byte) []NUMACell {
	nodes, _ := filepath.Glob(filepath.Join(root, "sys/devices/system/node/node[0-9]*"))
	var cells []NUMACell
	for _, n := range nodes {
		id, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(n), "node"))
		if err != nil {
			continue
		}
		c := NUMACell{ID: id, MemoryKiB: meminfoKiB(readFile(filepath.Join(n, "meminfo")), "MemTotal")}
		c.CPUs = parseCPUList(strings.TrimSpace(string(readFile(filepath.Join(n, "cpulist")))))
		for i, d := range strings.Fields(string(readFile(filepath.Join(n, "distance")))) {
			if v, err := strconv.Atoi(d); err == nil {
				c.Distances = append(c.Distances, NUMADistance{ID: i, Value: v})
			}
		}
		c.Pages = cellPages(c.MemoryKiB, pageSizes, func(size uint64) uint64 {
			return uint64(readInt(filepath.Join(n, "hugepages", fmt.Sprintf("hugepages-%dkB", size), "nr_hugepages"), 0))
		})
		cells = append(cells, c)
	}
	if len(cells) == 0 {
		c := NUMACell{ID: 0, MemoryKiB: meminfoKiB(rd("proc/meminfo"), "MemTotal"), CPUs: cpus,
			Distances: []NUMADistance{{ID: 0, Value: 10}}}
		c.Pages = cellPages(c.MemoryKiB, pageSizes, func(size uint64) uint64 {
			return uint64(readInt(filepath.Join(root, "sys/kernel/mm/hugepages", fmt.Sprintf("hugepages-%dkB", size), "nr_hugepages"), 0))
		})
		cells = append(cells, c)
	}
	sort.Slice(cells, func(i, j int) bool { return cells[i].ID < cells[j].ID })
	for i := range cells {
		for _, cpu := range cells[i].CPUs {
			t, ok := topo[cpu]
			if !ok {
				t = CPUTopology{ID: cpu, CoreID: cpu, Siblings: []int{cpu}}
			}
			cells[i].Topology = append(cells[i].Topology, t)
		}
	}
	return cells
}

// cellPages counts pages per size: base pages are what is left of the
// cell's memory once huge pages are taken out.
func cellPages(memKiB uint64, sizes []uint64, huge func(size uint64) uint64) []PageCount {
	if len(sizes) == 0 || sizes[0] == 0 {
		return nil
	}
	out := []PageCount{{SizeKiB: sizes[0]}}
	rest := memKiB
	for _, s := range sizes[1:] {
		n := huge(s)
		out = append(out, PageCount{SizeKiB: s, Count: n})
		if n*s <= rest {
			rest -= n * s
		}
	}
	out[0].Count = rest / sizes[0]
	return out
}

func readFile(p string) []byte {
	b, _ := os.ReadFile(p)
	return b
}

// meminfoKiB finds "key: N kB" in a meminfo file (the per-node files have a
// "Node N " prefix).
func meminfoKiB(data []byte, key string) uint64 {
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(k)
		if len(f) == 0 || f[len(f)-1] != key {
			continue
		}
		n, _ := strconv.ParseUint(strings.Fields(v + " 0")[0], 10, 64)
		return n
	}
	return 0
}

func hugeSize(dir string) uint64 {
	s := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(dir), "hugepages-"), "kB")
	n, _ := strconv.ParseUint(s, 10, 64)
	return n
}

func sortHuge(dirs []string) []string {
	sort.Slice(dirs, func(i, j int) bool { return hugeSize(dirs[i]) < hugeSize(dirs[j]) })
	return dirs
}

// readCaches finds the host's shared cache banks: level 3 when there is
// one, else the highest level found. Each cpu's cache dir is read only until
// every cpu is covered by a bank already seen, so large hosts stay cheap.
func readCaches(root string, cpus []int) []CacheBank {
	var banks []CacheBank
	covered := map[int]bool{}
	for _, c := range cpus {
		if covered[c] {
			continue
		}
		idx, _ := filepath.Glob(filepath.Join(root, "sys/devices/system/cpu", "cpu"+strconv.Itoa(c), "cache/index[0-9]*"))
		best := CacheBank{Level: -1}
		for _, d := range idx {
			level := readInt(filepath.Join(d, "level"), 0)
			if level < 2 || level <= best.Level {
				continue
			}
			b := CacheBank{Level: level, ID: readInt(filepath.Join(d, "id"), c)}
			b.Type = map[string]string{"Unified": "both", "Data": "data", "Instruction": "code"}[strings.TrimSpace(string(readFile(filepath.Join(d, "type"))))]
			b.SizeKiB = parseSizeKiB(strings.TrimSpace(string(readFile(filepath.Join(d, "size")))))
			b.CPUs = parseCPUList(strings.TrimSpace(string(readFile(filepath.Join(d, "shared_cpu_list")))))
			if b.Type == "" || b.SizeKiB == 0 || len(b.CPUs) == 0 {
				continue
			}
			best = b
		}
		if best.Level < 0 {
			continue
		}
		for _, x := range best.CPUs {
			covered[x] = true
		}
		banks = append(banks, best)
	}
	// Keep only the top level, once per bank.
	top := 0
	for _, b := range banks {
		top = max(top, b.Level)
	}
	var out []CacheBank
	seen := map[int]bool{}
	for _, b := range banks {
		if b.Level == top && !seen[b.ID] {
			seen[b.ID] = true
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// parseSizeKiB parses sysfs cache sizes: "32768K", "32M".
func parseSizeKiB(s string) uint64 {
	mult := uint64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		s = s[:len(s)-1]
	case strings.HasSuffix(s, "M"):
		s, mult = s[:len(s)-1], 1024
	case strings.HasSuffix(s, "G"):
		s, mult = s[:len(s)-1], 1024*1024
	default:
		// bytes
		n, _ := strconv.ParseUint(s, 10, 64)
		return n / 1024
	}
	n, _ := strconv.ParseUint(s, 10, 64)
	return n * mult
}

func nonEmptyDir(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) > 0
}

// hostUUID is the SMBIOS system UUID when readable, else the machine-id
// shaped as a UUID (stable across boots either way).
func hostUUID(rd func(string) []byte) string {
	if u := strings.TrimSpace(string(rd("sys/class/dmi/id/product_uuid"))); u != "" {
		return strings.ToLower(u)
	}
	id := strings.TrimSpace(string(rd("etc/machine-id")))
	if len(id) != 32 {
		return ""
	}
	return id[0:8] + "-" + id[8:12] + "-" + id[12:16] + "-" + id[16:20] + "-" + id[20:32]
}
