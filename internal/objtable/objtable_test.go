package objtable

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	"github.com/qemufs/qemufs/internal/errkind"
)

type obj struct {
	Base
	active bool
}

func newObj(name string) *obj { return &obj{Base: Base{Name: name}} }

func TestTable(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "autostart"), 0o700)
	var mu sync.Mutex
	tb := New[*obj]("pool", dir, &mu)
	for _, n := range []string{"b", "a", "c"} {
		if err := tb.Add(newObj(n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tb.Add(newObj("a")); !errors.Is(err, errkind.ErrExist) {
		t.Errorf("adding a taken name: %v", err)
	}
	if _, err := tb.Lookup("z"); !errors.Is(err, errkind.ErrNotFound) || err.Error() != `pool "z" does not exist` {
		t.Errorf("lookup of a missing name: %v", err)
	}
	if got := tb.Names(); !reflect.DeepEqual(got, []string{"a", "b", "c"}) {
		t.Errorf("names: %v", got)
	}

	a, _ := tb.Lookup("a")
	if err := tb.SetAutostart(a, true); err != nil || !a.Autostart || !tb.Marked("a") {
		t.Fatalf("autostart on: %v, flag %v, marked %v", err, a.Autostart, tb.Marked("a"))
	}
	c, _ := tb.Lookup("c")
	tb.SetAutostart(c, true)
	c.active = true
	b, _ := tb.Lookup("b")
	tb.Note(b, errors.New("it broke"))
	if got := tb.LastError("b"); got != "it broke" {
		t.Errorf("last error: %q", got)
	}

	// Autostart starts the marked, idle ones only, and notes the outcome.
	var started []string
	tb.Autostart(context.Background(), func(o *obj) bool { return !o.active }, func(_ context.Context, name string) error {
		started = append(started, name)
		return errors.New("no room")
	}, t.Logf)
	if !reflect.DeepEqual(started, []string{"a"}) || tb.LastError("a") != "no room" {
		t.Errorf("autostart started %v; a's error %q", started, tb.LastError("a"))
	}

	if err := tb.SetAutostart(a, false); err != nil || tb.Marked("a") || a.Autostart {
		t.Errorf("autostart off: %v", err)
	}
	if err := tb.SetAutostart(a, false); err != nil {
		t.Errorf("autostart off twice: %v", err)
	}

	os.WriteFile(tb.DefPath("c"), []byte("<pool/>"), 0o600)
	if err := tb.Remove("c"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{tb.DefPath("c"), tb.AutostartPath("c")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after Remove", p)
		}
	}
	if tb.Exists("c") {
		t.Errorf("c still listed after Remove")
	}
}
