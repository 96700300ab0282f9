package driver

import (
	"errors"
	"fmt"
)

// The kinds of failure. Every error the driver returns wraps exactly one of
// them, so the filesystem can answer with one errno; the message says the
// rest.
var (
	// ErrInvalid: a bad command, bad XML, a bad name (EINVAL).
	ErrInvalid = errors.New("invalid argument")
	// ErrBusy: the domain is in the wrong state for the request (EBUSY).
	ErrBusy = errors.New("wrong state")
	// ErrNotFound: no such domain (ENOENT).
	ErrNotFound = errors.New("no such domain")
	// ErrExist: the domain or UUID exists already (EEXIST).
	ErrExist = errors.New("already exists")
	// ErrIO: QEMU or the host failed (EIO).
	ErrIO = errors.New("I/O error")
	// ErrNoDevice: the guest lacks the device asked for (ENODEV), e.g. a
	// screenshot of a guest without a display.
	ErrNoDevice = errors.New("no such device")
	// ErrPerm: refused for lack of privilege (EACCES).
	ErrPerm = errors.New("permission denied")
	// ErrInterrupted: the caller gave up waiting (EINTR). What it asked
	// for may still complete.
	ErrInterrupted = errors.New("interrupted")
)

// kinded is an error with a kind and a message free of the kind's text.
type kinded struct {
	kind error
	msg  string
	err  error
}

func (e *kinded) Error() string { return e.msg }

func (e *kinded) Unwrap() []error {
	if e.err != nil {
		return []error{e.kind, e.err}
	}
	return []error{e.kind}
}

// errorf makes an error of kind with a formatted message; a %w verb in the
// format keeps the wrapped error reachable too.
func errorf(kind error, format string, args ...any) error {
	wrapped := fmt.Errorf(format, args...)
	return &kinded{kind: kind, msg: wrapped.Error(), err: errors.Unwrap(wrapped)}
}

// Kind returns the kind of err: one of the Err* values, ErrIO when unknown.
func Kind(err error) error {
	for _, k := range []error{ErrInvalid, ErrBusy, ErrNotFound, ErrExist, ErrNoDevice, ErrPerm, ErrInterrupted, ErrIO} {
		if errors.Is(err, k) {
			return k
		}
	}
	return ErrIO
}
