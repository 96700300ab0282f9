package cgroup

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Limits are a guest's cputune, memtune and blkiotune values. Zero
// means unset.
type Limits struct {
	// CPUShares is <cputune><shares> (v1 cpu.shares; converted to cpu.weight on v2).
	CPUShares uint64 `json:"cpu_shares,omitempty"`
	// CPUPeriod and CPUQuota are <cputune><period>/<quota> in µs; a
	// negative quota means unlimited.
	CPUPeriod uint64 `json:"cpu_period,omitempty"`
	CPUQuota  int64  `json:"cpu_quota,omitempty"`
	// Memory limits in bytes: <memtune> hard_limit, soft_limit and
	// swap_hard_limit (memory plus swap, as libvirt means it).
	MemoryHardLimit     int64 `json:"memory_hard_limit,omitempty"`
	MemorySoftLimit     int64 `json:"memory_soft_limit,omitempty"`
	MemorySwapHardLimit int64 `json:"memory_swap_hard_limit,omitempty"`
	// BlkioWeight is <blkiotune><weight> (10-1000).
	BlkioWeight uint16 `json:"blkio_weight,omitempty"`
	// BlkioDevices are <blkiotune><device> entries.
	BlkioDevices []BlkioDevice `json:"blkio_devices,omitempty"`
}

// BlkioDevice is one <blkiotune><device>: limits for one block device.
type BlkioDevice struct {
	Path          string `json:"path"`
	Weight        uint16 `json:"weight,omitempty"`
	ReadBytesSec  uint64 `json:"read_bytes_sec,omitempty"`
	WriteBytesSec uint64 `json:"write_bytes_sec,omitempty"`
	ReadIopsSec   uint64 `json:"read_iops_sec,omitempty"`
	WriteIopsSec  uint64 `json:"write_iops_sec,omitempty"`
}

func (l Limits) cpuSet() bool {
	return l.CPUShares != 0 || l.CPUPeriod != 0 || l.CPUQuota != 0
}

func (l Limits) memorySet() bool {
	return l.MemoryHardLimit != 0 || l.MemorySoftLimit != 0 || l.MemorySwapHardLimit != 0
}

func (l Limits) blkioSet() bool { return l.BlkioWeight != 0 || len(l.BlkioDevices) != 0 }

// check rejects limits this host cannot apply, before anything is made.
func (l Limits) check(m *Manager) error {
	need := func(ok bool, what, ctrl string) error {
		if ok && !m.Has(ctrl) {
			return fmt.Errorf("%s needs the %s cgroup controller, which is not configured or not mounted", what, ctrl)
		}
		return nil
	}
	if err := need(l.cpuSet(), "cputune", "cpu"); err != nil {
		return err
	}
	if err := need(l.memorySet(), "memtune", "memory"); err != nil {
		return err
	}
	if err := need(l.blkioSet(), "blkiotune", "blkio"); err != nil {
		return err
	}
	if l.CPUPeriod != 0 && (l.CPUPeriod < 1000 || l.CPUPeriod > 1000000) {
		return fmt.Errorf("cputune period %d: must be 1000-1000000", l.CPUPeriod)
	}
	if l.CPUQuota > 0 && (l.CPUQuota < 1000 || l.CPUQuota > 17592186044415) {
		return fmt.Errorf("cputune quota %d: must be 1000-17592186044415 or negative", l.CPUQuota)
	}
	if l.MemoryHardLimit > 0 && l.MemorySwapHardLimit > 0 && l.MemorySwapHardLimit < l.MemoryHardLimit {
		return fmt.Errorf("memtune: swap_hard_limit %d is below hard_limit %d", l.MemorySwapHardLimit, l.MemoryHardLimit)
	}
	weight := func(w uint16) error {
		if w != 0 && (w < 10 || w > 1000) {
			return fmt.Errorf("blkiotune weight %d: must be 10-1000", w)
		}
		return nil
	}
	if err := weight(l.BlkioWeight); err != nil {
		return err
	}
	for _, d := range l.BlkioDevices {
		if err := weight(d.Weight); err != nil {
			return err
		}
		if _, err := ResolveDevice(d.Path, ""); err != nil {
			return fmt.Errorf("blkiotune device: %w", err)
		}
	}
	if m.version == V1 && m.Has("blkio") {
		// blkio.weight exists only with the CFQ/BFQ schedulers' proportional
		// policy; say so rather than fail on a missing file later.
		weights := l.BlkioWeight != 0
		for _, d := range l.BlkioDevices {
			weights = weights || d.Weight != 0
		}
		if weights {
			if _, err := os.Stat(filepath.Join(m.mountpoint, "blkio", "blkio.weight")); err != nil {
				return fmt.Errorf("blkiotune weight: this host's blkio controller has no proportional weight (no blkio.weight); only device throttling is supported")
			}
		}
	}
	return nil
}

