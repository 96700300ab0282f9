package security

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/security/apparmor"
	"github.com/qemufs/qemufs/security/cgroup"
	"github.com/qemufs/qemufs/security/dac"
	"github.com/qemufs/qemufs/security/lsm"
	"github.com/qemufs/qemufs/security/selinux"
	"golang.org/x/sys/unix"
)

// file is one path QEMU uses, resolved, with what each layer does to it.
type file struct {
	path      string // symlinks resolved: what gets chowned and labeled
	given     string
	what      string // for messages: "disk", "file", "directory"
	grant     dac.Grant
	kind      selinux.Kind
	perms     string // AppArmor
	dir       bool
	block     bool
	noRelabel []string
	// own marks the guest's directories, which qemufs made: QEMU's
	// whatever dynamic_ownership and relabel say, as libvirt's
	// per-domain directories are.
	own bool
}

func (f file) need() dac.Access {
	a := dac.Read
	if f.grant != dac.SharedRead {
		a |= dac.Write
	}
	if f.dir {
		a |= dac.Search
	}
	return a
}

// Prepare readies everything a guest's QEMU needs before it is spawned:
// it checks the guest's paths and labels, gives its files to QEMU's user
// (dynamic ownership) and labels them, loads its AppArmor profile, makes
// its cgroup with the device ACL and limits, and fills spec's Credential,
// MountNS, CgroupProcs and Label, appending the seccomp sandbox to
// spec.Args (so the driver fills the command first). The returned Record
// says what changed. On error everything Prepare did is already undone;
// if the spawn fails afterwards, the caller calls Restore.
func (s *Stack) Prepare(ctx context.Context, g *Guest, spec *procmgr.Spec) (rec *Record, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if g.Name == "" {
		return nil, errors.New("security: guest has no name")
	}
	// Everything that can be refused is checked before anything changes.
	reqs, err := s.requests(g)
	if err != nil {
		return nil, err
	}
	id, dacLabel, cred, err := s.dacIdentity(g, reqs["dac"])
	if err != nil {
		return nil, err
	}
	files, err := s.resolve(g)
	if err != nil {
		return nil, err
	}
	if err := s.checkAccess(g, id, dacLabel.Relabel, files); err != nil {
		return nil, err
	}
	var devices []cgroup.Device
	if s.cg != nil && s.cg.Has("devices") {
		devices = append(devices, s.acl...)
		for _, f := range files {
			if f.block {
				access := "rwm"
				if f.grant == dac.SharedRead {
					access = "rm"
				}
				d, err := cgroup.ResolveDevice(f.path, access)
				if err != nil {
					return nil, errf(g, "disk %s: %v", f.given, err)
				}
				devices = append(devices, d)
			}
		}
	}
	if s.cg == nil && (g.Tune.CPUShares != 0 || g.Tune.CPUPeriod != 0 || g.Tune.CPUQuota != 0 ||
		g.Tune.MemoryHardLimit != 0 || g.Tune.MemorySoftLimit != 0 || g.Tune.MemorySwapHardLimit != 0 ||
		g.Tune.BlkioWeight != 0 || len(g.Tune.BlkioDevices) != 0) {
		return nil, errf(g, "cputune/memtune/blkiotune need cgroups, which this instance does not use")
	}
	if s.aa != nil && reqs[lsm.AppArmor].Type != "static" && reqs[lsm.AppArmor].Type != "none" && g.UUID == "" {
		return nil, errf(g, "AppArmor needs the domain's uuid to name its profile")
	}

	rec = &Record{Name: g.Name, UUID: g.UUID, DAC: dacLabel, Credential: cred}
	defer func() {
		if err != nil {
			if uerr := s.Restore(context.WithoutCancel(ctx), rec); uerr != nil {
				err = errors.Join(err, uerr)
			}
			rec = nil
		}
	}()

	var exec *procmgr.ExecLabel
	if s.sel != nil {
		l, err := s.sel.Assign(toSELinux(reqs[lsm.SELinux]), g.VirtType != "kvm")
		if err != nil {
			return rec, errf(g, "%v", err)
		}
		rec.SELinux = &l
		if l.Process != "" {
			exec = &procmgr.ExecLabel{Model: lsm.SELinux, Value: l.Process}
		}
	}
	for _, f := range files {
		if s.manages(id, dacLabel.Relabel, f) {
			if err := s.grant(rec, id, f); err != nil {
				return rec, errf(g, "%v", err)
			}
		}
	}
	if rec.SELinux != nil && rec.SELinux.Relabel {
		for _, f := range files {
			if !hasModel(f.noRelabel, lsm.SELinux) {
				if err := s.label(rec, f); err != nil {
					return rec, errf(g, "%v", err)
				}
			}
		}
	}
	if s.aa != nil {
		switch r := reqs[lsm.AppArmor]; r.Type {
		case "static":
			exec = &procmgr.ExecLabel{Model: lsm.AppArmor, Value: r.Label}
		case "none":
		default:
			rules := s.rules(g, files, spec)
			name, err := s.aa.Create(g.UUID, rules)
			if err != nil {
				return rec, errf(g, "%v", err)
			}
			rec.AppArmor, rec.AppArmorRules = name, rules
			exec = &procmgr.ExecLabel{Model: lsm.AppArmor, Value: name}
		}
	}
	if s.cg != nil {
		grp, err := s.cg.Create(g.Name, devices, g.Tune)
		if err != nil {
			return rec, errf(g, "%v", err)
		}
		rec.Cgroup = grp
	}
	if s.mountNS {
		rec.Devices = s.nsDevices(files)
	}
	if s.seccomp {
		rec.Args = append(rec.Args, SeccompArgs...)
	}

	if cred != nil {
		spec.Credential = &procmgr.Credential{UID: cred.UID, GID: cred.GID, Groups: cred.Groups}
	}
	if rec.Devices != nil {
		spec.MountNS = &procmgr.MountNamespace{Devices: rec.Devices, Owners: nsOwners(id, rec.Devices)}
	}
	if rec.Cgroup != nil {
		spec.CgroupProcs = rec.Cgroup.Procs()
	}
	spec.Label = exec
	spec.Args = append(spec.Args, rec.Args...)
	return rec, nil
}

