package driver

import (
	"context"
	"fmt"
	"time"
)

// A guest whose QEMU is alive but does not answer its monitor when a new
// daemon re-attaches (stopped with SIGSTOP, wedged) is still the guest.
// Before, the new daemon gave up after 30 s per such guest, blocking the
// mount that long each, and left the QEMU running unmanaged while the
// domain read "shut off": a lost guest, whose cgroup then refused every
// start (found by TestFaultReattachStopped, docs/reliability.md). Now the
// first attempt is bounded by reattachDialTimeout; after it the domain
// keeps its last known state (reason unknown), shows QEMU's pid, says why
// in error, refuses start (EBUSY) and accepts destroy, while a goroutine
// retries every reattachRetry until the monitor answers (the guest is then
// taken over as usual) or the process ends (it is cleaned up as a crash).

const (
	// reattachDialTimeout bounds one attempt to reach a re-attached
	// QEMU's monitor.
	reattachDialTimeout = 10 * time.Second
	// reattachRetry is the pause between attempts.
	reattachRetry = 5 * time.Second
)

// reattachPending records the run as pending and starts the retries.
func (d *Driver) reattachPending(dm *dom, r *run, st *status, first error) error {
	dm.mu.Lock()
	dm.pending = r
	if dm.def == nil {
		dm.def, dm.defXML = r.live, r.liveXML
	}
	dm.state, dm.reason = st.State, ReasonUnknown
	dm.lastErr = fmt.Sprintf("re-attach pending: QEMU (pid %d) does not answer its monitor (%v); qemufs retries every %v and takes the guest over once it answers, or cleans up once it ends; destroy kills it",
		r.proc.Pid, first, reattachRetry)
	dm.mu.Unlock()
	d.appendLog(r.files.Log, "re-attach pending: QEMU (pid %d) does not answer its monitor: %v", r.proc.Pid, first)
	d.wg.Add(1)
	go d.retryReattach(dm, r, st)
	return nil
}

// retryReattach dials until the monitor answers, the process ends, or
// the driver closes (r.detached).
func (d *Driver) retryReattach(dm *dom, r *run, st *status) {
	defer d.wg.Done()
	for {
		select {
		case <-r.proc.Done():
			d.endPending(dm, r)
			return
		case <-r.detached:
			return
		case <-time.After(reattachRetry):
		}
		ctx, cancel := context.WithTimeout(context.Background(), reattachDialTimeout)
		_, err := d.dialMonitor(ctx, r)
		if err == nil {
			dm.mu.Lock()
			dm.lastErr = ""
			dm.mu.Unlock()
			d.finishReattach(ctx, dm, r, st)
			dm.mu.Lock()
			dm.pending = nil
			dm.mu.Unlock()
			d.appendLog(r.files.Log, "re-attach completed: QEMU (pid %d) answers its monitor again", r.proc.Pid)
			cancel()
			return
		}
		cancel()
	}
}

// endPending cleans up a pending run whose QEMU ended, once: both the
// retry goroutine and destroy come here, the first one does it (the other
// waits for it), and r.done is closed when it is done. (It was a mark in a
// map, removed after the cleanup: the later caller then cleaned up again
// and closed r.done twice, a panic TestFaultReattachStopped hit.)
func (d *Driver) endPending(dm *dom, r *run) {
	r.pendingEnd.Do(func() { d.endPendingOnce(dm, r) })
}

func (d *Driver) endPendingOnce(dm *dom, r *run) {
	defer close(r.done)
	d.releaseDead(r)
	r.mu.Lock()
	reason := r.stopReason
	r.mu.Unlock()
	if reason == "" {
		reason = ReasonCrashed
	}
	dm.mu.Lock()
	dm.pending = nil
	dm.state, dm.reason = StateShutoff, reason
	if reason == ReasonCrashed {
		dm.lastErr = fmt.Sprintf("QEMU (pid %d) ended before it answered its monitor again", r.proc.Pid)
	} else {
		dm.lastErr = ""
	}
	dm.mu.Unlock()
	d.appendLog(r.files.Log, "QEMU (pid %d) ended while its re-attach was pending (%s)", r.proc.Pid, reason)
	dm.publish(EventStopped, reason)
}

// pendingBusy is start's refusal while a re-attach is pending; nil when
// none is. The caller holds dm.mu.
func (dm *dom) pendingBusy(op string) error {
	if dm.pending == nil {
		return nil
	}
	return errorf(ErrBusy, "%s %s: its QEMU (pid %d) is still there, not answering its monitor; wait for the re-attach, or destroy it", op, dm.name, dm.pending.proc.Pid)
}

// destroyPending kills a pending run's QEMU (destroy) and waits for its
// cleanup; false when there is none. The caller holds dm.op.
func (d *Driver) destroyPending(ctx context.Context, dm *dom) (bool, error) {
	dm.mu.Lock()
	r := dm.pending
	dm.mu.Unlock()
	if r == nil {
		return false, nil
	}
	r.mu.Lock()
	r.stopReason = ReasonDestroyed
	r.mu.Unlock()
	r.proc.Kill()
	select {
	case <-r.proc.Done():
		d.endPending(dm, r)
		<-r.done
		return true, nil
	case <-ctx.Done():
		return true, errorf(ErrInterrupted, "destroy %s: interrupted while waiting; QEMU was killed and will end", dm.name)
	}
}

// stopPending ends a pending run's retries when the driver closes; QEMU
// is left alone for the next daemon.
func (dm *dom) stopPending() {
	dm.mu.Lock()
	r := dm.pending
	dm.mu.Unlock()
	if r == nil {
		return
	}
	r.mu.Lock()
	already := r.detaching
	r.detaching = true
	r.mu.Unlock()
	if !already {
		close(r.detached)
	}
}
