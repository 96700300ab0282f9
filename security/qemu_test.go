package security

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/security/cgroup"
	"github.com/qemufs/qemufs/security/internal/sectest"
)

// qmp is a minimal QMP client for these tests.
type qmp struct {
	c net.Conn
	r *bufio.Reader
}

func (q *qmp) read(t *testing.T) map[string]any {
	t.Helper()
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("qmp read: %v", err)
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("qmp: %v: %s", err, line)
		}
		if _, ev := m["event"]; !ev {
			return m
		}
	}
}

func (q *qmp) do(t *testing.T, cmd string, args any) map[string]any {
	t.Helper()
	m := map[string]any{"execute": cmd}
	if args != nil {
		m["arguments"] = args
	}
	b, _ := json.Marshal(m)
	if _, err := q.c.Write(append(b, '\n')); err != nil {
		t.Fatal(err)
	}
	return q.read(t)
}

// procStatus returns the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// launch starts QEMU the way procmgr's helper does (joins the cgroups,
// takes the credential, then execs), with a listening QMP socket passed
// as fd 3 so no waiting for a socket file is needed. Until procmgr's
// helper exists, setpriv stands in for the credential change.
func launch(t *testing.T, spec *procmgr.Spec) (*exec.Cmd, *qmp) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	lf, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	defer lf.Close()
	var script strings.Builder
	for _, p := range spec.CgroupProcs {
		fmt.Fprintf(&script, "echo $$ > %q || exit 99; ", p)
	}
	argv := append([]string{spec.Path}, spec.Args...)
	argv = append(argv, "-chardev", "socket,id=mon,fd=3,server=on,wait=off", "-mon", "chardev=mon,mode=control")
	if c := spec.Credential; c != nil {
		var groups []string
		for _, g := range c.Groups {
			groups = append(groups, fmt.Sprint(g))
		}
		gopt := "--clear-groups"
		if len(groups) > 0 {
			gopt = "--groups=" + strings.Join(groups, ",")
		}
		argv = append([]string{"setpriv", fmt.Sprintf("--reuid=%d", c.UID), fmt.Sprintf("--regid=%d", c.GID), gopt, "--"}, argv...)
	}
	script.WriteString(`exec "$@"`)
	cmd := exec.Command("/bin/sh", append([]string{"-c", script.String(), "sh"}, argv...)...)
	cmd.ExtraFiles = []*os.File{lf}
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() {
			t.Logf("qemu output: %s", log.String())
		}
	})
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	q := &qmp{c: c, r: bufio.NewReader(c)}
	q.read(t) // greeting
	if r := q.do(t, "qmp_capabilities", nil); r["return"] == nil {
		t.Fatalf("qmp_capabilities: %v (qemu: %s)", r, log.String())
	}
	return cmd, q
}

func requireQEMU(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not installed")
	}
	return p
}

