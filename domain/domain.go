package domain

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// Namespaces qemufs understands in a domain document.
const (
	// QEMUNamespace is libvirt's qemu: namespace (qemu:commandline,
	// qemu:capabilities, qemu:deprecation, qemu:override).
	QEMUNamespace = "http://libvirt.org/schemas/domain/qemu/1.0"
	// RuntimeNamespace holds what qemufs records about a running domain in
	// its live XML (taints), inside <metadata>.
	RuntimeNamespace = "https://qemufs.dev/xmlns/runtime/1"
)

// Domain is one domain definition. The zero value is not usable; get one
// from Parse, FromNative or Clone. A Domain is not safe for concurrent
// mutation; readers may share one that nobody mutates.
type Domain struct {
	doc  *etree.Document
	root *etree.Element
}

// Parse reads a domain XML document and validates its syntax, structure
// and semantics (everything that does not depend on the host). Errors name
// the element and attribute at fault, e.g.
// "devices/disk[2]/target: attribute dev is required".
func Parse(data []byte) (*Domain, error) {
	doc := etree.NewDocument()
	doc.ReadSettings.Permissive = false
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &Error{Msg: "empty document"}
	}
	if err := wellFormed(data); err != nil {
		return nil, err
	}
	if err := doc.ReadFromBytes(data); err != nil {
		return nil, &Error{Msg: "XML syntax error: " + err.Error()}
	}
	root := doc.Root()
	if root == nil {
		return nil, &Error{Msg: "no root element"}
	}
	if root.Tag != "domain" || root.NamespaceURI() != "" {
		return nil, &Error{Msg: fmt.Sprintf("root element is <%s>, expected <domain>", root.FullTag())}
	}
	// Drop the XML declaration, comments and whitespace outside the root:
	// the formatted document is just the domain element.
	for _, t := range doc.Child {
		if t != root {
			doc.RemoveChild(t)
		}
	}
	d := &Domain{doc: doc, root: root}
	if err := d.check(); err != nil {
		return nil, err
	}
	return d, nil
}

// wellFormed checks the XML syntax with encoding/xml, whose errors carry
// the line number.
func wellFormed(data []byte) error {
	dec := xml.NewDecoder(bytes.NewReader(data))
	depth, roots := 0, 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			if depth != 0 {
				line, _ := dec.InputPos()
				return &Error{Msg: fmt.Sprintf("XML syntax error: line %d: unexpected EOF", line)}
			}
			return nil
		}
		if err != nil {
			var se *xml.SyntaxError
			if errors.As(err, &se) {
				return &Error{Msg: fmt.Sprintf("XML syntax error: line %d: %s", se.Line, se.Msg)}
			}
			return &Error{Msg: "XML syntax error: " + err.Error()}
		}
		switch tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				roots++
				if roots > 1 {
					line, _ := dec.InputPos()
					return &Error{Msg: fmt.Sprintf("XML syntax error: line %d: more than one root element", line)}
				}
			}
			depth++
		case xml.EndElement:
			depth--
		}
	}
}

// XML formats the definition like libvirt: two-space indentation, single
// quoted attributes, no XML declaration, a final newline.
func (d *Domain) XML() []byte {
	doc := d.doc.Copy()
	marked := markUnescaped(doc.Root())
	doc.WriteSettings.AttrSingleQuote = true
	doc.WriteSettings.CanonicalEndTags = false
	s := etree.NewIndentSettings()
	s.Spaces = 2
	s.PreserveLeafWhitespace = true
	s.SuppressTrailingWhitespace = true
	doc.IndentWithSettings(s)
	b, _ := doc.WriteToBytes()
	if marked {
		b = unmark.Replace(b)
	}
	b = bytes.TrimSpace(b)
	return append(b, '\n')
}

// etree writes a carriage return in text, and a newline, tab or carriage
// return in an attribute, as the character itself, which an XML parser
// reads back as a newline or a space: a definition would not survive its
// own XML (an argument with a newline in <qemu:arg value=.../>, say).
// markUnescaped replaces them by private-use runes that unmark turns into
// character references after writing. Documents that already hold those
// runes are left as they are (and lose the characters as before).
var (
	markText = strings.NewReplacer("\r", "\uE00D")
	markAttr = strings.NewReplacer("\r", "\uE00D", "\n", "\uE00A", "\t", "\uE009")
	unmark   = bytesReplacer{"\uE00D": "&#13;", "\uE00A": "&#10;", "\uE009": "&#9;"}
)

