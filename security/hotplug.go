package security

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/qemufs/qemufs/security/apparmor"
	"github.com/qemufs/qemufs/security/cgroup"
	"github.com/qemufs/qemufs/security/dac"
)

// identity is who a prepared guest's QEMU runs as.
func (s *Stack) identity(rec *Record) dac.Identity {
	if c := rec.Credential; c != nil {
		return dac.Identity{UID: c.UID, GID: c.GID, Groups: c.Groups, User: fmt.Sprintf("+%d", c.UID), Group: fmt.Sprintf("+%d", c.GID)}
	}
	return self()
}

// AddDisk readies a disk hot-plugged into a running guest, before QEMU
// opens it: ownership and label, the cgroup device ACL for a block
// device, and the AppArmor .files rewritten and reloaded. rec is updated
// in place (save it again). On error nothing is changed.
func (s *Stack) AddDisk(ctx context.Context, rec *Record, d Disk) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	g := &Guest{Name: rec.Name, UUID: rec.UUID, Disks: []Disk{d}}
	files, err := s.resolve(g)
	if err != nil {
		return err
	}
	f := files[0]
	id := s.identity(rec)
	if err := s.checkAccess(g, id, rec.DAC.Relabel, files); err != nil {
		return err
	}
	for _, fc := range rec.Files {
		if fc.Path == f.path {
			return errf(g, "disk %s is already in use by this guest", d.Path)
		}
	}
	// Work on a copy and commit it only when every step succeeded.
	work := *rec
	work.Files = nil
	defer func() {
		if err != nil {
			for i := len(work.Files) - 1; i >= 0; i-- {
				if uerr := s.release(work.Files[i]); uerr != nil {
					err = errors.Join(err, uerr)
				}
			}
		}
	}()
	if s.chown && rec.DAC.Relabel && !hasModel(f.noRelabel, "dac") {
		if err := s.grant(&work, id, f); err != nil {
			return errf(g, "%v", err)
		}
	}
	if rec.SELinux != nil && rec.SELinux.Relabel && s.sel != nil && !hasModel(f.noRelabel, "selinux") {
		if err := s.label(&work, f); err != nil {
			return errf(g, "%v", err)
		}
	}
	var devs []cgroup.Device
	if f.block && rec.Cgroup != nil && len(rec.Cgroup.Devices) > 0 {
		access := "rwm"
		if f.grant == dac.SharedRead {
			access = "rm"
		}
		dev, err := cgroup.ResolveDevice(f.path, access)
		if err != nil {
			return errf(g, "disk %s: %v", d.Path, err)
		}
		devs = append(slices.Clone(rec.Cgroup.Devices), dev)
	}
	var rules []apparmor.Rule
	if rec.AppArmor != "" && s.aa != nil {
		rules = append(slices.Clone(rec.AppArmorRules), apparmor.Rule{Path: f.path, Perms: f.perms})
		if f.given != f.path {
			rules = append(rules, apparmor.Rule{Path: f.given, Perms: f.perms})
		}
		if err := s.aa.Update(rec.UUID, rules); err != nil {
			return errf(g, "%v", err)
		}
	}
	if devs != nil {
		if err := s.setDevices(rec.Cgroup, devs); err != nil {
			if rules != nil {
				_ = s.aa.Update(rec.UUID, rec.AppArmorRules)
			}
			return errf(g, "%v", err)
		}
	}
	rec.Files = append(rec.Files, work.Files...)
	if rules != nil {
		rec.AppArmorRules = rules
	}
	if rec.Devices != nil && f.block {
		rec.Devices = append(rec.Devices, f.path)
	}
	return nil
}

// RemoveDisk undoes what AddDisk (or Prepare) did for one disk, after
// QEMU has closed it: owner and label back unless another guest uses it,
// device removed from the ACL, AppArmor .files rewritten.
func (s *Stack) RemoveDisk(ctx context.Context, rec *Record, path string) error {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		real = filepath.Clean(path)
	}
	var errs []error
	if rec.AppArmor != "" && s.aa != nil {
		rules := slices.DeleteFunc(slices.Clone(rec.AppArmorRules), func(r apparmor.Rule) bool {
			return r.Path == real || r.Path == path
		})
		if len(rules) != len(rec.AppArmorRules) {
			if err := s.aa.Update(rec.UUID, rules); err != nil {
				errs = append(errs, err)
			} else {
				rec.AppArmorRules = rules
			}
		}
	}
	if rec.Cgroup != nil && len(rec.Cgroup.Devices) > 0 {
		devs := slices.DeleteFunc(slices.Clone(rec.Cgroup.Devices), func(d cgroup.Device) bool {
			return d.Path == real
		})
		if len(devs) != len(rec.Cgroup.Devices) {
			if err := s.setDevices(rec.Cgroup, devs); err != nil {
				errs = append(errs, err)
			}
		}
	}
	var keep []FileChange
	for _, fc := range rec.Files {
		if fc.Path != real {
			keep = append(keep, fc)
			continue
		}
		if err := s.release(fc); err != nil {
			errs = append(errs, err)
		}
	}
	rec.Files = keep
	if rec.Devices != nil {
		rec.Devices = slices.DeleteFunc(rec.Devices, func(p string) bool { return p == real })
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("release disk %s of %s: %w", path, rec.Name, err)
	}
	return nil
}

// setDevices changes a live group's ACL; a stack without cgroups (after
// a restart with cgroups turned off) still manages recorded groups.
func (s *Stack) setDevices(g *cgroup.Group, devs []cgroup.Device) error {
	m := s.cg
	if m == nil {
		var err error
		if m, err = cgroup.New(cgroup.Options{Version: g.Version, Partition: "unused"}); err != nil {
			return err
		}
	}
	return m.SetDevices(g, devs)
}
