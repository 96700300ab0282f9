package domain

import (
	"fmt"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// checker collects the first problem found while checking a definition.
type checker struct {
	err *Error
}

func (c *checker) fail(e *etree.Element, format string, args ...any) {
	if c.err == nil {
		c.err = errAt(e, format, args...)
	}
}

func (c *checker) unsupported(e *etree.Element, format string, args ...any) {
	if c.err == nil {
		c.err = unsupportedAt(e, format, args...)
	}
}

// required checks that e has attribute key.
func (c *checker) required(e *etree.Element, key string) string {
	if !hasAttr(e, key) {
		c.fail(e, "attribute %s is required", key)
		return ""
	}
	v := attr(e, key)
	if strings.TrimSpace(v) == "" {
		c.fail(e, "attribute %s must not be empty", key)
	}
	return v
}

// enum checks that attribute key, when present, is one of allowed.
func (c *checker) enum(e *etree.Element, key string, allowed ...string) string {
	if !hasAttr(e, key) {
		return ""
	}
	v := attr(e, key)
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	c.fail(e, "attribute %s: unknown value %q (expected one of: %s)", key, v, strings.Join(allowed, ", "))
	return v
}

// enumText checks that e's text is one of allowed.
func (c *checker) enumText(e *etree.Element, allowed ...string) string {
	v := strings.TrimSpace(e.Text())
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	c.fail(e, "unknown value %q (expected one of: %s)", v, strings.Join(allowed, ", "))
	return v
}

func (c *checker) yesno(e *etree.Element, keys ...string) {
	for _, k := range keys {
		c.enum(e, k, "yes", "no")
	}
}

func (c *checker) onoff(e *etree.Element, keys ...string) {
	for _, k := range keys {
		c.enum(e, k, "on", "off")
	}
}

// uint checks that attribute key, when present, is an unsigned integer
// (decimal, or hex with 0x) within [lo, hi].
func (c *checker) uint(e *etree.Element, key string, lo, hi uint64) (uint64, bool) {
	if !hasAttr(e, key) {
		return 0, false
	}
	v := attr(e, key)
	n, err := parseUint(v)
	if err != nil {
		c.fail(e, "attribute %s: %q is not an unsigned integer", key, v)
		return 0, false
	}
	if n < lo || n > hi {
		c.fail(e, "attribute %s: %d is out of range [%d, %d]", key, n, lo, hi)
		return n, false
	}
	return n, true
}

// int checks that attribute key, when present, is a decimal integer
// within [lo, hi].
func (c *checker) int(e *etree.Element, key string, lo, hi int64) (int64, bool) {
	if !hasAttr(e, key) {
		return 0, false
	}
	v := attr(e, key)
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		c.fail(e, "attribute %s: %q is not an integer", key, v)
		return 0, false
	}
	if n < lo || n > hi {
		c.fail(e, "attribute %s: %d is out of range [%d, %d]", key, n, lo, hi)
		return n, false
	}
	return n, true
}

func parseUint(v string) (uint64, error) {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X") {
		return strconv.ParseUint(v[2:], 16, 64)
	}
	return strconv.ParseUint(v, 10, 64)
}

// known checks that every child element of e in no namespace is one of
// tags. Namespaced children are extensions and are kept as they are.
func (c *checker) known(e *etree.Element, tags ...string) {
	for _, ch := range e.ChildElements() {
		if ch.Space != "" || ch.NamespaceURI() != "" {
			continue
		}
		ok := false
		for _, t := range tags {
			if ch.Tag == t {
				ok = true
				break
			}
		}
		if !ok {
			sorted := append([]string(nil), tags...)
			sort.Strings(sorted)
			c.fail(ch, "unknown element <%s> (expected one of: %s)", ch.Tag, strings.Join(sorted, ", "))
			return
		}
	}
}

// once checks that tag appears at most once under e.
func (c *checker) once(e *etree.Element, tags ...string) {
	for _, t := range tags {
		if l := children(e, t); len(l) > 1 {
			c.fail(l[1], "element <%s> may appear only once", t)
		}
	}
}

