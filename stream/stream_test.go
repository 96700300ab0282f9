package stream

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestReadersSeeEverything(t *testing.T) {
	l := New(1<<10, true)
	a, b := l.Follow(), l.Follow()
	for _, s := range []string{"one\n", "two\n"} {
		if _, err := l.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	for name, r := range map[string]*Reader{"a": a, "b": b} {
		got := readAll(t, r)
		if got != "one\ntwo\n" {
			t.Errorf("reader %s: got %q, want %q", name, got, "one\ntwo\n")
		}
	}
}

func readAll(t *testing.T, r *Reader) string {
	t.Helper()
	var sb strings.Builder
	buf := make([]byte, 3)
	for {
		n, err := r.Read(context.Background(), buf)
		sb.Write(buf[:n])
		if err == io.EOF {
			return sb.String()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestBounded(t *testing.T) {
	tests := []struct {
		name   string
		limit  int
		lines  bool
		writes []string
		want   string
	}{
		{"bytes", 5, false, []string{"abc", "defg"}, "cdefg"},
		{"lines drop whole lines", 8, true, []string{"aaaa\n", "bbb\n", "cc\n"}, "bbb\ncc\n"},
		{"line longer than limit", 4, true, []string{"abcdefgh\n"}, ""},
		{"under limit", 100, true, []string{"x\n"}, "x\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := New(tt.limit, tt.lines)
			r := l.NewReader()
			for _, w := range tt.writes {
				l.Write([]byte(w))
			}
			l.Close()
			if got := readAll(t, r); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if got := string(l.Bytes()); got != tt.want {
				t.Errorf("Bytes: got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestHistoryAndFollow(t *testing.T) {
	l := New(100, false)
	l.Write([]byte("old"))
	h, f := l.NewReader(), l.Follow()
	l.Write([]byte("new"))
	l.Close()
	if got := readAll(t, h); got != "oldnew" {
		t.Errorf("history reader: got %q", got)
	}
	if got := readAll(t, f); got != "new" {
		t.Errorf("follow reader: got %q", got)
	}
}

func TestReadBlocksUntilWrite(t *testing.T) {
	l := New(100, false)
	r := l.Follow()
	var wg sync.WaitGroup
	wg.Add(1)
	var got string
	go func() {
		defer wg.Done()
		buf := make([]byte, 10)
		n, err := r.Read(context.Background(), buf)
		if err != nil {
			t.Error(err)
		}
		got = string(buf[:n])
	}()
	l.Write([]byte("hi"))
	wg.Wait()
	if got != "hi" {
		t.Errorf("got %q, want hi", got)
	}
}

func TestReadInterrupted(t *testing.T) {
	l := New(100, false)
	r := l.Follow()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := r.Read(ctx, make([]byte, 1))
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("got %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read did not return after cancel")
	}
}

func TestWriteAfterClose(t *testing.T) {
	l := New(10, false)
	l.Close()
	if _, err := l.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("got %v, want ErrClosed", err)
	}
}

// TestReadLine: one line per call, whatever the buffer; a line longer
// than the buffer comes in pieces; dropped history is skipped as by Read.
func TestReadLine(t *testing.T) {
	l := New(16, true)
	r := l.NewReader()
	l.Write([]byte("ab\ncd\n"))
	l.Write([]byte("efghij\n"))
	ctx := context.Background()
	buf := make([]byte, 64)
	for _, want := range []string{"ab\n", "cd\n", "efghij\n"} {
		n, err := r.ReadLine(ctx, buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("ReadLine: %q, %v; want %q", buf[:n], err, want)
		}
	}
	l.Write([]byte("0123456789\n"))
	small := make([]byte, 4)
	var got string
	for !strings.HasSuffix(got, "\n") {
		n, err := r.ReadLine(ctx, small)
		if err != nil {
			t.Fatal(err)
		}
		got += string(small[:n])
	}
	if got != "0123456789\n" {
		t.Errorf("long line in pieces: %q", got)
	}
	// A reader left behind resumes at the oldest retained line.
	old := l.NewReader()
	l.Write([]byte("klmnopq\n"))
	l.Write([]byte("rs\n"))
	n, _ := old.ReadLine(ctx, buf)
	if string(buf[:n]) != "klmnopq\n" {
		t.Errorf("reader behind: %q", buf[:n])
	}
}
