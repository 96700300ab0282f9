package domain

import (
	"regexp"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// qemuChildren returns the children of e in the qemu: namespace named tag,
// whatever prefix the document binds to it.
func qemuChildren(e *etree.Element, tag string) []*etree.Element {
	if e == nil {
		return nil
	}
	var out []*etree.Element
	for _, c := range e.ChildElements() {
		if c.Tag == tag && c.NamespaceURI() == QEMUNamespace {
			out = append(out, c)
		}
	}
	return out
}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// checkQEMUNamespace validates qemu:commandline, qemu:capabilities,
// qemu:deprecation and qemu:override.
func (d *Domain) checkQEMUNamespace(c *checker) {
	for _, e := range d.root.ChildElements() {
		if e.Space == "" && !hasXmlns(e) {
			continue
		}
		if e.NamespaceURI() == "" {
			c.fail(e, "namespace prefix %q is not declared", e.Space)
			return
		}
		if e.NamespaceURI() != QEMUNamespace {
			continue // another application's extension, kept as is
		}
		switch e.Tag {
		case "commandline":
			for _, a := range e.ChildElements() {
				switch {
				case a.Tag == "arg" && a.NamespaceURI() == QEMUNamespace:
					if !hasAttr(a, "value") {
						c.fail(a, "attribute value is required")
					}
				case a.Tag == "env" && a.NamespaceURI() == QEMUNamespace:
					n := c.required(a, "name")
					if n != "" && !envNameRE.MatchString(n) {
						c.fail(a, "attribute name: %q is not a valid environment variable name", n)
					}
				default:
					c.fail(a, "unknown element <%s> (expected qemu:arg or qemu:env)", a.FullTag())
				}
			}
		case "capabilities":
			for _, a := range e.ChildElements() {
				if (a.Tag != "add" && a.Tag != "del") || a.NamespaceURI() != QEMUNamespace {
					c.fail(a, "unknown element <%s> (expected qemu:add or qemu:del)", a.FullTag())
					continue
				}
				c.required(a, "capability")
			}
		case "deprecation":
			c.required(e, "behavior")
			c.enum(e, "behavior", "none", "omit", "reject", "crash")
		case "override":
			for _, dev := range e.ChildElements() {
				if dev.Tag != "device" || dev.NamespaceURI() != QEMUNamespace {
					c.fail(dev, "unknown element <%s> (expected qemu:device)", dev.FullTag())
					continue
				}
				c.required(dev, "alias")
				for _, fe := range dev.ChildElements() {
					if fe.Tag != "frontend" || fe.NamespaceURI() != QEMUNamespace {
						c.fail(fe, "unknown element <%s> (expected qemu:frontend)", fe.FullTag())
						continue
					}
					for _, p := range fe.ChildElements() {
						if p.Tag != "property" || p.NamespaceURI() != QEMUNamespace {
							c.fail(p, "unknown element <%s> (expected qemu:property)", p.FullTag())
							continue
						}
						c.required(p, "name")
						t := c.required(p, "type")
						c.enum(p, "type", "string", "unsigned", "signed", "bool", "remove")
						if t != "remove" && !hasAttr(p, "value") {
							c.fail(p, "attribute value is required for type %q", t)
							continue
						}
						v := attr(p, "value")
						switch t {
						case "unsigned":
							if _, err := strconv.ParseUint(v, 10, 64); err != nil {
								c.fail(p, "attribute value: %q is not an unsigned integer", v)
							}
						case "signed":
							if _, err := strconv.ParseInt(v, 10, 64); err != nil {
								c.fail(p, "attribute value: %q is not a signed integer", v)
							}
						case "bool":
							if v != "true" && v != "false" {
								c.fail(p, "attribute value: %q is not true or false", v)
							}
						}
					}
				}
			}
		default:
			c.fail(e, "unknown element <%s> in the qemu namespace (expected commandline, capabilities, deprecation or override)", e.FullTag())
		}
	}
}

// QEMUArgs returns the extra arguments of qemu:commandline, in order.
func (d *Domain) QEMUArgs() []string {
	var out []string
	for _, cl := range qemuChildren(d.root, "commandline") {
		for _, a := range qemuChildren(cl, "arg") {
			out = append(out, attr(a, "value"))
		}
	}
	return out
}

// QEMUEnv returns the extra environment of qemu:commandline as NAME=VALUE.
func (d *Domain) QEMUEnv() []string {
	var out []string
	for _, cl := range qemuChildren(d.root, "commandline") {
		for _, a := range qemuChildren(cl, "env") {
			out = append(out, attr(a, "name")+"="+attr(a, "value"))
		}
	}
	return out
}

// QEMUCapabilities returns the capabilities qemu:capabilities adds and
// removes.
func (d *Domain) QEMUCapabilities() (add, del []string) {
	for _, cl := range qemuChildren(d.root, "capabilities") {
		for _, a := range qemuChildren(cl, "add") {
			add = append(add, attr(a, "capability"))
		}
		for _, a := range qemuChildren(cl, "del") {
			del = append(del, attr(a, "capability"))
		}
	}
	return add, del
}

// QEMUDeprecation returns qemu:deprecation's behavior ("" when absent).
func (d *Domain) QEMUDeprecation() string {
	for _, e := range qemuChildren(d.root, "deprecation") {
		return attr(e, "behavior")
	}
	return ""
}

// Override is one qemu:override property of a device frontend.
type Override struct {
	Alias string // the device alias (-device id)
	Name  string
	Type  string // string, unsigned, signed, bool, remove
	Value string
}

// QEMUOverrides returns the qemu:override properties.
func (d *Domain) QEMUOverrides() []Override {
	var out []Override
	for _, o := range qemuChildren(d.root, "override") {
		for _, dev := range qemuChildren(o, "device") {
			for _, fe := range qemuChildren(dev, "frontend") {
				for _, p := range qemuChildren(fe, "property") {
					out = append(out, Override{Alias: attr(dev, "alias"), Name: attr(p, "name"),
						Type: attr(p, "type"), Value: attr(p, "value")})
				}
			}
		}
	}
	return out
}

// ImpliedTaints returns the taint flags (libvirt names) the definition
// itself causes when it runs: custom-argv for qemu:commandline,
// custom-hypervisor-feature for qemu:capabilities and qemu:deprecation,
// custom-device for qemu:override. The driver records them with AddTaint
// in the live definition and in the log.
func (d *Domain) ImpliedTaints() []string {
	var out []string
	if len(d.QEMUArgs()) > 0 || len(d.QEMUEnv()) > 0 {
		out = append(out, "custom-argv")
	}
	add, del := d.QEMUCapabilities()
	if len(add)+len(del) > 0 || (d.QEMUDeprecation() != "" && d.QEMUDeprecation() != "none") {
		out = append(out, "custom-hypervisor-feature")
	}
	if len(d.QEMUOverrides()) > 0 {
		out = append(out, "custom-device")
	}
	return out
}

// capDeleted reports whether qemu:capabilities deletes capability name.
func (d *Domain) capDeleted(name string) bool {
	_, del := d.QEMUCapabilities()
	for _, c := range del {
		if strings.EqualFold(c, name) {
			return true
		}
	}
	return false
}