func markUnescaped(root *etree.Element) bool {
	if root == nil {
		return false
	}
	var has, clash bool
	var walk func(e *etree.Element)
	walk = func(e *etree.Element) {
		for _, a := range e.Attr {
			has = has || strings.ContainsAny(a.Value, "\r\n\t")
			clash = clash || strings.ContainsAny(a.Value, "\uE00D\uE00A\uE009")
		}
		for _, c := range e.Child {
			switch c := c.(type) {
			case *etree.CharData:
				has = has || strings.ContainsRune(c.Data, '\r')
				clash = clash || strings.ContainsAny(c.Data, "\uE00D\uE00A\uE009")
			case *etree.Element:
				walk(c)
			}
		}
	}
	walk(root)
	if !has || clash {
		return false
	}
	var mark func(e *etree.Element)
	mark = func(e *etree.Element) {
		for i := range e.Attr {
			e.Attr[i].Value = markAttr.Replace(e.Attr[i].Value)
		}
		for _, c := range e.Child {
			switch c := c.(type) {
			case *etree.CharData:
				c.Data = markText.Replace(c.Data)
			case *etree.Element:
				mark(c)
			}
		}
	}
	mark(root)
	return true
}

// bytesReplacer replaces strings in a byte slice.
type bytesReplacer map[string]string

// Replace returns b with every key replaced by its value.
func (r bytesReplacer) Replace(b []byte) []byte {
	for k, v := range r {
		b = bytes.ReplaceAll(b, []byte(k), []byte(v))
	}
	return b
}

// String returns XML() as a string.
func (d *Domain) String() string { return string(d.XML()) }

// Clone returns a deep copy, e.g. to build the live definition of a
// starting domain without touching the persistent one.
func (d *Domain) Clone() *Domain {
	doc := d.doc.Copy()
	return &Domain{doc: doc, root: doc.Root()}
}

// Name returns <name>, "" when absent.
func (d *Domain) Name() string { return strings.TrimSpace(text(child(d.root, "name"))) }

// SetName sets <name>, e.g. from the directory name when the user's
// definition has none. The name must be valid (see ValidName).
func (d *Domain) SetName(name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	ensure(d.root, "name").SetText(name)
	return nil
}

// ValidName reports whether name can name a domain: not empty, no '/',
// no control characters, at most 255 bytes (it becomes a file name).
func ValidName(name string) error {
	switch {
	case name == "":
		return &Error{Path: "name", Msg: "must not be empty"}
	case len(name) > 255:
		return &Error{Path: "name", Msg: "longer than 255 bytes"}
	case strings.Contains(name, "/"):
		return &Error{Path: "name", Msg: fmt.Sprintf("%q contains '/'", name)}
	case name == "." || name == "..":
		return &Error{Path: "name", Msg: fmt.Sprintf("%q is not allowed", name)}
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return &Error{Path: "name", Msg: fmt.Sprintf("%q contains a control character", name)}
		}
	}
	return nil
}

// UUID returns <uuid> in canonical lower-case form, "" when absent.
func (d *Domain) UUID() string {
	u := strings.TrimSpace(text(child(d.root, "uuid")))
	if c, ok := canonicalUUID(u); ok {
		return c
	}
	return u
}

// SetUUID sets <uuid>; u must be a valid UUID.
func (d *Domain) SetUUID(u string) error {
	c, ok := canonicalUUID(u)
	if !ok {
		return &Error{Path: "uuid", Msg: fmt.Sprintf("malformed UUID %q", u)}
	}
	ensure(d.root, "uuid").SetText(c)
	return nil
}

// Title returns <title>.
func (d *Domain) Title() string { return text(child(d.root, "title")) }

// Description returns <description>.
func (d *Domain) Description() string { return text(child(d.root, "description")) }

// Type returns the domain type attribute: "qemu", "kvm", "hvf", ...
func (d *Domain) Type() string { return d.root.SelectAttrValue("type", "") }

// Arch returns os/type/@arch ("" until expanded when the user gave none).
func (d *Domain) Arch() string { return attr(find(d.root, "os", "type"), "arch") }

// Machine returns os/type/@machine ("" until expanded when absent).
func (d *Domain) Machine() string { return attr(find(d.root, "os", "type"), "machine") }

