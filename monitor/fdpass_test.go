package monitor

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
)

// TestQEMUExecuteWithFile passes a descriptor to a real QEMU with getfd:
// QEMU holds it under the name (closefd finds it once), and getfd without
// a descriptor fails as QEMU says.
func TestQEMUExecuteWithFile(t *testing.T) {
	q := startQEMU(t)
	c := dialQEMU(t, q, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	f, err := os.CreateTemp(t.TempDir(), "fd")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := c.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "t1"}, nil, f); err != nil {
		t.Fatalf("getfd with a file: %v", err)
	}
	if err := c.Execute(ctx, "closefd", map[string]any{"fdname": "t1"}, nil); err != nil {
		t.Fatalf("closefd of the passed fd: %v", err)
	}
	var qe *Error
	if err := c.Execute(ctx, "closefd", map[string]any{"fdname": "t1"}, nil); !errors.As(err, &qe) {
		t.Fatalf("second closefd: %v, want a QEMU error", err)
	}
	if err := c.Execute(ctx, "getfd", map[string]any{"fdname": "t2"}, nil); !errors.As(err, &qe) || !strings.Contains(qe.Desc, "SCM_RIGHTS") {
		t.Fatalf("getfd without a file: %v", err)
	}
	// Commands keep working after descriptors travelled.
	if err := c.Execute(ctx, "query-status", nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestExecuteWithFileNeedsUnix: a connection that is no UNIX socket says so.
func TestExecuteWithFileNeedsUnix(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := newConn(a, Options{})
	err := c.ExecuteWithFile(context.Background(), "getfd", nil, nil, os.Stdin)
	if !errors.Is(err, ErrNoFDPassing) {
		t.Fatalf("got %v, want ErrNoFDPassing", err)
	}
}
