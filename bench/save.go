package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// benchSave measures a managed save and the start that restores it, of a
// booted 128 MiB guest, through qemufs (`save`, then `start`) and by hand
// on a QEMU started with the same argv: stop + migrate to a file with
// QEMU's own exec:cat, quit; then a new QEMU with -incoming defer,
// migrate-incoming exec:cat from the file, cont. Both raise the migration
// speed limit the same way. Runs alternate, so a load change hits both.
func benchSave(env *benchEnv, m *mount) error {
	const name = "s"
	xml := guestXML(name, env, "")
	small := strings.Replace(xml, "<memory unit='MiB'>192</memory>", "<memory unit='MiB'>128</memory>", 1)
	if small == xml {
		return fmt.Errorf("guest XML: no 192 MiB <memory> to make 128 MiB")
	}
	if err := m.define(name, small); err != nil {
		return err
	}
	path, args, err := bareArgs(m, name)
	if err != nil {
		return err
	}
	args = withoutSandbox(withSerialStdio(args))
	dir := filepath.Join(env.base, "save")
	os.Mkdir(dir, 0o755)
	file := filepath.Join(dir, "bare.save")

	// Boot both guests once; the loop saves and restores them.
	if err := m.ctl(name, "start"); err != nil {
		return err
	}
	if err := waitConsole(m, name, env.ready); err != nil {
		return err
	}
	q, c, err := bareBoot(dir, path, args, env.ready)
	if err != nil {
		return err
	}
	defer func() { q.stop(syscall.SIGKILL) }()

	var qSave, qStart, qTotal, bSave, bStart, bTotal samples
	var imageSize, bareSize int64
	for i := 0; i < env.nBoot; i++ {
		settle()
		t0 := time.Now()
		if err := m.ctl(name, "save"); err != nil {
			return err
		}
		t1 := time.Now()
		if st := m.state(name); st != "shut off (saved)" {
			return fmt.Errorf("state after save: %q", st)
		}
		if st, err := os.Stat(filepath.Join(m.root, "lib/qemu/.save", name+".save")); err == nil {
			imageSize = st.Size()
		}
		settle()
		t2 := time.Now()
		if err := m.ctl(name, "start"); err != nil {
			return err
		}
		t3 := time.Now()
		if st := m.state(name); st != "running (restored)" {
			return fmt.Errorf("state after start: %q", st)
		}
		qSave, qStart = append(qSave, t1.Sub(t0)), append(qStart, t3.Sub(t2))
		qTotal = append(qTotal, t1.Sub(t0)+t3.Sub(t2))

		settle()
		t0 = time.Now()
		if err := bareSave(q, c, file); err != nil {
			return fmt.Errorf("by hand: %w (see %s/floor.log)", err, dir)
		}
		t1 = time.Now()
		if st, err := os.Stat(file); err == nil {
			bareSize = st.Size()
		}
		settle()
		t2 = time.Now()
		q, c, err = bareRestore(dir, path, args, file)
		if err != nil {
			return fmt.Errorf("by hand: %w (see %s/floor.log)", err, dir)
		}
		t3 = time.Now()
		bSave, bStart = append(bSave, t1.Sub(t0)), append(bStart, t3.Sub(t2))
		bTotal = append(bTotal, t1.Sub(t0)+t3.Sub(t2))
	}
	if err := m.ctl(name, "destroy"); err != nil {
		return err
	}
	r := env.rep
	r.add("8", "by hand: stop, migrate exec:cat > file, quit", bSave, fmt.Sprintf("128 MiB booted guest; %d-byte stream", bareSize))
	r.add("8", "qemufs: `echo save > ctl` → shut off (saved)", qSave, fmt.Sprintf("%.2fx; %d-byte image", ratio(qSave, bSave), imageSize))
	r.add("8", "by hand: QEMU -incoming defer, migrate-incoming exec:cat, cont", bStart, "")
	r.add("8", "qemufs: `echo start > ctl` → running (restored)", qStart, fmt.Sprintf("%.2fx", ratio(qStart, bStart)))
	r.add("8", "by hand: save + restore", bTotal, "")
	r.add("8", "qemufs: save + start", qTotal, "")
	rt := ratio(qTotal, bTotal)
	r.target("managed save + start vs QEMU's migrate to file + incoming", "≤ 1.5x",
		fmt.Sprintf("%.2fx (%s vs %s); min to min %.2fx", rt, dur(qTotal.median()), dur(bTotal.median()), minRatio(qTotal, bTotal)), rt <= 1.5)
	return nil
}

