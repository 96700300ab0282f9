package monitor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// ErrNoFDPassing is returned by ExecuteWithFile on a connection that is not
// a UNIX socket, where file descriptors cannot travel.
var ErrNoFDPassing = errors.New("monitor: file descriptor passing needs a UNIX socket")

// ExecuteWithFile runs command like Execute and sends f's descriptor with
// it (SCM_RIGHTS), for commands that take a file from the client: "getfd"
// (then use "fd:NAME" in e.g. dump-guest-memory) or "add-fd". QEMU receives
// file descriptors on any QMP UNIX socket; unlike go-qemu's RunWithFile this
// does not need the "oob" capability, which is about out-of-band execution,
// not ancillary data. The caller keeps f and closes it when it likes: QEMU
// holds its own duplicate.
func (c *Conn) ExecuteWithFile(ctx context.Context, command string, args any, result any, f *os.File) error {
	if f == nil {
		return fmt.Errorf("%s: no file to pass", command)
	}
	if _, ok := c.nc.(*net.UnixConn); !ok {
		return fmt.Errorf("%s: %w", command, ErrNoFDPassing)
	}
	oob := syscall.UnixRights(int(f.Fd()))
	err := c.execute(ctx, command, args, result, oob)
	// f.Fd() put the file in blocking mode; it must stay open until the
	// command was written, which execute has done by now.
	return err
}

// write sends one command line, with oob as ancillary data on its first
// byte when given.
func (c *Conn) write(line, oob []byte) (int, error) {
	if oob == nil {
		return c.nc.Write(line)
	}
	uc, ok := c.nc.(*net.UnixConn)
	if !ok {
		return 0, ErrNoFDPassing
	}
	n, _, err := uc.WriteMsgUnix(line, oob, nil)
	if err != nil || n == len(line) {
		return n, err
	}
	// A stream socket may take the bytes in parts; the descriptor went
	// with the first part.
	m, err := c.nc.Write(line[n:])
	return n + m, err
}
