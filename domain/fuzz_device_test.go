package domain

import (
	"testing"
)

// FuzzDevice feeds arbitrary device XML to AddDevice, as attach does, on
// an expanded definition: never a panic; an accepted device leaves a
// definition whose XML parses and expands unchanged, and the device can be
// found again by its alias.
func FuzzDevice(f *testing.F) {
	for _, s := range []string{
		`<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/i/a.img'/><target dev='vdb' bus='virtio'/></disk>`,
		`<disk type='file' device='cdrom'><source file='/i/a.iso'/><target dev='sdb' bus='scsi'/><readonly/></disk>`,
		`<interface type='user'><model type='virtio'/></interface>`,
		`<interface type='ethernet'><target dev='tap9'/><model type='e1000'/></interface>`,
		`<controller type='scsi' model='virtio-scsi'/>`,
		`<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>`,
		`<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`,
		`<serial type='file'><source path='/tmp/s.log'/><target type='usb-serial'/></serial>`,
		`<hostdev mode='subsystem' type='usb'/>`,
	} {
		f.Add([]byte(s))
	}
	base, err := Parse([]byte(withDevices(`<disk type='file' device='disk'><source file='/i/root.img'/><target dev='vda' bus='virtio'/></disk>`)))
	if err != nil {
		f.Fatal(err)
	}
	if err := Expand(base, nil); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		defer watchdog(data)()
		d, dev, _, err := base.Clone().AddDevice(data, nil)
		if err != nil {
			return
		}
		once := d.XML()
		d2, err := Parse(once)
		if err != nil {
			t.Fatalf("the definition with the device does not parse: %v\n%s", err, once)
		}
		if err := Expand(d2, nil); err != nil {
			t.Fatalf("the definition with the device does not expand: %v", err)
		}
		if string(d2.XML()) != string(once) {
			t.Fatalf("expansion changed the definition with the device:\n%s\n---\n%s", once, d2.XML())
		}
		if a := dev.Alias(); a != "" {
			if _, err := d.FindDevice([]byte("<alias name='" + a + "'/>")); err != nil {
				t.Fatalf("the added device %s is not found by its alias %s: %v", dev.Describe(), a, err)
			}
		}
	})
}
