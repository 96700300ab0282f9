package driver

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/internal/atomicfile"
	"github.com/qemufs/qemufs/storage"
)

// masterKeyFile is the run's master key for QEMU's secret objects, in the
// run's private directory (libvirt's master-key.aes).
func masterKeyFile(r *run) string { return filepath.Join(r.files.DomDir, "master-key.aes") }

// resolveVolumes turns the live definition's <disk type='volume'> into
// the file disks their pools give, before the security layer and the
// command line see them.
func (d *Driver) resolveVolumes(ctx context.Context, r *run) error {
	if len(r.live.Volumes()) == 0 {
		return nil
	}
	return r.live.ResolveVolumes(func(v domain.VolumeRef) (domain.VolumeImage, error) {
		if d.pools == nil {
			return domain.VolumeImage{}, errorf(ErrInvalid, "volume %s/%s: this instance has no storage pools", v.Pool, v.Volume)
		}
		img, err := d.pools.Resolve(ctx, v.Pool, v.Volume)
		if err != nil {
			return domain.VolumeImage{}, err
		}
		return volumeImage(img), nil
	})
}

func volumeImage(img storage.Image) domain.VolumeImage {
	out := domain.VolumeImage{Path: img.Path, Format: img.Format, Block: img.Block, Encrypted: img.Encrypted}
	for _, b := range img.Backing {
		out.Backing = append(out.Backing, volumeImage(b))
	}
	return out
}

// prepareSecrets gives the command line what encrypted disks need: a
// fresh master key for this run, in a file only QEMU (and the daemon)
// reads, and the secret driver to look passphrases up.
func (d *Driver) prepareSecrets(r *run, o *domain.CommandOptions) error {
	if !r.live.UsesSecrets() {
		return nil
	}
	if d.secs == nil {
		return errorf(ErrInvalid, "start %s: encrypted disks need secrets, and this instance has no secret driver", r.dm.name)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return errorf(ErrIO, "start %s: master key: %w", r.dm.name, err)
	}
	if err := atomicfile.WriteFile(masterKeyFile(r), key, 0o600); err != nil {
		return errorf(ErrIO, "start %s: master key: %w", r.dm.name, err)
	}
	o.MasterKey, o.MasterKeyFile, o.Secret = key, masterKeyFile(r), d.secs.Lookup
	return nil
}

// masterKeyReads lists the master key for the security layer, when the
// run has one.
func masterKeyReads(r *run) []string {
	if _, err := os.Stat(masterKeyFile(r)); err == nil {
		return []string{masterKeyFile(r)}
	}
	return nil
}

// previewSecrets lets a shown command line (domxml-to-native) have its
// secret objects: encrypted with a key that is thrown away, so the text
// reveals no value.
func (d *Driver) previewSecrets(r *run, o *domain.CommandOptions) {
	if d.secs == nil || !r.live.UsesSecrets() {
		return
	}
	key := make([]byte, 32)
	rand.Read(key)
	o.MasterKey, o.MasterKeyFile, o.Secret = key, masterKeyFile(r), d.secs.Lookup
}

// DiskUser names a running guest that has path as a disk image or one of
// its backing images ("" when none), so that the storage driver refuses
// to delete a volume in use.
func (d *Driver) DiskUser(path string) string {
	d.mu.Lock()
	doms := make([]*dom, 0, len(d.doms))
	for _, dm := range d.doms {
		doms = append(doms, dm)
	}
	d.mu.Unlock()
	sort.Slice(doms, func(i, j int) bool { return doms[i].name < doms[j].name })
	for _, dm := range doms {
		dm.mu.Lock()
		r := dm.run
		dm.mu.Unlock()
		if r == nil {
			continue
		}
		r.mu.Lock()
		disks := r.live.Disks()
		r.mu.Unlock()
		for _, dk := range disks {
			if dk.Source == path || slices.Contains(dk.BackingStore, path) {
				return dm.name
			}
		}
	}
	return ""
}
