package secrets

import "github.com/qemufs/qemufs/internal/errkind"

// The kinds of failure this package returns (see internal/errkind); in
// one place so that a rename there is one edit here.
var (
	kindInvalid  = errkind.ErrInvalid
	kindNotFound = errkind.ErrNotFound
	kindExist    = errkind.ErrExist
	kindIO       = errkind.ErrIO
	kindPerm     = errkind.ErrPerm
)
