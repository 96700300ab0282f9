// Package sftpserver is an SFTP (version 3) server for one client on a
// pair of pipes, run by ssh as the server end of sshfs
// (`sshfs -o sftp_server='qemufs sftp-server'`). It exists because a
// qemufs tree has files that block: a read of `console` or of a monitor
// session's reply waits until there is something to say. OpenSSH's
// sftp-server serves one request at a time, so one blocked read would hold
// up every other request of the mount, and it seeks before every read,
// which a stream refuses. This server serves each open file in order but
// different files and path requests concurrently, and reads a file that
// cannot seek (a stream) in sequence, at the client's offsets.
package sftpserver

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// maxConcurrent bounds the path requests (stat, open, mkdir ...) served at
// once; reading the next request waits when they are all busy.
const maxConcurrent = 64

// Serve answers the SFTP requests read from r, writing the replies to w,
// until r ends. Files still open then are left to the process's exit.
func Serve(r io.Reader, w io.Writer) error {
	s := &server{w: w, handles: map[string]*handle{}, sem: make(chan struct{}, maxConcurrent)}
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		p, err := readPacket(br)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("sftp: %w", err)
		}
		s.dispatch(p)
	}
}

func readPacket(r io.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size == 0 || size > maxPacket {
		return nil, fmt.Errorf("packet of %d bytes", size)
	}
	p := make([]byte, size)
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return p, nil
}

type server struct {
	wmu sync.Mutex
	w   io.Writer

	mu      sync.Mutex
	handles map[string]*handle
	next    uint64

	sem chan struct{}
}

// handle is one open file or directory. Its requests run in order, one
// at a time, on its own goroutine (serial); different handles run side by
// side.
type handle struct {
	fd   int
	path string
	dir  *os.File // an open directory; fd is then -1
	dots bool     // "." and ".." were listed

	serial serial

	// A file that cannot seek (pread fails with ESPIPE) is read and
	// written in sequence; pos counts the bytes moved through this
	// handle, which is where a client that tracks its offset (sshfs)
	// reads next. A read beyond pos is a read-ahead past a short read:
	// it gets end-of-file at once instead of waiting for data nobody
	// asked for yet.
	stream bool
	pos    uint64
}

// serial runs functions one after another in the order given, on a
// goroutine that lives while there is work.
type serial struct {
	mu      sync.Mutex
	q       []func()
	running bool
}

func (s *serial) do(f func()) {
	s.mu.Lock()
	s.q = append(s.q, f)
	if !s.running {
		s.running = true
		go s.run()
	}
	s.mu.Unlock()
}

func (s *serial) run() {
	for {
		s.mu.Lock()
		if len(s.q) == 0 {
			s.running = false
			s.mu.Unlock()
			return
		}
		f := s.q[0]
		s.q[0] = nil
		s.q = s.q[1:]
		s.mu.Unlock()
		f()
	}
}

func (s *server) send(e *enc) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.w.Write(e.packet()) // a write error ends the session: r ends too
}

func (s *server) status(id uint32, err error) {
	code, msg := uint32(fxOK), ""
	if err != nil {
		code, msg = statusCode(err), err.Error()
	}
	e := newPacket(fxpStatus, id)
	e.u32(code)
	e.str(msg)
	e.str("")
	s.send(e)
}

func (s *server) eof(id uint32) {
	e := newPacket(fxpStatus, id)
	e.u32(fxEOF)
	e.str("end of file")
	e.str("")
	s.send(e)
}

// statusCode maps an error to the nearest of version 3's few codes, as
// OpenSSH's server does; the message carries the error itself.
func statusCode(err error) uint32 {
	var en unix.Errno
	if !errors.As(err, &en) {
		return fxFailure
	}
	switch en {
	case unix.ENOENT:
		return fxNoSuchFile
	case unix.EACCES, unix.EPERM:
		return fxPermissionDenied
	case unix.ENOSYS, unix.EOPNOTSUPP:
		return fxOpUnsupported
	}
	return fxFailure
}

var errBadHandle = errors.New("invalid handle")

// extensions are the OpenSSH extensions offered, with their versions.
var extensions = [][2]string{
	{"posix-rename@openssh.com", "1"},
	{"statvfs@openssh.com", "2"},
	{"hardlink@openssh.com", "1"},
	{"fsync@openssh.com", "1"},
}

