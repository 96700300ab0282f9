package procmgr

import (
	"encoding/binary"
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
// steps itself and then execs QEMU, which keeps the helper's pid. After
// Init, one helper is kept started ahead (a spare), so the Go runtime's
// start-up is not on Start's path.
//
// main must call RunHelper first thing when os.Args[1] == HelperArg:
//
//	if len(os.Args) > 1 && os.Args[1] == procmgr.HelperArg {
//		procmgr.RunHelper() // never returns
//	}
const HelperArg = "__qemufs-exec"

// helperRequest is what Start sends the helper over its control socket,
// with the process's files (stdin, output, ExtraFiles...) attached.
type helperRequest struct {
	Spec  Spec
	Files int // len(Spec.ExtraFiles)
}

// helperFailure is what the helper sends back over the control socket when
// a step fails. A successful exec closes the socket (it is close-on-exec)
// with nothing written.
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

// A helper process's fd table, as spawnHelper sets it up:
//
//	0, 1, 2             /dev/null
//	3 .. 3+slots-1      /dev/null placeholders for ExtraFiles
//	3+slots             the control socket
//
// The placeholders keep the low fds taken while the Go runtime starts (it
// keeps files open, e.g. the cgroup CPU quota), so that moving the received
// files to 0 .. 3+len(ExtraFiles)-1 right before exec replaces nothing the
// runtime uses.

// helper is the state of the exec helper process.
type helper struct {
	ctrl  int // control socket
	slots int
	req   helperRequest
	spec  *Spec
	files []int // received: stdin, output, ExtraFiles...
	attr  procAttr
}

// RunHelper is the exec helper's main: it waits for Start to send a Spec
// and the process's files, prepares the process and execs the emulator. It
// never returns. On failure it reports the error to Start and exits 127;
// if the daemon goes away first, it exits 0.
func RunHelper() {
	// Thread attributes (the mount namespace, the exec label) belong to
	// this thread, and the exec must happen from it.
	runtime.LockOSThread()
	if len(os.Args) != 3 {
		fmt.Fprintf(os.Stderr, "%s: internal entry point of procmgr, not for direct use\n", HelperArg)
		os.Exit(127)
	}
	slots, err := strconv.Atoi(os.Args[2])
	if err != nil || slots < 0 {
		fmt.Fprintf(os.Stderr, "%s: bad slot count %q\n", HelperArg, os.Args[2])
		os.Exit(127)
	}
	h := &helper{ctrl: 3 + slots, slots: slots, attr: threadAttr{}}
	unix.CloseOnExec(h.ctrl)
	defer func() {
		if r := recover(); r != nil {
			h.report(&stepError{Step: "helper", Err: fmt.Errorf("exec helper panicked: %v", r)})
			os.Exit(127)
		}
	}()
	if err := h.receive(); err != nil {
		if errors.Is(err, io.EOF) {
			os.Exit(0) // a spare the daemon no longer needs
		}
		h.report(&stepError{Step: "helper.Receive", Err: err})
		os.Exit(127)
	}
	err = h.steps().run(h, nil)
	// Only reached on failure: a successful exec does not return.
	h.report(err)
	os.Exit(127)
}

// receive says it is ready (one byte), then reads the request: an 8-byte
// header (JSON length, file count) carrying the files, then the JSON. It
// blocks until Start sends it.
func (h *helper) receive() error {
	if _, err := unix.Write(h.ctrl, []byte{helperReady}); err != nil {
		return fmt.Errorf("exec helper: say ready: %w", err)
	}
	var hdr [8]byte
	oob := make([]byte, unix.CmsgSpace(4*(3+h.slots)))
	var n, oobn int
	var err error
	for {
		n, oobn, _, _, err = unix.Recvmsg(h.ctrl, hdr[:], oob, unix.MSG_CMSG_CLOEXEC)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("exec helper: receive: %w", err)
	}
	if n == 0 {
		return io.EOF
	}
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return fmt.Errorf("exec helper: receive files: %w", err)
		}
		for _, m := range msgs {
			fds, err := unix.ParseUnixRights(&m)
			if err != nil {
				return fmt.Errorf("exec helper: receive files: %w", err)
			}
			h.files = append(h.files, fds...)
		}
	}
	if n < len(hdr) {
		if err := readFull(h.ctrl, hdr[n:]); err != nil {
			return fmt.Errorf("exec helper: receive: %w", err)
		}
	}
	size, nfiles := binary.LittleEndian.Uint32(hdr[:4]), binary.LittleEndian.Uint32(hdr[4:])
	data := make([]byte, size)
	if err := readFull(h.ctrl, data); err != nil {
		return fmt.Errorf("exec helper: receive spec: %w", err)
	}
	if err := json.Unmarshal(data, &h.req); err != nil {
		return fmt.Errorf("exec helper: decode spec: %w", err)
	}
	h.spec = &h.req.Spec
	if int(nfiles) != len(h.files) || len(h.files) != 2+h.req.Files || h.req.Files > h.slots {
		return fmt.Errorf("exec helper: got %d files for %d extra files (room for %d)", len(h.files), h.req.Files, h.slots)
	}
	return nil
}

