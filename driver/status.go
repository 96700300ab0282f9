package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/security"
)

// status is what a running domain leaves in the run directory so that a
// later daemon can re-attach: which process, what security changed, and the
// live definition.
type status struct {
	Pid         int              `json:"pid"`
	StartTime   uint64           `json:"start_time"`
	State       State            `json:"state"`
	Reason      string           `json:"reason"`
	VNCPort     int              `json:"vnc_port,omitempty"`
	SpicePort   int              `json:"spice_port,omitempty"`
	Console     consoleSource    `json:"console"`
	Autodestroy bool             `json:"autodestroy,omitempty"`
	Security    *security.Record `json:"security,omitempty"`
	Taints      []string         `json:"taints,omitempty"`
	TPM         *tpmStatus       `json:"tpm,omitempty"` // the guest's swtpm
	Live        string           `json:"live"`
	Starting    bool             `json:"starting,omitempty"`  // an unfinished start (startjournal.go)
	Incoming    *incomingStatus  `json:"incoming,omitempty"`  // waiting for an incoming migration
	Transient   bool             `json:"transient,omitempty"` // no persistent definition
}

// incomingStatus is what a restarted daemon needs to take over a guest
// waiting for an incoming migration: its job (for migrate-finish and
// migrate-abort, and the bound on the wait) and what a failure removes.
type incomingStatus struct {
	URI          string   `json:"uri,omitempty"` // where QEMU listens
	CreatedDisks []string `json:"created_disks,omitempty"`
	NBD          string   `json:"nbd,omitempty"`
	Postcopy     bool     `json:"postcopy,omitempty"`
}

// incomingOf is the incomingStatus of dm's incoming migration while its
// guest waits for the source (or is being finished); nil otherwise.
func incomingOf(dm *dom) *incomingStatus {
	j := jobOf(dm)
	if j == nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.outgoing || (j.phase != "starting" && j.phase != "listening" && j.phase != "finishing") {
		return nil
	}
	return &incomingStatus{URI: j.uri, CreatedDisks: j.createdDisks, NBD: j.nbd, Postcopy: j.postcopy}
}

// saveStatus writes the status file. It lives on the run directory, whose
// content does not outlive a reboot, so it skips fsync: rename is enough to
// never leave a torn file.
func (r *run) saveStatus() error {
	r.dm.mu.Lock()
	st := status{State: r.dm.state, Reason: r.dm.reason, Transient: r.dm.def == nil}
	r.dm.mu.Unlock()
	st.Incoming = incomingOf(r.dm)
	r.mu.Lock()
	st.Pid, st.StartTime = r.proc.Pid, r.proc.StartTime
	st.VNCPort, st.SpicePort = r.vncPort, r.spicePort
	st.Autodestroy = r.autodestroy
	st.Security = r.sec
	st.TPM = r.tpmStatus()
	st.Live = string(r.liveXML)
	for t := range r.taints {
		st.Taints = append(st.Taints, t)
	}
	r.mu.Unlock()
	sort.Strings(st.Taints)
	if r.console != nil {
		st.Console = r.console.src
	}
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

// reattachAll finds the guests a previous daemon left running and takes
// them over; the status of a guest that died meanwhile is cleaned up as a
// crash.
func (d *Driver) reattachAll() {
	paths, _ := filepath.Glob(filepath.Join(d.inst.RunDir, "*.status"))
	// A few at a time: a guest whose QEMU does not answer must not
	// delay the others by its whole dial bound.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for _, p := range paths {
		name := strings.TrimSuffix(filepath.Base(p), ".status")
		wg.Add(1)
		sem <- struct{}{}
		go func(name, p string) {
			defer func() { <-sem; wg.Done() }()
			if err := d.reattach(name, p); err != nil {
				d.logf("re-attach %s: %v", name, err)
			}
		}(name, p)
	}
	wg.Wait()
}

