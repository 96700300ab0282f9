package driver

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestConsoleWriteInterrupted: a paused guest takes no serial input, so a
// big write fills the pty and waits; the end of its context ends it with
// the bytes sent so far, and the next write waits its turn normally.
func TestConsoleWriteInterrupted(t *testing.T) {
	d := newDriver(t)
	d.Create("c")
	if err := d.Define("c", []byte(minimalXML("c"))); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(context.Background(), "c", "start --paused"); err != nil {
		t.Fatal(err)
	}
	h, err := d.OpenConsole("c")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	n, err := h.Write(ctx, make([]byte, 4<<20))
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("write took %v", took)
	}
	if err != nil || n <= 0 || n >= 4<<20 {
		t.Errorf("interrupted write: %d, %v; want a short count", n, err)
	}
	// The pty is full now: a write gets nothing through and says why.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if n, err := h.Write(ctx2, []byte("x")); n != 0 || !errors.Is(err, ErrInterrupted) {
		t.Errorf("write to a full console: %d, %v; want ErrInterrupted", n, err)
	}
}
