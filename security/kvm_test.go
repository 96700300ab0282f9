package security

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/security/cgroup"
	"github.com/qemufs/qemufs/security/dac"
)

// TestKVMAccess: whether QEMU's user can open the KVM node, by the node's
// owner and mode against the user, its groups and a private /dev, and the
// owner the private node gets.
func TestKVMAccess(t *testing.T) {
	qemu := dac.Identity{UID: 107, GID: 107, User: "qemu", Group: "qemu"}
	inKVM := qemu
	inKVM.Groups = []uint32{36}
	root := dac.Identity{UID: 0, GID: 0, User: "root", Group: "root"}
	node := func(uid, gid uint32, mode uint32) dac.Owner { return dac.Owner{UID: uid, GID: gid, Mode: fsMode(mode)} }
	give := procmgr.NodeOwner{UID: 107, GID: 107, Mode: 0o600}
	tests := []struct {
		name    string
		id      dac.Identity
		owner   dac.Owner
		private bool
		ok      bool
		give    bool // the private node is given to id
	}{
		{"root-only node, root QEMU", root, node(0, 0, 0o600), false, true, false},
		{"root-only node, qemu", qemu, node(0, 0, 0o600), false, false, true},
		{"root-only node, qemu, private /dev", qemu, node(0, 0, 0o600), true, true, true},
		{"kvm group 0660, qemu not in it", qemu, node(0, 36, 0o660), false, false, true},
		{"kvm group 0660, qemu in it", inKVM, node(0, 36, 0o660), false, true, false},
		{"kvm group 0640, qemu in it (no write)", inKVM, node(0, 36, 0o640), false, false, true},
		{"kvm group 0660 primary gid", dac.Identity{UID: 107, GID: 36, User: "qemu"}, node(0, 36, 0o660), false, true, false},
		{"world 0666", qemu, node(0, 36, 0o666), false, true, false},
		{"world 0604 (no write)", qemu, node(0, 0, 0o604), false, false, true},
		{"owned by qemu 0600", qemu, node(107, 0, 0o600), false, true, false},
		{"owned by qemu 0400", qemu, node(107, 0, 0o400), false, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := kvmAccess(tc.id, tc.owner, KVMDevice, tc.private)
			if (err == nil) != tc.ok {
				t.Errorf("kvmAccess = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && (!strings.Contains(err.Error(), tc.id.User) || !strings.Contains(err.Error(), KVMDevice)) {
				t.Errorf("error %q does not name the user and device", err)
			}
			o, g := kvmOwner(tc.id, tc.owner)
			if g != tc.give {
				t.Errorf("kvmOwner gives = %v, want %v", g, tc.give)
			}
			if g && o != give && tc.id.UID == 107 && tc.id.GID == 107 {
				t.Errorf("private node owner %+v, want %+v", o, give)
			}
		})
	}
}

// TestKVMPrivateNode: only a stack with mount namespaces and /dev/kvm in
// its device ACL gives QEMU its own node.
func TestKVMPrivateNode(t *testing.T) {
	withACL := &Stack{mountNS: true}
	withACL.acl = append(withACL.acl, cgroupDev(KVMDevice))
	if !withACL.privateNode(KVMDevice) {
		t.Error("namespace + ACL: no private node")
	}
	if (&Stack{mountNS: true, acl: nil}).privateNode(KVMDevice) {
		t.Error("KVM outside the ACL counted as a private node")
	}
	noNS := &Stack{}
	noNS.acl = withACL.acl
	if noNS.privateNode(KVMDevice) {
		t.Error("no namespace counted as a private node")
	}
}

func fsMode(m uint32) fs.FileMode { return fs.FileMode(m) }

func cgroupDev(path string) cgroup.Device { return cgroup.Device{Path: path} }

// TestOpenAs opens files as another identity (one discarded thread's
// file-system uid, gid and groups): the kernel's answer by owner, group,
// supplementary group and mode, and the daemon's own identity is left
// alone.
func TestOpenAs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir, err := os.MkdirTemp("/tmp", "openas-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	id := dac.Identity{UID: 4101, GID: 4102, Groups: []uint32{4103}, User: "+4101"}
	for _, tc := range []struct {
		name     string
		uid, gid int
		mode     os.FileMode
		ok       bool
	}{
		{"root-only", 0, 0, 0o600, false},
		{"world rw", 0, 0, 0o666, true},
		{"world r", 0, 0, 0o644, false},
		{"owner", 4101, 0, 0o600, true},
		{"primary group", 0, 4102, 0o660, true},
		{"supplementary group", 0, 4103, 0o660, true},
		{"other group", 0, 4999, 0o660, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chown(p, tc.uid, tc.gid)
			os.Chmod(p, tc.mode)
			err := openAs(id, p)
			if (err == nil) != tc.ok {
				t.Errorf("openAs(%s) = %v, want ok=%v", tc.name, err, tc.ok)
			}
			// The test's own threads are still root.
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Errorf("root cannot open %s after openAs: %v", p, err)
			} else {
				f.Close()
			}
		})
	}
}