func (s *server) dispatch(p []byte) {
	typ, d := p[0], dec{b: p[1:]}
	if typ == fxpInit {
		e := newPacket(fxpVersion, 0)
		e.u32(3)
		for _, x := range extensions {
			e.str(x[0])
			e.str(x[1])
		}
		s.send(e)
		return
	}
	id := d.u32()
	if d.err != nil {
		return // not even an id to answer
	}
	switch typ {
	case fxpRead, fxpWrite, fxpFstat, fxpFsetstat, fxpReaddir, fxpClose:
		s.onHandle(typ, id, d)
		return
	case fxpExtended:
		if pd := (dec{b: d.b}); pd.str() == "fsync@openssh.com" {
			s.onHandle(typ, id, d)
			return
		}
	}
	s.sem <- struct{}{}
	go func() {
		defer func() { <-s.sem }()
		s.pathRequest(typ, id, d)
	}()
}

// onHandle queues a request on the handle it names, behind the handle's
// earlier requests.
func (s *server) onHandle(typ byte, id uint32, d dec) {
	dd := d
	if typ == fxpExtended {
		dd.str()
	}
	name := dd.str()
	s.mu.Lock()
	h := s.handles[name]
	if typ == fxpClose {
		delete(s.handles, name)
	}
	s.mu.Unlock()
	if h == nil || dd.err != nil {
		s.status(id, errBadHandle)
		return
	}
	h.serial.do(func() { s.handleRequest(h, typ, id, dd) })
}

func (s *server) addHandle(h *handle) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	name := strconv.FormatUint(s.next, 10)
	s.handles[name] = h
	return name
}

func (s *server) replyHandle(id uint32, name string) {
	e := newPacket(fxpHandle, id)
	e.str(name)
	s.send(e)
}

func (s *server) handleRequest(h *handle, typ byte, id uint32, d dec) {
	switch typ {
	case fxpRead:
		off, n := d.u64(), d.u32()
		if d.err != nil || h.dir != nil {
			s.status(id, errBadHandle)
			return
		}
		s.read(h, id, off, min(n, maxRead))
	case fxpWrite:
		off, data := d.u64(), d.bytes()
		if d.err != nil || h.dir != nil {
			s.status(id, errBadHandle)
			return
		}
		s.status(id, h.write(off, data))
	case fxpFstat:
		var st unix.Stat_t
		if err := unix.Fstat(h.fileFd(), &st); err != nil {
			s.status(id, err)
			return
		}
		s.replyAttrs(id, &st)
	case fxpFsetstat:
		a := d.attrs()
		if d.err != nil {
			s.status(id, d.err)
			return
		}
		s.status(id, setattrs(a, fdOps(h.fileFd())))
	case fxpReaddir:
		s.readdir(h, id)
	case fxpClose:
		var err error
		if h.dir != nil {
			err = h.dir.Close()
		} else {
			err = unix.Close(h.fd)
		}
		s.status(id, err)
	case fxpExtended: // fsync@openssh.com
		s.status(id, unix.Fsync(h.fileFd()))
	}
}

func (h *handle) fileFd() int {
	if h.dir != nil {
		return int(h.dir.Fd())
	}
	return h.fd
}

func (s *server) read(h *handle, id uint32, off uint64, n uint32) {
	buf := make([]byte, n)
	var k int
	var err error
	if !h.stream {
		k, err = retry(func() (int, error) { return unix.Pread(h.fd, buf, int64(off)) })
		if err == unix.ESPIPE {
			h.stream = true
		}
	}
	if h.stream {
		if off > h.pos {
			s.eof(id)
			return
		}
		k, err = retry(func() (int, error) { return unix.Read(h.fd, buf) })
		if k > 0 {
			h.pos += uint64(k)
		}
	}
	switch {
	case err != nil:
		s.status(id, err)
	case k == 0:
		s.eof(id)
	default:
		e := newPacket(fxpData, id)
		e.data(buf[:k])
		s.send(e)
	}
}

func (h *handle) write(off uint64, data []byte) error {
	for len(data) > 0 {
		var k int
		var err error
		if !h.stream {
			k, err = retry(func() (int, error) { return unix.Pwrite(h.fd, data, int64(off)) })
			if err == unix.ESPIPE {
				h.stream = true
			}
		}
		if h.stream {
			k, err = retry(func() (int, error) { return unix.Write(h.fd, data) })
			if k > 0 {
				h.pos += uint64(k)
			}
		}
		if err != nil {
			return err
		}
		if k == 0 {
			return io.ErrShortWrite
		}
		data, off = data[k:], off+uint64(k)
	}
	return nil
}

