package driver

// State is a domain's state, with libvirt's names.
type State string

// The states.
const (
	StateUndefined State = "undefined" // an empty slot
	StateShutoff   State = "shut off"
	StateRunning   State = "running"
	StatePaused    State = "paused"
	StateCrashed   State = "crashed"
)

// Reasons for a state, with libvirt's names.
const (
	ReasonUnknown    = "unknown"
	ReasonBooted     = "booted"
	ReasonUnpaused   = "unpaused"
	ReasonUser       = "user"
	ReasonShutdown   = "shutdown"
	ReasonDestroyed  = "destroyed"
	ReasonCrashed    = "crashed"
	ReasonFailed     = "failed"
	ReasonPanicked   = "panicked"
	ReasonStartingUp = "starting up"
	ReasonIOError    = "I/O error"
)

// StateLine returns the domain's state as `state` shows it, e.g.
// "running (booted)" or "shut off (destroyed)".
func (d *Driver) StateLine(name string) (string, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return "", err
	}
	dm.mu.Lock()
	defer dm.mu.Unlock()
	if dm.state == StateUndefined {
		return string(StateUndefined), nil
	}
	return string(dm.state) + " (" + dm.reason + ")", nil
}

// Active reports whether QEMU runs for the domain.
func (d *Driver) Active(name string) bool {
	dm, err := d.lookup(name)
	if err != nil {
		return false
	}
	dm.mu.Lock()
	defer dm.mu.Unlock()
	return dm.run != nil
}

func (dm *dom) setState(s State, reason string) {
	dm.mu.Lock()
	dm.state, dm.reason = s, reason
	dm.mu.Unlock()
}
