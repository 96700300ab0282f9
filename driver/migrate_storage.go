package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Storage copy (--copy-storage-all), as libvirt does it: the destination
// makes the disks it lacks and serves them over NBD from its waiting QEMU;
// the source mirrors each into its export (blockdev-mirror, sync=full)
// until the copies are in step, migrates the memory, then ends the mirrors
// while the guest is paused, so that both ends hold the same disk.

// mirrorStallTimeout fails a storage copy that stops moving before the
// mirrors are in step.
const mirrorStallTimeout = 60 * time.Second

// missingDisk is a writable file disk the destination does not have.
type missingDisk struct {
	target, path, format string
	err                  error // the refusal, without --copy-storage-all
}

// createDiskImage makes an empty image for m of size bytes.
func createDiskImage(ctx context.Context, m missingDisk, size int64) error {
	format := m.format
	if format == "" {
		format = "raw"
	}
	if _, err := os.Stat(m.path); err == nil {
		return fmt.Errorf("disk %s: %s appeared meanwhile; not overwriting it", m.target, m.path)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", format, m.path, strconv.FormatInt(size, 10)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("disk %s: qemu-img create %s: %v: %s", m.target, m.path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// removeCreatedDisks removes the images an incoming migration made.
func (d *Driver) removeCreatedDisks(j *migrationJob) {
	j.mu.Lock()
	paths := j.createdDisks
	j.createdDisks = nil
	j.mu.Unlock()
	for _, p := range paths {
		os.Remove(p)
	}
}

// blockInfo is one entry of query-block.
type blockInfo struct {
	Device   string `json:"device"`
	QDev     string `json:"qdev"`
	Inserted *struct {
		File     string `json:"file"`
		NodeName string `json:"node-name"`
		Image    struct {
			VirtualSize int64 `json:"virtual-size"`
		} `json:"image"`
	} `json:"inserted"`
}

// diskNodes maps each disk's image path to its block node and size.
func (r *run) diskNodes(ctx context.Context) (map[string]blockInfo, error) {
	var blocks []blockInfo
	if err := r.mon.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return nil, err
	}
	out := map[string]blockInfo{}
	for _, b := range blocks {
		if b.Inserted != nil {
			out[b.Inserted.File] = b
		}
	}
	return out, nil
}

// startNBD serves the disks this host made over NBD on host (the address
// the migration listens on), for the source to mirror into; the address
// and the exports show in NAME/migration ("NBD:", "NBD disks:").
func (d *Driver) startNBD(ctx context.Context, r *run, j *migrationJob, host string) error {
	j.mu.Lock()
	var want []missingDisk
	for _, m := range j.missingDisks {
		for _, p := range j.createdDisks {
			if p == m.path {
				want = append(want, m)
			}
		}
	}
	j.mu.Unlock()
	if len(want) == 0 {
		return nil
	}
	nodes, err := r.diskNodes(ctx)
	if err != nil {
		return fmt.Errorf("query-block: %w", err)
	}
	listen := host
	port, err := freeTCPPort(listen)
	if err != nil {
		return fmt.Errorf("NBD port: %w", err)
	}
	addr := map[string]any{"type": "inet", "data": map[string]any{"host": listen, "port": strconv.Itoa(port)}}
	if err := r.mon.Execute(ctx, "nbd-server-start", map[string]any{"addr": addr}, nil); err != nil {
		return fmt.Errorf("nbd-server-start: %w", err)
	}
	var names []string
	for _, m := range want {
		b, ok := nodes[m.path]
		if !ok {
			return fmt.Errorf("disk %s (%s) has no block node in QEMU", m.target, m.path)
		}
		args := map[string]any{"type": "nbd", "id": "migrate-" + m.target, "node-name": b.Inserted.NodeName, "name": m.target, "writable": true}
		if err := r.mon.Execute(ctx, "block-export-add", args, nil); err != nil {
			return fmt.Errorf("block-export-add %s: %w", m.target, err)
		}
		names = append(names, m.target)
	}
	j.set(func(j *migrationJob) {
		j.nbd = "tcp:" + net.JoinHostPort(host, strconv.Itoa(port)) + " " + strings.Join(names, ",")
	})
	d.appendLog(r.files.Log, "incoming migration: disks %s served over NBD on %s:%d", strings.Join(names, ","), host, port)
	return nil
}

// stopNBD ends the NBD server of an incoming migration, if any.
func (r *run) stopNBD(ctx context.Context, j *migrationJob) error {
	j.mu.Lock()
	nbd := j.nbd
	j.mu.Unlock()
	if nbd == "" {
		return nil
	}
	if err := r.mon.Execute(ctx, "nbd-server-stop", nil, nil); err != nil {
		return fmt.Errorf("nbd-server-stop: %w", err)
	}
	j.set(func(j *migrationJob) { j.nbd = "" })
	return nil
}

func freeTCPPort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ---- the source's side ----

// copySizes is the --copy-storage=TARGET:BYTES words for migrate-incoming:
// every writable file disk, with its virtual size.
func (r *run) copySizes(ctx context.Context) ([]string, error) {
	nodes, err := r.diskNodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("query-block: %w", err)
	}
	var words []string
	for _, dk := range r.def().Disks() {
		if dk.Type != "file" && dk.Type != "" || dk.ReadOnly || dk.Device != "disk" {
			continue
		}
		b, ok := nodes[dk.Source]
		if !ok {
			return nil, fmt.Errorf("disk %s (%s) has no block node in QEMU", dk.Target, dk.Source)
		}
		words = append(words, fmt.Sprintf("--copy-storage=%s:%d", dk.Target, b.Inserted.Image.VirtualSize))
	}
	return words, nil
}