// requests sorts the domain's seclabels by model, checking each names an
// active driver.
func (s *Stack) requests(g *Guest) (map[string]SecLabelRequest, error) {
	out := map[string]SecLabelRequest{}
	for _, r := range g.SecLabels {
		m := r.Model
		if m == "" {
			if len(s.models) == 0 {
				if r.Type == "static" {
					return nil, errf(g, "a static <seclabel> needs a security driver, and none is active on this host")
				}
				continue
			}
			m = s.models[0]
		}
		if m != "dac" && !hasModel(s.models, m) {
			active := append(s.Drivers(), "dac")
			return nil, errf(g, "<seclabel model='%s'>: the %s security driver is not active on this host (active: %s)", m, m, strings.Join(active, ", "))
		}
		if _, dup := out[m]; dup {
			return nil, errf(g, "two <seclabel> elements for model %s", m)
		}
		switch r.Type {
		case "", "dynamic", "static", "none":
		default:
			return nil, errf(g, "<seclabel type='%s'>: want dynamic, static or none", r.Type)
		}
		if m == lsm.AppArmor && r.Type == "static" && r.Label == "" {
			return nil, errf(g, "a static AppArmor <seclabel> needs <label> (the profile name)")
		}
		out[m] = r
	}
	return out, nil
}

func toSELinux(r SecLabelRequest) selinux.Request {
	return selinux.Request{Type: r.Type, Relabel: r.Relabel, Label: r.Label, ImageLabel: r.ImageLabel, BaseLabel: r.BaseLabel}
}

// dacIdentity is who this guest's QEMU runs as: the instance's user, or
// a static DAC label's "user:group".
func (s *Stack) dacIdentity(g *Guest, r SecLabelRequest) (dac.Identity, SecLabel, *Credential, error) {
	id := s.id
	lbl := SecLabel{Model: "dac", Type: "dynamic", Relabel: s.chown}
	switch r.Type {
	case "static":
		u, grp, ok := strings.Cut(r.Label, ":")
		if !ok || u == "" || grp == "" {
			return id, lbl, nil, errf(g, "DAC <label> %q: want user:group", r.Label)
		}
		var err error
		if id, err = dac.Lookup(u, grp); err != nil {
			return id, lbl, nil, errf(g, "DAC <label>: %v", err)
		}
		if !s.cfg.Privileged && (id.UID != s.id.UID || id.GID != s.id.GID) {
			return id, lbl, nil, errf(g, "DAC <label> %s: a session instance runs QEMU as its own user", r.Label)
		}
		lbl.Type = "static"
		lbl.Relabel = s.chown && r.Relabel != nil && *r.Relabel
	case "none":
		lbl.Type = "none"
		lbl.Relabel = false
	default:
		if r.Relabel != nil && !*r.Relabel {
			lbl.Relabel = false
		}
	}
	lbl.Label, lbl.ImageLabel = id.Label(), id.Label()
	var cred *Credential
	if id.UID != uint32(os.Geteuid()) || id.GID != uint32(os.Getegid()) {
		cred = &Credential{UID: id.UID, GID: id.GID, Groups: id.Groups}
	}
	return id, lbl, cred, nil
}

