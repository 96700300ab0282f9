package procmgr

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// HelperArg is the hidden first argument with which procmgr re-executes
// the daemon's own binary (/proc/self/exe) as the exec helper: Go cannot
// run code between fork and exec beyond what SysProcAttr offers, so the
// helper process does the mount namespace, cgroup, label and credential
// steps itself and then execs QEMU, which keeps the helper's pid.
//
// main must call RunHelper first thing when os.Args[1] == HelperArg:
//
//	if len(os.Args) > 1 && os.Args[1] == procmgr.HelperArg {
//		procmgr.RunHelper() // never returns
//	}
const HelperArg = "__qemufs-exec"

// helperRequest is what Start sends the helper over the spec pipe.
type helperRequest struct {
	Spec  Spec
	Files int // len(Spec.ExtraFiles): they are fds 3 .. 3+Files-1
}

// helperFailure is what the helper sends back over the error pipe when a
// step fails. A successful exec closes the pipe (it is close-on-exec) with
// nothing written.
type helperFailure struct {
	Step  string `json:"step"`
	Msg   string `json:"msg"`
	Errno int    `json:"errno,omitempty"`
}

// HelperError is a failure of a start-up step in the exec helper, as Start
// reports it. It unwraps to the syscall.Errno when there was one, so
// errors.Is(err, syscall.ENOENT) works across the process boundary.
type HelperError struct {
	Step  string // the helper step, e.g. "helper.MountNS"
	Msg   string // what failed, e.g. "mount namespace: mknod /dev/kvm: operation not permitted"
	Errno syscall.Errno
}

func (e *HelperError) Error() string { return e.Msg }

// Unwrap returns the errno, if any.
func (e *HelperError) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// helper is the state of the exec helper process.
type helper struct {
	req  helperRequest
	spec *Spec
	in   *os.File // spec pipe
	attr procAttr
}

// RunHelper is the exec helper's main: it reads the Spec from the pipe
// Start passes, prepares the process and execs the emulator. It never
// returns: on failure it reports the error to Start and exits 127.
func RunHelper() {
	// Thread attributes (the exec label) belong to this thread, and the
	// exec must happen from it.
	runtime.LockOSThread()
	if len(os.Args) != 3 {
		fmt.Fprintf(os.Stderr, "%s: internal entry point of procmgr, not for direct use\n", HelperArg)
		os.Exit(127)
	}
	n, err := strconv.Atoi(os.Args[2])
	if err != nil || n < 0 {
		fmt.Fprintf(os.Stderr, "%s: bad file count %q\n", HelperArg, os.Args[2])
		os.Exit(127)
	}
	specFd, errFd := 3+n, 4+n
	unix.CloseOnExec(specFd)
	unix.CloseOnExec(errFd)
	errPipe := os.NewFile(uintptr(errFd), "helper-errors")
	h := &helper{in: os.NewFile(uintptr(specFd), "helper-spec"), attr: threadAttr{}}
	h.req.Files = n

	defer func() {
		if r := recover(); r != nil {
			report(errPipe, &stepError{Step: "helper", Err: fmt.Errorf("exec helper panicked: %v", r)})
			os.Exit(127)
		}
	}()
	err = h.run()
	// Only reached on failure: a successful exec does not return.
	report(errPipe, err)
	os.Exit(127)
}

// run reads the request and runs the steps it needs, ending with exec.
func (h *helper) run() error {
	read := steps[*helper]{{Name: "helper.ReadSpec", Fn: (*helper).readSpec}}
	if err := read.run(h, nil); err != nil {
		return err
	}
	return h.steps().run(h, nil)
}

