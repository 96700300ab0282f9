package procmgr

import (
	"fmt"
	"time"
)

// step is one named stage of starting a process (in the daemon: "spawn.*")
// or of preparing it in the helper ("helper.*"). Fn returns an error that
// already says what failed ("mount namespace: mknod /dev/kvm: ...").
type step[T any] struct {
	Name string
	Fn   func(T) error
}

// steps is an ordered list of steps with value semantics: with returns a
// new list and never changes the receiver's backing array.
type steps[T any] []step[T]

// with returns the list with s appended when cond holds.
func (l steps[T]) with(cond bool, s step[T]) steps[T] {
	if !cond {
		return l
	}
	out := make(steps[T], len(l), len(l)+1)
	copy(out, l)
	return append(out, s)
}

// stepError is the failure of one named step.
type stepError struct {
	Step string
	Err  error
}

func (e *stepError) Error() string { return e.Err.Error() }
func (e *stepError) Unwrap() error { return e.Err }

// run runs the steps in order and stops at the first error, which it
// returns as a *stepError naming the step. logf, when not nil, is told each
// step's name and duration.
func (l steps[T]) run(x T, logf func(format string, args ...any)) error {
	for _, s := range l {
		t := time.Now()
		err := s.Fn(x)
		if logf != nil {
			if err != nil {
				logf("%s: failed after %v: %v", s.Name, time.Since(t), err)
			} else {
				logf("%s: ok (%v)", s.Name, time.Since(t))
			}
		}
		if err != nil {
			return &stepError{Step: s.Name, Err: err}
		}
	}
	return nil
}

// String lists the step names, for logs and tests.
func (l steps[T]) String() string {
	names := make([]string, len(l))
	for i, s := range l {
		names[i] = s.Name
	}
	return fmt.Sprint(names)
}
