package fsnode

import (
	"errors"
	"syscall"

	"github.com/qemufs/qemufs/driver"
)

// errno maps a driver error to the one errno the filesystem answers with.
func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	switch driver.Kind(err) {
	case driver.ErrInvalid:
		return syscall.EINVAL
	case driver.ErrBusy:
		return syscall.EBUSY
	case driver.ErrNotFound:
		return syscall.ENOENT
	case driver.ErrExist:
		return syscall.EEXIST
	case driver.ErrNoDevice:
		return syscall.ENODEV
	case driver.ErrPerm:
		return syscall.EACCES
	case driver.ErrInterrupted:
		return syscall.EINTR
	}
	return syscall.EIO
}
