package driver

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/security"
	"github.com/qemufs/qemufs/security/cgroup"
)

// prepareHost readies the host side of a start that needs no privilege:
// host checks (KVM, devices), firmware selection and the NVRAM copy.
func (d *Driver) prepareHost(r *run) error {
	live := r.live
	if err := live.CheckHost(); err != nil {
		return err
	}
	home := filepath.Join(d.inst.LibDir, r.dm.name)
	if err := os.MkdirAll(home, 0o700); err != nil {
		return err
	}
	return d.prepareFirmware(r, r.resetNVRAM) // driver/nvram.go
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

// prepareSecurity confines the run's QEMU: it hands the security stack what
// the guest uses and lets it fill spec (identity, namespace, cgroup, label,
// sandbox). Without a stack QEMU runs as the daemon.
func (d *Driver) prepareSecurity(ctx context.Context, r *run, spec *procmgr.Spec) error {
	if d.sec == nil {
		return nil
	}
	g, err := d.securityGuest(r)
	if err != nil {
		return errorf(ErrInvalid, "start %s: %w", r.dm.name, err)
	}
	rec, err := d.sec.Prepare(ctx, g, spec)
	if err != nil {
		return errorf(ErrInvalid, "start %s: %w", r.dm.name, err)
	}
	r.mu.Lock()
	r.sec = rec
	r.mu.Unlock()
	return nil
}

// restoreSecurity undoes prepareSecurity after a failed start.
func (d *Driver) restoreSecurity(r *run) {
	if d.sec == nil || r.sec == nil {
		return
	}
	if err := d.sec.Restore(context.Background(), r.sec); err != nil {
		d.logf("%s: restore security: %v", r.dm.name, err)
	}
}

// securityGuest describes the run's guest for the security stack.
func (d *Driver) securityGuest(r *run) (*security.Guest, error) {
	live := r.live
	g := &security.Guest{
		Name:     r.dm.name,
		UUID:     live.UUID(),
		VirtType: live.Type(),
		Dirs:     []string{r.files.DomDir, filepath.Join(d.inst.LibDir, r.dm.name)},
	}
	seen := map[string]bool{}
	for _, dk := range live.Disks() {
		if dk.Type != "file" && dk.Type != "block" && dk.Type != "dir" || dk.Source == "" {
			continue
		}
		seen[dk.Source] = true
		g.Disks = append(g.Disks, security.Disk{Path: dk.Source, ReadOnly: dk.ReadOnly || dk.Device == "cdrom",
			Shareable: dk.Shareable, NoRelabel: dk.NoRelabel})
		for _, b := range dk.BackingStore {
			if !seen[b] {
				seen[b] = true
				g.Disks = append(g.Disks, security.Disk{Path: b, ReadOnly: true})
			}
		}
	}
	if nv, _ := live.NVRAMPath(d.nvramDir()); nv != "" && !seen[nv] {
		seen[nv] = true
		g.Writes = append(g.Writes, nv)
	}
	for _, f := range live.LaunchSecurityFiles(filepath.Join(d.inst.LibDir, r.dm.name)) {
		seen[f] = true
		g.Reads = append(g.Reads, f)
	}
	var chardevs []domain.Chardev
	chardevs = append(chardevs, live.Serials()...)
	chardevs = append(chardevs, live.Consoles()...)
	chardevs = append(chardevs, live.Parallels()...)
	chardevs = append(chardevs, live.Channels()...)
	for _, c := range chardevs {
		switch {
		case c.Path == "" || seen[c.Path]:
		case c.Type == "unix" && c.Mode == "bind":
			g.Sockets = append(g.Sockets, c.Path)
		case c.Type == "file":
			// QEMU appends to it; it must exist to be given to QEMU.
			if err := touch(c.Path); err != nil {
				return nil, fmt.Errorf("%s %s output %s: %w", c.Kind, c.Alias, c.Path, err)
			}
			g.Writes = append(g.Writes, c.Path)
		case c.Type == "dev" || c.Type == "pipe" || c.Type == "unix":
			g.Writes = append(g.Writes, c.Path)
		}
		seen[c.Path] = true
		if c.LogFile != "" && !seen[c.LogFile] {
			if err := touch(c.LogFile); err != nil {
				return nil, fmt.Errorf("%s %s log %s: %w", c.Kind, c.Alias, c.LogFile, err)
			}
			seen[c.LogFile] = true
			g.Writes = append(g.Writes, c.LogFile)
		}
	}
	for _, hp := range live.HostPaths() {
		if seen[hp.Path] {
			continue
		}
		seen[hp.Path] = true
		if hp.ReadOnly {
			g.Reads = append(g.Reads, hp.Path)
		} else {
			g.Writes = append(g.Writes, hp.Path)
		}
	}
	for _, l := range live.SecLabels() {
		relabel := l.Relabel
		g.SecLabels = append(g.SecLabels, security.SecLabelRequest{
			Model: l.Model, Type: l.Type, Relabel: &relabel,
			Label: l.Label, ImageLabel: l.ImageLabel, BaseLabel: l.BaseLabel,
		})
	}
	if len(live.TPMEmulators()) > 0 {
		g.Connects = append(g.Connects, d.tpmFiles(r.dm.name).Socket)
	}
	g.Reads = append(g.Reads, masterKeyReads(r)...)
	g.Tune = cgroupLimits(live.Tuning())
	return g, nil
}

// touch creates path if it does not exist, leaving an existing file alone.
func touch(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

// cgroupLimits converts the domain's tuning to the cgroup layer's units.
func cgroupLimits(t domain.Tuning) cgroup.Limits {
	l := cgroup.Limits{
		CPUShares:           t.CPUShares,
		CPUPeriod:           t.CPUPeriod,
		CPUQuota:            t.CPUQuota,
		MemoryHardLimit:     kib(t.MemoryHardLimitKiB),
		MemorySoftLimit:     kib(t.MemorySoftLimitKiB),
		MemorySwapHardLimit: kib(t.SwapHardLimitKiB),
		BlkioWeight:         uint16(t.BlkioWeight),
	}
	for _, b := range t.BlkioDevices {
		l.BlkioDevices = append(l.BlkioDevices, cgroup.BlkioDevice{
			Path: b.Path, Weight: uint16(b.Weight),
			ReadBytesSec: b.ReadBytesSec, WriteBytesSec: b.WriteBytesSec,
			ReadIopsSec: b.ReadIopsSec, WriteIopsSec: b.WriteIopsSec,
		})
	}
	return l
}

func kib(v uint64) int64 {
	if v == 0 {
		return 0
	}
	return int64(v) * 1024
}

// chownForQEMU gives a file the daemon made to QEMU's user, so QEMU can
// write it (a screenshot target).
func (d *Driver) chownForQEMU(r *run, path string) {
	r.mu.Lock()
	rec := r.sec
	r.mu.Unlock()
	if rec != nil && rec.Credential != nil {
		os.Chown(path, int(rec.Credential.UID), int(rec.Credential.GID))
	}
}
