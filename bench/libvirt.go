package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// virsh is one long-lived interactive virsh on libvirt's embedded QEMU
// driver (qemu:///embed?root=DIR). Commands go to its stdin; after each
// one the bench sends `uri` and reads stdout up to the URI it prints, so
// every command is timed inside the one process. virsh runs under
// `stdbuf -oL` so that its output reaches the pipe line by line.
type virsh struct {
	root   string
	uri    string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *lockedBuf
}

type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// take returns what was written since the last take.
func (l *lockedBuf) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	l.b.Reset()
	return s
}

// virshPath returns virsh's path, or "" when libvirt's client or QEMU
// driver is not installed.
func virshPath() string {
	p, err := exec.LookPath("virsh")
	if err != nil {
		return ""
	}
	if m, _ := filepath.Glob("/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so"); len(m) == 0 {
		return ""
	}
	return p
}

// startVirsh starts virsh on an embedded root under dir. QEMU runs as the
// `qemu` account (as qemufs's does) and its stdio goes to a file (no
// virtlogd: the embedded driver runs without daemons).
func startVirsh(path, dir string) (*virsh, error) {
	root := filepath.Join(dir, "libvirt-root")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		return nil, err
	}
	conf := "user = \"qemu\"\ngroup = \"qemu\"\nstdio_handler = \"file\"\n"
	if err := os.WriteFile(filepath.Join(root, "etc/qemu.conf"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	v := &virsh{root: root, uri: "qemu:///embed?root=" + root, lines: make(chan string, 1024), stderr: &lockedBuf{}}
	stdbuf, err := exec.LookPath("stdbuf")
	if err != nil {
		return nil, fmt.Errorf("stdbuf (coreutils): %w", err)
	}
	v.cmd = exec.Command(stdbuf, "-oL", "-eL", path, "-q", "-c", v.uri)
	v.cmd.Dir = dir
	v.cmd.Stderr = v.stderr
	if v.stdin, err = v.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := v.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := v.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			v.lines <- sc.Text()
		}
		close(v.lines)
	}()
	// The connection (capabilities probing) is made at start; wait for it.
	if _, err := v.run("list --all"); err != nil {
		v.close()
		return nil, err
	}
	return v, nil
}

// run sends one command and waits until virsh has done it; it returns
// what it printed, and an error when it printed an error.
func (v *virsh) run(cmd string) (string, error) {
	v.drain()
	if _, err := fmt.Fprintf(v.stdin, "%s\nuri\n", cmd); err != nil {
		return "", fmt.Errorf("virsh %s: %w", cmd, err)
	}
	var out []string
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case l, ok := <-v.lines:
			if !ok {
				return strings.Join(out, "\n"), fmt.Errorf("virsh %s: virsh exited: %s", cmd, v.stderr.take())
			}
			// virsh echoes each command after its prompt; the URI line
			// that is not that echo is uri's output.
			if strings.HasSuffix(l, v.uri) && !strings.Contains(l, "# uri") {
				if e := v.stderr.take(); strings.Contains(e, "error:") {
					return strings.Join(out, "\n"), fmt.Errorf("virsh %s: %s", cmd, strings.TrimSpace(e))
				}
				return strings.Join(out, "\n"), nil
			}
			out = append(out, l)
		case <-timeout:
			return strings.Join(out, "\n"), fmt.Errorf("virsh %s: no answer in 2 minutes", cmd)
		}
	}
}

// drain drops output left from earlier commands.
func (v *virsh) drain() {
	for {
		select {
		case _, ok := <-v.lines:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

// notePids records the embedded driver's running QEMUs for cleanup.
func (v *virsh) notePids() {
	procs.addPidFiles(filepath.Join(v.root, "run/qemu/*.pid"))
}

func (v *virsh) close() {
	v.notePids()
	v.stdin.Close()
	done := make(chan struct{})
	go func() { v.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		v.cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}