// path checks that an attribute holding a host path is absolute.
func (c *checker) absPath(e *etree.Element, key string) {
	if v := attr(e, key); hasAttr(e, key) && !strings.HasPrefix(v, "/") {
		c.fail(e, "attribute %s: path %q must be absolute", key, v)
	}
}

var macRE = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)

// topLevel lists the children of <domain> qemufs knows.
var topLevel = []string{"name", "uuid", "genid", "title", "description", "metadata",
	"maxMemory", "memory", "currentMemory", "blkiotune", "memtune", "memoryBacking",
	"vcpu", "vcpus", "iothreads", "iothreadids", "cputune", "numatune", "resource",
	"sysinfo", "bootloader", "bootloader_args", "os", "idmap", "features", "cpu",
	"clock", "on_poweroff", "on_reboot", "on_crash", "on_lockfailure", "pm", "perf",
	"devices", "seclabel", "keywrap", "launchSecurity", "throttlegroups", "defaultiothread"}

// check validates everything that does not depend on the host.
func (d *Domain) check() error {
	c := &checker{}
	r := d.root
	checkMixed(c, r)
	c.known(r, topLevel...)
	c.once(r, "name", "uuid", "genid", "title", "description", "metadata", "maxMemory", "memory",
		"currentMemory", "vcpu", "vcpus", "os", "features", "cpu", "clock", "on_poweroff",
		"on_reboot", "on_crash", "pm", "devices", "iothreads", "iothreadids", "cputune",
		"numatune", "memtune", "blkiotune", "memoryBacking", "resource", "idmap", "perf",
		"keywrap", "launchSecurity")
	if c.err != nil {
		return c.err
	}
	d.checkGeneral(c)
	d.checkTuning(c)
	d.checkOS(c)
	d.checkFeatures(c)
	d.checkCPU(c)
	d.checkClock(c)
	d.checkDevices(c)
	d.checkSecLabels(c)
	d.checkQEMUNamespace(c)
	d.checkLaunchSecurity(c)
	if c.err != nil {
		return c.err
	}
	return nil
}

// checkMixed rejects text between child elements (mixed content), which
// has no meaning in a domain definition; foreign metadata is left alone.
func checkMixed(c *checker, e *etree.Element) {
	if e.Space != "" || e.Tag == "metadata" {
		return
	}
	container := len(e.ChildElements()) > 0 || containerTags[e.Tag] ||
		(e.Parent() != nil && e.Parent().Tag == "devices" && e.Tag != "emulator")
	if container {
		for _, tok := range e.Child {
			if cd, ok := tok.(*etree.CharData); ok && strings.TrimSpace(cd.Data) != "" {
				c.fail(e, "unexpected text %q between elements", strings.TrimSpace(cd.Data))
				return
			}
		}
	}
	for _, ch := range e.ChildElements() {
		checkMixed(c, ch)
	}
}

// containerTags hold elements, never text.
var containerTags = map[string]bool{"domain": true, "devices": true, "os": true, "features": true,
	"cpu": true, "clock": true, "pm": true, "memtune": true, "blkiotune": true, "cputune": true,
	"numatune": true, "memoryBacking": true, "iothreadids": true, "sysinfo": true, "resource": true,
	"source": true, "target": true, "driver": true, "address": true}

// virtTypes lists the domain types libvirt knows; qemufs runs the ones
// QEMU implements.
var virtTypes = []string{"qemu", "kvm", "hvf", "kqemu", "xen", "lxc", "uml", "openvz",
	"test", "vmware", "hyperv", "vbox", "phyp", "parallels", "bhyve", "vz", "none"}

