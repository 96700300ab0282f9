package capabilities

import (
	"strconv"
)

// XML renders libvirt's capabilities XML: <host> (CPU, topology, caches,
// security models) and one <guest> per usable emulator, listing its
// machines and the domain types (virt types) it can run here. Emulators
// whose probe failed, or that can run no domain type here, are left out.
func (c *Capabilities) XML() []byte {
	root := el("capabilities")
	root.add(c.hostXML())
	for _, e := range c.Emulators {
		if e.Err == "" && len(e.Accels) > 0 {
			root.add(guestXML(e))
		}
	}
	return root.bytes()
}

func itoa(n int) string    { return strconv.Itoa(n) }
func utoa(n uint64) string { return strconv.FormatUint(n, 10) }
func (c *Capabilities) hostXML() *node {
	h := &c.Host
	host := el("host")
	if h.UUID != "" {
		host.add(textEl("uuid", h.UUID))
	}
	cpu := el("cpu").add(textEl("arch", h.Arch))
	if h.CPU.Model != "" {
		cpu.add(textEl("model", h.CPU.Model))
	}
	if h.CPU.Vendor != "" {
		cpu.add(textEl("vendor", h.CPU.Vendor))
	}
	if h.CPU.Microcode != "" {
		cpu.add(el("microcode", "version", h.CPU.Microcode))
	}
	if h.CPU.Family != 0 {
		cpu.add(el("signature", "family", itoa(h.CPU.Family), "model", itoa(h.CPU.ModelNum), "stepping", itoa(h.CPU.Stepping)))
	}
	if h.CPU.Sockets > 0 {
		cpu.add(el("topology", "sockets", itoa(h.CPU.Sockets), "dies", itoa(max(h.CPU.Dies, 1)),
			"cores", itoa(h.CPU.Cores), "threads", itoa(max(h.CPU.Threads, 1))))
	}
	if h.CPU.PhysAddrBits > 0 {
		cpu.add(el("maxphysaddr", "mode", "emulate", "bits", itoa(h.CPU.PhysAddrBits)))
	}
	for _, f := range h.CPU.Features {
		cpu.add(el("feature", "name", f))
	}
	for _, s := range h.PageSizesKiB {
		cpu.add(el("pages", "unit", "KiB", "size", utoa(s)))
	}
	host.add(cpu)

	pm := el("power_management")
	for _, s := range h.PowerManagement {
		pm.add(el(s))
	}
	host.add(pm)
	host.add(el("iommu", "support", yesNo(h.IOMMU)))
	if len(h.MigrationTransports) > 0 {
		tr := el("uri_transports")
		for _, t := range h.MigrationTransports {
			tr.add(textEl("uri_transport", t))
		}
		host.add(el("migration_features").add(el("live"), tr))
	}
	if len(h.NUMA) > 0 {
		cells := el("cells", "num", itoa(len(h.NUMA)))
		for _, n := range h.NUMA {
			cell := el("cell", "id", itoa(n.ID))
			cell.add(textEl("memory", utoa(n.MemoryKiB), "unit", "KiB"))
			for _, p := range n.Pages {
				cell.add(textEl("pages", utoa(p.Count), "unit", "KiB", "size", utoa(p.SizeKiB)))
			}
			if len(n.Distances) > 0 {
				d := el("distances")
				for _, s := range n.Distances {
					d.add(el("sibling", "id", itoa(s.ID), "value", itoa(s.Value)))
				}
				cell.add(d)
			}
			cpus := el("cpus", "num", itoa(len(n.Topology)))
			for _, t := range n.Topology {
				cpus.add(el("cpu", "id", itoa(t.ID), "socket_id", itoa(t.SocketID), "die_id", itoa(t.DieID),
					"core_id", itoa(t.CoreID), "siblings", formatCPUList(t.Siblings)))
			}
			cell.add(cpus)
			cells.add(cell)
		}
		host.add(el("topology").add(cells))
	}
	if len(h.Caches) > 0 {
		cache := el("cache")
		for _, b := range h.Caches {
			cache.add(el("bank", "id", itoa(b.ID), "level", itoa(b.Level), "type", b.Type,
				"size", utoa(b.SizeKiB), "unit", "KiB", "cpus", formatCPUList(b.CPUs)))
		}
		host.add(cache)
	}
	models := h.SecModels
	if len(models) == 0 {
		models = []SecModel{{Model: "none", DOI: "0"}}
	}
	for _, m := range models {
		sm := el("secmodel").add(textEl("model", m.Model), textEl("doi", orDefault(m.DOI, "0")))
		for _, t := range sortedKeys(labelTypes(m.BaseLabels)) {
			sm.add(textEl("baselabel", m.BaseLabels[t], "type", t))
		}
		host.add(sm)
	}
	return host
}

func labelTypes(m map[string]string) map[string]bool {
	out := map[string]bool{}
	for k := range m {
		out[k] = true
	}
	return out
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// virtType is the libvirt domain type of an accelerator.
func virtType(accel string) string {
	if accel == "tcg" {
		return "qemu"
	}
	return accel
}

func guestXML(e *Emulator) *node {
	arch := el("arch", "name", e.Arch)
	if ws := archWordSize[e.Arch]; ws > 0 {
		arch.add(textEl("wordsize", itoa(ws)))
	}
	arch.add(textEl("emulator", e.Path))
	for _, m := range e.Machines {
		arch.add(textEl("machine", m.Name, "maxCpus", itoa(m.MaxCPUs)))
		if m.Alias != "" {
			arch.add(textEl("machine", m.Alias, "canonical", m.Name, "maxCpus", itoa(m.MaxCPUs)))
		}
	}
	for _, a := range e.Accels {
		arch.add(el("domain", "type", virtType(a)))
	}
	g := el("guest").add(textEl("os_type", "hvm"), arch)
	f := el("features")
	if isX86(e.Arch) || e.Arch == "aarch64" {
		f.add(el("acpi", "default", "on", "toggle", "yes"))
	}
	if isX86(e.Arch) {
		f.add(el("apic", "default", "on", "toggle", "no"))
	}
	f.add(el("cpuselection"), el("deviceboot"), el("disksnapshot", "default", "on", "toggle", "no"))
	if e.Arch == "i686" {
		f.add(el("pae"), el("nonpae"))
	}
	return g.add(f)
}
