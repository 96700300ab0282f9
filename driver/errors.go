package driver

import "github.com/qemufs/qemufs/internal/errkind"

// The kinds of failure. Every error the driver returns wraps exactly one of
// them, so the filesystem can answer with one errno; the message says the
// rest. They are errkind's, shared with the network driver.
var (
	// ErrInvalid: a bad command, bad XML, a bad name (EINVAL).
	ErrInvalid = errkind.ErrInvalid
	// ErrBusy: the domain is in the wrong state for the request (EBUSY).
	ErrBusy = errkind.ErrBusy
	// ErrNotFound: no such domain (ENOENT).
	ErrNotFound = errkind.ErrNotFound
	// ErrExist: the domain or UUID exists already (EEXIST).
	ErrExist = errkind.ErrExist
	// ErrIO: QEMU or the host failed (EIO).
	ErrIO = errkind.ErrIO
	// ErrNoDevice: the guest lacks the device asked for (ENODEV), e.g. a
	// screenshot of a guest without a display.
	ErrNoDevice = errkind.ErrNoDevice
	// ErrPerm: refused for lack of privilege (EACCES).
	ErrPerm = errkind.ErrPerm
	// ErrInterrupted: the caller gave up waiting (EINTR). What it asked
	// for may still complete.
	ErrInterrupted = errkind.ErrInterrupted
)

// errorf makes an error of kind with a formatted message; a %w verb in the
// format keeps the wrapped error reachable too.
func errorf(kind error, format string, args ...any) error {
	return errkind.Errorf(kind, format, args...)
}

// Kind returns the kind of err: one of the Err* values, ErrIO when unknown.
func Kind(err error) error { return errkind.Of(err) }
