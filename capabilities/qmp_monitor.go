package capabilities

import (
	"context"

	"github.com/qemufs/qemufs/monitor"
)

// dialMonitor connects the probe to QEMU with qemufs' QMP client, which
// pipelines concurrent Execute calls (matched by id) and takes replies of
// any size.
func dialMonitor(ctx context.Context, path string) (qmpConn, error) {
	c, err := monitor.Dial(ctx, path, monitor.Options{})
	if err != nil {
		return nil, err
	}
	return c, nil
}
