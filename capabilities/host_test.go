package capabilities

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"testing"
)

// fixtureHost writes a fake /proc and /sys for a host this machine is not:
// 2 sockets x 2 cores x 2 threads (Intel), 2 NUMA nodes with huge pages,
// an L3 per socket, an IOMMU, suspend support, SMBIOS UUID and firmware.
func fixtureHost(t testing.TB) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"proc/cpuinfo":                  "",
		"proc/meminfo":                  "MemTotal:       16384000 kB\n",
		"sys/devices/system/cpu/online": "0-7\n",
		"sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages":    "0\n",
		"sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages": "0\n",
		"sys/kernel/iommu_groups/0/type":                           "DMA\n",
		"sys/power/state":                                          "freeze mem disk\n",
		"sys/class/dmi/id/product_uuid":                            "4C4C4544-0042-3910-8057-B7C04F4C4D32\n",
		"etc/machine-id":                                           "0123456789abcdef0123456789abcdef\n",
		"usr/share/seabios/bios-256k.bin":                          "",
		"usr/share/OVMF/OVMF_CODE_4M.fd":                           "",
		"usr/share/OVMF/OVMF_VARS_4M.fd":                           "",
		"usr/share/qemu/firmware/50-edk2-secure.json": `{
			"interface-types": ["uefi"],
			"mapping": {"device": "flash", "executable": {"filename": "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"},
				"nvram-template": {"filename": "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"}},
			"targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
			"features": ["secure-boot", "requires-smm", "enrolled-keys"]}`,
		"usr/share/OVMF/OVMF_CODE_4M.secboot.fd": "",
	}
	var cpuinfo strings.Builder
	for cpu := 0; cpu < 8; cpu++ {
		socket, core := cpu/4, (cpu%4)/2
		fmt.Fprintf(&cpuinfo, "processor\t: %d\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n"+
			"model name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz\nstepping\t: 4\nmicrocode\t: 0x2006b06\n"+
			"flags\t\t: fpu vme sse sse2 pni ssse3 sse4_1 sse4_2 tsc_deadline_timer avx avx2 vmx constant_tsc lahf_lm avx512f\n"+
			"address sizes\t: 46 bits physical, 48 bits virtual\n\n", cpu)
		d := fmt.Sprintf("sys/devices/system/cpu/cpu%d/", cpu)
		sib := fmt.Sprintf("%d-%d", cpu&^1, cpu|1)
		files[d+"topology/physical_package_id"] = fmt.Sprint(socket)
		files[d+"topology/die_id"] = "0"
		files[d+"topology/core_id"] = fmt.Sprint(core)
		files[d+"topology/thread_siblings_list"] = sib
		files[d+"cache/index0/level"] = "1"
		files[d+"cache/index0/type"] = "Data"
		files[d+"cache/index0/size"] = "32K"
		files[d+"cache/index0/shared_cpu_list"] = sib
		files[d+"cache/index3/level"] = "3"
		files[d+"cache/index3/type"] = "Unified"
		files[d+"cache/index3/size"] = "22528K"
		files[d+"cache/index3/id"] = fmt.Sprint(socket)
		files[d+"cache/index3/shared_cpu_list"] = fmt.Sprintf("%d-%d", socket*4, socket*4+3)
	}
	files["proc/cpuinfo"] = cpuinfo.String()
	for n := 0; n < 2; n++ {
		d := fmt.Sprintf("sys/devices/system/node/node%d/", n)
		files[d+"meminfo"] = fmt.Sprintf("Node %d MemTotal:        8192000 kB\nNode %d MemFree:  100 kB\n", n, n)
		files[d+"cpulist"] = fmt.Sprintf("%d-%d\n", n*4, n*4+3)
		files[d+"distance"] = map[int]string{0: "10 21\n", 1: "21 10\n"}[n]
		files[d+"hugepages/hugepages-2048kB/nr_hugepages"] = fmt.Sprint(512 * (n + 1))
		files[d+"hugepages/hugepages-1048576kB/nr_hugepages"] = "1"
	}
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestProbeHostFixture(t *testing.T) {
	if basePageKiB != 4 {
		t.Skipf("fixture assumes 4 KiB pages, host has %d KiB", basePageKiB)
	}
	h := probeHost(fixtureHost(t))
	cpu := h.CPU
	if cpu.Vendor != "Intel" || cpu.ModelName != "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz" ||
		cpu.Family != 6 || cpu.ModelNum != 85 || cpu.Stepping != 4 || cpu.Microcode != "33581830" || cpu.PhysAddrBits != 46 {
		t.Errorf("cpu: %+v", cpu)
	}
	if got := [4]int{cpu.Sockets, cpu.Dies, cpu.Cores, cpu.Threads}; got != [4]int{2, 1, 2, 2} {
		t.Errorf("topology sockets/dies/cores/threads = %v, want [2 1 2 2]", got)
	}
	if !reflect.DeepEqual(h.PageSizesKiB, []uint64{4, 2048, 1048576}) {
		t.Errorf("page sizes %v", h.PageSizesKiB)
	}
	if len(h.NUMA) != 2 {
		t.Fatalf("NUMA cells: %+v", h.NUMA)
	}
	n1 := h.NUMA[1]
	wantPages := []PageCount{{4, (8192000 - 1024*2048 - 1048576) / 4}, {2048, 1024}, {1048576, 1}}
	if n1.ID != 1 || n1.MemoryKiB != 8192000 || !reflect.DeepEqual(n1.CPUs, []int{4, 5, 6, 7}) ||
		!reflect.DeepEqual(n1.Distances, []NUMADistance{{0, 21}, {1, 10}}) || !reflect.DeepEqual(n1.Pages, wantPages) {
		t.Errorf("node1: %+v", n1)
	}
	if want := (CPUTopology{ID: 5, SocketID: 1, CoreID: 0, Siblings: []int{4, 5}}); !reflect.DeepEqual(n1.Topology[1], want) {
		t.Errorf("cpu5: %+v, want %+v", n1.Topology[1], want)
	}
	wantCaches := []CacheBank{
		{ID: 0, Level: 3, Type: "both", SizeKiB: 22528, CPUs: []int{0, 1, 2, 3}},
		{ID: 1, Level: 3, Type: "both", SizeKiB: 22528, CPUs: []int{4, 5, 6, 7}},
	}
	if !reflect.DeepEqual(h.Caches, wantCaches) {
		t.Errorf("caches: %+v", h.Caches)
	}
	if !h.IOMMU || !reflect.DeepEqual(h.PowerManagement, []string{"suspend_mem", "suspend_disk", "suspend_hybrid"}) {
		t.Errorf("iommu %v, pm %v", h.IOMMU, h.PowerManagement)
	}
	if h.UUID != "4c4c4544-0042-3910-8057-b7c04f4c4d32" {
		t.Errorf("uuid %q", h.UUID)
	}
}

