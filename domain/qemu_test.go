package domain

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/domain/qemutest"
)

// freeVNCPort finds a TCP port >= 5900 nobody listens on (the driver's job
// in real use).
func freeVNCPort(t *testing.T) int {
	for p := 5950; p < 6900; p++ {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no free VNC port")
	return 0
}

func qemuImg(t *testing.T, format, path, size string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "create", "-q", "-f", format, path, size).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create %s: %v: %s", path, err, out)
	}
}

// TestRealQEMU starts qemu-system-x86_64 (TCG) paused with BuildCommand's
// argv for a definition using the milestone-1 device set, and checks over
// QMP that it reached "prelaunch".
func TestRealQEMU(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	dir := t.TempDir()
	img := func(name, format string) string {
		p := filepath.Join(dir, name)
		qemuImg(t, format, p, "16M")
		return p
	}
	repl := strings.NewReplacer(
		"@ROOT@", img("root.qcow2", "qcow2"),
		"@DATA@", img("data.raw", "raw"),
		"@ISO@", img("cd.iso", "raw"),
		"@SCSI@", img("scsi.qcow2", "qcow2"),
		"@LOG@", filepath.Join(dir, "serial.log"),
		"@SOCK@", filepath.Join(dir, "serial.sock"),
	)
	xml := repl.Replace(`<domain type='qemu'>
  <name>real-m1</name>
  <memory unit='MiB'>96</memory>
  <currentMemory unit='MiB'>64</currentMemory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='cdrom'/>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/><pae/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>preserve</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='@ROOT@'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='writeback'/>
      <source file='@DATA@'/>
      <target dev='hdb' bus='ide'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='@ISO@'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='@SCSI@'/>
      <target dev='sdb' bus='scsi'/>
    </disk>
    <interface type='user'><model type='virtio'/></interface>
    <interface type='user'/>
    <serial type='pty'/>
    <serial type='file'><source path='@LOG@'/></serial>
    <serial type='unix'><source mode='bind' path='@SOCK@'/></serial>
    <serial type='null'/>
    <console type='pty'/>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>`)
	for _, machine := range []string{"pc", "q35"} {
		t.Run(machine, func(t *testing.T) {
			x := xml
			if machine == "q35" {
				// q35 has no IDE bus: move the IDE disk to SATA.
				x = strings.Replace(x, "machine='pc'", "machine='q35'", 1)
				x = strings.Replace(x, "<target dev='hdb' bus='ide'/>", "<target dev='sdc' bus='sata'/>", 1)
			}
			d, err := Parse([]byte(x))
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Validate(nil); err != nil {
				t.Fatal(err)
			}
			if err := Expand(d, nil); err != nil {
				t.Fatal(err)
			}
			run := t.TempDir()
			cmd, err := BuildCommand(d, CommandOptions{QMPFD: qemutest.QMPFD, DomainDir: run, VNCPort: freeVNCPort(t)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), qemutest.Timeout)
			defer cancel()
			res, err := qemutest.Run(ctx, run, cmd.Path, cmd.Args, cmd.Env)
			if err != nil {
				t.Fatalf("%v\nargv: %s", err, cmd)
			}
			if res.Status != "prelaunch" {
				t.Fatalf("query-status = %q, want prelaunch", res.Status)
			}
			if _, err := os.Stat(filepath.Join(dir, "serial.sock")); err != nil {
				t.Errorf("the unix serial socket was not created: %v", err)
			}
		})
	}
}

// TestRealQEMUQMPSocketPath checks the QMPSocket form of the monitor
// option (the socket file QEMU creates, as the driver uses it) with a
// minimal definition.
func TestRealQEMUQMPSocketPath(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	d, err := Parse([]byte(withDevices("")))
	if err != nil {
		t.Fatal(err)
	}
	run := t.TempDir()
	sock := filepath.Join(run, "mon.sock")
	cmd, err := BuildCommand(d, CommandOptions{QMPSocket: sock, DomainDir: run})
	if err != nil {
		t.Fatal(err)
	}
	want := "-chardev socket,id=charmonitor,path=" + sock + ",server=on,wait=off -mon chardev=charmonitor,id=monitor,mode=control"
	if !strings.Contains(cmd.String(), want) {
		t.Fatalf("monitor options missing: %s", cmd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), qemutest.Timeout)
	defer cancel()
	res, err := qemutest.RunSocket(ctx, sock, cmd.Path, cmd.Args, cmd.Env)
	if err != nil || res.Status != "prelaunch" {
		t.Fatalf("status %q, err %v\nargv: %s", res.Status, err, cmd)
	}
}

