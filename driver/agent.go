package driver

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/qemufs/qemufs/agent"
	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/monitor"
	"github.com/qemufs/qemufs/stream"
)

// AgentChannel is the virtio-serial port name the QEMU guest agent uses.
const AgentChannel = "org.qemu.guest_agent.0"

// agentTaint is libvirt's taint for commands a user sent to the agent.
const agentTaint = "custom-ga-command"

// agentOptions are the guest agent timeouts (the agent package's defaults;
// unit tests shorten them).
var agentOptions agent.Options

// testAgentPath, when set by a unit test, gives the socket of a fake
// agent to use instead of the guest's channel, and skips the check that
// the guest opened the channel.
var testAgentPath func(r *run) string

// agentConns holds the agent connection of each run that used the agent.
// A connection lives as long as its run: it is closed and forgotten when
// the run ends or the daemon detaches from it.
var agentConns = struct {
	mu sync.Mutex
	m  map[*run]*agent.Conn
}{m: map[*run]*agent.Conn{}}

// prepareChannels readies the live definition's channels at start: unix
// channels without a path get the socket path QEMU will use, and virtio
// channels the state "disconnected" (the guest has not opened them yet),
// as libvirt's live XML shows them.
func prepareChannels(r *run) {
	r.live.SetChannelSocketPaths(r.files.DomDir)
	for _, c := range r.live.Channels() {
		if c.TargetType == "virtio" && c.Alias != "" {
			r.live.SetChannelState(c.Alias, "disconnected")
		}
	}
}

// onVserportChange records QEMU's VSERPORT_CHANGE (the guest opened or
// closed a virtio serial port) as the channel's state in the live XML.
func (r *run) onVserportChange(ev monitor.Event) {
	var data struct {
		ID   string `json:"id"`
		Open bool   `json:"open"`
	}
	if json.Unmarshal(ev.Data, &data) != nil || data.ID == "" {
		return
	}
	r.setChannelState(data.ID, data.Open)
}

// setChannelState records in the live XML whether the guest has the
// virtio channel alias open, when that changes it.
func (r *run) setChannelState(alias string, open bool) {
	state := "disconnected"
	if open {
		state = "connected"
	}
	r.mu.Lock()
	changed := r.live.ChannelState(alias) != state && r.live.SetChannelState(alias, state)
	r.mu.Unlock()
	if changed {
		r.refreshLive()
		r.saveStatus()
	}
}

// agentChannel finds the guest agent channel of a definition.
func agentChannel(def *domain.Domain) (domain.Chardev, bool) {
	for _, c := range def.Channels() {
		if c.TargetType == "virtio" && c.TargetName == AgentChannel {
			return c, true
		}
	}
	return domain.Chardev{}, false
}

// agent returns the run's agent connection, made on first use. op names
// the request in errors.
func (r *run) agent(op string) (*agent.Conn, domain.Chardev, error) {
	name := r.dm.name
	ch, ok := agentChannel(r.def())
	if !ok {
		return nil, ch, errorf(ErrNoDevice, "%s %s: the domain has no guest agent channel; add <channel type='unix'><target type='virtio' name='%s'/></channel> to its devices (and run qemu-ga in the guest)", op, name, AgentChannel)
	}
	path, ok := domain.ChannelSocketPath(ch, r.files.DomDir)
	if !ok {
		return nil, ch, errorf(ErrInvalid, "%s %s: the guest agent channel is <channel type='%s'>%s; qemufs reaches the agent through <channel type='unix'> in mode bind (QEMU listening)", op, name, ch.Type, modeNote(ch))
	}
	select {
	case <-r.done:
		return nil, ch, errorf(ErrBusy, "%s %s: the domain is not running", op, name)
	case <-r.detached:
		return nil, ch, errorf(ErrIO, "%s %s: qemufs is shutting down", op, name)
	default:
	}
	agentConns.mu.Lock()
	defer agentConns.mu.Unlock()
	if c := agentConns.m[r]; c != nil {
		return c, ch, nil
	}
	if testAgentPath != nil {
		path = testAgentPath(r)
	}
	c := agent.New(path, agentOptions)
	agentConns.m[r] = c
	go func() {
		select {
		case <-r.done:
		case <-r.detached:
		}
		c.Close()
		agentConns.mu.Lock()
		delete(agentConns.m, r)
		agentConns.mu.Unlock()
	}()
	return c, ch, nil
}

func modeNote(ch domain.Chardev) string {
	if ch.Mode != "" {
		return " in mode " + ch.Mode
	}
	return ""
}

