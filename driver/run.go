package driver

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/monitor"
	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/security"
	"github.com/qemufs/qemufs/stream"
)

// qmpEventsHistory bounds the QMP events kept for monitor/events readers.
const qmpEventsHistory = 256 << 10

// run is one life of QEMU for a domain, from spawn to cleanup.
type run struct {
	d  *Driver
	dm *dom

	proc    *procmgr.Process
	mon     *monitor.Conn
	qmp     *raw.Monitor // go-qemu's typed commands over mon
	console *console
	sec     *security.Record
	files   runFiles
	tpm     *tpmRun // the guest's swtpm (nil: no emulated TPM); see tpm.go

	vncPort     int
	spicePort   int // an autoport SPICE display's port
	autodestroy bool
	resetNVRAM  bool // start --reset-nvram (driver/nvram.go)

	qmpEvents *stream.Log
	evq       *eventQueue

	mu          sync.Mutex // guards the fields below and live
	live        *domain.Domain
	liveXML     []byte
	taints      map[string]bool
	stopReason  string // set by whoever ends the run on purpose
	crashed     bool   // a guest panic ended the run
	shutdown    *shutdownEvent
	fakeReboot  bool
	rebootDone  chan struct{} // closed when a requested reboot completed
	restart     bool          // start again after cleanup (on_* = restart)
	rebootStop  bool          // the next STOP is the guest's power-off in a fake reboot
	pauseReason string        // reason for the next STOP event
	detaching   bool
	passts      []*procmgr.Process // passt for user-mode interfaces; they end with QEMU

	// runState serialises stop/cont and the state that follows with the
	// handling of STOP and RESUME events (runStateChange).
	runState sync.Mutex

	done     chan struct{} // closed when cleanup has finished
	detached chan struct{} // closed to stop supervising without cleanup

	// pendingEnd runs the cleanup of a pending re-attach once
	// (reattach_pending.go).
	pendingEnd sync.Once

	// migWake gets a token on each MIGRATION and MIGRATION_PASS event: a
	// migration waits on it for QEMU's next change instead of polling.
	migWake chan struct{}
}

// shutdownEvent is QEMU's SHUTDOWN event data.
type shutdownEvent struct {
	Guest  bool   `json:"guest"`
	Reason string `json:"reason"`
}

// runFiles are the per-run paths under the instance's directories.
type runFiles struct {
	QMP     string // QMP socket
	DomDir  string // private dir for other sockets and screenshots
	Status  string // status file read at re-attach
	PidFile string
	Log     string
	Console string // console output, kept for history across re-attach
}

func (d *Driver) runFiles(name string) runFiles {
	in := d.inst
	return runFiles{
		QMP:     in.RunDir + "/" + name + ".qmp",
		DomDir:  in.RunDir + "/" + name + ".d",
		Status:  in.RunDir + "/" + name + ".status",
		PidFile: in.LogDir + "/" + name + ".pid",
		Log:     in.LogDir + "/" + name + ".log",
		Console: in.LogDir + "/" + name + ".console",
	}
}

func newRun(d *Driver, dm *dom) *run {
	return &run{
		d: d, dm: dm,
		files:     d.runFiles(dm.name),
		qmpEvents: stream.New(qmpEventsHistory, true),
		evq:       newEventQueue(),
		taints:    map[string]bool{},
		done:      make(chan struct{}),
		detached:  make(chan struct{}),
		migWake:   make(chan struct{}, 1),
	}
}

