package driver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/qemufs/qemufs/monitor"
)

// qemuImg runs qemu-img with args; the error carries what it printed.
func qemuImg(ctx context.Context, args ...string) error {
	_, err := qemuImgOutput(ctx, args...)
	return err
}

func qemuImgOutput(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("qemu-img %s: %s", strings.Join(args, " "), msg)
	}
	return out, nil
}

// imageLayer is one image of `qemu-img info --backing-chain` output.
type imageLayer struct {
	Filename    string `json:"filename"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
}

// imageInfo returns an image's backing chain, the image itself first. It
// shares the image with a QEMU that has it open (-U), which is safe for
// reading the header.
func imageInfo(ctx context.Context, path string) ([]imageLayer, error) {
	out, err := qemuImgOutput(ctx, "info", "-U", "--backing-chain", "--output=json", path)
	if err != nil {
		return nil, err
	}
	var chain []imageLayer
	if err := json.Unmarshal(out, &chain); err != nil || len(chain) == 0 {
		return nil, fmt.Errorf("qemu-img info %s: unexpected output %q", path, bytes.TrimSpace(out))
	}
	return chain, nil
}

type owner struct{ uid, gid int }

// statOwner returns the owner of a stat'ed file.
func statOwner(fi os.FileInfo) (owner, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return owner{}, false
	}
	return owner{int(st.Uid), int(st.Gid)}, true
}

// jobSeq numbers QMP job ids within this daemon.
var jobSeq atomic.Uint64

// job runs a QMP command that starts a job (snapshot-save, snapshot-load,
// snapshot-delete), waits for the job to conclude, as JOB_STATUS_CHANGE
// events tell, and dismisses it. The error is the job's own.
func (r *run) job(ctx context.Context, command string, args map[string]any) error {
	id := fmt.Sprintf("qemufs-%s-%d", command, jobSeq.Add(1))
	args["job-id"] = id
	rd := r.qmpEvents.Follow() // before the command: no event is missed
	if err := r.mon.Execute(ctx, command, args, nil); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	var line []byte
	for done := false; !done; {
		n, err := rd.ReadLine(ctx, buf)
		line = append(line, buf[:n]...)
		if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
			if ctx.Err() != nil {
				return fmt.Errorf("job %s did not end in time: %w", id, ctx.Err())
			}
			return fmt.Errorf("job %s: QEMU ended while it ran", id)
		}
		if !bytes.HasSuffix(line, []byte("\n")) {
			continue
		}
		var ev struct {
			Event string `json:"event"`
			Data  struct {
				ID     string `json:"id"`
				Status string `json:"status"`
			} `json:"data"`
		}
		if json.Unmarshal(line, &ev) == nil && ev.Event == "JOB_STATUS_CHANGE" && ev.Data.ID == id &&
			(ev.Data.Status == "concluded" || ev.Data.Status == "null") {
			done = true
		}
		line = line[:0]
	}
	var jobs []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	if err := r.mon.Execute(ctx, "query-jobs", nil, &jobs); err != nil {
		return err
	}
	for _, j := range jobs {
		if j.ID != id {
			continue
		}
		r.mon.Execute(ctx, "job-dismiss", map[string]any{"id": id}, nil)
		if j.Error != "" {
			return errors.New(j.Error)
		}
	}
	return nil
}

// snapshotJob runs an internal-snapshot job (snapshot-save, -load,
// -delete); a QEMU older than 6.0, which lacks them, gets the human
// monitor's savevm, loadvm or delvm instead, which act on every writable
// disk.
func (r *run) snapshotJob(ctx context.Context, command string, args map[string]any) error {
	err := r.job(ctx, command, args)
	var qe *monitor.Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		return err
	}
	hmp := map[string]string{"snapshot-save": "savevm", "snapshot-load": "loadvm", "snapshot-delete": "delvm"}[command]
	out, err := r.mon.HMP(ctx, hmp+" "+args["tag"].(string))
	if err != nil {
		return err
	}
	if out = strings.TrimSpace(out); out != "" {
		return fmt.Errorf("%s: %s", hmp, out)
	}
	return nil
}

// formatNodes maps the image file of each format node QEMU has open to
// the node's name: what snapshot-save, snapshot-load and blockdev-snapshot
// take.
func (r *run) formatNodes(ctx context.Context) (map[string]string, error) {
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
		File     string `json:"file"`
	}
	if err := r.mon.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, fmt.Errorf("query-named-block-nodes: %w", err)
	}
	out := map[string]string{}
	for _, n := range nodes {
		switch n.Drv {
		case "file", "host_device", "host_cdrom", "throttle", "copy-on-read":
			continue // protocol and filter nodes
		}
		if _, dup := out[n.File]; !dup {
			out[n.File] = n.NodeName
		}
	}
	return out, nil
}
