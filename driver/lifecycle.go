package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/internal/fault"
	"github.com/qemufs/qemufs/monitor"
	"github.com/qemufs/qemufs/procmgr"
)

// StartOptions modify Start.
type StartOptions struct {
	// Paused leaves the guest's CPUs stopped after start.
	Paused bool
	// Autodestroy destroys the guest when the mount ends.
	Autodestroy bool
	// ResetNVRAM recreates the UEFI variable store from its template.
	ResetNVRAM bool
	// ForceBoot discards a managed save image and boots (save.go).
	ForceBoot bool

	// running (restore --running) runs a guest saved while paused.
	running bool
	// incoming, when set, is the saved state to load instead of booting.
	incoming *incoming
	// migrating, when set, is an incoming migration to wait for instead
	// of booting (migrate.go).
	migrating *incomingMigration
}

// ctlCommand is one ctl command: its usage line (for messages and docs)
// and what runs it. args are the words after the command's name.
type ctlCommand struct {
	usage string
	run   func(ctx context.Context, d *Driver, dm *dom, args []string) error
}

// ctlCommands holds every ctl command by name. The lifecycle commands are
// here; the day-2 and secondary-driver commands add themselves from the
// files that implement them (registerCommand in an init function).
var ctlCommands = map[string]ctlCommand{}

// commandOrder keeps the order commands were registered in, for messages.
var commandOrder []string

// registerCommand adds a ctl command; usage starts with the name.
func registerCommand(usage string, run func(ctx context.Context, d *Driver, dm *dom, args []string) error) {
	name, _, _ := strings.Cut(usage, " ")
	if _, dup := ctlCommands[name]; dup {
		panic("driver: ctl command " + name + " registered twice")
	}
	ctlCommands[name] = ctlCommand{usage: usage, run: run}
	commandOrder = append(commandOrder, name)
}

// Commands lists the usage of every ctl command, for messages and docs.
func Commands() []string {
	out := make([]string, len(commandOrder))
	for i, n := range commandOrder {
		out[i] = ctlCommands[n].usage
	}
	return out
}

// errBadArgs is returned by a command's run for arguments it cannot use;
// Control turns it into a message with the command's usage.
var errBadArgs = errors.New("bad arguments")

// noArgs wraps a command that takes no arguments.
func noArgs(fn func(ctx context.Context, d *Driver, dm *dom) error) func(context.Context, *Driver, *dom, []string) error {
	return func(ctx context.Context, d *Driver, dm *dom, args []string) error {
		if len(args) > 0 {
			return errBadArgs
		}
		return fn(ctx, d, dm)
	}
}

