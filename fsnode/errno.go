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
	if errors.As(err, &e) && !(errors.Is(err, driver.ErrIO) && !storageErrno(e)) {
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

// storageErrno reports whether e says something about the storage a user
// can act on (disk full, quota, read-only), which an I/O failure passes on
// as it is. Any other errno under ErrIO (a QEMU that died mid-command
// gives ECONNRESET or EPIPE on its monitor socket) becomes EIO: it is
// qemufs's conversation with QEMU that failed, not the user's file.
func storageErrno(e syscall.Errno) bool {
	switch e {
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EFBIG:
		return true
	}
	return false
}
