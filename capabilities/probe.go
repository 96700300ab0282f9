package capabilities

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// qmpConn is the part of a QMP connection (*monitor.Conn) probing uses.
// Execute must be safe to call from several goroutines at once, so that
// queries are pipelined.
type qmpConn interface {
	Execute(ctx context.Context, command string, args, result any) error
	Close() error
}

// dialFunc connects to a QMP socket and negotiates capabilities.
type dialFunc func(ctx context.Context, socketPath string) (qmpConn, error)

// probeArgs is the QEMU command line of a probe, after the binary: no
// machine, no devices, no display, stopped, QMP on an inherited listening
// socket (fd 3). Passing a socket we already listen on means we can connect
// before QEMU is even up: no polling for a socket file to appear.
func probeArgs(accels []string) []string {
	args := []string{
		"-S", "-no-user-config", "-nodefaults", "-display", "none",
		"-machine", "none",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
	}
	for _, a := range accels {
		args = append(args, "-accel", a)
	}
	return args
}

// probeOptions says what to ask a binary.
type probeOptions struct {
	// accels to try, in order ("kvm", "tcg"); empty means QEMU's default.
	accels []string
	// expandCPUs asks for the feature list of CPU models of this vendor
	// (CPUID vendor string), "" for none; only done for the host's arch.
	expandCPUs string
	dial       dialFunc
}

// probeBinary runs one QEMU binary and asks it what it supports. ctx bounds
// the whole probe; the process is killed by pid when done.
func probeBinary(ctx context.Context, path string, opts probeOptions) (*Emulator, error) {
	// The socket path must fit sun_path (108 bytes); a long $TMPDIR does not.
	tmp := os.TempDir()
	if len(tmp) > 64 {
		tmp = "/tmp"
	}
	dir, err := os.MkdirTemp(tmp, "qemufs-probe-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "qmp")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen for QMP: %w", err)
	}
	l.SetUnlinkOnClose(false)
	lf, err := l.File()
	l.Close()
	if err != nil {
		return nil, fmt.Errorf("listen for QMP: %w", err)
	}
	out := &tailBuffer{max: 4096}
	cmd := exec.Command(path, probeArgs(opts.accels)...)
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	// A wrapper script that runs QEMU as a child, rather than exec'ing it,
	// would keep our output pipe open after the kill: do not wait for it.
	cmd.WaitDelay = time.Second
	setProbeAttrs(cmd)
	err = cmd.Start()
	lf.Close()
	if err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	defer func() {
		killProbe(cmd)
		<-exited
	}()

	// Stop waiting as soon as QEMU dies, whatever the probe is doing.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-exited:
			cancel(errExited)
		case <-ctx.Done():
		}
	}()
	fail := func(what string, err error) error {
		if connLost(err) {
			// QEMU closing the connection is usually QEMU dying: wait
			// (briefly) for its exit status, the better explanation.
			t := time.NewTimer(time.Second)
			select {
			case <-exited:
			case <-t.C:
			}
			t.Stop()
		}
		if errors.Is(context.Cause(ctx), errExited) || isClosed(exited) {
			<-exited
			return fmt.Errorf("%s: QEMU exited (%s)%s", what, cmd.ProcessState, out.note())
		}
		if dl, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && time.Until(dl) < time.Second {
			// A socket deadline taken from ctx's fires a moment before ctx.
			<-ctx.Done()
		}
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%v)", context.Cause(ctx), err)
		}
		return fmt.Errorf("%s: %w%s", what, err, out.note())
	}
	conn, err := opts.dial(ctx, sock)
	if err != nil {
		return nil, fail("QMP connect", err)
	}
	defer conn.Close()
	e, err := query(ctx, conn, opts)
	if err != nil {
		return nil, fail("QMP", err)
	}
	e.Path = path
	return e, nil
}

var errExited = errors.New("QEMU exited")