// resolve stats every path of the guest; a path that does not exist or
// cannot be reached is an error naming it.
func (s *Stack) resolve(g *Guest) ([]file, error) {
	var out []file
	add := func(given, what string, f file) error {
		if !filepath.IsAbs(given) {
			return errf(g, "%s %q: not an absolute path", what, given)
		}
		real, err := filepath.EvalSymlinks(given)
		if err != nil {
			return errf(g, "%s %s is not accessible: %v", what, given, unwrapPath(err))
		}
		fi, err := os.Stat(real)
		if err != nil {
			return errf(g, "%s %s is not accessible: %v", what, given, unwrapPath(err))
		}
		f.path, f.given, f.what = real, given, what
		f.block = fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0
		switch {
		case f.dir && !fi.IsDir():
			return errf(g, "%s %s is not a directory", what, given)
		case !f.dir && fi.IsDir():
			return errf(g, "%s %s is a directory", what, given)
		}
		out = append(out, f)
		return nil
	}
	for _, d := range g.Disks {
		f := file{grant: dac.Exclusive, kind: selinux.Exclusive, perms: "rwk", noRelabel: d.NoRelabel}
		switch {
		case d.ReadOnly:
			f.grant, f.kind, f.perms = dac.SharedRead, selinux.ReadOnly, "rk"
		case d.Shareable:
			f.grant, f.kind = dac.SharedReadWrite, selinux.Shared
		}
		if err := add(d.Path, "disk", f); err != nil {
			return nil, err
		}
	}
	for _, p := range g.Reads {
		if err := add(p, "file", file{grant: dac.SharedRead, kind: selinux.ReadOnly, perms: "r"}); err != nil {
			return nil, err
		}
	}
	for _, p := range g.Writes {
		if err := add(p, "file", file{grant: dac.Exclusive, kind: selinux.Exclusive, perms: "rwk"}); err != nil {
			return nil, err
		}
	}
	for _, p := range g.Dirs {
		if err := add(p, "directory", file{grant: dac.Exclusive, kind: selinux.Exclusive, dir: true, own: true}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// checkAccess makes sure QEMU's user will reach every path: each
// directory on the way must be searchable (the admin's part, with the
// chmod to run), and without dynamic ownership the files must already be
// usable.
func (s *Stack) checkAccess(g *Guest, id dac.Identity, relabel bool, files []file) error {
	if !s.cfg.Privileged || id.IsRoot() {
		return nil
	}
	for _, f := range files {
		// A file in one of the guest's directories (an NVRAM in its lib
		// directory) is reached once Prepare has given that directory.
		reach := func(p string) string {
			if !f.dir && s.managed(g, filepath.Dir(p)) {
				return filepath.Dir(p)
			}
			return p
		}
		if err := dac.CheckSearch(id, reach(f.given)); err != nil {
			return errf(g, "%s %v", f.what, err)
		}
		if f.given != f.path {
			if err := dac.CheckSearch(id, reach(f.path)); err != nil {
				return errf(g, "%s %v", f.what, err)
			}
		}
		if !s.manages(id, relabel, f) {
			o, _, err := dac.Stat(f.path)
			if err != nil {
				return errf(g, "%s %s: %v", f.what, f.given, err)
			}
			if !id.Allows(o, f.need()) {
				return errf(g, "%s %s: %s cannot use it and its ownership is not managed (dynamic_ownership off or relabel='no')", f.what, f.given, id)
			}
		}
	}
	for _, p := range g.Sockets {
		if !filepath.IsAbs(p) {
			return errf(g, "socket %q: not an absolute path", p)
		}
		dir := filepath.Dir(p)
		reach := p
		if s.managed(g, dir) {
			reach = dir // its own bits are Prepare's to set
		}
		if err := dac.CheckSearch(id, reach); err != nil {
			return errf(g, "socket %v", err)
		}
		o, _, err := dac.Stat(dir)
		if err != nil {
			return errf(g, "socket directory %s: %v", dir, unwrapPath(err))
		}
		if !id.Allows(o, dac.Write|dac.Search) && !s.managed(g, dir) {
			return errf(g, "socket %s: %s cannot create files in %s", p, id, dir)
		}
	}
	return nil
}

// manages reports whether Prepare gives f to QEMU's identity id: the
// guest's own directories always (in a privileged instance with a
// non-root QEMU), other files with dynamic ownership on unless the
// domain or the disk says relabel='no'.
func (s *Stack) manages(id dac.Identity, relabel bool, f file) bool {
	if f.own {
		return s.cfg.Privileged && !id.IsRoot()
	}
	return s.chown && relabel && !hasModel(f.noRelabel, "dac")
}

// managed reports whether dir is one of the guest's directories, which
// Prepare gives to QEMU (checkAccess calls it for a non-root QEMU of a
// privileged instance only).
func (s *Stack) managed(g *Guest, dir string) bool {
	for _, d := range g.Dirs {
		if filepath.Clean(d) == dir {
			return true
		}
	}
	return false
}

// grant gives one file to QEMU's identity, or joins the change another
// running guest already made to it.
func (s *Stack) grant(rec *Record, id dac.Identity, f file) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := "dac\x00" + f.path
	if h := s.holds[key]; h != nil {
		if !id.Allows(*h.change.New, f.need()) {
			return fmt.Errorf("%s %s is in use by another running guest whose ownership excludes this one", f.what, f.given)
		}
		h.refs++
		rec.Files = append(rec.Files, h.change)
		return nil
	}
	cur, _, err := dac.Stat(f.path)
	if err != nil {
		return err
	}
	want, changed := dac.Want(id, cur, f.grant, f.dir)
	if !changed {
		return nil
	}
	if err := dac.Apply(f.path, want); err != nil {
		// A half-applied chown/chmod is put back at once.
		_ = dac.Apply(f.path, cur)
		return fmt.Errorf("give %s %s to %s: %w", f.what, f.given, id, err)
	}
	fc := FileChange{Model: "dac", Path: f.path, Orig: &cur, New: &want}
	s.holds[key] = &hold{change: fc, refs: 1}
	rec.Files = append(rec.Files, fc)
	return nil
}

// label gives one file its SELinux label for this guest.
func (s *Stack) label(rec *Record, f file) error {
	want := s.sel.FileLabel(*rec.SELinux, f.kind)
	if want == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := lsm.SELinux + "\x00" + f.path
	if h := s.holds[key]; h != nil {
		if h.change.NewLabel != want {
			return fmt.Errorf("%s %s is labeled %s for another running guest (mark it <shareable/> or <readonly/> in both)", f.what, f.given, h.change.NewLabel)
		}
		h.refs++
		rec.Files = append(rec.Files, h.change)
		return nil
	}
	cur, err := s.selL.FileLabel(f.path)
	if errors.Is(err, unix.ENOTSUP) {
		return nil // a filesystem without labels (NFS, vfat): the admin's mount context rules
	}
	if err != nil {
		return err
	}
	if cur == want {
		return nil
	}
	if err := s.selL.SetFileLabel(f.path, want); err != nil {
		return fmt.Errorf("label %s %s: %w", f.what, f.given, err)
	}
	fc := FileChange{Model: lsm.SELinux, Path: f.path, OrigLabel: cur, NewLabel: want}
	s.holds[key] = &hold{change: fc, refs: 1}
	rec.Files = append(rec.Files, fc)
	return nil
}

// rules lists what the guest's AppArmor profile allows beyond TEMPLATE.
func (s *Stack) rules(g *Guest, files []file, spec *procmgr.Spec) []apparmor.Rule {
	var out []apparmor.Rule
	if spec.Path != "" {
		out = append(out, apparmor.Rule{Path: spec.Path, Perms: "rmix"})
	}
	for _, f := range files {
		if f.dir {
			out = append(out, apparmor.Rule{Path: f.path + "/", Perms: "r"}, apparmor.Rule{Path: f.path + "/**", Perms: "rwk"})
			continue
		}
		out = append(out, apparmor.Rule{Path: f.path, Perms: f.perms})
		if f.given != f.path {
			out = append(out, apparmor.Rule{Path: f.given, Perms: f.perms})
		}
	}
	for _, p := range append(slices.Clone(g.Sockets), g.Connects...) {
		out = append(out, apparmor.Rule{Path: p, Perms: "rw"})
	}
	if spec.LogPath != "" {
		out = append(out, apparmor.Rule{Path: spec.LogPath, Perms: "w"})
	}
	if spec.PidPath != "" {
		out = append(out, apparmor.Rule{Path: spec.PidPath, Perms: "rwk"})
	}
	return out
}

// nsDevices are the nodes of QEMU's private /dev: the ACL's devices that
// exist here and the guest's block devices under /dev.
func (s *Stack) nsDevices(files []file) []string {
	out := []string{}
	add := func(p string) {
		if strings.HasPrefix(p, "/dev/") && !hasModel(out, p) {
			out = append(out, p)
		}
	}
	for _, d := range s.acl {
		if d.Path != "" {
			add(d.Path)
		}
	}
	for _, f := range files {
		if f.block {
			add(f.path)
			add(f.given)
		}
	}
	return out
}
