package secrets

import "github.com/qemufs/qemufs/internal/errkind"

// The kinds of failure this package returns (see internal/errkind); in
// one place so that a rename there is one edit here.
var (
	kindInvalid  = errkind.Invalid
	kindNotFound = errkind.NotFound
	kindExist    = errkind.Exist
	kindIO       = errkind.IO
	kindPerm     = errkind.Perm
)