// v1Resources is the OCI form containerd's cgroup1 package applies.
func (l Limits) v1Resources(devices []Device) (*specs.LinuxResources, error) {
	r := &specs.LinuxResources{}
	if devices != nil {
		r.Devices = rules(devices)
	}
	if l.cpuSet() {
		r.CPU = &specs.LinuxCPU{}
		if l.CPUShares != 0 {
			r.CPU.Shares = ptr(l.CPUShares)
		}
		if l.CPUPeriod != 0 {
			r.CPU.Period = ptr(l.CPUPeriod)
		}
		if l.CPUQuota != 0 {
			q := l.CPUQuota
			if q < 0 {
				q = -1
			}
			r.CPU.Quota = &q
		}
	}
	if l.memorySet() {
		r.Memory = &specs.LinuxMemory{}
		if l.MemoryHardLimit != 0 {
			r.Memory.Limit = ptr(l.MemoryHardLimit)
		}
		if l.MemorySoftLimit != 0 {
			r.Memory.Reservation = ptr(l.MemorySoftLimit)
		}
		if l.MemorySwapHardLimit != 0 {
			r.Memory.Swap = ptr(l.MemorySwapHardLimit) // memory.memsw.limit_in_bytes
		}
	}
	if l.blkioSet() {
		r.BlockIO = &specs.LinuxBlockIO{}
		if l.BlkioWeight != 0 {
			r.BlockIO.Weight = ptr(l.BlkioWeight)
		}
		for _, bd := range l.BlkioDevices {
			d, err := ResolveDevice(bd.Path, "")
			if err != nil {
				return nil, fmt.Errorf("blkiotune device: %w", err)
			}
			bdev := specs.LinuxBlockIODevice{Major: d.Major, Minor: d.Minor}
			if bd.Weight != 0 {
				r.BlockIO.WeightDevice = append(r.BlockIO.WeightDevice, specs.LinuxWeightDevice{LinuxBlockIODevice: bdev, Weight: ptr(bd.Weight)})
			}
			add := func(list *[]specs.LinuxThrottleDevice, rate uint64) {
				if rate != 0 {
					*list = append(*list, specs.LinuxThrottleDevice{LinuxBlockIODevice: bdev, Rate: rate})
				}
			}
			add(&r.BlockIO.ThrottleReadBpsDevice, bd.ReadBytesSec)
			add(&r.BlockIO.ThrottleWriteBpsDevice, bd.WriteBytesSec)
			add(&r.BlockIO.ThrottleReadIOPSDevice, bd.ReadIopsSec)
			add(&r.BlockIO.ThrottleWriteIOPSDevice, bd.WriteIopsSec)
		}
	}
	return r, nil
}

// v2Resources translates the limits for the unified hierarchy, the way
// libvirt's cgroup v2 backend does: shares become cpu.weight, soft_limit
// memory.high, and swap_hard_limit (memory plus swap) minus hard_limit
// memory.swap.max.
func (l Limits) v2Resources() (*cgroup2.Resources, error) {
	r := &cgroup2.Resources{}
	if l.cpuSet() {
		r.CPU = &cgroup2.CPU{}
		if l.CPUShares != 0 {
			r.CPU.Weight = ptr(cgroup2.ConvertCPUSharesToCgroupV2Value(l.CPUShares))
		}
		if l.CPUPeriod != 0 || l.CPUQuota != 0 {
			var quota *int64
			if l.CPUQuota > 0 {
				quota = ptr(l.CPUQuota)
			}
			var period *uint64
			if l.CPUPeriod != 0 {
				period = ptr(l.CPUPeriod)
			}
			r.CPU.Max = cgroup2.NewCPUMax(quota, period)
		}
	}
	if l.memorySet() {
		r.Memory = &cgroup2.Memory{}
		if l.MemoryHardLimit != 0 {
			r.Memory.Max = ptr(l.MemoryHardLimit)
		}
		if l.MemorySoftLimit != 0 {
			r.Memory.High = ptr(l.MemorySoftLimit)
		}
		if l.MemorySwapHardLimit != 0 {
			if l.MemoryHardLimit == 0 {
				return nil, fmt.Errorf("memtune: swap_hard_limit needs hard_limit on cgroup v2")
			}
			r.Memory.Swap = ptr(l.MemorySwapHardLimit - l.MemoryHardLimit)
		}
	}
	if l.blkioSet() {
		r.IO = &cgroup2.IO{BFQ: cgroup2.BFQ{Weight: l.BlkioWeight}}
		for _, bd := range l.BlkioDevices {
			d, err := ResolveDevice(bd.Path, "")
			if err != nil {
				return nil, fmt.Errorf("blkiotune device: %w", err)
			}
			if bd.Weight != 0 {
				return nil, fmt.Errorf("blkiotune device %s: per-device weight is not supported on cgroup v2", bd.Path)
			}
			add := func(t cgroup2.IOType, rate uint64) {
				if rate != 0 {
					r.IO.Max = append(r.IO.Max, cgroup2.Entry{Type: t, Major: d.Major, Minor: d.Minor, Rate: rate})
				}
			}
			add(cgroup2.ReadBPS, bd.ReadBytesSec)
			add(cgroup2.WriteBPS, bd.WriteBytesSec)
			add(cgroup2.ReadIOPS, bd.ReadIopsSec)
			add(cgroup2.WriteIOPS, bd.WriteIopsSec)
		}
	}
	return r, nil
}

func ptr[T any](v T) *T { return &v }
