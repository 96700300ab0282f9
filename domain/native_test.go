package domain

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/domain/qemutest"
)

// TestFromNativeReference converts the command line of libvirt's
// domxml-from-native documentation example.
func TestFromNativeReference(t *testing.T) {
	argv := `LC_ALL=C PATH=/bin HOME=/home/test USER=test LOGNAME=test /usr/bin/qemu -S -M pc -m 214 -smp 1 -nographic -monitor pty -no-acpi -boot c -hda /dev/HostVG/QEMUGuest1 -net none -serial none -parallel none -usb`
	d, err := FromNative(argv)
	if err != nil {
		t.Fatal(err)
	}
	want := `<domain type='qemu'>
  <name>unnamed</name>
  <memory unit='KiB'>219136</memory>
  <currentMemory unit='KiB'>219136</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu</emulator>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/HostVG/QEMUGuest1'/>
      <target dev='hda' bus='ide'/>
    </disk>
    <controller type='usb' index='0'/>
    <memballoon model='none'/>
  </devices>
</domain>
`
	if got := d.String(); got != want {
		t.Errorf("FromNative:\n%s\nwant:\n%s", got, want)
	}
}

// TestFromNative checks typical hand-written command lines.
func TestFromNative(t *testing.T) {
	cases := []struct {
		name, argv string
		check      func(t *testing.T, d *Domain)
	}{
		{"memory units and smp topology",
			`qemu-system-x86_64 -name guest=vm1,debug-threads=on -uuid 5e0c6bd0-7a3f-4c1f-9d2c-7f5f1cba0c11 -m 2G -smp 4,sockets=1,cores=2,threads=2 -machine q35,accel=kvm -cpu host`,
			func(t *testing.T, d *Domain) {
				eq(t, "name", d.Name(), "vm1")
				eq(t, "uuid", d.UUID(), "5e0c6bd0-7a3f-4c1f-9d2c-7f5f1cba0c11")
				eq(t, "type", d.Type(), "kvm")
				eq(t, "machine", d.Machine(), "q35")
				eqInt(t, "memory", int(d.MemoryKiB()), 2*1024*1024)
				eqInt(t, "vcpus", d.VCPUs(), 4)
				eq(t, "cpu mode", attr(child(d.root, "cpu"), "mode"), "host-passthrough")
				eq(t, "threads", attr(find(d.root, "cpu", "topology"), "threads"), "2")
			}},
		{"kernel boot",
			`/usr/bin/qemu-system-x86_64 -M pc -m 256 -kernel /boot/vmlinuz -initrd /boot/initrd.img -append 'console=ttyS0 root=/dev/vda rw' -nographic -serial mon:stdio -enable-kvm`,
			func(t *testing.T, d *Domain) {
				eq(t, "kernel", d.Kernel(), "/boot/vmlinuz")
				eq(t, "initrd", d.Initrd(), "/boot/initrd.img")
				eq(t, "cmdline", d.Cmdline(), "console=ttyS0 root=/dev/vda rw")
				eq(t, "type", d.Type(), "kvm")
				s := d.Serials()
				if len(s) != 1 || s[0].Type != "stdio" {
					t.Errorf("serials %+v", s)
				}
				if len(d.Graphics()) != 0 {
					t.Errorf("-nographic gave graphics %+v", d.Graphics())
				}
			}},
		{"drives",
			`qemu-system-x86_64 -m 512 -hda /img/a.qcow2 -cdrom /iso/x.iso -fda /img/f.img -drive file=/img/v.raw,if=virtio,format=raw,cache=none -drive file=/dev/sdc,if=scsi,index=1,readonly=on -drive file=/img/n.qcow2,if=none,id=d9,format=qcow2 -device virtio-blk-pci,drive=d9,bootindex=1`,
			func(t *testing.T, d *Domain) {
				var got []string
				for _, dk := range d.Disks() {
					got = append(got, dk.Type+":"+dk.Device+":"+dk.Bus+":"+dk.Target+":"+dk.Format+":"+dk.Source)
				}
				want := []string{
					"file:disk:ide:hda:raw:/img/a.qcow2",
					"file:cdrom:ide:hdc:raw:/iso/x.iso",
					"file:floppy:fdc:fda:raw:/img/f.img",
					"file:disk:virtio:vda:raw:/img/v.raw",
					"block:disk:scsi:sdb:raw:/dev/sdc",
					"file:disk:virtio:vdb:qcow2:/img/n.qcow2",
				}
				eq(t, "disks", strings.Join(got, " "), strings.Join(want, " "))
			}},
		{"boot order and menu",
			`qemu-system-i386 -m 64 -boot order=ndc,menu=on -hda /a.img`,
			func(t *testing.T, d *Domain) {
				var boots []string
				for _, b := range children(child(d.root, "os"), "boot") {
					boots = append(boots, attr(b, "dev"))
				}
				eq(t, "boot", strings.Join(boots, ","), "network,cdrom,hd")
				eq(t, "bootmenu", attr(find(d.root, "os", "bootmenu"), "enable"), "yes")
				eq(t, "arch", d.Arch(), "i686")
			}},
		{"networks",
			`qemu-system-x86_64 -m 64 -netdev user,id=n0 -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56 -nic user,model=e1000 -net nic,model=rtl8139,macaddr=52:54:00:00:00:01 -net user`,
			func(t *testing.T, d *Domain) {
				nics := d.Interfaces()
				if len(nics) != 3 {
					t.Fatalf("interfaces %+v", nics)
				}
				eq(t, "nic0", nics[0].Type+"/"+nics[0].Model+"/"+nics[0].MAC, "user/virtio/52:54:00:12:34:56")
				eq(t, "nic1", nics[1].Type+"/"+nics[1].Model, "user/e1000")
				eq(t, "nic2", nics[2].Type+"/"+nics[2].Model+"/"+nics[2].MAC, "user/rtl8139/52:54:00:00:00:01")
			}},
		{"no network",
			`qemu-system-x86_64 -m 64 -nic none -net none`,
			func(t *testing.T, d *Domain) { eqInt(t, "interfaces", len(d.Interfaces()), 0) }},
		{"serial backends",
			`qemu-system-x86_64 -m 64 -serial pty -serial file:/var/log/s.log -serial unix:/run/s.sock,server,nowait -chardev socket,id=c0,path=/run/c.sock -device isa-serial,chardev=c0`,
			func(t *testing.T, d *Domain) {
				var got []string
				for _, s := range d.Serials() {
					got = append(got, s.Type+":"+s.Path+s.Host+":"+s.Service+":"+s.Mode)
				}
				eq(t, "serials", strings.Join(got, " "),
					"pty::: file:/var/log/s.log:: unix:/run/s.sock::bind unix:/run/c.sock::connect")
				d2, err := FromNative(`qemu-system-x86_64 -serial tcp:127.0.0.1:4444,server,nowait -serial telnet::23`)
				if err != nil {
					t.Fatal(err)
				}
				got = nil
				for _, s := range d2.Serials() {
					got = append(got, s.Type+":"+s.Host+":"+s.Service+":"+s.Mode)
				}
				eq(t, "tcp serials", strings.Join(got, " "), "tcp:127.0.0.1:4444:bind tcp:127.0.0.1:23:connect")
			}},
		{"displays",
			`qemu-system-x86_64 -m 64 -vnc 127.0.0.1:3 -vga cirrus -usb -device usb-tablet -k de`,
			func(t *testing.T, d *Domain) {
				g := d.Graphics()
				if len(g) != 1 || g[0].Type != "vnc" || g[0].Port != 5903 || g[0].Listen != "127.0.0.1" {
					t.Errorf("graphics %+v", g)
				}
				eq(t, "video", attr(find(d.root, "devices", "video", "model"), "type"), "cirrus")
				eq(t, "input", attr(find(d.root, "devices", "input"), "type"), "tablet")
			}},
		{"rtc, acpi, reboot",
			`qemu-system-x86_64 -m 64 -rtc base=localtime -no-acpi -no-reboot`,
			func(t *testing.T, d *Domain) {
				eq(t, "clock", attr(child(d.root, "clock"), "offset"), "localtime")
				eq(t, "on_reboot", d.OnReboot(), "destroy")
				if child(d.root, "features") != nil {
					t.Errorf("-no-acpi left features: %s", d)
				}
			}},
		{"unknown options and env kept",
			`FOO=bar LC_ALL=C qemu-system-x86_64 -m 64 -device virtio-balloon-pci -object rng-random,id=r0,filename=/dev/urandom -device virtio-rng-pci,rng=r0 -fw_cfg name=opt/x,string=1`,
			func(t *testing.T, d *Domain) {
				eq(t, "args", strings.Join(d.QEMUArgs(), " "), "-fw_cfg name=opt/x,string=1")
				eq(t, "env", strings.Join(d.QEMUEnv(), " "), "FOO=bar")
				eq(t, "balloon", attr(find(d.root, "devices", "memballoon"), "model"), "virtio")
				eq(t, "rng", strings.TrimSpace(find(d.root, "devices", "rng", "backend").Text()), "/dev/urandom")
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := FromNative(c.argv)
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, d)
			// The result is a definition qemufs can run: it expands and
			// turns back into a command line.
			if err := Expand(d, nil); err != nil {
				t.Fatalf("Expand: %v\n%s", err, d)
			}
			if _, err := BuildCommand(d, CommandOptions{}); err != nil && !strings.Contains(err.Error(), "needs KVM") {
				t.Fatalf("BuildCommand: %v\n%s", err, d)
			}
		})
	}
}

