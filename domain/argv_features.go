package domain

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// Elements that qemufs used to accept and then not act on (found by
// walking libvirt's corpus for elements whose argv effect was absent; see
// docs/launch-security.md, "Never a silent drop"). Each is now built as
// libvirt builds it, or refused with the element named.

// tsegGlobal is <features><smm><tseg>: q35's extended TSEG size.
func (b *builder) tsegGlobal() []string {
	t := child(b.feature("smm"), "tseg")
	if t == nil {
		return nil
	}
	kib, err := memoryKiBUnit(t, "MiB")
	if err != nil {
		return nil
	}
	return []string{"-global", fmt.Sprintf("mch.extended-tseg-mbytes=%d", kib/1024)}
}

// memoryKiBUnit is memoryKiB with another default unit.
func memoryKiBUnit(e *etree.Element, unit string) (uint64, error) {
	if !hasAttr(e, "unit") {
		x := e.Copy()
		x.CreateAttr("unit", unit)
		return memoryKiB(x)
	}
	return memoryKiB(e)
}

// dirtyRing is <features><kvm><dirty-ring state='on' size='N'/>: the
// KVM accelerator's dirty ring, for migration.
func (b *builder) dirtyRing() string {
	r := child(b.feature("kvm"), "dirty-ring")
	if r == nil || attr(r, "state") != "on" || b.accel() != "kvm" {
		return ""
	}
	return ",dirty-ring-size=" + attrOr(r, "size", "4096")
}

// pciHole64 is <controller type='pci' model='pci-root|pcie-root'>
// <pcihole64>: the size of the 64-bit PCI hole of the host bridge.
func (b *builder) pciHole64() error {
	for _, c := range children(b.devs, "controller") {
		h := child(c, "pcihole64")
		if attr(c, "type") != "pci" || h == nil {
			continue
		}
		kib, err := memoryKiBUnit(h, "KiB")
		if err != nil {
			return errAt(h, "%v", err)
		}
		host := "i440FX-pcihost"
		switch attr(c, "model") {
		case "pcie-root":
			host = "q35-pcihost"
		case "pci-root":
		default:
			return errAt(h, "<pcihole64> is only for the root controller (pci-root or pcie-root)")
		}
		b.add("-global", fmt.Sprintf("%s.pci-hole64-size=%dK", host, kib))
	}
	return nil
}

// vmcoreinfo is <features><vmcoreinfo state='on'/>: the device through
// which the guest kernel tells a dump where its core information is.
func (b *builder) vmcoreinfo() error {
	if f := b.feature("vmcoreinfo"); f != nil && attrOr(f, "state", "on") == "on" {
		b.device(obj("driver", "vmcoreinfo"))
	}
	return nil
}

// diskGeometry adds <geometry cyls heads secs trans> to a disk's device.
func diskGeometry(o *jobj, disk *etree.Element, bus string) {
	g := child(disk, "geometry")
	if g == nil {
		return
	}
	for _, k := range []string{"cyls", "heads", "secs"} {
		if v := attr(g, k); v != "" {
			n, _ := strconv.Atoi(v)
			o.add(k, n)
		}
	}
	if t := attr(g, "trans"); t != "" && bus == "ide" {
		o.add("bios-chs-trans", t)
	}
}

// videoResolution adds <model><resolution x y/> to a video device.
func videoResolution(o *jobj, model *etree.Element) {
	if r := child(model, "resolution"); r != nil {
		o.add("xres", int(mustUint(attr(r, "x"))))
		o.add("yres", int(mustUint(attr(r, "y"))))
	}
}