func init() {
	registerCommand("start [--paused] [--autodestroy] [--reset-nvram] [--force-boot]", func(ctx context.Context, d *Driver, dm *dom, args []string) error {
		var o StartOptions
		for _, a := range args {
			switch a {
			case "--paused":
				o.Paused = true
			case "--autodestroy":
				o.Autodestroy = true
			case "--reset-nvram":
				o.ResetNVRAM = true
			case "--force-boot":
				o.ForceBoot = true
			default:
				return errBadArgs
			}
		}
		return d.startLocked(ctx, dm, o)
	})
	registerCommand("shutdown [--timeout=N] [--mode=acpi|agent|acpi,agent]", func(ctx context.Context, d *Driver, dm *dom, args []string) error {
		var timeout time.Duration
		var modes []string
		for _, a := range args {
			if v, ok := strings.CutPrefix(a, "--mode="); ok {
				m, err := parseModes("shutdown", dm.name, v)
				if err != nil {
					return err
				}
				modes = m
				continue
			}
			v, ok := strings.CutPrefix(a, "--timeout=")
			n, err := strconv.Atoi(v)
			if !ok || err != nil || n < 0 {
				return errBadArgs
			}
			timeout = time.Duration(n) * time.Second
		}
		if usesAgent(modes) {
			return d.shutdownModes(ctx, dm, modes, timeout)
		}
		return d.shutdown(ctx, dm, timeout)
	})
	registerCommand("destroy", noArgs(func(ctx context.Context, d *Driver, dm *dom) error {
		dm.op.Lock()
		defer dm.op.Unlock()
		return d.destroy(ctx, dm, ReasonDestroyed)
	}))
	registerCommand("reboot [--mode=acpi|agent|acpi,agent]", func(ctx context.Context, d *Driver, dm *dom, args []string) error {
		var modes []string
		for _, a := range args {
			v, ok := strings.CutPrefix(a, "--mode=")
			if !ok {
				return errBadArgs
			}
			m, err := parseModes("reboot", dm.name, v)
			if err != nil {
				return err
			}
			modes = m
		}
		if usesAgent(modes) {
			return d.rebootModes(ctx, dm, modes)
		}
		return d.reboot(ctx, dm)
	})
	registerCommand("reset", noArgs(func(ctx context.Context, d *Driver, dm *dom) error {
		return d.simple(dm, "reset", func(r *run) error { return r.qmp.SystemReset() })
	}))
	registerCommand("suspend", noArgs(func(ctx context.Context, d *Driver, dm *dom) error {
		return d.simple(dm, "suspend", func(r *run) error {
			if err := r.pause(ReasonUser); err != nil {
				return err
			}
			r.saveStatus()
			return nil
		})
	}))
	registerCommand("resume", noArgs(func(ctx context.Context, d *Driver, dm *dom) error {
		return d.simple(dm, "resume", func(r *run) error {
			if err := r.runStateChange(func() error {
				if err := r.qmp.Cont(); err != nil {
					return err
				}
				dm.transition(StatePaused, StateRunning, ReasonUnpaused, EventResumed)
				return nil
			}); err != nil {
				return err
			}
			r.saveStatus()
			return nil
		})
	}))
	registerCommand("autostart on|off", func(ctx context.Context, d *Driver, dm *dom, args []string) error {
		if len(args) != 1 || args[0] != "on" && args[0] != "off" {
			return errBadArgs
		}
		return d.setAutostart(dm, args[0] == "on")
	})
}

// Control runs one ctl command line, synchronously.
func (d *Driver) Control(ctx context.Context, name, line string) (err error) {
	dm, err := d.lookup(name)
	if err != nil {
		return err
	}
	defer func() { dm.noteResult(err) }()
	line = strings.TrimRight(line, "\r\n\t ")
	if strings.ContainsAny(line, "\n") {
		return errorf(ErrInvalid, "%s: one command per write, got %q", name, line)
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return errorf(ErrInvalid, "%s: empty command; commands: %s", name, strings.Join(Commands(), ", "))
	}
	cmd, args := f[0], f[1:]
	c, ok := ctlCommands[cmd]
	if !ok {
		return errorf(ErrInvalid, "%s: unknown command %q; commands: %s", name, cmd, strings.Join(Commands(), ", "))
	}
	err = c.run(ctx, d, dm, args)
	if errors.Is(err, errBadArgs) {
		return errorf(ErrInvalid, "%s: bad arguments for %s: %q; usage: %s", name, cmd, strings.Join(args, " "), c.usage)
	}
	return err
}

// activeRun returns the domain's run, or an ErrBusy error naming op.
func (dm *dom) activeRun(op string) (*run, error) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	if dm.run == nil {
		if dm.def == nil {
			return nil, errorf(ErrInvalid, "%s %s: the domain is not defined", op, dm.name)
		}
		return nil, errorf(ErrBusy, "%s %s: the domain is not running", op, dm.name)
	}
	return dm.run, nil
}

// simple runs a quick QMP operation on an active domain.
func (d *Driver) simple(dm *dom, op string, fn func(r *run) error) error {
	dm.op.Lock()
	defer dm.op.Unlock()
	r, err := dm.activeRun(op)
	if err != nil {
		return err
	}
	if err := fn(r); err != nil {
		return errorf(ErrIO, "%s %s: %w", op, dm.name, err)
	}
	return nil
}

