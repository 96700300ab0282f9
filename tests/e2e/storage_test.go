package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

const (
	secretUUID = "6f1e2a44-9d3c-4b7a-8e21-0c5d7a9b3f10"
	passphrase = "correct horse battery staple"
)

func needQemuImg(t *testing.T) {
	t.Helper()
	for _, b := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed: run scripts/deps.sh (qemu-utils)", b)
		}
	}
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// errnoOf is the errno of a failed file operation.
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	errors.As(err, &e)
	return e
}

// TestStorage goes through the trees as a user does: a secret (private)
// with its value, a dir pool defined, built and started, a raw base
// volume, a qcow2 volume over it, a LUKS volume made with the secret and
// filled with a marker by qemu-io; then a guest with the qcow2 volume as
// <disk type='volume'> and the LUKS image as an encrypted file disk boots,
// sees vda and vdb, and reads the marker through LUKS. The refusals
// change nothing; a missing secret fails the start with its reason.
func TestStorage(t *testing.T) {
	needQemuImg(t)
	m := harness.Start(t, harness.Options{})
	images := filepath.Join(m.Base, "images")

	// The secret: the directory is its UUID, the XML has none.
	mustOK(t, m.DefineObject(`<secret ephemeral='no' private='yes'><description>guest disk</description><usage type='volume'><volume>`+images+`/sec.img</volume></usage></secret>`, "secrets", secretUUID))
	if c := m.Read("secrets", secretUUID, "config.xml"); !strings.Contains(c, "<uuid>"+secretUUID+"</uuid>") || !strings.Contains(c, "private=\"yes\"") {
		t.Fatalf("secret config.xml:\n%s", c)
	}
	mustOK(t, m.Write(passphrase+"\n", "secrets", secretUUID, "value"))
	if _, err := os.ReadFile(m.Path("secrets", secretUUID, "value")); errnoOf(err) != syscall.EACCES {
		t.Fatalf("reading a private value: %v, want EACCES", err)
	}
	if e := m.Read("secrets", secretUUID, "error"); !strings.Contains(e, "private") {
		t.Fatalf("secret error after reading a private value: %q", e)
	}
	// Stored encrypted: the passphrase is in no file of the instance.
	filepath.Walk(m.Root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && fi.Size() < 1<<20 {
			if data, _ := os.ReadFile(p); strings.Contains(string(data), passphrase) {
				t.Errorf("the passphrase is in clear in %s", p)
			}
		}
		return nil
	})
	// The key: the daemon's alone, outside what QEMU's user owns.
	keys, _ := filepath.Glob(filepath.Join(m.Root, "lib", "secrets", "secrets-encryption-key"))
	if len(keys) != 1 {
		t.Fatalf("no key file under %s/lib/secrets", m.Root)
	}
	if fi, err := os.Stat(keys[0]); err != nil || fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != 0 || fi.Size() != 32 {
		t.Fatalf("key file %s: %v %v", keys[0], fi.Mode(), err)
	}
	if err := os.Mkdir(m.Path("secrets", "not-a-uuid"), 0o755); errnoOf(err) != syscall.EINVAL {
		t.Fatalf("mkdir secrets/not-a-uuid: %v, want EINVAL", err)
	}

	// The pool.
	poolXML := `<pool type='dir'><name>p</name><target><path>` + images + `</path></target></pool>`
	mustOK(t, m.DefineObject(poolXML, "pools", "p"))
	if err := m.Write("start\n", "pools", "p", "ctl"); errnoOf(err) != syscall.EINVAL || !strings.Contains(m.Read("pools", "p", "error"), "build") {
		t.Fatalf("start before build: %v (%s)", err, m.Read("pools", "p", "error"))
	}
	mustOK(t, m.Write("build\n", "pools", "p", "ctl"))
	mustOK(t, m.Write("start\n", "pools", "p", "ctl"))
	if s := strings.TrimSpace(m.Read("pools", "p", "state")); s != "running" {
		t.Fatalf("pool state %q", s)
	}
	// Bad XML: EINVAL with the reason, the definition unchanged.
	before := m.Read("pools", "p", "config.xml")
	if err := m.Write(`<pool type='dir'><name>p</name></pool>`, "pools", "p", "config.xml"); errnoOf(err) != syscall.EINVAL {
		t.Fatalf("bad pool XML: %v", err)
	}
	if e := m.Read("pools", "p", "error"); !strings.Contains(e, "<target><path>") {
		t.Fatalf("pool error: %q", e)
	}
	if after := m.Read("pools", "p", "config.xml"); after != before {
		t.Fatalf("a refused pool XML changed the definition:\n%s", after)
	}

	vol := func(name, xml string) error { return m.DefineObject(xml, "pools", "p", "volumes", name) }
	mustOK(t, vol("base.img", `<volume><name>base.img</name><capacity unit='MiB'>16</capacity></volume>`))
	mustOK(t, vol("top.qcow2", `<volume><name>top.qcow2</name><capacity unit='MiB'>32</capacity><target><format type='qcow2'/></target><backingStore><path>`+images+`/base.img</path><format type='raw'/></backingStore></volume>`))
	mustOK(t, vol("sec.img", `<volume><name>sec.img</name><capacity unit='MiB'>8</capacity><target><format type='raw'/><encryption format='luks'><secret type='passphrase' uuid='`+secretUUID+`'/></encryption></target></volume>`))
	if p := strings.TrimSpace(m.Read("pools", "p", "volumes", "top.qcow2", "path")); p != images+"/top.qcow2" {
		t.Fatalf("volume path %q", p)
	}
	top := m.Read("pools", "p", "volumes", "top.qcow2", "config.xml")
	for _, want := range []string{"<capacity unit='bytes'>33554432</capacity>", "<format type='qcow2'/>", "<path>" + images + "/base.img</path>", "<allocation unit='bytes'>"} {
		if !strings.Contains(top, want) {
			t.Errorf("top.qcow2 config.xml lacks %s:\n%s", want, top)
		}
	}
	if err := vol("bad", `<volume><name>bad</name><capacity unit='parsecs'>1</capacity></volume>`); err == nil || !strings.Contains(err.Error(), "unit") {
		t.Fatalf("bad volume XML: %v", err)
	}
	if _, err := os.Stat(filepath.Join(images, "bad")); err == nil {
		t.Fatal("a refused volume made a file")
	}
	mustOK(t, os.Remove(m.Path("pools", "p", "volumes", "bad")))

	// The marker, written through LUKS with the passphrase (from a file:
	// never on a command line).
	pf := filepath.Join(m.Base, "pass")
	mustOK(t, os.WriteFile(pf, []byte(passphrase), 0o600))
	if out, err := exec.Command("qemu-io", "--object", "secret,id=s0,file="+pf, "--image-opts",
		"driver=luks,key-secret=s0,file.filename="+images+"/sec.img", "-c", "write -P 0x5a 0 512").CombinedOutput(); err != nil {
		t.Fatalf("qemu-io write: %v: %s", err, out)
	}

	disks := fmt.Sprintf(`<disk type='volume' device='disk'><source pool='p' volume='top.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s/sec.img'><encryption format='luks' engine='qemu'><secret type='passphrase' uuid='%s'/></encryption></source><target dev='vdb' bus='virtio'/></disk>`, images, secretUUID)
	m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, disks))
	live := m.Read("g", "live.xml")
	if !strings.Contains(live, "<source file=\""+images+"/top.qcow2\"") && !strings.Contains(live, "<source file='"+images+"/top.qcow2'") {
		t.Errorf("live.xml does not show the resolved volume:\n%s", live)
	}
	// The argv file previews the same: the volume's file, the secret
	// objects, no passphrase.
	if argv := m.Read("g", "argv"); !strings.Contains(argv, images+"/top.qcow2") || !strings.Contains(argv, "masterKey0") || strings.Contains(argv, passphrase) {
		t.Errorf("argv file: %s", argv)
	}
	// The passphrase is not on QEMU's command line.
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", m.Pid("g")))
	if strings.Contains(string(cmdline), passphrase) || !strings.Contains(string(cmdline), "masterKey0") {
		t.Errorf("QEMU's command line: %q", cmdline)
	}
	// The resolved volume and its backing file went through DAC like
	// any file disk: QEMU's user has them while it runs, root after.
	owner := func(p string) (uint32, uint32) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return st.Uid, st.Gid
	}
	qemuUID, qemuGID := owner(filepath.Join(m.Root, "lib", "qemu"))
	if qemuUID != 0 {
		for _, f := range []string{"top.qcow2", "sec.img"} {
			if u, _ := owner(filepath.Join(images, f)); u != qemuUID {
				t.Errorf("%s is owned by %d while the guest runs, want QEMU's %d", f, u, qemuUID)
			}
		}
		// The backing file is shared read-only: QEMU's group.
		if _, g := owner(filepath.Join(images, "base.img")); g != qemuGID {
			t.Errorf("base.img has group %d while the guest runs, want QEMU's %d", g, qemuGID)
		}
	}
	// The boot log names vda too: the answer has a marker of its own.
	mustOK(t, m.Send("echo PA''RTS=$(cat /proc/partitions | awk 'NR>2{print $4}' | tr '\\n' ,)\n", "g", "console"))
	m.WaitConsole("g", "PARTS=vda,vdb,", 60*time.Second)
	mustOK(t, m.Send("echo MARK''ER=$(dd if=/dev/vdb bs=512 count=1 2>/dev/null | od -An -tx1 | head -1 | tr -d ' ')\n", "g", "console"))
	m.WaitConsole("g", "MARKER="+strings.Repeat("5a", 16), 60*time.Second)
	m.MustCtl("g", "destroy")
	m.WaitState("g", "shut off (destroyed)", boot)
	for _, f := range []string{"top.qcow2", "base.img", "sec.img"} {
		if u, g := owner(filepath.Join(images, f)); u != 0 || g != 0 {
			t.Errorf("%s is owned by %d:%d after the guest stopped, want root's again", f, u, g)
		}
	}

	// A missing secret fails the start with the reason; nothing runs.
	const missing = "0b0b0b0b-1111-2222-3333-444444444444"
	bad := strings.Replace(disks, secretUUID, missing, 1)
	m.Define("h", harness.GuestXML(t, "h", guest.ActionNone, bad))
	if err := m.Ctl("h", "start"); err == nil || !strings.Contains(m.ErrorOf("h"), missing) {
		t.Fatalf("start with a missing secret: %v (error: %s)", err, m.ErrorOf("h"))
	}
	if s := m.State("h"); !strings.HasPrefix(s, "shut off") {
		t.Fatalf("state after a failed start: %q", s)
	}
	// rmdir deletes a volume's file; a pool in use by nothing is
	// destroyed and undefined.
	mustOK(t, os.Remove(m.Path("pools", "p", "volumes", "sec.img")))
	if _, err := os.Stat(filepath.Join(images, "sec.img")); err == nil {
		t.Fatal("rmdir left the volume's file")
	}
	if err := os.Remove(m.Path("pools", "p")); errnoOf(err) != syscall.EBUSY {
		t.Fatalf("rmdir of an active pool: %v", err)
	}
	mustOK(t, m.Write("destroy\n", "pools", "p", "ctl"))
	mustOK(t, os.Remove(m.Path("pools", "p")))
	mustOK(t, os.Remove(m.Path("secrets", secretUUID)))
}
