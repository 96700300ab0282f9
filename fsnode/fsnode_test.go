package fsnode

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/qemufs/qemufs/driver"
)

func TestXMLComplete(t *testing.T) {
	tests := []struct {
		in   string
		want xmlState
	}{
		{"", xmlIncomplete},
		{"<domain type='qemu'>", xmlIncomplete},
		{"<domain><name>a</na", xmlIncomplete},
		{"<domain><name>a</name>", xmlIncomplete},
		{"<domain><name>a</name></domain>", xmlDocument},
		{"<?xml version='1.0'?>\n<domain/>\n", xmlDocument},
		{"<!-- c --><domain/>", xmlDocument},
		{"<domain/><domain/>", xmlBroken},
		{"<domain></name>", xmlBroken},
		{"<domain a='1' a='2'>", xmlIncomplete},
	}
	for _, tt := range tests {
		if got := xmlComplete([]byte(tt.in)); got != tt.want {
			t.Errorf("xmlComplete(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestErrno(t *testing.T) {
	tests := []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{fmt.Errorf("x: %w", driver.ErrInvalid), syscall.EINVAL},
		{driver.ErrBusy, syscall.EBUSY},
		{driver.ErrNotFound, syscall.ENOENT},
		{driver.ErrExist, syscall.EEXIST},
		{driver.ErrNoDevice, syscall.ENODEV},
		{driver.ErrPerm, syscall.EACCES},
		{driver.ErrInterrupted, syscall.EINTR},
		{os.ErrClosed, syscall.EIO},
		{fmt.Errorf("wrapped: %w", syscall.ENOSPC), syscall.ENOSPC},
		{fmt.Errorf("%w: save: %w", driver.ErrIO, syscall.ENOSPC), syscall.ENOSPC},
		{fmt.Errorf("%w: save: monitor: %w", driver.ErrIO, syscall.ECONNRESET), syscall.EIO},
		{fmt.Errorf("%w: save: %w", driver.ErrIO, syscall.EPIPE), syscall.EIO},
	}
	for _, tt := range tests {
		if got := errno(tt.err); got != tt.want {
			t.Errorf("errno(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// caller returns a context as the FUSE server makes it for a request from
// uid/gid; the test process's pid supplies supplementary groups (none that
// match the test's group ids).
func caller(uid, gid uint32) context.Context {
	return &fuse.Context{Caller: fuse.Caller{Owner: fuse.Owner{Uid: uid, Gid: gid}, Pid: 0}}
}

func TestAccess(t *testing.T) {
	session := Access{UID: 1000, GID: 1000, AdminGID: -1, ReadGID: -1}
	system := Access{Shared: true, UID: 0, GID: 50, AdminGID: 50, ReadGID: -1}
	withReaders := Access{Shared: true, UID: 0, GID: 50, AdminGID: 50, ReadGID: 60}
	const rw, ro = 0o664, 0o444
	tests := []struct {
		name   string
		a      Access
		ctx    context.Context
		perm   uint32
		flags  uint32
		want   syscall.Errno
		wantRW bool
	}{
		{"session owner writes", session, caller(1000, 1000), rw, syscall.O_WRONLY, 0, true},
		{"system root writes", system, caller(0, 0), rw, syscall.O_RDWR, 0, true},
		{"system admin group writes", system, caller(1001, 50), rw, syscall.O_WRONLY, 0, true},
		{"system other reads", system, caller(1002, 1002), rw, syscall.O_RDONLY, 0, false},
		{"system other cannot write", system, caller(1002, 1002), rw, syscall.O_WRONLY, syscall.EACCES, false},
		{"system other cannot truncate", system, caller(1002, 1002), rw, syscall.O_RDONLY | syscall.O_TRUNC, syscall.EACCES, false},
		{"read group reads", withReaders, caller(1003, 60), rw, syscall.O_RDONLY, 0, false},
		{"read group cannot write", withReaders, caller(1003, 60), rw, syscall.O_WRONLY, syscall.EACCES, false},
		{"others shut out with a read group", withReaders, caller(1002, 1002), rw, syscall.O_RDONLY, syscall.EACCES, false},
		{"read-only file to admin", system, caller(0, 0), ro, syscall.O_WRONLY, syscall.EACCES, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.check(tt.ctx, tt.perm, tt.flags); got != tt.want {
				t.Errorf("check = %v, want %v", got, tt.want)
			}
		})
	}
	for _, tt := range []struct {
		name string
		a    Access
		ctx  context.Context
		want syscall.Errno
	}{
		{"other lists", system, caller(1002, 1002), 0},
		{"read group lists", withReaders, caller(1003, 60), 0},
		{"others cannot list with a read group", withReaders, caller(1002, 1002), syscall.EACCES},
	} {
		r := NewRoot(&Config{Access: tt.a})
		if got := r.Opendir(tt.ctx); got != tt.want {
			t.Errorf("%s: Opendir = %v, want %v", tt.name, got, tt.want)
		}
	}
	if m := session.mode(0o664); m != 0o600 {
		t.Errorf("session mode %o, want 600", m)
	}
	if m := withReaders.mode(0o664); m != 0o660 {
		t.Errorf("mode with a read group %o, want 660", m)
	}
}

// TestStopSignalPending blocks SIGCHLD-like and SIGUSR1 in a child shell
// and reads its pending set: only a non-benign pending signal counts.
func TestStopSignalPending(t *testing.T) {
	if stopSignalPending(os.Getpid()) {
		t.Fatal("the test process has a stop signal pending")
	}
	if !stopSignalPending(1 << 30) {
		t.Fatal("an unreadable process must count as interrupted")
	}
}
