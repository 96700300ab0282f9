package capabilities

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestAccels(t *testing.T) {
	// Each string lists what host and binary have: t(cg), k(vm), h(vf).
	tests := []struct {
		name, host, binary, want string
	}{
		{"tcg only", "t", "t", "tcg"},
		{"kvm host and binary", "tk", "tk", "tcg kvm"},
		{"kvm device but binary without kvm", "tk", "t", "tcg"},
		{"binary with kvm, no usable device", "t", "tk", "tcg"},
		{"kvm-only binary with kvm", "tk", "k", "kvm"},
		{"kvm-only binary without kvm", "t", "k", ""},
		{"hvf host and binary", "th", "th", "tcg hvf"},
		{"hvf host, binary without hvf", "th", "t", "tcg"},
		{"hvf binary on a host without it", "t", "th", "tcg"},
	}
	sup := func(s string) AccelSupport {
		return AccelSupport{TCG: strings.Contains(s, "t"), KVM: strings.Contains(s, "k"), HVF: strings.Contains(s, "h")}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := strings.Join(Accels(sup(tt.host), sup(tt.binary)), " ")
			if got != tt.want {
				t.Errorf("- want: %q\n-  got: %q", tt.want, got)
			}
		})
	}
	// What a probe reports feeds the binary side.
	e := &Emulator{KVMPresent: true, Devices: toSet([]string{"kvm-accel"})}
	if got := binaryAccels(e); got != (AccelSupport{KVM: true}) {
		t.Errorf("kvm-only binary: %+v", got)
	}
	if got := binaryAccels(&Emulator{}); got != (AccelSupport{TCG: true}) {
		t.Errorf("binary without QOM types: %+v", got)
	}
}

func TestKVMUsable(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "kvm")
	os.WriteFile(regular, nil, 0o666)
	tests := []struct {
		dev  string
		want bool
	}{
		{filepath.Join(dir, "missing"), false},
		{regular, false},     // not a character device
		{"/dev/null", false}, // a character device, but opened it is not KVM... see below
	}
	// /dev/null is a character device that opens read-write: kvmUsable
	// only checks what QEMU needs (open O_RDWR on a char device), so it
	// says yes; this pins that the check is about access, not identity.
	tests[2].want = true
	for _, tt := range tests {
		if got := kvmUsable(tt.dev); got != tt.want {
			t.Errorf("kvmUsable(%s) = %v, want %v", tt.dev, got, tt.want)
		}
	}
}

// newTestProber is a prober over dir, with a private cache.
func newTestProber(t testing.TB, dir string) *Prober {
	return &Prober{
		SearchDirs: []string{dir},
		CacheDir:   filepath.Join(t.TempDir(), "cache"),
		KVMDevice:  filepath.Join(t.TempDir(), "no-kvm"),
		Version:    "test-1",
		Timeout:    10 * time.Second,
	}
}

func emulatorByPath(t *testing.T, caps *Capabilities, path string) *Emulator {
	t.Helper()
	for _, e := range caps.Emulators {
		if e.Path == path {
			return e
		}
	}
	t.Fatalf("no emulator %s in %d emulators", path, len(caps.Emulators))
	return nil
}

