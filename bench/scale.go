package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// benchScale defines many domains on a fresh mount, lists and reads them,
// starts a set of guests paused at once (rounds times), destroys them,
// and then looks for anything left behind: QEMU processes, sockets and
// status files, cgroups.
func benchScale(env *benchEnv) error {
	m, err := newMount(env.bin, env.base, "s")
	if err != nil {
		return err
	}
	if err := m.mount(); err != nil {
		return err
	}
	names := make([]string, env.domains)
	for i := range names {
		names[i] = fmt.Sprintf("d%04d", i)
	}
	progress("scale: defining %d domains", len(names))
	t0 := time.Now()
	define, err := timeEach(names, func(n string) error { return m.define(n, guestXML(n, env, "")) })
	if err != nil {
		return err
	}
	defineTotal := time.Since(t0)

	ls, err := timeIt(env.n, func() error {
		ents, err := os.ReadDir(m.dir)
		if err != nil {
			return err
		}
		if len(ents) < len(names) {
			return fmt.Errorf("ls: %d entries, want at least %d", len(ents), len(names))
		}
		return nil
	})
	if err != nil {
		return err
	}
	buf := make([]byte, 256)
	catStates, err := timeIt(max(env.n/4, 3), func() error {
		for _, n := range names {
			f, err := os.Open(m.path(n, "state"))
			if err != nil {
				return err
			}
			k, err := f.Read(buf)
			f.Close()
			if err != nil || !strings.HasPrefix(string(buf[:k]), "shut off") {
				return fmt.Errorf("%s/state: %q %v", n, buf[:k], err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}

	guests := names[:env.guests]
	var startTotal, destroyTotal, perStart samples
	var rssBefore, rssAfter int
	leaks := map[string]int{}
	checked := 0 // cgroup directories seen while the guests ran
	for round := 0; round < env.rounds; round++ {
		progress("scale: round %d: starting %d guests at once", round+1, len(guests))
		before := vmRSS(m.pid)
		t0 := time.Now()
		lat, err := timeEachConcurrent(guests, func(n string) error { return m.ctl(n, "start --paused") })
		if err != nil {
			return err
		}
		startTotal = append(startTotal, time.Since(t0))
		perStart = append(perStart, lat...)
		after := vmRSS(m.pid)
		if round == 0 {
			rssBefore, rssAfter = before, after
		}
		pids := map[int]uint64{}
		var cgroups []string
		for _, n := range guests {
			pid := m.qemuPid(n)
			if st := m.state(n); !strings.HasPrefix(st, "paused") || pid == 0 {
				return fmt.Errorf("%s: state %q, pid %d after start --paused", n, st, pid)
			}
			if st, ok := startTime(pid); ok {
				pids[pid] = st
			}
			for _, d := range cgroupDirs(pid) {
				if _, err := os.Stat(d); err == nil {
					cgroups = append(cgroups, d)
				}
			}
		}
		progress("scale: round %d: destroying them", round+1)
		t0 = time.Now()
		if _, err := timeEachConcurrent(guests, func(n string) error { return m.ctl(n, "destroy") }); err != nil {
			return err
		}
		destroyTotal = append(destroyTotal, time.Since(t0))
		checked += len(cgroups)
		for pid, st := range pids {
			if cur, ok := startTime(pid); ok && cur == st {
				leaks["QEMU processes"]++
			}
		}
		for _, d := range cgroups {
			if _, err := os.Stat(d); err == nil {
				leaks["cgroups"]++
			}
		}
		for _, p := range leftovers(m) {
			leaks["*"+filepath.Ext(p)+" files"]++
		}
	}
	progress("scale: undefining %d domains", len(names))
	t0 = time.Now()
	if _, err := timeEach(names, func(n string) error { return os.Remove(m.path(n)) }); err != nil {
		return err
	}
	undefineTotal := time.Since(t0)
	if err := m.unmount(); err != nil {
		return err
	}

	r := env.rep
	nd := len(names)
	r.add("4", fmt.Sprintf("define one of %d domains (mkdir + config.xml)", nd), define, "total "+dur(defineTotal))
	r.add("4", fmt.Sprintf("`ls` of the root, %d domains (readdir)", nd), ls, "")
	r.add("4", fmt.Sprintf("`cat */state`, %d domains (open+read+close each)", nd), catStates, "")
	r.add("4", fmt.Sprintf("%d guests `start --paused` at once: total", len(guests)), startTotal, fmt.Sprintf("%s per guest (median total / %d)", dur(startTotal.median()/time.Duration(len(guests))), len(guests)))
	r.add("4", "  one guest's start --paused among them", perStart, "")
	r.add("4", fmt.Sprintf("%d guests destroyed at once: total", len(guests)), destroyTotal, "")
	r.value("4", "daemon VmRSS before → after starting the guests", fmt.Sprintf("%d → %d KiB", rssBefore, rssAfter),
		fmt.Sprintf("%+.0f KiB per guest (first round)", float64(rssAfter-rssBefore)/float64(len(guests))))
	r.value("4", fmt.Sprintf("undefine %d domains (rmdir)", nd), dur(undefineTotal), "")
	leakText := "none"
	if len(leaks) > 0 {
		var parts []string
		for k, v := range leaks {
			parts = append(parts, fmt.Sprintf("%d %s", v, k))
		}
		leakText = strings.Join(parts, ", ")
	}
	r.value("4", "left after destroy: QEMU pids, sockets/status/pid files, cgroups", leakText, fmt.Sprintf("checked after each of %d rounds (%d guest cgroup dirs seen while running)", env.rounds, checked))
	r.target("no leaks after destroying all guests", "none", leakText, len(leaks) == 0)
	return nil
}

// timeEach runs fn for each name in turn and times each call.
func timeEach(names []string, fn func(string) error) (samples, error) {
	s := make(samples, 0, len(names))
	for _, n := range names {
		t0 := time.Now()
		if err := fn(n); err != nil {
			return s, err
		}
		s = append(s, time.Since(t0))
	}
	return s, nil
}

// timeEachConcurrent runs fn for every name at once and times each call.
func timeEachConcurrent(names []string, fn func(string) error) (samples, error) {
	s := make(samples, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			errs[i] = fn(n)
			s[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return s, err
		}
	}
	return s, nil
}

// cgroupDirs are the cgroup directories of pid other than the root ones,
// from /proc/PID/cgroup (v1 controllers and v2).
func cgroupDirs(pid int) []string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 || f[2] == "/" || !strings.Contains(f[2], "qemufs") {
			continue
		}
		ctrl := f[1]
		if ctrl == "" {
			ctrl = "unified"
			if _, err := os.Stat("/sys/fs/cgroup/unified"); err != nil {
				ctrl = ""
			}
		}
		ctrl = strings.TrimPrefix(ctrl, "name=")
		out = append(out, filepath.Join("/sys/fs/cgroup", ctrl, f[2]))
	}
	return out
}

// leftovers are per-guest runtime files still present once every guest is
// shut off: QMP sockets, status files, private dirs, pid files.
func leftovers(m *mount) []string {
	var out []string
	for _, glob := range []string{
		filepath.Join(m.runDir, "*.qmp"), filepath.Join(m.runDir, "*.status"),
		filepath.Join(m.runDir, "*.d"), filepath.Join(m.runDir, "*.sock"),
		filepath.Join(m.logDir, "*.pid"),
	} {
		p, _ := filepath.Glob(glob)
		out = append(out, p...)
	}
	return out
}
