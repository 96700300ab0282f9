package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var downtimeRE = regexp.MustCompile(`Total downtime:\s+(\d+) ms`)

// freePort returns a TCP port on 127.0.0.1 that is free now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// benchMigrate measures (8) a live migration of the idle test guest (its
// 128 MiB) between two instances on this host over TCP on
// loopback: the total time of `migrate` and the downtime QEMU reports,
// against QEMU's own migration between two hand-started QEMUs with the
// same command line (the destination with -incoming), alternating.
func benchMigrate(env *benchEnv, m *mount) error {
	const name = "mig"
	dst, err := newMount(env.bin, env.base, "mig-dst")
	if err != nil {
		return err
	}
	if err := dst.mount(); err != nil {
		return err
	}
	defer dst.unmount()
	// The idle guest of the target: 128 MiB.
	xml := strings.Replace(guestXML(name, env, ""), "<memory unit='MiB'>192</memory>", "<memory unit='MiB'>128</memory>", 1)
	if !strings.Contains(xml, "<memory unit='MiB'>128</memory>") {
		return fmt.Errorf("the bench guest's memory element changed; cannot make it 128 MiB")
	}
	if err := m.define(name, xml); err != nil {
		return err
	}
	path, args, err := bareArgs(m, name)
	if err != nil {
		return err
	}
	var total, down, bareTotal, bareMig, bareDown samples
	for i := 0; i < env.nBoot; i++ {
		settle()
		if err := m.ctl(name, "start"); err != nil {
			return err
		}
		time.Sleep(5 * time.Second) // booted and idle
		t0 := time.Now()
		if err := m.ctl(name, "migrate "+dst.dir+" --live --uri tcp:127.0.0.1"); err != nil {
			b, _ := os.ReadFile(m.path(name, "error"))
			return fmt.Errorf("migrate: %v: %s", err, b)
		}
		total = append(total, time.Since(t0))
		info, _ := os.ReadFile(m.path(name, "migration"))
		if i == 0 {
			progress("the source's migration file after the first run:\n%s", info)
		}
		if mm := downtimeRE.FindSubmatch(info); mm != nil {
			n, _ := strconv.Atoi(string(mm[1]))
			down = append(down, time.Duration(n)*time.Millisecond)
		}
		if err := dst.ctl(name, "destroy"); err != nil {
			return err
		}

		settle()
		bt, bm, bd, err := bareMigrate(env, path, args)
		if err != nil {
			return fmt.Errorf("bare migration: %w", err)
		}
		bareTotal, bareMig, bareDown = append(bareTotal, bt), append(bareMig, bm), append(bareDown, bd)
	}
	env.rep.add("8", "bare QEMU: spawn the destination (-incoming), migrate, dest cont", bareTotal, "idle 128 MiB guest, loopback TCP")
	env.rep.add("8", "bare QEMU: QMP migrate to the destination running", bareMig, "the migration alone")
	env.rep.add("8", "bare QEMU migration downtime (query-migrate)", bareDown, "")
	env.rep.add("8", "migrate --live through the trees, total", total, "checks, prepare, migrate, finish, source ended")
	env.rep.add("8", "qemufs migration downtime (query-migrate)", down, "")
	if len(total) > 0 && len(bareTotal) > 0 {
		ratio := float64(total.median()) / float64(bareTotal.median())
		env.rep.target("migrate total vs bare QEMU (destination spawned, migrate, cont)", "<= 1.2x", fmt.Sprintf("%.2fx", ratio), ratio <= 1.2)
	}
	return nil
}

// bareMigrate starts the guest by hand (running), then as qemufs's
// migrate does, a destination QEMU with -incoming, and migrates with QMP.
// It returns the time from spawning the destination to it running, the
// time from QMP migrate to it running, and QEMU's downtime.
func bareMigrate(env *benchEnv, path string, args []string) (total, migrate, downtime time.Duration, err error) {
	port, err := freePort()
	if err != nil {
		return 0, 0, 0, err
	}
	start := func(i int, extra ...string) (*bareQEMU, *qmpClient, error) {
		dir := filepath.Join(env.base, fmt.Sprintf("mig-bare-%d", i))
		os.MkdirAll(dir, 0o755)
		q, err := startBare(dir, path, append(append([]string(nil), args...), extra...), false)
		if err != nil {
			return nil, nil, err
		}
		c, err := qmpDial(q.qmp, 30*time.Second)
		if err != nil {
			q.stop(syscall.SIGKILL)
			return nil, nil, err
		}
		return q, c, nil
	}
	sq, src, err := start(0)
	if err != nil {
		return 0, 0, 0, err
	}
	defer sq.stop(syscall.SIGKILL)
	defer src.close()
	if _, err := src.run([]byte(`{"execute":"cont"}`)); err != nil {
		return 0, 0, 0, err
	}
	time.Sleep(5 * time.Second) // booted and idle
	t0 := time.Now()
	dq, dst, err := start(1, "-incoming", fmt.Sprintf("tcp:127.0.0.1:%d", port))
	if err != nil {
		return 0, 0, 0, err
	}
	defer dq.stop(syscall.SIGKILL)
	defer dst.close()
	t1 := time.Now()
	if _, err := src.run([]byte(`{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":1125899906842624}}`)); err != nil {
		return 0, 0, 0, err
	}
	if _, err := src.run([]byte(fmt.Sprintf(`{"execute":"migrate","arguments":{"uri":"tcp:127.0.0.1:%d"}}`, port))); err != nil {
		return 0, 0, 0, err
	}
	for _, c := range []*qmpClient{src, dst} {
		for {
			out, err := c.run([]byte(`{"execute":"query-migrate"}`))
			if err != nil {
				return 0, 0, 0, err
			}
			var r struct {
				Return struct {
					Status   string `json:"status"`
					Downtime int64  `json:"downtime"`
				} `json:"return"`
			}
			json.Unmarshal(out, &r)
			if r.Return.Status == "completed" {
				if c == src {
					downtime = time.Duration(r.Return.Downtime) * time.Millisecond
				}
				break
			}
			if r.Return.Status == "failed" || r.Return.Status == "cancelled" {
				return 0, 0, 0, fmt.Errorf("migration %s: %s", r.Return.Status, strings.TrimSpace(string(out)))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if _, err := dst.run([]byte(`{"execute":"cont"}`)); err != nil {
		return 0, 0, 0, err
	}
	return time.Since(t0), time.Since(t1), downtime, nil
}
