//go:build linux || darwin

package capabilities

import "golang.org/x/sys/unix"

// statKey returns what identifies one version of a file: size, mtime and
// ctime in nanoseconds. ctime catches a replace-in-place that restores the
// old mtime (cp -p, touch -r), since no user can set it.
func statKey(path string) (size, mtime, ctime int64, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, 0, err
	}
	return st.Size, st.Mtim.Nano(), st.Ctim.Nano(), nil
}