// retry repeats a system call that a signal interrupted.
func retry(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}

func (s *server) replyAttrs(id uint32, st *unix.Stat_t) {
	e := newPacket(fxpAttrs, id)
	e.attrs(statAttrs(st))
	s.send(e)
}

func statAttrs(st *unix.Stat_t) attrs {
	return attrs{
		flags: attrSize | attrUIDGID | attrPermissions | attrACModTime,
		size:  uint64(st.Size), uid: st.Uid, gid: st.Gid, perm: st.Mode,
		atime: uint32(st.Atim.Sec), mtime: uint32(st.Mtim.Sec),
	}
}

// readdir lists up to 100 names of an open directory per request.
func (s *server) readdir(h *handle, id uint32) {
	if h.dir == nil {
		s.status(id, errBadHandle)
		return
	}
	var names []string
	if !h.dots {
		h.dots = true
		names = append(names, ".", "..")
	}
	ents, err := h.dir.ReadDir(100)
	if err != nil && err != io.EOF {
		s.status(id, err)
		return
	}
	for _, ent := range ents {
		names = append(names, ent.Name())
	}
	if len(names) == 0 {
		s.eof(id)
		return
	}
	e := newPacket(fxpName, id)
	var body enc
	count := uint32(0)
	for _, name := range names {
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(h.path, name), &st) != nil {
			continue // gone since it was listed
		}
		body.str(name)
		body.str(longName(name, &st))
		body.attrs(statAttrs(&st))
		count++
	}
	e.u32(count)
	e.b = append(e.b, body.b...)
	s.send(e)
}

// longName is the ls -l line version 3 clients show (sshfs does not).
func longName(name string, st *unix.Stat_t) string {
	return fmt.Sprintf("%s %3d %-8d %-8d %8d %s", os.FileMode(st.Mode & 0o777).String()[1:], st.Nlink, st.Uid, st.Gid, st.Size, name)
}

func (s *server) replyName(id uint32, name string) {
	e := newPacket(fxpName, id)
	e.u32(1)
	e.str(name)
	e.str(name)
	e.attrs(attrs{})
	s.send(e)
}

func (s *server) pathRequest(typ byte, id uint32, d dec) {
	p := d.str()
	switch typ {
	case fxpOpen:
		pflags, a := d.u32(), d.attrs()
		if d.err != nil {
			s.status(id, d.err)
			return
		}
		mode := uint32(0o666)
		if a.flags&attrPermissions != 0 {
			mode = a.perm & 0o7777
		}
		fd, err := unix.Open(p, openFlags(pflags)|unix.O_CLOEXEC, mode)
		if err != nil {
			s.status(id, &os.PathError{Op: "open", Path: p, Err: err})
			return
		}
		s.replyHandle(id, s.addHandle(&handle{fd: fd, path: p}))
	case fxpOpendir:
		f, err := os.Open(p)
		if err == nil {
			var fi os.FileInfo
			if fi, err = f.Stat(); err == nil && !fi.IsDir() {
				err = &os.PathError{Op: "opendir", Path: p, Err: unix.ENOTDIR}
			}
			if err != nil {
				f.Close()
			}
		}
		if err != nil {
			s.status(id, err)
			return
		}
		s.replyHandle(id, s.addHandle(&handle{fd: -1, dir: f, path: p}))
	case fxpStat, fxpLstat:
		var st unix.Stat_t
		var err error
		if typ == fxpStat {
			err = unix.Stat(p, &st)
		} else {
			err = unix.Lstat(p, &st)
		}
		if err != nil {
			s.status(id, err)
			return
		}
		s.replyAttrs(id, &st)
	case fxpSetstat:
		a := d.attrs()
		if d.err != nil {
			s.status(id, d.err)
			return
		}
		s.status(id, setattrs(a, pathOps(p)))
	case fxpRemove:
		s.status(id, unix.Unlink(p))
	case fxpMkdir:
		a := d.attrs()
		mode := uint32(0o777)
		if a.flags&attrPermissions != 0 {
			mode = a.perm & 0o7777
		}
		s.status(id, unix.Mkdir(p, mode))
	case fxpRmdir:
		s.status(id, unix.Rmdir(p))
	case fxpRealpath:
		abs, err := filepath.Abs(p)
		if err != nil {
			s.status(id, err)
			return
		}
		s.replyName(id, abs)
	case fxpRename:
		to := d.str()
		// Version 3's rename does not replace (posix-rename does).
		if _, err := os.Lstat(to); err == nil {
			s.status(id, &os.PathError{Op: "rename", Path: to, Err: unix.EEXIST})
			return
		}
		s.status(id, os.Rename(p, to))
	case fxpReadlink:
		target, err := os.Readlink(p)
		if err != nil {
			s.status(id, err)
			return
		}
		s.replyName(id, target)
	case fxpSymlink:
		// OpenSSH's order, which sshfs follows: the target, then the link.
		s.status(id, os.Symlink(p, d.str()))
	case fxpExtended:
		s.extended(id, p, d)
	default:
		s.status(id, &os.SyscallError{Syscall: fmt.Sprintf("request type %d", typ), Err: unix.EOPNOTSUPP})
	}
}