// connLost reports errors that mean the peer went away.
func connLost(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// QMP reply shapes, limited to the fields probing uses.
type (
	qmpVersion struct {
		QEMU    struct{ Major, Minor, Micro int } `json:"qemu"`
		Package string                            `json:"package"`
	}
	qmpMachine struct {
		Name             string `json:"name"`
		Alias            string `json:"alias"`
		IsDefault        bool   `json:"is-default"`
		CPUMax           int    `json:"cpu-max"`
		Deprecated       bool   `json:"deprecated"`
		DefaultCPUType   string `json:"default-cpu-type"`
		DefaultRAMID     string `json:"default-ram-id"`
		NUMAMemSupported bool   `json:"numa-mem-supported"`
		HotplugCPUs      bool   `json:"hotpluggable-cpus"`
	}
	qmpCPUDef struct {
		Name        string   `json:"name"`
		Typename    string   `json:"typename"`
		Unavailable []string `json:"unavailable-features"`
		Deprecated  bool     `json:"deprecated"`
		AliasOf     string   `json:"alias-of"`
	}
	qmpName      struct{ Name string }
	qmpExpansion struct {
		Model struct {
			Props map[string]any `json:"props"`
		} `json:"model"`
	}
)

// query asks everything at once (the queries are independent, so they are
// all in flight together) and builds the Emulator from the replies.
func query(ctx context.Context, conn qmpConn, opts probeOptions) (*Emulator, error) {
	var (
		ver      qmpVersion
		target   struct{ Arch string }
		kvm      struct{ Enabled, Present bool }
		machines []qmpMachine
		cpus     []qmpCPUDef
		cmds     []qmpName
		types    []qmpName
		expanded map[string]qmpExpansion
		sev      qmpSEVCapability
		sgx      qmpSGXCapability
	)
	type call struct {
		cmd      string
		args     any
		result   any
		required bool
		err      error
	}
	calls := []*call{
		{cmd: "query-version", result: &ver, required: true},
		{cmd: "query-machines", result: &machines, required: true},
		{cmd: "query-target", result: &target},
		{cmd: "query-kvm", result: &kvm},
		{cmd: "query-commands", result: &cmds},
		{cmd: "qom-list-types", args: map[string]any{"abstract": false}, result: &types},
		// Launch security: these fail (with QEMU's reason) on hosts
		// without SEV or SGX, which is an answer, not a probe failure.
		{cmd: "query-sev-capabilities", result: &sev},
		{cmd: "query-sgx-capabilities", result: &sgx},
	}
	var wg sync.WaitGroup
	for _, c := range calls {
		wg.Go(func() { c.err = conn.Execute(ctx, c.cmd, c.args, c.result) })
	}
	// CPU models, then (host arch only) their features, in one chain.
	var cpuErr error
	wg.Go(func() {
		if cpuErr = conn.Execute(ctx, "query-cpu-definitions", nil, &cpus); cpuErr != nil || opts.expandCPUs == "" {
			return
		}
		expanded = expandModels(ctx, conn, expansionCandidates(cpus, opts.expandCPUs))
	})
	wg.Wait()
	for _, c := range calls {
		if c.err != nil && (c.required || ctx.Err() != nil) {
			return nil, fmt.Errorf("%s: %w", c.cmd, c.err)
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	e := &Emulator{
		Version:    fmt.Sprintf("%d.%d.%d", ver.QEMU.Major, ver.QEMU.Minor, ver.QEMU.Micro),
		VersionNum: ver.QEMU.Major*1000000 + ver.QEMU.Minor*1000 + ver.QEMU.Micro,
		Package:    strings.TrimSpace(ver.Package),
		KVMPresent: kvm.Present,
	}
	if target.Arch != "" {
		e.Arch = libvirtArch(target.Arch)
	}
	e.ProbedAccel = "tcg"
	if kvm.Enabled {
		e.ProbedAccel = "kvm"
	}
	for _, m := range machines {
		e.Machines = append(e.Machines, Machine{
			Name: m.Name, Alias: m.Alias, MaxCPUs: m.CPUMax, Default: m.IsDefault,
			Deprecated: m.Deprecated, DefaultCPUType: m.DefaultCPUType, DefaultRAMID: m.DefaultRAMID,
			NUMAMemSupported: m.NUMAMemSupported, HotplugCPUs: m.HotplugCPUs,
		})
	}
	sort.Slice(e.Machines, func(i, j int) bool { return machineLess(e.Machines[i].Name, e.Machines[j].Name) })
	if cpuErr == nil {
		features := map[string]bool{}
		for _, c := range cpus {
			m := CPUModel{
				Name: c.Name, Typename: c.Typename, Usable: len(c.Unavailable) == 0,
				Deprecated: c.Deprecated, Unavailable: c.Unavailable, AliasOf: c.AliasOf,
			}
			if x, ok := expanded[c.Name]; ok {
				m.Vendor, m.Features = expansionFeatures(x, features)
			}
			e.CPUModels = append(e.CPUModels, m)
		}
		e.CPUFeatures = sortedKeys(features)
		sort.Slice(e.CPUModels, func(i, j int) bool { return e.CPUModels[i].Name < e.CPUModels[j].Name })
	}
	e.Commands = namesSet(cmds)
	e.Devices = namesSet(types)
	sevCall, sgxCall := calls[len(calls)-2], calls[len(calls)-1]
	setLaunchSecurity(e, &sev, sevCall.err, &sgx, sgxCall.err)
	return e, nil
}

// expansionCandidates picks the CPU models worth expanding to find the
// host's: real (not alias) models that may be of vendor. Names tell the
// vendor well enough to skip half the expansions, which are the costliest
// part of a probe; the expansion result is checked again afterwards.
func expansionCandidates(cpus []qmpCPUDef, vendor string) []string {
	var out []string
	for _, c := range cpus {
		if c.AliasOf != "" || c.Name == "max" || c.Name == "host" || c.Name == "base" {
			continue
		}
		if nameVendor(c.Name) == "" || nameVendor(c.Name) == vendor {
			out = append(out, c.Name)
		}
	}
	return out
}

// nameVendor guesses an x86 CPU model's vendor from its name: "" for the
// generic models (qemu64, kvm64...), which fit any vendor.
func nameVendor(model string) string {
	base, _, _ := strings.Cut(model, "-")
	switch {
	case base == "EPYC" || strings.HasPrefix(base, "Opteron") || base == "phenom" || base == "athlon":
		return "AuthenticAMD"
	case base == "Dhyana":
		return "HygonGenuine"
	case base == "qemu64" || base == "qemu32" || base == "kvm64" || base == "kvm32":
		return ""
	}
	return "GenuineIntel"
}

// expandModels runs a static expansion of each model, all in flight at
// once. Models QEMU cannot expand are left out.
func expandModels(ctx context.Context, conn qmpConn, names []string) map[string]qmpExpansion {
	res := make([]qmpExpansion, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Go(func() {
			args := map[string]any{"type": "static", "model": map[string]any{"name": n}}
			errs[i] = conn.Execute(ctx, "query-cpu-model-expansion", args, &res[i])
		})
	}
	wg.Wait()
	out := map[string]qmpExpansion{}
	for i, n := range names {
		if errs[i] == nil {
			out[n] = res[i]
		}
	}
	return out
}

// expansionFeatures returns the vendor and the enabled features of an
// expanded model, and adds every boolean property to all.
func expansionFeatures(x qmpExpansion, all map[string]bool) (vendor string, features []string) {
	for k, v := range x.Model.Props {
		switch v := v.(type) {
		case bool:
			all[k] = true
			if v {
				features = append(features, k)
			}
		case string:
			if k == "vendor" {
				vendor = v
			}
		}
	}
	sort.Strings(features)
	return vendor, features
}

func namesSet(names []qmpName) map[string]bool {
	if names == nil {
		return nil
	}
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n.Name] = true
	}
	return m
}

func sortedKeys(m map[string]bool) []string {
	if len(m) == 0 {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// machineLess orders machine names naturally: pc-i440fx-2.10 after
// pc-i440fx-2.9.
func machineLess(a, b string) bool {
	for a != "" && b != "" {
		ia, ib := digitsAt(a), digitsAt(b)
		if ia > 0 && ib > 0 {
			na, nb := strings.TrimLeft(a[:ia], "0"), strings.TrimLeft(b[:ib], "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = a[ia:], b[ib:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitsAt(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}

// tailBuffer keeps the last max bytes written: QEMU's output, to explain a
// failed probe.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

// note is ": output: <last lines>" or "" when QEMU said nothing.
func (t *tailBuffer) note() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := string(bytes.TrimSpace(t.buf))
	if s == "" {
		return ""
	}
	s = strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " | ")), " ")
	if len(s) > 500 {
		s = "..." + s[len(s)-500:]
	}
	return "; output: " + s
}