// Start starts a defined, shut-off domain.
func (d *Driver) Start(ctx context.Context, name string, o StartOptions) (err error) {
	dm, err := d.lookup(name)
	if err != nil {
		return err
	}
	defer func() { dm.noteResult(err) }()
	return d.startLocked(ctx, dm, o)
}

func (d *Driver) startLocked(ctx context.Context, dm *dom, o StartOptions) error {
	// A start is short and bounded by its own timeouts, so it runs to its
	// end even when the caller is interrupted: a writer that retries after
	// EINTR finds the guest started rather than a half-undone start. (The
	// filesystem already ignores interrupts from benign signals such as
	// SIGCHLD; see fsnode's userInterrupts.)
	ctx = context.WithoutCancel(ctx)
	dm.op.Lock()
	defer dm.op.Unlock()
	dm.mu.Lock()
	def, active, pending := dm.def, dm.run != nil, dm.pendingBusy("start")
	dm.mu.Unlock()
	if pending != nil {
		return pending
	}
	if def == nil {
		return errorf(ErrInvalid, "start %s: the domain is not defined: write its config.xml first", dm.name)
	}
	if active {
		return errorf(ErrBusy, "start %s: the domain is already running", dm.name)
	}
	if handled, err := d.startManagedSave(ctx, dm, def, o); handled {
		return err
	}
	if err := d.start(ctx, dm, def, o); err != nil {
		dm.mu.Lock()
		if dm.run == nil {
			dm.state, dm.reason = StateShutoff, ReasonFailed
		}
		dm.mu.Unlock()
		return err
	}
	return nil
}

