// Package guest builds and describes the qemufs test guest: a Debian cloud
// kernel and a busybox initramfs (see build.sh) that boots in a few seconds
// under TCG, prints ReadyLine on ttyS0, powers off on the ACPI power button,
// runs a shell on the serial console and can panic, power off or reboot on
// its own when asked on the kernel command line (Action).
//
// Tests of other packages use it as
//
//	g, err := guest.Build(ctx, "")
//	args := append([]string{"-machine", "pc", "-m", "128"}, g.Args(guest.ActionNone)...)
package guest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// ReadyLine is the line the guest's init prints on ttyS0 once it is up
// (modules loaded, acpid running).
const ReadyLine = "QEMUFS-GUEST-READY"

// Action is something the guest does by itself right after ReadyLine,
// selected with the kernel command line word qemufs.action=ACTION.
type Action string

// Actions the guest's init understands.
const (
	ActionNone     Action = ""
	ActionPanic    Action = "panic"    // kernel panic; GUEST_PANICKED with -device pvpanic
	ActionPoweroff Action = "poweroff" // SHUTDOWN guest=true
	ActionReboot   Action = "reboot"   // RESET guest=true (SHUTDOWN with -no-reboot)
)

// Guest is a built test guest.
type Guest struct {
	Kernel    string // bzImage, for -kernel
	Initrd    string // gzip'ed cpio newc, for -initrd
	ReadyLine string // printed on ttyS0 when up
	Cmdline   string // base kernel command line (serial console, panic=-1, quiet)
}

// Build runs build.sh to build the guest into dir ("" means the default
// cache directory, see build.sh) and returns it. The build is cached, so
// calling Build from every test is cheap once the guest exists.
func Build(ctx context.Context, dir string) (*Guest, error) {
	script, err := scriptPath()
	if err != nil {
		return nil, err
	}
	args := []string{script}
	if dir != "" {
		args = append(args, dir)
	}
	cmd := exec.CommandContext(ctx, "/bin/bash", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdin = nil
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("build test guest: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var envPath string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.HasSuffix(line, "/guest.env") {
			envPath = line
		}
	}
	if envPath == "" {
		return nil, fmt.Errorf("build test guest: no guest.env in output %q", out)
	}
	return Load(envPath)
}

// Load reads a guest.env written by build.sh.
func Load(envPath string) (*Guest, error) {
	data, err := os.ReadFile(envPath)
	if err != nil {
		return nil, fmt.Errorf("load test guest: %w", err)
	}
	g := &Guest{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"`)
		switch k {
		case "QEMUFS_GUEST_KERNEL":
			g.Kernel = v
		case "QEMUFS_GUEST_INITRD":
			g.Initrd = v
		case "QEMUFS_GUEST_READY_LINE":
			g.ReadyLine = v
		case "QEMUFS_GUEST_CMDLINE":
			g.Cmdline = v
		}
	}
	if g.Kernel == "" || g.Initrd == "" || g.ReadyLine == "" {
		return nil, fmt.Errorf("load test guest: %s lacks kernel, initrd or ready line", envPath)
	}
	return g, nil
}

// Append returns the kernel command line for action (the base command line
// plus qemufs.action=ACTION when action is not ActionNone).
func (g *Guest) Append(action Action) string {
	if action == ActionNone {
		return g.Cmdline
	}
	return g.Cmdline + " qemufs.action=" + string(action)
}

// Args returns the QEMU arguments that boot the guest: -kernel, -initrd and
// -append. The caller adds machine, memory, serial and monitor options.
func (g *Guest) Args(action Action) []string {
	return []string{"-kernel", g.Kernel, "-initrd", g.Initrd, "-append", g.Append(action)}
}

// scriptPath finds build.sh next to this source file.
func scriptPath() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("build test guest: cannot locate build.sh")
	}
	p := filepath.Join(filepath.Dir(file), "build.sh")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("build test guest: %w", err)
	}
	return p, nil
}

// DomainXML is a libvirt domain XML that boots the guest: 192 MiB, one
// vCPU, ACPI (so that shutdown works), a pty serial port and console.
// devices goes inside <devices>; tail goes after it (a qemu:commandline
// block, whose namespace is declared when tail uses it).
func (g *Guest) DomainXML(name string, action Action, devices, tail string) string {
	ns := ""
	if strings.Contains(tail, "qemu:") {
		ns = ` xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'`
	}
	return fmt.Sprintf(`<domain type='qemu'%s>
  <name>%s</name>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>%s</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <serial type='pty'/>
    <console type='pty'/>
%s
  </devices>
%s</domain>
`, ns, name, g.Kernel, g.Initrd, g.Append(action), devices, tail)
}
