package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qemufs/qemufs/procmgr"
)

// A start is journaled in the domain's status file from its first step:
// `"starting": true` with what the start has changed so far (security
// record, swtpm, and once spawned the QEMU's pid and start time). A daemon
// that dies in the middle of a start (found by fault injection,
// docs/reliability.md) thus leaves a record, and the next daemon undoes
// the start instead of leaving an unmanaged QEMU that holds the guest's
// cgroup and blocks every later start. The finished start rewrites the
// file without the flag (saveStatus).

// writeStarting records the start so far. Like saveStatus it skips fsync:
// the run directory does not outlive a reboot, and neither does QEMU.
func (r *run) writeStarting() error {
	st := status{Starting: true, State: StateShutoff, Reason: ReasonStartingUp}
	r.mu.Lock()
	if r.proc != nil {
		st.Pid, st.StartTime = r.proc.Pid, r.proc.StartTime
	}
	st.Security = r.sec
	st.TPM = r.tpmStatus()
	r.mu.Unlock()
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := r.files.Status + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("status file: %w", err)
	}
	return os.Rename(tmp, r.files.Status)
}

// undoStart finishes, the failing way, a start that a previous daemon did
// not finish: its QEMU (if spawned and still the same process) is killed,
// what the start changed is restored, its files are removed, and the
// domain is shut off (failed) with the reason in its error file.
func (d *Driver) undoStart(name string, st *status) error {
	d.mu.Lock()
	dm, ok := d.doms[name]
	if !ok {
		dm = d.newDom(name)
		d.doms[name] = dm
	}
	d.mu.Unlock()
	r := newRun(d, dm)
	r.sec = st.Security
	r.reattachTPM(st.TPM)
	what := "no QEMU had been spawned yet"
	if st.Pid > 0 {
		proc, err := procmgr.Attach(st.Pid, st.StartTime)
		switch {
		case err == nil:
			proc.Kill()
			<-proc.Done()
			what = fmt.Sprintf("its QEMU (pid %d) was killed", st.Pid)
		case errors.Is(err, procmgr.ErrGone):
			what = fmt.Sprintf("its QEMU (pid %d) had ended", st.Pid)
		default:
			return fmt.Errorf("undo the unfinished start: %w", err)
		}
	}
	d.appendLog(r.files.Log, "a start was interrupted by the end of qemufs; %s and the start undone", what)
	d.releaseDead(r)
	dm.mu.Lock()
	if dm.def != nil {
		dm.state, dm.reason = StateShutoff, ReasonFailed
	}
	dm.lastErr = fmt.Sprintf("start %s: interrupted: qemufs ended before the start had finished; %s and the start undone", name, what)
	dm.mu.Unlock()
	return nil
}

// removeSaveTemps removes the temporary images of managed saves that a
// daemon killed mid-save left in lib/qemu/.save (the guest itself is
// re-attached, paused, and the previous image, if any, is untouched). A
// save to a FILE of the user's leaves its temporary next to FILE, in a
// directory qemufs does not own: that one is the user's to remove
// (docs/reliability.md).
func (d *Driver) removeSaveTemps() {
	tmps, _ := filepath.Glob(filepath.Join(filepath.Dir(d.managedSavePath("x")), ".*.save.tmp*"))
	for _, p := range tmps {
		if os.Remove(p) == nil {
			d.logf("removed %s, left by an interrupted managed save", filepath.Base(p))
		}
	}
}
