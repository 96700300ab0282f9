package domain

import (
	"strings"

	"github.com/beevik/etree"
)

// <devices><pstore backend='acpi-erst'>: a persistent store for the guest
// kernel's crash records (Linux pstore over ACPI ERST), kept in a host
// file that QEMU maps shared: -object memory-backend-file,id=mempstore0
// and -device acpi-erst,memdev=mempstore0, as libvirt 9.0 does.

// erstRecordKiB is QEMU's default ACPI ERST record size; the store must
// hold a whole number of records.
const erstRecordKiB = 8

// checkPstore validates one <pstore>.
func checkPstore(c *checker, e *etree.Element) {
	c.known(e, "path", "size", "address", "alias")
	c.once(e, "path", "size")
	if !hasAttr(e, "backend") {
		c.fail(e, "attribute backend is required (acpi-erst)")
		return
	}
	c.enum(e, "backend", "acpi-erst")
	p := child(e, "path")
	switch {
	case p == nil:
		c.fail(e, "element <path> is required")
	case !strings.HasPrefix(strings.TrimSpace(p.Text()), "/"):
		c.fail(p, "path %q must be absolute", strings.TrimSpace(p.Text()))
	}
	s := child(e, "size")
	if s == nil {
		c.fail(e, "element <size> is required")
		return
	}
	kib, err := memoryKiB(s)
	switch {
	case err != nil:
		c.fail(s, "%v", err)
	case kib == 0:
		c.fail(s, "must be greater than zero")
	case kib%erstRecordKiB != 0:
		c.fail(s, "%d KiB is not a multiple of the ACPI ERST record size (%d KiB)", kib, erstRecordKiB)
	}
}

// checkPstores checks what spans the pstore devices: one at most, and a
// machine with ACPI and PCI (x86 pc or q35).
func (d *Domain) checkPstores(c *checker) {
	ps := children(child(d.root, "devices"), "pstore")
	if len(ps) == 0 {
		return
	}
	if len(ps) > 1 {
		c.fail(ps[1], "only one <pstore> device is supported")
	}
	if arch := d.Arch(); arch != "" && arch != "x86_64" && arch != "i686" {
		c.unsupported(ps[0], "pstore backend 'acpi-erst' needs an x86 guest (arch is %s)", arch)
	}
}

// pstorePath returns the backing file of a <pstore>.
func pstorePath(e *etree.Element) string { return strings.TrimSpace(text(child(e, "path"))) }

// PstorePaths returns the host files of the definition's <pstore>
// devices, which the driver creates before the start and QEMU writes.
func (d *Domain) PstorePaths() []string {
	var out []string
	for _, p := range children(child(d.root, "devices"), "pstore") {
		if path := pstorePath(p); path != "" {
			out = append(out, path)
		}
	}
	return out
}

// pstores adds each pstore's backend and ACPI ERST device.
func (b *builder) pstores() {
	for _, p := range children(b.devs, "pstore") {
		kib, _ := memoryKiB(child(p, "size"))
		id := alias(p)
		if id == "" {
			id = "pstore0"
		}
		mem := "mem" + id
		b.object(obj("qom-type", "memory-backend-file", "id", mem, "mem-path", pstorePath(p), "size", kib*1024, "share", true))
		o := obj("driver", "acpi-erst", "id", id, "memdev", mem)
		b.addPCI(&o, p)
		b.device(o)
	}
}
