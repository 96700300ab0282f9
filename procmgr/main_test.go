package procmgr

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// spawnerEnv makes the test binary a stand-in daemon: it starts the Spec
// in the variable (JSON), prints "PID STARTTIME" and waits to be killed.
const spawnerEnv = "PROCMGR_TEST_SPAWNER"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == HelperArg {
		RunHelper()
	}
	if js := os.Getenv(spawnerEnv); js != "" {
		runSpawner(js)
	}
	if os.Getenv(fdProbeEnv) != "" {
		runFdProbe()
	}
	if err := Init(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// runSpawner is the stand-in daemon (see spawnerEnv). Fd 3, when present,
// is handed to the process as its fd 3.
func runSpawner(js string) {
	var spec Spec
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	if f := os.NewFile(3, "extra"); f != nil {
		if _, err := f.Stat(); err == nil {
			spec.ExtraFiles = []*os.File{f}
		}
	}
	p, err := Start(context.Background(), spec)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println(p.Pid, p.StartTime)
	select {}
}

// fdProbeEnv makes the test binary print the fds it inherited (see fdProbe).
const fdProbeEnv = "PROCMGR_TEST_FDPROBE"

func runFdProbe() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		os.Exit(1)
	}
	out := map[int]string{}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue // closed meanwhile (the directory), or the runtime's
		}
		out[fd], _ = os.Readlink("/proc/self/fd/" + e.Name())
	}
	data, _ := json.Marshal(out)
	os.Stdout.Write(data)
	os.Exit(0)
}

const qemuBin = "/usr/bin/qemu-system-x86_64"

// testTimeout bounds waits; generous for a loaded machine.
const testTimeout = 60 * time.Second

// startT starts spec and ends the process at cleanup, by its pidfd.
func startT(t testing.TB, spec Spec) *Process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if spec.Name == "" {
		spec.Name = "t"
	}
	p, err := Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.Kill()
		<-p.Done()
	})
	return p
}

func waitDone(t testing.TB, p *Process) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(testTimeout):
		t.Fatalf("%s did not end within %v", p, testTimeout)
	}
}

// qmpListener listens on a unix socket in dir and returns the socket path
// and the listening fd for QEMU (-chardev socket,fd=3,server=on): clients
// can connect at once, QEMU accepts when it is ready.
func qmpListener(t testing.TB, dir string) (string, *os.File) {
	t.Helper()
	sock := filepath.Join(dir, "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	f, err := ul.File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return sock, f
}

// qemuSpec is a paused QEMU without a machine, QMP on the fd 3 listener.
func qemuSpec(t testing.TB, extra ...string) (Spec, string) {
	t.Helper()
	dir := t.TempDir()
	sock, lf := qmpListener(t, dir)
	args := []string{"-machine", "none", "-S", "-nodefaults", "-display", "none",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off", "-mon", "chardev=qmp,mode=control"}
	return Spec{
		Name:       "qemu",
		Path:       qemuBin,
		Args:       append(args, extra...),
		Env:        []string{"PATH=/usr/bin:/bin"},
		Dir:        "/",
		LogPath:    filepath.Join(dir, "qemu.log"),
		ExtraFiles: []*os.File{lf},
	}, sock
}

// qmpClient is a minimal QMP client: one command at a time.
type qmpClient struct {
	conn net.Conn
	dec  *json.Decoder
}

func dialQMP(t testing.TB, sock string) *qmpClient {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(testTimeout))
	q := &qmpClient{conn: conn, dec: json.NewDecoder(conn)}
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	if err := q.dec.Decode(&greeting); err != nil || greeting.QMP == nil {
		t.Fatalf("QMP greeting: %v", err)
	}
	q.run(t, "qmp_capabilities", nil)
	return q
}

// run executes cmd and decodes its return value into ret (if not nil).
func (q *qmpClient) run(t testing.TB, cmd string, ret any) {
	t.Helper()
	if _, err := fmt.Fprintf(q.conn, `{"execute":%q}`+"\n", cmd); err != nil {
		t.Fatalf("qmp %s: %v", cmd, err)
	}
	for {
		var m struct {
			Event  string          `json:"event"`
			Return json.RawMessage `json:"return"`
			Error  json.RawMessage `json:"error"`
		}
		if err := q.dec.Decode(&m); err != nil {
			t.Fatalf("qmp %s: %v", cmd, err)
		}
		switch {
		case m.Event != "":
			continue
		case m.Error != nil:
			t.Fatalf("qmp %s: %s", cmd, m.Error)
		}
		if ret != nil {
			if err := json.Unmarshal(m.Return, ret); err != nil {
				t.Fatalf("qmp %s: %v", cmd, err)
			}
		}
		return
	}
}

// statusField returns a field of /proc/PID/status ("CapEff", "Uid", ...).
func statusField(t testing.TB, pid int, name string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == name {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", name, pid)
	return ""
}

// children lists the pids whose parent is the test process, except the
// spare exec helper (once any pending refill has finished).
func children(t testing.TB) map[int]bool {
	t.Helper()
	flushSpares()
	spares.mu.Lock()
	spare := 0
	if spares.spare != nil {
		spare = spares.spare.pid
	}
	spares.mu.Unlock()
	out := map[int]bool{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil && st.PPid == os.Getpid() && pid != spare {
			out[pid] = true
		}
	}
	return out
}

// startShell starts "sh -c script" with os/exec in a session of its own,
// reads the first line it prints, and kills it at cleanup.
func startShell(t testing.TB, script string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("sh -c %q: %v", script, err)
	}
	return cmd, strings.TrimSpace(line)
}
