package capabilities

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
)

// Prober finds the QEMU emulators on this host, asks each what it supports
// and describes the host, caching per-binary answers on disk so that a
// mount with a warm cache starts without running QEMU.
//
// The zero value probes /usr/bin with no cache. Fields must not change
// while Probe runs.
type Prober struct {
	// CacheDir is the instance's cache directory; entries go in its
	// "capabilities" subdirectory. Empty disables the cache.
	CacheDir string
	// ExtraPaths are qemu.conf's emulator_paths: binaries to probe, or
	// directories searched like SearchDirs.
	ExtraPaths []string
	// SearchDirs are searched for qemu, qemu-kvm and qemu-system-*
	// (default /usr/bin; /usr/libexec/qemu-kvm is also tried by default).
	SearchDirs []string
	// Timeout bounds the probe of one binary (default 30s). A binary that
	// hangs is reported with Emulator.Err and does not hold up the others
	// for longer than that.
	Timeout time.Duration
	// Version is the qemufs version; a new version re-probes everything.
	Version string
	// SecModels are the active security models (from the security stack),
	// shown as <secmodel> in capabilities.xml.
	SecModels []SecModel
	// KVMDevice is the KVM device node (default /dev/kvm).
	KVMDevice string
	// KVMAccess, when set, says whether QEMU, as the user it will run as,
	// can open the KVM device (the daemon opening it is not enough when
	// QEMU runs as another user, as libvirt's probing as that user
	// finds); an error makes KVM unusable and is kept in KVMDenied.
	KVMAccess func(dev string) error
	// KVMDenied is set by Probe to why KVMAccess refused the device.
	KVMDenied error
	// HostRoot is the root under which /proc, /sys and firmware are read
	// (default "/"); tests point it at a fixture tree.
	HostRoot string
	// FirmwareDirs are the instance's firmware descriptor directories,
	// searched before HostRoot's /etc/qemu/firmware and
	// /usr/share/qemu/firmware (docs/uefi.md).
	FirmwareDirs []string
	// Parallel bounds how many binaries are probed at once (default
	// 2*GOMAXPROCS, at least 4).
	Parallel int
}

// DefaultTimeout bounds the probe of one binary when Prober.Timeout is 0.
// It is generous: a cold QEMU under load can take seconds to start.
const DefaultTimeout = 30 * time.Second

// Probe describes the host and every emulator found. It never fails
// because one emulator is broken: that one is listed with Err set. It
// returns an error only when no emulator at all could be probed (or ctx
// ended), and then still returns the host part.
func (p *Prober) Probe(ctx context.Context) (*Capabilities, error) {
	caps := &Capabilities{}
	hostDone := make(chan struct{})
	go func() {
		defer close(hostDone)
		caps.Host = probeHost(p.hostRoot())
		caps.Host.SecModels = p.SecModels
	}()

	hostKVM := kvmUsable(p.kvmDevice())
	p.KVMDenied = nil
	if hostKVM && p.KVMAccess != nil {
		if err := p.KVMAccess(p.kvmDevice()); err != nil {
			hostKVM, p.KVMDenied = false, err
		}
	}
	hostHVF := hvfSupported()
	// The model expansion needs the host CPU vendor, before the host part.
	vendorID := cpuidVendor(parseCPUInfo(readFile(filepath.Join(p.hostRoot(), "proc/cpuinfo"))).vendor())

	modTime := modulesTime(p.hostRoot())
	lsKey := launchSecurityKey(p.hostRoot())
	paths := p.candidates()
	caps.Emulators = make([]*Emulator, len(paths))
	sem := make(chan struct{}, p.parallel())
	var wg sync.WaitGroup
	for i, path := range paths {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			caps.Emulators[i] = p.emulator(ctx, path, hostKVM, hostHVF, vendorID, modTime, lsKey)
		})
	}
	wg.Wait()
	<-hostDone
	caps.Host.KVM, caps.Host.HVF = hostKVM, hostHVF
	if p.KVMDenied != nil {
		caps.Host.KVMDenied = p.KVMDenied.Error()
	}
	if hostKVM {
		caps.Host.LaunchSecurity.applyVMTypes(kvmVMTypes(p.kvmDevice()))
	}

	firmware := findFirmware(p.hostRoot(), p.FirmwareDirs...)
	var ok int
	for _, e := range caps.Emulators {
		if e.Err != "" {
			continue
		}
		ok++
		e.Accels = Accels(AccelSupport{TCG: true, KVM: hostKVM, HVF: hostHVF}, binaryAccels(e))
		e.Firmware = firmware[e.Arch]
	}
	sortEmulators(caps.Emulators)
	describeHostCPU(&caps.Host, caps.Emulators)

	if err := ctx.Err(); err != nil {
		return caps, fmt.Errorf("probe capabilities: %w", err)
	}
	if ok == 0 {
		var why []string
		for _, e := range caps.Emulators {
			why = append(why, e.Path+": "+e.Err)
		}
		if len(why) == 0 {
			return caps, fmt.Errorf("probe capabilities: no QEMU emulator found in %s", strings.Join(append(p.searchDirs(), p.ExtraPaths...), ", "))
		}
		return caps, fmt.Errorf("probe capabilities: no usable QEMU emulator (%s)", strings.Join(why, "; "))
	}
	return caps, nil
}

