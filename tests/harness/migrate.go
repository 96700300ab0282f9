package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// Host is one simulated host of a migration test: a network namespace
// (named, under /run/netns) joined to its peer's by a veth pair. Mounts
// stay shared with the test: both hosts see the same files, as hosts with
// shared storage do.
type Host struct {
	NS   string // the namespace's name (ip netns)
	Dev  string // its end of the veth pair
	Addr string // its address on the pair, without prefix length
}

var hostSeq atomic.Int32

// NewHostPair makes two hosts joined by a veth pair, 10.99.0.1/24 and
// 10.99.0.2/24 (each pair is a network of its own, so pairs of parallel
// tests do not meet); they are removed when the test ends.
func NewHostPair(t testing.TB) (a, b *Host) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests run as root (make test)")
	}
	n := hostSeq.Add(1)
	id := fmt.Sprintf("qfs%d-%d", os.Getpid()%100000, n)
	a = &Host{NS: id + "a", Dev: "v" + id + "a", Addr: "10.99.0.1"}
	b = &Host{NS: id + "b", Dev: "v" + id + "b", Addr: "10.99.0.2"}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", a.NS).Run()
		exec.Command("ip", "netns", "del", b.NS).Run()
	})
	run("ip", "netns", "add", a.NS)
	run("ip", "netns", "add", b.NS)
	run("ip", "link", "add", a.Dev, "netns", a.NS, "type", "veth", "peer", "name", b.Dev, "netns", b.NS)
	for _, h := range []*Host{a, b} {
		run("ip", "-n", h.NS, "link", "set", "lo", "up")
		run("ip", "-n", h.NS, "addr", "add", h.Addr+"/24", "dev", h.Dev)
		run("ip", "-n", h.NS, "link", "set", h.Dev, "up")
	}
	return a, b
}

// Wrap is the command prefix that runs a daemon on this host. It enters
// only the network namespace (nsenter): `ip netns exec` would also make a
// mount namespace of its own, and the daemon's FUSE mount would not reach
// the test.
func (h *Host) Wrap() []string {
	return []string{"nsenter", "--net=/run/netns/" + h.NS}
}

// Exec runs a command on this host and returns its combined output.
func (h *Host) Exec(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", h.NS}, args...)...).CombinedOutput()
	return string(out), err
}

// LinkDown cuts this host's end of the veth pair (a network failure).
func (h *Host) LinkDown() error {
	out, err := exec.Command("ip", "-n", h.NS, "link", "set", h.Dev, "down").CombinedOutput()
	if err != nil {
		return fmt.Errorf("link down: %v: %s", err, out)
	}
	return nil
}

// LinkUp restores this host's end of the veth pair.
func (h *Host) LinkUp() error {
	out, err := exec.Command("ip", "-n", h.NS, "link", "set", h.Dev, "up").CombinedOutput()
	if err != nil {
		return fmt.Errorf("link up: %v: %s", err, out)
	}
	return nil
}

// HiddenWrap is a Wrap that runs the daemon on this host with a private
// view of the directory hidden: in the daemon's own mount namespace an
// empty tmpfs covers it, so the files the test puts there exist for the
// source host but not for this one (storage that is not shared). The
// daemon's FUSE mount still reaches the test: its mount point is made a
// shared mount first, whose mounts propagate back. hidden must be a
// directory of its own (bind-mounted onto itself and made private, so
// the tmpfs stays in the daemon's namespace); cleanup undoes both.
func (h *Host) HiddenWrap(t testing.TB, hidden string) []string {
	t.Helper()
	script := `set -e
mp=$(eval echo \${$#})
mount --bind "$mp" "$mp"
mount --make-shared "$mp"
exec unshare --mount --propagation unchanged sh -c 'mount -t tmpfs -o mode=0755 qfs-hidden "$0" && exec "$@"' "$HIDDEN" "$@"`
	if out, err := exec.Command("mount", "--bind", hidden, hidden).CombinedOutput(); err != nil {
		t.Fatalf("bind %s: %v: %s", hidden, err, out)
	}
	if out, err := exec.Command("mount", "--make-private", hidden).CombinedOutput(); err != nil {
		unix.Unmount(hidden, unix.MNT_DETACH)
		t.Fatalf("make-private %s: %v: %s", hidden, err, out)
	}
	t.Cleanup(func() { unix.Unmount(hidden, unix.MNT_DETACH) })
	return []string{"nsenter", "--net=/run/netns/" + h.NS, "env", "HIDDEN=" + filepath.Clean(hidden), "sh", "-c", script, "sh"}
}
