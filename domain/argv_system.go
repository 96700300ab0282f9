package domain

import (
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/beevik/etree"
)

func (b *builder) feature(name string) *etree.Element {
	return find(b.d.root, "features", name)
}

func (b *builder) machine() error {
	m := b.d.Machine()
	if m == "" {
		return &Error{Path: "os/type", Msg: "no machine type (expansion found no default)"}
	}
	parts := []string{m, "usb=off"}
	if f := b.feature("vmport"); f != nil {
		parts = append(parts, "vmport="+attrOr(f, "state", "on"))
	}
	if f := b.feature("smm"); f != nil {
		parts = append(parts, "smm="+attrOr(f, "state", "on"))
	}
	dump := "off"
	if attr(child(b.d.root, "memory"), "dumpCore") == "on" {
		dump = "on"
	}
	parts = append(parts, "dump-guest-core="+dump)
	if child(child(b.d.root, "memoryBacking"), "nosharepages") != nil {
		parts = append(parts, "mem-merge=off")
	}
	if !b.hasNUMA() && b.kind != machineMicrovm && b.kind != machineOther {
		parts = append(parts, "memory-backend="+b.ramID())
	}
	parts = append(parts, b.confidentialGuest()...)
	if b.d.Type() == "kvm" {
		if f := b.feature("ioapic"); f != nil && attr(f, "driver") == "qemu" {
			parts = append(parts, "kernel_irqchip=split")
		}
	}
	if b.loaderType() == "pflash" {
		parts = append(parts, "pflash0=libvirt-pflash0-format")
		if b.nvramPath() != "" {
			parts = append(parts, "pflash1=libvirt-pflash1-format")
		}
	}
	if t := b.timer("hpet"); t != nil && attr(t, "present") == "no" {
		parts = append(parts, "hpet=off")
	}
	for _, mem := range children(b.devs, "memory") {
		if attr(mem, "model") == "nvdimm" {
			parts = append(parts, "nvdimm=on")
			break
		}
	}
	if attr(find(b.d.root, "features", "ps2"), "state") == "off" {
		parts = append(parts, "i8042=off")
	}
	for _, s := range children(b.devs, "sound") {
		if attr(s, "model") == "pcspk" {
			parts = append(parts, "pcspk-audiodev=audio1")
		}
	}
	b.add("-machine", strings.Join(parts, ","))
	accel := b.accel()
	if f := b.feature("tcg"); f != nil && accel == "tcg" {
		if tb := child(f, "tb-cache"); tb != nil {
			if kib, err := memoryKiB(tb); err == nil {
				accel += fmt.Sprintf(",tb-size=%d", kib/1024)
			}
		}
	}
	accel += b.dirtyRing()
	b.add("-accel", accel)
	b.add(b.tsegGlobal()...)
	return nil
}

// ramID is the id of the main RAM backend; "pc.ram" keeps the RAM block
// name QEMU uses without a backend, so migration streams match.
func (b *builder) ramID() string { return "pc.ram" }

func (b *builder) hasNUMA() bool { return len(children(find(b.d.root, "cpu", "numa"), "cell")) > 0 }

func (b *builder) timer(name string) *etree.Element {
	for _, t := range children(child(b.d.root, "clock"), "timer") {
		if attr(t, "name") == name {
			return t
		}
	}
	return nil
}

// cpuFeatureName maps libvirt CPU feature names QEMU spells differently
// (beyond '_' for '-').
var cpuFeatureName = map[string]string{
	"pclmuldq": "pclmulqdq", "cmt": "cqm", "mbm_total": "mbm-total", "mbm_local": "mbm-local",
	"sse4_1": "sse4.1", "sse4_2": "sse4.2",
}

