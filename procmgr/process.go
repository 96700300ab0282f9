// Package procmgr starts QEMU processes that outlive the daemon, watches
// them exit without polling, and re-attaches to them after a restart.
//
// A process is started in its own session with stdin on /dev/null and
// stdout/stderr appended to a log file, never pipes to the daemon, so that
// a daemon killed with SIGKILL does not hurt it. Exits are seen through
// pidfds: the daemon's own children are reaped with wait4 (their exit
// status is known); re-attached processes are watched through a pidfd,
// which becomes readable when the process exits whether or not anyone has
// reaped it yet. Signals go through the pidfd too, so a recycled pid is
// never signalled.
//
// A Spec that needs a mount namespace, cgroups or an exec label is started
// through the exec helper (see HelperArg); a plain Spec (at most a
// Credential) is exec'ed directly. The daemon calls Init once at start-up.
//
// Start-up is a list of named steps ("spawn.Validate", "spawn.Helper",
// "helper.MountNS", ...); Spec.Logf sees the daemon's, and an error names
// the step that failed.
package procmgr

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrGone is returned by Attach when the pid no longer names the process
// that was started (it exited, or the pid was reused).
var ErrGone = errors.New("process is gone")

// ErrFinished is returned by Signal once the process has exited.
var ErrFinished = os.ErrProcessDone

// Process is a running (or ended) QEMU process, started by Start or found
// again by Attach.
type Process struct {
	// Pid and StartTime (field 22 of /proc/PID/stat) identify the process
	// across daemon restarts: store both and pass them to Attach.
	Pid       int
	StartTime uint64

	pidPath string
	child   bool // ours to reap with wait4

	mu    sync.Mutex
	pidfd *os.File // nil once the process has ended
	exit  ExitStatus

	done chan struct{}
}

// ExitStatus describes how a process ended.
type ExitStatus struct {
	// Exited is false while the process runs.
	Exited bool
	// Known is true when the status below was collected (the process was
	// our child); a re-attached process's status is not ours to read.
	Known bool
	// Code is the exit code, or -1 if the process was killed by a signal
	// or the status is unknown.
	Code int
	// Signal is the signal that killed the process, or 0.
	Signal     syscall.Signal
	CoreDumped bool
}

// String says how the process ended, for logs and error messages.
func (e ExitStatus) String() string {
	switch {
	case !e.Exited:
		return "running"
	case !e.Known:
		return "exited, status unknown (not our child)"
	case e.Signal != 0 && e.CoreDumped:
		return fmt.Sprintf("killed by signal %d (%v, core dumped)", int(e.Signal), e.Signal)
	case e.Signal != 0:
		return fmt.Sprintf("killed by signal %d (%v)", int(e.Signal), e.Signal)
	default:
		return fmt.Sprintf("exit status %d", e.Code)
	}
}

// Done is closed when the process has exited (within milliseconds: it is
// driven by the pidfd becoming readable).
func (p *Process) Done() <-chan struct{} { return p.done }

// Exit describes how the process ended; before Done is closed it reports
// a running process.
func (p *Process) Exit() ExitStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit
}

// String identifies the process for logs.
func (p *Process) String() string {
	return fmt.Sprintf("pid %d (start time %d)", p.Pid, p.StartTime)
}

// Signal sends sig through the pidfd; after the process has exited it
// returns ErrFinished and signals nothing, even if the pid was reused.
func (p *Process) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd == nil {
		return ErrFinished
	}
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		return fmt.Errorf("signal %s: %w", p, err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.PidfdSendSignal(int(fd), sig, nil, 0) }); err != nil {
		return fmt.Errorf("signal %s: %w", p, err)
	}
	if errors.Is(serr, unix.ESRCH) {
		return ErrFinished
	}
	if serr != nil {
		return fmt.Errorf("signal %s: %w", p, serr)
	}
	return nil
}

// Kill sends SIGKILL.
func (p *Process) Kill() error { return p.Signal(syscall.SIGKILL) }

// Cleanup removes the pid file written at Start if it still names this
// process. Call it when the process has ended and its files are cleared.
func (p *Process) Cleanup() error {
	if p.pidPath == "" {
		return nil
	}
	data, err := os.ReadFile(p.pidPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove pid file: %w", err)
	}
	if pid, _ := strconv.Atoi(string(bytes.TrimSpace(data))); pid != p.Pid {
		return nil
	}
	if err := os.Remove(p.pidPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove pid file: %w", err)
	}
	return nil
}