// agentOpen tells whether the guest has opened its end of the agent
// channel (QEMU's frontend-open of the chardev), so that a guest without
// a running agent fails at once rather than after the sync timeout.
// Unknown (an older QEMU, a QMP failure) counts as open.
func (r *run) agentOpen(ctx context.Context, ch domain.Chardev) bool {
	var infos []struct {
		Label        string `json:"label"`
		FrontendOpen *bool  `json:"frontend-open"`
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.mon.Execute(ctx, "query-chardev", nil, &infos); err != nil {
		return true
	}
	for _, in := range infos {
		if in.Label == "char"+ch.Alias && in.FrontendOpen != nil {
			// Also corrects a state a re-attached daemon missed.
			r.setChannelState(ch.Alias, *in.FrontendOpen)
			return *in.FrontendOpen
		}
	}
	return true
}

// agentRun runs one raw agent command for op and maps its failures to the
// driver's kinds; the reply is returned as the agent sent it.
func (d *Driver) agentRun(ctx context.Context, r *run, op string, cmd []byte) ([]byte, error) {
	c, ch, err := r.agent(op)
	if err != nil {
		return nil, err
	}
	name := r.dm.name
	r.dm.mu.Lock()
	state := r.dm.state
	r.dm.mu.Unlock()
	if state != StateRunning {
		// As libvirt: the agent of a paused guest cannot answer.
		return nil, errorf(ErrBusy, "%s %s: the domain is %s; the guest agent answers only while the guest runs", op, name, state)
	}
	if testAgentPath == nil && !r.agentOpen(ctx, ch) {
		return nil, errorf(ErrIO, "%s %s: %v: the guest has not opened its agent channel %s (is qemu-ga running in the guest?)", op, name, agent.ErrNotResponding, AgentChannel)
	}
	reply, err := c.Run(ctx, cmd)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return nil, errorf(ErrInterrupted, "%s %s: interrupted waiting for the guest agent", op, name)
		case errors.Is(err, agent.ErrNotResponding):
			return nil, errorf(ErrIO, "%s %s: %w", op, name, err)
		case errors.Is(err, agent.ErrClosed):
			return nil, errorf(ErrBusy, "%s %s: the domain is not running", op, name)
		case strings.Contains(err.Error(), "a command is a JSON object"):
			return nil, errorf(ErrInvalid, "%s %s: %w", op, name, err)
		}
		return nil, errorf(ErrIO, "%s %s: %w", op, name, err)
	}
	return reply, nil
}

// agentExecute runs a typed agent command for qemufs itself (no taint).
// An error reply of the agent is an ErrIO error with the agent's message.
func (d *Driver) agentExecute(ctx context.Context, r *run, op, command string, args, result any) error {
	cmd := map[string]any{"execute": command}
	if args != nil {
		cmd["arguments"] = args
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return errorf(ErrInvalid, "%s %s: %w", op, r.dm.name, err)
	}
	reply, err := d.agentRun(ctx, r, op, b)
	if err != nil {
		return err
	}
	if err := agent.Decode(command, reply, result); err != nil {
		return errorf(ErrIO, "%s %s: %w", op, r.dm.name, err)
	}
	return nil
}

// OpenAgent opens a pass-through session to a running domain's guest
// agent: write one JSON command, read its reply, on the same handle. The
// domain must have the agent channel (ErrNoDevice otherwise).
func (d *Driver) OpenAgent(name string) (*MonitorSession, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	r, err := dm.activeRun("agent")
	if err != nil {
		return nil, err
	}
	if _, _, err := r.agent("agent"); err != nil {
		return nil, err
	}
	s := &MonitorSession{r: r, agent: true, replies: stream.New(maxUnread+monitor.DefaultMaxReplySize, false), rmu: make(chan struct{}, 1), closed: make(chan struct{})}
	go func() {
		select {
		case <-r.done:
		case <-r.detached:
		case <-s.closed:
		}
		s.replies.Close()
	}()
	return s, nil
}

// runAgent runs one command of an agent session; the caller holds s.mu.
func (s *MonitorSession) runAgent(ctx context.Context, cmd []byte) error {
	r := s.r
	select {
	case <-r.done:
		return errorf(ErrBusy, "agent %s: the run this session belonged to has ended; open the file again", r.dm.name)
	case <-r.detached:
		return errorf(ErrIO, "agent %s: qemufs is shutting down", r.dm.name)
	default:
	}
	if unread := s.written - s.nread.Load(); unread > maxUnread {
		return errorf(ErrBusy, "agent %s: %d bytes of replies not read yet; read them before sending more commands", r.dm.name, unread)
	}
	r.taint(agentTaint)
	reply, err := r.d.agentRun(ctx, r, "agent", cmd)
	if err != nil {
		return err
	}
	s.queue(append(trimLineEnd(reply), '\n'))
	return nil
}

