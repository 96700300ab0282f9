package e2e

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// remoteOptions are the sshfs options docs/remote.md asks for.
var remoteOptions = []string{"direct_io", "dir_cache=no", "attr_timeout=0", "entry_timeout=0", "sshfs_sync"}

// TestRemoteTree: a qemufs tree used from another host over sshfs (sshd
// on the remote host's address, the client on the other host), with the
// options of docs/remote.md: the README's session runs through it (define,
// start, state, destroy, rmdir), a ctl error fails the write and its
// reason is in error; streams and monitor sessions over ssh block, work
// and end. Last, the remote tree is the destination of a live migration
// from an instance on this host.
func TestRemoteTree(t *testing.T) {
	t.Parallel()
	a, b := harness.NewHostPair(t)
	m := harness.Start(t, harness.Options{Wrap: b.Wrap()})
	ssh := harness.StartSSH(t, b, 2222)
	r := m.Via(ssh.SSHFS(t, a, m.Dir, remoteOptions...))
	g := harness.Guest(t)

	if !strings.Contains(r.Read("capabilities.xml"), "<capabilities>") {
		t.Fatalf("capabilities.xml through sshfs: %q", r.Read("capabilities.xml"))
	}
	if err := os.Mkdir(r.Path("g"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := r.Write(harness.GuestXML(t, "g", guest.ActionNone, ""), "g", "config.xml"); err != nil {
		t.Fatalf("define through sshfs: %v: %s", err, r.ErrorOf("g"))
	}
	if st := r.State("g"); st != "shut off (unknown)" {
		t.Errorf("state through sshfs: %q", st)
	}
	if err := r.Ctl("g", "start"); err != nil {
		t.Fatalf("start through sshfs: %v: %s", err, r.ErrorOf("g"))
	}
	if st := r.State("g"); st != "running (booted)" {
		t.Errorf("state after start through sshfs: %q", st)
	}

	// A bad command: the write fails (sshfs reports EIO: SFTP has no code
	// for EINVAL) and error, read through sshfs, has the reason.
	if err := r.Ctl("g", "frobnicate"); err == nil {
		t.Errorf("a bad ctl command succeeded through sshfs")
	} else {
		t.Logf("bad ctl command through sshfs: %v", err)
	}
	if msg := r.ErrorOf("g"); !strings.Contains(msg, `unknown command "frobnicate"`) {
		t.Errorf("error through sshfs: %q", msg)
	}
	out, err := exec.Command("sh", "-c", "echo frobnicate > "+r.Path("g", "ctl")).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Errorf("sh: echo frobnicate > ctl through sshfs did not fail: %v %s", err, out)
	}
	if !strings.Contains(r.Read("g", "live.xml"), "<name>g</name>") || !strings.Contains(r.Read("g", "argv"), "qemu-system") {
		t.Errorf("live.xml/argv through sshfs")
	}

	// Streams and monitor sessions go over ssh itself (docs/remote.md:
	// OpenSSH's sftp-server seeks before every read, which a stream
	// refuses, and serves one request at a time, which a blocking read
	// would hold up): they block, work and end as they do locally.
	console := harness.FollowCmd(t, ssh.Command(a, "cat "+m.Path("g", "console")))
	if err := console.Wait(g.ReadyLine, boot); err != nil {
		t.Fatalf("console over ssh: %v", err)
	}
	send := ssh.Command(a, "printf 'echo REMOTE-$((6*7))\\n' > "+m.Path("g", "console"))
	if out, err := send.CombinedOutput(); err != nil {
		t.Fatalf("writing the console over ssh: %v %s", err, out)
	}
	if err := console.Wait("REMOTE-42", boot); err != nil {
		t.Errorf("console round trip over ssh: %v", err)
	}
	qmp := ssh.Command(a, `exec 3<>`+m.Path("g", "monitor", "qmp")+`; echo '{"execute":"query-status","id":7}' >&3; head -n1 <&3`)
	if out, err := qmp.CombinedOutput(); err != nil || !strings.Contains(string(out), `"running"`) {
		t.Errorf("monitor session over ssh: %q %v", out, err)
	}

	if err := r.Ctl("g", "destroy"); err != nil {
		t.Fatalf("destroy through sshfs: %v: %s", err, r.ErrorOf("g"))
	}
	if st := r.State("g"); st != "shut off (destroyed)" {
		t.Errorf("state after destroy through sshfs: %q", st)
	}
	if err := console.WaitEnd(60 * time.Second); err != nil {
		t.Errorf("the console stream did not end through sshfs at destroy: %v", err)
	}
	if err := os.Remove(r.Path("g")); err != nil {
		t.Errorf("rmdir through sshfs: %v", err)
	}
	if m.Exists("g") {
		t.Errorf("the domain is still listed locally after rmdir through sshfs")
	}

	// The remote tree as a migration destination: an instance on this
	// host moves a guest to the remote host through the sshfs mount.
	local := harness.Start(t, harness.Options{Wrap: a.Wrap()})
	local.Boot("h", harness.GuestXML(t, "h", guest.ActionNone, ""))
	if err := local.Ctl("h", "migrate "+r.Dir+" --live --persistent --uri tcp:"+b.Addr); err != nil {
		t.Fatalf("migrate to the remote tree: %v: %s", err, local.ErrorOf("h"))
	}
	if st := local.State("h"); st != "shut off (migrated)" {
		t.Errorf("source after migrating to the remote tree: %q", st)
	}
	if st := r.State("h"); st != "running (migrated)" {
		t.Errorf("remote state after the migration, through sshfs: %q", st)
	}
	if !strings.Contains(m.Read("h", "config.xml"), "<name>h</name>") {
		t.Errorf("no persistent definition at the remote host after --persistent")
	}
	after := harness.FollowCmd(t, ssh.Command(a, "cat "+m.Path("h", "console")))
	if out, err := ssh.Command(a, "printf 'echo MOVED-$((6*7))\\n' > "+m.Path("h", "console")).CombinedOutput(); err != nil {
		t.Fatalf("console over ssh: %v %s", err, out)
	}
	if err := after.Wait("MOVED-42", boot); err != nil {
		t.Errorf("the migrated guest's shell at the remote host: %v", err)
	}
	if err := r.Ctl("h", "destroy"); err != nil {
		t.Errorf("destroy through sshfs: %v", err)
	}
}
