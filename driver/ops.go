package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/monitor"
)

// Day-2 ctl commands that change a running guest's resources or act on it:
// setmem, setvcpus, send-key, dump.

func init() {
	registerCommand("setmem SIZE [--live] [--config] [--current]", cmdSetmem)
	registerCommand("setvcpus N [--live] [--config] [--current] [--maximum]", cmdSetvcpus)
	registerCommand("send-key [--codeset linux|qnum] [--holdtime MS] KEY...", cmdSendKey)
	registerCommand("dump FILE [--memory-only] [--format=elf|kdump-zlib|kdump-lzo|kdump-snappy|win-dmp] [--live] [--reset] [--crash]", cmdDump)
}

// opsScope is where a change applies, as virsh's --live/--config/--current.
type opsScope struct{ live, config bool }

// parseOpsScope takes --live, --config and --current out of args and
// returns the other arguments. Without any (or with --current) the change
// applies to the running guest when there is one, else to the definition.
func parseOpsScope(args []string, active bool) (opsScope, []string, error) {
	var s opsScope
	var current bool
	var rest []string
	for _, a := range args {
		switch a {
		case "--live":
			s.live = true
		case "--config":
			s.config = true
		case "--current":
			current = true
		default:
			rest = append(rest, a)
		}
	}
	if current && (s.live || s.config) {
		return s, nil, fmt.Errorf("--current excludes --live and --config")
	}
	if !s.live && !s.config {
		s.live, s.config = active, !active
	}
	return s, rest, nil
}

// opsRedefine changes the persistent definition with fn and stores it like
// a write of config.xml (validated, expanded, written atomically). The
// caller holds dm.op. On any failure the definition stays as it was.
func (d *Driver) opsRedefine(dm *dom, op string, fn func(def *domain.Domain) error) error {
	dm.mu.Lock()
	cur := dm.def
	dm.mu.Unlock()
	if cur == nil {
		return errorf(ErrInvalid, "%s %s: the domain is not defined", op, dm.name)
	}
	def := cur.Clone()
	if err := fn(def); err != nil {
		return err
	}
	if err := def.Validate(d.caps); err != nil {
		return errorf(ErrInvalid, "%s %s: %w", op, dm.name, err)
	}
	if err := domain.Expand(def, d.caps); err != nil {
		return errorf(ErrInvalid, "%s %s: %w", op, dm.name, err)
	}
	out := def.XML()
	if err := writeFileAtomic(d.defPath(dm.name), out, 0o600); err != nil {
		return errorf(ErrIO, "%s %s: %w", op, dm.name, err)
	}
	dm.mu.Lock()
	dm.def, dm.defXML = def, out
	dm.mu.Unlock()
	dm.publish(EventDefined, "updated")
	return nil
}

// opsUpdateLive changes the live definition with fn and re-renders live.xml
// and the status file, after a change QEMU has made.
func (r *run) opsUpdateLive(fn func(live *domain.Domain)) {
	r.mu.Lock()
	fn(r.live)
	r.mu.Unlock()
	r.refreshLive()
	r.saveStatus()
}

// domState returns the domain's definition and run under its lock.
func (dm *dom) domState() (*domain.Domain, *run) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	return dm.def, dm.run
}

// ---- setmem ----

func cmdSetmem(ctx context.Context, d *Driver, dm *dom, args []string) error {
	dm.op.Lock()
	defer dm.op.Unlock()
	def, r := dm.domState()
	if def == nil {
		return errorf(ErrInvalid, "setmem %s: the domain is not defined", dm.name)
	}
	sc, rest, err := parseOpsScope(args, r != nil)
	if err != nil || len(rest) != 1 {
		return errBadArgs
	}
	kib, err := domain.ParseScaledKiB(rest[0])
	if err != nil {
		return errorf(ErrInvalid, "setmem %s: size %q: %v (a number, KiB by default, or with a unit: K, KiB, M, MiB, G, GiB, KB, MB, GB ...)", dm.name, rest[0], err)
	}
	if kib == 0 {
		return errorf(ErrInvalid, "setmem %s: size 0 is not allowed", dm.name)
	}
	if sc.live {
		if r == nil {
			return errorf(ErrBusy, "setmem %s: --live: the domain is not running", dm.name)
		}
		live := r.def()
		if !liveHasBalloon(live) {
			return errorf(ErrNoDevice, "setmem %s: the running guest has no memory balloon (add <memballoon model='virtio'/> and restart it)", dm.name)
		}
		if max := live.MemoryKiB(); kib > max {
			return errorf(ErrInvalid, "setmem %s: %d KiB is more than the guest's maximum memory (<memory>) of %d KiB", dm.name, kib, max)
		}
	}
	if sc.config && kib > def.MemoryKiB() {
		return errorf(ErrInvalid, "setmem %s: %d KiB is more than the definition's maximum memory (<memory>) of %d KiB", dm.name, kib, def.MemoryKiB())
	}
	if sc.live {
		if err := r.mon.Execute(ctx, "balloon", map[string]any{"value": kib << 10}, nil); err != nil {
			return errorf(ErrIO, "setmem %s: %w", dm.name, err)
		}
		r.opsUpdateLive(func(l *domain.Domain) { l.SetCurrentMemoryKiB(kib) })
		d.appendLog(r.files.Log, "balloon target set to %d KiB", kib)
	}
	if sc.config {
		return d.opsRedefine(dm, "setmem", func(def *domain.Domain) error {
			def.SetCurrentMemoryKiB(kib)
			return nil
		})
	}
	return nil
}