func (d *Domain) checkGeneral(c *checker) {
	r := d.root
	if !hasAttr(r, "type") {
		c.fail(r, "attribute type is required (qemu, kvm or hvf)")
		return
	}
	t := c.enum(r, "type", virtTypes...)
	if c.err != nil {
		return
	}
	switch t {
	case "qemu", "kvm", "hvf":
	default:
		c.unsupported(r, "domain type %q is not supported by the QEMU driver (use qemu, kvm or hvf)", t)
	}
	if n := child(r, "name"); n != nil {
		if err := ValidName(strings.TrimSpace(n.Text())); err != nil {
			c.fail(n, "%s", err.(*Error).Msg)
		}
	}
	if u := child(r, "uuid"); u != nil {
		if _, ok := canonicalUUID(u.Text()); !ok {
			c.fail(u, "malformed UUID %q", strings.TrimSpace(u.Text()))
		}
	}
	if g := child(r, "genid"); g != nil && strings.TrimSpace(g.Text()) != "" {
		if _, ok := canonicalUUID(g.Text()); !ok {
			c.fail(g, "malformed UUID %q", strings.TrimSpace(g.Text()))
		}
	}
	mem := child(r, "memory")
	var memKiB uint64
	for _, tag := range []string{"memory", "currentMemory", "maxMemory"} {
		e := child(r, tag)
		if e == nil {
			continue
		}
		v, err := memoryKiB(e)
		if err != nil {
			c.fail(e, "%v", err)
			continue
		}
		if tag == "memory" {
			memKiB = v
		}
		if v == 0 && tag != "maxMemory" {
			c.fail(e, "must be greater than zero")
		}
		if tag == "maxMemory" {
			c.uint(e, "slots", 0, 255)
		}
	}
	if mem == nil && len(find(r, "cpu", "numa").NotNil().ChildElements()) == 0 {
		c.fail(r, "element <memory> is required")
	}
	if memKiB > 0 && memKiB < 1024 {
		c.fail(mem, "%d KiB is too small (at least 1 MiB)", memKiB)
	}
	if v := child(r, "vcpu"); v != nil {
		n, err := strconv.Atoi(strings.TrimSpace(v.Text()))
		if err != nil || n < 1 {
			c.fail(v, "invalid vCPU count %q: expected a positive integer", strings.TrimSpace(v.Text()))
		} else if n > 4096 {
			c.fail(v, "vCPU count %d is too large", n)
		}
		c.enum(v, "placement", "static", "auto")
		if cur, ok := c.uint(v, "current", 1, 4096); ok && int(cur) > n && err == nil {
			c.fail(v, "attribute current: %d is more than the vCPU count %d", cur, n)
		}
		if cs := attr(v, "cpuset"); hasAttr(v, "cpuset") {
			if _, err := parseCPUSet(cs); err != nil {
				c.fail(v, "attribute cpuset: %v", err)
			}
		}
	}
	for _, tag := range []string{"on_poweroff", "on_reboot", "on_crash"} {
		e := child(r, tag)
		if e == nil {
			continue
		}
		allowed := []string{"destroy", "restart", "preserve", "rename-restart"}
		if tag == "on_crash" {
			allowed = append(allowed, "coredump-destroy", "coredump-restart")
		}
		v := c.enumText(e, allowed...)
		if v == "rename-restart" {
			c.unsupported(e, "action rename-restart is not supported by the QEMU driver")
		}
	}
	if e := child(r, "on_lockfailure"); e != nil {
		c.enumText(e, "poweroff", "restart", "pause", "ignore")
	}
	if pm := child(r, "pm"); pm != nil {
		c.known(pm, "suspend-to-mem", "suspend-to-disk")
		for _, s := range pm.ChildElements() {
			c.yesno(s, "enabled")
		}
	}
	if it := child(r, "iothreads"); it != nil {
		if n, err := strconv.Atoi(strings.TrimSpace(it.Text())); err != nil || n < 0 {
			c.fail(it, "invalid iothread count %q", strings.TrimSpace(it.Text()))
		}
	}
	if ids := child(r, "iothreadids"); ids != nil {
		c.known(ids, "iothread")
		seen := map[uint64]bool{}
		for _, t := range children(ids, "iothread") {
			c.required(t, "id")
			if n, ok := c.uint(t, "id", 1, 1<<31); ok {
				if seen[n] {
					c.fail(t, "duplicate iothread id %d", n)
				}
				seen[n] = true
			}
		}
	}
	if mb := child(r, "memoryBacking"); mb != nil {
		c.known(mb, "hugepages", "nosharepages", "locked", "source", "access", "allocation", "discard")
		c.enum(child(mb, "source"), "type", "file", "anonymous", "memfd")
		c.enum(child(mb, "access"), "mode", "shared", "private")
		c.enum(child(mb, "allocation"), "mode", "immediate", "ondemand")
	}
}

