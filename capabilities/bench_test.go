package capabilities

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkProbeCold is a full Probe (host facts, firmware, one emulator)
// with no cache: what a first mount costs per binary.
func BenchmarkProbeCold(b *testing.B) {
	p := newTestProber(b, realQEMUDir(b))
	p.CacheDir = ""
	for b.Loop() {
		caps, err := p.Probe(context.Background())
		if err != nil || len(caps.Emulators[0].Machines) == 0 {
			b.Fatal(err)
		}
	}
}

// BenchmarkProbeColdVsBare interleaves a cold Probe and a bare probe in
// each iteration, so both see the same machine load, and reports the ratio
// of their times (target: at most 1.3).
func BenchmarkProbeColdVsBare(b *testing.B) {
	p := newTestProber(b, realQEMUDir(b))
	p.CacheDir = ""
	vendor := cpuidVendor(parseCPUInfo(readFile("/proc/cpuinfo")).vendor())
	var cold, bare time.Duration
	for b.Loop() {
		t0 := time.Now()
		if err := bareProbe(realQEMU, vendor); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := p.Probe(context.Background()); err != nil {
			b.Fatal(err)
		}
		bare += t1.Sub(t0)
		cold += time.Since(t1)
	}
	b.ReportMetric(float64(cold)/float64(bare), "cold/bare")
	b.ReportMetric(float64(cold.Milliseconds())/float64(b.N), "cold-ms/op")
	b.ReportMetric(float64(bare.Milliseconds())/float64(b.N), "bare-ms/op")
}

// BenchmarkProbeWarm is a Probe of every emulator in /usr/bin from a warm
// cache: what a mount costs once the cache is filled (target: < 50 ms).
func BenchmarkProbeWarm(b *testing.B) {
	if _, err := os.Stat(realQEMU); err != nil {
		b.Skip(err)
	}
	p := newTestProber(b, "/usr/bin")
	if _, err := p.Probe(context.Background()); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		caps, err := p.Probe(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range caps.Emulators {
			if !e.Cached {
				b.Fatalf("%s not from the cache", e.Path)
			}
		}
	}
}

// BenchmarkBareQEMU is the yardstick for BenchmarkProbeCold: the same QEMU
// command line and the same queries (including the CPU model expansions of
// the host's vendor) over a raw socket, written all at once, replies read as
// lines and not decoded beyond the model names. Nothing is cheaper and still
// asks QEMU the same things.
func BenchmarkBareQEMU(b *testing.B) {
	if _, err := os.Stat(realQEMU); err != nil {
		b.Skip(err)
	}
	vendor := cpuidVendor(parseCPUInfo(readFile("/proc/cpuinfo")).vendor())
	for b.Loop() {
		if err := bareProbe(realQEMU, vendor); err != nil {
			b.Fatal(err)
		}
	}
}

func bareProbe(path, vendor string) error {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "qmp"), os.NewFile(uintptr(fds[1]), "qemu")
	defer ours.Close()
	args := probeArgs(nil)
	for i, a := range args {
		if strings.HasPrefix(a, "socket,") {
			args[i] = "socket,id=qmp,fd=3,server=off"
		}
	}
	cmd := exec.Command(path, args...)
	cmd.ExtraFiles = []*os.File{theirs}
	if err := cmd.Start(); err != nil {
		return err
	}
	theirs.Close()
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	r := bufio.NewReaderSize(ours, 1<<20)
	readReplies := func(n int) ([][]byte, error) {
		var out [][]byte
		for len(out) < n {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return nil, err
			}
			if !strings.HasPrefix(string(line), `{"event"`) {
				out = append(out, line)
			}
		}
		return out, nil
	}
	if _, err := readReplies(1); err != nil { // greeting
		return err
	}
	cmds := []string{"qmp_capabilities", "query-version", "query-machines", "query-target", "query-kvm",
		"query-commands", "query-cpu-definitions"}
	var batch strings.Builder
	for _, c := range cmds {
		fmt.Fprintf(&batch, `{"execute":%q}`+"\n", c)
	}
	batch.WriteString(`{"execute":"qom-list-types","arguments":{"abstract":false}}` + "\n")
	if _, err := ours.WriteString(batch.String()); err != nil {
		return err
	}
	reps, err := readReplies(len(cmds) + 1)
	if err != nil {
		return err
	}
	var defs struct{ Return []qmpCPUDef }
	if err := json.Unmarshal(reps[len(cmds)-1], &defs); err != nil {
		return err
	}
	names := expansionCandidates(defs.Return, vendor)
	batch.Reset()
	for _, n := range names {
		fmt.Fprintf(&batch, `{"execute":"query-cpu-model-expansion","arguments":{"type":"static","model":{"name":%q}}}`+"\n", n)
	}
	if _, err := ours.WriteString(batch.String()); err != nil {
		return err
	}
	_, err = readReplies(len(names))
	return err
}

// TestBareProbeWorks keeps the benchmark's yardstick honest.
func TestBareProbeWorks(t *testing.T) {
	realQEMUDir(t)
	if err := bareProbe(realQEMU, "AuthenticAMD"); err != nil {
		t.Fatal(err)
	}
}