// start spawns QEMU for def and brings it to running (or paused). On any
// failure it leaves nothing behind: no process, no files, no labels.
func (d *Driver) start(ctx context.Context, dm *dom, def *domain.Domain, o StartOptions) (err error) {
	name := dm.name
	emu, _, err := d.caps.Lookup(def.Arch(), def.Type(), def.Machine(), def.Emulator())
	if err != nil {
		return errorf(ErrInvalid, "start %s: %w", name, err)
	}
	r := newRun(d, dm)
	r.autodestroy = o.Autodestroy
	r.resetNVRAM = o.ResetNVRAM
	r.live = def.Clone()
	prepareChannels(r)
	if err := d.checkCaller(ctx, r); err != nil { // driver/caller.go
		return err
	}
	f := r.files

	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	os.RemoveAll(f.DomDir)
	if err := os.Mkdir(f.DomDir, 0o700); err != nil {
		return errorf(ErrIO, "start %s: %w", name, err)
	}
	undo = append(undo, func() { os.RemoveAll(f.DomDir) })
	if err := r.writeStarting(); err != nil {
		return errorf(ErrIO, "start %s: %w", name, err)
	}
	undo = append(undo, func() { os.Remove(f.Status) })

	// QEMU gets a socket that already listens, so qemufs can connect
	// at once instead of polling for the socket to appear.
	os.Remove(f.QMP)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: f.QMP, Net: "unix"})
	if err != nil {
		return errorf(ErrIO, "start %s: QMP socket: %w", name, err)
	}
	ln.SetUnlinkOnClose(false)
	qmpFile, err := ln.File()
	ln.Close()
	if err != nil {
		return errorf(ErrIO, "start %s: QMP socket: %w", name, err)
	}
	defer qmpFile.Close()
	undo = append(undo, func() { os.Remove(f.QMP) })

	if err := d.resolveVolumes(ctx, r); err != nil {
		return errorf(ErrInvalid, "start %s: %w", name, err)
	}
	if err := d.prepareHost(r); err != nil {
		return errorf(ErrInvalid, "start %s: %w", name, err)
	}
	if err := d.prepareGuestFiles(r, emu); err != nil {
		return errorf(ErrInvalid, "start %s: %w", name, err)
	}
	if port, auto := vncAutoport(r.live); auto {
		p, err := d.ports.Get(d.conf.VNCListen)
		if err != nil {
			return errorf(ErrIO, "start %s: VNC: %w", name, err)
		}
		r.vncPort = p
		undo = append(undo, func() { d.ports.Release(p) })
	} else {
		r.vncPort = port
	}
	if spiceAutoport(r.live) {
		p, err := d.ports.Get(d.conf.SpiceListen)
		if err != nil {
			return errorf(ErrIO, "start %s: SPICE: %w", name, err)
		}
		r.spicePort = p
		undo = append(undo, func() { d.ports.Release(p) })
	}

	// Tap files follow the QMP socket (fd 3) in QEMU; once QEMU has them,
	// or when the start fails, qemufs's copies are closed.
	nets, err := d.attachNetworks(ctx, r, 4)
	if err != nil {
		return err
	}
	defer nets.close()
	undo = append(undo, r.stopPassts)
	copts := commandOptions(d, r, emu, 3)
	copts.NetAttach = nets.attach
	if err := d.prepareSecrets(r, &copts); err != nil {
		return err
	}
	if o.incoming != nil || o.migrating != nil {
		copts.Incoming = "defer" // restore: loadIncoming feeds the state; migration: listenIncoming
	}
	cmd, err := domain.BuildCommand(r.live, copts)
	if err != nil {
		return errorf(ErrInvalid, "start %s: %w", name, err)
	}
	spec := procmgr.Spec{
		Name:       name,
		Path:       cmd.Path,
		Args:       cmd.Args,
		Env:        cmd.Env,
		Dir:        "/",
		LogPath:    f.Log,
		PidPath:    f.PidFile,
		ExtraFiles: append([]*os.File{qmpFile}, nets.files()...),
	}
	if o.incoming != nil {
		o.incoming.fd = 3 + len(spec.ExtraFiles)
		spec.ExtraFiles = append(spec.ExtraFiles, o.incoming.img.f)
	}
	if err := d.prepareSecurity(ctx, r, &spec); err != nil {
		return err
	}
	undo = append(undo, func() { d.restoreSecurity(r) })
	fault.Point("start.prepared")
	if err := d.startTPM(ctx, r, &spec); err != nil {
		return err
	}
	undo = append(undo, r.stopTPM)
	if err := d.checkKVM(r.live, spec.Credential); err != nil {
		return errorf(ErrInvalid, "start %s: %w", name, err)
	}
	if err := r.writeStarting(); err != nil {
		return errorf(ErrIO, "start %s: %w", name, err)
	}

	d.logStart(r, &spec)
	proc, err := procmgr.Start(ctx, spec)
	if err != nil {
		return errorf(ErrIO, "start %s: %w%s", name, err, logTail(f.Log))
	}
	r.proc = proc
	undo = append(undo, func() {
		proc.Kill()
		<-proc.Done()
		os.Remove(f.PidFile)
		d.appendLog(f.Log, "shutting down, reason=failed")
	})
	if err := r.writeStarting(); err != nil {
		return errorf(ErrIO, "start %s: %w", name, err)
	}
	fault.PointPid("start.spawned", proc.Pid)
	qmpFile.Close()
	go r.handleEvents()
	undo = append(undo, func() { r.evq.end() })

	mon, err := d.dialMonitor(ctx, r)
	if err != nil {
		return err
	}
	undo = append(undo, func() { mon.Close() })
	fault.PointPid("start.monitor", proc.Pid)
	if err := d.attachConsole(ctx, r, false); err != nil {
		d.appendLog(f.Log, "console: %v", err)
	}
	r.refreshLive()
	d.noteTaints(r)
	booted := ReasonBooted
	if o.incoming != nil {
		if err := d.loadIncoming(ctx, r, o.incoming); err != nil {
			return err
		}
		booted = ReasonRestored
	}
	pausedReason := ReasonUser
	if o.migrating != nil {
		// The guest's state, links and balloon included, comes with the
		// migration stream.
		if err := d.listenIncoming(ctx, r, o.migrating); err != nil {
			return err
		}
		booted, pausedReason = ReasonMigrated, ReasonMigrating
	} else {
		if err := d.applyLinkStates(ctx, r); err != nil {
			return err
		}
		if err := d.startBalloon(ctx, r); err != nil {
			return err
		}
	}

	dm.mu.Lock()
	dm.run = r
	if o.Paused {
		dm.state, dm.reason = StatePaused, pausedReason
	} else {
		dm.state, dm.reason = StateRunning, booted
	}
	dm.mu.Unlock()
	undo = append(undo, func() {
		dm.mu.Lock()
		dm.run = nil
		dm.mu.Unlock()
	})
	if !o.Paused {
		if err := r.qmp.Cont(); err != nil {
			return errorf(ErrIO, "start %s: cont: %w%s", name, err, logTail(f.Log))
		}
	}
	if err := r.saveStatus(); err != nil {
		return errorf(ErrIO, "start %s: %w", name, err)
	}
	fault.PointPid("start.status", proc.Pid)
	dm.publish(EventStarted, booted)
	if o.Paused {
		dm.publish(EventPaused, pausedReason)
	}
	d.wg.Add(1)
	go r.supervise()
	return nil
}