// TestProbeOddEmulators: one emulator of each kind of failure next to a good
// one; the failures are reported with a reason, the good one is usable, and
// a hang costs the timeout, not the whole probe.
func TestProbeOddEmulators(t *testing.T) {
	dir := t.TempDir()
	good := writeFake(t, dir, "qemu-system-sparc", "ok", "")
	hang := writeFake(t, dir, "qemu-system-mips", "hang", "")
	silent := writeFake(t, dir, "qemu-system-mipsel", "silent", "")
	garbage := writeFake(t, dir, "qemu-system-ppc", "garbage", "")
	exit := writeFake(t, dir, "qemu-system-m68k", "exit", "")
	notExec := filepath.Join(dir, "qemu-system-alpha")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
	missing := filepath.Join(dir, "gone", "qemu-system-microblaze")

	p := newTestProber(t, dir)
	p.ExtraPaths = []string{missing}
	p.Timeout = 3 * time.Second
	start := time.Now()
	caps, err := p.Probe(context.Background())
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	t.Logf("probe took %v", time.Since(start))

	e := emulatorByPath(t, caps, good)
	if e.Err != "" || e.Arch != "sparc" || e.Version != "9.9.0" || len(e.Machines) != 3 {
		t.Errorf("good emulator: %+v", e)
	}
	tests := []struct {
		path, arch string
		want       []string
	}{
		{hang, "mips", []string{"timed out after 3s"}},
		{silent, "mipsel", []string{"timed out"}},
		{garbage, "ppc", []string{"greeting"}},
		{exit, "m68k", []string{"QEMU exited", "exit status 1", "could not load firmware"}},
		{missing, "microblaze", []string{"no such file or directory"}},
	}
	for _, tt := range tests {
		e := emulatorByPath(t, caps, tt.path)
		for _, w := range tt.want {
			if !strings.Contains(e.Err, w) {
				t.Errorf("%s: Err %q lacks %q", filepath.Base(tt.path), e.Err, w)
			}
		}
		if e.Arch != tt.arch {
			t.Errorf("%s: arch %q, want %q (from the name)", tt.path, e.Arch, tt.arch)
		}
	}
	for _, e := range caps.Emulators {
		if e.Path == notExec {
			t.Errorf("non-executable %s was probed", notExec)
		}
	}
	// Broken emulators are not offered to domains, and the error says what is.
	if _, _, err := caps.Lookup("mips", "qemu", "", ""); err == nil || !strings.Contains(err.Error(), "available arches: sparc") {
		t.Errorf("Lookup(mips) = %v", err)
	}
	if _, m, err := caps.Lookup("sparc", "qemu", "fakeboard", ""); err != nil || m.Name != "fakeboard-1.0" {
		t.Errorf("Lookup(sparc, fakeboard) = %v, %v", m, err)
	}
}

func TestProbeNothingUsable(t *testing.T) {
	dir := t.TempDir()
	p := newTestProber(t, dir)
	caps, err := p.Probe(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no QEMU emulator found in "+dir) {
		t.Fatalf("Probe of an empty dir: %v", err)
	}
	if caps == nil || caps.Host.Arch == "" || len(caps.Host.NUMA) == 0 {
		t.Fatalf("no host part with the error: %+v", caps)
	}

	writeFake(t, dir, "qemu-system-sparc", "exit", "")
	_, err = p.Probe(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no usable QEMU emulator") || !strings.Contains(err.Error(), "qemu-system-sparc") {
		t.Fatalf("Probe with only a broken emulator: %v", err)
	}
}

func countLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// TestCacheInvalidation: a probe is reused until the binary (size, mtime,
// ctime) or qemufs' version changes.
func TestCacheInvalidation(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(t.TempDir(), "runs")
	fake := writeFake(t, dir, "qemu-system-sparc", "ok", log)
	p := newTestProber(t, dir)

	probe := func() *Emulator {
		t.Helper()
		caps, err := p.Probe(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return emulatorByPath(t, caps, fake)
	}
	runs := 0
	step := func(what string, wantProbe bool) {
		t.Helper()
		e := probe()
		n := countLines(t, log)
		want := runs
		if wantProbe {
			want++
		}
		if n != want {
			t.Errorf("%s: %d runs, want %d", what, n-runs, want-runs)
		}
		if e.Cached == wantProbe {
			t.Errorf("%s: Cached = %v", what, e.Cached)
		}
		if e.Err != "" || len(e.Machines) != 3 {
			t.Errorf("%s: emulator %+v", what, e)
		}
		runs = n
	}
	step("first probe", true)
	step("unchanged", false)

	// touch: new mtime (and ctime).
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(fake, later, later); err != nil {
		t.Fatal(err)
	}
	step("touched", true)
	step("unchanged after touch", false)

	// chmod to the same mode and the same mtime again: only ctime changes.
	fi, _ := os.Stat(fake)
	_, _, ctime0, _ := statKey(fake)
	for i := 0; ; i++ {
		if err := os.Chmod(fake, fi.Mode()); err != nil {
			t.Fatal(err)
		}
		if _, _, c, _ := statKey(fake); c != ctime0 {
			break
		}
		if i == 1000 {
			t.Fatal("ctime does not change")
		}
		// Timestamps come from a coarse clock: wait for its next tick.
		time.Sleep(time.Millisecond)
	}
	if err := os.Chtimes(fake, later, later); err != nil {
		t.Fatal(err)
	}
	if _, m, _, _ := statKey(fake); m != later.UnixNano() {
		t.Fatalf("mtime moved: %d", m)
	}
	step("ctime only", true)

	// Replace the binary with another one of another size.
	data, _ := os.ReadFile(fake)
	os.WriteFile(fake+".new", append(data, []byte("# v2\n")...), 0o755)
	if err := os.Rename(fake+".new", fake); err != nil {
		t.Fatal(err)
	}
	step("replaced", true)

	p.Version = "test-2"
	step("new qemufs version", true)
	step("unchanged again", false)
}

// TestFailuresCached: a binary that fails is not re-run until it changes,
// but one that timed out is (the timeout may have been the machine's load).
func TestFailuresCached(t *testing.T) {
	dir := t.TempDir()
	logs := t.TempDir()
	exitLog, hangLog := filepath.Join(logs, "exit"), filepath.Join(logs, "hang")
	writeFake(t, dir, "qemu-system-m68k", "exit", exitLog)
	writeFake(t, dir, "qemu-system-mips", "hang", hangLog)
	p := newTestProber(t, dir)
	p.Timeout = time.Second
	for i := 0; i < 2; i++ {
		caps, _ := p.Probe(context.Background())
		for _, e := range caps.Emulators {
			if e.Err == "" {
				t.Errorf("%s: no error", e.Path)
			}
		}
	}
	if n := countLines(t, exitLog); n != 1 {
		t.Errorf("failing emulator ran %d times, want 1 (cached)", n)
	}
	if n := countLines(t, hangLog); n != 2 {
		t.Errorf("hanging emulator ran %d times, want 2 (timeouts not cached)", n)
	}
}

// TestProbeKillsWrapperChildren: a wrapper script that runs QEMU as its
// child (no exec) and hangs is still timed out, and its child is killed too.
func TestProbeKillsWrapperChildren(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(t.TempDir(), "runs")
	path := writeForkingFake(t, dir, "qemu-system-mips", "hang", log)
	p := newTestProber(t, dir)
	p.Timeout = time.Second
	caps, _ := p.Probe(context.Background())
	if e := emulatorByPath(t, caps, path); !strings.Contains(e.Err, "timed out") {
		t.Errorf("Err = %q", e.Err)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscanf(string(b), "hang %d", &pid); err != nil {
		t.Fatalf("log %q: %v", b, err)
	}
	// Killed: gone, or a zombie waiting for its new parent to reap it.
	// SIGKILL takes effect when the child is next scheduled, which on a
	// loaded machine may be a moment after Probe returned.
	state := ""
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) > 0 {
			state = f[0]
		}
		if state == "Z" {
			return
		}
		if time.Now().After(deadline) {
			break
		}
	}
	syscall.Kill(pid, syscall.SIGKILL)
	t.Errorf("wrapper's child %d still running 5 s after the probe timed out (state %s)", pid, state)
}

// TestProbeRespectsContext: cancelling the caller's context ends all probes
// at once and Probe says so.
func TestProbeRespectsContext(t *testing.T) {
	dir := t.TempDir()
	writeFake(t, dir, "qemu-system-mips", "hang", "")
	p := newTestProber(t, dir)
	p.Timeout = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		_, err = p.Probe(ctx)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Probe did not return after cancel")
	}
	if err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Errorf("Probe after cancel: %v", err)
	}
}

// TestProbeKVMAccess: a KVM device the daemon opens counts only when
// KVMAccess (QEMU's user's access) allows it too; the refusal is kept.
func TestProbeKVMAccess(t *testing.T) {
	denied := errors.New("qemu cannot open it")
	for _, tc := range []struct {
		name   string
		access func(string) error
		want   bool
	}{
		{"no check", nil, true},
		{"allowed", func(string) error { return nil }, true},
		{"denied", func(string) error { return denied }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProber(t, t.TempDir())
			p.KVMDevice = "/dev/null" // opens read-write: usable for the daemon
			var asked string
			if tc.access != nil {
				p.KVMAccess = func(dev string) error { asked = dev; return tc.access(dev) }
			}
			caps, _ := p.Probe(context.Background())
			if caps.Host.KVM != tc.want {
				t.Errorf("Host.KVM = %v, want %v", caps.Host.KVM, tc.want)
			}
			if tc.name == "denied" && caps.Host.KVMDenied != denied.Error() {
				t.Errorf("Host.KVMDenied = %q", caps.Host.KVMDenied)
			}
			if tc.access != nil && asked != "/dev/null" {
				t.Errorf("KVMAccess asked about %q", asked)
			}
			if (p.KVMDenied != nil) != !tc.want || tc.name == "denied" && !errors.Is(p.KVMDenied, denied) {
				t.Errorf("KVMDenied = %v", p.KVMDenied)
			}
		})
	}
}
