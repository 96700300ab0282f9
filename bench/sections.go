package main

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// bareArgs returns the command qemufs would run for NAME (from its argv
// file), without qemufs's monitor.
func bareArgs(m *mount, name string) (string, []string, error) {
	data, err := os.ReadFile(m.path(name, "argv"))
	if err != nil {
		return "", nil, err
	}
	return bareCommand(string(data))
}

// benchStart measures (1) the floor: bare QEMU -S from spawn to an answer
// to query-status on a fresh QMP connection; (2) `start --paused` through
// the mount until state says paused; (7) destroy: its wall time, when QEMU
// exited (seen through a pidfd) and how long destroy returned after that,
// and for reference how long bare QEMU takes to exit after SIGTERM.
// Floor and qemufs runs alternate, so a load change hits both.
func benchStart(env *benchEnv, m *mount) error {
	const name = "p"
	if err := m.define(name, guestXML(name, env, "")); err != nil {
		return err
	}
	path, args, err := bareArgs(m, name)
	if err != nil {
		return err
	}
	floorDir := filepath.Join(env.base, "floor")
	os.Mkdir(floorDir, 0o755)
	var floor, start, destroyWall, destroyExit, destroyGap, bareTerm samples
	for i := 0; i < env.n; i++ {
		// Floor.
		settle()
		t0 := time.Now()
		q, err := startBare(floorDir, path, args, false)
		if err != nil {
			return err
		}
		c, err := qmpDial(q.qmp, 30*time.Second)
		if err == nil {
			_, err = c.run([]byte(`{"execute":"query-status"}`))
			floor = append(floor, time.Since(t0))
			c.close()
		}
		bareTerm = append(bareTerm, q.stop(syscall.SIGTERM))
		if err != nil {
			return fmt.Errorf("floor: %w (see %s/floor.log)", err, floorDir)
		}

		// qemufs.
		settle()
		t0 = time.Now()
		if err := m.ctl(name, "start --paused"); err != nil {
			return err
		}
		if st := m.state(name); !strings.HasPrefix(st, "paused") {
			return fmt.Errorf("state after start --paused: %q", st)
		}
		start = append(start, time.Since(t0))

		wall, exit, err := timedDestroy(m, name)
		if err != nil {
			return err
		}
		destroyWall = append(destroyWall, wall)
		destroyExit = append(destroyExit, exit)
		destroyGap = append(destroyGap, wall-exit)
	}
	r := env.rep
	r.add("1", "floor: bare `qemu -S` spawn → QMP query-status answered", floor, "argv of the domain, -qmp unix:…,server=on,wait=off; polled connect")
	r.add("2", "qemufs: `echo 'start --paused' > ctl` → returns, state paused", start, fmt.Sprintf("%.2fx the floor", ratio(start, floor)))
	rt := ratio(start, floor)
	r.target("start --paused vs bare QEMU", "≤ 1.15x", fmt.Sprintf("%.3fx (%s vs %s); min to min %.3fx", rt, dur(start.median()), dur(floor.median()), minRatio(start, floor)), rt <= 1.15)
	r.add("7", "bare QEMU: SIGTERM → exited", bareTerm, "")
	r.add("7", "qemufs: `echo destroy > ctl` wall time", destroyWall, "")
	r.add("7", "qemufs: destroy written → QEMU exited (pidfd)", destroyExit, "")
	r.add("7", "qemufs: QEMU exited → destroy returned", destroyGap, "")
	r.target("destroy returns after QEMU's exit", "≤ 50 ms", fmt.Sprintf("%s median, %s max", dur(destroyGap.median()), dur(destroyGap.max())), destroyGap.max() <= 50*time.Millisecond)
	return nil
}

// settle lets what a previous run left in the background finish before
// the next timed run: the daemon starts its next spare exec helper 500 ms
// after a start (a Go process starting, which would otherwise land in
// whatever is measured next), QEMU's exit, libvirt's cleanup.
func settle() { time.Sleep(800 * time.Millisecond) }

// timedDestroy destroys NAME and returns destroy's wall time and when,
// from the write, QEMU had exited.
func timedDestroy(m *mount, name string) (wall, exit time.Duration, err error) {
	pid := m.qemuPid(name)
	if pid == 0 {
		return 0, 0, fmt.Errorf("%s: no pid", name)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("pidfd %d: %w", pid, err)
	}
	defer unix.Close(fd)
	exited := make(chan time.Time, 1)
	go func() {
		waitPidfd(fd, 30*time.Second)
		exited <- time.Now()
	}()
	t0 := time.Now()
	if err := m.ctl(name, "destroy"); err != nil {
		return 0, 0, err
	}
	t1 := time.Now()
	te := <-exited
	if st := m.state(name); st != "shut off (destroyed)" {
		return 0, 0, fmt.Errorf("state after destroy: %q", st)
	}
	return t1.Sub(t0), te.Sub(t0), nil
}