func (p *Prober) hostRoot() string {
	if p.HostRoot == "" {
		return "/"
	}
	return p.HostRoot
}

func (p *Prober) kvmDevice() string {
	if p.KVMDevice == "" {
		return "/dev/kvm"
	}
	return p.KVMDevice
}

func (p *Prober) searchDirs() []string {
	if p.SearchDirs == nil {
		return []string{"/usr/bin"}
	}
	return p.SearchDirs
}

func (p *Prober) timeout() time.Duration {
	if p.Timeout <= 0 {
		return DefaultTimeout
	}
	return p.Timeout
}

func (p *Prober) parallel() int {
	if p.Parallel > 0 {
		return p.Parallel
	}
	return max(4, 2*runtime.GOMAXPROCS(0))
}

func (p *Prober) cacheDir() string {
	if p.CacheDir == "" {
		return ""
	}
	return filepath.Join(p.CacheDir, "capabilities")
}

// candidates lists the binaries to probe: qemu, qemu-kvm and qemu-system-*
// in each search dir, /usr/libexec/qemu-kvm (by default), and ExtraPaths.
// Names that resolve to the same file are probed once, under the first
// name found.
func (p *Prober) candidates() []string {
	type cand struct {
		path     string
		explicit bool // named in ExtraPaths: reported even when missing
	}
	var cands []cand
	scan := func(dir string) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, e := range ents {
			n := e.Name()
			if n == "qemu" || n == "qemu-kvm" || strings.HasPrefix(n, "qemu-system-") {
				cands = append(cands, cand{path: filepath.Join(dir, n)})
			}
		}
	}
	for _, d := range p.searchDirs() {
		scan(d)
	}
	if p.SearchDirs == nil {
		cands = append(cands, cand{path: "/usr/libexec/qemu-kvm"})
	}
	for _, x := range p.ExtraPaths {
		if fi, err := os.Stat(x); err == nil && fi.IsDir() {
			scan(x)
		} else {
			cands = append(cands, cand{path: x, explicit: true})
		}
	}
	var out []string
	seen := map[string]bool{}
	for _, c := range cands {
		fi, err := os.Stat(c.path)
		if err != nil {
			if c.explicit && !seen[c.path] {
				seen[c.path] = true
				out = append(out, c.path)
			}
			continue
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			continue
		}
		real, err := filepath.EvalSymlinks(c.path)
		if err != nil {
			real = c.path
		}
		if seen[real] || seen[c.path] {
			continue
		}
		seen[real], seen[c.path] = true, true
		out = append(out, c.path)
	}
	return out
}

