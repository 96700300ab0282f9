package security

import (
	"slices"

	"github.com/qemufs/qemufs/security/apparmor"
	"github.com/qemufs/qemufs/security/cgroup"
	"github.com/qemufs/qemufs/security/dac"
	"github.com/qemufs/qemufs/security/selinux"
)

// Guest is what the security stack needs to know of a domain to start.
type Guest struct {
	// Name is the domain name (cgroup and messages); UUID names the
	// AppArmor profile.
	Name, UUID string
	// VirtType is the domain type: "kvm" or "qemu" (TCG).
	VirtType string
	// Disks are the local files and block devices of disks, cdroms and
	// floppies (network disks have none), backing files included as
	// read-only disks.
	Disks []Disk
	// Reads are other files QEMU only reads: kernel, initrd, dtb,
	// read-only firmware.
	Reads []string
	// Writes are existing files QEMU writes: nvram, TPM state...
	Writes []string
	// Dirs are the guest's own directories (qemufs made them) that QEMU
	// creates files in: given to QEMU whatever dynamic_ownership says.
	Dirs []string
	// Sockets are files QEMU creates itself (QMP and chardev sockets):
	// AppArmor must allow them; their directories must be reachable.
	Sockets []string
	// Connects are sockets other processes of the guest listen on and
	// QEMU connects to (swtpm's control socket): AppArmor must allow them;
	// their owner is the driver's to set.
	Connects []string
	// SecLabels are the domain's <seclabel> elements.
	SecLabels []SecLabelRequest
	// Tune holds cputune, memtune (bytes) and blkiotune.
	Tune cgroup.Limits
}

// Disk is one local disk source.
type Disk struct {
	Path      string
	ReadOnly  bool
	Shareable bool
	// NoRelabel lists the models a disk-level <seclabel relabel='no'>
	// names ("dac", "selinux").
	NoRelabel []string
}

// SecLabelRequest is one <seclabel> of the domain.
type SecLabelRequest struct {
	// Model is "selinux", "apparmor" or "dac"; empty means the primary
	// LSM driver, as libvirt reads a seclabel without a model.
	Model string
	// Type is "dynamic" (default), "static" or "none".
	Type string
	// Relabel is the relabel attribute (nil: the type's default).
	Relabel *bool
	// Label, ImageLabel and BaseLabel are the child elements.
	Label, ImageLabel, BaseLabel string
}

// SecLabel is a guest's label under one model, for live.xml.
type SecLabel struct {
	Model      string
	Type       string // dynamic, static or none
	Relabel    bool
	Label      string
	ImageLabel string
}

// FileChange is one ownership or label change made for a guest.
type FileChange struct {
	// Model is "dac" or "selinux".
	Model string `json:"model"`
	Path  string `json:"path"`
	// Orig and New owner (dac).
	Orig *dac.Owner `json:"orig,omitempty"`
	New  *dac.Owner `json:"new,omitempty"`
	// OrigLabel and NewLabel (selinux).
	OrigLabel string `json:"orig_label,omitempty"`
	NewLabel  string `json:"new_label,omitempty"`
}

func (c FileChange) key() string { return c.Model + "\x00" + c.Path }

// Record is everything Prepare changed for one guest start. It is plain
// data (JSON) so that the driver can keep it in the guest's status file
// and a restarted daemon can undo it.
type Record struct {
	Name string `json:"name"`
	UUID string `json:"uuid"`
	// Credential is who QEMU runs as (nil: the daemon's own identity).
	Credential *Credential `json:"credential,omitempty"`
	// DAC is the guest's DAC label.
	DAC SecLabel `json:"dac"`
	// Files are the changes to undo, in the order they were made.
	Files []FileChange `json:"files,omitempty"`
	// Cgroup is the guest's cgroup (nil: none).
	Cgroup *cgroup.Group `json:"cgroup,omitempty"`
	// SELinux is the guest's SELinux label (nil: driver inactive).
	SELinux *selinux.Label `json:"selinux,omitempty"`
	// AppArmor is the guest's profile name ("" when inactive) and
	// AppArmorRules its .files, kept to rewrite it when disks change.
	AppArmor      string          `json:"apparmor,omitempty"`
	AppArmorRules []apparmor.Rule `json:"apparmor_rules,omitempty"`
	// Args are extra QEMU arguments (the seccomp sandbox).
	Args []string `json:"args,omitempty"`
	// Devices are the nodes of QEMU's private /dev (nil: no namespace).
	Devices []string `json:"devices,omitempty"`
}

// Credential is a uid, gid and supplementary groups.
type Credential struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
}

// SecLabels returns the guest's labels for live.xml's <seclabel>
// elements: the LSM driver's first, then DAC, as libvirt lists them.
func (r *Record) SecLabels() []SecLabel {
	var out []SecLabel
	if r.SELinux != nil {
		out = append(out, SecLabel{Model: "selinux", Type: r.SELinux.Type, Relabel: r.SELinux.Relabel, Label: r.SELinux.Process, ImageLabel: r.SELinux.Image})
	}
	if r.AppArmor != "" {
		out = append(out, SecLabel{Model: "apparmor", Type: "dynamic", Relabel: true, Label: r.AppArmor, ImageLabel: r.AppArmor})
	}
	return append(out, r.DAC)
}

func hasModel(list []string, m string) bool { return slices.Contains(list, m) }