// Attach finds a process again after a daemon restart. It returns ErrGone
// if pid is not the process that had startTime any more, including when it
// has exited and is only a zombie waiting to be reaped.
func Attach(pid int, startTime uint64) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("attach pid %d: %w", pid, ErrGone)
	}
	// Open the pidfd first, then check the start time: if they match, the
	// pidfd refers to that very process.
	fd, err := unix.PidfdOpen(pid, unix.O_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return nil, fmt.Errorf("attach pid %d: %w", pid, ErrGone)
	}
	if err != nil {
		return nil, fmt.Errorf("attach pid %d: pidfd_open: %w", pid, err)
	}
	st, err := readStat(pid)
	if err != nil || st.StartTime != startTime || st.State == 'Z' || st.State == 'X' {
		unix.Close(fd)
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("attach pid %d: %w", pid, err)
		}
		return nil, fmt.Errorf("attach pid %d (start time %d): %w", pid, startTime, ErrGone)
	}
	p := newProcess(pid, startTime, fd)
	// A process adopted by this (subreaper) daemon is ours to reap.
	p.child = st.PPid == os.Getpid()
	p.watch()
	return p, nil
}

func newProcess(pid int, startTime uint64, pidfd int) *Process {
	return &Process{
		Pid:       pid,
		StartTime: startTime,
		pidfd:     os.NewFile(uintptr(pidfd), "pidfd:"+strconv.Itoa(pid)),
		exit:      ExitStatus{Code: -1},
		done:      make(chan struct{}),
	}
}

// watch registers p with the orphan reaper and waits, in a goroutine, for
// its pidfd to become readable; then it reaps the process if it is our
// child, and closes Done.
func (p *Process) watch() {
	track(p.Pid)
	go func() {
		p.waitExited()
		st := ExitStatus{Exited: true, Code: -1}
		if p.child {
			var ws unix.WaitStatus
			_, err := unix.Wait4(p.Pid, &ws, 0, nil)
			for errors.Is(err, unix.EINTR) {
				_, err = unix.Wait4(p.Pid, &ws, 0, nil)
			}
			if err == nil {
				st.Known = true
				switch {
				case ws.Exited():
					st.Code = ws.ExitStatus()
				case ws.Signaled():
					st.Signal, st.CoreDumped = syscall.Signal(ws.Signal()), ws.CoreDump()
				}
			}
		}
		p.mu.Lock()
		p.pidfd.Close()
		p.pidfd = nil
		p.exit = st
		p.mu.Unlock()
		untrack(p.Pid)
		close(p.done)
	}()
}

