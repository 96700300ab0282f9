package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qemufs/qemufs/domain"
)

// A UEFI guest's variable store (NVRAM) is a raw file beside its disks: no
// qcow2 snapshot holds it. A snapshot keeps a copy of it in the snapshot
// metadata directory (SNAP.nvram) and a revert writes it back, so that the
// firmware's variables (boot order, secure-boot keys) come back with the
// disks and memory they belong to.

// snapNVRAMPath is the copy of the variable store kept with snapshot snap.
func (d *Driver) snapNVRAMPath(dom, snap string) string {
	return filepath.Join(d.snapDir(dom), snap+".nvram")
}

// nvramOf is the variable store of def ("" when it has none or it does not
// exist yet).
func (d *Driver) nvramOf(def *domain.Domain) string {
	nv, _ := def.NVRAMPath(d.nvramDir())
	if nv == "" {
		return ""
	}
	if _, err := os.Stat(nv); err != nil {
		return ""
	}
	return nv
}

// saveSnapshotNVRAM copies def's variable store for snapshot snap.
func (d *Driver) saveSnapshotNVRAM(dom, snap string, def *domain.Domain) error {
	nv := d.nvramOf(def)
	if nv == "" {
		return nil
	}
	data, err := os.ReadFile(nv)
	if err != nil {
		return fmt.Errorf("NVRAM %s: %w", nv, err)
	}
	if err := os.MkdirAll(d.snapDir(dom), 0o700); err != nil {
		return err
	}
	return writeFileAtomic(d.snapNVRAMPath(dom, snap), data, 0o600)
}

// revertSnapshotNVRAM writes the variable store kept with snapshot snap
// back over def's. It writes in place, keeping the file's owner and mode
// (QEMU's user may own it while the guest runs) and its inode (a running
// QEMU keeps the file open; the caller has its CPUs stopped). A snapshot
// taken without a store leaves the store as it is.
func (d *Driver) revertSnapshotNVRAM(dom, snap string, def *domain.Domain) error {
	data, err := os.ReadFile(d.snapNVRAMPath(dom, snap))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	nv, _ := def.NVRAMPath(d.nvramDir())
	if nv == "" {
		return nil
	}
	f, err := os.OpenFile(nv, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("NVRAM %s: %w", nv, err)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		f.Close()
		return fmt.Errorf("NVRAM %s: %w", nv, err)
	}
	if err := f.Truncate(int64(len(data))); err != nil {
		f.Close()
		return fmt.Errorf("NVRAM %s: %w", nv, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("NVRAM %s: %w", nv, err)
	}
	return f.Close()
}

// removeSnapshotNVRAM drops the copy kept with snapshot snap.
func (d *Driver) removeSnapshotNVRAM(dom, snap string) {
	os.Remove(d.snapNVRAMPath(dom, snap))
}
