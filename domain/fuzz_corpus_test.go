package domain

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// sharedCorpus finds libvirt's qemuxml2argv cases (shared/corpus/libvirt-qemuxml)
// in the checkout's parent directories; "" when they are not there.
func sharedCorpus() string {
	dir, err := filepath.Abs(".")
	if err != nil {
		return ""
	}
	for {
		p := filepath.Join(dir, "shared", "corpus", "libvirt-qemuxml")
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// addCorpusSeeds adds every file matching pattern in the shared corpus (at
// most max of them) as a seed, so fuzzing starts from libvirt's breadth.
func addCorpusSeeds(f *testing.F, pattern string, max int) {
	dir := sharedCorpus()
	if dir == "" {
		return
	}
	files, _ := filepath.Glob(filepath.Join(dir, pattern))
	if len(files) > max {
		files = files[:max]
	}
	for _, p := range files {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
}

// watchdog crashes the fuzzing process when one input runs for more than
// ten seconds: the fuzzer has no time limit of its own and would stall,
// while a crash makes it record (and minimise) the input as a failure.
// Call it as defer watchdog(data)().
func watchdog(data []byte) (stop func()) {
	t := time.AfterFunc(10*time.Second, func() {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		panic(fmt.Sprintf("input ran for 10 s: %q\n%s", data, buf[:n]))
	})
	return func() { t.Stop() }
}

// FuzzFromNative feeds arbitrary command lines to the importer: never a
// panic, and what it accepts is a definition that survives a round trip
// through its XML and expands.
func FuzzFromNative(f *testing.F) {
	files, _ := filepath.Glob("testdata/argv/*.args")
	for _, p := range files {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	addCorpusSeeds(f, "*.args", 200)
	f.Add([]byte(`qemu-system-x86_64 -m 64 -name 'a b' -drive "file=/x y,if=virtio" -append 'console=ttyS0 \'q\''`))
	f.Add([]byte(`LC_ALL=C FOO=bar /usr/bin/qemu-system-x86_64 -machine q35 -smp 2,sockets=1 -S -nodefaults`))
	f.Fuzz(func(t *testing.T, data []byte) {
		defer watchdog(data)()
		d, err := FromNative(string(data))
		if err != nil {
			return
		}
		xml := d.XML()
		d2, err := Parse(xml)
		if err != nil {
			t.Fatalf("from-native of %q gave XML that does not parse: %v\n%s", data, err, xml)
		}
		if string(d2.XML()) != string(xml) {
			t.Fatalf("from-native XML does not round-trip:\n%s\n---\n%s", xml, d2.XML())
		}
		if err := Expand(d2, nil); err == nil {
			_, _ = BuildCommand(d2, CommandOptions{QMPSocket: "/q", DomainDir: "/d"})
		}
	})
}
