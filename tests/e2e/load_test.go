package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/harness"
)

// loadWorker is one of the processes of TestLoad (bash: dash reports
// every failed echo as "I/O error", whatever the errno): it walks the domains
// (its own stride, so that workers race on the same domains), reading
// state and pid and writing suspend and resume to ctl, until it has done
// $5 rounds or $4 seconds have passed. Each failed request prints one line
// "FAIL what: message" (sh's message carries the errno's text); the last
// line counts the rounds.
const loadWorker = `n=$1; w=$2; dir=$3; end=$(( $(date +%s) + $4 )); max=$5; i=0
while [ $i -lt $max ] && [ $(date +%s) -lt $end ]; do
	d=$dir/d$(( (i * 7 + w * 13) % n ))
	cat $d/state >/dev/null 2>/tmp/.qfs-load-$$ || echo "FAIL state $d: $(cat /tmp/.qfs-load-$$)"
	cat $d/pid >/dev/null 2>/tmp/.qfs-load-$$ || echo "FAIL pid $d: $(cat /tmp/.qfs-load-$$)"
	{ echo suspend > $d/ctl; } 2>/tmp/.qfs-load-$$ || echo "FAIL suspend $d: $(cat /tmp/.qfs-load-$$)"
	{ echo resume > $d/ctl; } 2>/tmp/.qfs-load-$$ || echo "FAIL resume $d: $(cat /tmp/.qfs-load-$$)"
	i=$((i + 1))
done
rm -f /tmp/.qfs-load-$$
echo "rounds $i"`

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// TestLoad starts many cheap domains paused (QEMUFS_LOAD_DOMAINS, 100 by
// default) and runs 8 processes of concurrent ctl and read traffic for a
// bounded time (QEMUFS_LOAD_SECONDS, 45 by default): the only error
// allowed is EBUSY; after every domain is destroyed the daemon holds no
// more fds, goroutines or processes than before, no guest cgroup is left,
// and its RSS is logged (docs/reliability.md has the figures).
func TestLoad(t *testing.T) {
	t.Parallel()
	n := envInt("QEMUFS_LOAD_DOMAINS", 100)
	secs := envInt("QEMUFS_LOAD_SECONDS", 45)
	const workers = 8
	m := harness.Start(t, harness.Options{})
	unmountSettled(t, m)
	addr, err := harness.FreeLocalAddr()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.MountEnv("QEMUFS_PPROF=" + addr); err != nil {
		t.Fatal(err)
	}
	daemon := m.DaemonPid()
	stats := func(when string) harness.DaemonStats {
		t.Helper()
		s, err := harness.Stats(daemon, addr)
		if err != nil {
			t.Fatalf("daemon stats %s: %v", when, err)
		}
		t.Logf("daemon %s: %v", when, s)
		return s
	}
	base := stats("idle")

	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("d%d", i)
		m.Define(names[i], cheapXML(names[i], 16))
	}
	defined := stats(fmt.Sprintf("with %d domains defined", n))
	t0 := time.Now()
	// Starts in 4 streams: a start is mostly waiting for QEMU.
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for s := 0; s < 4; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			for i := s; i < n; i += 4 {
				if err := m.Ctl(names[i], "start --paused"); err != nil {
					errs <- fmt.Errorf("%s: %w", names[i], err)
				}
			}
		}(s)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d domains started paused in %v", n, time.Since(t0).Round(time.Millisecond))
	qemus := livePids(m)
	running := stats(fmt.Sprintf("with %d QEMUs", len(qemus)))

	t0 = time.Now()
	outs := make([]bytes.Buffer, workers)
	cmds := make([]*exec.Cmd, workers)
	for w := 0; w < workers; w++ {
		cmds[w] = exec.Command("bash", "-c", loadWorker, "-", strconv.Itoa(n), strconv.Itoa(w), m.Dir, strconv.Itoa(secs), "100000")
		cmds[w].Stdout = &outs[w]
		cmds[w].Stderr = &outs[w]
		if err := cmds[w].Start(); err != nil {
			t.Fatal(err)
		}
	}
	peak := running
	sample := time.NewTicker(5 * time.Second)
	done := make(chan struct{})
	go func() {
		for _, c := range cmds {
			c.Wait()
		}
		close(done)
	}()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-sample.C:
			if s, err := harness.Stats(daemon, ""); err == nil && s.RSSKiB > peak.RSSKiB {
				peak = s
			}
		}
	}
	sample.Stop()
	took := time.Since(t0)
	rounds, busy := 0, 0
	for w := range outs {
		for _, l := range strings.Split(strings.TrimSpace(outs[w].String()), "\n") {
			switch {
			case strings.HasPrefix(l, "rounds "):
				k, _ := strconv.Atoi(strings.TrimPrefix(l, "rounds "))
				rounds += k
			case strings.HasPrefix(l, "FAIL ") && strings.Contains(l, "busy"):
				busy++
			case l != "":
				t.Errorf("worker %d: %s", w, l)
			}
		}
	}
	t.Logf("%d workers: %d rounds (%d requests) in %v, %.0f requests/s; %d EBUSY", workers, rounds, 4*rounds, took.Round(time.Millisecond), float64(4*rounds)/took.Seconds(), busy)
	if rounds == 0 {
		t.Fatal("no worker completed a round")
	}
	under := stats("after the traffic")
	t.Logf("peak RSS under traffic: %d KiB (VmHWM %d KiB)", peak.RSSKiB, under.HWMKiB)

	// Every state must be true: each domain paused or running, with a
	// live QEMU.
	for _, name := range names {
		st := m.State(name)
		if !strings.HasPrefix(st, "paused") && !strings.HasPrefix(st, "running") {
			t.Errorf("%s: state %q after the traffic", name, st)
		}
		if p := m.Pid(name); !harness.Alive(p) {
			t.Errorf("%s: pid %d not alive", name, p)
		}
	}

	t0 = time.Now()
	var dwg sync.WaitGroup
	for s := 0; s < 4; s++ {
		dwg.Add(1)
		go func(s int) {
			defer dwg.Done()
			for i := s; i < n; i += 4 {
				if err := m.Ctl(names[i], "destroy"); err != nil {
					t.Errorf("%s: %v", names[i], err)
				}
			}
		}(s)
	}
	dwg.Wait()
	t.Logf("%d domains destroyed in %v", n, time.Since(t0).Round(time.Millisecond))
	for _, p := range qemus {
		if harness.Alive(p) {
			t.Errorf("QEMU %d alive after destroy", p)
		}
	}
	if cg := m.GuestCgroups(); len(cg) > 0 {
		t.Errorf("%d guest cgroups left after destroy, e.g. %s", len(cg), cg[0])
	}
	// Goroutines end a moment after the QEMU they served: wait (bounded)
	// for them to settle before comparing.
	var after harness.DaemonStats
	for i := 0; i < 100; i++ {
		after, _ = harness.Stats(daemon, addr)
		if after.FDs <= defined.FDs && after.Goroutines <= defined.Goroutines+2 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("daemon after destroy: %v", after)
	if after.FDs > defined.FDs {
		t.Errorf("fd leak: %d fds after destroy, %d before the starts (idle: %d)", after.FDs, defined.FDs, base.FDs)
	}
	if after.Goroutines > defined.Goroutines+2 {
		t.Errorf("goroutine leak: %d after destroy, %d before the starts", after.Goroutines, defined.Goroutines)
	}
	if left := childProcs(daemon); len(left) > 0 {
		t.Errorf("processes of the daemon left after destroy: %v", left)
	}
	// Bounded RSS: generous, against the growth of a leak per request.
	if limit := 512 * 1024; peak.RSSKiB > limit {
		t.Errorf("daemon RSS peaked at %d KiB under load, over %d KiB", peak.RSSKiB, limit)
	}
}

// childProcs lists the live child processes of pid.
func childProcs(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []string
	for _, f := range strings.Fields(string(data)) {
		p, _ := strconv.Atoi(f)
		if harness.Alive(p) {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
			out = append(out, f+" "+strings.TrimSpace(string(comm)))
		}
	}
	return out
}
