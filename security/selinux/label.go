package selinux

import "fmt"

// Request is a guest's <seclabel model='selinux'> (zero: dynamic).
type Request struct {
	Type       string // "dynamic" (default), "static" or "none"
	Relabel    *bool  // nil: yes for dynamic, no for static
	Label      string // static: the process context
	ImageLabel string // static with relabel: the image context
	BaseLabel  string // dynamic: the process context to start from
}

// Label is what a guest got: its process and image contexts.
type Label struct {
	Type    string `json:"type"`
	Relabel bool   `json:"relabel"`
	Process string `json:"label,omitempty"`
	Image   string `json:"imagelabel,omitempty"`
	// MCS is the category pair this guest holds in the allocator.
	MCS string `json:"mcs,omitempty"`
	// Static marks a shared (static) reservation.
	Static bool `json:"static,omitempty"`
}

// Driver turns requests into labels using the policy contexts and the
// MCS allocator.
type Driver struct {
	Contexts Contexts
	MCS      *MCS
}

// Assign computes a guest's label, reserving its categories. tcg selects
// the TCG domain as the dynamic base.
func (d *Driver) Assign(r Request, tcg bool) (Label, error) {
	switch r.Type {
	case "", "dynamic":
		if r.Relabel != nil && !*r.Relabel {
			return Label{}, fmt.Errorf("selinux seclabel: a dynamic label needs relabel='yes'")
		}
		if r.Label != "" || r.ImageLabel != "" {
			return Label{}, fmt.Errorf("selinux seclabel: a dynamic label takes no <label> or <imagelabel> (use <baselabel>)")
		}
		base := d.Contexts.Domain
		if tcg {
			base = d.Contexts.TCGDomain
		}
		if r.BaseLabel != "" {
			if _, err := ParseContext(r.BaseLabel); err != nil {
				return Label{}, fmt.Errorf("selinux baselabel: %w", err)
			}
			base = r.BaseLabel
		}
		cats, err := d.MCS.Allocate()
		if err != nil {
			return Label{}, fmt.Errorf("selinux: %w", err)
		}
		proc, err1 := WithCategories(base, cats)
		img, err2 := WithCategories(d.Contexts.Image, cats)
		if err1 != nil || err2 != nil {
			d.MCS.Release(cats)
			return Label{}, fmt.Errorf("selinux: %v", firstErr(err1, err2))
		}
		return Label{Type: "dynamic", Relabel: true, Process: proc, Image: img, MCS: cats}, nil
	case "static":
		if r.Label == "" {
			return Label{}, fmt.Errorf("selinux seclabel: a static label needs <label>")
		}
		if _, err := ParseContext(r.Label); err != nil {
			return Label{}, fmt.Errorf("selinux seclabel: %w", err)
		}
		l := Label{Type: "static", Process: r.Label, Relabel: r.Relabel != nil && *r.Relabel, Static: true}
		if l.Relabel {
			l.Image = r.ImageLabel
			if l.Image == "" {
				img, err := WithCategories(d.Contexts.Image, Categories(r.Label))
				if err != nil {
					return Label{}, err
				}
				l.Image = img
			}
		}
		l.MCS = Categories(r.Label)
		if err := d.MCS.Reserve(l.MCS, false); err != nil {
			return Label{}, err
		}
		return l, nil
	case "none":
		return Label{Type: "none"}, nil
	}
	return Label{}, fmt.Errorf("selinux seclabel: unknown type %q (dynamic, static or none)", r.Type)
}

// Release frees the label's categories.
func (d *Driver) Release(l Label) {
	if l.MCS != "" {
		d.MCS.Release(l.MCS)
	}
}

// Reattach re-reserves a running guest's categories after a restart; a
// dynamic pair already held by another guest is an error.
func (d *Driver) Reattach(l Label) error {
	return d.MCS.Reserve(l.MCS, !l.Static)
}

// Kind says how a file is shared, which decides its label.
type Kind int

// File kinds.
const (
	Exclusive Kind = iota // the guest's own: its image label
	Shared                // <shareable/>: the image context at s0
	ReadOnly              // <readonly/> or a kernel/initrd: the content context at s0
)

// FileLabel is the label a file of the given kind gets for guest l.
func (d *Driver) FileLabel(l Label, k Kind) string {
	switch k {
	case Shared:
		return d.Contexts.Image
	case ReadOnly:
		return d.Contexts.Content
	}
	return l.Image
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