// mirror is one disk copied to the destination.
type mirror struct{ target, job, node string }

// incomingNBD reads the NBD server and exports from the destination's
// NAME/migration; none when the destination has every disk (shared).
func (t destTree) incomingNBD() (uri string, targets []string, err error) {
	b, err := os.ReadFile(t.path("migration"))
	if err != nil {
		return "", nil, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.TrimSpace(k) == "NBD" {
			f := strings.Fields(v)
			if len(f) != 2 {
				return "", nil, fmt.Errorf("the destination's NBD line %q", l)
			}
			return f[0], strings.Split(f[1], ","), nil
		}
	}
	return "", nil, nil
}

// startMirrors mirrors each disk the destination serves into its export
// and waits until every copy is in step (the jobs are ready).
func (d *Driver) startMirrors(ctx context.Context, r *run, t destTree, host string) (ms []mirror, err error) {
	nbd, targets, err := t.incomingNBD()
	if err != nil || nbd == "" {
		return nil, err
	}
	_, port, err := parseTCPURI(nbd)
	if err != nil {
		return nil, fmt.Errorf("the destination's NBD address %q: %w", nbd, err)
	}
	nodes, err := r.diskNodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("query-block: %w", err)
	}
	defer func() {
		if err != nil {
			r.cancelMirrors(ms, true)
			ms = nil
		}
	}()
	for _, tg := range targets {
		var src string
		for _, dk := range r.def().Disks() {
			if dk.Target == tg {
				src = dk.Source
			}
		}
		b, ok := nodes[src]
		if src == "" || !ok {
			return ms, fmt.Errorf("the destination serves disk %s, which this guest does not have", tg)
		}
		m := mirror{target: tg, job: "migrate-" + tg, node: "migrate-nbd-" + tg}
		add := map[string]any{"driver": "nbd", "node-name": m.node, "export": tg,
			"server": map[string]any{"type": "inet", "host": host, "port": strconv.Itoa(port)}}
		if err := r.mon.Execute(ctx, "blockdev-add", add, nil); err != nil {
			return ms, fmt.Errorf("connecting to the destination's NBD export %s: %w", tg, err)
		}
		job := map[string]any{"job-id": m.job, "device": b.Inserted.NodeName, "target": m.node, "sync": "full", "auto-finalize": true, "auto-dismiss": true}
		if err := r.mon.Execute(ctx, "blockdev-mirror", job, nil); err != nil {
			r.mon.Execute(context.Background(), "blockdev-del", map[string]any{"node-name": m.node}, nil)
			return ms, fmt.Errorf("blockdev-mirror %s: %w", tg, err)
		}
		ms = append(ms, m)
	}
	// Wait until every mirror is ready (in step, copying new writes).
	last, lastMove := int64(-1), time.Now()
	for {
		var jobs []struct {
			Device string `json:"device"`
			Ready  bool   `json:"ready"`
			Offset int64  `json:"offset"`
			Len    int64  `json:"len"`
			Status string `json:"status"`
		}
		if err := r.mon.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil {
			return ms, fmt.Errorf("query-block-jobs: %w", err)
		}
		ready, moved := 0, int64(0)
		for _, m := range ms {
			found := false
			for _, j := range jobs {
				if j.Device == m.job {
					found = true
					moved += j.Offset
					if j.Ready {
						ready++
					}
				}
			}
			if !found {
				return ms, fmt.Errorf("the copy of disk %s ended before it was in step (the destination's NBD export went away?)", m.target)
			}
		}
		if ready == len(ms) {
			return ms, nil
		}
		if moved != last {
			last, lastMove = moved, time.Now()
		} else if time.Since(lastMove) > mirrorStallTimeout {
			return ms, fmt.Errorf("copying the disks made no progress for %s (%d bytes copied)", mirrorStallTimeout, moved)
		}
		select {
		case <-ctx.Done():
			return ms, errors.New("interrupted while copying the disks")
		case <-r.proc.Done():
			return ms, errors.New("QEMU ended while copying the disks")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// cancelMirrors ends the mirrors and removes their NBD nodes. Once the
// memory is migrated (the guest paused, the copies in step), cancelling a
// ready mirror leaves the destination's disk complete; force cancels one
// that is not (a failed migration).
func (r *run) cancelMirrors(ms []mirror, force bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var firstErr error
	for _, m := range ms {
		if err := r.mon.Execute(ctx, "block-job-cancel", map[string]any{"device": m.job, "force": force}, nil); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("block-job-cancel %s: %w", m.target, err)
		}
	}
	// Wait until the jobs are gone, then drop the NBD client nodes.
	for ctx.Err() == nil {
		var jobs []struct {
			Device string `json:"device"`
		}
		if err := r.mon.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil {
			break
		}
		left := 0
		for _, j := range jobs {
			for _, m := range ms {
				if j.Device == m.job {
					left++
				}
			}
		}
		if left == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, m := range ms {
		if err := r.mon.Execute(ctx, "blockdev-del", map[string]any{"node-name": m.node}, nil); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("blockdev-del %s: %w", m.node, err)
		}
	}
	return firstErr
}
