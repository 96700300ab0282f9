package security

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/qemufs/qemufs/capabilities"
	"github.com/qemufs/qemufs/security/apparmor"
	"github.com/qemufs/qemufs/security/cgroup"
	"github.com/qemufs/qemufs/security/dac"
	"github.com/qemufs/qemufs/security/lsm"
	"github.com/qemufs/qemufs/security/selinux"
)

// Stack is one instance's security stack.
type Stack struct {
	cfg  Config
	host Host
	// id is who QEMU runs as; runAs is true when that differs from the
	// daemon (a Credential goes into the Spec).
	id    dac.Identity
	runAs bool
	// chown is dynamic ownership in force (privileged, non-root QEMU).
	chown   bool
	acl     []cgroup.Device // resolved cgroup_device_acl
	cg      *cgroup.Manager // nil: no cgroups
	mountNS bool
	seccomp bool
	models  []string // active LSM drivers
	sel     *selinux.Driver
	selL    selinux.Labeler
	aa      *apparmor.Profiles

	mu    sync.Mutex
	holds map[string]*hold // file changes shared by running guests
}

// hold is one file change and how many running guests rely on it.
type hold struct {
	change FileChange
	refs   int
}

// New builds the stack for an instance. A bad configuration (unknown
// user or group, an ACL entry that is not a device, a security driver
// the host does not have, an unknown namespace or controller) is an
// error, as is a run/lib/cache directory QEMU could not reach.
func New(cfg Config, host Host) (*Stack, error) {
	s := &Stack{cfg: cfg, host: host, holds: map[string]*hold{}}
	var err error
	if cfg.Privileged {
		u, g := cfg.User, cfg.Group
		if u == "" {
			u = DefaultUser
			if g == "" {
				g = DefaultGroup
			}
		}
		if s.id, err = dac.Lookup(u, g); err != nil {
			return nil, fmt.Errorf("qemu.conf user/group: %w", err)
		}
	} else {
		s.id = self()
	}
	s.runAs = s.id.UID != uint32(os.Geteuid()) || s.id.GID != uint32(os.Getegid())
	s.chown = cfg.Privileged && cfg.DynamicOwnership && !s.id.IsRoot()

	if s.models, err = drivers(cfg, host); err != nil {
		return nil, err
	}
	for _, m := range s.models {
		switch m {
		case lsm.SELinux:
			ctx := selinux.HostContexts()
			if host.SELinuxContexts != nil {
				ctx = *host.SELinuxContexts
			}
			s.sel = &selinux.Driver{Contexts: ctx, MCS: selinux.NewMCS(1024)}
			s.selL = host.SELinuxLabeler
			if s.selL == nil {
				s.selL = selinux.Kernel{}
			}
		case lsm.AppArmor:
			dir := host.AppArmorDir
			if dir == "" {
				dir = "/etc/apparmor.d/libvirt"
			}
			ld := host.AppArmorLoader
			if ld == nil {
				ld = apparmor.Parser{}
			}
			s.aa = &apparmor.Profiles{Dir: dir, Loader: ld}
		}
	}

	switch {
	case cfg.SeccompSandbox < -1 || cfg.SeccompSandbox > 1:
		return nil, fmt.Errorf("seccomp_sandbox %d: must be 0 or 1", cfg.SeccompSandbox)
	default:
		s.seccomp = cfg.SeccompSandbox != 0
	}

	ns := cfg.Namespaces
	if ns == nil && cfg.Privileged {
		ns = []string{"mount"}
	}
	for _, n := range ns {
		if n != "mount" {
			return nil, fmt.Errorf("namespaces: %q is not supported (only \"mount\")", n)
		}
		if !cfg.Privileged {
			return nil, fmt.Errorf("namespaces: a private mount namespace needs a privileged instance")
		}
		s.mountNS = true
	}

	if cfg.Privileged {
		if s.acl, err = cgroup.ResolveACL(cfg.CgroupDeviceACL); err != nil {
			return nil, err
		}
		if host.Cgroup != cgroup.None && (cfg.CgroupControllers == nil || len(cfg.CgroupControllers) > 0) {
			name := cfg.InstanceName
			if name == "" {
				name = "default"
			}
			s.cg, err = cgroup.New(cgroup.Options{
				Version:     host.Cgroup,
				Mountpoint:  host.CgroupMount,
				Controllers: cfg.CgroupControllers,
				Partition:   "qemufs-" + name,
			})
			if err != nil {
				return nil, err
			}
		}
		if err := s.setupDirs(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// self is the daemon's own identity (a session's QEMU runs as it).
func self() dac.Identity {
	id := dac.Identity{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	id.User, id.Group = fmt.Sprintf("+%d", id.UID), fmt.Sprintf("+%d", id.GID)
	if l, err := dac.Lookup(id.User, id.Group); err == nil {
		id = l
	}
	return id
}

// setupDirs gives the run, lib and cache directories to QEMU's user, as
// the reference page requires, and checks that QEMU can reach them.
func (s *Stack) setupDirs() error {
	for _, d := range []string{s.cfg.RunDir, s.cfg.LibDir, s.cfg.CacheDir} {
		if d == "" {
			continue
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if s.id.IsRoot() {
			continue
		}
		cur, _, err := dac.Stat(d)
		if err != nil {
			return err
		}
		if want, changed := dac.Want(s.id, cur, dac.Exclusive, true); changed {
			if err := dac.Apply(d, want); err != nil {
				return fmt.Errorf("give %s to %s: %w", d, s.id, err)
			}
		}
		if err := dac.CheckSearch(s.id, filepath.Join(d, "x")); err != nil {
			return err
		}
	}
	return nil
}

// Identity is who QEMU runs as.
func (s *Stack) Identity() dac.Identity { return s.id }

// Drivers lists the active LSM drivers ("selinux" or "apparmor"; DAC is
// implied).
func (s *Stack) Drivers() []string { return slices.Clone(s.models) }

// Args are the QEMU arguments Prepare adds for every guest (the seccomp
// sandbox), for command lines shown without starting (argv, to-native).
func (s *Stack) Args() []string {
	if s.seccomp {
		return slices.Clone(SeccompArgs)
	}
	return nil
}

// Cgroups reports the cgroup hierarchy in use and its controllers (None
// when the stack makes no cgroups).
func (s *Stack) Cgroups() (cgroup.Version, []string) {
	if s.cg == nil {
		return cgroup.None, nil
	}
	return s.cg.Version(), s.cg.Controllers()
}

// Models returns the active security models for capabilities.xml: the
// LSM driver first, then DAC with QEMU's identity as base label.
func (s *Stack) Models() []capabilities.SecModel {
	var out []capabilities.SecModel
	if s.sel != nil {
		out = append(out, capabilities.SecModel{Model: lsm.SELinux, DOI: "0", BaseLabels: map[string]string{
			"kvm": s.sel.Contexts.Domain, "qemu": s.sel.Contexts.TCGDomain,
		}})
	}
	if s.aa != nil {
		out = append(out, capabilities.SecModel{Model: lsm.AppArmor, DOI: "0"})
	}
	return append(out, capabilities.SecModel{Model: "dac", DOI: "0", BaseLabels: map[string]string{
		"kvm": s.id.Label(), "qemu": s.id.Label(),
	}})
}

// Restore undoes a Record: the cgroup is removed (QEMU must have exited),
// the AppArmor profile unloaded, files given back their original owner
// and label unless another running guest still uses them, and the MCS
// categories released. It goes on after an error and returns them all;
// it may be called again with the same Record.
func (s *Stack) Restore(ctx context.Context, rec *Record) error {
	if rec == nil {
		return nil
	}
	var errs []error
	if rec.Cgroup != nil {
		if err := cgroup.Remove(rec.Cgroup); err != nil {
			errs = append(errs, err)
		} else {
			rec.Cgroup = nil
		}
	}
	if rec.AppArmor != "" && s.aa != nil {
		if err := s.aa.Remove(rec.UUID); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(rec.Files) - 1; i >= 0; i-- {
		if err := s.release(rec.Files[i]); err != nil {
			errs = append(errs, err)
		}
	}
	rec.Files = nil
	if rec.SELinux != nil && s.sel != nil {
		s.sel.Release(*rec.SELinux)
		rec.SELinux.MCS = "" // released once only
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restore security of %s: %w", rec.Name, err)
	}
	return nil
}

// Reattach re-establishes what a running guest holds after a daemon
// restart: its MCS categories (never handed to another guest while it
// runs) and its share of file changes (restored when the last guest
// using a file stops).
func (s *Stack) Reattach(rec *Record) error {
	if rec.SELinux != nil && s.sel != nil {
		if err := s.sel.Reattach(*rec.SELinux); err != nil {
			return fmt.Errorf("reattach %s: %w", rec.Name, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fc := range rec.Files {
		if h := s.holds[fc.key()]; h != nil {
			h.refs++
		} else {
			s.holds[fc.key()] = &hold{change: fc, refs: 1}
		}
	}
	return nil
}

// release drops one guest's use of a file change and puts the original
// back when no running guest uses it any more.
func (s *Stack) release(fc FileChange) error {
	s.mu.Lock()
	if h := s.holds[fc.key()]; h != nil {
		h.refs--
		if h.refs > 0 {
			s.mu.Unlock()
			return nil
		}
		delete(s.holds, fc.key())
		fc = h.change
	}
	s.mu.Unlock()
	var err error
	switch fc.Model {
	case "dac":
		err = dac.Apply(fc.Path, *fc.Orig)
	case lsm.SELinux:
		l := s.selL
		if l == nil {
			l = selinux.Kernel{}
		}
		err = l.SetFileLabel(fc.Path, fc.OrigLabel)
	}
	if errors.Is(err, os.ErrNotExist) {
		return nil // removed while the guest ran: nothing to give back
	}
	if err != nil {
		return fmt.Errorf("restore %s of %s: %w", fc.Model, fc.Path, err)
	}
	return nil
}

// errf is fmt.Errorf for the guest being prepared.
func errf(g *Guest, format string, args ...any) error {
	return fmt.Errorf("security for %s: %s", g.Name, fmt.Sprintf(format, args...))
}
