package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// attachLog matches the line the daemon writes to the domain's log after
// each attach: its own measure of the whole attach and of the QMP round
// trips it made.
var attachLog = regexp.MustCompile(`attached disk vdb \([^)]*\): ([0-9.]+) ms \(QMP: (\d+) commands, ([0-9.]+) ms; qemufs: ([0-9.]+) ms\)`)

// benchHotplug measures (8) attaching a raw virtio disk to a running,
// booted guest: the write to `attach` from the caller's side, and
// qemufs's own part of it, the write's wall time less the QMP round trips
// qemufs made for it (QEMU's blockdev-add and device_add), which the
// daemon times inside the same attach and logs. The disk is detached
// between runs (the guest releases it), untimed.
func benchHotplug(env *benchEnv, m *mount) error {
	const name = "hp"
	if err := m.define(name, guestXML(name, env, "")); err != nil {
		return err
	}
	if err := m.ctl(name, "start"); err != nil {
		return err
	}
	defer m.ctl(name, "destroy")
	f, err := os.Open(m.path(name, "console"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	err = waitFor(ctx, f, env.ready)
	cancel()
	f.Close()
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	img := filepath.Join(env.base, "hotplug.raw")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		return err
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		return err
	}
	xml := fmt.Sprintf("<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vdb' bus='virtio'/></disk>", img)
	logPath := filepath.Join(m.logDir, name+".log")
	var wall, qmp, own, inner samples
	cmds := 0
	for i := 0; i < env.n; i++ {
		settle()
		t0 := time.Now()
		if err := m.write(name, "attach", xml); err != nil {
			return err
		}
		w := time.Since(t0)
		data, err := os.ReadFile(logPath)
		if err != nil {
			return err
		}
		all := attachLog.FindAllStringSubmatch(string(data), -1)
		if len(all) != i+1 {
			return fmt.Errorf("attach %d: %d attach lines in %s", i+1, len(all), logPath)
		}
		last := all[len(all)-1]
		q := msDur(last[3])
		cmds, _ = strconv.Atoi(last[2])
		wall, qmp = append(wall, w), append(qmp, q)
		own, inner = append(own, w-q), append(inner, msDur(last[4]))
		if err := m.write(name, "detach", "--timeout=120\n<disk><target dev='vdb'/></disk>"); err != nil {
			return err
		}
	}
	r := env.rep
	r.add("8", "qemufs: write a disk XML to `attach` (running guest) → returns", wall, fmt.Sprintf("raw file, virtio; %d QMP commands", cmds))
	r.add("8", "  of which QMP round trips (blockdev-add, device_add), timed in the daemon", qmp, "")
	r.add("8", "  qemufs's own time: the write less its QMP round trips", own, "parse, check, expand, argv, confine, FUSE, definitions")
	r.add("8", "  the same, measured inside the daemon (no FUSE)", inner, "")
	r.target("attach a disk: qemufs's own time", "< 50 ms", fmt.Sprintf("%s median, %s max", dur(own.median()), dur(own.max())), own.median() < 50*time.Millisecond)
	return nil
}

func msDur(s string) time.Duration {
	f, _ := strconv.ParseFloat(strings.TrimSpace(s), 64)
	return time.Duration(f * float64(time.Millisecond))
}