// TestProbeHostEmpty: a root with nothing (a container, another OS) still
// gives one cell and the machine's cpus.
func TestProbeHostEmpty(t *testing.T) {
	h := probeHost(t.TempDir())
	if h.Arch != HostArch() || len(h.NUMA) != 1 || len(h.NUMA[0].CPUs) != runtime.NumCPU() || h.CPU.Sockets != 1 {
		t.Errorf("host: %+v", h)
	}
	if h.UUID != "" || h.IOMMU || h.Caches != nil {
		t.Errorf("facts from nowhere: %+v", h)
	}
}

// TestProbeHostReal reads this machine and checks what /proc and /sys say.
func TestProbeHostReal(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	h := probeHost("/")
	var cpus int
	var mem uint64
	for _, c := range h.NUMA {
		cpus += len(c.CPUs)
		mem += c.MemoryKiB
	}
	if cpus != runtime.NumCPU() || mem == 0 {
		t.Errorf("NUMA: %d cpus (want %d), %d KiB", cpus, runtime.NumCPU(), mem)
	}
	if h.CPU.Sockets*h.CPU.Dies*h.CPU.Cores*h.CPU.Threads != cpus {
		t.Errorf("topology %d*%d*%d*%d != %d cpus", h.CPU.Sockets, h.CPU.Dies, h.CPU.Cores, h.CPU.Threads, cpus)
	}
	if len(h.CPU.Flags) == 0 && runtime.GOARCH == "amd64" {
		t.Error("no cpu flags")
	}
}

func TestCPUList(t *testing.T) {
	tests := []struct {
		in   string
		want []int
		out  string
	}{
		{"0-3,8,10-11", []int{0, 1, 2, 3, 8, 10, 11}, "0-3,8,10-11"},
		{"5", []int{5}, "5"},
		{"", nil, ""},
		{"0-1,x,3", []int{0, 1, 3}, "0-1,3"},
	}
	for _, tt := range tests {
		got := parseCPUList(tt.in)
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseCPUList(%q) = %v, want %v", tt.in, got, tt.want)
		}
		if s := formatCPUList(got); s != tt.out {
			t.Errorf("formatCPUList(%v) = %q, want %q", got, s, tt.out)
		}
	}
}

func TestMachineLess(t *testing.T) {
	in := []string{"pc-i440fx-2.10", "pc-i440fx-2.9", "isapc", "pc-i440fx-7.2", "pc-q35-2.10", "microvm", "pc-i440fx-2.9"}
	want := []string{"isapc", "microvm", "pc-i440fx-2.9", "pc-i440fx-2.9", "pc-i440fx-2.10", "pc-i440fx-7.2", "pc-q35-2.10"}
	got := append([]string(nil), in...)
	sortMachines(got)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("- want: %v\n-  got: %v", want, got)
	}
}

func sortMachines(names []string) {
	sort.Slice(names, func(i, j int) bool { return machineLess(names[i], names[j]) })
}

func TestMicrocode(t *testing.T) {
	for in, want := range map[string]string{"0x2006b06": "33581830", "0xa0011d1": "167776721", "": "", "junk": "junk", "123": "291"} {
		if got := microcodeDecimal(in); got != want {
			t.Errorf("microcodeDecimal(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestArchFromName(t *testing.T) {
	for path, want := range map[string]string{
		"/usr/bin/qemu-system-x86_64":         "x86_64",
		"/usr/bin/qemu-system-x86_64-microvm": "x86_64",
		"/usr/bin/qemu-system-i386":           "i686",
		"/usr/bin/qemu-system-arm":            "armv7l",
		"/usr/bin/qemu-system-mips64el":       "mips64el",
		"/usr/bin/qemu-system-microblazeel":   "microblazeel",
		"/usr/bin/qemu-kvm":                   HostArch(),
		"/usr/bin/qemu-system-fake":           "fake",
		"/usr/bin/qemu-img":                   "",
	} {
		if got := archFromName(path); got != want {
			t.Errorf("archFromName(%s) = %q, want %q", path, got, want)
		}
	}
}
