package driver

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/procmgr"
)

// passtBinary finds passt ("" when it is not installed).
func passtBinary() string {
	p, _ := exec.LookPath("passt")
	return p
}

// startPasst starts passt for one user-mode interface: QEMU gets one end
// of a socket pair (returned), passt the other, with the interface's port
// forwards. passt runs as QEMU's user and ends by itself when QEMU closes
// its end, so it needs no supervision of its own beyond the run's.
func (d *Driver) startPasst(ctx context.Context, r *run, ifc domain.Interface, bin string) (*os.File, *procmgr.Process, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("passt for %s: %w", ifc.Alias, err)
	}
	qemuEnd, passtEnd := os.NewFile(uintptr(fds[0]), "passt-qemu"), os.NewFile(uintptr(fds[1]), "passt")
	defer passtEnd.Close()
	args := []string{"--foreground", "--quiet", "--fd", "3"}
	args = append(args, passtForwards(ifc.PortForwards)...)
	if d.sec != nil {
		if id := d.sec.Identity(); id.UID != 0 {
			args = append(args, "--runas", fmt.Sprintf("%d:%d", id.UID, id.GID))
		}
	}
	log := filepath.Join(d.inst.LogDir, r.dm.name+"-passt-"+ifc.Alias+".log")
	p, err := procmgr.Start(ctx, procmgr.Spec{
		Name:       r.dm.name + "-passt-" + ifc.Alias,
		Path:       bin,
		Args:       args,
		Env:        []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		Dir:        "/",
		LogPath:    log,
		ExtraFiles: []*os.File{passtEnd},
	})
	if err != nil {
		qemuEnd.Close()
		return nil, nil, fmt.Errorf("passt for %s: %w", ifc.Alias, err)
	}
	// passt checks its options before it serves: an early exit is a
	// refusal whose reason is in its log.
	select {
	case <-p.Done():
		qemuEnd.Close()
		p.Cleanup()
		return nil, nil, fmt.Errorf("passt for %s exited (%s)%s", ifc.Alias, p.Exit(), logTail(log))
	case <-time.After(100 * time.Millisecond):
	}
	return qemuEnd, p, nil
}

// passtForwards turns <portForward>s into passt's -t/-u options, one per
// <portForward>: [ADDR/]PORT[-PORT][:GUEST[-GUEST]],... with the excluded
// ranges as ~PORT[-PORT] in the same list (passt reads a list of only
// exclusions as "every other port", so they never stand alone).
func passtForwards(pfs []domain.PortForward) []string {
	var out []string
	for _, pf := range pfs {
		var parts []string
		included := false
		for _, rg := range pf.Ranges {
			end := rg.End
			if end == 0 {
				end = rg.Start
			}
			spec := strconv.Itoa(int(rg.Start))
			if end != rg.Start {
				spec += "-" + strconv.Itoa(int(end))
			}
			if rg.Exclude {
				parts = append(parts, "~"+spec)
				continue
			}
			included = true
			if rg.To != 0 && rg.To != rg.Start {
				spec += ":" + strconv.Itoa(int(rg.To))
				if end != rg.Start {
					spec += "-" + strconv.Itoa(int(rg.To)+int(end-rg.Start))
				}
			}
			parts = append(parts, spec)
		}
		if !included {
			continue
		}
		spec := strings.Join(parts, ",")
		if pf.Address != "" {
			spec = pf.Address + "/" + spec
		}
		flag := "--tcp-ports"
		if pf.Proto == "udp" {
			flag = "--udp-ports"
		}
		out = append(out, flag, spec)
	}
	return out
}

// stopPassts ends what is left of the run's passt processes once QEMU is
// gone (they end by themselves when QEMU's end of their socket closes).
func (r *run) stopPassts() {
	r.mu.Lock()
	passts := r.passts
	r.passts = nil
	r.mu.Unlock()
	for _, p := range passts {
		select {
		case <-p.Done():
		case <-time.After(2 * time.Second):
			p.Signal(syscall.SIGTERM)
			select {
			case <-p.Done():
			case <-time.After(5 * time.Second):
				p.Kill()
				<-p.Done()
			}
		}
		p.Cleanup()
	}
}
