package capabilities

import (
	"bytes"
	"strings"
)

// node is an XML element written libvirt's way: 2-space indent, attributes
// in single quotes, empty elements self-closed.
type node struct {
	name  string
	attrs []string // name, value pairs
	text  string
	kids  []*node
}

func el(name string, attrs ...string) *node { return &node{name: name, attrs: attrs} }

// textEl is <name>text</name>.
func textEl(name, text string, attrs ...string) *node {
	return &node{name: name, attrs: attrs, text: text}
}

func (n *node) add(kids ...*node) *node {
	for _, k := range kids {
		if k != nil {
			n.kids = append(n.kids, k)
		}
	}
	return n
}

// enum is libvirt's <enum name='...'><value>v</value>...</enum>.
func enum(name string, values ...string) *node {
	e := el("enum", "name", name)
	for _, v := range values {
		e.add(textEl("value", v))
	}
	return e
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (n *node) bytes() []byte {
	var b bytes.Buffer
	n.write(&b, 0)
	return b.Bytes()
}

var (
	textEsc = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")
	attrEsc = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "'", "&apos;", "\n", "&#10;", "\t", "&#9;")
)

func (n *node) write(b *bytes.Buffer, depth int) {
	ind := strings.Repeat("  ", depth)
	b.WriteString(ind)
	b.WriteByte('<')
	b.WriteString(n.name)
	for i := 0; i+1 < len(n.attrs); i += 2 {
		b.WriteString(" " + n.attrs[i] + "='")
		attrEsc.WriteString(b, n.attrs[i+1])
		b.WriteByte('\'')
	}
	switch {
	case len(n.kids) > 0:
		b.WriteString(">\n")
		for _, k := range n.kids {
			k.write(b, depth+1)
		}
		b.WriteString(ind + "</" + n.name + ">\n")
	case n.text != "":
		b.WriteByte('>')
		textEsc.WriteString(b, n.text)
		b.WriteString("</" + n.name + ">\n")
	default:
		b.WriteString("/>\n")
	}
}
