package capabilities

import (
	"errors"
	"strings"
	"testing"
)

func TestLookup(t *testing.T) {
	caps := &Capabilities{Emulators: []*Emulator{
		{Path: "/usr/bin/qemu-system-x86_64", Arch: "x86_64", Accels: []string{"tcg"}, Machines: []Machine{
			{Name: "pc-i440fx-7.2", Alias: "pc", Default: true},
			{Name: "pc-q35-7.2", Alias: "q35"},
		}},
		{Path: "/usr/bin/qemu-system-i386", Arch: "i686", Accels: []string{"tcg"}, Machines: []Machine{{Name: "pc-i440fx-7.2", Alias: "pc", Default: true}}},
		{Path: "/usr/bin/qemu-system-broken", Arch: "sparc", Err: "timed out"},
	}}
	tests := []struct {
		arch, virt, machine, emu string
		wantPath, wantMachine    string
		wantErr                  string
	}{
		{"x86_64", "qemu", "", "", "/usr/bin/qemu-system-x86_64", "pc-i440fx-7.2", ""},
		{"x86_64", "qemu", "q35", "", "/usr/bin/qemu-system-x86_64", "pc-q35-7.2", ""},
		{"x86_64", "qemu", "pc-q35-7.2", "/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-system-x86_64", "pc-q35-7.2", ""},
		{"i686", "qemu", "pc", "", "/usr/bin/qemu-system-i386", "pc-i440fx-7.2", ""},
		{"i686", "qemu", "pc", "/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-system-x86_64", "pc-i440fx-7.2", ""}, // as libvirt
		{"x86_64", "qemu", "pc", "/usr/bin/qemu-system-i386", "", "", `no usable emulator /usr/bin/qemu-system-i386 for arch "x86_64"`},
		{"x86_64", "kvm", "", "", "", "", `domain type "kvm" is not available for arch x86_64 on this host (available: qemu): the host has no usable KVM device (/dev/kvm)`},
		{"x86_64", "hvf", "", "", "", "", `domain type "hvf" is not available for arch x86_64 on this host (available: qemu): HVF needs macOS`},
		{"x86_64", "qemu", "virt", "", "", "", `machine "virt" is not supported by /usr/bin/qemu-system-x86_64 for arch x86_64 (available: pc, pc-i440fx-7.2, pc-q35-7.2, q35)`},
		{"aarch64", "qemu", "", "", "", "", `arch "aarch64": no emulator found (available arches: i686, x86_64)`},
		{"sparc", "qemu", "", "", "", "", `arch "sparc": no emulator found`},
		{"x86_64", "qemu", "", "/opt/qemu", "", "", `no usable emulator /opt/qemu for arch "x86_64"`},
	}
	for _, tt := range tests {
		t.Run(tt.arch+"/"+tt.virt+"/"+tt.machine+"/"+tt.emu, func(t *testing.T) {
			e, m, err := caps.Lookup(tt.arch, tt.virt, tt.machine, tt.emu)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("- want error containing: %q\n-  got: %v", tt.wantErr, err)
				}
				if !errors.Is(err, ErrUnsupported) {
					t.Errorf("error %v does not wrap ErrUnsupported", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.Path != tt.wantPath || m.Name != tt.wantMachine {
				t.Errorf("- want: %s %s\n-  got: %s %s", tt.wantPath, tt.wantMachine, e.Path, m.Name)
			}
		})
	}
}