// startBalloon sets the balloon to <currentMemory> at start, when it is
// below <memory>, as libvirt does; QEMU boots with all of <memory>.
func (d *Driver) startBalloon(ctx context.Context, r *run) error {
	live := r.live
	cur, max := live.CurrentMemoryKiB(), live.MemoryKiB()
	if !liveHasBalloon(live) || cur == 0 || cur >= max {
		return nil
	}
	if err := r.mon.Execute(ctx, "balloon", map[string]any{"value": cur << 10}, nil); err != nil {
		return errorf(ErrIO, "start %s: balloon to currentMemory %d KiB: %w", r.dm.name, cur, err)
	}
	return nil
}

// ---- setvcpus ----

// vcpuUnplugTimeout bounds the wait for the guest to release a vCPU.
const vcpuUnplugTimeout = 60 * time.Second

// ostEjectStatus explains the ACPI _OST status codes a guest sends back
// for an eject request (ACPI spec, _OST, source 3), apart from 0x84,
// "ejection in progress".
var ostEjectStatus = map[int]string{
	0x01: "generic failure",
	0x80: "the guest does not support ejecting it",
	0x81: "the device is in use by an application in the guest",
	0x82: "the device is busy in the guest",
	0x83: "an ejection dependency is busy or not supported",
}

// hotpluggableCPU is one entry of query-hotpluggable-cpus.
type hotpluggableCPU struct {
	Type    string         `json:"type"`
	Props   map[string]int `json:"props"`
	QOMPath string         `json:"qom-path"`
}

// propOrder is the order of topology properties, outermost first.
var propOrder = []string{"node-id", "drawer-id", "book-id", "socket-id", "die-id", "cluster-id", "core-id", "thread-id"}

// cpuLess orders CPU slots by topology.
func cpuLess(a, b hotpluggableCPU) bool {
	for _, p := range propOrder {
		if a.Props[p] != b.Props[p] {
			return a.Props[p] < b.Props[p]
		}
	}
	return false
}

func cmdSetvcpus(ctx context.Context, d *Driver, dm *dom, args []string) error {
	dm.op.Lock()
	defer dm.op.Unlock()
	def, r := dm.domState()
	if def == nil {
		return errorf(ErrInvalid, "setvcpus %s: the domain is not defined", dm.name)
	}
	sc, rest, err := parseOpsScope(args, r != nil)
	if err != nil {
		return errBadArgs
	}
	maximum := false
	var pos []string
	for _, a := range rest {
		if a == "--maximum" {
			maximum = true
		} else {
			pos = append(pos, a)
		}
	}
	if len(pos) != 1 {
		return errBadArgs
	}
	n, err := strconv.Atoi(pos[0])
	if err != nil || n < 1 {
		return errorf(ErrInvalid, "setvcpus %s: %q is not a vCPU count (a positive integer)", dm.name, pos[0])
	}
	if maximum {
		// The maximum is fixed while QEMU runs (-smp maxcpus).
		if sc.live || !sc.config {
			return errorf(ErrInvalid, "setvcpus %s: --maximum changes the definition only: use it with --config", dm.name)
		}
		return d.opsRedefine(dm, "setvcpus", func(def *domain.Domain) error {
			def.SetMaxVCPUs(n)
			return nil
		})
	}
	if sc.live {
		if r == nil {
			return errorf(ErrBusy, "setvcpus %s: --live: the domain is not running", dm.name)
		}
		if max := r.def().MaxVCPUs(); n > max {
			return errorf(ErrInvalid, "setvcpus %s: %d is more than the running guest's maximum of %d vCPUs (<vcpu>)", dm.name, n, max)
		}
	}
	if sc.config && n > def.MaxVCPUs() {
		return errorf(ErrInvalid, "setvcpus %s: %d is more than the definition's maximum of %d vCPUs (<vcpu>; raise it with --maximum --config)", dm.name, n, def.MaxVCPUs())
	}
	if sc.live {
		if err := d.setLiveVCPUs(ctx, r, n); err != nil {
			return err
		}
	}
	if sc.config {
		return d.opsRedefine(dm, "setvcpus", func(def *domain.Domain) error {
			def.SetVCPUs(n)
			return nil
		})
	}
	return nil
}