// qmpHandshakeTimeout bounds the QMP greeting and negotiation at start
// (docs/reliability.md); every later command is bounded by
// monitor.DefaultCommandTimeout.
const qmpHandshakeTimeout = 60 * time.Second

// dialMonitor connects to QEMU's QMP socket. If QEMU dies while starting,
// the error carries the reason QEMU printed.
func (d *Driver) dialMonitor(ctx context.Context, r *run) (*monitor.Conn, error) {
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, qmpHandshakeTimeout)
	defer cancel()
	mon, err := monitor.Dial(ctx, r.files.QMP, monitor.Options{OnEvent: r.onEvent})
	if err != nil {
		if r.proc != nil {
			select {
			case <-r.proc.Done():
				return nil, errorf(ErrIO, "start %s: QEMU exited (%s)%s", r.dm.name, r.proc.Exit(), logTail(r.files.Log))
			case <-time.After(time.Second):
			}
		}
		if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
			return nil, errorf(ErrInterrupted, "start %s: interrupted", r.dm.name)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, errorf(ErrIO, "start %s: QMP: QEMU did not complete the monitor handshake within %v (is the process stopped or hung?): %w%s", r.dm.name, time.Since(t0).Round(time.Second), err, logTail(r.files.Log))
		}
		return nil, errorf(ErrIO, "start %s: QMP: %w%s", r.dm.name, err, logTail(r.files.Log))
	}
	r.mon = mon
	r.qmp = raw.NewMonitor(mon)
	return mon, nil
}

// shutdown asks the guest to power off (ACPI) and waits until it is shut
// off; with a timeout, destroys it when the guest has not finished by then.
func (d *Driver) shutdown(ctx context.Context, dm *dom, timeout time.Duration) error {
	dm.op.Lock()
	r, err := dm.activeRun("shutdown")
	if err == nil {
		if e := r.qmp.SystemPowerdown(); e != nil {
			err = errorf(ErrIO, "shutdown %s: %w", dm.name, e)
		}
	}
	dm.op.Unlock()
	if err != nil {
		return err
	}
	d.appendLog(r.files.Log, "shutdown requested (ACPI power button)")
	fault.PointPid("shutdown.requested", r.proc.Pid)
	return d.waitShutdown(ctx, dm, r, timeout)
}

// destroy ends QEMU at once (SIGTERM, SIGKILL after 10 s) and waits for
// the cleanup. The caller holds dm.op.
func (d *Driver) destroy(ctx context.Context, dm *dom, reason string) error {
	if ok, err := d.destroyPending(ctx, dm); ok {
		return err
	}
	r, err := dm.activeRun("destroy")
	if err != nil {
		return err
	}
	r.kill(reason)
	fault.Point("destroy.signalled")
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return errorf(ErrInterrupted, "destroy %s: interrupted while waiting; QEMU was signalled and will end", dm.name)
	}
}