func (b *builder) cpu() error {
	cpu := child(b.d.root, "cpu")
	mode := attrOr(cpu, "mode", "custom")
	arch := b.d.Arch()
	var parts []string
	accel := b.accel()
	switch mode {
	case "host-passthrough":
		if accel == "tcg" {
			return &Error{Path: "cpu", Msg: "mode 'host-passthrough' needs KVM or HVF (domain type 'qemu' uses TCG; use mode='maximum')", Err: ErrNeedsKVM}
		}
		parts = append(parts, "host")
		if attr(cpu, "migratable") != "" {
			parts = append(parts, "migratable="+attr(cpu, "migratable"))
		}
	case "maximum":
		parts = append(parts, "max")
	case "host-model":
		if accel == "tcg" {
			parts = append(parts, "max")
		} else {
			parts = append(parts, "host")
		}
	default:
		model := strings.TrimSpace(text(child(cpu, "model")))
		if model == "" {
			if !isX86(arch) {
				return nil
			}
			if arch == "x86_64" {
				model = "qemu64"
			} else {
				model = "qemu32"
			}
			// Without <cpu>, libvirt gives x86_64 guests qemu64 and only
			// adds features the definition asks for below.
		}
		parts = append(parts, model)
	}
	for _, f := range children(cpu, "feature") {
		name := qemuCPUFlag(attr(f, "name"))
		if name == "" {
			if isX86(arch) {
				continue
			}
			name = attr(f, "name")
		}
		switch attrOr(f, "policy", "require") {
		case "force", "require", "optional":
			parts = append(parts, name+"=on")
		case "disable", "forbid":
			parts = append(parts, name+"=off")
		}
	}
	// Paravirt and Hyper-V features.
	if f := b.feature("apic"); f != nil && attr(f, "eoi") != "" {
		parts = append(parts, "kvm-pv-eoi="+attr(f, "eoi"))
	}
	if b.featureSet("pvspinlock") {
		parts = append(parts, "kvm-pv-unhalt="+attrOr(b.feature("pvspinlock"), "state", "on"))
	}
	if f := b.feature("pmu"); f != nil {
		parts = append(parts, "pmu="+attrOr(f, "state", "on"))
	}
	if t := b.timer("kvmclock"); t != nil {
		on := attr(t, "present") != "no"
		parts = append(parts, "kvmclock="+onoff(on))
	}
	if t := b.timer("hypervclock"); t != nil && attr(t, "present") != "no" {
		parts = append(parts, "hv-time=on")
	}
	if t := b.timer("tsc"); t != nil && attr(t, "frequency") != "" {
		parts = append(parts, "tsc-frequency="+attr(t, "frequency"))
	}
	if hv := b.feature("hyperv"); hv != nil && accel == "tcg" {
		// TCG emulates the Hyper-V MSRs except the VP index (and has no
		// host to pass through).
		if attr(hv, "mode") == "passthrough" {
			return &Error{Path: "features/hyperv", Msg: "Hyper-V passthrough mode needs KVM (domain type 'qemu' uses TCG)", Err: ErrNeedsKVM}
		}
		if vp := child(hv, "vpindex"); attr(vp, "state") == "on" {
			return &Error{Path: pathOf(vp), Msg: "the Hyper-V VP index needs KVM (domain type 'qemu' uses TCG)", Err: ErrNeedsKVM}
		}
	}
	if hv := b.feature("hyperv"); hv != nil && attrOr(hv, "mode", "custom") == "custom" {
		for _, h := range hv.ChildElements() {
			if attr(h, "state") != "on" {
				continue
			}
			switch h.Tag {
			case "spinlocks":
				parts = append(parts, "hv-spinlocks=0x"+strconv.FormatUint(mustUint(attr(h, "retries")), 16))
			case "vendor_id":
				parts = append(parts, "hv-vendor-id="+attr(h, "value"))
			case "stimer":
				parts = append(parts, "hv-stimer=on")
				if attr(child(h, "direct"), "state") == "on" {
					parts = append(parts, "hv-stimer-direct=on")
				}
			case "tlbflush":
				parts = append(parts, "hv-tlbflush=on")
			default:
				parts = append(parts, "hv-"+strings.ReplaceAll(h.Tag, "_", "-")+"=on")
			}
		}
	} else if hv != nil {
		parts = append(parts, "hv-passthrough=on")
	}
	if k := b.feature("kvm"); k != nil {
		for _, h := range k.ChildElements() {
			switch h.Tag {
			case "hidden":
				parts = append(parts, "kvm="+onoff(attr(h, "state") != "on"))
			case "hint-dedicated":
				parts = append(parts, "kvm-hint-dedicated="+attr(h, "state"))
			case "poll-control":
				parts = append(parts, "kvm-poll-control="+attr(h, "state"))
			case "pv-ipi":
				parts = append(parts, "kvm-pv-ipi="+attr(h, "state"))
			}
		}
	}
	if mp := child(cpu, "maxphysaddr"); mp != nil {
		switch attr(mp, "mode") {
		case "passthrough":
			parts = append(parts, "host-phys-bits=on")
		case "emulate":
			if bits := attr(mp, "bits"); bits != "" {
				parts = append(parts, "phys-bits="+bits)
			}
		}
	}
	if c := child(cpu, "cache"); c != nil {
		switch attr(c, "mode") {
		case "passthrough":
			parts = append(parts, "host-cache-info=on")
		case "disable":
			parts = append(parts, "l3-cache=off")
		case "emulate":
			parts = append(parts, "l3-cache=on")
		}
	}
	if len(parts) > 0 {
		b.add("-cpu", strings.Join(parts, ","))
	}
	return nil
}

