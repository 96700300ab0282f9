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

// remoteOptions are the sshfs options docs/remote.md asks for, with bin
// (the qemufs binary on the remote host) as the SFTP server.
func remoteOptions(bin string) []string {
	return []string{"direct_io", "dir_cache=no", "attr_timeout=0", "entry_timeout=0", "sshfs_sync",
		"sftp_server=" + bin + " sftp-server"}
}

// TestRemoteTree: a qemufs tree used from another host over sshfs (sshd
// on the remote host's address, the client on the other host), with the
// options of docs/remote.md: the README's session runs through it (define,
// start, state, destroy, rmdir), a ctl error fails the write and its
// reason is in error; streams block, take input while a read of the same
// file blocks, and end; monitor sessions answer, from Go and from a shell's
// exec 3<>. Last, the remote tree is the destination of a live migration
// from an instance on this host.
func TestRemoteTree(t *testing.T) {
	t.Parallel()
	a, b := harness.NewHostPair(t)
	m := harness.Start(t, harness.Options{Wrap: b.Wrap()})
	ssh := harness.StartSSH(t, b, 2222)
	r := m.Via(ssh.SSHFS(t, a, m.Dir, remoteOptions(harness.Bin(t))...))
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

	// Streams and monitor sessions, through sshfs: the console is
	// followed while the same file takes input (a second handle of the
	// same path, which sshfs sends on the same SFTP connection), the events
	// stream blocks and ends, a QMP session answers.
	console := r.Follow("g", "console")
	events := r.Follow("g", "events")
	if err := console.Wait(g.ReadyLine, boot); err != nil {
		t.Fatalf("console through sshfs: %v", err)
	}
	console.WaitBlocked(t)
	if err := r.Send("echo REMOTE-$((6*7))\n", "g", "console"); err != nil {
		t.Fatalf("writing the console through sshfs while it is read: %v", err)
	}
	if err := console.Wait("REMOTE-42", boot); err != nil {
		t.Errorf("console round trip through sshfs: %v", err)
	}
	if st := r.State("g"); st != "running (booted)" {
		t.Errorf("state while two streams are read through sshfs: %q", st)
	}
	if out, err := r.QMP("g", `{"execute":"query-status"}`, time.Minute); err != nil || !strings.Contains(out, `"running"`) {
		t.Errorf("QMP session through sshfs: %q %v", out, err)
	}
	sh := exec.Command("sh", "-c", `exec 3<>`+r.Path("g", "monitor", "qmp")+`; echo '{"execute":"query-name","id":7}' >&3; head -n1 <&3`)
	if out, err := sh.CombinedOutput(); err != nil || !strings.Contains(string(out), `"return": {"name": "g"}`) {
		t.Errorf("a shell's exec 3<> QMP session through sshfs: %q %v", out, err)
	}
	hmp := exec.Command("sh", "-c", `exec 3<>`+r.Path("g", "monitor", "hmp")+`; echo 'info status' >&3; head -n1 <&3`)
	if out, err := hmp.CombinedOutput(); err != nil || !strings.Contains(string(out), "running") {
		t.Errorf("an HMP session through sshfs: %q %v", out, err)
	}

	if err := r.Ctl("g", "destroy"); err != nil {
		t.Fatalf("destroy through sshfs: %v: %s", err, r.ErrorOf("g"))
	}
	if st := r.State("g"); st != "shut off (destroyed)" {
		t.Errorf("state after destroy through sshfs: %q", st)
	}
	if err := console.WaitEnd(time.Minute); err != nil {
		t.Errorf("the console stream did not end through sshfs at destroy: %v", err)
	}
	if err := events.Wait(`"stopped","detail":"destroyed"`, time.Minute); err != nil {
		t.Errorf("events through sshfs: %v", err)
	}
	if err := os.Remove(r.Path("g")); err != nil {
		t.Errorf("rmdir through sshfs: %v", err)
	}
	// events ends when the domain is undefined. (A reader of an idle
	// stream through sshfs cannot be stopped, not even by SIGKILL, until
	// the stream has data or ends: sshfs holds the kernel's request and
	// SFTP cannot cancel a read. docs/remote.md.)
	if err := events.WaitEnd(time.Minute); err != nil {
		t.Errorf("events through sshfs did not end at undefine: %v", err)
	} else if !strings.Contains(events.String(), `"event":"undefined"`) {
		t.Errorf("events through sshfs: no undefined event: %q", events.String())
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
	after := r.Follow("h", "console")
	after.WaitBlocked(t)
	if err := r.Send("echo MOVED-$((6*7))\n", "h", "console"); err != nil {
		t.Fatalf("console through sshfs: %v", err)
	}
	if err := after.Wait("MOVED-42", boot); err != nil {
		t.Errorf("the migrated guest's shell at the remote host: %v", err)
	}
	if err := r.Ctl("h", "destroy"); err != nil {
		t.Errorf("destroy through sshfs: %v", err)
	}
}
