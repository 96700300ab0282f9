// Package storage is qemufs's storage driver: storage pools
// (pools/NAME/config.xml, libvirt pool XML) and their volumes
// (pools/NAME/volumes/VOL), created with qemu-img. The domain driver
// resolves <disk type='volume'> through it at start.
package storage

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// Pool is a storage pool definition.
type Pool struct {
	Type string // dir, fs, netfs, logical
	Name string
	UUID string
	// Target is the directory the volumes are in (dir, fs, netfs) or
	// /dev/VG (logical).
	Target string
	// Mode is the target directory's permission (default 0711).
	Mode uint32
	// Device is the source block device (fs; a physical volume for
	// logical); Host and Dir the NFS server and export (netfs);
	// SourceName the volume group (logical); Format the filesystem
	// (fs, netfs) or lvm2.
	Device, Host, Dir, SourceName, Format string
}

type xmlPool struct {
	XMLName    xml.Name `xml:"pool"`
	Type       string   `xml:"type,attr"`
	Name       string   `xml:"name"`
	UUID       string   `xml:"uuid,omitempty"`
	Capacity   *xmlSize `xml:"capacity,omitempty"`
	Allocation *xmlSize `xml:"allocation,omitempty"`
	Available  *xmlSize `xml:"available,omitempty"`
	Source     *struct {
		Device *struct {
			Path string `xml:"path,attr"`
		} `xml:"device,omitempty"`
		Host *struct {
			Name string `xml:"name,attr"`
		} `xml:"host,omitempty"`
		Dir *struct {
			Path string `xml:"path,attr"`
		} `xml:"dir,omitempty"`
		Name   string `xml:"name,omitempty"`
		Format *struct {
			Type string `xml:"type,attr"`
		} `xml:"format,omitempty"`
	} `xml:"source,omitempty"`
	Target *struct {
		Path        string          `xml:"path"`
		Permissions *xmlPermissions `xml:"permissions,omitempty"`
	} `xml:"target,omitempty"`
}

type xmlPermissions struct {
	Mode  string `xml:"mode,omitempty"`
	Owner string `xml:"owner,omitempty"`
	Group string `xml:"group,omitempty"`
}

type xmlSize struct {
	Unit  string `xml:"unit,attr,omitempty"`
	Value string `xml:",chardata"`
}