func trimLineEnd(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// label names the session's file in messages.
func (s *MonitorSession) label() string {
	switch {
	case s.agent:
		return "agent"
	case s.hmp:
		return "monitor/hmp"
	}
	return "monitor/qmp"
}

// Shutdown and reboot modes, as virsh's --mode.
const (
	modeACPI  = "acpi"
	modeAgent = "agent"
)

// parseModes parses a --mode value: a comma-separated list of acpi and
// agent. virsh's other modes (initctl, signal, paravirt) are not the QEMU
// driver's, as in libvirt.
func parseModes(op, name, v string) ([]string, error) {
	var modes []string
	seen := map[string]bool{}
	for _, m := range strings.Split(v, ",") {
		switch m {
		case modeACPI, modeAgent:
			if !seen[m] {
				seen[m] = true
				modes = append(modes, m)
			}
		case "initctl", "signal", "paravirt":
			return nil, errorf(ErrInvalid, "%s %s: mode %q is not supported by the QEMU driver (acpi, agent)", op, name, m)
		default:
			return nil, errorf(ErrInvalid, "%s %s: unknown mode %q (acpi, agent, or both as acpi,agent)", op, name, m)
		}
	}
	return modes, nil
}

// usesAgent reports whether a --mode list asks for the agent.
func usesAgent(modes []string) bool { return slices.Contains(modes, modeAgent) }

// agentShutdown asks the guest agent to power off (mode "powerdown") or
// reboot ("reboot"). guest-shutdown has no reply when it works; an agent
// that fails answers within the agent's NoReplyWait.
func (d *Driver) agentShutdown(ctx context.Context, r *run, op, mode string) error {
	if err := d.agentExecute(ctx, r, op, "guest-shutdown", map[string]string{"mode": mode}, nil); err != nil {
		return err
	}
	d.appendLog(r.files.Log, "%s requested (guest agent, guest-shutdown mode=%s)", op, mode)
	return nil
}

// shutdownModes is `shutdown --mode=...` with the agent among the modes:
// the agent is tried first and, when the modes include acpi, the ACPI
// power button is pressed if the agent fails (libvirt's order, whatever
// the order of the list). Then it waits as shutdown does.
func (d *Driver) shutdownModes(ctx context.Context, dm *dom, modes []string, timeout time.Duration) error {
	dm.op.Lock()
	r, err := dm.activeRun("shutdown")
	if err == nil {
		err = d.agentShutdown(ctx, r, "shutdown", "powerdown")
		if err != nil && slices.Contains(modes, modeACPI) && Kind(err) != ErrInterrupted {
			d.appendLog(r.files.Log, "shutdown with the guest agent failed (%v); pressing the ACPI power button", err)
			err = nil
			if e := r.qmp.SystemPowerdown(); e != nil {
				err = errorf(ErrIO, "shutdown %s: %w", dm.name, e)
			} else {
				d.appendLog(r.files.Log, "shutdown requested (ACPI power button)")
			}
		}
	}
	dm.op.Unlock()
	if err != nil {
		return err
	}
	return d.waitShutdown(ctx, dm, r, timeout)
}

// waitShutdown waits until the run ends; with a timeout, destroys the
// guest when it has not shut down by then.
func (d *Driver) waitShutdown(ctx context.Context, dm *dom, r *run, timeout time.Duration) error {
	var expire <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expire = t.C
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return errorf(ErrInterrupted, "shutdown %s: interrupted while waiting; the guest was asked to power off and may still do so", dm.name)
	case <-expire:
	}
	d.appendLog(r.files.Log, "guest did not shut down within %s; destroying it", timeout)
	dm.op.Lock()
	defer dm.op.Unlock()
	if err := d.destroy(ctx, dm, ReasonDestroyed); err != nil && !errors.Is(err, ErrBusy) {
		return err
	}
	return nil
}

// rebootModes is `reboot --mode=...` with the agent among the modes: the
// agent reboots the guest (guest-shutdown mode=reboot), which resets
// itself as on_reboot says; ACPI (the fake reboot) is the fallback when
// the modes include acpi. It returns once QEMU reported the reset.
func (d *Driver) rebootModes(ctx context.Context, dm *dom, modes []string) error {
	dm.op.Lock()
	r, err := dm.activeRun("reboot")
	if err != nil {
		dm.op.Unlock()
		return err
	}
	events := dm.events.Follow()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	err = d.agentShutdown(ctx, r, "reboot", "reboot")
	dm.op.Unlock()
	if err != nil {
		if slices.Contains(modes, modeACPI) && Kind(err) != ErrInterrupted {
			d.appendLog(r.files.Log, "reboot with the guest agent failed (%v); rebooting through ACPI", err)
			return d.reboot(ctx, dm)
		}
		return err
	}
	reset := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := events.ReadLine(wctx, buf)
			if err != nil {
				reset <- err
				return
			}
			if strings.Contains(string(buf[:n]), `"event":"`+EventRebooted+`"`) {
				reset <- nil
				return
			}
		}
	}()
	select {
	case err := <-reset:
		if err == nil {
			return nil
		}
	case <-r.done:
	}
	select {
	case <-r.done:
		if on := r.def().OnReboot(); on == "destroy" {
			return nil // the guest rebooted and on_reboot=destroy ended it
		}
		return errorf(ErrIO, "reboot %s: the domain stopped instead of rebooting", dm.name)
	default:
	}
	return errorf(ErrInterrupted, "reboot %s: interrupted while waiting for the guest to reboot; it was asked to and may still do so", dm.name)
}