// OSType returns os/type's text: "hvm" for full virtualization.
func (d *Domain) OSType() string { return strings.TrimSpace(text(find(d.root, "os", "type"))) }

// Emulator returns devices/emulator ("" until expanded when absent).
func (d *Domain) Emulator() string {
	return strings.TrimSpace(text(find(d.root, "devices", "emulator")))
}

// OnPoweroff returns the on_poweroff action (libvirt strings: destroy,
// restart, preserve, rename-restart); the default is destroy.
func (d *Domain) OnPoweroff() string { return d.lifecycle("on_poweroff", "destroy") }

// OnReboot returns the on_reboot action; the default is restart.
func (d *Domain) OnReboot() string { return d.lifecycle("on_reboot", "restart") }

// OnCrash returns the on_crash action (destroy, restart, preserve,
// rename-restart, coredump-destroy, coredump-restart); the default is
// destroy.
func (d *Domain) OnCrash() string { return d.lifecycle("on_crash", "destroy") }

func (d *Domain) lifecycle(tag, dflt string) string {
	if v := strings.TrimSpace(text(child(d.root, tag))); v != "" {
		return v
	}
	return dflt
}

// MemoryKiB returns <memory> in KiB.
func (d *Domain) MemoryKiB() uint64 {
	v, _ := memoryKiB(child(d.root, "memory"))
	return v
}

// CurrentMemoryKiB returns <currentMemory> in KiB (<memory> when absent).
func (d *Domain) CurrentMemoryKiB() uint64 {
	if e := child(d.root, "currentMemory"); e != nil {
		v, _ := memoryKiB(e)
		return v
	}
	return d.MemoryKiB()
}

// VCPUs returns the number of virtual CPUs at boot (vcpu/@current, else
// the vcpu count).
func (d *Domain) VCPUs() int {
	e := child(d.root, "vcpu")
	if e == nil {
		return 1
	}
	if c, err := strconv.Atoi(e.SelectAttrValue("current", "")); err == nil && c > 0 {
		return c
	}
	if n, err := strconv.Atoi(strings.TrimSpace(e.Text())); err == nil && n > 0 {
		return n
	}
	return 1
}

// MaxVCPUs returns the vcpu count (the hotplug maximum).
func (d *Domain) MaxVCPUs() int {
	if n, err := strconv.Atoi(strings.TrimSpace(text(child(d.root, "vcpu")))); err == nil && n > 0 {
		return n
	}
	return 1
}

// Kernel returns os/kernel, the direct-boot kernel path ("" if none).
func (d *Domain) Kernel() string { return strings.TrimSpace(text(find(d.root, "os", "kernel"))) }

// Initrd returns os/initrd.
func (d *Domain) Initrd() string { return strings.TrimSpace(text(find(d.root, "os", "initrd"))) }

// Cmdline returns os/cmdline.
func (d *Domain) Cmdline() string { return text(find(d.root, "os", "cmdline")) }

// DTB returns os/dtb.
func (d *Domain) DTB() string { return strings.TrimSpace(text(find(d.root, "os", "dtb"))) }

// Loader returns os/loader (firmware path) and whether it is read-only.
func (d *Domain) Loader() (path string, readonly bool) {
	e := find(d.root, "os", "loader")
	return strings.TrimSpace(text(e)), attr(e, "readonly") == "yes"
}

// NVRAM returns os/nvram: the per-domain variable store path (the text,
// or <source file> of a type='file' NVRAM) and its template, "" when none.
func (d *Domain) NVRAM() (path, template string) {
	return nvramFile(find(d.root, "os", "nvram")), attr(find(d.root, "os", "nvram"), "template")
}

func nvramFile(e *etree.Element) string {
	if src := child(e, "source"); src != nil {
		return attr(src, "file")
	}
	return strings.TrimSpace(text(e))
}

// Root returns the underlying <domain> element. It is for packages that
// need to read parts of the definition this package has no accessor for;
// mutating it bypasses validation.
func (d *Domain) Root() *etree.Element { return d.root }

// ---- element helpers ----

// child returns the first child of e in no namespace with the given tag.
func child(e *etree.Element, tag string) *etree.Element {
	if e == nil {
		return nil
	}
	for _, c := range e.ChildElements() {
		if c.Space == "" && c.Tag == tag && !hasXmlns(c) {
			return c
		}
	}
	return nil
}