func (d *Driver) reattach(name, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var st status
	if err := json.Unmarshal(data, &st); err != nil {
		os.Remove(path)
		return fmt.Errorf("bad status file %s removed: %w", path, err)
	}
	if st.Starting {
		return d.undoStart(name, &st)
	}
	live, err := domain.Parse([]byte(st.Live))
	if err != nil {
		return fmt.Errorf("live definition in %s: %w", path, err)
	}
	d.mu.Lock()
	dm, ok := d.doms[name]
	if !ok {
		dm = d.newDom(name)
		if !st.Transient {
			// Its definition vanished while it ran: keep it manageable.
			dm.def, dm.defXML = live, live.XML()
		}
		d.doms[name] = dm
	}
	d.mu.Unlock()

	r := newRun(d, dm)
	r.live, r.liveXML = live, []byte(st.Live)
	r.vncPort, r.spicePort = st.VNCPort, st.SpicePort
	r.autodestroy = st.Autodestroy
	r.sec = st.Security
	r.reattachTPM(st.TPM)
	for _, t := range st.Taints {
		r.taints[t] = true
	}
	proc, err := procmgr.Attach(st.Pid, st.StartTime)
	if err != nil {
		if !errors.Is(err, procmgr.ErrGone) {
			return err
		}
		d.appendLog(r.files.Log, "QEMU (pid %d) ended while qemufs was not running", st.Pid)
		d.releaseDead(r)
		dm.mu.Lock()
		dm.state, dm.reason = StateShutoff, ReasonCrashed
		dm.lastErr = fmt.Sprintf("QEMU (pid %d) ended while qemufs was not running%s", st.Pid, logTail(r.files.Log))
		dm.mu.Unlock()
		dm.publish(EventStopped, ReasonCrashed)
		return nil
	}
	r.proc = proc
	if r.sec != nil && d.sec != nil {
		if err := d.sec.Reattach(r.sec); err != nil {
			d.logf("re-attach %s: security: %v", name, err)
		}
	}
	if r.vncPort > 0 {
		d.ports.Reserve(r.vncPort)
	}
	if r.spicePort > 0 {
		d.ports.Reserve(r.spicePort)
	}
	ctx, cancel := context.WithTimeout(context.Background(), reattachDialTimeout)
	defer cancel()
	if _, err := d.dialMonitor(ctx, r); err != nil {
		// A QEMU that exists but will not talk (stopped, wedged) is
		// still the guest: keep it, and take it over once it answers
		// (driver/reattach_pending.go).
		return d.reattachPending(dm, r, &st, err)
	}
	return d.finishReattach(ctx, dm, r, &st)
}

// finishReattach takes over a QEMU whose monitor answered: state from QEMU,
// console, supervision, and what the dead daemon missed.
func (d *Driver) finishReattach(ctx context.Context, dm *dom, r *run, st *status) error {
	var err error
	go r.handleEvents()
	state, reason := StateRunning, st.Reason
	var missed func() // an action the dead daemon did not take
	if s, err := r.qmp.QueryStatus(); err == nil && !s.Running {
		state = StatePaused
		if st.State != StatePaused {
			reason = ReasonUnknown
		}
		// -no-shutdown leaves a guest that powered off (or panicked)
		// unseen in QEMU, stopped: honour on_poweroff/on_crash now, as
		// libvirt does when it reconnects.
		switch {
		case s.Status == raw.RunStateShutdown && !(st.State == StatePaused && st.Reason == ReasonShutdown):
			missed = func() { r.onShutdown(shutdownEvent{Guest: true, Reason: "guest-shutdown"}) }
		case s.Status == raw.RunStateGuestPanicked && st.State != StateCrashed:
			missed = r.onPanic
		case s.Status == raw.RunStateGuestPanicked:
			state, reason = StateCrashed, ReasonPanicked
		}
	} else if st.State != StateRunning {
		reason = ReasonUnknown
	}
	if st.Console.Kind != "" {
		r.console, err = openConsole(st.Console, r.files.Console, true)
		if err != nil {
			d.appendLog(r.files.Log, "console: %v", err)
		}
	}
	d.appendLog(r.files.Log, "re-attached by qemufs %s (pid %d)", d.opts.Version, os.Getpid())
	dm.mu.Lock()
	dm.run = r
	dm.state, dm.reason = state, reason
	dm.mu.Unlock()
	d.wg.Add(1)
	go r.supervise()
	if st.Incoming != nil && state == StatePaused && reason == ReasonMigrating {
		d.resumeIncoming(dm, r, st.Incoming)
	}
	if missed != nil {
		d.appendLog(r.files.Log, "the guest stopped while qemufs was not running")
		missed()
	}
	if r.autodestroy {
		// The mount it was tied to has ended.
		dm.op.Lock()
		d.destroy(ctx, dm, ReasonDestroyed)
		dm.op.Unlock()
	}
	return nil
}

// releaseDead removes what a run that died unseen left behind.
func (d *Driver) releaseDead(r *run) {
	r.stopTPM()
	if r.sec != nil && d.sec != nil {
		if err := d.sec.Restore(context.Background(), r.sec); err != nil {
			d.logf("%s: restore security: %v", r.dm.name, err)
		}
	}
	for _, p := range []string{r.files.Status, r.files.QMP, r.files.PidFile} {
		os.Remove(p)
	}
	os.RemoveAll(r.files.DomDir)
}