// benchCycle measures a whole define, start --paused, destroy, undefine
// cycle through the mount and, when available, the same through libvirt's
// embedded driver in one virsh process. Cycles alternate.
func benchCycle(env *benchEnv, m *mount, v *virsh) error {
	const name = "c"
	xml := guestXML(name, env, "")
	xmlFile := filepath.Join(env.base, name+".xml")
	if err := os.WriteFile(xmlFile, []byte(xml), 0o644); err != nil {
		return err
	}
	steps := []string{"define", "start --paused", "destroy", "undefine"}
	q := make([]samples, len(steps))
	l := make([]samples, len(steps))
	var qTotal, lTotal samples
	for i := 0; i < env.n; i++ {
		fns := []func() error{
			func() error { return m.define(name, xml) },
			func() error { return m.ctl(name, "start --paused") },
			func() error { return m.ctl(name, "destroy") },
			func() error { return os.Remove(m.path(name)) },
		}
		var total time.Duration
		settle()
		for j, fn := range fns {
			t0 := time.Now()
			if err := fn(); err != nil {
				return fmt.Errorf("qemufs %s: %w", steps[j], err)
			}
			d := time.Since(t0)
			q[j] = append(q[j], d)
			total += d
		}
		qTotal = append(qTotal, total)
		if v == nil {
			continue
		}
		cmds := []string{"define " + xmlFile, "start --paused " + name, "destroy " + name, "undefine " + name}
		total = 0
		settle()
		for j, c := range cmds {
			t0 := time.Now()
			_, err := v.run(c)
			if j == 1 {
				v.notePids()
			}
			if err != nil {
				return fmt.Errorf("libvirt: %w", err)
			}
			d := time.Since(t0)
			l[j] = append(l[j], d)
			total += d
		}
		lTotal = append(lTotal, total)
	}
	r := env.rep
	r.add("2", "qemufs cycle: mkdir+config.xml, start --paused, destroy, rmdir", qTotal, "")
	for j, s := range steps {
		r.add("2", "  qemufs "+s, q[j], "")
	}
	if v == nil {
		r.value("2", "libvirt embed cycle (virsh)", "not run", "virsh not installed")
		return nil
	}
	r.add("2", "libvirt cycle: virsh define, start --paused, destroy, undefine", lTotal, "qemu:///embed, one virsh process")
	for j, s := range steps {
		r.add("2", "  libvirt "+s, l[j], fmt.Sprintf("libvirt/qemufs %.1fx", ratio(l[j], q[j])))
	}
	rt := ratio(lTotal, qTotal)
	r.target("cycle: qemufs faster than libvirt embed", "≥ 5x", fmt.Sprintf("%.1fx (%s vs %s); min to min %.1fx", rt, dur(qTotal.median()), dur(lTotal.median()), minRatio(lTotal, qTotal)), rt >= 5)
	return nil
}

// benchBoot measures `start` until the guest's ready line shows on
// `console`, and the same kernel booted by hand (the domain's argv without
// -S, the serial port on stdio).
func benchBoot(env *benchEnv, m *mount) error {
	const name = "b"
	if err := m.define(name, guestXML(name, env, "")); err != nil {
		return err
	}
	path, args, err := bareArgs(m, name)
	if err != nil {
		return err
	}
	var byHand []string
	for _, a := range withSerialStdio(args) {
		if a != "-S" {
			byHand = append(byHand, a)
		}
	}
	dir := filepath.Join(env.base, "boot")
	os.Mkdir(dir, 0o755)
	var qemufs, bare samples
	for i := 0; i < env.nBoot; i++ {
		settle()
		t0 := time.Now()
		q, err := startBare(dir, path, byHand, true)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		err = waitFor(ctx, q.stdout, env.ready)
		cancel()
		bare = append(bare, time.Since(t0))
		q.stop(syscall.SIGKILL)
		if err != nil {
			return fmt.Errorf("boot by hand: %w", err)
		}

		settle()
		t0 = time.Now()
		if err := m.ctl(name, "start"); err != nil {
			return err
		}
		f, err := os.Open(m.path(name, "console"))
		if err != nil {
			return err
		}
		ctx, cancel = context.WithTimeout(context.Background(), 3*time.Minute)
		err = waitFor(ctx, f, env.ready)
		cancel()
		qemufs = append(qemufs, time.Since(t0))
		derr := m.ctl(name, "destroy")
		f.Close()
		if err != nil {
			return fmt.Errorf("boot through qemufs: %w", err)
		}
		if derr != nil {
			return derr
		}
	}
	r := env.rep
	r.add("3", "boot by hand: QEMU spawn → ready line on serial (stdio)", bare, "same argv without -S")
	r.add("3", "boot via qemufs: `start` → ready line read from `console`", qemufs, fmt.Sprintf("%.2fx, %s%s", ratio(qemufs, bare), sign(qemufs.median()-bare.median()), dur(qemufs.median()-bare.median())))
	return nil
}

