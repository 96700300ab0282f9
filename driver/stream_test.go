package driver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
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
	// The next writer is not hindered by the first one's deadline, and
	// is cut short the same way.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if n, err := h.Write(ctx2, make([]byte, 4<<20)); n >= 4<<20 || n == 0 && !errors.Is(err, ErrInterrupted) || n > 0 && err != nil {
		t.Errorf("second write to a full console: %d, %v; want a short count or ErrInterrupted", n, err)
	}
}

// TestMonitorSessionUnread: a session whose reader does not keep up gets
// its commands refused (ErrBusy) rather than losing or cutting replies;
// every queued reply reads back whole, and then commands run again; a
// read returns one reply line at most.
func TestMonitorSessionUnread(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	d.Create("m")
	if err := d.Define("m", []byte(minimalXML("m"))); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "m", "start --paused"); err != nil {
		t.Fatal(err)
	}
	s, err := d.OpenMonitor("m", false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sent := 0
	for ; sent < 100; sent++ {
		_, err := s.Write(ctx, []byte(`{"execute":"query-qmp-schema","id":`+strconv.Itoa(sent)+`}`))
		if errors.Is(err, ErrBusy) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if sent == 100 || sent < 2 {
		t.Fatalf("%d schema replies queued before a refusal", sent)
	}
	var all []byte
	buf := make([]byte, 1<<20)
	for bytes.Count(all, []byte("\n")) < sent {
		n, err := s.Read(ctx, buf)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, buf[:n]...)
	}
	for i, l := range bytes.Split(bytes.TrimSuffix(all, []byte("\n")), []byte("\n")) {
		var r struct {
			ID     int             `json:"id"`
			Return json.RawMessage `json:"return"`
		}
		if err := json.Unmarshal(l, &r); err != nil || r.ID != i || r.Return == nil {
			t.Fatalf("reply %d (%d bytes): %v, id %d", i, len(l), err, r.ID)
		}
	}
	// Two replies queued: a read of any size returns one line.
	if _, err := s.Write(ctx, []byte(`{"execute":"query-name","id":"a"} {"execute":"query-name","id":"b"}`)); err != nil {
		t.Fatalf("command after the reader caught up: %v", err)
	}
	for _, id := range []string{"a", "b"} {
		n, err := s.Read(ctx, buf)
		if want := `{"return": {"name": "m"}, "id": "` + id + `"}` + "\n"; err != nil || string(buf[:n]) != want {
			t.Errorf("read: %q, %v; want %q", buf[:n], err, want)
		}
	}
}

// TestConsolePersistBounded: the console file in the log directory stays
// bounded however much the guest prints, and ends with the newest output.
func TestConsolePersistBounded(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	persist := filepath.Join(dir, "g.console")
	c, err := openConsole(consoleSource{Kind: "unix", Path: sock}, persist, false)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	var all bytes.Buffer
	for i := 0; all.Len() < 3*persistLimit; i++ {
		fmt.Fprintf(&all, "line %d\n", i)
	}
	if _, err := peer.Write(all.Bytes()); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	<-c.done
	c.Close()
	data, err := os.ReadFile(persist)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > persistLimit || len(data) < consoleHistory || !bytes.HasSuffix(all.Bytes(), data) {
		t.Errorf("console file of %d bytes after %d printed; want at most %d, the newest", len(data), all.Len(), persistLimit)
	}
}
