package domain

import (
	"path/filepath"

	"github.com/beevik/etree"
)

// ChannelSocketPath returns the socket path QEMU is given for a
// <channel type='unix'> in bind mode: its source path, or, without one,
// dir/TARGETNAME (dir/charALIAS for a channel without a target name), the
// per-run directory libvirt also generates channel sockets in. ok is false
// for other channels.
func ChannelSocketPath(c Chardev, dir string) (path string, ok bool) {
	if c.Kind != "channel" || c.Type != "unix" || c.Mode != "" && c.Mode != "bind" {
		return "", false
	}
	if c.Path != "" {
		return c.Path, true
	}
	name := c.TargetName
	if name == "" {
		name = "char" + c.Alias
	}
	return filepath.Join(dir, name), true
}

// SetChannelSocketPaths writes the generated socket path (see
// ChannelSocketPath) into every unix channel in bind mode that has no
// source path, with mode='bind', so that the live definition shows where
// the socket is, as libvirt's does. dir is the run's directory.
func (d *Domain) SetChannelSocketPaths(dir string) {
	for _, e := range children(child(d.root, "devices"), "channel") {
		c := chardevOf(e)
		if c.Path != "" {
			continue
		}
		path, ok := ChannelSocketPath(c, dir)
		if !ok {
			continue
		}
		src := child(e, "source")
		if src == nil {
			src = etree.NewElement("source")
			e.InsertChildAt(0, src)
		}
		setAttr(src, "mode", "bind")
		setAttr(src, "path", path)
	}
}

// SetChannelState records whether the guest has opened the virtio channel
// with the given alias ("connected" or "disconnected"), on its target as
// libvirt's live definition shows it. Channels of other targets have no
// state; false means no such virtio channel.
func (d *Domain) SetChannelState(alias, state string) bool {
	for _, e := range children(child(d.root, "devices"), "channel") {
		t := child(e, "target")
		if attr(child(e, "alias"), "name") != alias || t == nil || attr(t, "type") != "virtio" {
			continue
		}
		setAttr(t, "state", state)
		return true
	}
	return false
}

// ChannelState returns the state SetChannelState recorded on the virtio
// channel with the given alias, "" when none.
func (d *Domain) ChannelState(alias string) string {
	for _, e := range children(child(d.root, "devices"), "channel") {
		if attr(child(e, "alias"), "name") == alias {
			return attr(child(e, "target"), "state")
		}
	}
	return ""
}
