// Package corpus_test measures package domain against libvirt's own test
// corpus (../shared/corpus/libvirt-qemuxml, libvirt 9.0's qemuxml2argv
// inputs with the argv libvirt expects).
//
// For every tier-1 and tier-2 case it checks:
//
//   - model: Parse accepts the XML; Expand works; the formatted expanded
//     XML parses back to the same bytes; expanding it again changes
//     nothing (idempotence); BuildCommand produces an argv (or rejects the
//     case with a clear *domain.Error).
//   - real start: the argv is run with the local QEMU 7.2 (TCG) paused.
//
// What counts as "accepted by real QEMU": QEMU started with the generated
// argv answers query-status over QMP (status "prelaunch"). Resources are
// made locally first (see prepare_test.go): disk images with qemu-img in
// the format the XML declares (block devices become image files; disks
// that share a placeholder path get their own image unless shareable),
// fake kernels, blank firmware and NVRAM files plus firmware descriptors
// for UEFI autoselection, directories, sockets and listeners for chardevs
// in connect mode, unique TCP ports for graphics and chardevs, SPICE TLS
// certificates (libvirt's test qemu.conf has spice_tls=1), and
// type='kvm' runs as 'qemu' (TCG), since this host has no /dev/kvm.
// A case is skipped, and counted separately with its reason, only when it
// needs what this host cannot provide: host devices (hostdev, /dev
// passthrough), KVM-only features (host-passthrough CPU), host networking
// (bridges, libvirt networks, macvtap, taps), network block servers,
// hugepages, swtpm, virtiofsd, vhost-vsock, a GPU, or host audio/SDL.
// The targets are asserted over the cases not skipped:
// tier 1 >= 95%, tier 2 >= 75%.
//
// Tier-3 cases go through the model checks only, to prove no input makes
// the package panic.
//
// Run with -v to see the counts per tier and every case that was not
// accepted, with its reason (CORPUS_VERBOSE=1 lists all cases;
// CORPUS_CASE=name runs one). It takes about 1.5 minutes on 2 cores.
package corpus_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/domain/qemutest"
)

// corpusDir is where the corpus lives: $QEMUFS_CORPUS, else
// shared/corpus/libvirt-qemuxml beside the checkout or one of the
// directories above it (the project's shared folder); for a clone of a
// local checkout (git clone . /tmp/fresh), the same beside its origin.
var corpusDir = func() string {
	if d := os.Getenv("QEMUFS_CORPUS"); d != "" {
		return d
	}
	rel := filepath.Join("shared", "corpus", "libvirt-qemuxml")
	starts := []string{filepath.Join("..", "..")}
	if out, err := exec.Command("git", "config", "--get", "remote.origin.url").Output(); err == nil {
		if origin := strings.TrimSpace(string(out)); filepath.IsAbs(origin) {
			starts = append(starts, origin)
		}
	}
	for _, start := range starts {
		dir, _ := filepath.Abs(start)
		for {
			if _, err := os.Stat(filepath.Join(dir, rel, "TIERS.txt")); err == nil {
				return filepath.Join(dir, rel)
			}
			if dir == filepath.Dir(dir) {
				break
			}
			dir = filepath.Dir(dir)
		}
	}
	return filepath.Join("..", "..", "..", rel)
}()

type corpusCase struct {
	name     string
	tier     string
	caps     string // x86_64-latest, x86_64-<ver> or fakecaps
	expected string // libvirt's expected argv file
}