// silentDrops lists elements the domain model accepts but qemufs cannot
// act on; BuildCommand refuses a definition that has one, naming it,
// rather than start a guest without what it asked for. Each entry is the
// element path from <domain> and the reason.
var silentDrops = []struct {
	path []string
	why  string
	// allowed, when set, accepts the element in the cases qemufs honours.
	allowed func(e *etree.Element) bool
}{
	{path: []string{"devices", "disk", "auth"}, why: "disk authentication needs a secret, which qemufs cannot pass to QEMU yet"},
	{path: []string{"devices", "disk", "source", "auth"}, why: "disk authentication needs a secret, which qemufs cannot pass to QEMU yet"},
	{path: []string{"devices", "disk", "source", "cookies"}, why: "HTTP cookies for network disks are not supported"},
	{path: []string{"devices", "disk", "source", "ssl"}, why: "TLS verification settings for network disks are not supported"},
	{path: []string{"devices", "disk", "source", "readahead"}, why: "readahead for network disks is not supported"},
	{path: []string{"devices", "disk", "source", "reservations"}, why: "persistent reservations (pr-manager) are not supported"},
	{path: []string{"devices", "disk", "source", "initiator"}, why: "iSCSI initiator names are not supported"},
	{path: []string{"devices", "disk", "source", "identity"}, why: "NFS user/group identities are not supported"},
	{path: []string{"devices", "disk", "source", "slices"}, why: "storage slices (offset/size of an image in a file) are not supported"},
	{path: []string{"devices", "disk", "source", "config"}, why: "RBD configuration files are not supported"},
	{path: []string{"devices", "disk", "source", "snapshot"}, why: "RBD snapshots as disk sources are not supported"},
	{path: []string{"devices", "disk", "transient"}, why: "transient disks (a throw-away overlay per run) are not supported"},
	{path: []string{"devices", "interface", "bandwidth"}, why: "interface bandwidth limits need host traffic control, which qemufs does not manage"},
	{path: []string{"devices", "interface", "vlan"}, why: "VLAN tags need host networking, which qemufs does not manage"},
	{path: []string{"devices", "interface", "virtualport"}, why: "virtual ports (Open vSwitch, 802.1Qbh) need host networking, which qemufs does not manage"},
	{path: []string{"devices", "interface", "teaming"}, why: "failover teaming of interfaces is not supported"},
	{path: []string{"devices", "hostdev", "teaming"}, why: "failover teaming of interfaces is not supported"},
	{path: []string{"devices", "interface", "source", "route"}, why: "host routes for ethernet interfaces need host networking, which qemufs does not manage"},
	{path: []string{"devices", "memory", "source", "pagesize"}, why: "huge pages for memory devices are not supported"},
	{path: []string{"devices", "memory", "source", "nodemask"}, why: "host NUMA binding of memory devices is not supported"},
	{path: []string{"devices", "memory", "source", "alignsize"}, why: "memory device alignment is not supported"},
	{path: []string{"devices", "memory", "source", "pmem"}, why: "persistent-memory backing (pmem) of NVDIMMs is not supported"},
	{path: []string{"memoryBacking", "hugepages", "page"}, why: "only 2 MiB pages for all of the guest's memory are supported (/dev/hugepages): other sizes and node sets are not", allowed: defaultHugePage},
	{path: []string{"cpu", "numa", "interconnects"}, why: "NUMA interconnect latencies and bandwidths (ACPI HMAT) are not supported"},
	{path: []string{"cpu", "numa", "cell", "cache"}, why: "NUMA memory-side caches (ACPI HMAT) are not supported"},
	{path: []string{"vcpus"}, why: "only the boot vCPUs 0..current-1 can be enabled (vCPUs enabled by hot-plug at start are not supported)", allowed: bootVCPUs},
	{path: []string{"cputune", "iothread_period"}, why: "iothread CPU bandwidth (cgroups per iothread) is not supported"},
	{path: []string{"cputune", "iothread_quota"}, why: "iothread CPU bandwidth (cgroups per iothread) is not supported"},
}

// ErrNotHonoured is wrapped by errors about elements qemufs would have to
// ignore (see silentDrops). It matches ErrUnsupported; unlike other
// unsupported features, which depend on the host and wait for the start,
// such a definition is refused at define too.
var ErrNotHonoured = fmt.Errorf("%w: element not honoured", ErrUnsupported)

// refuseSilentDrops returns the first element of silentDrops the
// definition has, as an error naming it.
func (b *builder) refuseSilentDrops() error {
	var walk func(e *etree.Element, path []string) *etree.Element
	walk = func(e *etree.Element, path []string) *etree.Element {
		if len(path) == 0 {
			return e
		}
		for _, c := range children(e, path[0]) {
			if f := walk(c, path[1:]); f != nil {
				return f
			}
		}
		return nil
	}
	for _, s := range silentDrops {
		if e := walk(b.d.root, s.path); e != nil && (s.allowed == nil || !s.allowed(e)) {
			return &Error{Path: pathOf(e), Err: ErrNotHonoured,
				Msg: fmt.Sprintf("<%s> is not supported: %s; remove it (qemufs would otherwise start the guest without it)", e.Tag, s.why)}
		}
	}
	return nil
}