func (b *builder) featureSet(name string) bool { return b.feature(name) != nil }

func onoff(v bool) string {
	if v {
		return "on"
	}
	return "off"
}

func mustUint(s string) uint64 {
	n, _ := parseUint(s)
	return n
}

// loaderType returns "rom", "pflash" or "" (no loader).
func (b *builder) loaderType() string {
	l := find(b.d.root, "os", "loader")
	if l == nil || strings.TrimSpace(l.Text()) == "" {
		return ""
	}
	if t := attr(l, "type"); t != "" {
		return t
	}
	if attr(l, "readonly") == "yes" {
		return "pflash"
	}
	return "rom"
}

// nvramPath returns the NVRAM file used with a pflash loader: os/nvram, or
// LibDir/NAME_VARS.fd when a template or secure/readonly loader asks for
// one.
func (b *builder) nvramPath() string {
	p, _ := b.d.NVRAMPath(b.opts.LibDir)
	return p
}

// NVRAMPath returns the UEFI variable store a start uses and the template
// to create it from when it does not exist yet (the driver copies it, as
// libvirt does): os/nvram's path, else libDir/NAME_VARS.fd when the
// definition has a template or a read-only pflash loader. path is ""
// when the guest has no variable store.
func (d *Domain) NVRAMPath(libDir string) (path, template string) {
	n := find(d.root, "os", "nvram")
	template = attr(n, "template")
	if p := nvramFile(n); p != "" {
		return p, template
	}
	l := find(d.root, "os", "loader")
	if l == nil || strings.TrimSpace(l.Text()) == "" {
		return "", ""
	}
	if n != nil || (attr(l, "readonly") == "yes" && attr(l, "stateless") != "yes") {
		return filepath.Join(libDir, d.Name()+"_VARS.fd"), template
	}
	return "", template
}

func (b *builder) firmware() error {
	l := find(b.d.root, "os", "loader")
	path := strings.TrimSpace(text(l))
	switch b.loaderType() {
	case "rom":
		b.add("-bios", path)
	case "pflash":
		b.add("-blockdev", obj("driver", "file", "filename", path, "node-name", "libvirt-pflash0-storage",
			"auto-read-only", true, "discard", "unmap").String())
		b.add("-blockdev", obj("node-name", "libvirt-pflash0-format", "read-only", attr(l, "readonly") == "yes",
			"driver", attrOr(l, "format", "raw"), "file", "libvirt-pflash0-storage").String())
		if nv := b.nvramPath(); nv != "" {
			b.add("-blockdev", obj("driver", "file", "filename", nv, "node-name", "libvirt-pflash1-storage",
				"auto-read-only", true, "discard", "unmap").String())
			b.add("-blockdev", obj("node-name", "libvirt-pflash1-format", "read-only", false,
				"driver", "raw", "file", "libvirt-pflash1-storage").String())
		}
		if attr(l, "secure") == "yes" {
			b.add("-global", "driver=cfi.pflash01,property=secure,value=on")
		}
	}
	return nil
}