// waitExited blocks until the pidfd is readable, which happens when the
// process has exited (zombie or reaped). The pidfd is non-blocking, so
// os.File registers it with the runtime's poller and no thread is held.
func (p *Process) waitExited() {
	ready := func(fd uintptr) bool {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, 0)
		return err == nil && n > 0
	}
	rc, err := p.pidfd.SyscallConn()
	if err == nil {
		if err = rc.Read(ready); err == nil {
			return
		}
	}
	// Not pollable (should not happen): block a thread in poll instead.
	fd := int(p.pidfd.Fd())
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, -1); n > 0 || err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// Start starts the process spec describes and returns once it runs the
// emulator (or failed to). The process outlives the daemon. ctx bounds the
// start only. Errors read "start NAME: what failed: ..."; a failure in the
// exec helper is a *HelperError naming its step.
func Start(ctx context.Context, spec Spec) (*Process, error) {
	s := &spawn{ctx: ctx, spec: &spec, null: -1, log: -1}
	err := s.steps().run(s, spec.Logf)
	if err != nil {
		s.abort()
		name := spec.Name
		if name == "" {
			name = filepath.Base(spec.Path)
		}
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s.closeFiles()
	return s.proc, nil
}

// needsHelper tells whether spec needs steps that only the exec helper can
// do between fork and exec.
func needsHelper(spec *Spec) bool {
	return forceHelper || spec.MountNS != nil || len(spec.CgroupProcs) > 0 || spec.Label != nil
}

// forceHelper makes every Start use the exec helper (for benchmarks).
var forceHelper bool

// spawn is the state of one Start.
type spawn struct {
	ctx  context.Context
	spec *Spec

	null, log int // fds for the child's stdin and stdout/stderr

	pid   int
	pidfd int
	proc  *Process
}

// steps is Start's sequence; names appear in Spec.Logf logs.
func (s *spawn) steps() steps[*spawn] {
	helper := needsHelper(s.spec)
	return steps[*spawn]{
		{Name: "spawn.Validate", Fn: (*spawn).validate},
		{Name: "spawn.OpenFiles", Fn: (*spawn).openFiles},
	}.
		with(!helper, step[*spawn]{Name: "spawn.Exec", Fn: (*spawn).execDirect}).
		with(helper, step[*spawn]{Name: "spawn.Helper", Fn: (*spawn).execHelper}).
		with(true, step[*spawn]{Name: "spawn.Identify", Fn: (*spawn).identify}).
		with(s.spec.PidPath != "", step[*spawn]{Name: "spawn.PidFile", Fn: (*spawn).writePidFile})
}

func (s *spawn) validate() error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	sp := s.spec
	if !filepath.IsAbs(sp.Path) {
		return fmt.Errorf("emulator path %q is not absolute", sp.Path)
	}
	fi, err := os.Stat(sp.Path)
	if err != nil {
		return fmt.Errorf("emulator: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("emulator %s is not an executable file", sp.Path)
	}
	if sp.Dir != "" && !filepath.IsAbs(sp.Dir) {
		return fmt.Errorf("working directory %q is not absolute", sp.Dir)
	}
	if sp.Label != nil && sp.Label.Model != ModelSELinux && sp.Label.Model != ModelAppArmor {
		return fmt.Errorf("exec label: unknown security model %q", sp.Label.Model)
	}
	return nil
}

func (s *spawn) openFiles() error {
	var err error
	if s.null, err = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return fmt.Errorf("open /dev/null: %w", err)
	}
	logPath := s.spec.LogPath
	if logPath == "" {
		logPath = "/dev/null"
	}
	if s.log, err = unix.Open(logPath, unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND|unix.O_CLOEXEC, 0o600); err != nil {
		return fmt.Errorf("open log: %w", &os.PathError{Op: "open", Path: logPath, Err: err})
	}
	return nil
}

// files is the child's fd table: stdin, stdout, stderr, ExtraFiles.
func (s *spawn) files() []uintptr {
	fds := []uintptr{uintptr(s.null), uintptr(s.log), uintptr(s.log)}
	for _, f := range s.spec.ExtraFiles {
		fds = append(fds, f.Fd())
	}
	return fds
}

func (s *spawn) closeFiles() {
	for _, fd := range []*int{&s.null, &s.log} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// abort undoes a failed Start: no process is left behind.
func (s *spawn) abort() {
	s.closeFiles()
	if s.proc != nil {
		_ = s.proc.Kill()
		<-s.proc.Done()
		return
	}
	if s.pid > 0 {
		// Our child, not reaped yet: its pid cannot have been reused.
		_ = unix.Kill(s.pid, unix.SIGKILL)
		var ws unix.WaitStatus
		_, _ = unix.Wait4(s.pid, &ws, 0, nil)
		if s.pidfd >= 0 {
			unix.Close(s.pidfd)
		}
	}
}

func (s *spawn) env() []string {
	if s.spec.Env == nil {
		return []string{}
	}
	return s.spec.Env
}

// execDirect forks and execs the emulator: Go's ForkExec returns once the
// exec succeeded, and reports a failed exec as an error.
func (s *spawn) execDirect() error {
	sp := s.spec
	pidfd := -1
	attr := &syscall.ProcAttr{
		Dir:   sp.Dir,
		Env:   s.env(),
		Files: s.files(),
		Sys:   &syscall.SysProcAttr{Setsid: true, PidFD: &pidfd},
	}
	if c := sp.Credential; c != nil {
		groups := make([]uint32, len(c.Groups))
		copy(groups, c.Groups)
		attr.Sys.Credential = &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: groups}
	}
	pid, err := syscall.ForkExec(sp.Path, append([]string{sp.Path}, sp.Args...), attr)
	if err != nil {
		return fmt.Errorf("exec %s: %w", sp.Path, err)
	}
	s.pid, s.pidfd = pid, pidfd
	if pidfd < 0 {
		return fmt.Errorf("exec %s: the kernel gave no pidfd", sp.Path)
	}
	return nil
}

