package monitor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// errAlreadyNegotiated is what QEMU answers to a second qmp_capabilities.
var errAlreadyNegotiated = &Error{
	Class: "CommandNotFound",
	Desc:  "Capabilities negotiation is already complete, command ignored",
}

// RunRaw passes one command from a user session to QEMU. cmd is a JSON
// object as the user typed it ("execute" or "exec-oob", with or without an
// "id" of any JSON type). On the wire the id is replaced by a unique one of
// the connection's; the reply is returned as QEMU sent it (one line, without
// the line ending) except that the user's id is put back as the user wrote
// it, or left out if the user gave none. Input that is not one well-formed
// JSON object gives an error wrapping ErrBadCommand and is not sent.
// qmp_capabilities, which would break the shared connection, is answered as
// QEMU answers it after negotiation, without reaching QEMU.
func (c *Conn) RunRaw(ctx context.Context, cmd []byte) ([]byte, error) {
	u, err := parseUserCommand(cmd)
	if err != nil {
		return nil, err
	}
	if u.execute == "qmp_capabilities" {
		return errorReply(u.id, u.hasID, errAlreadyNegotiated), nil
	}
	r, err := c.roundTrip(ctx, u.wire, nil)
	if err != nil {
		return nil, err
	}
	return u.restore(r), nil
}

// userCommand is a command from a user session, checked and located.
type userCommand struct {
	cmd     []byte
	idm     member // where the user's id is in cmd
	hasID   bool
	id      []byte // the user's id, on one line
	execute string // the "execute" member, if a string
}

// parseUserCommand checks that cmd is a JSON object QEMU will read as
// exactly one command, and finds its id.
func parseUserCommand(cmd []byte) (*userCommand, error) {
	if len(cmd) > MaxCommandSize {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrBadCommand, MaxCommandSize)
	}
	// QEMU's lexer splits on bytes that are not UTF-8, and then answers
	// each fragment: such input could never be matched to its replies.
	if !utf8.Valid(cmd) || !json.Valid(cmd) {
		return nil, fmt.Errorf("%w: not valid JSON", ErrBadCommand)
	}
	u := &userCommand{cmd: cmd}
	it := newObjIter(cmd)
	for m, ok := it.next(); ok; m, ok = it.next() {
		switch {
		case m.keyIs(cmd, "id"):
			if !u.hasID {
				u.idm, u.hasID = m, true
			}
		case m.keyIs(cmd, "execute"):
			u.execute, _ = m.stringValue(cmd)
		}
	}
	if it.err != nil {
		// cmd is valid JSON, so the scan failed because it is not an
		// object or because it nests deeper than maxNesting.
		if cmd[skipSpace(cmd, 0)] != '{' {
			return nil, fmt.Errorf("%w: not a JSON object", ErrBadCommand)
		}
		return nil, fmt.Errorf("%w: nested deeper than %d levels", ErrBadCommand, maxNesting)
	}
	if u.hasID {
		u.id = cmd[u.idm.valStart:u.idm.valEnd]
		if bytes.ContainsAny(u.id, "\r\n") {
			var b bytes.Buffer
			if err := json.Compact(&b, u.id); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
			}
			u.id = b.Bytes()
		}
	}
	return u, nil
}

// wire appends the command to b as it goes to QEMU: with id as its id, and
// a newline.
func (u *userCommand) wire(b []byte, id uint64) []byte {
	cmd := u.cmd
	if u.hasID {
		b = append(b, cmd[:u.idm.valStart]...)
		b = strconv.AppendUint(b, id, 10)
		b = append(b, cmd[u.idm.valEnd:]...)
	} else {
		open := skipSpace(cmd, 0) + 1
		b = append(b, cmd[:open]...)
		b = append(b, `"id":`...)
		b = strconv.AppendUint(b, id, 10)
		if cmd[skipSpace(cmd, open)] != '}' {
			b = append(b, ',')
		}
		b = append(b, cmd[open:]...)
	}
	return append(b, '\n')
}

// restore returns the reply with the user's id in place of the wire id, or
// without an id if the user gave none. A reply without an id (to a command
// QEMU could not parse) is returned as it is.
func (u *userCommand) restore(r *reply) []byte {
	if !r.hasID {
		return r.line
	}
	out := make([]byte, 0, len(r.line)+len(u.id))
	if u.hasID {
		out = append(out, r.line[:r.id.valStart]...)
		out = append(out, u.id...)
		return append(out, r.line[r.id.valEnd:]...)
	}
	out = append(out, r.line[:r.cutStart]...)
	return append(out, r.line[r.cutEnd:]...)
}

// errorReply formats an error reply the way QEMU does.
func errorReply(id []byte, hasID bool, e *Error) []byte {
	cls, _ := json.Marshal(e.Class)
	desc, _ := json.Marshal(e.Desc)
	var b []byte
	b = append(b, '{')
	if hasID {
		b = append(b, `"id": `...)
		b = append(b, id...)
		b = append(b, ", "...)
	}
	b = append(b, `"error": {"class": `...)
	b = append(b, cls...)
	b = append(b, `, "desc": `...)
	b = append(b, desc...)
	return append(b, "}}"...)
}