// readFull reads len(b) bytes from a blocking fd. The helper keeps the
// control socket away from the runtime poller: it would allocate an epoll
// fd, and the helper must know every fd it has.
func readFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return err
		case n == 0:
			return io.ErrUnexpectedEOF
		}
		b = b[n:]
	}
	return nil
}

// steps is the helper's start-up, in order: namespace and /dev first (as
// root, with the host's /dev still visible), then cgroups, the exec label,
// the credential (which drops the capabilities the steps before needed),
// the working directory (as the final user), the files and the exec.
func (h *helper) steps() steps[*helper] {
	s := h.spec
	return steps[*helper]{}.
		with(s.MountNS != nil, step[*helper]{Name: "helper.MountNS", Fn: func(h *helper) error { return enterMountNS(h.spec.MountNS) }}).
		with(len(s.CgroupProcs) > 0, step[*helper]{Name: "helper.Cgroups", Fn: func(h *helper) error { return joinCgroups(h.spec.CgroupProcs) }}).
		with(s.Label != nil, step[*helper]{Name: "helper.Label", Fn: func(h *helper) error { return applyExecLabel(h.attr, h.spec.Label) }}).
		with(s.Credential != nil, step[*helper]{Name: "helper.Credential", Fn: func(h *helper) error { return setCredential(h.spec.Credential) }}).
		with(s.Dir != "", step[*helper]{Name: "helper.Dir", Fn: func(h *helper) error { return chdir(h.spec.Dir) }}).
		with(true, step[*helper]{Name: "helper.Files", Fn: (*helper).arrangeFiles}).
		with(true, step[*helper]{Name: "helper.Exec", Fn: (*helper).exec})
}

// arrangeFiles puts the received files where the emulator expects them:
// stdin 0, output 1 and 2, ExtraFiles from 3, without close-on-exec. Only
// /dev/null and placeholders are replaced. Every other fd closes at exec:
// unused placeholders, the received originals, the runtime's, and any fd
// the daemon inherited without close-on-exec.
func (h *helper) arrangeFiles() error {
	target := append([]int{h.files[0], h.files[1], h.files[1]}, h.files[2:]...)
	for i, fd := range target {
		if err := unix.Dup3(fd, i, 0); err != nil {
			return fmt.Errorf("files: dup fd %d to %d: %w", fd, i, err)
		}
	}
	if err := unix.CloseRange(uint(len(target)), ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		for fd := len(target); fd < 3+h.slots; fd++ {
			unix.CloseOnExec(fd)
		}
	}
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

// report sends err to Start over the control socket.
func (h *helper) report(err error) {
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
	if _, werr := unix.Write(h.ctrl, data); werr != nil {
		fmt.Fprintf(os.Stderr, "%s: %v (and reporting it failed: %v)\n", HelperArg, err, werr)
	}
}