func (d *Domain) checkOS(c *checker) {
	os := child(d.root, "os")
	if os == nil {
		c.fail(d.root, "element <os> is required")
		return
	}
	c.known(os, "type", "firmware", "loader", "nvram", "kernel", "initrd", "cmdline", "dtb",
		"acpi", "boot", "bootmenu", "smbios", "bios", "init", "initarg", "initenv", "initdir",
		"inituser", "initgroup", "idmap")
	c.once(os, "type", "loader", "nvram", "kernel", "initrd", "cmdline", "dtb", "bootmenu", "smbios", "bios", "acpi")
	c.enum(os, "firmware", "bios", "efi")
	t := child(os, "type")
	if t == nil {
		c.fail(os, "element <type> is required")
		return
	}
	switch v := strings.TrimSpace(t.Text()); v {
	case "hvm":
	case "":
		c.fail(t, "OS type is required (hvm)")
	default:
		c.unsupported(t, "OS type %q is not supported by the QEMU driver (use hvm)", v)
	}
	if hasAttr(t, "arch") {
		c.enum(t, "arch", knownArches...)
	}
	if hasAttr(t, "machine") && strings.TrimSpace(attr(t, "machine")) == "" {
		c.fail(t, "attribute machine must not be empty")
	}
	boots := children(os, "boot")
	seen := map[string]bool{}
	for _, b := range boots {
		dev := c.required(b, "dev")
		c.enum(b, "dev", "fd", "hd", "cdrom", "network")
		if seen[dev] {
			c.fail(b, "boot device %q listed twice", dev)
		}
		seen[dev] = true
	}
	if len(boots) > 0 {
		for _, disk := range children(child(d.root, "devices"), "disk") {
			if child(disk, "boot") != nil {
				c.fail(child(disk, "boot"), "per-device boot order cannot be used together with os/boot")
				break
			}
		}
		for _, n := range children(child(d.root, "devices"), "interface") {
			if child(n, "boot") != nil {
				c.fail(child(n, "boot"), "per-device boot order cannot be used together with os/boot")
				break
			}
		}
	}
	if bm := child(os, "bootmenu"); bm != nil {
		c.yesno(bm, "enable")
		c.uint(bm, "timeout", 0, 65535)
	}
	if l := child(os, "loader"); l != nil {
		c.yesno(l, "readonly", "secure", "stateless")
		c.enum(l, "type", "rom", "pflash")
		c.enum(l, "format", "raw", "qcow2")
	}
	if b := child(os, "bios"); b != nil {
		c.yesno(b, "useserial")
		c.int(b, "rebootTimeout", -1, 65535) // -1 disables reboot
	}
	if s := child(os, "smbios"); s != nil {
		c.required(s, "mode")
		c.enum(s, "mode", "emulate", "host", "sysinfo")
	}
	for _, tag := range []string{"kernel", "initrd", "dtb", "loader", "nvram"} {
		if e := child(os, tag); e != nil && strings.TrimSpace(e.Text()) != "" && !strings.HasPrefix(strings.TrimSpace(e.Text()), "/") {
			c.fail(e, "path %q must be absolute", strings.TrimSpace(e.Text()))
		}
	}
	if a := child(os, "acpi"); a != nil {
		c.known(a, "table")
		for _, tb := range children(a, "table") {
			c.required(tb, "type")
			c.enum(tb, "type", "slic")
		}
	}
}

