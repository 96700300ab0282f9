package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/beevik/etree"

	"github.com/qemufs/qemufs/domain"
)

// Snapshot states and memory modes, with libvirt's names.
const (
	snapRunning      = "running"
	snapPaused       = "paused"
	snapShutoff      = "shutoff"
	snapDiskSnapshot = "disk-snapshot"

	modeInternal = "internal"
	modeExternal = "external"
	modeNo       = "no"
)

// ReasonFromSnapshot is the state reason after a revert, as libvirt's
// "from snapshot".
const ReasonFromSnapshot = "from snapshot"

// snapDisk is one <disk> of a domainsnapshot: which disk (its target) and
// how it was snapshotted; an external one names its overlay.
type snapDisk struct {
	Name     string // target dev, e.g. vda (a source path is accepted on input)
	Snapshot string // internal, external, no ("" on input: the default)
	Source   string // external: the overlay file
	Format   string // external: the overlay's format (qcow2)
}

// snapshot is one domain snapshot's metadata, libvirt's domainsnapshot.
type snapshot struct {
	Name        string
	Description string
	State       string // running, paused, shutoff, disk-snapshot
	Parent      string
	Created     int64 // creationTime, seconds since the epoch
	Memory      string
	Disks       []snapDisk
	// Domain is the definition at snapshot time: the live one while the
	// domain ran (what the memory state belongs to), else the persistent.
	Domain []byte
	// Inactive is the persistent definition at snapshot time of a running
	// domain (libvirt's <inactiveDomain>); revert makes it config.xml.
	Inactive []byte
}

// external reports whether any disk of the snapshot is an external one.
func (s *snapshot) external() bool {
	for _, dk := range s.Disks {
		if dk.Snapshot == modeExternal {
			return true
		}
	}
	return s.Memory == modeExternal
}

// hasMemory reports whether the snapshot holds the guest's memory.
func (s *snapshot) hasMemory() bool { return s.Memory == modeInternal }

// snapSet is a domain's snapshots, loaded from disk on first use.
type snapSet struct {
	mu      sync.Mutex
	loaded  bool
	byName  map[string]*snapshot
	current string
}

// snapDir is where a domain's snapshot metadata lives: beside the
// definitions, a directory the daemon alone writes (lib/qemu/NAME is
// QEMU's home, owned by QEMU's user on a system instance).
func (d *Driver) snapDir(name string) string {
	return filepath.Join(d.inst.ConfigDir, "snapshot", name)
}

// snaps returns the domain's snapshot set, loading it at first use. The
// caller must not hold set.mu.
func (d *Driver) snaps(dm *dom) (*snapSet, error) {
	s := &dm.snaps
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loaded {
		return s, nil
	}
	byName := map[string]*snapshot{}
	dir := d.snapDir(dm.name)
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, errorf(ErrIO, "snapshots of %s: %w", dm.name, err)
	}
	for _, e := range entries {
		n, ok := strings.CutSuffix(e.Name(), ".xml")
		if !ok || e.IsDir() || strings.HasPrefix(n, ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err == nil {
			var sn *snapshot
			if sn, err = parseSnapshotMeta(data); err == nil && sn.Name != n {
				err = fmt.Errorf("it names snapshot %q", sn.Name)
			}
			if err == nil {
				byName[n] = sn
				continue
			}
		}
		// One bad file must not hide the other snapshots.
		d.logf("snapshot %s/%s: %v (skipped)", dm.name, n, err)
	}
	cur, _ := os.ReadFile(filepath.Join(dir, "current"))
	s.current = strings.TrimSpace(string(cur))
	if byName[s.current] == nil {
		s.current = ""
	}
	s.byName, s.loaded = byName, true
	return s, nil
}

// save writes one snapshot's metadata atomically.
func (d *Driver) saveSnapshot(dm *dom, sn *snapshot) error {
	dir := d.snapDir(dm.name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, sn.Name+".xml"), sn.xml(), 0o600)
}