func (s *server) extended(id uint32, name string, d dec) {
	switch name {
	case "posix-rename@openssh.com":
		from, to := d.str(), d.str()
		s.status(id, os.Rename(from, to))
	case "hardlink@openssh.com":
		from, to := d.str(), d.str()
		s.status(id, os.Link(from, to))
	case "statvfs@openssh.com":
		var st unix.Statfs_t
		if err := unix.Statfs(d.str(), &st); err != nil {
			s.status(id, err)
			return
		}
		e := newPacket(fxpExtendedReply, id)
		flag := uint64(0)
		if st.Flags&unix.ST_RDONLY != 0 {
			flag |= 1
		}
		if st.Flags&unix.ST_NOSUID != 0 {
			flag |= 2
		}
		fsid := uint64(uint32(st.Fsid.Val[0])) | uint64(uint32(st.Fsid.Val[1]))<<32
		for _, v := range []uint64{uint64(st.Bsize), uint64(st.Frsize), st.Blocks, st.Bfree, st.Bavail,
			st.Files, st.Ffree, st.Ffree, fsid, flag, uint64(st.Namelen)} {
			e.u64(v)
		}
		s.send(e)
	default:
		s.status(id, &os.SyscallError{Syscall: name, Err: unix.EOPNOTSUPP})
	}
}

func openFlags(pflags uint32) int {
	var f int
	switch pflags & (fxfRead | fxfWrite) {
	case fxfWrite:
		f = unix.O_WRONLY
	case fxfRead | fxfWrite:
		f = unix.O_RDWR
	default:
		f = unix.O_RDONLY
	}
	for _, m := range [][2]int{{fxfAppend, unix.O_APPEND}, {fxfCreat, unix.O_CREAT}, {fxfTrunc, unix.O_TRUNC}, {fxfExcl, unix.O_EXCL}} {
		if pflags&uint32(m[0]) != 0 {
			f |= m[1]
		}
	}
	return f
}

// attrOps sets attributes of a file named by path or by descriptor.
type attrOps struct {
	truncate func(int64) error
	chmod    func(uint32) error
	chown    func(int, int) error
	utimes   func([]unix.Timeval) error
}

func pathOps(p string) attrOps {
	return attrOps{
		truncate: func(n int64) error { return unix.Truncate(p, n) },
		chmod:    func(m uint32) error { return unix.Chmod(p, m) },
		chown:    func(u, g int) error { return unix.Chown(p, u, g) },
		utimes:   func(tv []unix.Timeval) error { return unix.Utimes(p, tv) },
	}
}

func fdOps(fd int) attrOps {
	return attrOps{
		truncate: func(n int64) error { return unix.Ftruncate(fd, n) },
		chmod:    func(m uint32) error { return unix.Fchmod(fd, m) },
		chown:    func(u, g int) error { return unix.Fchown(fd, u, g) },
		utimes:   func(tv []unix.Timeval) error { return unix.Futimes(fd, tv) },
	}
}

// setattrs applies what a SETSTAT names, in OpenSSH's order.
func setattrs(a attrs, op attrOps) error {
	if a.flags&attrSize != 0 {
		if err := op.truncate(int64(a.size)); err != nil {
			return err
		}
	}
	if a.flags&attrPermissions != 0 {
		if err := op.chmod(a.perm & 0o7777); err != nil {
			return err
		}
	}
	if a.flags&attrACModTime != 0 {
		tv := []unix.Timeval{{Sec: int64(a.atime)}, {Sec: int64(a.mtime)}}
		if err := op.utimes(tv); err != nil {
			return err
		}
	}
	if a.flags&attrUIDGID != 0 {
		if err := op.chown(int(a.uid), int(a.gid)); err != nil {
			return err
		}
	}
	return nil
}
