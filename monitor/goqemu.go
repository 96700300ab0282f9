package monitor

import (
	"context"
	"fmt"

	"github.com/digitalocean/go-qemu/qmp"
)

var _ qmp.Monitor = (*Conn)(nil)

// Connect implements qmp.Monitor. Dial has already connected and negotiated,
// so Connect only reports whether the connection is still up.
func (c *Conn) Connect() error {
	return c.Err()
}

// Disconnect implements qmp.Monitor by closing the connection.
func (c *Conn) Disconnect() error {
	return c.Close()
}

// Run implements qmp.Monitor for go-qemu's typed commands: command is a JSON
// object as go-qemu marshals it; the reply is returned whole. An error reply
// is returned as an *Error, wrapped with the command name. There is no
// context: Options.CommandTimeout bounds it.
func (c *Conn) Run(command []byte) ([]byte, error) {
	out, err := c.RunRaw(context.Background(), command)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", commandName(command), err)
	}
	r, _ := classify(out)
	if r == nil {
		return nil, fmt.Errorf("qmp run: unexpected reply %.200q", out)
	}
	if err := r.qemuError(); err != nil {
		return nil, fmt.Errorf("%s: %w", commandName(command), err)
	}
	return out, nil
}

// commandName returns the command a JSON command object executes, for error
// messages.
func commandName(cmd []byte) string {
	it := newObjIter(cmd)
	for m, ok := it.next(); ok; m, ok = it.next() {
		if m.keyIs(cmd, "execute") || m.keyIs(cmd, "exec-oob") {
			if s, ok := m.stringValue(cmd); ok {
				return s
			}
		}
	}
	return "qmp run"
}
