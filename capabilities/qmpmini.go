package capabilities

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"sync"
)

// miniQMP is the small QMP client probing uses until the monitor package
// (our QMP connection) is available: commands tagged by id and pipelined,
// replies routed by id, events ignored, lines of any length.
type miniQMP struct {
	conn    net.Conn
	mu      sync.Mutex
	next    int
	pending map[string]chan json.RawMessage
	done    chan struct{}
	err     error
}

func dialMini(ctx context.Context, path string) (*miniQMP, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	r := bufio.NewReaderSize(c, 1<<16)
	line, err := r.ReadBytes('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	var greet struct{ QMP json.RawMessage }
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		c.Close()
		return nil, fmt.Errorf("greeting: not QMP: %q", line)
	}
	q := &miniQMP{conn: c, pending: map[string]chan json.RawMessage{}, done: make(chan struct{})}
	go q.read(r)
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *miniQMP) read(r *bufio.Reader) {
	defer close(q.done)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			q.err = err
			return
		}
		var m struct {
			ID json.RawMessage `json:"id"`
		}
		if json.Unmarshal(line, &m) != nil || m.ID == nil {
			continue // event
		}
		id, _ := strconv.Unquote(string(m.ID))
		q.mu.Lock()
		ch := q.pending[id]
		delete(q.pending, id)
		q.mu.Unlock()
		if ch != nil {
			ch <- line
		}
	}
}

func (q *miniQMP) Execute(ctx context.Context, cmd string, args, result any) error {
	q.mu.Lock()
	q.next++
	id := strconv.Itoa(q.next)
	ch := make(chan json.RawMessage, 1)
	q.pending[id] = ch
	q.mu.Unlock()
	req := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return err
	}
	select {
	case line := <-ch:
		var rep struct {
			Return json.RawMessage `json:"return"`
			Error  *struct{ Class, Desc string }
		}
		if err := json.Unmarshal(line, &rep); err != nil {
			return err
		}
		if rep.Error != nil {
			return fmt.Errorf("%s: %s", rep.Error.Class, rep.Error.Desc)
		}
		if result == nil {
			return nil
		}
		return json.Unmarshal(rep.Return, result)
	case <-q.done:
		return fmt.Errorf("QMP connection closed: %v", q.err)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (q *miniQMP) Close() error { return q.conn.Close() }

// dialMonitor connects the probe to QEMU.
func dialMonitor(ctx context.Context, path string) (qmpConn, error) { return dialMini(ctx, path) }
