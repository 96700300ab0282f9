package storage

import "github.com/qemufs/qemufs/internal/errkind"

// The kinds of failure this package returns (see internal/errkind); in
// one place so that a rename there is one edit here.
var (
	kindInvalid  = errkind.Invalid
	kindBusy     = errkind.Busy
	kindNotFound = errkind.NotFound
	kindExist    = errkind.Exist
	kindIO       = errkind.IO
)
