package capabilities

import (
	"fmt"
	"sort"
	"strings"
)

// domCapsKey is what one domcapabilities file describes.
type domCapsKey struct {
	emu     *Emulator
	machine Machine
	virt    string // libvirt domain type: qemu, kvm, hvf
}

// DomainCapsNames lists the domcapabilities files: "<arch>-<machine>-<virttype>.xml"
// for every machine of every usable emulator and every domain type it can
// run here, once under the machine's canonical name and once under its
// alias ("x86_64-pc-i440fx-7.2-qemu.xml", "x86_64-pc-qemu.xml").
//
// A name is listed only when domain validation (Lookup) would pick that
// same emulator for it, so what a file describes is what a domain of that
// arch, machine and type gets. Names are sorted.
func (c *Capabilities) DomainCapsNames() []string {
	m := c.domCaps()
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// DomainCapsXML renders one domcapabilities file named as DomainCapsNames
// lists it, in libvirt's domcapabilities format.
func (c *Capabilities) DomainCapsXML(name string) ([]byte, error) {
	k, ok := c.domCaps()[name]
	if !ok {
		return nil, fmt.Errorf("domain capabilities %q: no such arch, machine and domain type on this host (see DomainCapsNames): %w", name, ErrUnsupported)
	}
	return domCapsXML(&c.Host, k).bytes(), nil
}

func (c *Capabilities) domCaps() map[string]domCapsKey {
	out := map[string]domCapsKey{}
	for _, e := range c.Emulators {
		if e.Err != "" {
			continue
		}
		for _, accel := range e.Accels {
			virt := virtType(accel)
			for _, m := range e.Machines {
				for _, mn := range []string{m.Name, m.Alias} {
					if mn == "" {
						continue
					}
					name := e.Arch + "-" + mn + "-" + virt + ".xml"
					if _, dup := out[name]; dup {
						continue
					}
					if le, _, err := c.Lookup(e.Arch, virt, mn, ""); err != nil || le != e {
						continue
					}
					out[name] = domCapsKey{emu: e, machine: m, virt: virt}
				}
			}
		}
	}
	return out
}

func domCapsXML(h *Host, k domCapsKey) *node {
	e, m := k.emu, k.machine
	root := el("domainCapabilities").add(
		textEl("path", e.Path),
		textEl("domain", k.virt),
		textEl("machine", m.Name),
		textEl("arch", e.Arch),
		el("vcpu", "max", itoa(m.MaxCPUs)),
		el("iothreads", "supported", yesNo(e.Devices["iothread"])),
		osXML(e, m),
		cpuXML(h, e, k.virt),
	)
	mb := el("memoryBacking", "supported", "yes")
	mb.add(enum("sourceType", present(e.Devices, "memory-backend-file", "file", "memory-backend-ram", "anonymous", "memory-backend-memfd", "memfd")...))
	root.add(mb)
	root.add(devicesXML(h, e, m))
	root.add(featuresXML(h, e, m, k.virt))
	return root
}

// present returns the libvirt names (odd positions) whose QOM type (even
// positions) the binary has.
func present(types map[string]bool, pairs ...string) []string {
	var out []string
	for i := 0; i+1 < len(pairs); i += 2 {
		if types[pairs[i]] && !contains(out, pairs[i+1]) {
			out = append(out, pairs[i+1])
		}
	}
	return out
}

func supported(values []string) string { return yesNo(len(values) > 0) }

func osXML(e *Emulator, m Machine) *node {
	fw := firmwareFor(e.Firmware, m)
	var kinds, loaders []string
	var rom, flash, secure bool
	for _, f := range fw {
		switch f.Interface {
		case "bios":
			if !contains(kinds, "bios") {
				kinds = append(kinds, "bios")
			}
		case "uefi":
			if !contains(kinds, "efi") {
				kinds = append(kinds, "efi")
			}
			loaders = append(loaders, f.Path)
		}
		if f.Device == "flash" {
			flash = true
		} else {
			rom = true
		}
		secure = secure || hasFeature(f, "secure-boot")
	}
	os := el("os", "supported", "yes")
	sort.Strings(kinds)
	os.add(enum("firmware", kinds...))
	loader := el("loader", "supported", "yes")
	for _, l := range loaders {
		loader.add(textEl("value", l))
	}
	var types []string
	if rom || len(fw) == 0 {
		types = append(types, "rom")
	}
	if flash || len(fw) == 0 {
		types = append(types, "pflash")
	}
	loader.add(enum("type", types...), enum("readonly", "yes", "no"))
	if secure {
		loader.add(enum("secure", "yes", "no"))
	} else {
		loader.add(enum("secure", "no"))
	}
	return os.add(loader)
}

func cpuXML(h *Host, e *Emulator, virt string) *node {
	cpu := el("cpu")
	native := virt == "kvm" || virt == "hvf"
	hostArch := e.Arch == h.Arch
	hp := el("mode", "name", "host-passthrough", "supported", yesNo(native && hostArch))
	if native && hostArch {
		hp.add(enum("hostPassthroughMigratable", "on", "off"))
	}
	cpu.add(hp)
	cpu.add(el("mode", "name", "maximum", "supported", "yes").add(enum("maximumMigratable", "on", "off")))

	// host-model: the host CPU as a named model. With KVM/HVF it is the
	// host's model plus its extra features; with TCG the best model TCG can
	// run that the host also has, without extras (TCG may lack them).
	hm := el("mode", "name", "host-model", "supported", "no")
	if hostArch && len(e.CPUFeatures) > 0 {
		feats := qemuFeatures(h.CPU.Flags, e.CPUFeatures)
		usableOnly := !native && e.ProbedAccel == "tcg"
		if mm, ok := matchModel(e.CPUModels, cpuidVendor(h.CPU.Vendor), feats, usableOnly); ok {
			hm = el("mode", "name", "host-model", "supported", "yes")
			hm.add(textEl("model", mm.Name, "fallback", "forbid"))
			if h.CPU.Vendor != "" {
				hm.add(textEl("vendor", h.CPU.Vendor))
			}
			if native {
				if h.CPU.PhysAddrBits > 0 {
					hm.add(el("maxphysaddr", "mode", "passthrough", "limit", itoa(h.CPU.PhysAddrBits)))
				}
				for _, f := range mm.Extra {
					hm.add(el("feature", "policy", "require", "name", f))
				}
				for _, f := range mm.Missing {
					hm.add(el("feature", "policy", "disable", "name", f))
				}
			}
		}
	}
	cpu.add(hm)

	custom := el("mode", "name", "custom", "supported", yesNo(len(e.CPUModels) > 0))
	for _, c := range e.CPUModels {
		if c.Name == "host" || c.Name == "max" || c.Name == "base" {
			continue
		}
		usable := "unknown"
		if accelOf(virt) == e.ProbedAccel {
			usable = yesNo(c.Usable)
		}
		attrs := []string{"usable", usable, "deprecated", yesNo(c.Deprecated)}
		if v := modelVendor(e, c); v != "" {
			attrs = append(attrs, "vendor", v)
		}
		if c.AliasOf != "" {
			attrs = append(attrs, "canonical", c.AliasOf)
		}
		custom.add(textEl("model", c.Name, attrs...))
		if usable == "no" && len(c.Unavailable) > 0 {
			// What keeps the model from running here, as libvirt shows it.
			b := el("blockers", "model", c.Name)
			for _, f := range c.Unavailable {
				b.add(el("feature", "name", f))
			}
			custom.add(b)
		}
	}
	return cpu.add(custom)
}

// accelOf is the accelerator of a libvirt domain type.
func accelOf(virt string) string {
	if virt == "qemu" {
		return "tcg"
	}
	return virt
}

// modelVendor is a CPU model's vendor in libvirt's spelling: from its
// expansion when it was expanded, else (x86) guessed from its name; "" for
// generic models and other arches.
func modelVendor(e *Emulator, c CPUModel) string {
	id, name := c.Vendor, c.Name
	if c.AliasOf != "" {
		name = c.AliasOf
		for _, m := range e.CPUModels {
			if m.Name == c.AliasOf && id == "" {
				id = m.Vendor
			}
		}
	}
	if id == "" && isX86(e.Arch) {
		id = nameVendor(name)
	}
	if id == "" {
		return ""
	}
	return cpuInfo{vendorID: id}.vendor()
}

func devicesXML(h *Host, e *Emulator, m Machine) *node {
	d := e.Devices
	has := func(types ...string) bool {
		for _, t := range types {
			if d[t] {
				return true
			}
		}
		return false
	}
	devs := el("devices")

	diskDev := []string{"disk"}
	if has("ide-cd", "scsi-cd", "usb-storage") {
		diskDev = append(diskDev, "cdrom")
	}
	if has("floppy", "isa-fdc") {
		diskDev = append(diskDev, "floppy")
	}
	if has("scsi-block") {
		diskDev = append(diskDev, "lun")
	}
	bus := present(d, "ide-hd", "ide", "isa-fdc", "fdc", "scsi-hd", "scsi",
		"virtio-blk-pci", "virtio", "virtio-blk-device", "virtio", "usb-storage", "usb", "ich9-ahci", "sata")
	devs.add(el("disk", "supported", "yes").add(
		enum("diskDevice", diskDev...), enum("bus", bus...),
		enum("model", virtioModels(d, "virtio-blk-pci")...)))

	var gfx []string
	if e.Commands["query-vnc"] {
		gfx = append(gfx, "vnc")
	}
	if e.Commands["query-spice"] {
		gfx = append(gfx, "spice")
	}
	gfx = append(gfx, present(d, "dbus-display", "dbus")...)
	devs.add(el("graphics", "supported", supported(gfx)).add(enum("type", gfx...)))

	video := present(d, "VGA", "vga", "cirrus-vga", "cirrus", "vmware-svga", "vmvga", "qxl-vga", "qxl",
		"virtio-vga", "virtio", "virtio-gpu-pci", "virtio", "virtio-gpu-device", "virtio",
		"bochs-display", "bochs", "ramfb", "ramfb")
	video = append(video, "none")
	devs.add(el("video", "supported", "yes").add(enum("modelType", video...)))

	subsys := present(d, "usb-host", "usb", "vfio-pci", "pci", "scsi-generic", "scsi")
	hostdev := el("hostdev", "supported", supported(subsys)).add(
		enum("mode", "subsystem"),
		enum("startupPolicy", "default", "mandatory", "requisite", "optional"),
		enum("subsysType", subsys...),
		enum("capsType"),
		enum("pciBackend", present(d, "vfio-pci", "default", "vfio-pci", "vfio")...))
	devs.add(hostdev)

	rngBackends := present(d, "rng-random", "random", "rng-egd", "egd", "rng-builtin", "builtin")
	rngModels := virtioModels(d, "virtio-rng-pci")
	if len(rngModels) == 0 && d["virtio-rng-device"] {
		rngModels = []string{"virtio"}
	}
	devs.add(el("rng", "supported", supported(rngModels)).add(
		enum("model", rngModels...), enum("backendModel", rngBackends...)))

	fsTypes := present(d, "virtio-9p-pci", "path", "virtio-9p-device", "path", "vhost-user-fs-pci", "virtiofs", "vhost-user-fs-device", "virtiofs")
	devs.add(el("filesystem", "supported", supported(fsTypes)).add(enum("driverType", fsTypes...)))

	tpmModels := present(d, "tpm-tis", "tpm-tis", "tpm-crb", "tpm-crb", "tpm-spapr", "tpm-spapr", "tpm-tis-device", "tpm-tis")
	var tpmBackends []string
	if d["tpm-passthrough"] {
		tpmBackends = append(tpmBackends, "passthrough")
	}
	if d["tpm-emulator"] && h.SWTPM != "" {
		tpmBackends = append(tpmBackends, "emulator")
	}
	tpm := el("tpm", "supported", yesNo(len(tpmModels) > 0 && len(tpmBackends) > 0)).add(
		enum("model", tpmModels...), enum("backendModel", tpmBackends...))
	if len(tpmBackends) > 0 {
		tpm.add(enum("backendVersion", "1.2", "2.0"))
	}
	devs.add(tpm)

	redir := present(d, "usb-redir", "usb")
	devs.add(el("redirdev", "supported", supported(redir)).add(enum("bus", redir...)))

	ch := []string{"pty", "unix"}
	if e.Commands["query-spice"] {
		ch = append(ch, "spicevmc")
	}
	devs.add(el("channel", "supported", "yes").add(enum("type", ch...)))

	cryptoModels := present(d, "virtio-crypto-pci", "virtio", "virtio-crypto-device", "virtio")
	devs.add(el("crypto", "supported", supported(cryptoModels)).add(
		enum("model", cryptoModels...), enum("type", "qemu"),
		enum("backendModel", present(d, "cryptodev-backend-builtin", "builtin", "cryptodev-backend-lkcf", "lkcf")...)))
	return devs
}

// virtioModels lists the virtio model variants a PCI virtio device type has:
// virtio, virtio-transitional, virtio-non-transitional.
func virtioModels(d map[string]bool, pciType string) []string {
	if !d[pciType] {
		return nil
	}
	out := []string{"virtio"}
	if d[pciType+"-transitional"] {
		out = append(out, "virtio-transitional")
	}
	if d[pciType+"-non-transitional"] {
		out = append(out, "virtio-non-transitional")
	}
	return out
}

func featuresXML(h *Host, e *Emulator, m Machine, virt string) *node {
	f := el("features")
	gic := strings.HasPrefix(e.Arch, "arm") || e.Arch == "aarch64"
	if gic && strings.HasPrefix(m.Name, "virt") {
		f.add(el("gic", "supported", "yes").add(enum("version", "2", "3")))
	} else {
		f.add(el("gic", "supported", "no"))
	}
	f.add(el("vmcoreinfo", "supported", yesNo(e.Devices["vmcoreinfo"])))
	f.add(el("genid", "supported", yesNo(e.Devices["vmgenid"])))
	f.add(el("backingStoreInput", "supported", yesNo(e.Commands["blockdev-add"])))
	f.add(el("backup", "supported", yesNo(e.Commands["blockdev-backup"] && e.Commands["block-dirty-bitmap-add"])))
	// Launch security: from the host's KVM parameters and QEMU's own
	// answers (query-sev-capabilities, query-sgx-capabilities), for KVM only.
	f.add(s390PVXML(h, e, virt))
	f.add(sevXML(h, e, virt))
	f.add(sgxXML(h, e, virt))
	f.add(tdxXML(h, e, virt))
	if isX86(e.Arch) && virt == "kvm" {
		f.add(el("hyperv", "supported", "yes").add(enum("features",
			"relaxed", "vapic", "spinlocks", "vpindex", "runtime", "synic", "stimer",
			"reset", "vendor_id", "frequencies", "reenlightenment", "tlbflush", "ipi", "evmcs")))
	} else {
		f.add(el("hyperv", "supported", "no"))
	}
	return f
}