func TestFromNativeErrors(t *testing.T) {
	cases := []struct{ argv, want string }{
		{``, "command line: no QEMU binary"},
		{`FOO=1`, "command line: no QEMU binary"},
		{`qemu-system-x86_64 -m 'x`, "command line: unterminated single quote"},
		{`qemu-system-x86_64 -m`, "command line: option -m needs an argument"},
		{`qemu-system-x86_64 -m lots`, "command line: -m lots: malformed size"},
		{`qemu-system-x86_64 -serial bogus:x`, `command line: serial "bogus:x": unsupported character device`},
		{`qemu-system-x86_64 -drive file=/a,if=mtd`, `command line: disk bus "mtd" is not supported`},
	}
	for _, c := range cases {
		_, err := FromNative(c.argv)
		if err == nil || err.Error() != c.want {
			t.Errorf("FromNative(%q) error %v, want %q", c.argv, err, c.want)
		}
	}
}

// TestFromNativeRoundTrip converts the golden command lines back: the
// devices survive.
func TestFromNativeRoundTrip(t *testing.T) {
	files, _ := filepath.Glob("testdata/argv/*.args")
	for _, f := range files {
		data, _ := os.ReadFile(f)
		d, err := FromNative(string(data))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		orig, _ := os.ReadFile(strings.TrimSuffix(f, ".args") + ".expanded.xml")
		o, err := Parse(orig)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Disks()) != len(o.Disks()) || len(d.Serials()) != len(o.Serials()) ||
			len(d.Graphics()) != len(o.Graphics()) || d.Name() != o.Name() || d.UUID() != o.UUID() || d.MemoryKiB() != o.MemoryKiB() {
			t.Errorf("%s: round trip lost devices:\n%s", f, d)
		}
		for i, dk := range d.Disks() {
			if od := o.Disks()[i]; dk.Source != od.Source || dk.Device != od.Device || dk.Bus != od.Bus {
				t.Errorf("%s: disk %d: %+v, was %+v", f, i, dk, od)
			}
		}
	}
}

// TestFromNativeRealStart runs a converted hand-written command line.
func TestFromNativeRealStart(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	qemuImg(t, "qcow2", img, "16M")
	d, err := FromNative(`qemu-system-x86_64 -name native1 -M q35 -m 128 -smp 2 -drive file=` + img +
		`,if=virtio,format=qcow2 -netdev user,id=n0 -device virtio-net-pci,netdev=n0 -serial pty -nographic -usb -device usb-tablet`)
	if err != nil {
		t.Fatal(err)
	}
	if err := Expand(d, nil); err != nil {
		t.Fatal(err)
	}
	cmd, err := BuildCommand(d, CommandOptions{QMPFD: qemutest.QMPFD, DomainDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), qemutest.Timeout)
	defer cancel()
	res, err := qemutest.Run(ctx, dir, cmd.Path, cmd.Args, cmd.Env)
	if err != nil || res.Status != "prelaunch" {
		t.Fatalf("status %q: %v\n%s", res.Status, err, cmd)
	}
}

func eq(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

func eqInt(t *testing.T, what string, got, want int) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %d, want %d", what, got, want)
	}
}
