// Package atomicfile replaces files so that a crash leaves either the old
// or the new content, never a mix: every definition and status file of
// qemufs is written this way.
package atomicfile

import (
	"os"
	"path/filepath"

	"github.com/qemufs/qemufs/internal/fault"
)

// WriteFile replaces path with data: temp file, fsync, rename, fsync of
// the directory.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return WriteFileSteps(path, data, mode, "")
}

// WriteFileSteps is WriteFile with test-only fault points (internal/fault)
// named STEP.written, STEP.synced and STEP.renamed after each of its steps,
// so that tests can kill the daemon between them; "" names none.
func WriteFileSteps(path string, data []byte, mode os.FileMode, step string) error {
	point := func(string) {}
	if step != "" && !fault.Unset() {
		point = func(s string) { fault.Point(step + "." + s) }
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	point("written")
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	point("synced")
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	point("renamed")
	return SyncDir(dir)
}

// SyncDir makes a rename or removal in dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
