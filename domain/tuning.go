package domain

import (
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// Tuning is what <memtune>, <blkiotune>, <cputune>, <numatune>, <vcpu
// cpuset> and <resource> ask of the host. QEMU's command line has no
// place for it: the driver and the security layer apply it with cgroups
// and affinity. Zero values mean "not set".
type Tuning struct {
	MemoryHardLimitKiB    uint64
	MemorySoftLimitKiB    uint64
	SwapHardLimitKiB      uint64
	MemoryMinGuaranteeKiB uint64

	BlkioWeight  uint64
	BlkioDevices []BlkioDevice

	CPUShares      uint64
	CPUPeriod      uint64 // microseconds
	CPUQuota       int64  // microseconds, -1 = unlimited
	EmulatorPeriod uint64
	EmulatorQuota  int64
	GlobalPeriod   uint64
	GlobalQuota    int64

	// VCPUCPUSet is <vcpu cpuset>: the host CPUs all vCPUs may use.
	VCPUCPUSet  []int
	VCPUPins    map[int][]int // vCPU -> host CPUs
	EmulatorPin []int
	IOThreadPin map[int][]int // iothread id -> host CPUs

	// NUMAMode is numatune/memory/@mode (strict, preferred, interleave,
	// restrictive); NUMANodeset its host nodes; NUMAPlacement static or
	// auto.
	NUMAMode      string
	NUMANodeset   []int
	NUMAPlacement string

	// Partition is resource/partition (the cgroup partition).
	Partition string
}

// BlkioDevice is one blkiotune/device.
type BlkioDevice struct {
	Path                        string
	Weight                      uint64
	ReadBytesSec, WriteBytesSec uint64
	ReadIopsSec, WriteIopsSec   uint64
}

// Tuning returns the host tuning the definition asks for.
func (d *Domain) Tuning() Tuning {
	r := d.root
	var t Tuning
	kib := func(e *etree.Element) uint64 { v, _ := memoryKiB(e); return v }
	if mt := child(r, "memtune"); mt != nil {
		t.MemoryHardLimitKiB = kib(child(mt, "hard_limit"))
		t.MemorySoftLimitKiB = kib(child(mt, "soft_limit"))
		t.SwapHardLimitKiB = kib(child(mt, "swap_hard_limit"))
		t.MemoryMinGuaranteeKiB = kib(child(mt, "min_guarantee"))
	}
	num := func(e *etree.Element) uint64 { n, _ := parseUint(text(e)); return n }
	snum := func(e *etree.Element) int64 { n, _ := strconv.ParseInt(strings.TrimSpace(text(e)), 10, 64); return n }
	if bt := child(r, "blkiotune"); bt != nil {
		t.BlkioWeight = num(child(bt, "weight"))
		for _, dev := range children(bt, "device") {
			t.BlkioDevices = append(t.BlkioDevices, BlkioDevice{
				Path:          trimText(child(dev, "path")),
				Weight:        num(child(dev, "weight")),
				ReadBytesSec:  num(child(dev, "read_bytes_sec")),
				WriteBytesSec: num(child(dev, "write_bytes_sec")),
				ReadIopsSec:   num(child(dev, "read_iops_sec")),
				WriteIopsSec:  num(child(dev, "write_iops_sec")),
			})
		}
	}
	if ct := child(r, "cputune"); ct != nil {
		t.CPUShares = num(child(ct, "shares"))
		t.CPUPeriod = num(child(ct, "period"))
		t.CPUQuota = snum(child(ct, "quota"))
		t.EmulatorPeriod = num(child(ct, "emulator_period"))
		t.EmulatorQuota = snum(child(ct, "emulator_quota"))
		t.GlobalPeriod = num(child(ct, "global_period"))
		t.GlobalQuota = snum(child(ct, "global_quota"))
		for _, p := range children(ct, "vcpupin") {
			if t.VCPUPins == nil {
				t.VCPUPins = map[int][]int{}
			}
			cpus, _ := parseCPUSet(attr(p, "cpuset"))
			t.VCPUPins[int(mustUint(attr(p, "vcpu")))] = cpus
		}
		if p := child(ct, "emulatorpin"); p != nil {
			t.EmulatorPin, _ = parseCPUSet(attr(p, "cpuset"))
		}
		for _, p := range children(ct, "iothreadpin") {
			if t.IOThreadPin == nil {
				t.IOThreadPin = map[int][]int{}
			}
			cpus, _ := parseCPUSet(attr(p, "cpuset"))
			t.IOThreadPin[int(mustUint(attr(p, "iothread")))] = cpus
		}
	}
	if cs := attr(child(r, "vcpu"), "cpuset"); cs != "" {
		t.VCPUCPUSet, _ = parseCPUSet(cs)
	}
	if m := find(r, "numatune", "memory"); m != nil {
		t.NUMAMode = attrOr(m, "mode", "strict")
		t.NUMAPlacement = attrOr(m, "placement", "static")
		if ns := attr(m, "nodeset"); ns != "" {
			t.NUMANodeset, _ = parseCPUSet(ns)
		}
	}
	t.Partition = trimText(find(r, "resource", "partition"))
	return t
}

// checkTuning validates the tuning elements.
func (d *Domain) checkTuning(c *checker) {
	r := d.root
	if mt := child(r, "memtune"); mt != nil {
		c.known(mt, "hard_limit", "soft_limit", "swap_hard_limit", "min_guarantee")
		for _, e := range mt.ChildElements() {
			if _, err := memoryKiB(e); err != nil {
				c.fail(e, "%v", err)
			}
		}
	}
	if bt := child(r, "blkiotune"); bt != nil {
		c.known(bt, "weight", "device")
		if w := child(bt, "weight"); w != nil {
			if n, err := parseUint(w.Text()); err != nil || n < 100 || n > 1000 {
				c.fail(w, "weight %q must be an integer from 100 to 1000", strings.TrimSpace(w.Text()))
			}
		}
		for _, dev := range children(bt, "device") {
			if p := trimText(child(dev, "path")); !strings.HasPrefix(p, "/") {
				c.fail(dev, "element <path> with an absolute path is required")
			}
		}
	}
	if ct := child(r, "cputune"); ct != nil {
		for _, p := range append(append(children(ct, "vcpupin"), children(ct, "emulatorpin")...), children(ct, "iothreadpin")...) {
			c.required(p, "cpuset")
			if _, err := parseCPUSet(attr(p, "cpuset")); hasAttr(p, "cpuset") && err != nil {
				c.fail(p, "attribute cpuset: %v", err)
			}
			if p.Tag == "vcpupin" {
				c.required(p, "vcpu")
				if n, ok := c.uint(p, "vcpu", 0, 4095); ok && int(n) >= d.MaxVCPUs() {
					c.fail(p, "vCPU %d does not exist (the domain has %d)", n, d.MaxVCPUs())
				}
			}
		}
		if p := child(ct, "period"); p != nil {
			if n, err := parseUint(p.Text()); err != nil || n < 1000 || n > 1000000 {
				c.fail(p, "period %q must be from 1000 to 1000000 microseconds", strings.TrimSpace(p.Text()))
			}
		}
	}
	if nt := child(r, "numatune"); nt != nil {
		c.known(nt, "memory", "memnode")
		if m := child(nt, "memory"); m != nil {
			c.enum(m, "mode", "strict", "preferred", "interleave", "restrictive")
			c.enum(m, "placement", "static", "auto")
			if ns := attr(m, "nodeset"); hasAttr(m, "nodeset") {
				if _, err := parseCPUSet(ns); err != nil {
					c.fail(m, "attribute nodeset: %v", err)
				}
			}
		}
	}
}
