package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qemufs/qemufs/domain"
)

// UEFI firmware and NVRAM (docs/uefi.md).
//
// Firmware autoselection runs at define, so the stored definition names
// the loader and the NVRAM template and file (as libvirt 9.2+ does), and
// again on the live copy at start for definitions stored before. The
// variable store is created from its template at the first start (or
// after `start --reset-nvram`), kept across restarts, and outlives
// rmdir; `undefine --nvram` removes it with the definition.
//
// Ownership: qemufs creates the store as its own user (mode 0600); while
// the guest runs, the security stack hands it to QEMU's user like a
// writable disk and gives it back afterwards. Unlike libvirt, which leaves
// the file owned by qemu:qemu, nobody but the daemon can write a guest's
// variables while it is shut off.

func init() {
	registerCommand("undefine [--nvram|--keep-nvram]", func(ctx context.Context, d *Driver, dm *dom, args []string) error {
		removeNVRAM := false
		for _, a := range args {
			switch a {
			case "--nvram":
				removeNVRAM = true
			case "--keep-nvram":
				removeNVRAM = false
			default:
				return errBadArgs
			}
		}
		return d.undefine(dm, removeNVRAM)
	})
}

// firmwareDirs are the firmware descriptor directories of the instance,
// highest precedence first: CONFIGDIR/firmware (etc/qemu/firmware of an
// embedded root), /etc/qemu/firmware, /usr/share/qemu/firmware.
func (d *Driver) firmwareDirs() []string {
	return domain.FirmwareSearchDirs(filepath.Join(d.inst.ConfigDir, "firmware"))
}

// nvramDir is where variable stores live unless the definition names one:
// LIBDIR/nvram (lib/qemu/nvram of an embedded root).
func (d *Driver) nvramDir() string { return filepath.Join(d.inst.LibDir, "nvram") }

// resolveFirmware selects def's UEFI firmware and names its NVRAM file.
func (d *Driver) resolveFirmware(def *domain.Domain) error {
	if err := def.ResolveFirmwareIn(d.firmwareDirs()); err != nil {
		return err
	}
	def.SetNVRAMPath(d.nvramDir())
	return nil
}

// prepareFirmware readies the live definition's firmware for a start:
// selection, then the variable store, created from its template when it
// does not exist yet or reset asks for it.
func (d *Driver) prepareFirmware(r *run, reset bool) error {
	live := r.live
	if err := d.resolveFirmware(live); err != nil {
		return err
	}
	path, _ := live.NVRAMPath(d.nvramDir())
	if path == "" {
		if reset {
			return fmt.Errorf("--reset-nvram: the domain has no UEFI variable store (no pflash <loader> with <nvram>)")
		}
		return nil
	}
	_, err := os.Stat(path)
	switch {
	case err == nil && !reset:
		return nil
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("NVRAM %s: %w", path, err)
	}
	tmpl := live.NVRAMTemplateIn(d.firmwareDirs())
	if tmpl == "" {
		loader, _ := live.Loader()
		why := "does not exist"
		if reset {
			why = "is to be reset"
		}
		return fmt.Errorf("NVRAM %s %s and no NVRAM template matches the loader %s: give <nvram template='VARS'> or a firmware descriptor for the loader in %s",
			path, why, loader, strings.Join(d.firmwareDirs(), ", "))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return fmt.Errorf("NVRAM %s: %w", path, err)
	}
	if err := copyFile(tmpl, path, 0o600); err != nil {
		return fmt.Errorf("NVRAM %s from template %s: %w", path, tmpl, err)
	}
	d.appendLog(r.files.Log, "NVRAM %s created from %s", path, tmpl)
	return nil
}

// undefine removes dm's definition but keeps its directory (a slot to
// define again); with removeNVRAM its variable store goes too, else it is
// kept for a later definition of the same name (virsh undefine
// --keep-nvram). rmdir is undefine --keep-nvram plus removing the slot.
func (d *Driver) undefine(dm *dom, removeNVRAM bool) (err error) {
	dm.op.Lock()
	defer dm.op.Unlock()
	defer func() { dm.noteResult(err) }()
	return d.undefineLocked(dm, removeNVRAM)
}

// undefineLocked removes a defined domain's definition, autostart mark and
// emulated TPM state (unless persistent), and with removeNVRAM its UEFI
// variable store. The caller holds dm.op.
func (d *Driver) undefineLocked(dm *dom, removeNVRAM bool) error {
	dm.mu.Lock()
	def := dm.def
	dm.mu.Unlock()
	if def == nil {
		return errorf(ErrInvalid, "undefine %s: the domain is not defined", dm.name)
	}
	if err := d.checkUndefine(dm); err != nil {
		return err
	}
	for _, p := range []string{d.defPath(dm.name), d.autostartPath(dm.name)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return errorf(ErrIO, "undefine %s: %w", dm.name, err)
		}
	}
	syncDir(d.inst.ConfigDir)
	d.removeTPMState(dm.name, def)
	if removeNVRAM {
		if nv, _ := def.NVRAMPath(d.nvramDir()); nv != "" {
			if err := os.Remove(nv); err != nil && !errors.Is(err, os.ErrNotExist) {
				// The definition is gone already; say what is left.
				return errorf(ErrIO, "undefine %s: the definition is removed but its NVRAM is not: %w", dm.name, err)
			}
		}
	}
	dm.mu.Lock()
	dm.def, dm.defXML, dm.autostart = nil, nil, false
	dm.state, dm.reason = StateUndefined, ReasonUnknown
	dm.mu.Unlock()
	dm.publish(EventUndefined, "removed")
	return nil
}