// NameRE is what pool and volume names may be.
var NameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$`)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// ParsePool reads a pool definition.
func ParsePool(data []byte) (*Pool, error) {
	var x xmlPool
	if err := xml.NewDecoder(bytes.NewReader(data)).Decode(&x); err != nil {
		return nil, fmt.Errorf("pool XML: %w", err)
	}
	p := &Pool{Type: x.Type, Name: strings.TrimSpace(x.Name), UUID: strings.ToLower(strings.TrimSpace(x.UUID)), Mode: 0o711}
	if !NameRE.MatchString(p.Name) {
		return nil, fmt.Errorf("pool <name> %q: use letters, digits and _ . + - (not starting with . + -)", p.Name)
	}
	if p.UUID != "" && !uuidRE.MatchString(p.UUID) {
		return nil, fmt.Errorf("pool <uuid> %q is not a UUID", x.UUID)
	}
	if s := x.Source; s != nil {
		if s.Device != nil {
			p.Device = s.Device.Path
		}
		if s.Host != nil {
			p.Host = s.Host.Name
		}
		if s.Dir != nil {
			p.Dir = s.Dir.Path
		}
		if s.Format != nil {
			p.Format = s.Format.Type
		}
		p.SourceName = strings.TrimSpace(s.Name)
	}
	if x.Target != nil {
		p.Target = strings.TrimSpace(x.Target.Path)
		if pm := x.Target.Permissions; pm != nil && pm.Mode != "" {
			m, err := strconv.ParseUint(pm.Mode, 8, 32)
			if err != nil || m > 0o7777 {
				return nil, fmt.Errorf("pool <permissions><mode> %q: want an octal mode", pm.Mode)
			}
			p.Mode = uint32(m)
		}
	}
	switch p.Type {
	case "dir":
	case "fs":
		if p.Device == "" {
			return nil, fmt.Errorf("pool type 'fs' needs <source><device path='...'/></source>")
		}
	case "netfs":
		if p.Host == "" || p.Dir == "" {
			return nil, fmt.Errorf("pool type 'netfs' needs <source><host name='...'/><dir path='...'/></source>")
		}
	case "logical":
		if p.SourceName == "" {
			p.SourceName = p.Name
		}
		if p.Target == "" {
			p.Target = "/dev/" + p.SourceName
		}
	case "":
		return nil, fmt.Errorf("<pool> needs a type (dir, fs, netfs or logical)")
	default:
		return nil, fmt.Errorf("pool type %q is not supported (dir, fs, netfs, logical)", p.Type)
	}
	if p.Target == "" || !strings.HasPrefix(p.Target, "/") {
		return nil, fmt.Errorf("pool %s needs an absolute <target><path>", p.Name)
	}
	return p, nil
}

// XML formats the pool as libvirt does, with the sizes given.
func (p *Pool) XML(capacity, allocation, available uint64) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "<pool type='%s'>\n  <name>%s</name>\n  <uuid>%s</uuid>\n", p.Type, esc(p.Name), p.UUID)
	fmt.Fprintf(&b, "  <capacity unit='bytes'>%d</capacity>\n  <allocation unit='bytes'>%d</allocation>\n  <available unit='bytes'>%d</available>\n", capacity, allocation, available)
	b.WriteString("  <source>\n")
	if p.Host != "" {
		fmt.Fprintf(&b, "    <host name='%s'/>\n", esc(p.Host))
	}
	if p.Device != "" {
		fmt.Fprintf(&b, "    <device path='%s'/>\n", esc(p.Device))
	}
	if p.Dir != "" {
		fmt.Fprintf(&b, "    <dir path='%s'/>\n", esc(p.Dir))
	}
	if p.Type == "logical" {
		fmt.Fprintf(&b, "    <name>%s</name>\n", esc(p.SourceName))
	}
	if p.Format != "" {
		fmt.Fprintf(&b, "    <format type='%s'/>\n", esc(p.Format))
	}
	b.WriteString("  </source>\n")
	fmt.Fprintf(&b, "  <target>\n    <path>%s</path>\n    <permissions>\n      <mode>%04o</mode>\n    </permissions>\n  </target>\n</pool>\n", esc(p.Target), p.Mode)
	return b.Bytes()
}

func esc(s string) string {
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// Volume is a volume definition as written to create one.
type Volume struct {
	Name       string
	Capacity   uint64
	Allocation uint64
	HasAlloc   bool
	Format     string // raw, qcow2 (default raw)
	Mode       uint32 // 0: the default 0600
	// BackingPath and BackingFormat are <backingStore> (qcow2 only).
	BackingPath, BackingFormat string
	// Encryption is <target><encryption format='luks'>: the secret's
	// UUID or its usage.
	Encrypted               bool
	SecretUUID, SecretUsage string
}

type xmlVolume struct {
	XMLName    xml.Name `xml:"volume"`
	Name       string   `xml:"name"`
	Capacity   *xmlSize `xml:"capacity"`
	Allocation *xmlSize `xml:"allocation"`
	Target     *struct {
		Path   string `xml:"path"`
		Format *struct {
			Type string `xml:"type,attr"`
		} `xml:"format"`
		Permissions *xmlPermissions `xml:"permissions"`
		Encryption  *xmlEncryption  `xml:"encryption"`
	} `xml:"target"`
	BackingStore *struct {
		Path   string `xml:"path"`
		Format *struct {
			Type string `xml:"type,attr"`
		} `xml:"format"`
	} `xml:"backingStore"`
}

type xmlEncryption struct {
	Format string `xml:"format,attr"`
	Secret *struct {
		Type  string `xml:"type,attr"`
		UUID  string `xml:"uuid,attr"`
		Usage string `xml:"usage,attr"`
	} `xml:"secret"`
}

// units are libvirt's size units: K, KiB are 1024, KB 1000, and so on.
var units = func() map[string]uint64 {
	m := map[string]uint64{"": 1, "b": 1, "bytes": 1}
	p2, p10 := uint64(1), uint64(1)
	for _, c := range "KMGTPE" {
		p2, p10 = p2*1024, p10*1000
		m[string(c)], m[string(c)+"iB"], m[string(c)+"B"] = p2, p2, p10
		m[strings.ToLower(string(c))] = p2
	}
	return m
}()

// ParseSize reads a libvirt scaled integer: a value and a unit (b, bytes,
// KB, K, KiB, MB, M, MiB, ... EiB; default bytes).
func ParseSize(value, unit string) (uint64, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(value), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: want a whole number", value)
	}
	mult, ok := units[strings.TrimSpace(unit)]
	if !ok {
		return 0, fmt.Errorf("size unit %q: want b, bytes, KB, K, KiB, MB, M, MiB, GB, G, GiB, TB, T, TiB, PB, P, PiB, EB, E or EiB", unit)
	}
	if mult > 1 && v > math.MaxUint64/mult {
		return 0, fmt.Errorf("size %s %s is too large", value, unit)
	}
	return v * mult, nil
}

// ParseVolume reads a volume definition.
func ParseVolume(data []byte) (*Volume, error) {
	var x xmlVolume
	if err := xml.NewDecoder(bytes.NewReader(data)).Decode(&x); err != nil {
		return nil, fmt.Errorf("volume XML: %w", err)
	}
	v := &Volume{Name: strings.TrimSpace(x.Name), Format: "raw"}
	if !NameRE.MatchString(v.Name) {
		return nil, fmt.Errorf("volume <name> %q: use letters, digits and _ . + - (not starting with . + -)", v.Name)
	}
	if x.Capacity == nil {
		return nil, fmt.Errorf("volume %s needs a <capacity>", v.Name)
	}
	var err error
	if v.Capacity, err = ParseSize(x.Capacity.Value, x.Capacity.Unit); err != nil {
		return nil, fmt.Errorf("volume %s <capacity>: %w", v.Name, err)
	}
	if x.Allocation != nil {
		if v.Allocation, err = ParseSize(x.Allocation.Value, x.Allocation.Unit); err != nil {
			return nil, fmt.Errorf("volume %s <allocation>: %w", v.Name, err)
		}
		v.HasAlloc = true
		if v.Allocation > v.Capacity {
			return nil, fmt.Errorf("volume %s: <allocation> %d exceeds <capacity> %d", v.Name, v.Allocation, v.Capacity)
		}
	}
	if t := x.Target; t != nil {
		if t.Format != nil && t.Format.Type != "" {
			v.Format = t.Format.Type
		}
		if pm := t.Permissions; pm != nil && pm.Mode != "" {
			m, err := strconv.ParseUint(pm.Mode, 8, 32)
			if err != nil || m > 0o7777 {
				return nil, fmt.Errorf("volume %s <permissions><mode> %q: want an octal mode", v.Name, pm.Mode)
			}
			v.Mode = uint32(m)
		}
		if e := t.Encryption; e != nil {
			if e.Format != "luks" {
				return nil, fmt.Errorf("volume %s: <encryption format=%q>: only luks is supported", v.Name, e.Format)
			}
			if e.Secret == nil || (e.Secret.UUID == "" && e.Secret.Usage == "") {
				return nil, fmt.Errorf("volume %s: <encryption> needs <secret type='passphrase' uuid='...'/>", v.Name)
			}
			v.Encrypted, v.SecretUUID, v.SecretUsage = true, e.Secret.UUID, e.Secret.Usage
		}
	}
	switch v.Format {
	case "raw", "qcow2":
	default:
		return nil, fmt.Errorf("volume %s: format %q: want raw or qcow2", v.Name, v.Format)
	}
	if b := x.BackingStore; b != nil {
		if v.Format != "qcow2" {
			return nil, fmt.Errorf("volume %s: a <backingStore> needs format qcow2", v.Name)
		}
		v.BackingPath = strings.TrimSpace(b.Path)
		if v.BackingPath == "" {
			return nil, fmt.Errorf("volume %s: <backingStore> needs a <path>", v.Name)
		}
		if b.Format != nil {
			v.BackingFormat = b.Format.Type
		}
	}
	return v, nil
}
