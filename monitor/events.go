package monitor

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// Event is one QMP event, e.g. {"event": "STOP", "timestamp": {...}}.
type Event struct {
	Name      string          // e.g. "SHUTDOWN"
	Data      json.RawMessage // the "data" member, nil if absent
	Timestamp time.Time       // QEMU's timestamp (microsecond precision)
	Raw       []byte          // the whole line as QEMU sent it, without the line ending
}

// Event values share their byte slices with every receiver: treat Data and
// Raw as read-only.

// eventQueue is an unbounded FIFO between the reader, which must never
// block, and the one goroutine that calls OnEvent and feeds subscribers.
// Its length is bounded in practice by the rate at which QEMU emits events.
type eventQueue struct {
	mu     sync.Mutex
	cond   sync.Cond
	q      []Event
	closed bool

	subMu      sync.Mutex
	subs       map[*subscriber]struct{}
	subsClosed bool
	dropped    atomic.Uint64
}

type subscriber struct {
	ch   chan qmp.Event
	stop func() bool // unregisters the context callback
}

func (e *eventQueue) init() {
	e.cond.L = &e.mu
	e.subs = make(map[*subscriber]struct{})
}

func (e *eventQueue) push(ev Event) {
	e.mu.Lock()
	e.q = append(e.q, ev)
	e.mu.Unlock()
	e.cond.Signal()
}

// close tells the dispatcher that no more events will come.
func (e *eventQueue) close() {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.cond.Signal()
}

// dispatchLoop delivers queued events in order until the queue is closed
// and empty, then closes the subscribers' channels and Done.
func (c *Conn) dispatchLoop() {
	e := &c.events
	var batch []Event
	for {
		e.mu.Lock()
		for len(e.q) == 0 && !e.closed {
			e.cond.Wait()
		}
		batch, e.q = e.q, batch[:0]
		last := e.closed && len(batch) == 0
		e.mu.Unlock()
		if last {
			break
		}
		for i := range batch {
			if c.opts.OnEvent != nil {
				c.opts.OnEvent(batch[i])
			}
			e.fanOut(&batch[i])
			batch[i] = Event{}
		}
	}
	e.subMu.Lock()
	e.subsClosed = true
	for s := range e.subs {
		s.stop()
		close(s.ch)
		delete(e.subs, s)
	}
	e.subMu.Unlock()
	close(c.done)
}

func (e *eventQueue) fanOut(ev *Event) {
	e.subMu.Lock()
	defer e.subMu.Unlock()
	for s := range e.subs {
		// Each subscriber gets its own decoded map, so one cannot
		// change what another sees.
		qe := qmp.Event{Event: ev.Name}
		if ev.Data != nil {
			_ = json.Unmarshal(ev.Data, &qe.Data)
		}
		if !ev.Timestamp.IsZero() {
			qe.Timestamp.Seconds = ev.Timestamp.Unix()
			qe.Timestamp.Microseconds = int64(ev.Timestamp.Nanosecond() / 1000)
		}
		select {
		case s.ch <- qe:
		default:
			e.dropped.Add(1)
		}
	}
}

// Events implements qmp.Monitor: it returns a new channel that receives every
// event from now on until ctx ends or the connection does, when it is
// closed. Each call makes an independent subscriber with a buffer of
// Options.EventBuffer events; a subscriber that falls behind loses events
// (see EventsDropped) rather than holding up anything else.
func (c *Conn) Events(ctx context.Context) (<-chan qmp.Event, error) {
	e := &c.events
	s := &subscriber{ch: make(chan qmp.Event, c.opts.EventBuffer)}
	e.subMu.Lock()
	defer e.subMu.Unlock()
	if e.subsClosed {
		return nil, c.Err()
	}
	e.subs[s] = struct{}{}
	s.stop = context.AfterFunc(ctx, func() {
		e.subMu.Lock()
		defer e.subMu.Unlock()
		if _, ok := e.subs[s]; ok {
			delete(e.subs, s)
			close(s.ch)
		}
	})
	return s.ch, nil
}

// EventsDropped returns how many events Events subscribers have lost by
// falling behind, summed over all of them.
func (c *Conn) EventsDropped() uint64 { return c.events.dropped.Load() }
