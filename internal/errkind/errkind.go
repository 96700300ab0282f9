// Package errkind holds the kinds of failure shared by qemufs's core
// packages (the domain driver, the network driver, ...). Every error they
// return wraps exactly one kind, so the filesystem answers with one errno
// and the message says the rest. Package driver re-exports them.
package errkind

import (
	"errors"
	"fmt"
)

// The kinds of failure.
var (
	// ErrInvalid: a bad command, bad XML, a bad name (EINVAL).
	ErrInvalid = errors.New("invalid argument")
	// ErrBusy: the object is in the wrong state for the request (EBUSY).
	ErrBusy = errors.New("wrong state")
	// ErrNotFound: no such object (ENOENT).
	ErrNotFound = errors.New("no such domain")
	// ErrExist: the object or its UUID exists already (EEXIST).
	ErrExist = errors.New("already exists")
	// ErrIO: QEMU or the host failed (EIO).
	ErrIO = errors.New("I/O error")
	// ErrNoDevice: the guest lacks the device asked for (ENODEV).
	ErrNoDevice = errors.New("no such device")
	// ErrPerm: refused for lack of privilege (EACCES).
	ErrPerm = errors.New("permission denied")
	// ErrInterrupted: the caller gave up waiting (EINTR).
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

// Errorf makes an error of kind with a formatted message; a %w verb in the
// format keeps the wrapped error reachable too.
func Errorf(kind error, format string, args ...any) error {
	wrapped := fmt.Errorf(format, args...)
	return &kinded{kind: kind, msg: wrapped.Error(), err: errors.Unwrap(wrapped)}
}

// Of returns the kind of err: one of the kinds above, ErrIO when unknown.
func Of(err error) error {
	for _, k := range []error{ErrInvalid, ErrBusy, ErrNotFound, ErrExist, ErrNoDevice, ErrPerm, ErrInterrupted, ErrIO} {
		if errors.Is(err, k) {
			return k
		}
	}
	return ErrIO
}
