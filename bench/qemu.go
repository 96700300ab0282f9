package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/tests/guest"
)

// guestXML is the bench's domain: the test guest (kernel + initramfs),
// 192 MiB, one vCPU, a pty serial console, as the end-to-end tests use;
// extra goes at the end of the domain (a qemu:commandline block).
func guestXML(name string, env *benchEnv, extra string) string {
	g := guest.Guest{Kernel: env.kernel, Initrd: env.initrd, Cmdline: env.cmdline}
	return g.DomainXML(name, guest.ActionNone, "", extra)
}

// qmpCommandline adds a second QMP socket at path through the domain's
// qemu:commandline passthrough.
func qmpCommandline(path string) string {
	return fmt.Sprintf(`  <qemu:commandline>
    <qemu:arg value='-qmp'/>
    <qemu:arg value='unix:%s,server=on,wait=off'/>
  </qemu:commandline>
`, path)
}

// bareCommand turns a domain's argv file (env, binary, arguments, one
// shell-quoted line) into the command the bench runs by hand: the same
// binary and arguments without qemufs's monitor, which the caller replaces.
func bareCommand(argvLine string) (path string, args []string, err error) {
	words, err := domain.ShellWords(strings.TrimSpace(argvLine))
	if err != nil {
		return "", nil, err
	}
	for len(words) > 0 && isEnvAssign(words[0]) {
		words = words[1:]
	}
	if len(words) == 0 {
		return "", nil, fmt.Errorf("argv: no command in %q", argvLine)
	}
	path = words[0]
	in := words[1:]
	for i := 0; i < len(in); i++ {
		a := in[i]
		if i+1 < len(in) {
			v := in[i+1]
			if a == "-chardev" && strings.Contains(v, "id=charmonitor") ||
				a == "-mon" && strings.Contains(v, "chardev=charmonitor") {
				i++
				continue
			}
		}
		args = append(args, a)
	}
	return path, args, nil
}

// withSerialStdio replaces the pty serial chardev with stdio, so the
// guest's console can be read from QEMU's stdout.
func withSerialStdio(args []string) []string {
	out := append([]string(nil), args...)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == "-chardev" && strings.HasPrefix(out[i+1], "pty,id=charserial0") {
			out[i+1] = "stdio,id=charserial0,signal=off"
		}
	}
	return out
}

func isEnvAssign(w string) bool {
	i := strings.IndexByte(w, '=')
	if i <= 0 {
		return false
	}
	for j, c := range w[:i] {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || j > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// bareQEMU is a QEMU the bench starts by hand.
type bareQEMU struct {
	cmd    *exec.Cmd
	qmp    string
	stdout io.ReadCloser
	stdin  io.WriteCloser
}

// startBare spawns path args plus a QMP socket under dir. With stdout
// set, QEMU's stdout is a pipe (the serial console with withSerialStdio).
func startBare(dir, path string, args []string, stdout bool) (*bareQEMU, error) {
	sock := filepath.Join(dir, "floor.qmp")
	os.Remove(sock)
	full := append(append([]string(nil), args...), "-qmp", "unix:"+sock+",server=on,wait=off")
	cmd := exec.Command(path, full...)
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + dir}
	cmd.Dir = dir
	logf, err := os.OpenFile(filepath.Join(dir, "floor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stderr = logf
	q := &bareQEMU{cmd: cmd, qmp: sock}
	if stdout {
		if q.stdout, err = cmd.StdoutPipe(); err != nil {
			return nil, err
		}
		// A pipe that stays open and empty, as a terminal would: QEMU's
		// stdio chardev must not see end of file on its input.
		if q.stdin, err = cmd.StdinPipe(); err != nil {
			return nil, err
		}
	} else {
		cmd.Stdout = logf
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	procs.add(cmd.Process.Pid)
	return q, nil
}

// stop ends QEMU with sig and waits; it returns how long QEMU took to
// exit after the signal.
func (q *bareQEMU) stop(sig syscall.Signal) time.Duration {
	t0 := time.Now()
	q.cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { q.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		q.cmd.Process.Kill()
		<-done
	}
	d := time.Since(t0)
	if q.stdin != nil {
		q.stdin.Close()
	}
	os.Remove(q.qmp)
	return d
}

// waitFor reads r until a line contains want, or ctx ends.
func waitFor(ctx context.Context, r io.Reader, want string) error {
	found := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if bytes.Contains(sc.Bytes(), []byte(want)) {
				found <- nil
				return
			}
		}
		found <- fmt.Errorf("%q not seen: %v", want, sc.Err())
	}()
	select {
	case err := <-found:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%q not seen: %w", want, ctx.Err())
	}
}