// defaultIOThread is <defaultiothread thread_pool_min thread_pool_max>:
// the main loop's worker pool (QEMU 7.1's main-loop object).
func (b *builder) defaultIOThread() error {
	e := child(b.d.root, "defaultiothread")
	if e == nil || (!hasAttr(e, "thread_pool_min") && !hasAttr(e, "thread_pool_max")) {
		return nil
	}
	if !b.t.atLeast(7, 1) {
		return unsupportedAt(e, "thread pool sizes need QEMU 7.1 or later (the main-loop object)")
	}
	o := obj("qom-type", "main-loop", "id", "main-loop")
	for _, k := range []string{"thread_pool_min", "thread_pool_max"} {
		if v := attr(e, k); v != "" {
			o.add(strings.ReplaceAll(k, "_", "-"), mustUint(v))
		}
	}
	b.object(o)
	return nil
}

// metadataCacheBytes returns <metadata_cache><max_size> of a disk's
// <driver> (top layer) or a backing store's <format>, in bytes.
func metadataCacheBytes(layer *etree.Element, top bool) (uint64, bool) {
	holder := child(layer, "format")
	if top {
		holder = child(layer, "driver")
	}
	ms := child(child(holder, "metadata_cache"), "max_size")
	if ms == nil {
		return 0, false
	}
	n, err := scaled(ms.Text(), attr(ms, "unit"), "bytes")
	return n, err == nil
}

// usbRedirFilter renders <redirfilter> as usb-redir's filter property:
// class:vendor:product:version:allow rules joined by '|', -1 for any.
func (b *builder) usbRedirFilter() string {
	f := child(b.devs, "redirfilter")
	if f == nil {
		return ""
	}
	var rules []string
	for _, u := range children(f, "usbdev") {
		field := func(k, format string) string {
			v := attr(u, k)
			if v == "" || v == "-1" {
				return "-1"
			}
			return fmt.Sprintf(format, mustUint(v))
		}
		version := "-1"
		if v := attr(u, "version"); v != "" && v != "-1" {
			major, minor, _ := strings.Cut(v, ".")
			if len(minor) == 1 {
				minor += "0"
			}
			maj, _ := strconv.ParseUint(major, 16, 8)
			mnr, _ := strconv.ParseUint(minor, 16, 8)
			version = fmt.Sprintf("0x%04X", maj<<8|mnr)
		}
		allow := "0"
		if attr(u, "allow") == "yes" {
			allow = "1"
		}
		rules = append(rules, strings.Join([]string{field("class", "0x%02X"), field("vendor", "0x%04X"),
			field("product", "0x%04X"), version, allow}, ":"))
	}
	return strings.Join(rules, "|")
}

// defaultHugePage accepts a <hugepages><page> that asks for what qemufs
// gives: 2 MiB pages (x86's default hugetlbfs size, /dev/hugepages) for
// all of the guest's memory.
func defaultHugePage(page *etree.Element) bool {
	if hasAttr(page, "nodeset") || len(children(page.Parent(), "page")) != 1 {
		return false
	}
	n, err := scaled(attr(page, "size"), attr(page, "unit"), "KiB")
	return err == nil && n == 2<<20
}

// bootVCPUs accepts a <vcpus> that describes what -smp current,maxcpus
// gives: vCPUs 0..current-1 enabled (and not hot-pluggable), the others
// disabled, as `virsh dumpxml` prints for a guest with fewer vCPUs than
// its maximum.
func bootVCPUs(vcpus *etree.Element) bool {
	n := 0
	for _, v := range children(vcpus, "vcpu") {
		if attr(v, "enabled") != "yes" {
			continue
		}
		id, err := strconv.Atoi(attr(v, "id"))
		if err != nil || attr(v, "hotpluggable") == "yes" {
			return false
		}
		if id >= n {
			n = id + 1
		}
	}
	enabled := 0
	for _, v := range children(vcpus, "vcpu") {
		if attr(v, "enabled") == "yes" {
			enabled++
		}
	}
	d := &Domain{root: vcpus.Parent()}
	return enabled == n && n == d.VCPUs()
}