// setLiveVCPUs plugs or unplugs vCPUs until the guest has n. The live
// definition follows what QEMU has, also after a partial failure.
func (d *Driver) setLiveVCPUs(ctx context.Context, r *run, n int) error {
	name := r.dm.name
	var slots []hotpluggableCPU
	if err := r.mon.Execute(ctx, "query-hotpluggable-cpus", nil, &slots); err != nil {
		return errorf(ErrIO, "setvcpus %s: %w", name, err)
	}
	var plugged, free []hotpluggableCPU
	for _, s := range slots {
		if s.QOMPath != "" {
			plugged = append(plugged, s)
		} else {
			free = append(free, s)
		}
	}
	sort.Slice(plugged, func(i, j int) bool { return cpuLess(plugged[i], plugged[j]) })
	sort.Slice(free, func(i, j int) bool { return cpuLess(free[i], free[j]) })
	have := len(plugged)
	defer func() {
		if cpus, err := r.statsQueryCPUs(ctx); err == nil {
			r.opsUpdateLive(func(l *domain.Domain) { l.SetVCPUs(len(cpus)) })
		}
	}()
	// Device ids in use, also by devices that linger after an unplug.
	used := map[string]bool{}
	var peripherals []struct {
		Name string `json:"name"`
	}
	if err := r.mon.Execute(ctx, "qom-list", map[string]any{"path": "/machine/peripheral"}, &peripherals); err == nil {
		for _, p := range peripherals {
			used[p.Name] = true
		}
	}
	for _, p := range plugged {
		used[filepath.Base(p.QOMPath)] = true
	}
	for have < n {
		if len(free) == 0 {
			return errorf(ErrIO, "setvcpus %s: QEMU has no free CPU slot for vCPU %d", name, have+1)
		}
		s := free[0]
		free = free[1:]
		id := ""
		for k := have; id == ""; k++ {
			if c := "vcpu" + strconv.Itoa(k); !used[c] {
				id = c
			}
		}
		args := map[string]any{"driver": s.Type, "id": id}
		for k, v := range s.Props {
			args[k] = v
		}
		if err := r.mon.Execute(ctx, "device_add", args, nil); err != nil {
			return errorf(ErrIO, "setvcpus %s: plugging vCPU %d: %w", name, have+1, err)
		}
		used[id] = true
		have++
		d.appendLog(r.files.Log, "vCPU %s plugged (%s)", id, s.Type)
	}
	if have > n && tcgUnplugBroken(r) {
		g := r.mon.Greeting()
		return errorf(ErrInvalid, "setvcpus %s: unplugging a vCPU is refused for TCG guests on QEMU %d.%d: it corrupts QEMU's memory and QEMU crashes at the next command (seen with QEMU 7.2); the guest keeps %d vCPUs (lower the count with --config for the next start)",
			name, g.Major, g.Minor, have)
	}
	for have > n {
		s := plugged[have-1]
		if err := d.unplugVCPU(ctx, r, s.QOMPath); err != nil {
			return err
		}
		have--
	}
	return nil
}

// tcgUnplugBroken reports whether vCPU hot-unplug would break this QEMU:
// under TCG, QEMU 7.2 removes the CPU and then fails with "corrupted
// double-linked list" (malloc) at its next command, killing the guest. A
// later QEMU, and KVM, are allowed to try.
func tcgUnplugBroken(r *run) bool {
	if r.def().Type() != "qemu" {
		return false
	}
	g := r.mon.Greeting()
	return g.Major < 8 || g.Major == 8 && g.Minor < 2
}

