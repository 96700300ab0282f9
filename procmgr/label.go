package procmgr

import (
	"fmt"
	"os"
)

// LSM models understood in ExecLabel.Model.
const (
	ModelSELinux  = "selinux"
	ModelAppArmor = "apparmor"
)

// procAttr is the little the helper needs from /proc/thread-self/attr:
// whether an attribute file exists and writing it. Tests substitute a fake
// because this host has no LSM to accept the writes.
type procAttr interface {
	exists(name string) bool
	write(name string, value []byte) error
}

// threadAttr writes the calling thread's attributes. The helper locks its
// OS thread and execs from it, so the label applies to the exec'ed QEMU.
type threadAttr struct{}

const attrDir = "/proc/thread-self/attr/"

func (threadAttr) exists(name string) bool {
	_, err := os.Stat(attrDir + name)
	return err == nil
}

func (threadAttr) write(name string, value []byte) error {
	f, err := os.OpenFile(attrDir+name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	// The kernel wants the whole value in one write.
	_, err = f.Write(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// applyExecLabel asks the LSM to label the next exec: SELinux takes the
// context in attr/exec; AppArmor takes "exec PROFILE" in attr/apparmor/exec
// (kernels with LSM stacking) or the older attr/exec, as libapparmor's
// aa_change_onexec does.
func applyExecLabel(a procAttr, l *ExecLabel) error {
	if l == nil {
		return nil
	}
	if l.Value == "" {
		return fmt.Errorf("exec label: empty %s label", l.Model)
	}
	var name string
	var value []byte
	switch l.Model {
	case ModelSELinux:
		name, value = "exec", []byte(l.Value)
	case ModelAppArmor:
		name, value = "exec", []byte("exec "+l.Value)
		if a.exists("apparmor/exec") {
			name = "apparmor/exec"
		}
	default:
		return fmt.Errorf("exec label: unknown security model %q", l.Model)
	}
	if err := a.write(name, value); err != nil {
		return fmt.Errorf("exec label: %s %q: write %s%s: %w", l.Model, l.Value, attrDir, name, err)
	}
	return nil
}