// saveCurrent records which snapshot is current ("" for none).
func (d *Driver) saveCurrent(dm *dom, name string) error {
	dir := d.snapDir(dm.name)
	p := filepath.Join(dir, "current")
	if name == "" {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return writeFileAtomic(p, []byte(name+"\n"), 0o600)
}

// checkSnapshotName rejects names that cannot be a directory, and names
// QEMU would take for a snapshot id (qemu-img matches -a/-d by id too).
func checkSnapshotName(name string) error {
	switch {
	case name == "":
		return errors.New("empty snapshot name")
	case name == "." || name == "..", strings.HasPrefix(name, "."):
		return fmt.Errorf("snapshot name %q is not allowed (it starts with '.')", name)
	case strings.ContainsRune(name, '/'):
		return fmt.Errorf("snapshot name %q contains '/'", name)
	case strings.ContainsFunc(name, func(r rune) bool { return r < ' ' || r == 0x7f }):
		return fmt.Errorf("snapshot name %q contains a control character", name)
	case len(name) > 200:
		return fmt.Errorf("snapshot name is %d bytes; at most 200 are allowed", len(name))
	case strings.Trim(name, "0123456789") == "":
		return fmt.Errorf("snapshot name %q is a number: QEMU would take it for the id of another internal snapshot", name)
	case name == snapCreateFile || name == snapCurrentFile:
		return fmt.Errorf("snapshot name %q is taken by the file snapshots/%s", name, name)
	}
	return nil
}

// The fixed files of a domain's snapshots directory.
const (
	snapCreateFile  = "create"
	snapCurrentFile = "current"
)

// xml renders the snapshot as libvirt's snapshot-dumpxml does.
func (s *snapshot) xml() []byte {
	doc := etree.NewDocument()
	root := doc.CreateElement("domainsnapshot")
	root.CreateElement("name").SetText(s.Name)
	if s.Description != "" {
		root.CreateElement("description").SetText(s.Description)
	}
	root.CreateElement("state").SetText(s.State)
	if s.Parent != "" {
		root.CreateElement("parent").CreateElement("name").SetText(s.Parent)
	}
	root.CreateElement("creationTime").SetText(strconv.FormatInt(s.Created, 10))
	root.CreateElement("memory").CreateAttr("snapshot", s.Memory)
	if len(s.Disks) > 0 {
		disks := root.CreateElement("disks")
		for _, dk := range s.Disks {
			e := disks.CreateElement("disk")
			e.CreateAttr("name", dk.Name)
			e.CreateAttr("snapshot", dk.Snapshot)
			if dk.Snapshot == modeExternal {
				e.CreateAttr("type", "file")
				e.CreateElement("driver").CreateAttr("type", dk.Format)
				e.CreateElement("source").CreateAttr("file", dk.Source)
			}
		}
	}
	for _, p := range []struct {
		tag string
		xml []byte
	}{{"domain", s.Domain}, {"inactiveDomain", s.Inactive}} {
		if len(p.xml) == 0 {
			continue
		}
		sub := etree.NewDocument()
		if err := sub.ReadFromBytes(p.xml); err != nil || sub.Root() == nil {
			continue
		}
		e := sub.Root().Copy()
		e.Tag = p.tag
		root.AddChild(e)
	}
	doc.WriteSettings.AttrSingleQuote = true
	doc.Indent(2)
	b, _ := doc.WriteToBytes()
	return b
}

// elementXML returns one element as a document of its own, renamed.
func elementXML(e *etree.Element, tag string) []byte {
	doc := etree.NewDocument()
	c := e.Copy()
	c.Tag = tag
	doc.SetRoot(c)
	doc.WriteSettings.AttrSingleQuote = true
	b, _ := doc.WriteToBytes()
	return b
}

// parseSnapshotMeta reads a stored (or dumped) domainsnapshot.
func parseSnapshotMeta(data []byte) (*snapshot, error) {
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(data); err != nil {
		return nil, err
	}
	root := doc.Root()
	if root == nil || root.Tag != "domainsnapshot" {
		return nil, errors.New("not a <domainsnapshot>")
	}
	s := &snapshot{
		Name:        strings.TrimSpace(elemText(root, "name")),
		Description: elemText(root, "description"),
		State:       strings.TrimSpace(elemText(root, "state")),
		Memory:      modeNo,
	}
	if p := root.SelectElement("parent"); p != nil {
		s.Parent = strings.TrimSpace(elemText(p, "name"))
	}
	if t := strings.TrimSpace(elemText(root, "creationTime")); t != "" {
		n, err := strconv.ParseInt(t, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("creationTime %q: %w", t, err)
		}
		s.Created = n
	}
	if m := root.SelectElement("memory"); m != nil {
		s.Memory = m.SelectAttrValue("snapshot", modeNo)
	}
	if ds := root.SelectElement("disks"); ds != nil {
		for _, e := range ds.SelectElements("disk") {
			s.Disks = append(s.Disks, snapDisk{
				Name:     e.SelectAttrValue("name", ""),
				Snapshot: e.SelectAttrValue("snapshot", ""),
				Source:   attrOf(e.SelectElement("source"), "file"),
				Format:   attrOf(e.SelectElement("driver"), "type"),
			})
		}
	}
	if e := root.SelectElement("domain"); e != nil {
		s.Domain = elementXML(e, "domain")
	}
	if e := root.SelectElement("inactiveDomain"); e != nil {
		s.Inactive = elementXML(e, "domain")
	}
	if s.Name == "" {
		return nil, errors.New("no <name>")
	}
	return s, nil
}

func elemText(e *etree.Element, tag string) string {
	if c := e.SelectElement(tag); c != nil {
		return c.Text()
	}
	return ""
}

func attrOf(e *etree.Element, key string) string {
	if e == nil {
		return ""
	}
	return e.SelectAttrValue(key, "")
}

// snapRequest is what a user's domainsnapshot XML (or a plain mkdir) asks
// for; the rest is filled in by qemufs.
type snapRequest struct {
	Name        string
	Description string
	Memory      string // internal, no, external; "" for the default
	Disks       []snapDisk
}

// parseSnapshotRequest validates a domainsnapshot XML written to create a
// snapshot. Only what a user may choose is accepted: name, description,
// memory and disks; the rest (state, parent, creationTime, domain) is
// qemufs's to fill, and redefining snapshot metadata is not supported.
func parseSnapshotRequest(data []byte) (*snapRequest, error) {
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(data); err != nil {
		return nil, fmt.Errorf("snapshot XML: %v", err)
	}
	root := doc.Root()
	if root == nil {
		return nil, errors.New("snapshot XML: empty document")
	}
	if root.Tag != "domainsnapshot" {
		return nil, fmt.Errorf("snapshot XML: root element is <%s>, want <domainsnapshot>", root.Tag)
	}
	req := &snapRequest{}
	seen := map[string]bool{}
	for _, c := range root.ChildElements() {
		if seen[c.Tag] {
			return nil, fmt.Errorf("snapshot XML: <%s> given twice", c.Tag)
		}
		seen[c.Tag] = true
		switch c.Tag {
		case "name":
			req.Name = strings.TrimSpace(c.Text())
			if err := checkSnapshotName(req.Name); err != nil {
				return nil, fmt.Errorf("snapshot XML: <name>: %v", err)
			}
		case "description":
			req.Description = c.Text()
		case "memory":
			req.Memory = c.SelectAttrValue("snapshot", "")
			switch req.Memory {
			case modeInternal, modeNo:
			case modeExternal:
				return nil, errors.New("snapshot XML: <memory snapshot='external'> (memory saved to a file) is not supported; use 'internal' (in the qcow2 disk) or 'no'")
			case "":
				return nil, errors.New("snapshot XML: <memory> needs a snapshot attribute ('internal' or 'no')")
			default:
				return nil, fmt.Errorf("snapshot XML: <memory snapshot='%s'>: want 'internal' or 'no'", req.Memory)
			}
		case "disks":
			for _, e := range c.ChildElements() {
				if e.Tag != "disk" {
					return nil, fmt.Errorf("snapshot XML: <disks> may hold only <disk>, not <%s>", e.Tag)
				}
				dk := snapDisk{
					Name:     e.SelectAttrValue("name", ""),
					Snapshot: e.SelectAttrValue("snapshot", ""),
					Source:   attrOf(e.SelectElement("source"), "file"),
					Format:   attrOf(e.SelectElement("driver"), "type"),
				}
				if dk.Name == "" {
					return nil, errors.New("snapshot XML: a <disk> lacks its name attribute (the target, e.g. vda)")
				}
				switch dk.Snapshot {
				case "", modeInternal, modeExternal, modeNo:
				case "manual":
					return nil, fmt.Errorf("snapshot XML: disk %s: snapshot='manual' is not supported", dk.Name)
				default:
					return nil, fmt.Errorf("snapshot XML: disk %s: snapshot='%s': want 'internal', 'external' or 'no'", dk.Name, dk.Snapshot)
				}
				if t := e.SelectAttrValue("type", "file"); t != "file" {
					return nil, fmt.Errorf("snapshot XML: disk %s: overlay type '%s' is not supported (only 'file')", dk.Name, t)
				}
				if src := e.SelectElement("source"); src != nil && dk.Source == "" {
					return nil, fmt.Errorf("snapshot XML: disk %s: <source> needs a file attribute", dk.Name)
				}
				if (dk.Source != "" || dk.Format != "") && dk.Snapshot != modeExternal && dk.Snapshot != "" {
					return nil, fmt.Errorf("snapshot XML: disk %s: a <source> or <driver> is for snapshot='external' only", dk.Name)
				}
				if dk.Source != "" || dk.Format != "" {
					dk.Snapshot = modeExternal
				}
				if dk.Source != "" && !filepath.IsAbs(dk.Source) {
					return nil, fmt.Errorf("snapshot XML: disk %s: overlay path %q is not absolute", dk.Name, dk.Source)
				}
				if dk.Format != "" && dk.Format != "qcow2" {
					return nil, fmt.Errorf("snapshot XML: disk %s: overlay format '%s' is not supported (only qcow2)", dk.Name, dk.Format)
				}
				req.Disks = append(req.Disks, dk)
			}
		case "state", "parent", "creationTime", "domain", "inactiveDomain", "active", "cookie":
			return nil, fmt.Errorf("snapshot XML: <%s> is set by qemufs, not by the writer (redefining snapshot metadata is not supported); give only name, description, memory and disks", c.Tag)
		default:
			return nil, fmt.Errorf("snapshot XML: unknown element <%s>; a snapshot takes name, description, memory and disks", c.Tag)
		}
	}
	return req, nil
}

// diskPlan is what a snapshot does to one disk.
type diskPlan struct {
	target  string
	mode    string // internal, external, no
	source  string // the image now (the top of the chain)
	format  string // its format
	overlay string // external: the new top
}

// planSnapshot decides, from the definition and the request, the memory
// mode and what happens to each disk, with libvirt's defaults: a running
// domain's snapshot holds its memory (internally, in its qcow2 disks)
// unless disks are taken externally; read-only disks and empty drives are
// left out. Every error names what to change.
func planSnapshot(def *domain.Domain, req *snapRequest, active bool) (string, []diskPlan, error) {
	disks := def.Disks()
	byDisk := map[int]snapDisk{}
	anyExternal := false
	for _, rd := range req.Disks {
		idx := -1
		for i, dk := range disks {
			if dk.Target == rd.Name || dk.Source != "" && dk.Source == rd.Name {
				idx = i
			}
		}
		if idx < 0 {
			var have []string
			for _, dk := range disks {
				have = append(have, dk.Target)
			}
			return "", nil, fmt.Errorf("snapshot: the domain has no disk %q (disks: %s)", rd.Name, strings.Join(have, ", "))
		}
		if _, dup := byDisk[idx]; dup {
			return "", nil, fmt.Errorf("snapshot: disk %s is named twice", disks[idx].Target)
		}
		byDisk[idx] = rd
		if rd.Snapshot == modeExternal {
			anyExternal = true
		}
	}
	// A disk's own <disk snapshot='...'> is its default, as in libvirt.
	own := map[string]string{}
	for _, e := range def.Root().FindElements("./devices/disk") {
		if t := e.FindElement("./target"); t != nil {
			own[t.SelectAttrValue("dev", "")] = e.SelectAttrValue("snapshot", "")
		}
	}
	memory := req.Memory
	if memory == "" {
		memory = modeNo
		if active && !anyExternal {
			memory = modeInternal
		}
	}
	if memory == modeInternal && !active {
		return "", nil, errors.New("snapshot: the domain is shut off, so there is no memory state to save; use <memory snapshot='no'/>")
	}
	dflt := modeInternal
	if anyExternal {
		dflt = modeExternal
	}
	var plans []diskPlan
	internal, external := 0, 0
	for i, dk := range disks {
		rd, asked := byDisk[i]
		mode := rd.Snapshot
		if mode == "" {
			switch own[dk.Target] {
			case modeNo, modeInternal, modeExternal:
				mode = own[dk.Target]
			case "manual":
				return "", nil, fmt.Errorf("snapshot: disk %s has snapshot='manual', which is not supported; give it a mode in the snapshot XML", dk.Target)
			}
		}
		hasMedia := dk.Source != "" && dk.Source != ":" && dk.Source != "/"
		switch {
		case !hasMedia:
			if mode == modeInternal || mode == modeExternal {
				return "", nil, fmt.Errorf("snapshot: disk %s has no media to snapshot", dk.Target)
			}
			mode = modeNo
		case dk.ReadOnly:
			if mode == modeInternal || mode == modeExternal {
				return "", nil, fmt.Errorf("snapshot: disk %s (%s) is read-only: it does not change, so it needs no snapshot; give it snapshot='no'", dk.Target, dk.Source)
			}
			mode = modeNo
		case mode == "":
			mode = dflt
		}
		p := diskPlan{target: dk.Target, mode: mode, source: dk.Source, format: dk.Format}
		if p.format == "" {
			p.format = "raw"
		}
		switch mode {
		case modeInternal:
			internal++
			if dk.Type != "file" && dk.Type != "block" {
				return "", nil, fmt.Errorf("snapshot: disk %s is of type '%s': internal snapshots need a local qcow2 image", dk.Target, dk.Type)
			}
			if p.format != "qcow2" {
				return "", nil, fmt.Errorf("snapshot: disk %s (%s) is a %s image: internal snapshots need qcow2; take an external snapshot of it, or leave it out with <disk name='%s' snapshot='no'/>", dk.Target, dk.Source, p.format, dk.Target)
			}
		case modeExternal:
			external++
			if dk.Type != "file" && dk.Type != "block" {
				return "", nil, fmt.Errorf("snapshot: disk %s is of type '%s': external snapshots need a local file or block device", dk.Target, dk.Type)
			}
			p.overlay = rd.Source
			if !asked || p.overlay == "" {
				p.overlay = defaultOverlay(dk.Source, req.Name)
			}
			if p.overlay == dk.Source {
				return "", nil, fmt.Errorf("snapshot: disk %s: the overlay must be a new file, not the disk's own image %s", dk.Target, dk.Source)
			}
		}
		plans = append(plans, p)
	}
	seen := map[string]string{}
	for _, p := range plans {
		if p.mode != modeExternal {
			continue
		}
		if other, dup := seen[p.overlay]; dup {
			return "", nil, fmt.Errorf("snapshot: disks %s and %s would share the overlay %s", other, p.target, p.overlay)
		}
		seen[p.overlay] = p.target
		if _, err := os.Lstat(p.overlay); err == nil {
			return "", nil, fmt.Errorf("snapshot: disk %s: the overlay %s exists already; name a new file in <source file=.../>", p.target, p.overlay)
		}
		if st, err := os.Stat(filepath.Dir(p.overlay)); err != nil || !st.IsDir() {
			return "", nil, fmt.Errorf("snapshot: disk %s: the overlay's directory %s does not exist", p.target, filepath.Dir(p.overlay))
		}
	}
	switch {
	case internal > 0 && external > 0:
		return "", nil, errors.New("snapshot: mixing internal and external disk snapshots in one snapshot is not supported")
	case memory == modeInternal && external > 0:
		return "", nil, errors.New("snapshot: an internal memory state with external disk snapshots is not supported; use <memory snapshot='no'/> for an external disk-only snapshot")
	case memory == modeInternal && internal == 0:
		return "", nil, errors.New("snapshot: the memory state is saved in a qcow2 disk, and the domain has no writable qcow2 disk to hold it")
	case active && memory == modeNo && internal > 0:
		return "", nil, errors.New("snapshot: a disk-only internal snapshot of an active domain is not supported (QEMU keeps internal snapshots of a running guest with its memory); leave out <memory snapshot='no'/>, or take external disk snapshots")
	}
	return memory, plans, nil
}

// defaultOverlay names an external snapshot's overlay as libvirt does:
// the image's name with its suffix replaced by the snapshot's name.
func defaultOverlay(image, snap string) string {
	dir, base := filepath.Split(image)
	if i := strings.LastIndexByte(base, '.'); i > 0 {
		base = base[:i]
	}
	return dir + base + "." + snap
}

// children returns the names of the snapshots whose parent is name.
func (s *snapSet) children(name string) []string {
	var out []string
	for n, sn := range s.byName {
		if sn.Parent == name {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}