// memBackend returns the -object of a RAM backend of size bytes, honouring
// memoryBacking (hugepages, memfd/file source, shared access, locked,
// discard, prealloc).
func (b *builder) memBackend(id string, bytes uint64, cell *etree.Element) jobj {
	mb := child(b.d.root, "memoryBacking")
	src := attr(child(mb, "source"), "type")
	access := attr(child(mb, "access"), "mode")
	if cell != nil && attr(cell, "memAccess") != "" {
		access = attr(cell, "memAccess")
	}
	huge := child(mb, "hugepages")
	var o jobj
	switch {
	case huge != nil:
		o = obj("qom-type", "memory-backend-file", "id", id, "mem-path", "/dev/hugepages/libvirt/qemu")
		o.add("prealloc", true)
	case src == "memfd":
		o = obj("qom-type", "memory-backend-memfd", "id", id)
	case src == "file":
		o = obj("qom-type", "memory-backend-file", "id", id, "mem-path", filepath.Join(b.opts.LibDir, "ram"))
	default:
		o = obj("qom-type", "memory-backend-ram", "id", id)
	}
	if access == "shared" {
		o.add("share", true)
	} else if access == "private" && (src != "" || huge != nil) {
		o.add("share", false)
	}
	if child(mb, "discard") != nil && (src == "file" || huge != nil) {
		o.add("discard-data", true)
	}
	if attr(child(mb, "allocation"), "mode") == "immediate" {
		if _, ok := o.get("prealloc"); !ok {
			o.add("prealloc", true)
		}
	}
	o.add("size", bytes)
	if cell != nil && b.hostNodes(cell) != "" {
		o.add("host-nodes", b.hostNodes(cell))
	}
	return o
}

// hostNodes is a placeholder for numatune memnode binding: qemufs records
// numatune but binds memory only through cgroups (cpuset.mems).
func (b *builder) hostNodes(*etree.Element) string { return "" }

// initialMemoryMiB is the boot RAM (-m size) in MiB: the sum of the NUMA
// cells, each rounded up to a MiB, or <memory> minus memory devices.
func (b *builder) initialMemoryMiB() uint64 {
	if cells := children(find(b.d.root, "cpu", "numa"), "cell"); len(cells) > 0 {
		var mib uint64
		for _, c := range cells {
			n, _ := scaled(attr(c, "memory"), attr(c, "unit"), "KiB")
			mib += (n + 1<<20 - 1) >> 20
		}
		return mib
	}
	memKiB := b.d.MemoryKiB()
	var dimmKiB uint64
	for _, m := range children(b.devs, "memory") {
		dimmKiB += memDeviceKiB(m)
	}
	if dimmKiB < memKiB {
		memKiB -= dimmKiB
	}
	return (memKiB + 1023) / 1024
}

// memDeviceKiB is the size of a memory device, aligned to 2 MiB as QEMU
// needs for DIMMs on x86.
func memDeviceKiB(m *etree.Element) uint64 {
	v, _ := memoryKiB(find(m, "target", "size"))
	return (v + 2047) / 2048 * 2048
}

func (b *builder) memory() error {
	r := b.d.root
	mib := b.initialMemoryMiB()
	if mm := child(r, "maxMemory"); mm != nil {
		maxKiB, _ := memoryKiB(mm)
		b.add("-m", fmt.Sprintf("size=%dk,slots=%s,maxmem=%dk", mib*1024, attrOr(mm, "slots", "0"), maxKiB))
	} else {
		b.add("-m", strconv.FormatUint(mib, 10))
	}
	if !b.hasNUMA() && b.kind != machineMicrovm && b.kind != machineOther {
		b.object(b.memBackend(b.ramID(), mib*1024*1024, nil))
	}
	lock := "off"
	if child(child(r, "memoryBacking"), "locked") != nil {
		lock = "on"
	}
	b.add("-overcommit", "mem-lock="+lock)
	return nil
}