// TestRealQEMUToolXML runs definitions shaped like what real tools write
// (virt-install, virsh dumpxml): parse, validate, expand (idempotently),
// and start paused.
func TestRealQEMUToolXML(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	files, _ := filepath.Glob("testdata/tools/*.xml")
	if len(files) == 0 {
		t.Fatal("no tool XMLs")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			dir := t.TempDir()
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			x := strings.ReplaceAll(string(data), "@DIR@", dir)
			d, err := Parse([]byte(x))
			if err != nil {
				t.Fatal(err)
			}
			for _, dk := range d.Disks() {
				if dk.Source != "" {
					format := dk.Format
					if format == "" {
						format = "raw"
					}
					qemuImg(t, format, dk.Source, "16M")
				}
			}
			if err := d.Validate(nil); err != nil {
				t.Fatal(err)
			}
			if err := Expand(d, nil); err != nil {
				t.Fatal(err)
			}
			once := d.XML()
			if err := Expand(d, nil); err != nil || string(d.XML()) != string(once) {
				t.Fatalf("Expand not idempotent (%v)", err)
			}
			cmd, err := BuildCommand(d, CommandOptions{QMPFD: qemutest.QMPFD, DomainDir: dir,
				VNCPort: freeVNCPort(t), SpicePort: freeVNCPort(t)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), qemutest.Timeout)
			defer cancel()
			res, err := qemutest.Run(ctx, dir, cmd.Path, cmd.Args, cmd.Env)
			if err != nil || res.Status != "prelaunch" {
				t.Fatalf("status %q: %v\nargv: %s", res.Status, err, cmd)
			}
		})
	}
}

// TestRealQEMUGolden starts every golden definition for real, with its
// host paths (disk images, directories, chardev files) made in a temp dir.
func TestRealQEMUGolden(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	files, _ := filepath.Glob("testdata/argv/*.xml")
	for _, f := range files {
		if strings.HasSuffix(f, ".expanded.xml") {
			continue
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, _ := os.ReadFile(f)
			d, err := Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			if d.Kernel() != "" {
				t.Skip("needs a kernel image (covered by the corpus test's fake kernel)")
			}
			if _, err := os.Stat("/dev/kvm"); err != nil && d.Type() == "kvm" {
				d.root.CreateAttr("type", "qemu") // no KVM here: TCG
			}
			dir := t.TempDir()
			n := 0
			local := func(p string) string {
				n++
				return filepath.Join(dir, fmt.Sprintf("%d%s", n, filepath.Ext(p)))
			}
			for _, e := range d.root.FindElements("//source") {
				switch {
				case attr(e, "file") != "":
					format := attr(child(e.Parent(), "driver"), "type")
					if fe := child(e.Parent(), "format"); fe != nil {
						format = attr(fe, "type")
					}
					if format == "" {
						format = "raw"
					}
					p := local(attr(e, "file"))
					qemuImg(t, format, p, "16M")
					e.CreateAttr("file", p)
				case attr(e, "dev") != "" && e.Parent().Tag == "disk":
					p := local("x.raw")
					qemuImg(t, "raw", p, "16M")
					e.RemoveAttr("dev")
					e.CreateAttr("file", p)
					e.Parent().CreateAttr("type", "file")
				case attr(e, "dir") != "":
					p := local("d")
					if err := os.Mkdir(p, 0o755); err != nil {
						t.Fatal(err)
					}
					e.CreateAttr("dir", p)
				case attr(e, "path") != "":
					e.CreateAttr("path", local(attr(e, "path")))
				}
			}
			if err := Expand(d, nil); err != nil {
				t.Fatal(err)
			}
			cmd, err := BuildCommand(d, CommandOptions{QMPFD: qemutest.QMPFD, DomainDir: dir,
				VNCPort: freeVNCPort(t), SpicePort: freeVNCPort(t)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), qemutest.Timeout)
			defer cancel()
			res, err := qemutest.Run(ctx, dir, cmd.Path, cmd.Args, cmd.Env)
			if err != nil || res.Status != "prelaunch" {
				t.Fatalf("status %q: %v\nargv: %s", res.Status, err, cmd)
			}
		})
	}
}
