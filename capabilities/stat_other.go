//go:build !linux && !darwin

package capabilities

import "os"

// statKey returns size and mtime; this OS gives no portable ctime, so the
// mtime stands in for it.
func statKey(path string) (size, mtime, ctime int64, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, 0, err
	}
	t := fi.ModTime().UnixNano()
	return fi.Size(), t, t, nil
}
