package driver

import (
	"os"

	"github.com/qemufs/qemufs/internal/atomicfile"
)

// writeFileAtomic replaces path with data so that a crash leaves either the
// old or the new content.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return atomicfile.WriteFile(path, data, mode)
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error { return atomicfile.SyncDir(dir) }
