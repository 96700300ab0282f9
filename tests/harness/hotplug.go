package harness

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// GuestRun runs a shell command line in the guest's console shell and
// returns what it printed. The output is framed by markers the shell
// computes ($((...))), so the echo of the typed line never matches them,
// and console history from before does not either.
func (m *Mount) GuestRun(name, cmd string, timeout time.Duration) (string, error) {
	n := rand.Intn(1<<30) + 1
	begin, end := fmt.Sprintf("QFSB%d", n+1), fmt.Sprintf("QFSE%d", n+1)
	line := fmt.Sprintf("echo QFSB$((%d+1)); %s; echo QFSE$((%d+1))\n", n, cmd, n)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	rd := exec.CommandContext(ctx, "cat", m.Path(name, "console"))
	var out lockedBuffer
	rd.Stdout = &out
	if err := rd.Start(); err != nil {
		return "", err
	}
	defer func() { cancel(); rd.Wait() }()
	if err := m.Send(line, name, "console"); err != nil {
		return "", fmt.Errorf("console: %w (error: %s)", err, m.ErrorOf(name))
	}
	for {
		s := out.String()
		if i := strings.Index(s, begin+"\r\n"); i >= 0 {
			if j := strings.Index(s[i:], end); j >= 0 {
				return strings.ReplaceAll(s[i+len(begin)+2:i+j], "\r", ""), nil
			}
		} else if i := strings.Index(s, begin+"\n"); i >= 0 {
			if j := strings.Index(s[i:], end); j >= 0 {
				return s[i+len(begin)+1 : i+j], nil
			}
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("%q: no output framed by %s/%s within %v", cmd, begin, end, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitGuest runs cmd in the guest until ok accepts its output, and
// returns the output; failure ends the test.
func (m *Mount) WaitGuest(name, cmd string, timeout time.Duration, ok func(string) bool) string {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		out, err := m.GuestRun(name, cmd, 30*time.Second)
		if err == nil && ok(out) {
			return out
		}
		if err != nil {
			last = err.Error()
		} else {
			last = out
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: %q not as wanted after %v; last: %s", name, cmd, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