func (b *builder) smp() error {
	v := child(b.d.root, "vcpu")
	maxv := b.d.MaxVCPUs()
	cur := b.d.VCPUs()
	_ = v
	sockets, dies, cores, threads := maxv, 1, 1, 1
	if t := find(b.d.root, "cpu", "topology"); t != nil {
		sockets = int(mustUint(attr(t, "sockets")))
		dies = int(mustUint(attrOr(t, "dies", "1")))
		cores = int(mustUint(attr(t, "cores")))
		threads = int(mustUint(attr(t, "threads")))
	}
	s := strconv.Itoa(cur)
	if cur != maxv {
		s += ",maxcpus=" + strconv.Itoa(maxv)
	}
	s += ",sockets=" + strconv.Itoa(sockets)
	if dies > 1 {
		s += ",dies=" + strconv.Itoa(dies)
	}
	s += ",cores=" + strconv.Itoa(cores) + ",threads=" + strconv.Itoa(threads)
	b.add("-smp", s)
	// I/O threads.
	n := int(mustUint(trimText(child(b.d.root, "iothreads"))))
	ids := children(child(b.d.root, "iothreadids"), "iothread")
	if len(ids) > 0 {
		for _, t := range ids {
			b.object(obj("qom-type", "iothread", "id", "iothread"+attr(t, "id")))
		}
	} else {
		for i := 1; i <= n; i++ {
			b.object(obj("qom-type", "iothread", "id", "iothread"+strconv.Itoa(i)))
		}
	}
	return nil
}

func (b *builder) numa() error {
	cells := children(find(b.d.root, "cpu", "numa"), "cell")
	if len(cells) == 0 {
		return nil
	}
	for i, cell := range cells {
		bytes, err := scaled(attr(cell, "memory"), attr(cell, "unit"), "KiB")
		if err != nil {
			return errAt(cell, "attribute memory: %v", err)
		}
		bytes = (bytes + 1<<20 - 1) >> 20 << 20 // QEMU wants whole MiB
		id := attrOr(cell, "id", strconv.Itoa(i))
		b.object(b.memBackend("ram-node"+id, bytes, cell))
		arg := "node,nodeid=" + id
		if cpus := attr(cell, "cpus"); cpus != "" {
			set, _ := parseCPUSet(cpus)
			for _, r := range cpuRanges(set) {
				arg += ",cpus=" + r
			}
		}
		arg += ",memdev=ram-node" + id
		b.add("-numa", arg)
	}
	for _, cell := range cells {
		for _, d := range children(child(cell, "distances"), "sibling") {
			b.add("-numa", fmt.Sprintf("dist,src=%s,dst=%s,val=%s", attr(cell, "id"), attr(d, "id"), attr(d, "value")))
		}
	}
	return nil
}

// cpuRanges renders a CPU list as QEMU ranges ("0-3", "6").
func cpuRanges(set []int) []string {
	sort.Ints(set)
	var out []string
	for i := 0; i < len(set); {
		j := i
		for j+1 < len(set) && set[j+1] == set[j]+1 {
			j++
		}
		if i == j {
			out = append(out, strconv.Itoa(set[i]))
		} else {
			out = append(out, fmt.Sprintf("%d-%d", set[i], set[j]))
		}
		i = j + 1
	}
	return out
}

