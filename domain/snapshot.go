package domain

import (
	"bytes"
	"fmt"

	"github.com/beevik/etree"
)

// BackingLayer is one image below a disk's top image, as <backingStore>
// records it: the file and its format.
type BackingLayer struct {
	Path   string
	Format string
}

// SetDiskSource points the disk with target dev at the file path in
// format, with the backing chain below it recorded as nested
// <backingStore> elements (ending with an empty one, libvirt's "no more
// layers"). An external snapshot uses it to switch a disk to its new
// overlay. Other disks are left alone.
func (d *Domain) SetDiskSource(target, path, format string, chain []BackingLayer) error {
	for _, e := range children(child(d.root, "devices"), "disk") {
		if attr(child(e, "target"), "dev") != target {
			continue
		}
		setAttr(e, "type", "file")
		src := child(e, "source")
		if src == nil {
			src = etree.NewElement("source")
			if dr := child(e, "driver"); dr != nil {
				e.InsertChildAt(dr.Index()+1, src)
			} else {
				e.InsertChildAt(0, src)
			}
		}
		// A file source has only a file (and its seclabels); the old
		// source's dev/dir/protocol attributes do not apply any more.
		for _, a := range append([]etree.Attr(nil), src.Attr...) {
			src.RemoveAttr(a.FullKey())
		}
		setAttr(src, "file", path)
		dr := child(e, "driver")
		if dr == nil {
			dr = etree.NewElement("driver")
			e.InsertChildAt(src.Index(), dr)
			setAttr(dr, "name", "qemu")
		}
		setAttr(dr, "type", format)
		for _, b := range children(e, "backingStore") {
			e.RemoveChild(b)
		}
		at, parent := src.Index()+1, e
		for _, l := range chain {
			b := etree.NewElement("backingStore")
			parent.InsertChildAt(at, b)
			setAttr(b, "type", "file")
			setAttr(b.CreateElement("format"), "type", l.Format)
			setAttr(b.CreateElement("source"), "file", l.Path)
			parent, at = b, len(b.Child)
		}
		parent.InsertChildAt(at, etree.NewElement("backingStore"))
		return nil
	}
	return fmt.Errorf("no disk with target %q", target)
}

// WithoutRuntime returns a copy of a live definition without what a run
// adds to it: runtime metadata (taints), generated security labels,
// allocated display ports and pty paths. Two runs of the same guest
// configuration give equal XML, which tells whether a memory snapshot of
// one can be loaded into the other.
func (d *Domain) WithoutRuntime() *Domain {
	c := d.Clone()
	c.ClearRuntime()
	for _, e := range children(c.root, "seclabel") {
		c.root.RemoveChild(e)
	}
	devs := child(c.root, "devices")
	for _, g := range children(devs, "graphics") {
		if attr(g, "autoport") == "yes" {
			for _, k := range []string{"port", "tlsPort", "websocket"} {
				g.RemoveAttr(k)
			}
		}
	}
	for _, tag := range []string{"serial", "parallel", "console", "channel"} {
		for _, e := range children(devs, tag) {
			if attrOr(e, "type", "pty") != "pty" {
				continue
			}
			e.RemoveAttr("tty")
			if src := child(e, "source"); src != nil {
				src.RemoveAttr("path")
				if len(src.Attr) == 0 && len(src.ChildElements()) == 0 {
					e.RemoveChild(src)
				}
			}
		}
	}
	return c
}

// SameGuest reports whether two live definitions describe the same guest
// configuration (see WithoutRuntime).
func SameGuest(a, b *Domain) bool {
	return bytes.Equal(a.WithoutRuntime().XML(), b.WithoutRuntime().XML())
}
