package driver

import (
	"encoding/json"
	"time"
)

// Event is one lifecycle event of a domain, written to its `events` stream
// as one JSON object per line.
type Event struct {
	Time   time.Time `json:"timestamp"`
	Domain string    `json:"domain"`
	// Event is one of: defined, undefined, started, paused, resumed,
	// shutdown, stopped, crashed, rebooted.
	Event string `json:"event"`
	// Detail is the reason, e.g. "booted", "destroyed", "panicked".
	Detail string `json:"detail,omitempty"`
}

// The lifecycle event names.
const (
	EventDefined   = "defined"
	EventUndefined = "undefined"
	EventStarted   = "started"
	EventPaused    = "paused"
	EventResumed   = "resumed"
	EventShutdown  = "shutdown"
	EventStopped   = "stopped"
	EventCrashed   = "crashed"
	EventRebooted  = "rebooted"
)

// publish appends a lifecycle event to the domain's events stream.
func (dm *dom) publish(event, detail string) {
	line, _ := json.Marshal(Event{Time: time.Now().UTC(), Domain: dm.name, Event: event, Detail: detail})
	dm.events.Write(append(line, '\n'))
}
