package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// SSHServer is an sshd the test runs on a Host, with its own
// configuration, host key and a key pair for root, all in a temporary
// directory: the remote end of a tree used over sshfs.
type SSHServer struct {
	Host *Host
	Port int
	Dir  string // its configuration, keys and log
	Key  string // the client's private key
	cmd  *exec.Cmd
}

// StartSSH starts sshd on h's address and port; it ends with the test.
func StartSSH(t testing.TB, h *Host, port int) *SSHServer {
	t.Helper()
	for _, p := range []string{"/usr/sbin/sshd", "/usr/bin/ssh-keygen", "/usr/bin/sshfs"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s is missing: run scripts/deps.sh (openssh-server, openssh-client, sshfs)", p)
		}
	}
	dir, err := os.MkdirTemp("/tmp", "qfs-ssh-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &SSHServer{Host: h, Port: port, Dir: dir, Key: filepath.Join(dir, "id")}
	for _, k := range []string{"host_key", "id"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	pub, _ := os.ReadFile(s.Key + ".pub")
	os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600)
	conf := fmt.Sprintf(`ListenAddress %s:%d
HostKey %s/host_key
AuthorizedKeysFile %s/authorized_keys
PidFile %s/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
`, h.Addr, port, dir, dir, dir)
	os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(conf), 0o600)
	os.MkdirAll("/run/sshd", 0o755) // privilege separation directory
	log, _ := os.Create(filepath.Join(dir, "sshd.log"))
	s.cmd = exec.Command("nsenter", "--net=/run/netns/"+h.NS, "/usr/sbin/sshd", "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Signal(unix.SIGTERM)
		s.cmd.Wait()
		log.Close()
	})
	// Wait until it listens.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := h.Exec("ss", "-ltn")
		if strings.Contains(out, fmt.Sprintf("%s:%d", h.Addr, port)) {
			return s
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
			t.Fatalf("sshd does not listen on %s:%d: %s", h.Addr, port, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// SSHFS mounts remote (a directory on s's host) at a new mount point with
// sshfs run from host from (its network namespace) and the given -o
// options; it is unmounted when the test ends. It returns the mount point.
func (s *SSHServer) SSHFS(t testing.TB, from *Host, remote string, opts ...string) string {
	t.Helper()
	mp, err := os.MkdirTemp("/tmp", "qfs-sshfs-")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--net=/run/netns/" + from.NS, "sshfs", fmt.Sprintf("root@%s:%s", s.Host.Addr, remote), mp,
		"-p", fmt.Sprint(s.Port),
		"-o", "IdentityFile=" + s.Key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "LogLevel=ERROR"}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	if out, err := exec.Command("nsenter", args...).CombinedOutput(); err != nil {
		os.Remove(mp)
		t.Fatalf("sshfs %s: %v: %s", strings.Join(args, " "), err, out)
	}
	t.Cleanup(func() {
		if err := exec.Command("fusermount3", "-u", mp).Run(); err != nil {
			unix.Unmount(mp, unix.MNT_DETACH)
		}
		os.Remove(mp)
	})
	return mp
}

// Via returns a view of m whose files are reached through dir, the same
// tree mounted elsewhere (over sshfs): every helper (Define, Ctl, State,
// Follow, QMP ...) then goes through it. Cleanup stays with m.
func (m *Mount) Via(dir string) *Mount {
	return &Mount{t: m.t, bin: m.bin, opts: m.opts, Base: m.Base, Root: m.Root, Dir: dir,
		LogDir: m.LogDir, RunDir: m.RunDir, Log: m.Log, pids: map[int]bool{}}
}

// Command returns an ssh command, run from host from, that runs remote (a
// shell command line) on s's host as root.
func (s *SSHServer) Command(from *Host, remote string) *exec.Cmd {
	return exec.Command("nsenter", "--net=/run/netns/"+from.NS, "ssh", "-p", fmt.Sprint(s.Port),
		"-i", s.Key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "root@"+s.Host.Addr, remote)
}

// FollowCmd follows the output of cmd (a stream read elsewhere, e.g. over
// ssh) as Follow does a file; it is stopped when the test ends.
func FollowCmd(t testing.TB, cmd *exec.Cmd) *Follower {
	t.Helper()
	f := &Follower{cmd: cmd, done: make(chan struct{})}
	f.cmd.Stdout = f
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { f.cmd.Wait(); close(f.done) }()
	t.Cleanup(func() { f.Stop() })
	return f
}
