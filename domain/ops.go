package domain

import (
	"strconv"
	"strings"
)

// Setters and views for the day-2 operations that change a definition in
// place (setmem, setvcpus) rather than replacing it.

// SetCurrentMemoryKiB sets <currentMemory> (the balloon target at boot), in
// KiB. The caller checks it against MemoryKiB.
func (d *Domain) SetCurrentMemoryKiB(kib uint64) {
	cm := ensure(d.root, "currentMemory")
	setAttr(cm, "unit", "KiB")
	cm.SetText(strconv.FormatUint(kib, 10))
}

// SetVCPUs sets the number of vCPUs online at boot (vcpu/@current); the
// attribute is dropped when it equals the maximum, as libvirt writes it.
// The caller checks 1 <= n <= MaxVCPUs.
func (d *Domain) SetVCPUs(n int) {
	v := ensure(d.root, "vcpu")
	if strings.TrimSpace(v.Text()) == "" {
		v.SetText("1")
	}
	if n == d.MaxVCPUs() {
		v.RemoveAttr("current")
		return
	}
	setAttr(v, "current", strconv.Itoa(n))
}

// SetMaxVCPUs sets the vCPU count (the hot-plug maximum); the current count
// is lowered to it when it was larger.
func (d *Domain) SetMaxVCPUs(n int) {
	cur := d.VCPUs()
	v := ensure(d.root, "vcpu")
	v.SetText(strconv.Itoa(n))
	if cur > n {
		cur = n
	}
	d.SetVCPUs(cur)
}

// Balloon describes the domain's memory balloon device.
type Balloon struct {
	Model string // virtio, virtio-transitional, ..., none ("" when absent)
	Alias string // QEMU device id (balloon0 once expanded)
}

// MemBalloon returns the first <memballoon>; Model is "" when there is none.
func (d *Domain) MemBalloon() Balloon {
	for _, m := range children(child(d.root, "devices"), "memballoon") {
		return Balloon{Model: attr(m, "model"), Alias: attr(child(m, "alias"), "name")}
	}
	return Balloon{}
}

// ParseScaledKiB parses a size as virsh's scaled integers: a number with an
// optional unit suffix (b, k, KiB, KB, M, MiB, MB, G, GiB, ... as libvirt's
// units: single letters and *iB are powers of 1024, *B powers of 1000)
// where a bare number is in KiB. The result is rounded up to whole KiB.
func ParseScaledKiB(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	b, err := scaled(s[:i], s[i:], "KiB")
	if err != nil {
		return 0, err
	}
	return (b + 1023) / 1024, nil
}

// InterfaceTargets returns each <interface>'s host device name
// (target/@dev), in the order of Interfaces; "" where there is none.
func (d *Domain) InterfaceTargets() []string {
	var out []string
	for _, e := range children(child(d.root, "devices"), "interface") {
		out = append(out, attr(child(e, "target"), "dev"))
	}
	return out
}