// onEvent is called by the monitor's reader for every QMP event, in order.
// It must not block: it records the event and hands it to handleEvents.
func (r *run) onEvent(ev monitor.Event) {
	r.qmpEvents.Write(append(append([]byte(nil), ev.Raw...), '\n'))
	if ev.Name == "MIGRATION" || ev.Name == "MIGRATION_PASS" {
		select {
		case r.migWake <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
	r.evq.push(ev)
}

// handleEvents acts on QMP events: state changes and the on_* actions.
// It runs in its own goroutine because acting may need QMP commands, whose
// replies arrive on the reader goroutine that delivers events.
func (r *run) handleEvents() {
	for {
		ev, ok := r.evq.pop()
		if !ok {
			return
		}
		r.handleEvent(ev)
	}
}

func (r *run) handleEvent(ev monitor.Event) {
	dm := r.dm
	switch ev.Name {
	case "STOP":
		r.mu.Lock()
		reason := r.pauseReason
		r.pauseReason = ""
		stopping := r.shutdown != nil || r.stopReason != "" || r.rebootStop
		r.rebootStop = false
		r.mu.Unlock()
		if stopping {
			return // a guest poweroff pauses QEMU (-no-shutdown) on its way out
		}
		if reason == "" {
			reason = ReasonUser
		}
		r.runStateChange(func() error {
			if !r.staleRunState(false) {
				dm.transition(StateRunning, StatePaused, reason, EventPaused)
			}
			return nil
		})
	case "RESUME":
		r.runStateChange(func() error {
			if !r.staleRunState(true) {
				dm.transition(StatePaused, StateRunning, ReasonUnpaused, EventResumed)
			}
			return nil
		})
	case "RESET":
		// One per QEMU RESET, as libvirt's reboot event: after a reset
		// the firmware (SeaBIOS) may reset once more by itself, so a
		// reboot can give two; the detail (QEMU's reason, e.g.
		// host-qmp-system-reset, guest-reset) tells them apart.
		var rs shutdownEvent
		json.Unmarshal(ev.Data, &rs)
		dm.publish(EventRebooted, rs.Reason)
	case "SHUTDOWN":
		var s shutdownEvent
		json.Unmarshal(ev.Data, &s)
		r.onShutdown(s)
	case "GUEST_PANICKED":
		r.onPanic()
	case "VSERPORT_CHANGE":
		r.onVserportChange(ev)
	}
}

// runStateChange runs fn, which stops or continues the guest's CPUs and
// records the state that follows, or handles a STOP or RESUME event, under
// the run's runState lock: the events arrive late, and an operation's stop
// and its new state must never interleave with the handling of an older
// event (a RESUME from start handled after a save paused the guest would
// otherwise mark it running).
func (r *run) runStateChange(fn func() error) error {
	r.runState.Lock()
	defer r.runState.Unlock()
	return fn()
}

// pause stops the guest's CPUs for reason (user, saving, ...): the domain
// becomes paused with it, and the STOP event it causes is that pause.
func (r *run) pause(reason string) error {
	r.mu.Lock()
	r.pauseReason = reason
	r.mu.Unlock()
	return r.runStateChange(func() error {
		if err := r.qmp.Stop(); err != nil {
			return err
		}
		r.dm.transition(StateRunning, StatePaused, reason, EventPaused)
		return nil
	})
}

// staleRunState tells whether a STOP (running false) or RESUME (running
// true) event is already out of date: an operation may have moved the
// guest on before the handler sees the events it caused, and an old event
// must not undo the newer state. QEMU's own answer decides. The caller
// holds runState.
func (r *run) staleRunState(running bool) bool {
	st, err := r.qmp.QueryStatus()
	return err == nil && st.Running != running
}

// onShutdown honours on_poweroff (and on_reboot when QEMU runs with
// -no-reboot) and completes a reboot requested through ctl.
func (r *run) onShutdown(s shutdownEvent) {
	r.mu.Lock()
	fake := r.fakeReboot && s.Guest
	if !fake {
		r.shutdown = &s
	}
	r.mu.Unlock()
	if fake {
		// ctl reboot: the guest shut down; reset and resume instead of
		// letting it stop, as libvirt's fake reboot does, and end running
		// (booted). QEMU stopped the CPUs right after SHUTDOWN, so its STOP
		// event is queued behind this one: it is no user pause.
		if st, err := r.qmp.QueryStatus(); err == nil && !st.Running {
			r.mu.Lock()
			r.rebootStop = true
			r.mu.Unlock()
		}
		err := r.qmp.SystemReset()
		if err == nil {
			err = r.qmp.Cont()
		}
		if err == nil {
			r.dm.mu.Lock()
			if r.dm.run == r {
				r.dm.state, r.dm.reason = StateRunning, ReasonBooted
			}
			r.dm.mu.Unlock()
			r.saveStatus()
		}
		r.mu.Lock()
		r.fakeReboot = false
		if r.rebootDone != nil {
			close(r.rebootDone)
			r.rebootDone = nil
		}
		r.mu.Unlock()
		if err != nil {
			r.dm.noteError(fmt.Sprintf("reboot %s: %v", r.dm.name, err))
		}
		return // the RESET event publishes "rebooted"
	}
	if !s.Guest {
		return // quit or a signal: QEMU exits by itself
	}
	r.dm.publish(EventShutdown, "finished")
	action := r.def().OnPoweroff()
	if s.Reason == "guest-reset" {
		action = r.def().OnReboot()
	}
	switch action {
	case "preserve":
		r.dm.setState(StatePaused, ReasonShutdown)
		return
	case "restart", "rename-restart":
		r.mu.Lock()
		r.restart = true
		r.mu.Unlock()
	}
	r.kill(ReasonShutdown)
}

// onPanic honours on_crash.
func (r *run) onPanic() {
	action := r.def().OnCrash()
	r.dm.publish(EventCrashed, ReasonPanicked)
	r.d.appendLog(r.files.Log, "guest panicked; on_crash is %s", action)
	switch action {
	case "preserve":
		r.dm.setState(StateCrashed, ReasonPanicked)
		return
	case "coredump-destroy", "coredump-restart":
		r.coreDump()
	}
	r.mu.Lock()
	r.crashed = true
	r.restart = action == "restart" || action == "coredump-restart" || action == "rename-restart"
	r.mu.Unlock()
	r.kill(ReasonCrashed)
}

// coreDump writes the guest's memory next to its log, for on_crash=coredump-*.
func (r *run) coreDump() {
	path := r.d.inst.LogDir + "/" + r.dm.name + "." + time.Now().UTC().Format("20060102T150405") + ".core"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err := r.mon.Execute(ctx, "dump-guest-memory", map[string]any{"paging": false, "protocol": "file:" + path}, nil)
	if err != nil {
		r.d.appendLog(r.files.Log, "core dump to %s failed: %v", path, err)
		return
	}
	r.d.appendLog(r.files.Log, "guest memory dumped to %s", path)
}

func (r *run) def() *domain.Domain {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.live
}

// kill ends QEMU on purpose, recording why; supervise does the cleanup.
func (r *run) kill(reason string) {
	r.mu.Lock()
	if r.stopReason == "" {
		r.stopReason = reason
	}
	r.mu.Unlock()
	r.proc.Signal(syscall.SIGTERM)
	go func() {
		select {
		case <-r.proc.Done():
		case <-time.After(10 * time.Second):
			r.proc.Signal(syscall.SIGKILL)
		}
	}()
}

// supervise waits for QEMU to end and cleans up, unless the daemon detaches.
func (r *run) supervise() {
	defer r.d.wg.Done()
	select {
	case <-r.proc.Done():
	case <-r.detached:
		return
	}
	r.cleanup()
}

// cleanup is the one path every end of a run takes: undo security, remove
// runtime files, record the final state and publish it, then honour a
// restart action.
func (r *run) cleanup() {
	dm, d := r.dm, r.d
	// QEMU is gone: let the monitor read what QEMU wrote before it ended
	// (the SHUTDOWN event says why), then stop the event handler.
	select {
	case <-r.mon.Done():
	case <-time.After(2 * time.Second):
	}
	r.mon.Close()
	r.evq.end()
	<-r.evq.closed()
	if r.console != nil {
		r.console.Close()
	}
	r.qmpEvents.Close()

	r.mu.Lock()
	reason := r.stopReason
	crashed := r.crashed
	shutdown := r.shutdown
	restart := r.restart
	r.mu.Unlock()
	if reason == "" || reason == ReasonShutdown && shutdown == nil {
		switch {
		case shutdown != nil && (shutdown.Guest || shutdown.Reason == "host-qmp-quit"):
			reason = ReasonShutdown
		case shutdown != nil && shutdown.Reason == "host-signal":
			reason = ReasonDestroyed
		default:
			reason = ReasonCrashed
		}
	}
	if reason == ReasonCrashed && !crashed {
		msg := fmt.Sprintf("QEMU ended unexpectedly (%s)%s", r.proc.Exit(), logTail(r.files.Log))
		dm.noteError(msg)
	}
	r.stopTPM() // before the cgroup it shares with QEMU goes
	r.stopPassts()
	if r.sec != nil && d.sec != nil {
		if err := d.sec.Restore(context.Background(), r.sec); err != nil {
			d.logf("%s: restore security: %v", dm.name, err)
			d.appendLog(r.files.Log, "restoring security labels failed: %v", err)
		}
	}
	if r.vncPort > 0 {
		d.ports.Release(r.vncPort)
	}
	if r.spicePort > 0 {
		d.ports.Release(r.spicePort)
	}
	for _, p := range []string{r.files.Status, r.files.QMP, r.files.PidFile} {
		os.Remove(p)
	}
	os.RemoveAll(r.files.DomDir)
	d.appendLog(r.files.Log, "shutting down, reason=%s", reason)

	dm.mu.Lock()
	dm.run = nil
	dm.state, dm.reason = StateShutoff, reason
	if dm.def == nil {
		// A transient guest (one that migrated here without
		// --persistent) leaves an empty slot, as libvirt's vanishes.
		dm.state, dm.reason = StateUndefined, ReasonUnknown
	}
	dm.mu.Unlock()
	if crashed {
		dm.publish(EventStopped, ReasonCrashed)
	} else {
		dm.publish(EventStopped, reason)
	}
	close(r.done)

	if restart && reason != ReasonDestroyed {
		d.mu.Lock()
		closing := d.closing
		if !closing {
			d.wg.Add(1)
		}
		d.mu.Unlock()
		if !closing {
			go func() {
				defer d.wg.Done()
				if err := d.Start(context.Background(), dm.name, StartOptions{}); err != nil {
					d.logf("%s: restart: %v", dm.name, err)
				}
			}()
		}
	}
}

// detach stops supervising without touching QEMU: the daemon is going away
// and a later one re-attaches.
func (r *run) detach() {
	r.mu.Lock()
	already := r.detaching
	r.detaching = true
	r.mu.Unlock()
	if already {
		return
	}
	close(r.detached)
	r.mon.Close()
	r.evq.end()
	if r.console != nil {
		r.console.Close()
	}
	r.qmpEvents.Close()
}

// transition moves the domain from state from to state to and publishes
// event, only if it is in from: an operation and the QMP event it causes
// both call it, and exactly one of them publishes.
func (dm *dom) transition(from, to State, reason, event string) bool {
	dm.mu.Lock()
	if dm.state != from || dm.run == nil {
		dm.mu.Unlock()
		return false
	}
	dm.state, dm.reason = to, reason
	dm.mu.Unlock()
	dm.publish(event, reason)
	return true
}

// eventQueue hands events from the monitor reader to the handler without
// ever blocking the reader.
type eventQueue struct {
	mu     sync.Mutex
	items  []monitor.Event
	wake   chan struct{}
	ended  bool
	doneCh chan struct{}
}

func newEventQueue() *eventQueue {
	return &eventQueue{wake: make(chan struct{}, 1), doneCh: make(chan struct{})}
}

func (q *eventQueue) push(ev monitor.Event) {
	q.mu.Lock()
	q.items = append(q.items, ev)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// end makes pop return false once the queue is drained.
func (q *eventQueue) end() {
	q.mu.Lock()
	q.ended = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *eventQueue) pop() (monitor.Event, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			ev := q.items[0]
			q.items = q.items[1:]
			q.mu.Unlock()
			return ev, true
		}
		if q.ended {
			q.mu.Unlock()
			select {
			case <-q.doneCh:
			default:
				close(q.doneCh)
			}
			return monitor.Event{}, false
		}
		q.mu.Unlock()
		<-q.wake
	}
}

// closed is closed once the handler has seen the end of the queue.
func (q *eventQueue) closed() <-chan struct{} { return q.doneCh }
