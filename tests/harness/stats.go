package harness

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Stats reads NAME/stats into a map of its key=value lines; a malformed or
// repeated line ends the test.
func (m *Mount) Stats(name string) map[string]string {
	m.t.Helper()
	data, err := os.ReadFile(m.Path(name, "stats"))
	if err != nil {
		m.t.Fatalf("read %s/stats: %v (error: %s)", name, err, m.ErrorOf(name))
	}
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			m.t.Fatalf("%s/stats: line %q is not key=value:\n%s", name, l, data)
		}
		if _, dup := out[k]; dup {
			m.t.Fatalf("%s/stats: %s twice:\n%s", name, k, data)
		}
		out[k] = v
	}
	return out
}

// StatUint returns a numeric stats value; a missing or non-numeric one
// ends the test.
func (m *Mount) StatUint(stats map[string]string, key string) uint64 {
	m.t.Helper()
	v, ok := stats[key]
	if !ok {
		m.t.Fatalf("stats lack %s: %v", key, stats)
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		m.t.Fatalf("stats %s=%q is not a number", key, v)
	}
	return n
}

// WaitStat reads NAME/stats until ok accepts it or timeout passes, and
// returns the last stats read.
func (m *Mount) WaitStat(name string, timeout time.Duration, ok func(map[string]string) bool) (map[string]string, error) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := m.Stats(name)
		if ok(s) {
			return s, nil
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("stats of %s not as wanted within %v: %v", name, timeout, s)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Shell writes a shell command line to NAME's console and waits until
// want appears in the console output written after it; it returns that
// output. Make want something the command prints but its echo does not
// contain (echo X-$((1+1)) prints X-2).
func (m *Mount) Shell(name, cmd, want string, timeout time.Duration) (string, error) {
	m.t.Helper()
	f := m.Follow(name, "console")
	defer f.Stop()
	// The follower starts with the console's history, maybe not all read
	// yet: want must be unique to this command's output.
	start := len(f.String())
	if err := m.Send(cmd+"\n", name, "console"); err != nil {
		return "", err
	}
	deadline := time.Now().Add(timeout)
	for {
		out := f.String()[start:]
		if strings.Contains(out, want) {
			return out, nil
		}
		if time.Now().After(deadline) {
			return out, fmt.Errorf("%q not printed within %v after %q: %q", want, timeout, cmd, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