// knownArches are libvirt's architecture names.
var knownArches = []string{"aarch64", "alpha", "armv6l", "armv7l", "armv7b", "cris", "i686",
	"ia64", "lm32", "loongarch64", "m68k", "microblaze", "microblazeel", "mips", "mipsel", "mips64",
	"mips64el", "openrisc", "parisc", "parisc64", "ppc", "ppcle", "ppc64", "ppc64le", "ppcemb",
	"riscv32", "riscv64", "s390", "s390x", "sh4", "sh4eb", "sparc", "sparc64", "unicore32",
	"x86_64", "xtensa", "xtensaeb"}

var knownFeatures = []string{"acpi", "apic", "pae", "hap", "viridian", "privnet", "hyperv",
	"kvm", "pvspinlock", "capabilities", "pmu", "vmport", "gic", "smm", "ioapic", "hpt",
	"vmcoreinfo", "htm", "nested-hv", "msrs", "ccf-assist", "xen", "cfpc", "sbbc", "ibs",
	"tcg", "async-teardown", "ras", "ps2", "sev"}

func (d *Domain) checkFeatures(c *checker) {
	f := child(d.root, "features")
	if f == nil {
		return
	}
	c.known(f, knownFeatures...)
	for _, e := range f.ChildElements() {
		switch e.Tag {
		case "apic":
			c.onoff(e, "eoi")
		case "pvspinlock", "pmu", "vmport", "htm", "ccf-assist", "ps2", "hap", "privnet", "vmcoreinfo", "async-teardown":
			c.onoff(e, "state")
		case "smm":
			c.onoff(e, "state")
		case "ioapic":
			c.enum(e, "driver", "kvm", "qemu")
		case "hyperv":
			c.enum(e, "mode", "custom", "passthrough")
			c.known(e, "relaxed", "vapic", "spinlocks", "vpindex", "runtime", "synic", "stimer",
				"reset", "vendor_id", "frequencies", "reenlightenment", "tlbflush", "ipi", "evmcs",
				"avic", "emsr_bitmap", "xmm_input")
			for _, h := range e.ChildElements() {
				c.onoff(h, "state")
				if h.Tag == "spinlocks" && attr(h, "state") == "on" {
					c.uint(h, "retries", 4095, 1<<32-1)
				}
			}
		case "kvm":
			c.known(e, "hidden", "hint-dedicated", "poll-control", "pv-ipi", "dirty-ring")
			for _, h := range e.ChildElements() {
				c.onoff(h, "state")
			}
		case "capabilities":
			c.enum(e, "policy", "default", "allow", "deny")
		case "tcg":
			c.known(e, "tb-cache")
		}
	}
}

