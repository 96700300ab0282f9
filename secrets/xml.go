// Package secrets is qemufs's secret driver: libvirt secret definitions
// (secrets/UUID/config.xml) and their values (secrets/UUID/value), which
// are kept encrypted at rest under the instance with a key only the daemon
// can read. The domain driver looks values up by UUID or by usage to hand
// them to QEMU (LUKS passphrases) without putting them on a command line.
package secrets

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"regexp"
	"strings"
)

// Secret is one libvirt secret definition.
type Secret struct {
	UUID        string
	Ephemeral   bool
	Private     bool
	Description string
	// UsageType is volume, ceph, iscsi, tls or vtpm; "" when the secret
	// has no usage.
	UsageType string
	// UsageID is the usage's key: the volume path (volume), the name
	// (ceph, tls, vtpm) or the target (iscsi).
	UsageID string
}

type xmlUsage struct {
	Type   string `xml:"type,attr"`
	Volume string `xml:"volume,omitempty"`
	Name   string `xml:"name,omitempty"`
	Target string `xml:"target,omitempty"`
}

type xmlSecret struct {
	XMLName     xml.Name  `xml:"secret"`
	Ephemeral   string    `xml:"ephemeral,attr,omitempty"`
	Private     string    `xml:"private,attr,omitempty"`
	UUID        string    `xml:"uuid,omitempty"`
	Description string    `xml:"description,omitempty"`
	Usage       *xmlUsage `xml:"usage,omitempty"`
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)

// CanonicalUUID returns s in its lower-case dashed form, or an error when
// s is not a UUID.
func CanonicalUUID(s string) (string, error) {
	if !uuidRE.MatchString(s) {
		return "", fmt.Errorf("%q is not a UUID", s)
	}
	h := strings.ToLower(strings.ReplaceAll(s, "-", ""))
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}

func yesNo(s, what string) (bool, error) {
	switch s {
	case "", "no":
		return false, nil
	case "yes":
		return true, nil
	}
	return false, fmt.Errorf("%s=%q: want yes or no", what, s)
}

// Parse reads a secret XML document. The UUID may be absent (the caller
// supplies one); everything else libvirt accepts is checked here.
func Parse(data []byte) (*Secret, error) {
	var x xmlSecret
	dec := xml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&x); err != nil {
		return nil, fmt.Errorf("secret XML: %w", err)
	}
	s := &Secret{Description: strings.TrimSpace(x.Description)}
	var err error
	if s.Ephemeral, err = yesNo(x.Ephemeral, "ephemeral"); err != nil {
		return nil, err
	}
	if s.Private, err = yesNo(x.Private, "private"); err != nil {
		return nil, err
	}
	if u := strings.TrimSpace(x.UUID); u != "" {
		if s.UUID, err = CanonicalUUID(u); err != nil {
			return nil, fmt.Errorf("<uuid>: %w", err)
		}
	}
	if x.Usage != nil {
		u := x.Usage
		s.UsageType = u.Type
		var id, elem string
		switch u.Type {
		case "volume":
			id, elem = u.Volume, "volume"
		case "ceph", "tls", "vtpm":
			id, elem = u.Name, "name"
		case "iscsi":
			id, elem = u.Target, "target"
		case "":
			return nil, fmt.Errorf("<usage> needs a type (volume, ceph, iscsi, tls or vtpm)")
		default:
			return nil, fmt.Errorf("<usage type=%q>: want volume, ceph, iscsi, tls or vtpm", u.Type)
		}
		s.UsageID = strings.TrimSpace(id)
		if s.UsageID == "" {
			return nil, fmt.Errorf("<usage type=%q> needs its <%s>", u.Type, elem)
		}
	}
	return s, nil
}

// XML formats the definition as libvirt does.
func (s *Secret) XML() []byte {
	x := xmlSecret{Ephemeral: "no", Private: "no", UUID: s.UUID, Description: s.Description}
	if s.Ephemeral {
		x.Ephemeral = "yes"
	}
	if s.Private {
		x.Private = "yes"
	}
	if s.UsageType != "" {
		u := &xmlUsage{Type: s.UsageType}
		switch s.UsageType {
		case "volume":
			u.Volume = s.UsageID
		case "iscsi":
			u.Target = s.UsageID
		default:
			u.Name = s.UsageID
		}
		x.Usage = u
	}
	out, _ := xml.MarshalIndent(x, "", "  ")
	return append(out, '\n')
}