// TestRealQEMU starts a real QEMU from a prepared Spec, as nobody and as
// root, with a loop block device and a file as disks, and checks the
// running process: its uid, capabilities, seccomp mode, cgroup, the device
// ACL as QEMU sees it, the disk ownership, and that all is undone after.
func TestRealQEMU(t *testing.T) {
	qemu := requireQEMU(t)
	dir := searchable(t)
	if cgroup.Detect() != cgroup.V1 {
		t.Skip("no cgroup v1 here")
	}
	for _, c := range []struct {
		user    string
		uid     string
		capZero bool
	}{
		{"nobody", "65534", true},
		{"root", "0", false},
	} {
		t.Run(c.user, func(t *testing.T) {
			loop := sectest.Loop(t, dir)
			outside := sectest.Loop(t, dir)
			// Open to everyone by mode, so that only the cgroup can refuse it.
			if fi, err := os.Stat(outside); err == nil {
				os.Chmod(outside, 0o666)
				t.Cleanup(func() { os.Chmod(outside, fi.Mode().Perm()) })
			}
			img := mkfile(t, dir, "disk-"+c.user+".img", 0o600)
			os.Truncate(img, 1<<20)
			before := snapshot(t, loop, img)
			cfg := system()
			cfg.User, cfg.Group = c.user, ""
			cfg.InstanceName = fmt.Sprintf("test-%d", os.Getpid())
			s, err := New(cfg, Host{Cgroup: cgroup.V1})
			if err != nil {
				t.Fatal(err)
			}
			spec := &procmgr.Spec{Path: qemu, Args: []string{
				"-machine", "none", "-S", "-nodefaults", "-display", "none", "-nographic",
				"-blockdev", "driver=host_device,filename=" + loop + ",node-name=d0",
				"-blockdev", "driver=file,filename=" + img + ",node-name=d1",
			}}
			rec, err := s.Prepare(context.Background(), &Guest{Name: "real-" + c.user, VirtType: "qemu",
				Disks: []Disk{{Path: loop}, {Path: img}}}, spec)
			if err != nil {
				t.Fatal(err)
			}
			restored := false
			// Registered before launch's cleanup, so it runs after QEMU
			// was killed if the test stops early.
			t.Cleanup(func() {
				if !restored {
					s.Restore(context.Background(), rec)
				}
			})
			cmd, q := launch(t, spec)
			pid := cmd.Process.Pid
			st := procStatus(t, pid)
			if !strings.HasPrefix(st["Uid"], c.uid+"\t") {
				t.Errorf("Uid = %q, want %s", st["Uid"], c.uid)
			}
			if zero := st["CapEff"] == "0000000000000000"; zero != c.capZero {
				t.Errorf("CapEff = %s, want zero: %v", st["CapEff"], c.capZero)
			}
			if st["Seccomp"] != "2" {
				t.Errorf("Seccomp = %q, want 2 (filter)", st["Seccomp"])
			}
			cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
			if !strings.Contains(string(cg), "devices:/") || !strings.Contains(string(cg), "/qemufs-"+cfg.InstanceName+"/real-"+c.user+".qemu") {
				t.Errorf("/proc/%d/cgroup:\n%s", pid, cg)
			}
			if c.capZero {
				if o := owner(t, img); o.UID != 65534 {
					t.Errorf("image owner while running: %+v", o)
				}
			}
			// The device ACL holds even for root QEMU with every capability.
			r := q.do(t, "blockdev-add", map[string]any{"driver": "host_device", "filename": outside, "node-name": "x"})
			if e, _ := r["error"].(map[string]any); e == nil || !strings.Contains(fmt.Sprint(e["desc"]), "Operation not permitted") {
				t.Errorf("opening %s outside the ACL: %v", outside, r)
			}
			q.do(t, "quit", nil)
			cmd.Wait()
			restored = true
			if err := s.Restore(context.Background(), rec); err != nil {
				t.Fatal(err)
			}
			unchanged(t, before)
			for _, p := range spec.CgroupProcs {
				if fileExists(filepath.Dir(p)) {
					t.Errorf("cgroup %s left", filepath.Dir(p))
				}
			}
		})
	}
}

// TestSeccompOff: seccomp_sandbox = 0 adds no -sandbox and QEMU runs
// unfiltered.
func TestSeccompOff(t *testing.T) {
	qemu := requireQEMU(t)
	sectest.RequireRoot(t)
	cfg := system()
	cfg.SeccompSandbox = 0
	cfg.User, cfg.Group = "root", ""
	cfg.Namespaces = []string{}
	s, err := New(cfg, Host{})
	if err != nil {
		t.Fatal(err)
	}
	spec := &procmgr.Spec{Path: qemu, Args: []string{"-machine", "none", "-S", "-nodefaults", "-display", "none"}}
	rec, err := s.Prepare(context.Background(), &Guest{Name: "noseccomp"}, spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Args) != 0 || spec.MountNS != nil || spec.Credential != nil {
		t.Errorf("record %+v, spec %+v", rec, spec)
	}
	cmd, q := launch(t, spec)
	if st := procStatus(t, cmd.Process.Pid); st["Seccomp"] != "0" {
		t.Errorf("Seccomp = %s, want 0", st["Seccomp"])
	}
	q.do(t, "quit", nil)
	cmd.Wait()
}
