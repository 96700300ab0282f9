package domain

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzDefinition feeds arbitrary documents through Parse, Expand, XML and
// BuildCommand: whatever the input, no panic, and an accepted definition
// expands idempotently.
func FuzzDefinition(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/*.xml")
	for _, p := range files {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	addCorpusSeeds(f, "*.xml", 400)
	f.Add([]byte(withDevices(`<disk type='file'><source file='/a'/><target dev='sdzz'/></disk>`)))
	f.Fuzz(func(t *testing.T, data []byte) {
		defer watchdog(data)()
		d, err := Parse(data)
		if err != nil {
			return
		}
		if err := Expand(d, nil); err != nil {
			return
		}
		once := d.XML()
		d2, err := Parse(once)
		if err != nil {
			t.Fatalf("expanded XML does not parse: %v\n%s", err, once)
		}
		if err := Expand(d2, nil); err != nil {
			t.Fatalf("second Expand: %v", err)
		}
		if string(d2.XML()) != string(once) {
			t.Fatalf("Expand not idempotent:\n%s\n---\n%s", once, d2.XML())
		}
		_, _ = BuildCommand(d, CommandOptions{QMPSocket: "/q", DomainDir: "/d"})
	})
}
