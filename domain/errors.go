package domain

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// ErrUnsupported is wrapped by errors about valid definitions that this
// host or qemufs cannot run (host devices, KVM without /dev/kvm, a backend
// QEMU lacks). errors.Is(err, ErrUnsupported) tells them from bad input.
var ErrUnsupported = errors.New("unsupported")

// ErrNeedsKVM is wrapped by errors about what only a hardware accelerator
// can do (host-passthrough CPU, Hyper-V enlightenments, ...) when the
// domain type is 'qemu' (TCG). It also matches ErrUnsupported.
var ErrNeedsKVM = fmt.Errorf("%w: needs KVM", ErrUnsupported)

// Error is a problem with a domain definition. Path names the element as a
// slash-separated path from <domain> with 1-based indexes where an element
// repeats, e.g. "devices/disk[2]/target".
type Error struct {
	Path string
	Msg  string
	Err  error // wrapped cause, e.g. ErrUnsupported
}

// Error returns "path: message".
func (e *Error) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// pathOf returns the Error.Path of element e.
func pathOf(e *etree.Element) string {
	var parts []string
	if e != nil && (e.Parent() == nil || e.Parent().Parent() == nil) {
		return e.FullTag() // the root element
	}
	for e != nil && e.Parent() != nil && e.Parent().Parent() != nil {
		p := e.Parent()
		name := e.FullTag()
		n, idx := 0, 0
		for _, s := range p.ChildElements() {
			if s.Space == e.Space && s.Tag == e.Tag {
				n++
				if s == e {
					idx = n
				}
			}
		}
		// Devices always carry their index, so a message names the same
		// device whatever else the definition holds.
		if n > 1 || (p.Tag == "devices" && p.Space == "" && e.Tag != "emulator") {
			name += "[" + strconv.Itoa(idx) + "]"
		}
		parts = append(parts, name)
		e = p
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, "/")
}

func errAt(e *etree.Element, format string, args ...any) *Error {
	return &Error{Path: pathOf(e), Msg: fmt.Sprintf(format, args...)}
}

func unsupportedAt(e *etree.Element, format string, args ...any) *Error {
	return &Error{Path: pathOf(e), Msg: fmt.Sprintf(format, args...), Err: ErrUnsupported}
}
