// Package qemutest starts a QEMU command line paused (-S) and asks it for
// its run state over QMP with a few lines of raw JSON. It is for tests of
// package domain and of the corpus: it proves that QEMU accepts the argv
// BuildCommand generates, without depending on the monitor package.
package qemutest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// QMPFD is the descriptor number the listening QMP socket has in QEMU;
// pass it as domain.CommandOptions.QMPFD.
const QMPFD = 3

// Result is what one run found.
type Result struct {
	// Status is query-status's "status" ("prelaunch" for a -S start).
	Status string
	// Stderr is what QEMU wrote to stderr (its error on failure).
	Stderr string
}

// Run starts path with args and env, handing it a listening QMP socket as
// fd QMPFD, negotiates QMP, runs query-status, then kills QEMU by its pid
// and reaps it. dir is a scratch directory for the socket. ctx bounds the
// whole run. An error means QEMU did not get as far as answering
// query-status; its stderr is in the error and in Result.
func Run(ctx context.Context, dir, path string, args, env []string) (Result, error) {
	sock := filepath.Join(dir, "qmp.sock")
	_ = os.Remove(sock)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return Result{}, fmt.Errorf("listen %s: %w", sock, err)
	}
	defer l.Close()
	lf, err := l.File()
	if err != nil {
		return Result{}, fmt.Errorf("listener fd: %w", err)
	}
	defer lf.Close()

	var stderr bytes.Buffer
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.Stdin = nil
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	cmd.ExtraFiles = []*os.File{lf} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("start %s: %w", path, err)
	}
	lf.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Kill() // by pid, never by name
		<-exited
	}

	// The socket is already listening, so Dial succeeds at once; reads
	// block until QEMU accepts and greets, or exits.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		stop()
		return Result{Stderr: stderr.String()}, fmt.Errorf("dial QMP: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	type answer struct {
		status string
		err    error
	}
	done := make(chan answer, 1)
	go func() {
		s, err := talk(conn)
		done <- answer{s, err}
	}()
	var res answer
	select {
	case res = <-done:
		if res.err != nil {
			// A reset connection usually means QEMU is exiting with an
			// error: report that, with its stderr.
			select {
			case werr := <-exited:
				return Result{Stderr: stderr.String()}, fmt.Errorf("QEMU exited before answering query-status (%v): %s", werr, strings.TrimSpace(stderr.String()))
			case <-time.After(5 * time.Second):
			}
		}
	case werr := <-exited:
		conn.Close()
		<-done
		return Result{Stderr: stderr.String()}, fmt.Errorf("QEMU exited before answering query-status (%v): %s", werr, strings.TrimSpace(stderr.String()))
	case <-ctx.Done():
		conn.Close()
		<-done
		stop()
		return Result{Stderr: stderr.String()}, fmt.Errorf("QMP: %w (stderr: %s)", ctx.Err(), strings.TrimSpace(stderr.String()))
	}
	stop()
	if res.err != nil {
		return Result{Stderr: stderr.String()}, fmt.Errorf("QMP: %w (stderr: %s)", res.err, strings.TrimSpace(stderr.String()))
	}
	return Result{Status: res.status, Stderr: stderr.String()}, nil
}

// RunSocket is Run for a command line whose QMP monitor is a socket file
// QEMU creates itself (domain.CommandOptions.QMPSocket = sock). It waits
// for the file with inotify (no polling), then talks QMP as Run does.
func RunSocket(ctx context.Context, sock, path string, args, env []string) (Result, error) {
	dir := filepath.Dir(sock)
	in, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return Result{}, fmt.Errorf("inotify: %w", err)
	}
	watch := os.NewFile(uintptr(in), "inotify")
	defer watch.Close()
	if _, err := unix.InotifyAddWatch(in, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		return Result{}, fmt.Errorf("inotify watch %s: %w", dir, err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("start %s: %w", path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Kill() // by pid, never by name
		<-exited
	}
	created := make(chan error, 1)
	go func() { created <- waitCreated(watch, filepath.Base(sock)) }()
	select {
	case err := <-created:
		if err != nil {
			stop()
			return Result{Stderr: stderr.String()}, err
		}
	case werr := <-exited:
		watch.Close()
		return Result{Stderr: stderr.String()}, fmt.Errorf("QEMU exited before creating its QMP socket (%v): %s", werr, strings.TrimSpace(stderr.String()))
	case <-ctx.Done():
		watch.Close()
		stop()
		return Result{Stderr: stderr.String()}, fmt.Errorf("waiting for %s: %w", sock, ctx.Err())
	}
	// QEMU binds (creating the file) and then listens; no event marks the
	// listen, so a refused connection in that window is retried with a
	// short backoff, bounded by ctx and by QEMU exiting.
	var conn net.Conn
	for delay := time.Millisecond; ; delay *= 2 {
		conn, err = net.Dial("unix", sock)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
			break
		}
		select {
		case <-time.After(min(delay, 100*time.Millisecond)):
		case werr := <-exited:
			return Result{Stderr: stderr.String()}, fmt.Errorf("QEMU exited before listening on QMP (%v): %s", werr, strings.TrimSpace(stderr.String()))
		case <-ctx.Done():
			stop()
			return Result{Stderr: stderr.String()}, fmt.Errorf("connecting to %s: %w", sock, ctx.Err())
		}
	}
	if err != nil {
		stop()
		return Result{Stderr: stderr.String()}, fmt.Errorf("dial QMP: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	status, err := talk(conn)
	stop()
	if err != nil {
		return Result{Stderr: stderr.String()}, fmt.Errorf("QMP: %w (stderr: %s)", err, strings.TrimSpace(stderr.String()))
	}
	return Result{Status: status, Stderr: stderr.String()}, nil
}

// waitCreated reads inotify events until name is created in the watched
// directory.
func waitCreated(watch *os.File, name string) error {
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := watch.Read(buf)
		if err != nil {
			return fmt.Errorf("inotify: %w", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			if strings.TrimRight(string(nameBytes), "\x00") == name {
				return nil
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

// talk reads the greeting, negotiates capabilities and runs query-status.
func talk(conn net.Conn) (string, error) {
	r := bufio.NewReader(conn)
	next := func() (map[string]json.RawMessage, error) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return nil, err
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(line, &m); err != nil {
				return nil, fmt.Errorf("bad QMP line %q: %w", line, err)
			}
			if _, ev := m["event"]; ev {
				continue
			}
			return m, nil
		}
	}
	greet, err := next()
	if err != nil {
		return "", fmt.Errorf("greeting: %w", err)
	}
	if _, ok := greet["QMP"]; !ok {
		return "", errors.New("no QMP greeting")
	}
	for _, c := range []string{`{"execute":"qmp_capabilities"}`, `{"execute":"query-status"}`} {
		if _, err := conn.Write([]byte(c + "\n")); err != nil {
			return "", err
		}
		m, err := next()
		if err != nil {
			return "", fmt.Errorf("%s: %w", c, err)
		}
		if e, ok := m["error"]; ok {
			return "", fmt.Errorf("%s: %s", c, e)
		}
		if strings.Contains(c, "query-status") {
			var st struct {
				Status string `json:"status"`
			}
			if err := json.Unmarshal(m["return"], &st); err != nil {
				return "", fmt.Errorf("query-status reply: %w", err)
			}
			return st.Status, nil
		}
	}
	return "", errors.New("unreachable")
}

// Timeout is a generous bound for one paused start on a loaded machine.
const Timeout = 90 * time.Second