// benchFUSE measures reading `state` (open+read+close) and a QMP round
// trip through monitor/qmp against one on a second QMP socket of the same
// QEMU.
func benchFUSE(env *benchEnv, m *mount) error {
	const name = "q"
	// QEMU runs as the qemu account: it needs a directory it may write.
	sockDir := filepath.Join(env.base, "qmp2")
	if err := os.Mkdir(sockDir, 0o700); err != nil {
		return err
	}
	if u, err := user.Lookup("qemu"); err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		os.Chown(sockDir, uid, gid)
	} else {
		os.Chmod(sockDir, 0o777)
	}
	sock := filepath.Join(sockDir, "q2.qmp")
	if err := m.define(name, guestXML(name, env, qmpCommandline(sock))); err != nil {
		return err
	}
	if err := m.ctl(name, "start --paused"); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	readOnce := func(path, prefix string) func() error {
		return func() error {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			n, err := f.Read(buf)
			f.Close()
			if err != nil || !strings.HasPrefix(string(buf[:n]), prefix) {
				return fmt.Errorf("%s: %q %v", path, buf[:n], err)
			}
			return nil
		}
	}
	// The same read of a file the kernel serves alone, and of the mount's
	// constant `version` file: what FUSE itself costs.
	local := filepath.Join(env.base, "state-copy")
	if err := os.WriteFile(local, []byte("paused (user)\n"), 0o644); err != nil {
		return err
	}
	var state, version, plain samples
	for i := 0; i < env.nFast; i++ {
		for _, x := range []struct {
			s            *samples
			path, prefix string
		}{{&state, m.path(name, "state"), "paused"}, {&version, m.path("version"), "qemufs"}, {&plain, local, "paused"}} {
			t0 := time.Now()
			if err := readOnce(x.path, x.prefix)(); err != nil {
				return err
			}
			*x.s = append(*x.s, time.Since(t0))
		}
	}

	mf, err := openQMPFile(m.path(name, "monitor/qmp"))
	if err != nil {
		return err
	}
	defer mf.close()
	direct, err := qmpDial(sock, 10*time.Second)
	if err != nil {
		return err
	}
	defer direct.close()
	cmd := []byte(`{"execute":"query-status"}`)
	// Warm both paths up once.
	if _, err := mf.run(cmd); err != nil {
		return fmt.Errorf("monitor/qmp: %w", err)
	}
	if _, err := direct.run(cmd); err != nil {
		return err
	}
	nQMP := env.nFast
	var viaFile, viaSock samples
	for i := 0; i < nQMP; i++ {
		t0 := time.Now()
		if _, err := mf.run(cmd); err != nil {
			return fmt.Errorf("monitor/qmp: %w", err)
		}
		viaFile = append(viaFile, time.Since(t0))
		t0 = time.Now()
		if _, err := direct.run(cmd); err != nil {
			return err
		}
		viaSock = append(viaSock, time.Since(t0))
	}
	if err := m.ctl(name, "destroy"); err != nil {
		return err
	}
	r := env.rep
	r.add("5", "`cat state`: open+read+close in-process", state, "")
	r.add("5", "  the same on the mount's constant `version` file", version, "FUSE's own cost")
	r.add("5", "  the same on a file in /tmp", plain, "no FUSE")
	r.target("`cat state` median", "< 100 µs", fmt.Sprintf("%s (min %s; `version` %s)", dur(state.median()), dur(state.min()), dur(version.median())), state.median() < 100*time.Microsecond)
	r.add("5", "QMP query-status on QEMU's own socket (second -qmp)", viaSock, "one connection")
	r.add("5", "QMP query-status through monitor/qmp", viaFile, fmt.Sprintf("%.2fx the socket", ratio(viaFile, viaSock)))
	rt := ratio(viaFile, viaSock)
	r.target("monitor/qmp round trip vs socket", "≤ 1.5x", fmt.Sprintf("%.2fx (%s vs %s); min to min %.2fx", rt, dur(viaFile.median()), dur(viaSock.median()), minRatio(viaFile, viaSock)), rt <= 1.5)
	return nil
}

// benchMount measures `qemufs mount --daemon` until it returns, with an
// empty capabilities cache (cold) and with the cache of the previous
// mount (warm).
func benchMount(env *benchEnv) error {
	m, err := newMount(env.bin, env.base, "mt")
	if err != nil {
		return err
	}
	cache := filepath.Join(m.root, "cache/qemu")
	var cold, warm samples
	for i := 0; i < env.nMount; i++ {
		os.RemoveAll(cache)
		t0 := time.Now()
		if err := m.mount(); err != nil {
			return err
		}
		cold = append(cold, time.Since(t0))
		if err := m.unmount(); err != nil {
			return err
		}
		t0 = time.Now()
		if err := m.mount(); err != nil {
			return err
		}
		warm = append(warm, time.Since(t0))
		if err := m.unmount(); err != nil {
			return err
		}
	}
	env.rep.add("6", "mount --daemon, cold (empty capabilities cache)", cold, "")
	env.rep.add("6", "mount --daemon, warm cache", warm, "")
	return nil
}
