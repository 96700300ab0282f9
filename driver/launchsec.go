package driver

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/qemufs/qemufs/capabilities"
	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/security/dac"
)

// prepareGuestFiles checks, before anything is spawned, that this host and
// emulator can run the guest's launch security (a confidential guest never
// runs unprotected), then writes the files QEMU reads or maps for it: the
// SEV blobs in the domain's lib directory and the pstore backing file.
// They are owned by the daemon here; the security stack gives them to
// QEMU's user (see securityGuest).
func (d *Driver) prepareGuestFiles(r *run, emu *capabilities.Emulator) error {
	live := r.live
	if err := live.CheckLaunchSecurity(&d.caps.Host, emu); err != nil {
		return err
	}
	home := filepath.Join(d.inst.LibDir, r.dm.name)
	if err := live.WriteLaunchSecurityFiles(home); err != nil {
		return err
	}
	for _, p := range live.PstorePaths() {
		// QEMU sizes the file itself (memory-backend-file); it only has
		// to exist so that the security layer can give it to QEMU's user.
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("pstore backing file: %w", err)
		}
		f.Close()
	}
	return nil
}

// kvmDevice is the KVM device node QEMU opens for type 'kvm'.
var kvmDevice = "/dev/kvm"

// checkKVM reports, before QEMU is spawned, a type 'kvm' guest whose QEMU
// cannot open the KVM device. With a security stack that is the stack's
// answer (which knows when QEMU gets a private /dev whose node is given to
// its user); without one, checkKVMAccess's.
func (d *Driver) checkKVM(live *domain.Domain, cred *procmgr.Credential) error {
	if live.Type() != "kvm" {
		return nil
	}
	if d.sec != nil {
		if err := d.sec.KVMAccess(kvmDevice); err != nil {
			return fmt.Errorf("domain type 'kvm': %w", err)
		}
		return nil
	}
	return checkKVMAccess(live, cred)
}

// checkKVMAccess reports, before QEMU is spawned, a type 'kvm' guest whose
// QEMU user cannot open the KVM device read-write: QEMU would fail with
// "Could not access KVM kernel module: Permission denied". cred is the
// identity the security stack chose (nil: QEMU runs as the daemon).
func checkKVMAccess(live *domain.Domain, cred *procmgr.Credential) error {
	if live.Type() != "kvm" {
		return nil
	}
	return deviceAccess(kvmDevice, identityOf(cred), dac.Read|dac.Write,
		"domain type 'kvm'", "add that user to the device's group (often 'kvm'), or run QEMU as another user/group (qemu.conf user, group)")
}

// identityOf is the identity QEMU runs as: cred, else the daemon's own.
func identityOf(cred *procmgr.Credential) dac.Identity {
	var id dac.Identity
	if cred != nil {
		id.UID, id.GID, id.Groups = cred.UID, cred.GID, cred.Groups
	} else {
		id.UID, id.GID = uint32(os.Getuid()), uint32(os.Getgid())
		gs, _ := os.Getgroups()
		for _, g := range gs {
			id.Groups = append(id.Groups, uint32(g))
		}
	}
	id.User, id.Group = "+"+strconv.Itoa(int(id.UID)), "+"+strconv.Itoa(int(id.GID))
	if u, err := user.LookupId(strconv.Itoa(int(id.UID))); err == nil {
		id.User = u.Username
	}
	if g, err := user.LookupGroupId(strconv.Itoa(int(id.GID))); err == nil {
		id.Group = g.Name
	}
	return id
}

// deviceAccess checks that id may open path with want, by its mode bits
// and POSIX ACL, as the kernel would. A missing path is not its concern
// (CheckHost reports that).
func deviceAccess(path string, id dac.Identity, want dac.Access, who, fix string) error {
	o, _, err := dac.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s needs %s: %w", who, path, err)
	}
	acl, err := dac.ReadACL(path)
	if err != nil {
		return fmt.Errorf("%s needs %s: %w", who, path, err)
	}
	if id.AllowsWithACL(o, acl, want) {
		return nil
	}
	owner, group := strconv.Itoa(int(o.UID)), strconv.Itoa(int(o.GID))
	if u, err := user.LookupId(owner); err == nil {
		owner = u.Username
	}
	if g, err := user.LookupGroupId(group); err == nil {
		group = g.Name
	}
	acls := ""
	if len(acl) > 0 {
		acls = " plus an ACL"
	}
	return fmt.Errorf("%s needs %s, which QEMU's user %s cannot open %s (it is %v %s:%s%s); %s",
		who, path, id, accessWords(want), o.Mode, owner, group, acls, fix)
}

func accessWords(a dac.Access) string {
	switch a {
	case dac.Read | dac.Write:
		return "read-write"
	case dac.Read:
		return "for reading"
	case dac.Write:
		return "for writing"
	}
	return fmt.Sprintf("with access %o", a)
}
