package capabilities

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The fake emulator is this test binary run again: a tiny script named
// qemu-system-<target> sets QEMUFS_FAKE_QEMU to a mode and execs it. It
// speaks just enough QMP, on the socket the prober passes, to test the
// cases real QEMU will not produce on demand.

const fakeEnv = "QEMUFS_FAKE_QEMU"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeEnv); mode != "" {
		os.Exit(fakeQEMU(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// writeFake puts an executable fake emulator at dir/name. logFile, if set,
// gets one line per run, so tests can count probes.
func writeFake(t testing.TB, dir, name, mode, logFile string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	// exec keeps the pid, so the prober kills the fake itself by pid.
	script := fmt.Sprintf("#!/bin/sh\n%s=%s QEMUFS_FAKE_LOG=%s QEMUFS_FAKE_TARGET=%s exec %s \"$@\"\n",
		fakeEnv, mode, shellQuote(logFile), shellQuote(strings.TrimPrefix(name, "qemu-system-")), shellQuote(exe))
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeForkingFake is writeFake with a wrapper script that runs the fake as
// its child instead of exec'ing it, as some distribution wrappers do.
func writeForkingFake(t testing.TB, dir, name, mode, logFile string) string {
	path := writeFake(t, dir, name, mode, logFile)
	data, _ := os.ReadFile(path)
	script := strings.Replace(string(data), " exec ", " ", 1) + "echo wrapper done\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// fakeQEMU behaves per mode:
//
//	ok       answers the probe's queries with a small machine list
//	hang     never accepts the QMP connection
//	silent   accepts, never greets
//	garbage  writes non-QMP bytes and waits
//	exit     prints an error and exits 1 at once
func fakeQEMU(mode string, args []string) int {
	if lf := os.Getenv("QEMUFS_FAKE_LOG"); lf != "" {
		f, err := os.OpenFile(lf, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintln(f, mode, os.Getpid())
			f.Close()
		}
	}
	if mode == "exit" {
		fmt.Fprintln(os.Stderr, "qemu-system-fake: -machine none: could not load firmware")
		return 1
	}
	l, err := fakeListener(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake:", err)
		return 1
	}
	if mode == "hang" {
		select {}
	}
	c, err := l.Accept()
	if err != nil {
		return 1
	}
	switch mode {
	case "silent":
		select {}
	case "garbage":
		fmt.Fprintf(c, "\x00\x01 this is not QMP }{\n")
		select {}
	}
	target := os.Getenv("QEMUFS_FAKE_TARGET")
	fmt.Fprintln(c, `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 9, "major": 9}, "package": "fake"}, "capabilities": []}}`)
	sc := bufio.NewScanner(c)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var req struct {
			Execute string          `json:"execute"`
			ID      json.RawMessage `json:"id"`
		}
		if json.Unmarshal(sc.Bytes(), &req) != nil {
			continue
		}
		ret, ok := fakeReplies(target)[req.Execute]
		rep := map[string]any{"return": ret}
		if !ok {
			rep = map[string]any{"error": map[string]string{"class": "CommandNotFound",
				"desc": "The command " + req.Execute + " has not been found"}}
		}
		if req.ID != nil {
			rep["id"] = req.ID
		}
		b, _ := json.Marshal(rep)
		c.Write(append(b, '\n'))
	}
	return 0
}

func fakeReplies(target string) map[string]any {
	return map[string]any{
		"qmp_capabilities": map[string]any{},
		"query-version": map[string]any{"qemu": map[string]int{"major": 9, "minor": 9, "micro": 0},
			"package": "fake"},
		"query-target": map[string]string{"arch": target},
		"query-kvm":    map[string]bool{"enabled": false, "present": false},
		"query-machines": []map[string]any{
			{"name": "fakeboard-1.0", "alias": "fakeboard", "is-default": true, "cpu-max": 4, "deprecated": false},
			{"name": "fakeboard-0.9", "cpu-max": 2, "deprecated": true},
			{"name": "none", "cpu-max": 1, "deprecated": false},
		},
		"query-cpu-definitions": []map[string]any{
			{"name": "fakecpu", "typename": "fakecpu-" + target + "-cpu", "unavailable-features": []string{}, "deprecated": false},
			{"name": "bigcpu", "typename": "bigcpu-" + target + "-cpu", "unavailable-features": []string{"vec"}, "deprecated": false},
		},
		"query-commands": []map[string]string{{"name": "query-version"}, {"name": "query-vnc"}, {"name": "blockdev-add"}},
		"qom-list-types": []map[string]string{{"name": "virtio-blk-device"}, {"name": "virtio-rng-device"},
			{"name": "rng-random"}, {"name": "memory-backend-ram"}, {"name": "iothread"}, {"name": "tcg-accel"}},
	}
}

// fakeListener finds the QMP socket in QEMU's arguments: an inherited
// listening fd (-chardev socket,fd=N,server=on) or a path (-qmp unix:P,server=on).
func fakeListener(args []string) (net.Listener, error) {
	for i := 0; i+1 < len(args); i++ {
		opt, val := args[i], args[i+1]
		switch opt {
		case "-chardev":
			for _, kv := range strings.Split(val, ",") {
				if fd, ok := strings.CutPrefix(kv, "fd="); ok {
					n, err := strconv.Atoi(fd)
					if err != nil {
						return nil, err
					}
					return net.FileListener(os.NewFile(uintptr(n), "qmp"))
				}
			}
		case "-qmp":
			p, ok := strings.CutPrefix(strings.Split(val, ",")[0], "unix:")
			if ok {
				return net.Listen("unix", p)
			}
		}
	}
	return nil, fmt.Errorf("no QMP socket in %q", args)
}
