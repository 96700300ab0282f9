package driver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/security/dac"
	"golang.org/x/sys/unix"
)

// TestKVMAccess probes the /dev/kvm check as QEMU's user against files of
// chosen owner, mode and ACL (no KVM guest is started): the system
// instance's qemu:qemu (here uid/gid 107) on a 0600 root device is
// refused, with a reason, before QEMU would be spawned.
func TestKVMAccess(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to give the probe files chosen owners")
	}
	const qemuID, kvmGID, otherID = 107, 36, 2000
	qemu := &procmgr.Credential{UID: qemuID, GID: qemuID}
	inKVM := &procmgr.Credential{UID: qemuID, GID: qemuID, Groups: []uint32{kvmGID}}
	for _, tc := range []struct {
		name     string
		uid, gid int
		mode     os.FileMode
		acl      []dac.ACLEntry
		cred     *procmgr.Credential
		virt     string
		ok       bool
	}{
		{name: "0600 root, qemu user", uid: 0, gid: 0, mode: 0o600, cred: qemu, virt: "kvm"},
		{name: "0600 root, type qemu needs no KVM", uid: 0, gid: 0, mode: 0o600, cred: qemu, virt: "qemu", ok: true},
		{name: "0600 root, QEMU as the daemon (root)", uid: 0, gid: 0, mode: 0o600, cred: nil, virt: "kvm", ok: true},
		{name: "0666", uid: 0, gid: 0, mode: 0o666, cred: qemu, virt: "kvm", ok: true},
		{name: "0660 root:kvm, qemu not in kvm", uid: 0, gid: kvmGID, mode: 0o660, cred: qemu, virt: "kvm"},
		{name: "0660 root:kvm, qemu in kvm", uid: 0, gid: kvmGID, mode: 0o660, cred: inKVM, virt: "kvm", ok: true},
		{name: "0640 root:kvm, read-only for the group", uid: 0, gid: kvmGID, mode: 0o640, cred: inKVM, virt: "kvm"},
		{name: "0600 owned by qemu", uid: qemuID, gid: 0, mode: 0o600, cred: qemu, virt: "kvm", ok: true},
		{name: "ACL grants the qemu user", uid: 0, gid: 0, mode: 0o660, cred: qemu, virt: "kvm", ok: true, acl: []dac.ACLEntry{
			{Tag: dac.ACLUserObj, Perm: 6}, {Tag: dac.ACLUser, Perm: 6, ID: qemuID}, {Tag: dac.ACLGroupObj, Perm: 0},
			{Tag: dac.ACLMask, Perm: 6}, {Tag: dac.ACLOther, Perm: 0}}},
		{name: "ACL mask takes write away", uid: 0, gid: 0, mode: 0o640, cred: qemu, virt: "kvm", acl: []dac.ACLEntry{
			{Tag: dac.ACLUserObj, Perm: 6}, {Tag: dac.ACLUser, Perm: 6, ID: qemuID}, {Tag: dac.ACLGroupObj, Perm: 0},
			{Tag: dac.ACLMask, Perm: 4}, {Tag: dac.ACLOther, Perm: 0}}},
		{name: "ACL grants the kvm group", uid: 0, gid: 0, mode: 0o660, cred: inKVM, virt: "kvm", ok: true, acl: []dac.ACLEntry{
			{Tag: dac.ACLUserObj, Perm: 6}, {Tag: dac.ACLGroupObj, Perm: 0}, {Tag: dac.ACLGroup, Perm: 6, ID: kvmGID},
			{Tag: dac.ACLMask, Perm: 6}, {Tag: dac.ACLOther, Perm: 0}}},
		{name: "ACL for another user only", uid: 0, gid: 0, mode: 0o660, cred: qemu, virt: "kvm", acl: []dac.ACLEntry{
			{Tag: dac.ACLUserObj, Perm: 6}, {Tag: dac.ACLUser, Perm: 6, ID: otherID}, {Tag: dac.ACLGroupObj, Perm: 0},
			{Tag: dac.ACLMask, Perm: 6}, {Tag: dac.ACLOther, Perm: 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := filepath.Join(t.TempDir(), "kvm")
			if err := os.WriteFile(dev, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(dev, tc.uid, tc.gid); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dev, tc.mode); err != nil {
				t.Fatal(err)
			}
			if tc.acl != nil {
				if err := unix.Setxattr(dev, "system.posix_acl_access", dac.EncodeACL(tc.acl), 0); err != nil {
					t.Skipf("this filesystem has no POSIX ACLs: %v", err)
				}
				if got, err := dac.ReadACL(dev); err != nil || len(got) != len(tc.acl) {
					t.Fatalf("ACL read back: %v %v", got, err)
				}
			}
			saved := kvmDevice
			kvmDevice = dev
			defer func() { kvmDevice = saved }()
			d, err := domain.Parse([]byte(`<domain type='` + tc.virt + `'><name>k</name><memory unit='MiB'>64</memory>
			  <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>`))
			if err != nil {
				t.Fatal(err)
			}
			err = checkKVMAccess(d, tc.cred)
			if tc.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted, want a refusal")
			}
			t.Logf("reason: %v", err)
			for _, want := range []string{"domain type 'kvm' needs " + dev, "cannot open read-write", "uid 107, gid 107", tc.mode.String()} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("reason %q lacks %q", err, want)
				}
			}
		})
	}
	// A host without the device is CheckHost's to report.
	saved := kvmDevice
	kvmDevice = filepath.Join(t.TempDir(), "none")
	defer func() { kvmDevice = saved }()
	d, _ := domain.Parse([]byte(`<domain type='kvm'><name>k</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>`))
	if err := checkKVMAccess(d, qemu); err != nil {
		t.Errorf("missing device: %v", err)
	}
}

// TestACLRoundTrip: EncodeACL and ParseACL agree.
func TestACLRoundTrip(t *testing.T) {
	in := []dac.ACLEntry{{Tag: dac.ACLUserObj, Perm: 6}, {Tag: dac.ACLGroup, Perm: 4, ID: 36}, {Tag: dac.ACLOther, Perm: 0}}
	out, err := dac.ParseACL(dac.EncodeACL(in))
	if err != nil || len(out) != 3 || out[1] != in[1] || out[0].Perm != 6 {
		t.Fatalf("round trip: %v %v", out, err)
	}
	if _, err := dac.ParseACL([]byte{1, 0, 0, 0}); err == nil {
		t.Error("version 1 accepted")
	}
}