func (b *builder) uuidSMBIOS() error {
	b.add("-uuid", b.d.UUID())
	if g := child(b.d.root, "genid"); g != nil {
		id := strings.TrimSpace(g.Text())
		if id != "" {
			b.device(obj("driver", "vmgenid", "guid", id, "id", "vmgenid0"))
		}
	}
	if attr(find(b.d.root, "os", "smbios"), "mode") != "sysinfo" {
		return nil
	}
	for _, si := range children(b.d.root, "sysinfo") {
		if attr(si, "type") != "smbios" {
			continue
		}
		add := func(typ string, e *etree.Element, names map[string]string) {
			if e == nil {
				return
			}
			arg := "type=" + typ
			for _, en := range children(e, "entry") {
				if k, ok := names[attr(en, "name")]; ok {
					arg += "," + k + "=" + kvEscape(en.Text())
				}
			}
			if arg != "type="+typ {
				b.add("-smbios", arg)
			}
		}
		add("0", child(si, "bios"), map[string]string{"vendor": "vendor", "version": "version", "date": "date", "release": "release"})
		add("1", child(si, "system"), map[string]string{"manufacturer": "manufacturer", "product": "product",
			"version": "version", "serial": "serial", "uuid": "uuid", "sku": "sku", "family": "family"})
		for _, bb := range children(si, "baseBoard") {
			add("2", bb, map[string]string{"manufacturer": "manufacturer", "product": "product", "version": "version",
				"serial": "serial", "asset": "asset", "location": "location"})
		}
		add("3", child(si, "chassis"), map[string]string{"manufacturer": "manufacturer", "version": "version",
			"serial": "serial", "asset": "asset", "sku": "sku"})
		if oem := child(si, "oemStrings"); oem != nil {
			arg := "type=11"
			for _, s := range children(oem, "entry") {
				arg += ",value=" + kvEscape(s.Text())
			}
			b.add("-smbios", arg)
		}
	}
	return nil
}

func (b *builder) display() error {
	gs := children(b.devs, "graphics")
	if len(gs) == 0 {
		b.add("-display", "none")
	}
	b.add("-no-user-config", "-nodefaults")
	return nil
}

func (b *builder) clock() error {
	cl := child(b.d.root, "clock")
	var parts []string
	switch attrOr(cl, "offset", "utc") {
	case "utc":
		parts = append(parts, "base=utc")
	case "localtime", "timezone":
		parts = append(parts, "base=localtime")
	case "variable", "absolute":
		var t time.Time
		if attr(cl, "offset") == "absolute" {
			t = time.Unix(int64(mustUint(attr(cl, "start"))), 0).UTC()
		} else {
			adj, _ := strconv.ParseInt(attrOr(cl, "adjustment", "0"), 10, 64)
			t = time.Now().UTC().Add(time.Duration(adj) * time.Second)
			if attr(cl, "basis") == "localtime" {
				t = time.Now().Add(time.Duration(adj) * time.Second)
			}
		}
		parts = append(parts, "base="+t.Format("2006-01-02T15:04:05"))
	}
	if rtc := b.timer("rtc"); rtc != nil {
		switch attr(rtc, "track") {
		case "guest":
			parts = append(parts, "clock=vm")
		case "wall":
			parts = append(parts, "clock=host")
		case "realtime":
			parts = append(parts, "clock=rt")
		}
		if attr(rtc, "tickpolicy") == "catchup" {
			parts = append(parts, "driftfix=slew")
		}
	}
	b.add("-rtc", strings.Join(parts, ","))
	if pit := b.timer("pit"); pit != nil {
		switch attr(pit, "tickpolicy") {
		case "delay":
			b.add("-global", "kvm-pit.lost_tick_policy=delay")
		case "discard":
			b.add("-global", "kvm-pit.lost_tick_policy=discard")
		}
	}
	return nil
}

func (b *builder) lifecycle() error {
	b.add("-no-shutdown")
	if b.d.OnReboot() == "destroy" {
		b.add("-action", "reboot=shutdown")
	}
	panics := len(children(b.devs, "panic")) > 0
	if hv := b.feature("hyperv"); hv != nil && attr(child(hv, "crash"), "state") == "on" {
		panics = true
	}
	if panics {
		b.add("-action", "panic=pause")
	}
	if isX86(b.d.Arch()) && b.feature("acpi") == nil && (b.kind == machineI440FX || b.kind == machineQ35) {
		b.add("-no-acpi")
	}
	return nil
}

