package harness

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// QMP opens a session on NAME/monitor/qmp, writes cmd (one JSON object)
// and returns the first reply line; the read gives up after timeout.
func (m *Mount) QMP(name, cmd string, timeout time.Duration) (string, error) {
	return m.session(name, cmd, timeout, "monitor", "qmp")
}

// session opens a session file of NAME (monitor/qmp, agent), writes cmd
// and returns the first reply line; the read gives up after timeout. A
// failed open or write returns its error with the domain's error text.
func (m *Mount) session(name, cmd string, timeout time.Duration, file ...string) (string, error) {
	f, err := os.OpenFile(m.Path(append([]string{name}, file...)...), os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w (error: %s)", strings.Join(file, "/"), err, m.ErrorOf(name))
	}
	defer f.Close()
	if _, err := f.WriteString(cmd + "\n"); err != nil {
		return "", fmt.Errorf("write %s: %w (error: %s)", cmd, err, m.ErrorOf(name))
	}
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		l, err := bufio.NewReader(f).ReadString('\n')
		ch <- result{strings.TrimSpace(l), err}
	}()
	select {
	case r := <-ch:
		return r.line, r.err
	case <-time.After(timeout):
		return "", fmt.Errorf("no reply to %s within %v", cmd, timeout)
	}
}

// Send writes data to a stream file of the tree (console, monitor/hmp)
// in one write(2), without truncating it.
func (m *Mount) Send(data string, elem ...string) error {
	f, err := os.OpenFile(m.Path(elem...), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(data)
	cerr := f.Close()
	if werr != nil {
		return werr
	}
	return cerr
}

// Alive reports whether pid is a live (not zombie) process.
func Alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// RuntimeFiles lists what NAME leaves in the run and log directories
// besides its log and console history: pid file, QMP socket, status file,
// private directory, swtpm's socket and pid file.
func (m *Mount) RuntimeFiles(name string) []string {
	var found []string
	for _, p := range []string{
		filepath.Join(m.LogDir, name+".pid"),
		filepath.Join(m.RunDir, name+".qmp"),
		filepath.Join(m.RunDir, name+".status"),
		filepath.Join(m.RunDir, name+".d"),
		m.SwtpmSocket(name), filepath.Join(m.swtpmDir("run"), name+"-swtpm.pid"),
	} {
		if _, err := os.Lstat(p); err == nil {
			found = append(found, p)
		}
	}
	return found
}

// WaitPid waits until NAME/pid shows a pid other than old (0: any) and
// returns it.
func (m *Mount) WaitPid(name string, old int, timeout time.Duration) int {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if p := m.Pid(name); p != 0 && p != old {
			m.TrackPid(p)
			return p
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: no new pid (old %d) after %v; state %q, error: %s", name, old, timeout, m.State(name), m.ErrorOf(name))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// DaemonLog returns the daemon's own log (messages about the mount and
// requests that have no domain to record them in).
func (m *Mount) DaemonLog() string {
	data, _ := os.ReadFile(m.Log)
	return string(data)
}

// WaitStreamCount is WaitStream for the n-th line that contains want
// (a guest's ready line after its n-th boot, say).
func (m *Mount) WaitStreamCount(want string, n int, timeout time.Duration, elem ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "grep", "-a", "-m", strconv.Itoa(n), "-F", "--", want, m.Path(elem...))
	cmd.Stdout = &out
	err := cmd.Run()
	if got := strings.Count(out.String(), want); err != nil || got < n {
		return out.String(), fmt.Errorf("%q seen %d times, not %d, in %s within %v: %v", want, got, n, strings.Join(elem, "/"), timeout, err)
	}
	return out.String(), nil
}

// WaitConsoleCount waits for the n-th line with want on NAME/console;
// failure ends the test.
func (m *Mount) WaitConsoleCount(name, want string, n int, timeout time.Duration) {
	m.t.Helper()
	if _, err := m.WaitStreamCount(want, n, timeout, name, "console"); err != nil {
		m.t.Fatalf("%s: %v\nlog:\n%s", name, err, m.QEMULog(name))
	}
}

// Follower reads a stream file in the background (a `cat` of it), from
// the moment it was opened.
type Follower struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
}

// Follow starts reading the stream file elem; stop it with Stop.
func (m *Mount) Follow(elem ...string) *Follower {
	m.t.Helper()
	f := &Follower{cmd: exec.Command("cat", m.Path(elem...)), done: make(chan struct{})}
	f.cmd.Stdout = f
	if err := f.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	go func() { f.cmd.Wait(); close(f.done) }()
	m.t.Cleanup(func() { f.Stop() })
	return f
}

// Write collects what cat prints.
func (f *Follower) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.buf.Write(p)
}

// String returns what was read so far.
func (f *Follower) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.buf.String()
}

// Wait waits until want was read, or the stream ended, or timeout.
func (f *Follower) Wait(want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !strings.Contains(f.String(), want) {
		select {
		case <-f.done:
			return fmt.Errorf("stream ended without %q: %q", want, f.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%q not read within %v: %q", want, timeout, f.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// Stop kills the reader (by its pid) and returns what it read.
func (f *Follower) Stop() string {
	select {
	case <-f.done:
	default:
		f.cmd.Process.Kill()
		<-f.done
	}
	return f.String()
}

// QMPSocket runs one QMP command on a QEMU's own monitor socket, as a
// client of QEMU (possible only while no daemon is connected), and returns
// the reply line.
func QMPSocket(path, cmd string, timeout time.Duration) (string, error) {
	conn, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	rd := bufio.NewReader(conn)
	if _, err := rd.ReadString('\n'); err != nil { // greeting
		return "", fmt.Errorf("QMP greeting: %w", err)
	}
	for _, c := range []string{`{"execute":"qmp_capabilities"}`, cmd} {
		if _, err := conn.Write([]byte(c + "\n")); err != nil {
			return "", err
		}
		for {
			l, err := rd.ReadString('\n')
			if err != nil {
				return "", fmt.Errorf("QMP %s: %w", c, err)
			}
			if !strings.Contains(l, `"event"`) {
				if c == cmd {
					return strings.TrimSpace(l), nil
				}
				break
			}
		}
	}
	return "", nil
}

// BootTimeout bounds a test guest's boot: TCG on a loaded 2-core machine.
const BootTimeout = 90 * time.Second

// Boot defines NAME with xml (a harness.GuestXML), starts it and waits for
// the test guest's ready line on its console.
func (m *Mount) Boot(name, xml string) {
	m.t.Helper()
	m.Define(name, xml)
	m.MustCtl(name, "start")
	m.WaitConsole(name, Guest(m.t).ReadyLine, BootTimeout)
}
