package driver

import (
	"context"
	"fmt"
	"time"
)

// The bound on a destination's wait: a guest prepared for an incoming
// migration ("paused (migrating)") would wait for ever for a source that
// never sends (its daemon killed between the two steps), holding its
// memory and the domain's name here. As libvirt's destination aborts an
// incoming migration whose source went away, the destination aborts it
// itself when no migration data has started arriving within qemu.conf's
// migration_incoming_timeout. Once data arrives the clock no longer
// matters: a migration may take as long as it takes, and QEMU fails an
// incoming stream that breaks by itself.

// resumeIncoming takes over, after a daemon restart, a guest waiting for
// an incoming migration: its job again, so that migrate-finish and
// migrate-abort work and a failure removes the disks made for it, and the
// bound on the wait, counted from now.
func (d *Driver) resumeIncoming(dm *dom, r *run, in *incomingStatus) {
	j := &migrationJob{phase: "listening", started: time.Now(), def: r.live, uri: in.URI,
		createdDisks: in.CreatedDisks, nbd: in.NBD, postcopy: in.Postcopy}
	migrationJobs.Store(dm, j)
	d.appendLog(r.files.Log, "incoming migration: still waiting on %s (taken over by a restarted daemon)", in.URI)
	d.boundIncoming(dm, r, j)
}

// boundIncoming starts the bound on the wait of run r for incoming
// migration j, unless qemu.conf lets it wait for ever.
func (d *Driver) boundIncoming(dm *dom, r *run, j *migrationJob) {
	if timeout := d.incomingTimeout(); timeout > 0 {
		go d.watchIncoming(dm, r, j, timeout)
	}
}

// incomingTimeout is how long a prepared destination waits for the
// source's data; 0 for ever.
func (d *Driver) incomingTimeout() time.Duration {
	return time.Duration(d.conf.MigrationIncomingTimeout) * time.Second
}

// watchIncoming waits timeout for run r of incoming migration j, then
// aborts it unless data has arrived meanwhile (or it finished, failed or
// ended, or the daemon let go of it).
func (d *Driver) watchIncoming(dm *dom, r *run, j *migrationJob, timeout time.Duration) {
	after := d.incomingTimer
	if after == nil {
		after = time.After
	}
	select {
	case <-after(timeout):
	case <-r.done:
		return
	case <-r.detached:
		return
	}
	dm.op.Lock()
	defer dm.op.Unlock()
	dm.mu.Lock()
	cur := dm.run
	dm.mu.Unlock()
	j.mu.Lock()
	phase := j.phase
	j.mu.Unlock()
	if cur != r || jobOf(dm) != j || phase != "listening" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	what, err := r.incomingData(ctx, j)
	if err != nil {
		// Not a reason to end a guest that may be receiving.
		d.appendLog(r.files.Log, "incoming migration: no answer on whether data arrived after %s (%v); not aborting", timeout, err)
		return
	}
	if what != "" {
		d.appendLog(r.files.Log, "incoming migration: data is arriving (%s); the wait is no longer bounded", what)
		return
	}
	why := fmt.Sprintf("incoming migration of %s aborted: no migration data arrived from the source within %s "+
		"(qemu.conf migration_incoming_timeout); the source's daemon may be gone. Nothing had moved: the guest is still at the source",
		dm.name, timeout)
	d.appendLog(r.files.Log, "%s", why)
	d.logf("%s", why)
	if err := d.endIncoming(dm, j, why); err != nil {
		d.appendLog(r.files.Log, "incoming migration: %v", err)
		d.logf("%s: %v", dm.name, err)
		return
	}
	dm.noteError(why)
}

// incomingData says what shows that migration data reaches this waiting
// QEMU: its incoming migration past "setup" (the source's QEMU
// connected), or, with a storage copy, a write to a disk it serves over
// NBD (the source's mirror, which runs before the memory moves). It is ""
// when nothing has arrived.
func (r *run) incomingData(ctx context.Context, j *migrationJob) (string, error) {
	st, err := r.queryMigrateStats(ctx)
	if err != nil {
		return "", fmt.Errorf("query-migrate: %w", err)
	}
	j.set(func(j *migrationJob) { j.stats = st })
	if st.Status != "setup" && st.Status != "none" && st.Status != "" {
		return "QEMU's incoming migration is " + st.Status, nil
	}
	j.mu.Lock()
	copying := j.nbd != ""
	j.mu.Unlock()
	if !copying {
		return "", nil
	}
	// The guest has never run here, so any write to a block node is the
	// source's.
	var nodes []struct {
		NodeName string `json:"node-name"`
		Stats    struct {
			WrHighestOffset int64 `json:"wr_highest_offset"`
		} `json:"stats"`
	}
	if err := r.mon.Execute(ctx, "query-blockstats", map[string]any{"query-nodes": true}, &nodes); err != nil {
		return "", fmt.Errorf("query-blockstats: %w", err)
	}
	for _, n := range nodes {
		if n.Stats.WrHighestOffset > 0 {
			return "the source writes block node " + n.NodeName + " over NBD", nil
		}
	}
	return "", nil
}