// emulator returns the facts of one binary: from the cache when its key
// still matches, else from a new probe (then cached).
func (p *Prober) emulator(ctx context.Context, path string, hostKVM, hostHVF bool, vendorID string, modTime int64, lsKey string) *Emulator {
	size, mtime, ctime, err := statKey(path)
	if err != nil {
		return &Emulator{Path: path, Arch: archFromName(path), Err: fmt.Sprintf("emulator %s: %v", path, err)}
	}
	var accels []string
	if hostKVM {
		accels = []string{"kvm", "tcg"}
	} else if hostHVF {
		accels = []string{"hvf", "tcg"}
	}
	key := cacheKey{Format: cacheFormat, Path: path, Size: size, MtimeNs: mtime, CtimeNs: ctime,
		Qemufs: p.Version, Accels: strings.Join(accels, ","), ModsTime: modTime, LaunchSec: lsKey}
	// Only the host's arch needs CPU model features; the name says which
	// binaries are of another arch (an unknown name is asked).
	if a := archFromName(path); (a == "" || a == HostArch()) && isX86(HostArch()) {
		key.Expand = vendorID
	}
	if e := loadCache(p.cacheDir(), key); e != nil {
		return e
	}
	pctx, cancel := context.WithTimeout(ctx, p.timeout())
	defer cancel()
	e, err := probeBinary(pctx, path, probeOptions{accels: accels, expandCPUs: key.Expand, dial: dialMonitor})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("timed out after %v: %w", p.timeout(), err)
		}
		e = &Emulator{Path: path, Arch: archFromName(path), Err: fmt.Sprintf("probe %s: %v", path, err)}
		// A timeout may be the machine's load, not the binary: probe it
		// again next time. Other failures are the binary's, until it changes.
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return e
		}
	}
	if e.Arch == "" {
		e.Arch = archFromName(path)
	}
	storeCache(p.cacheDir(), key, e) // best effort: a read-only cache only costs time
	return e
}

// modulesTime is the newest mtime among QEMU module directories: installing
// a module package (qemu-system-gui, qemu-block-extra) adds device types to
// an unchanged binary.
func modulesTime(root string) int64 {
	var newest int64
	for _, pat := range []string{"usr/lib/*/qemu", "usr/lib/qemu", "usr/lib64/qemu"} {
		dirs, _ := filepath.Glob(filepath.Join(root, pat))
		for _, d := range dirs {
			if _, m, _, err := statKey(d); err == nil && m > newest {
				newest = m
			}
		}
	}
	return newest
}

// sortEmulators orders emulators so that the one Lookup picks for an arch
// comes first: usable before broken, qemu-system-<arch> before other names
// (qemu-system-x86_64 before qemu-system-x86_64-microvm), then by path.
func sortEmulators(es []*Emulator) {
	rank := func(e *Emulator) int {
		r := 0
		if e.Err != "" {
			r += 2
		}
		if filepath.Base(e.Path) != "qemu-system-"+qemuTarget(e.Arch) {
			r++
		}
		return r
	}
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if a.Arch != b.Arch {
			return a.Arch < b.Arch
		}
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra < rb
		}
		return a.Path < b.Path
	})
}

// describeHostCPU names the host CPU model and its extra features, using
// the CPU models of the first emulator of the host's arch that expanded
// them.
func describeHostCPU(h *Host, emus []*Emulator) {
	vendorID := cpuidVendor(h.CPU.Vendor)
	for _, e := range emus {
		if e.Err != "" || e.Arch != h.Arch || len(e.CPUFeatures) == 0 {
			continue
		}
		feats := qemuFeatures(h.CPU.Flags, e.CPUFeatures)
		if mm, ok := matchModel(e.CPUModels, vendorID, feats, false); ok {
			h.CPU.Model, h.CPU.Features = mm.Name, mm.Extra
		} else {
			h.CPU.Features = feats
		}
		return
	}
	h.CPU.Features = qemuFeatures(h.CPU.Flags, nil)
}
