package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// The KVM tests never run a KVM guest's CPUs (this host's /dev/kvm may be
// one that answers but boots nothing): a type='kvm' guest is started
// paused and asked query-kvm; booting is done under TCG.

// hostKVM returns the host's /dev/kvm owner and mode, or skips.
func hostKVM(t *testing.T) syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat("/dev/kvm", &st); err != nil {
		t.Skipf("no /dev/kvm: %v", err)
	}
	return st
}

// qemuCanOpen says whether the qemu account, with its groups, may open a
// node with st's owner and mode read-write.
func qemuCanOpen(t *testing.T, st syscall.Stat_t) bool {
	t.Helper()
	uid, gid := qemuIDs(t)
	out, err := exec.Command("id", "-G", "qemu").Output()
	if err != nil {
		t.Fatal(err)
	}
	groups := strings.Fields(string(out))
	perm := st.Mode & 0o777
	switch {
	case int(st.Uid) == uid:
		return perm&0o600 == 0o600
	case int(st.Gid) == gid || slices.Contains(groups, strconv.Itoa(int(st.Gid))):
		return perm&0o060 == 0o060
	default:
		return perm&0o006 == 0o006
	}
}

func kvmXML(t *testing.T, name string) string {
	return strings.Replace(harness.GuestXML(t, name, guest.ActionNone, ""), "<domain type='qemu'", "<domain type='kvm'", 1)
}

// TestKVMPrivateNode: in a privileged (root-embedded) instance QEMU runs
// as qemu in a private /dev. Its /dev/kvm is qemu's when the host's node
// does not let qemu open it, the host's node is untouched,
// capabilities.xml lists kvm, and a type='kvm' guest starts (paused) with
// KVM enabled: what capabilities.xml says is what starts.
func TestKVMPrivateNode(t *testing.T) {
	host := hostKVM(t)
	qemuUID, qemuGID := qemuIDs(t)
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	if caps := m.Read("capabilities.xml"); !strings.Contains(caps, "<domain type='kvm'") {
		t.Fatalf("capabilities.xml lacks kvm with a private /dev/kvm:\n%s", caps)
	}

	// A TCG guest (booted): its private node.
	m.Boot("g", harness.GuestXML(t, "g", guest.ActionNone, ""))
	pid := m.Pid("g")
	var ns syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/root/dev/kvm", pid), &ns); err != nil {
		t.Fatalf("QEMU's /dev/kvm: %v", err)
	}
	if ns.Rdev != host.Rdev {
		t.Errorf("QEMU's /dev/kvm is device %x, the host's %x", ns.Rdev, host.Rdev)
	}
	if qemuCanOpen(t, host) {
		if ns.Uid != host.Uid || ns.Gid != host.Gid || ns.Mode != host.Mode {
			t.Errorf("QEMU's /dev/kvm %d:%d %o, want the host's %d:%d %o (qemu can open it)", ns.Uid, ns.Gid, ns.Mode, host.Uid, host.Gid, host.Mode)
		}
	} else if int(ns.Uid) != qemuUID || int(ns.Gid) != qemuGID || ns.Mode&0o777 != 0o600 {
		t.Errorf("QEMU's /dev/kvm %d:%d %o, want qemu's %d:%d 0600 (the host's is %d:%d %o)",
			ns.Uid, ns.Gid, ns.Mode&0o777, qemuUID, qemuGID, host.Uid, host.Gid, host.Mode&0o777)
	}
	var after syscall.Stat_t
	syscall.Stat("/dev/kvm", &after)
	if after.Uid != host.Uid || after.Gid != host.Gid || after.Mode != host.Mode {
		t.Errorf("the host's /dev/kvm changed: %d:%d %o", after.Uid, after.Gid, after.Mode)
	}
	m.MustCtl("g", "destroy")

	// A KVM guest starts as qemu, paused, with KVM enabled.
	m.Define("k", kvmXML(t, "k"))
	if err := m.Ctl("k", "start --paused"); err != nil {
		t.Fatalf("start of a type='kvm' guest that capabilities.xml allows: %v: %s\n%s", err, m.ErrorOf("k"), m.QEMULog("k"))
	}
	kpid := m.Pid("k")
	if uid := strings.Fields(procStatus(t, kpid)["Uid"]); len(uid) == 0 || uid[0] != strconv.Itoa(qemuUID) {
		t.Errorf("KVM QEMU runs as %v, want qemu", uid)
	}
	reply, err := m.QMP("k", `{"execute":"query-kvm"}`, time.Minute)
	if err != nil || !strings.Contains(reply, `"enabled": true`) && !strings.Contains(reply, `"enabled":true`) {
		t.Errorf("query-kvm: %s, %v", reply, err)
	}
	m.MustCtl("k", "destroy")
}

// TestKVMNoNamespace: without the private /dev (namespaces = []), QEMU
// opens the host's /dev/kvm as qemu. capabilities.xml lists kvm exactly
// when qemu may open it (its groups and the node's mode, as with a
// distribution's kvm group), and a type='kvm' guest is refused with why
// when it may not.
func TestKVMNoNamespace(t *testing.T) {
	host := hostKVM(t)
	t.Parallel()
	m := harness.Start(t, harness.Options{QEMUConf: "namespaces = []\n"})
	can := qemuCanOpen(t, host)
	caps := m.Read("capabilities.xml")
	if has := strings.Contains(caps, "<domain type='kvm'"); has != can {
		t.Fatalf("capabilities.xml lists kvm: %v; qemu can open /dev/kvm (%d:%d %o): %v", has, host.Uid, host.Gid, host.Mode&0o777, can)
	}
	if err := os.Mkdir(m.Path("k"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := m.Write(kvmXML(t, "k"), "k", "config.xml")
	if can {
		if err != nil {
			t.Fatalf("define: %v: %s", err, m.ErrorOf("k"))
		}
		m.MustCtl("k", "start --paused")
		m.MustCtl("k", "destroy")
		return
	}
	if err == nil {
		// Defined: then the start must say why.
		err = m.Ctl("k", "start --paused")
	}
	msg := m.ErrorOf("k")
	if err == nil || !strings.Contains(msg, "cannot open /dev/kvm") || !strings.Contains(msg, "qemu") {
		t.Errorf("type='kvm' where qemu cannot open /dev/kvm: %v, error %q; want the reason", err, msg)
	}
	if pid := m.Pid("k"); pid != 0 || strings.Contains(m.QEMULog("k"), "qemu-system") {
		t.Errorf("QEMU was spawned for a guest it cannot run (pid %d):\n%s", pid, m.QEMULog("k"))
	}
	if !strings.Contains(m.DaemonLog(), "KVM is not listed in capabilities") {
		t.Errorf("the daemon log does not say why KVM is missing:\n%s", m.DaemonLog())
	}
	if _, statErr := os.Stat(m.Path("k", "state")); statErr == nil {
		if st := m.State("k"); strings.HasPrefix(st, "running") || strings.HasPrefix(st, "paused") {
			t.Errorf("state %q", st)
		}
	}
}