// reboot asks the guest to shut down and, when it has, resets and resumes
// it (libvirt's "fake reboot"), whatever on_poweroff says.
func (d *Driver) reboot(ctx context.Context, dm *dom) error {
	dm.op.Lock()
	r, err := dm.activeRun("reboot")
	var done chan struct{}
	if err == nil {
		r.mu.Lock()
		r.fakeReboot = true
		if r.rebootDone == nil {
			r.rebootDone = make(chan struct{})
		}
		done = r.rebootDone
		r.mu.Unlock()
		if e := r.qmp.SystemPowerdown(); e != nil {
			r.mu.Lock()
			r.fakeReboot = false
			r.mu.Unlock()
			err = errorf(ErrIO, "reboot %s: %w", dm.name, e)
		}
	}
	dm.op.Unlock()
	if err != nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-r.done:
		return errorf(ErrIO, "reboot %s: the domain stopped instead of rebooting", dm.name)
	case <-ctx.Done():
		return errorf(ErrInterrupted, "reboot %s: interrupted while waiting for the guest to shut down; it will still reboot when it does", dm.name)
	}
}

func (d *Driver) setAutostart(dm *dom, on bool) error {
	dm.op.Lock()
	defer dm.op.Unlock()
	dm.mu.Lock()
	defined := dm.def != nil
	dm.mu.Unlock()
	if !defined {
		return errorf(ErrInvalid, "autostart %s: the domain is not defined", dm.name)
	}
	p := d.autostartPath(dm.name)
	if on {
		if err := writeFileAtomic(p, []byte(dm.name+"\n"), 0o600); err != nil {
			return errorf(ErrIO, "autostart %s: %w", dm.name, err)
		}
	} else if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return errorf(ErrIO, "autostart %s: %w", dm.name, err)
	}
	dm.mu.Lock()
	dm.autostart = on
	dm.mu.Unlock()
	return nil
}

// Autostart starts every shut-off domain marked autostart, as the daemon
// comes up. Failures are recorded in each domain's `error`.
func (d *Driver) Autostart(ctx context.Context) {
	for _, name := range d.Names() {
		dm, err := d.lookup(name)
		if err != nil {
			continue
		}
		dm.mu.Lock()
		want := dm.autostart && dm.run == nil && dm.def != nil
		dm.mu.Unlock()
		if !want {
			continue
		}
		if err := d.Start(ctx, name, StartOptions{}); err != nil {
			d.logf("autostart %s: %v", name, err)
		}
		if d.conf.AutoStartDelay > 0 {
			time.Sleep(time.Duration(d.conf.AutoStartDelay) * time.Millisecond)
		}
	}
}

// logStart writes the header of a run to the domain's log, as libvirt does:
// a timestamped line and the command line.
func (d *Driver) logStart(r *run, spec *procmgr.Spec) {
	line := domain.Command{Env: spec.Env, Path: spec.Path, Args: spec.Args}
	d.appendLog(r.files.Log, "starting up qemufs %s\n%s", d.opts.Version, line.String())
}

// appendLog writes a timestamped note to a domain's log.
func (d *Driver) appendLog(path, format string, args ...any) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	ts := time.Now().UTC().Format("2006-01-02 15:04:05.000-0700")
	fmt.Fprintf(f, "%s: %s\n", ts, fmt.Sprintf(format, args...))
}

// logTail returns the last lines QEMU wrote to the log, as an error suffix.
func logTail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	var tail []string
	for i := len(lines) - 1; i >= 0 && len(tail) < 3; i-- {
		l := lines[i]
		if strings.Contains(l, ": starting up qemufs") {
			break
		}
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "LC_ALL=") || isQemufsNote(l) {
			continue
		}
		tail = append([]string{strings.TrimSpace(l)}, tail...)
	}
	if len(tail) == 0 {
		return ""
	}
	return ": " + strings.Join(tail, "; ")
}

// qemufsNote matches the timestamp appendLog puts on qemufs's own lines.
var qemufsNote = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[+-]\d{4}: `)

// isQemufsNote tells qemufs's own log lines from QEMU's output.
func isQemufsNote(l string) bool { return qemufsNote.MatchString(l) }