// steps is the helper's start-up, in order: namespace and /dev first (as
// root, with the host's /dev still visible), then cgroups, the exec label,
// the credential (which drops the capabilities the steps before needed),
// the working directory (as the final user) and the exec.
func (h *helper) steps() steps[*helper] {
	s := h.spec
	return steps[*helper]{}.
		with(s.MountNS != nil, step[*helper]{Name: "helper.MountNS", Fn: func(h *helper) error { return setupMountNS(h.spec.MountNS) }}).
		with(len(s.CgroupProcs) > 0, step[*helper]{Name: "helper.Cgroups", Fn: func(h *helper) error { return joinCgroups(h.spec.CgroupProcs) }}).
		with(s.Label != nil, step[*helper]{Name: "helper.Label", Fn: func(h *helper) error { return applyExecLabel(h.attr, h.spec.Label) }}).
		with(s.Credential != nil, step[*helper]{Name: "helper.Credential", Fn: func(h *helper) error { return setCredential(h.spec.Credential) }}).
		with(s.Dir != "", step[*helper]{Name: "helper.Dir", Fn: func(h *helper) error { return chdir(h.spec.Dir) }}).
		with(true, step[*helper]{Name: "helper.Exec", Fn: (*helper).exec})
}

func (h *helper) readSpec() error {
	data, err := io.ReadAll(h.in)
	h.in.Close()
	if err != nil {
		return fmt.Errorf("exec helper: read spec: %w", err)
	}
	var req helperRequest
	if err := json.Unmarshal(data, &req); err != nil {
		return fmt.Errorf("exec helper: decode spec: %w", err)
	}
	if req.Files != h.req.Files {
		return fmt.Errorf("exec helper: spec names %d extra files, command line %d", req.Files, h.req.Files)
	}
	h.req = req
	h.spec = &h.req.Spec
	return nil
}

// joinCgroups writes the helper's pid, which QEMU keeps, into each
// cgroup.procs file, so QEMU never runs outside its cgroups.
func joinCgroups(procs []string) error {
	pid := []byte(strconv.Itoa(os.Getpid()))
	for _, p := range procs {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err == nil {
			_, err = f.Write(pid)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return fmt.Errorf("cgroup: %w", err)
		}
	}
	return nil
}

// setCredential switches to the spec's user. Setting a non-zero uid clears
// the permitted and effective capabilities; they and the ambient set are
// cleared explicitly too, in case the daemon runs with SECBIT_NO_SETUID_FIXUP
// or ambient capabilities. Root keeps its capabilities.
func setCredential(c *Credential) error {
	groups := make([]int, len(c.Groups))
	for i, g := range c.Groups {
		groups[i] = int(g)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("credential: clear ambient capabilities: %w", err)
	}
	// syscall's Set* apply to every thread of the helper.
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("credential: setgroups %v: %w", c.Groups, err)
	}
	if err := syscall.Setgid(int(c.GID)); err != nil {
		return fmt.Errorf("credential: setgid %d: %w", c.GID, err)
	}
	if err := syscall.Setuid(int(c.UID)); err != nil {
		return fmt.Errorf("credential: setuid %d: %w", c.UID, err)
	}
	if c.UID == 0 {
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var none [2]unix.CapUserData
	if err := unix.Capset(&hdr, &none[0]); err != nil {
		return fmt.Errorf("credential: drop capabilities: %w", err)
	}
	var got [2]unix.CapUserData
	if err := unix.Capget(&hdr, &got[0]); err != nil {
		return fmt.Errorf("credential: read capabilities: %w", err)
	}
	if got != none {
		return fmt.Errorf("credential: capabilities remain after setuid %d: %+v", c.UID, got)
	}
	return nil
}

func chdir(dir string) error {
	if err := os.Chdir(dir); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	return nil
}

func (h *helper) exec() error {
	s := h.spec
	env := s.Env
	if env == nil {
		env = []string{}
	}
	argv := append([]string{s.Path}, s.Args...)
	err := syscall.Exec(s.Path, argv, env)
	return fmt.Errorf("exec %s: %w", s.Path, err)
}

// report sends err to Start over the error pipe.
func report(w *os.File, err error) {
	f := helperFailure{Msg: err.Error()}
	var se *stepError
	if errors.As(err, &se) {
		f.Step = se.Step
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		f.Errno = int(errno)
	}
	data, _ := json.Marshal(f)
	if _, werr := w.Write(data); werr != nil {
		fmt.Fprintf(os.Stderr, "%s: %v (and reporting it failed: %v)\n", HelperArg, err, werr)
	}
}