func (b *builder) pm() error {
	pm := child(b.d.root, "pm")
	if pm == nil {
		return nil
	}
	dev := "PIIX4_PM"
	if b.kind == machineQ35 {
		dev = "ICH9-LPC"
	}
	if b.kind != machineI440FX && b.kind != machineQ35 {
		return nil
	}
	for _, p := range [][2]string{{"suspend-to-mem", "disable_s3"}, {"suspend-to-disk", "disable_s4"}} {
		if e := child(pm, p[0]); e != nil && attr(e, "enabled") != "" {
			v := "1"
			if attr(e, "enabled") == "yes" {
				v = "0"
			}
			b.add("-global", dev+"."+p[1]+"="+v)
		}
	}
	return nil
}

// boot computes per-device boot indexes from os/boot (first disk, cdrom,
// floppy or NIC of each listed kind), or takes the devices' own <boot
// order>, and adds -boot.
func (b *builder) boot() error {
	os := child(b.d.root, "os")
	boots := children(os, "boot")
	if len(boots) > 0 {
		idx := 0
		for _, bt := range boots {
			idx++
			var dev *etree.Element
			switch attr(bt, "dev") {
			case "hd", "cdrom", "fd":
				want := map[string]string{"hd": "disk", "cdrom": "cdrom", "fd": "floppy"}[attr(bt, "dev")]
				for _, d := range children(b.devs, "disk") {
					if attrOr(d, "device", "disk") == want {
						dev = d
						break
					}
				}
			case "network":
				for _, n := range children(b.devs, "interface") {
					dev = n
					break
				}
			}
			if dev != nil {
				b.bootIndex[dev] = idx
			} else {
				idx--
			}
		}
	} else {
		for _, e := range b.devs.ChildElements() {
			if bt := child(e, "boot"); bt != nil {
				n, _ := strconv.Atoi(attr(bt, "order"))
				b.bootIndex[e] = n
			}
		}
	}
	for e, n := range b.bootIndex {
		if e.Tag == "disk" && attr(e, "device") == "floppy" {
			b.fdcBoot[int(mustUint(attr(child(e, "address"), "unit")))] = n
		}
	}
	var parts []string
	if bm := child(os, "bootmenu"); bm != nil && attr(bm, "enable") != "" {
		parts = append(parts, "menu="+onoff(attr(bm, "enable") == "yes"))
		if t := attr(bm, "timeout"); t != "" && attr(bm, "enable") == "yes" {
			parts = append(parts, "splash-time="+t)
		}
	}
	if bios := child(os, "bios"); bios != nil && attr(bios, "rebootTimeout") != "" {
		parts = append(parts, "reboot-timeout="+attr(bios, "rebootTimeout"))
	}
	parts = append(parts, "strict=on")
	b.add("-boot", strings.Join(parts, ","))
	if bios := child(os, "bios"); bios != nil && attr(bios, "useserial") == "yes" {
		// SeaBIOS prints on the serial port with sgabios gone: use the
		// firmware config switch QEMU 7.2 understands.
		b.add("-fw_cfg", "name=etc/sercon-port,string=1016")
	}
	return nil
}

func (b *builder) kernel() error {
	if k := b.d.Kernel(); k != "" {
		b.add("-kernel", k)
	}
	if i := b.d.Initrd(); i != "" {
		b.add("-initrd", i)
	}
	if c := b.d.Cmdline(); c != "" {
		b.add("-append", c)
	}
	if d := b.d.DTB(); d != "" {
		b.add("-dtb", d)
	}
	for _, t := range children(find(b.d.root, "os", "acpi"), "table") {
		b.add("-acpitable", "sig=SLIC,file="+kvEscape(strings.TrimSpace(t.Text())))
	}
	return nil
}
