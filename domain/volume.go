package domain

import "fmt"

// VolumeRef is a <disk type='volume'>: a volume of a storage pool.
type VolumeRef struct {
	Target string // the disk's target dev (vda)
	Pool   string
	Volume string
}

// VolumeImage is what a storage pool says a volume is: its image file
// (or block device), the image format, and its backing chain (top first).
type VolumeImage struct {
	Path   string
	Format string
	Block  bool
	// Encrypted images need the disk's <encryption>.
	Encrypted bool
	// Backing is the backing chain below the image, nearest first.
	Backing []VolumeImage
}

// Volumes lists the disks that name a storage pool volume.
func (d *Domain) Volumes() []VolumeRef {
	var out []VolumeRef
	for _, e := range children(child(d.root, "devices"), "disk") {
		if attr(e, "type") != "volume" {
			continue
		}
		src := child(e, "source")
		out = append(out, VolumeRef{Target: attr(child(e, "target"), "dev"), Pool: attr(src, "pool"), Volume: attr(src, "volume")})
	}
	return out
}

// ResolveVolumes turns every <disk type='volume'> into the file (or block)
// disk that its pool resolves it to, with the volume's format (unless the
// disk names one) and its backing chain as <backingStore>, as a live
// definition shows it. The security layer and the command line then treat
// it as any file disk.
func (d *Domain) ResolveVolumes(resolve func(VolumeRef) (VolumeImage, error)) error {
	for _, e := range children(child(d.root, "devices"), "disk") {
		if attr(e, "type") != "volume" {
			continue
		}
		src := child(e, "source")
		ref := VolumeRef{Target: attr(child(e, "target"), "dev"), Pool: attr(src, "pool"), Volume: attr(src, "volume")}
		if ref.Pool == "" || ref.Volume == "" {
			return errAt(e, "disk %s: <source> of a volume disk needs pool='...' and volume='...'", ref.Target)
		}
		img, err := resolve(ref)
		if err != nil {
			return fmt.Errorf("disk %s: %w", ref.Target, err)
		}
		if img.Encrypted && diskEncryption(e, e) == nil {
			return errAt(e, "disk %s: volume %s/%s is encrypted (LUKS): the disk needs <encryption format='luks'><secret type='passphrase' uuid='...'/></encryption>", ref.Target, ref.Pool, ref.Volume)
		}
		typ, key := "file", "file"
		if img.Block {
			typ, key = "block", "dev"
		}
		e.CreateAttr("type", typ)
		src.RemoveAttr("pool")
		src.RemoveAttr("volume")
		src.RemoveAttr("mode")
		src.CreateAttr(key, img.Path)
		dr := child(e, "driver")
		if dr == nil {
			dr = subInsert(e, "driver", "source")
			dr.CreateAttr("name", "qemu")
		}
		if attr(dr, "type") == "" && img.Format != "" {
			dr.CreateAttr("type", img.Format)
		}
		if bs := child(e, "backingStore"); bs != nil && child(bs, "source") == nil && len(img.Backing) > 0 {
			e.RemoveChild(bs) // an empty chain, as expansion writes it
		}
		if child(e, "backingStore") == nil && len(img.Backing) > 0 {
			// <backingStore> follows <source> in libvirt's order.
			bs := subInsert(e, "backingStore", "target", "alias", "address")
			for i, b := range img.Backing {
				if i > 0 {
					bs = bs.CreateElement("backingStore")
				}
				bt, bk := "file", "file"
				if b.Block {
					bt, bk = "block", "dev"
				}
				bs.CreateAttr("type", bt)
				bs.CreateElement("format").CreateAttr("type", b.Format)
				bs.CreateElement("source").CreateAttr(bk, b.Path)
			}
			bs.CreateElement("backingStore")
		}
	}
	return nil
}