// hasXmlns reports whether e declares a default namespace (an extension
// element written without a prefix).
func hasXmlns(e *etree.Element) bool {
	for _, a := range e.Attr {
		if a.Space == "" && a.Key == "xmlns" && a.Value != "" {
			return true
		}
	}
	return false
}

// children returns e's children in no namespace with the given tag.
func children(e *etree.Element, tag string) []*etree.Element {
	if e == nil {
		return nil
	}
	var out []*etree.Element
	for _, c := range e.ChildElements() {
		if c.Space == "" && c.Tag == tag {
			out = append(out, c)
		}
	}
	return out
}

// find follows a path of tags from e.
func find(e *etree.Element, tags ...string) *etree.Element {
	for _, t := range tags {
		e = child(e, t)
		if e == nil {
			return nil
		}
	}
	return e
}

func attr(e *etree.Element, key string) string {
	if e == nil {
		return ""
	}
	for _, a := range e.Attr {
		if a.Space == "" && a.Key == key {
			return a.Value
		}
	}
	return ""
}

func hasAttr(e *etree.Element, key string) bool {
	if e == nil {
		return false
	}
	for _, a := range e.Attr {
		if a.Space == "" && a.Key == key {
			return true
		}
	}
	return false
}

// setAttr sets an attribute, keeping its position when it exists.
func setAttr(e *etree.Element, key, value string) { e.CreateAttr(key, value) }

// defAttr sets an attribute only when it is absent.
func defAttr(e *etree.Element, key, value string) {
	if !hasAttr(e, key) {
		e.CreateAttr(key, value)
	}
}

func text(e *etree.Element) string {
	if e == nil {
		return ""
	}
	return e.Text()
}

// domainOrder is libvirt's order of the children of <domain>; new
// elements are inserted at their place so the output reads like libvirt's.
var domainOrder = orderOf("name", "uuid", "genid", "title", "description", "metadata",
	"maxMemory", "memory", "currentMemory", "blkiotune", "memtune", "memoryBacking",
	"vcpu", "vcpus", "iothreads", "iothreadids", "defaultiothread", "cputune", "numatune", "resource",
	"sysinfo", "bootloader", "bootloader_args", "os", "idmap", "features", "cpu",
	"clock", "on_poweroff", "on_reboot", "on_crash", "on_lockfailure", "pm", "perf",
	"devices", "seclabel", "keywrap", "launchSecurity", "defaultiothread")

// deviceOrder is libvirt's order of device classes inside <devices>.
var deviceOrder = orderOf("emulator", "disk", "controller", "lease", "filesystem",
	"interface", "smartcard", "serial", "parallel", "console", "channel", "input",
	"tpm", "graphics", "sound", "audio", "video", "hostdev", "redirdev", "redirfilter",
	"hub", "watchdog", "memballoon", "rng", "nvram", "panic", "shmem", "memory",
	"iommu", "vsock", "crypto", "pstore")

// osOrder is the order inside <os>.
var osOrder = orderOf("type", "firmware", "loader", "nvram", "kernel", "initrd", "cmdline",
	"dtb", "acpi", "boot", "bootmenu", "smbios", "bios")

func orderOf(tags ...string) map[string]int {
	m := map[string]int{}
	for i, t := range tags {
		m[t] = i + 1
	}
	return m
}

// ensure returns parent's child tag, creating it at its canonical place.
func ensure(parent *etree.Element, tag string) *etree.Element {
	if c := child(parent, tag); c != nil {
		return c
	}
	return insert(parent, tag)
}

// insert creates a new child tag of parent after the last sibling that
// sorts before or with it in parent's canonical order.
func insert(parent *etree.Element, tag string) *etree.Element {
	var order map[string]int
	switch parent.Tag {
	case "domain":
		order = domainOrder
	case "devices":
		order = deviceOrder
	case "os":
		order = osOrder
	}
	e := etree.NewElement(tag)
	rank, known := order[tag]
	if order == nil || !known {
		parent.AddChild(e)
		return e
	}
	var before etree.Token
	for _, c := range parent.ChildElements() {
		r, ok := order[c.Tag]
		if c.Space != "" {
			ok, r = true, 1<<20 // namespaced extensions come last
		}
		if ok && r > rank {
			before = c
			break
		}
	}
	if before != nil {
		parent.InsertChildAt(before.Index(), e)
	} else {
		parent.AddChild(e)
	}
	return e
}