func loadCases(t *testing.T) []corpusCase {
	tiers := map[string]string{}
	f, err := os.Open(filepath.Join(corpusDir, "TIERS.txt"))
	if err != nil {
		t.Skipf("corpus not available: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.Split(sc.Text(), "\t")
		if len(parts) == 2 && !strings.HasPrefix(parts[0], "#") {
			tiers[parts[1]] = parts[0]
		}
	}
	mf, err := os.ReadFile(filepath.Join(corpusDir, "MANIFEST.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []corpusCase
	for _, line := range strings.Split(string(mf), "\n") {
		parts := strings.Split(line, "\t")
		if len(parts) != 3 || strings.HasPrefix(line, "#") {
			continue
		}
		cases = append(cases, corpusCase{name: parts[0], tier: tiers[parts[0]], expected: parts[1], caps: parts[2]})
	}
	sort.Slice(cases, func(i, j int) bool { return cases[i].name < cases[j].name })
	return cases
}

// outcome is what happened to one case.
type outcome struct {
	c corpusCase
	// stage is where the case stopped: "parse", "expand", "roundtrip",
	// "idempotent", "argv", "skip", "start", or "ok".
	stage  string
	detail string
	// panicked is set when the package panicked (always a failure).
	panicked bool
	// sameDevices is set when the -device drivers equal libvirt's.
	sameDevices bool
}

// modelCheck runs the host-independent checks; it returns the expanded
// domain for the real start.
func modelCheck(c corpusCase) (out outcome, d *domain.Domain) {
	out.c = c
	defer func() {
		if r := recover(); r != nil {
			out.stage, out.panicked = "panic", true
			out.detail = fmt.Sprintf("%v\n%s", r, debug.Stack())
			d = nil
		}
	}()
	data, err := os.ReadFile(filepath.Join(corpusDir, c.name+".xml"))
	if err != nil {
		return outcome{c: c, stage: "parse", detail: err.Error()}, nil
	}
	d, err = domain.Parse(data)
	if err != nil {
		return outcome{c: c, stage: "parse", detail: err.Error()}, nil
	}
	if err := domain.Expand(d, nil); err != nil {
		return outcome{c: c, stage: "expand", detail: err.Error()}, nil
	}
	once := d.XML()
	d2, err := domain.Parse(once)
	if err != nil {
		return outcome{c: c, stage: "roundtrip", detail: "expanded XML does not parse: " + err.Error()}, nil
	}
	if !bytes.Equal(d2.XML(), once) {
		return outcome{c: c, stage: "roundtrip", detail: "format(parse(x)) != x"}, nil
	}
	if err := domain.Expand(d2, nil); err != nil {
		return outcome{c: c, stage: "idempotent", detail: err.Error()}, nil
	}
	if !bytes.Equal(d2.XML(), once) {
		return outcome{c: c, stage: "idempotent", detail: "Expand(Expand(x)) != Expand(x)\n" + diff(once, d2.XML())}, nil
	}
	// libvirt's test suite runs with spice_tls=1 in qemu.conf; so do we.
	cmd, err := domain.BuildCommand(d, withTestSecrets(domain.CommandOptions{QMPSocket: "/run/q.qmp", DomainDir: "/run/d",
		SpiceTLSDir: "/etc/pki/libvirt-spice"}, libvirtMasterKeyFile(d)))
	if err != nil {
		var de *domain.Error
		if !errors.As(err, &de) {
			return outcome{c: c, stage: "argv", detail: fmt.Sprintf("error of type %T (want *domain.Error): %v", err, err)}, nil
		}
		return outcome{c: c, stage: "argv", detail: err.Error()}, nil
	}
	out.stage = "ok"
	out.sameDevices = sameDevices(cmd.Args, filepath.Join(corpusDir, c.expected))
	return out, d
}

// diff returns the first differing line of two texts.
func diff(a, b []byte) string {
	al, bl := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := 0; i < len(al) && i < len(bl); i++ {
		if al[i] != bl[i] {
			return fmt.Sprintf("line %d: %q vs %q", i+1, al[i], bl[i])
		}
	}
	return fmt.Sprintf("lengths %d vs %d lines", len(al), len(bl))
}

// TestCorpus is the corpus measure described in the package comment.
func TestCorpus(t *testing.T) {
	cases := loadCases(t)
	if len(cases) < 600 {
		t.Fatalf("only %d corpus cases", len(cases))
	}
	only := os.Getenv("CORPUS_CASE") // run one case, for debugging
	// Firmware descriptors for UEFI autoselection, as libvirt's test suite
	// has its own; the images are blank (the guest never runs).
	fwDir, err := makeFirmware(shortTmp(t))
	if err != nil {
		t.Fatal(err)
	}
	saved := domain.FirmwareDirs
	domain.FirmwareDirs = []string{fwDir}
	defer func() { domain.FirmwareDirs = saved }()
	var (
		mu      sync.Mutex
		results []outcome
	)
	sem := make(chan struct{}, 4) // QEMU starts at once
	var wg sync.WaitGroup
	for _, c := range cases {
		if only != "" && c.name != only {
			continue
		}
		out, d := modelCheck(c)
		if c.tier == "tier3" || out.stage != "ok" {
			mu.Lock()
			results = append(results, out)
			mu.Unlock()
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(out outcome) {
			defer wg.Done()
			defer func() { <-sem }()
			out = realStart(t, out, d)
			mu.Lock()
			results = append(results, out)
			mu.Unlock()
		}(out)
	}
	wg.Wait()
	report(t, results, only != "")
}

func realStart(t *testing.T, out outcome, d *domain.Domain) (res outcome) {
	res = out
	defer func() {
		if r := recover(); r != nil {
			res.stage, res.panicked = "panic", true
			res.detail = fmt.Sprintf("%v\n%s", r, debug.Stack())
		}
	}()
	dir, err := os.MkdirTemp(shortTmp(t), "c")
	if err != nil {
		res.stage, res.detail = "start", err.Error()
		return res
	}
	defer os.RemoveAll(dir)
	p := &preparer{dir: dir, name: out.c.name, tlsDir: spiceTLSDir(t)}
	defer p.cleanup()
	skip, err := p.prepare(d)
	if err != nil {
		res.stage, res.detail = "start", "preparing resources: "+err.Error()
		return res
	}
	if skip != "" {
		res.stage, res.detail = "skip", skip
		return res
	}
	// What the driver does before a start: pick the firmware and create the
	// NVRAM from its template.
	if err := d.ResolveFirmware(); err != nil {
		res.stage, res.detail = "start", err.Error()
		return res
	}
	if nv, tmpl := d.NVRAMPath(dir); nv != "" {
		if _, err := os.Stat(nv); err != nil {
			if err := copyOrZero(tmpl, nv); err != nil {
				res.stage, res.detail = "start", "NVRAM: "+err.Error()
				return res
			}
		}
	}
	cmd, err := domain.BuildCommand(d, p.options())
	if err != nil {
		if errors.Is(err, domain.ErrNeedsKVM) && p.wasKVM {
			res.stage, res.detail = "skip", "KVM-only: "+err.Error()
			return res
		}
		res.stage, res.detail = "start", "BuildCommand after preparing: "+err.Error()
		return res
	}
	ctx, cancel := context.WithTimeout(context.Background(), qemutest.Timeout)
	defer cancel()
	r, err := qemutest.Run(ctx, dir, cmd.Path, cmd.Args, cmd.Env)
	if err != nil {
		res.stage, res.detail = "start", err.Error()+"\nargv: "+cmd.String()
		return res
	}
	if r.Status != "prelaunch" {
		res.stage, res.detail = "start", "query-status: "+r.Status
		return res
	}
	res.stage = "ok"
	return res
}

var (
	shortOnce sync.Once
	shortDir  string
	tlsOnce   sync.Once
	tlsDir    string
)

// spiceTLSDir returns a directory with SPICE TLS certificates made for this
// run (the qemu.conf spice_tls setup a SPICE-over-TLS guest needs).
func spiceTLSDir(t *testing.T) string {
	tlsOnce.Do(func() {
		d := filepath.Join(shortTmp(t), "spice-tls")
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Errorf("spice TLS dir: %v", err)
			return
		}
		if err := makeSpiceCerts(d); err != nil {
			t.Errorf("spice TLS certificates: %v", err)
			return
		}
		tlsDir = d
	})
	return tlsDir
}

// shortTmp returns a directory with a short path: UNIX socket paths must
// fit in 108 bytes.
func shortTmp(t *testing.T) string {
	shortOnce.Do(func() {
		d, err := os.MkdirTemp("/tmp", "qcorpus")
		if err != nil {
			t.Fatal(err)
		}
		shortDir = d
	})
	t.Cleanup(func() { os.RemoveAll(shortDir) })
	return shortDir
}

// makeFirmware writes blank UEFI images and QEMU firmware descriptors
// (a secure-boot build needing SMM, a plain one and a stateless one) into
// dir/firmware.
func makeFirmware(dir string) (string, error) {
	fw := filepath.Join(dir, "firmware")
	if err := os.MkdirAll(fw, 0o755); err != nil {
		return "", err
	}
	for _, v := range []struct{ name, features string }{
		{"50-ovmf-secure", `"secure-boot","enrolled-keys","requires-smm","acpi-s3"`},
		{"60-ovmf", `"acpi-s3"`},
	} {
		code, vars := filepath.Join(fw, v.name+"_CODE.fd"), filepath.Join(fw, v.name+"_VARS.fd")
		if err := zeroFile(code, 2<<20); err != nil {
			return "", err
		}
		if err := zeroFile(vars, 128<<10); err != nil {
			return "", err
		}
		desc := fmt.Sprintf(`{"interface-types":["uefi"],"mapping":{"device":"flash",
"executable":{"filename":%q,"format":"raw"},"nvram-template":{"filename":%q,"format":"raw"}},
"targets":[{"architecture":"x86_64","machines":["pc-i440fx-*","pc-q35-*"]}],"features":[%s]}`, code, vars, v.features)
		if err := os.WriteFile(filepath.Join(fw, v.name+".json"), []byte(desc), 0o644); err != nil {
			return "", err
		}
	}
	// A stateless build (no variable store), for <loader stateless='yes'>.
	code := filepath.Join(fw, "70-ovmf-stateless.fd")
	if err := zeroFile(code, 2<<20); err != nil {
		return "", err
	}
	desc := fmt.Sprintf(`{"interface-types":["uefi"],"mapping":{"device":"flash","mode":"stateless",
"executable":{"filename":%q,"format":"raw"}},
"targets":[{"architecture":"x86_64","machines":["pc-i440fx-*","pc-q35-*"]}],"features":["amd-sev"]}`, code)
	if err := os.WriteFile(filepath.Join(fw, "70-ovmf-stateless.json"), []byte(desc), 0o644); err != nil {
		return "", err
	}
	return fw, nil
}

// copyOrZero creates dst as a copy of src, or blank when src is "".
func copyOrZero(src, dst string) error {
	if src == "" {
		return zeroFile(dst, 128<<10)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o600)
}

// report prints the counts per tier and asserts the targets.
func report(t *testing.T, results []outcome, single bool) {
	sort.Slice(results, func(i, j int) bool { return results[i].c.name < results[j].c.name })
	type counts struct {
		total, model, ok, skipped, sameDev int
		stages                             map[string]int
		skips                              map[string]int
	}
	per := map[string]*counts{}
	for _, r := range results {
		c := per[r.c.tier]
		if c == nil {
			c = &counts{stages: map[string]int{}, skips: map[string]int{}}
			per[r.c.tier] = c
		}
		c.total++
		c.stages[r.stage]++
		if r.panicked {
			t.Errorf("%s: PANIC: %s", r.c.name, r.detail)
		}
		if r.stage == "ok" || r.stage == "skip" || r.stage == "start" {
			c.model++
		}
		if r.sameDevices {
			c.sameDev++
		}
		switch r.stage {
		case "ok":
			if r.c.tier != "tier3" {
				c.ok++
			}
		case "skip":
			c.skipped++
			reason := r.detail
			if i := strings.Index(reason, ":"); i > 0 {
				reason = reason[:i]
			}
			c.skips[reason]++
		}
		if single || os.Getenv("CORPUS_VERBOSE") != "" || (r.stage != "ok" && r.c.tier != "tier3") {
			t.Logf("%-6s %-50s %-10s %s", r.c.tier, r.c.name, r.stage, firstLine(r.detail, single))
		}
	}
	targets := map[string]float64{"tier1": 0.95, "tier2": 0.75}
	for _, tier := range []string{"tier1", "tier2", "tier3"} {
		c := per[tier]
		if c == nil {
			continue
		}
		if tier == "tier3" {
			t.Logf("%s: %d cases, %d through the model checks (parse/expand/round-trip/argv), no panics", tier, c.total, c.model)
			continue
		}
		attempted := c.total - c.skipped
		pct := 0.0
		if attempted > 0 {
			pct = float64(c.ok) / float64(attempted)
		}
		t.Logf("%s: %d cases: accepted by real QEMU %d/%d started (%.1f%%, target %.0f%%), %d skipped for host reasons %v; "+
			"stopped at: %v; -device drivers identical to libvirt's: %d",
			tier, c.total, c.ok, attempted, 100*pct, 100*targets[tier], c.skipped, c.skips, c.stages, c.sameDev)
		if !single && pct < targets[tier] {
			t.Errorf("%s: %.1f%% accepted, below the %.0f%% target", tier, 100*pct, 100*targets[tier])
		}
	}
}

func firstLine(s string, all bool) string {
	if all {
		return s
	}
	if i := strings.Index(s, "\nargv:"); i >= 0 {
		s = s[:i]
	}
	if len(s) > 400 {
		s = s[:400] + "..."
	}
	return strings.ReplaceAll(s, "\n", " | ")
}
