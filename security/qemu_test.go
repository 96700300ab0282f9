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
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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

// TestMain lets procmgr re-execute this test binary as its exec helper.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == procmgr.HelperArg {
		procmgr.RunHelper()
	}
	os.Exit(m.Run())
}

// launch starts QEMU from spec with procmgr.Start, as the driver does
// (cgroups joined, mount namespace made, credential taken, then exec),
// with a listening QMP socket passed as fd 3 so no waiting for a socket
// file is needed. QEMU is killed when the test ends.
func launch(t *testing.T, spec *procmgr.Spec) (*procmgr.Process, *qmp) {
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
	sp := *spec
	sp.Name = "test"
	sp.Args = append(slices.Clone(spec.Args), "-chardev", "socket,id=mon,fd=3,server=on,wait=off", "-mon", "chardev=mon,mode=control")
	sp.LogPath = filepath.Join(dir, "qemu.log")
	sp.ExtraFiles = []*os.File{lf}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := procmgr.Start(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	qemuLog := func() string { b, _ := os.ReadFile(sp.LogPath); return string(b) }
	t.Cleanup(func() {
		select {
		case <-p.Done():
		default:
			p.Kill()
			<-p.Done()
		}
		p.Cleanup()
		if t.Failed() {
			t.Logf("qemu output: %s", qemuLog())
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
		t.Fatalf("qmp_capabilities: %v (qemu: %s)", r, qemuLog())
	}
	return p, q
}

// devMount returns the filesystem type of the mount /dev shows in
// process pid (the last mounted on it), and whether a FUSE mount is seen.
func devMount(t *testing.T, pid int) (string, bool) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	dev, fuse := "", false
	for _, l := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 1 {
			continue
		}
		if f[4] == "/dev" {
			dev = g[0]
		}
		if strings.HasPrefix(g[0], "fuse.qemufs") {
			fuse = true
		}
	}
	return dev, fuse
}

func requireQEMU(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
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
			// A node for it outside /dev (QEMU's private /dev lacks it),
			// open to everyone by mode: only the cgroup can refuse it.
			alias := filepath.Join(dir, "outside-"+c.user)
			var ost unix.Stat_t
			if err := unix.Stat(outside, &ost); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mknod(alias, unix.S_IFBLK|0o666, int(ost.Rdev)); err != nil {
				t.Fatal(err)
			}
			os.Chmod(alias, 0o666)
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
			p, q := launch(t, spec)
			pid := p.Pid
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
			if dev, fuse := devMount(t, pid); dev != "tmpfs" || fuse {
				t.Errorf("QEMU's /dev is %q (want its own tmpfs), a qemufs mount seen: %v", dev, fuse)
			}
			root := fmt.Sprintf("/proc/%d/root", pid)
			if !fileExists(root+loop) || fileExists(root+outside) {
				t.Errorf("QEMU's /dev: %s present %v (want true), %s present %v (want false)",
					loop, fileExists(root+loop), outside, fileExists(root+outside))
			}
			if c.capZero {
				if o := owner(t, img); o.UID != 65534 {
					t.Errorf("image owner while running: %+v", o)
				}
			}
			// The device ACL holds even for root QEMU with every capability.
			r := q.do(t, "blockdev-add", map[string]any{"driver": "host_device", "filename": alias, "node-name": "x"})
			if e, _ := r["error"].(map[string]any); e == nil || !strings.Contains(fmt.Sprint(e["desc"]), "Operation not permitted") {
				t.Errorf("opening %s (%s) outside the ACL: %v", alias, outside, r)
			}
			q.do(t, "quit", nil)
			<-p.Done()
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
	p, q := launch(t, spec)
	if st := procStatus(t, p.Pid); st["Seccomp"] != "0" {
		t.Errorf("Seccomp = %s, want 0", st["Seccomp"])
	}
	q.do(t, "quit", nil)
	<-p.Done()
}