func (d *Domain) checkCPU(c *checker) {
	cpu := child(d.root, "cpu")
	if cpu == nil {
		return
	}
	c.known(cpu, "model", "vendor", "topology", "feature", "numa", "cache", "maxphysaddr")
	mode := c.enum(cpu, "mode", "custom", "host-model", "host-passthrough", "maximum")
	c.enum(cpu, "match", "minimum", "exact", "strict")
	c.enum(cpu, "check", "none", "partial", "full")
	c.onoff(cpu, "migratable")
	if m := child(cpu, "model"); m != nil {
		c.enum(m, "fallback", "allow", "forbid")
		if (mode == "" || mode == "custom") && strings.TrimSpace(m.Text()) == "" {
			c.fail(m, "CPU model name is required")
		}
	}
	if t := child(cpu, "topology"); t != nil {
		for _, k := range []string{"sockets", "dies", "cores", "threads"} {
			if k != "dies" {
				c.required(t, k)
			}
			c.uint(t, k, 1, 4096)
		}
		if c.err == nil {
			n := 1
			for _, k := range []string{"sockets", "dies", "cores", "threads"} {
				v, err := parseUint(attr(t, k))
				if err == nil {
					n *= int(v)
				}
			}
			if n < d.MaxVCPUs() {
				c.fail(t, "CPU topology (%d CPUs) is smaller than the vCPU count %d", n, d.MaxVCPUs())
			}
		}
	}
	for _, f := range children(cpu, "feature") {
		c.required(f, "name")
		c.enum(f, "policy", "force", "require", "optional", "disable", "forbid")
	}
	if n := child(cpu, "numa"); n != nil {
		c.known(n, "cell", "interconnects")
		for _, cell := range children(n, "cell") {
			c.required(cell, "memory")
			if hasAttr(cell, "cpus") {
				if _, err := parseCPUSet(attr(cell, "cpus")); err != nil {
					c.fail(cell, "attribute cpus: %v", err)
				}
			}
			c.enum(cell, "memAccess", "shared", "private")
			c.yesno(cell, "discard")
		}
	}
	if ca := child(cpu, "cache"); ca != nil {
		c.required(ca, "mode")
		c.enum(ca, "mode", "emulate", "passthrough", "disable")
	}
}

var knownTimers = []string{"platform", "pit", "rtc", "hpet", "kvmclock", "tsc", "hypervclock", "armvtimer"}

func (d *Domain) checkClock(c *checker) {
	cl := child(d.root, "clock")
	if cl == nil {
		return
	}
	c.known(cl, "timer")
	off := c.enum(cl, "offset", "utc", "localtime", "timezone", "variable", "absolute")
	if off == "timezone" {
		c.required(cl, "timezone")
	}
	if off == "variable" {
		c.enum(cl, "basis", "utc", "localtime")
	}
	for _, t := range children(cl, "timer") {
		c.required(t, "name")
		c.enum(t, "name", knownTimers...)
		c.yesno(t, "present")
		c.enum(t, "tickpolicy", "delay", "catchup", "merge", "discard")
		c.enum(t, "track", "boot", "guest", "wall", "realtime")
		c.enum(t, "mode", "auto", "native", "emulate", "paravirt", "smpsafe")
	}
}

// parseCPUSet parses a libvirt cpuset ("0-3,^2,8").
func parseCPUSet(s string) ([]int, error) {
	set := map[int]bool{}
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("empty CPU set")
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		neg := strings.HasPrefix(part, "^")
		part = strings.TrimPrefix(part, "^")
		lo, hi := part, part
		if i := strings.Index(part, "-"); i >= 0 {
			lo, hi = part[:i], part[i+1:]
		}
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || a < 0 || b < a || b > 1<<16 {
			return nil, fmt.Errorf("malformed CPU set %q", s)
		}
		for i := a; i <= b; i++ {
			if neg {
				delete(set, i)
			} else {
				set[i] = true
			}
		}
	}
	var out []int
	for k := range set {
		out = append(out, k)
	}
	sort.Ints(out)
	return out, nil
}

func (d *Domain) checkSecLabels(c *checker) {
	for _, s := range children(d.root, "seclabel") {
		c.enum(s, "type", "none", "dynamic", "static")
		c.yesno(s, "relabel")
		if attr(s, "type") == "static" && child(s, "label") == nil {
			c.fail(s, "a static seclabel requires <label>")
		}
		if attr(s, "type") == "none" && attr(s, "relabel") == "yes" {
			c.fail(s, "relabel='yes' is not allowed with type='none'")
		}
	}
}

// checkListen checks a graphics listen address.
func checkAddr(c *checker, e *etree.Element, key string) {
	if v := attr(e, key); hasAttr(e, key) && v != "" {
		if net.ParseIP(strings.Trim(v, "[]")) == nil && !validHostname(v) {
			c.fail(e, "attribute %s: %q is not an IP address or host name", key, v)
		}
	}
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)

func validHostname(s string) bool { return len(s) < 254 && hostnameRE.MatchString(s) }