// execHelper hands the spec and the process's files to an exec helper
// (the spare, see Init) over its control socket. It returns when the
// helper's exec closed the socket, or with the error the helper sent.
func (s *spawn) execHelper() error {
	sp := s.spec
	n := len(sp.ExtraFiles)
	h, err := takeHelper(n)
	if err != nil {
		return err
	}
	s.pid, s.pidfd = h.pid, h.pidfd
	ctrl := pipeEnd(h.ctrl, "helper-ctrl")
	defer ctrl.Close()
	stop := context.AfterFunc(s.ctx, func() { ctrl.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	req := helperRequest{Spec: *sp, Files: n}
	req.Spec.ExtraFiles = nil
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("exec helper: encode spec: %w", err)
	}
	fds := []int{s.null, s.log}
	for _, f := range sp.ExtraFiles {
		fds = append(fds, int(f.Fd()))
	}
	msg := make([]byte, 8, 8+len(data))
	binary.LittleEndian.PutUint32(msg[:4], uint32(len(data)))
	binary.LittleEndian.PutUint32(msg[4:], uint32(len(fds)))
	msg = append(msg, data...)
	if err := sendWithFiles(ctrl, msg, fds); err != nil {
		if cerr := s.ctx.Err(); cerr != nil {
			return cerr
		}
		return fmt.Errorf("exec helper: send spec: %w", err)
	}

	reply, rerr := io.ReadAll(ctrl)
	if err := s.ctx.Err(); err != nil {
		return err
	}
	if rerr != nil {
		return fmt.Errorf("exec helper: read result: %w", rerr)
	}
	if !h.ready {
		// A helper started for this Start said it was ready meanwhile.
		if len(reply) == 0 || reply[0] != helperReady {
			return fmt.Errorf("exec helper: exited before it was ready")
		}
		reply = reply[1:]
	}
	if len(reply) == 0 {
		return nil // exec closed the socket
	}
	var f helperFailure
	if err := json.Unmarshal(reply, &f); err != nil {
		return fmt.Errorf("exec helper: bad report %q: %w", reply, err)
	}
	return &HelperError{Step: f.Step, Msg: f.Msg, Errno: syscall.Errno(f.Errno)}
}

// sendWithFiles writes msg to the socket c, the files fds attached to its
// first bytes (SCM_RIGHTS).
func sendWithFiles(c *os.File, msg []byte, fds []int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	rights := unix.UnixRights(fds...)
	var sent int
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		sent, serr = unix.SendmsgN(int(fd), msg, rights, nil, unix.MSG_NOSIGNAL)
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	if sent < len(msg) {
		// Not after a complete send: the helper may have exec'ed already,
		// and even an empty write to its closed end fails with EPIPE.
		_, err = c.Write(msg[sent:])
	}
	return err
}

// pipeEnd wraps a socket fd for the runtime poller, so deadlines work.
func pipeEnd(fd int, name string) *os.File {
	_ = unix.SetNonblock(fd, true)
	return os.NewFile(uintptr(fd), name)
}

// identify reads the start time and begins watching the process.
func (s *spawn) identify() error {
	st, err := readStat(s.pid)
	if err != nil {
		return fmt.Errorf("read start time of pid %d: %w", s.pid, err)
	}
	unix.SetNonblock(s.pidfd, true)
	p := newProcess(s.pid, st.StartTime, s.pidfd)
	p.child = true
	p.pidPath = s.spec.PidPath
	s.proc = p
	p.watch()
	return nil
}

func (s *spawn) writePidFile() error {
	if err := WritePidFile(s.spec.PidPath, s.pid); err != nil {
		return err
	}
	return nil
}

// WritePidFile writes pid to path atomically (a temporary file renamed
// over path), so readers never see a partial pid file.
func WritePidFile(path string, pid int) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".*")
	if err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	tmp := f.Name()
	_, err = fmt.Fprintf(f, "%d\n", pid)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pid file: %w", err)
	}
	return nil
}
