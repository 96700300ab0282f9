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

// phaseRE matches the time of one of qemufs's steps in a migration file.
var phaseRE = regexp.MustCompile(`(?m)^Time ([a-z][a-z ]*[a-z]):\s+(\d+) ms$`)

// phases collects the step times of migration files, by step, in the
// order the steps first appear.
type phases struct {
	order []string
	s     map[string]samples
}

func (p *phases) add(info []byte) {
	if p.s == nil {
		p.s = map[string]samples{}
	}
	for _, m := range phaseRE.FindAllSubmatch(info, -1) {
		name := string(m[1])
		if name == "elapsed" {
			continue
		}
		n, _ := strconv.Atoi(string(m[2]))
		if _, ok := p.s[name]; !ok {
			p.order = append(p.order, name)
		}
		p.s[name] = append(p.s[name], time.Duration(n)*time.Millisecond)
	}
}

func (p *phases) report(env *benchEnv, side string, what map[string]string) {
	for _, name := range p.order {
		env.rep.add("10", "  "+side+": "+name, p.s[name], what[name])
	}
}

// bareParams are the migration settings of a bare run.
type bareParams struct {
	name string
	// qmp are the commands run on the source before migrate.
	qmp []string
}

var (
	// QEMU 7.2's defaults: max-bandwidth 128 MiB/s, no capabilities.
	qemuDefaults = bareParams{name: "QEMU's defaults"}
	// What qemufs's migrate sets on the source QEMU for `migrate --live`
	// without options (driver's setMigrationParams): no compression, no
	// post-copy, events, max-bandwidth unlimited (1 PiB/s) as libvirt.
	qemufsParams = bareParams{name: "qemufs's parameters", qmp: []string{
		`{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"xbzrle","state":false},{"capability":"postcopy-ram","state":false},{"capability":"events","state":true}]}}`,
		`{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":1125899906842624}}`,
	}}
)

// bareRuns are the measurements of one kind of bare run.
type bareRuns struct {
	total, migrate, downtime samples
}

// benchMigrate measures (10) a live migration of the idle test guest (its
// 128 MiB) between two instances on this host over TCP on loopback: the
// total time of `migrate`, qemufs's steps at both ends (from their
// migration files) and the downtime QEMU reports, against QEMU's own
// migration between two hand-started QEMUs with the same command line
// (the destination with -incoming), with the migration parameters qemufs
// sets and with QEMU's defaults, alternating.
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
	var total, down samples
	var srcPhases, dstPhases phases
	bare := map[string]*bareRuns{qemufsParams.name: {}, qemuDefaults.name: {}}
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
		dinfo, _ := os.ReadFile(dst.path(name, "migration"))
		if i == 0 {
			progress("the source's migration file after the first run:\n%s", info)
			progress("the destination's:\n%s", dinfo)
		}
		if mm := downtimeRE.FindSubmatch(info); mm != nil {
			n, _ := strconv.Atoi(string(mm[1]))
			down = append(down, time.Duration(n)*time.Millisecond)
		}
		srcPhases.add(info)
		dstPhases.add(dinfo)
		if err := dst.ctl(name, "destroy"); err != nil {
			return err
		}

		for _, p := range []bareParams{qemufsParams, qemuDefaults} {
			settle()
			bt, bm, bd, err := bareMigrate(env, path, args, p)
			if err != nil {
				return fmt.Errorf("bare migration (%s): %w", p.name, err)
			}
			b := bare[p.name]
			b.total, b.migrate, b.downtime = append(b.total, bt), append(b.migrate, bm), append(b.downtime, bd)
		}
	}
	for _, p := range []bareParams{qemufsParams, qemuDefaults} {
		b := bare[p.name]
		env.rep.add("10", "bare QEMU, "+p.name+": spawn the destination (-incoming), migrate, dest cont", b.total, "idle 128 MiB guest, loopback TCP")
		env.rep.add("10", "bare QEMU, "+p.name+": QMP migrate → the destination running", b.migrate, "the migration alone")
		env.rep.add("10", "bare QEMU, "+p.name+": downtime (query-migrate)", b.downtime, "")
	}
	env.rep.add("10", "qemufs: migrate --live through the trees, total", total, "checks, prepare, migrate, finish, source ended")
	srcPhases.report(env, "source", map[string]string{
		"checking":  "DEST/version (the host check runs during preparing)",
		"preparing": "incoming.xml, migrate-incoming (the destination's QEMU started)",
		"migrating": "QMP migrate → QEMU completed",
		"finishing": "migrate-finish (the destination's cont)",
		"ending":    "the source's QEMU ended",
	})
	dstPhases.report(env, "destination", map[string]string{
		"prepared":  "incoming.xml → migrate-incoming",
		"starting":  "QEMU spawned, QMP, listening",
		"listening": "→ migrate-finish",
		"finishing": "loaded, cont",
	})
	env.rep.add("10", "qemufs migration downtime (query-migrate)", down, "")
	if len(total) > 0 {
		same, def := bare[qemufsParams.name], bare[qemuDefaults.name]
		r := ratio(total, same.total)
		env.rep.target("migrate total vs bare QEMU with qemufs's parameters (destination spawned, migrate, cont)", "<= 1.2x", fmt.Sprintf("%.2fx", r), r <= 1.2)
		env.rep.value("10", "ratio: qemufs total / bare with qemufs's parameters, migrate alone", fmt.Sprintf("%.2fx", ratio(total, same.migrate)), "the bare run's destination spawn not counted")
		env.rep.value("10", "ratio: qemufs total / bare with QEMU's defaults, destination spawned", fmt.Sprintf("%.2fx", ratio(total, def.total)), "")
		env.rep.value("10", "ratio: qemufs total / bare with QEMU's defaults, migrate alone", fmt.Sprintf("%.2fx", ratio(total, def.migrate)), "")
	}
	return nil
}

// bareMigrate starts the guest by hand (running), then as qemufs's
// migrate does, a destination QEMU with -incoming, and migrates with QMP
// after p's commands. It returns the time from spawning the destination
// to it running, the time from QMP migrate to it running, and QEMU's
// downtime.
func bareMigrate(env *benchEnv, path string, args []string, p bareParams) (total, migrate, downtime time.Duration, err error) {
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
	for _, c := range p.qmp {
		if _, err := src.run([]byte(c)); err != nil {
			return 0, 0, 0, err
		}
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