// unplugVCPU asks QEMU (and the guest, through ACPI) to remove the vCPU at
// path and waits, bounded, until it is gone. QEMU 7.2 announces the
// removal of a CPU only by DEVICE_DELETED for its children (its lapic) and
// an ACPI_DEVICE_OST success, not for the CPU itself; so any of these
// events, or a periodic check, makes qemufs look whether the CPU is still
// in query-hotpluggable-cpus.
func (d *Driver) unplugVCPU(ctx context.Context, r *run, path string) error {
	name := r.dm.name
	ectx, cancel := context.WithTimeout(ctx, vcpuUnplugTimeout)
	defer cancel()
	evs, err := r.mon.Events(ectx)
	if err != nil {
		return errorf(ErrIO, "setvcpus %s: %w", name, err)
	}
	if err := r.mon.Execute(ctx, "device_del", map[string]any{"id": path}, nil); err != nil {
		var qe *monitor.Error
		if errors.As(err, &qe) {
			return errorf(ErrInvalid, "setvcpus %s: QEMU cannot unplug the vCPU %s: %s", name, path, qe.Desc)
		}
		return errorf(ErrIO, "setvcpus %s: unplug %s: %w", name, path, err)
	}
	gone := func() bool {
		var slots []hotpluggableCPU
		if err := r.mon.Execute(ctx, "query-hotpluggable-cpus", nil, &slots); err != nil {
			return false
		}
		for _, s := range slots {
			if s.QOMPath == path {
				return false
			}
		}
		return true
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
wait:
	for {
		check := false
		select {
		case ev, ok := <-evs:
			if !ok {
				if gone() {
					break wait
				}
				switch {
				case ctx.Err() != nil:
					return errorf(ErrInterrupted, "setvcpus %s: interrupted while waiting for the guest to release vCPU %s; it may still do so", name, path)
				case ectx.Err() == nil:
					return errorf(ErrIO, "setvcpus %s: the domain stopped", name)
				}
				return errorf(ErrBusy, "setvcpus %s: the guest did not release vCPU %s within %s (it must support CPU hot-unplug)", name, path, vcpuUnplugTimeout)
			}
			switch ev.Event {
			case "ACPI_DEVICE_OST":
				// The guest's answer to the eject request: a
				// refusal ends the wait at once.
				info, _ := ev.Data["info"].(map[string]any)
				src, _ := info["source"].(float64)
				code, _ := info["status"].(float64)
				dev, _ := info["device"].(string)
				if why, refused := ostEjectStatus[int(code)]; refused && src == 3 && (dev == "" || "/machine/peripheral/"+dev == path) {
					return errorf(ErrBusy, "setvcpus %s: the guest refused to release vCPU %s: %s (ACPI _OST status %#x)", name, path, why, int(code))
				}
				check = src == 3 && code == 0
			case "DEVICE_DELETED":
				p, _ := ev.Data["path"].(string)
				check = p == path || strings.HasPrefix(p, path+"/")
			}
		case <-tick.C:
			check = true
		case <-r.done:
			return errorf(ErrIO, "setvcpus %s: the domain stopped", name)
		}
		if check && gone() {
			break wait
		}
	}
	d.appendLog(r.files.Log, "vCPU %s unplugged", path)
	return nil
}

// ---- send-key ----

func cmdSendKey(ctx context.Context, d *Driver, dm *dom, args []string) error {
	codeset, hold := "linux", -1
	var keys []qmpKey
	for i := 0; i < len(args); i++ {
		a := args[i]
		opt, val, hasVal := strings.Cut(a, "=")
		if opt == "--codeset" || opt == "--holdtime" {
			if !hasVal {
				if i+1 >= len(args) {
					return errBadArgs
				}
				i++
				val = args[i]
			}
			if opt == "--codeset" {
				if !slices.Contains(sendKeyCodesets, val) {
					return errorf(ErrInvalid, "send-key %s: codeset %q is not supported; use one of %s", dm.name, val, strings.Join(sendKeyCodesets, ", "))
				}
				codeset = val
				continue
			}
			ms, err := strconv.Atoi(val)
			if err != nil || ms < 0 {
				return errorf(ErrInvalid, "send-key %s: --holdtime %q: expected milliseconds", dm.name, val)
			}
			hold = ms
			continue
		}
		if strings.HasPrefix(a, "--") {
			return errBadArgs
		}
		k, err := parseKey(codeset, a)
		if err != nil {
			return errorf(ErrInvalid, "send-key %s: %v", dm.name, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return errBadArgs
	}
	if len(keys) > maxSendKeys {
		return errorf(ErrInvalid, "send-key %s: %d keys; at most %d at once", dm.name, len(keys), maxSendKeys)
	}
	return d.simple(dm, "send-key", func(r *run) error {
		a := map[string]any{"keys": keys}
		if hold >= 0 {
			a["hold-time"] = hold
		}
		return r.mon.Execute(ctx, "send-key", a, nil)
	})
}

// ---- dump ----

// dumpTimeout bounds a memory dump; QEMU cannot cancel one, so after it
// the command fails while QEMU may still finish writing.
const dumpTimeout = 30 * time.Minute

// dumpSeq names the descriptors passed to QEMU for dumps.
var dumpSeq atomic.Uint64

// dumpStatus is query-dump's answer and DUMP_COMPLETED's "result".
type dumpStatus struct {
	Status    string `json:"status"`
	Completed uint64 `json:"completed"`
	Total     uint64 `json:"total"`
}

func cmdDump(ctx context.Context, d *Driver, dm *dom, args []string) error {
	format := "elf"
	var file string
	var reset, crash bool
	for _, a := range args {
		switch {
		case a == "--memory-only", a == "--live":
			// A dump is always of guest memory (ELF or kdump), never
			// QEMU's migration stream; QEMU stops the CPUs while it
			// writes, whatever --live says.
		case a == "--reset":
			reset = true
		case a == "--crash":
			crash = true
		case strings.HasPrefix(a, "--format="):
			format = strings.TrimPrefix(a, "--format=")
		case strings.HasPrefix(a, "--"):
			return errBadArgs
		case file == "":
			file = a
		default:
			return errBadArgs
		}
	}
	if file == "" || reset && crash {
		return errBadArgs
	}
	if !filepath.IsAbs(file) {
		return errorf(ErrInvalid, "dump %s: %q is not an absolute path", dm.name, file)
	}
	// The domain's lock is held to start the dump, not while QEMU writes
	// it: a long dump must not keep destroy (or stats) waiting.
	dm.op.Lock()
	locked := true
	unlock := func() {
		if locked {
			locked = false
			dm.op.Unlock()
		}
	}
	defer unlock()
	r, err := dm.activeRun("dump")
	if err != nil {
		return err
	}
	dm.mu.Lock()
	wasRunning := dm.state == StateRunning
	dm.mu.Unlock()
	if err := d.dumpMemory(ctx, r, file, format, unlock); err != nil {
		return err
	}
	if wasRunning {
		// QEMU resumes the guest right after closing the file; its
		// RESUME event brings the state back to running.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			dm.mu.Lock()
			st := dm.state
			dm.mu.Unlock()
			if st != StatePaused {
				break
			}
		}
	}
	if !reset && !crash {
		return nil
	}
	dm.op.Lock()
	locked = true
	if cur, _ := dm.activeRun("dump"); cur != r {
		return errorf(ErrBusy, "dump %s: the memory is in %s, but the domain stopped before the %s", dm.name, file, map[bool]string{true: "reset", false: "crash"}[reset])
	}
	switch {
	case reset:
		if err := r.qmp.SystemReset(); err != nil {
			return errorf(ErrIO, "dump %s: the memory is in %s, but the reset failed: %w", dm.name, file, err)
		}
	case crash:
		r.mu.Lock()
		r.crashed = true
		r.mu.Unlock()
		return d.destroy(ctx, dm, ReasonCrashed)
	}
	return nil
}

// dumpMemory writes the guest's memory to file in format. qemufs opens the
// file with its own rights and passes the descriptor to QEMU (getfd), so
// QEMU, confined and maybe another user, need not reach the path. It calls
// started once QEMU has taken the dump on, then waits for its end.
func (d *Driver) dumpMemory(ctx context.Context, r *run, file, format string, started func()) (err error) {
	name := r.dm.name
	var capab struct {
		Formats []string `json:"formats"`
	}
	if err := r.mon.Execute(ctx, "query-dump-guest-memory-capability", nil, &capab); err != nil {
		return errorf(ErrIO, "dump %s: %w", name, err)
	}
	if !slices.Contains(capab.Formats, format) {
		return errorf(ErrInvalid, "dump %s: format %q is not supported by this QEMU; it has %s", name, format, strings.Join(capab.Formats, ", "))
	}
	var st dumpStatus
	if err := r.mon.Execute(ctx, "query-dump", nil, &st); err == nil && st.Status == "active" {
		return errorf(ErrBusy, "dump %s: another dump is in progress", name)
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		kind := ErrInvalid
		if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EROFS) {
			kind = ErrPerm
		}
		// %v: the kind gives the errno (EINVAL, EACCES), not the
		// open's ENOENT, which would read as "no such ctl file".
		return errorf(kind, "dump %s: cannot write the dump file: %v", name, err)
	}
	defer func() {
		if err != nil && !errors.Is(err, ErrInterrupted) {
			os.Remove(file)
		}
	}()
	var fst syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &fst); err != nil {
		f.Close()
		return errorf(ErrIO, "dump %s: %w", name, err)
	}
	fdname := fmt.Sprintf("qemufs-dump-%d", dumpSeq.Add(1))
	err = r.mon.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": fdname}, nil, f)
	f.Close()
	if err != nil {
		return errorf(ErrIO, "dump %s: passing the file to QEMU: %w", name, err)
	}
	wctx, cancel := context.WithTimeout(ctx, dumpTimeout)
	defer cancel()
	evs, err := r.mon.Events(wctx)
	if err != nil {
		return errorf(ErrIO, "dump %s: %w", name, err)
	}
	// QEMU stops a running guest while it dumps and resumes it after: the
	// STOP it sends is a pause for dumping, as libvirt names it.
	r.mu.Lock()
	r.pauseReason = "dumping"
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		if r.pauseReason == "dumping" {
			r.pauseReason = ""
		}
		r.mu.Unlock()
	}()
	d.appendLog(r.files.Log, "dumping guest memory (%s) to %s", format, file)
	err = r.mon.Execute(ctx, "dump-guest-memory", map[string]any{
		"paging": false, "protocol": "fd:" + fdname, "detach": true, "format": format,
	}, nil)
	if err != nil {
		r.mon.Execute(context.Background(), "closefd", map[string]any{"fdname": fdname}, nil)
		return errorf(ErrIO, "dump %s: %w", name, err)
	}
	started()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		var failure string
		select {
		case ev, ok := <-evs:
			if !ok {
				switch {
				case ctx.Err() != nil:
					return errorf(ErrInterrupted, "dump %s: interrupted; QEMU goes on writing %s", name, file)
				case wctx.Err() != nil:
					return errorf(ErrIO, "dump %s: not done after %s; QEMU may still be writing %s", name, dumpTimeout, file)
				}
				// The monitor connection ended: QEMU is gone.
				return errorf(ErrIO, "dump %s: the domain stopped while dumping", name)
			}
			if ev.Event != "DUMP_COMPLETED" {
				continue
			}
			if e, ok := ev.Data["error"].(string); ok {
				failure = e
			} else {
				res, _ := json.Marshal(ev.Data["result"])
				json.Unmarshal(res, &st)
			}
		case <-tick.C:
			// The event is the signal; polling covers a lost one.
			if err := r.mon.Execute(ctx, "query-dump", nil, &st); err != nil {
				continue
			}
		case <-r.done:
			return errorf(ErrIO, "dump %s: the domain stopped while dumping", name)
		}
		if failure == "" && st.Status == "failed" {
			failure = "QEMU reports the dump failed"
		}
		if failure != "" {
			d.appendLog(r.files.Log, "dump to %s failed: %s", file, failure)
			return errorf(ErrIO, "dump %s: %s", name, failure)
		}
		if st.Status == "completed" {
			// QEMU reports completion before its dump thread closes the
			// file and resumes the guest; a dump started before that
			// has its file closed by the previous dump's cleanup. The
			// dump is done when QEMU no longer holds the file.
			if !waitFileClosed(r.proc.Pid, fst.Dev, fst.Ino, 10*time.Second) {
				d.appendLog(r.files.Log, "dump to %s: QEMU still holds the file after completing", file)
			}
			d.appendLog(r.files.Log, "guest memory dumped to %s (%d bytes)", file, st.Completed)
			return nil
		}
	}
}

// waitFileClosed waits, bounded, until process pid has no descriptor open
// on the file dev/ino; it reports whether that happened.
func waitFileClosed(pid int, dev, ino uint64, timeout time.Duration) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	deadline := time.Now().Add(timeout)
	for {
		open := false
		ents, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrPermission) {
			// A QEMU we may not inspect: give its cleanup a moment.
			time.Sleep(200 * time.Millisecond)
			return false
		}
		if err != nil {
			return true // the process is gone
		}
		for _, e := range ents {
			var st syscall.Stat_t
			if syscall.Stat(filepath.Join(dir, e.Name()), &st) == nil && st.Dev == dev && st.Ino == ino {
				open = true
				break
			}
		}
		if !open {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