// waitConsole reads NAME/console until want.
func waitConsole(m *mount, name, want string) error {
	f, err := os.Open(m.path(name, "console"))
	if err != nil {
		return err
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return waitFor(ctx, f, want)
}

// bareBoot starts QEMU by hand with args (which have -S), lets it run and
// waits for the guest's ready line; the console is drained afterwards.
func bareBoot(dir, path string, args []string, ready string) (*bareQEMU, *qmpClient, error) {
	q, err := startBare(dir, path, args, true)
	if err != nil {
		return nil, nil, err
	}
	c, err := qmpDial(q.qmp, 30*time.Second)
	if err == nil {
		_, err = c.run([]byte(`{"execute":"cont"}`))
	}
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		err = waitFor(ctx, q.stdout, ready)
		cancel()
	}
	if err != nil {
		q.stop(syscall.SIGKILL)
		return nil, nil, fmt.Errorf("boot by hand: %w", err)
	}
	go io.Copy(io.Discard, q.stdout)
	return q, c, nil
}

// bareSave saves q's guest to file with QEMU's own means and ends q.
func bareSave(q *bareQEMU, c *qmpClient, file string) error {
	for _, cmd := range []string{
		`{"execute":"stop"}`,
		`{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":1125899906842624}}`,
		fmt.Sprintf(`{"execute":"migrate","arguments":{"uri":"exec:cat > %s"}}`, file),
	} {
		if _, err := c.run([]byte(cmd)); err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
	}
	if err := waitMigration(c); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if _, err := c.run([]byte(`{"execute":"quit"}`)); err != nil {
		return fmt.Errorf("quit: %w", err)
	}
	q.cmd.Wait()
	c.close()
	if q.stdin != nil {
		q.stdin.Close()
	}
	return nil
}

// bareRestore starts QEMU with -incoming defer and loads file into it.
func bareRestore(dir, path string, args []string, file string) (*bareQEMU, *qmpClient, error) {
	q, err := startBare(dir, path, append(append([]string(nil), args...), "-incoming", "defer"), true)
	if err != nil {
		return nil, nil, err
	}
	go io.Copy(io.Discard, q.stdout)
	c, err := qmpDial(q.qmp, 30*time.Second)
	if err == nil {
		_, err = c.run([]byte(fmt.Sprintf(`{"execute":"migrate-incoming","arguments":{"uri":"exec:cat %s"}}`, file)))
	}
	if err == nil {
		if err = waitMigration(c); err != nil {
			err = fmt.Errorf("restore: %w", err)
		}
	}
	if err == nil {
		_, err = c.run([]byte(`{"execute":"cont"}`))
	}
	if err != nil {
		q.stop(syscall.SIGKILL)
		return nil, nil, err
	}
	return q, c, nil
}

// waitMigration polls query-migrate until the migration completed, every
// millisecond, so polling adds next to nothing to the floor.
func waitMigration(c *qmpClient) error {
	deadline := time.Now().Add(5 * time.Minute)
	for pause := time.Millisecond; ; {
		reply, err := c.run([]byte(`{"execute":"query-migrate"}`))
		if err != nil {
			return err
		}
		switch {
		case bytes.Contains(reply, []byte(`"completed"`)):
			return nil
		case bytes.Contains(reply, []byte(`"failed"`)), bytes.Contains(reply, []byte(`"cancelled"`)):
			return fmt.Errorf("migration: %s", bytes.TrimSpace(reply))
		case time.Now().After(deadline):
			return fmt.Errorf("migration not done: %s", bytes.TrimSpace(reply))
		}
		time.Sleep(pause)
	}
}

// withoutSandbox drops QEMU's seccomp sandbox from args: its spawn=deny
// kills the QEMU whose exec:cat migration forks a shell. (qemufs keeps the
// sandbox: QEMU streams to a socket of qemufs instead.)
func withoutSandbox(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == "-sandbox" && i+1 < len(args) {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}
