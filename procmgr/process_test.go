package procmgr

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// paths runs a test on both spawn paths: direct exec, and the exec helper
// (forced with an empty mount namespace, which needs no devices).
var paths = []struct {
	name string
	set  func(*Spec)
}{
	{"direct", func(*Spec) {}},
	{"helper", func(s *Spec) { s.MountNS = &MountNamespace{} }},
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		name   string
		script string
		kill   bool
		want   ExitStatus
		str    string
	}{
		{"exit 0", "exit 0", false, ExitStatus{Exited: true, Known: true, Code: 0}, "exit status 0"},
		{"exit 3", "exit 3", false, ExitStatus{Exited: true, Known: true, Code: 3}, "exit status 3"},
		{"own SIGTERM", "kill -TERM $$", false, ExitStatus{Exited: true, Known: true, Code: -1, Signal: syscall.SIGTERM}, "killed by signal 15 (terminated)"},
		{"Kill", "exec sleep 1000", true, ExitStatus{Exited: true, Known: true, Code: -1, Signal: syscall.SIGKILL}, "killed by signal 9 (killed)"},
	}
	for _, path := range paths {
		for _, tc := range tests {
			t.Run(path.name+"/"+tc.name, func(t *testing.T) {
				spec := Spec{Path: "/bin/sh", Args: []string{"-c", tc.script}, Env: []string{"PATH=/bin:/usr/bin"}}
				path.set(&spec)
				p := startT(t, spec)
				if tc.kill {
					if err := p.Kill(); err != nil {
						t.Fatal(err)
					}
				}
				waitDone(t, p)
				if got := p.Exit(); got != tc.want || got.String() != tc.str {
					t.Errorf("exit:\n- want: %+v %q\n-  got: %+v %q", tc.want, tc.str, got, got.String())
				}
				if err := p.Signal(syscall.SIGTERM); !errors.Is(err, ErrFinished) {
					t.Errorf("Signal after exit: want ErrFinished, got %v", err)
				}
			})
		}
	}
}

func TestRunningExit(t *testing.T) {
	p := startT(t, Spec{Path: "/bin/sleep", Args: []string{"1000"}})
	if got := p.Exit(); got.Exited || got.String() != "running" {
		t.Errorf("Exit of a running process: %+v %q", got, got)
	}
	select {
	case <-p.Done():
		t.Fatal("Done closed while running")
	default:
	}
}

// TestProcessSetup checks what every started process gets: its own session,
// stdin on /dev/null, output appended to the log, the environment and the
// working directory, the pid file.
func TestProcessSetup(t *testing.T) {
	for _, path := range paths {
		t.Run(path.name, func(t *testing.T) {
			dir := t.TempDir()
			log := filepath.Join(dir, "out.log")
			if err := os.WriteFile(log, []byte("earlier\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			spec := Spec{
				Path: "/bin/sh",
				Args: []string{"-c", `echo "env=$FOO"; pwd; readlink /proc/self/fd/0; echo err >&2; read x; echo "read=$x"`},
				Env:  []string{"FOO=bar", "PATH=/bin:/usr/bin"},
				Dir:  dir, LogPath: log,
				PidPath: filepath.Join(dir, "sub.pid"),
			}
			path.set(&spec)
			p := startT(t, spec)
			st, err := readStat(p.Pid)
			if err == nil && st.Session != p.Pid {
				t.Errorf("session: want %d (its own), got %d", p.Pid, st.Session)
			}
			waitDone(t, p)
			if e := p.Exit(); e.Code != 0 {
				t.Errorf("exit: %v", e)
			}
			out, err := os.ReadFile(log)
			if err != nil {
				t.Fatal(err)
			}
			want := "earlier\nenv=bar\n" + dir + "\n/dev/null\nerr\nread=\n"
			if string(out) != want {
				t.Errorf("log:\n- want: %q\n-  got: %q", want, out)
			}
			pid, err := os.ReadFile(spec.PidPath)
			if err != nil || string(pid) != fmt.Sprintf("%d\n", p.Pid) {
				t.Errorf("pid file: %q, %v", pid, err)
			}
			if err := p.Cleanup(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(spec.PidPath); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pid file after Cleanup: %v", err)
			}
			if matches, _ := filepath.Glob(filepath.Join(dir, ".sub.pid.*")); len(matches) != 0 {
				t.Errorf("temporary pid files left: %v", matches)
			}
		})
	}
}

// TestCleanupKeepsForeignPidFile: a pid file rewritten by a newer process
// is not removed by the older one.
func TestCleanupKeepsForeignPidFile(t *testing.T) {
	dir := t.TempDir()
	pidPath := filepath.Join(dir, "g.pid")
	p := startT(t, Spec{Path: "/bin/true", PidPath: pidPath})
	waitDone(t, p)
	if err := WritePidFile(pidPath, p.Pid+1); err != nil {
		t.Fatal(err)
	}
	if err := p.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pidPath); err != nil {
		t.Errorf("foreign pid file removed: %v", err)
	}
}

// TestQEMU runs a real paused QEMU on both paths: QMP works through the
// inherited listener, "quit" ends it with status 0, and Done follows.
func TestQEMU(t *testing.T) {
	for _, path := range paths {
		t.Run(path.name, func(t *testing.T) {
			spec, sock := qemuSpec(t)
			path.set(&spec)
			p := startT(t, spec)
			q := dialQMP(t, sock)
			var status struct {
				Status string `json:"status"`
			}
			q.run(t, "query-status", &status)
			if status.Status != "prelaunch" {
				t.Errorf("status: want prelaunch, got %q", status.Status)
			}
			q.run(t, "quit", nil)
			waitDone(t, p)
			if e := p.Exit(); e != (ExitStatus{Exited: true, Known: true}) {
				t.Errorf("exit after quit: %v", e)
			}
		})
	}
}

// TestDoneLatency shows Done is event-driven: it follows SIGKILL within
// milliseconds (the assertion is loose; the number is logged).
func TestDoneLatency(t *testing.T) {
	var worst time.Duration
	for i := 0; i < 20; i++ {
		p := startT(t, Spec{Path: "/bin/sleep", Args: []string{"1000"}})
		start := time.Now()
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		waitDone(t, p)
		if d := time.Since(start); d > worst {
			worst = d
		}
	}
	t.Logf("worst Kill -> Done latency over 20 runs: %v", worst)
	if worst > 2*time.Second {
		t.Errorf("Done took %v after SIGKILL: not event-driven?", worst)
	}
}

func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("\x00\x01not a program"), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		spec Spec
		want string
		is   error
	}{
		{"relative path", context.Background(), Spec{Name: "g", Path: "qemu"}, `start g: emulator path "qemu" is not absolute`, nil},
		{"missing emulator", context.Background(), Spec{Name: "g", Path: "/nonexistent/qemu"}, "start g: emulator: stat /nonexistent/qemu: no such file or directory", os.ErrNotExist},
		{"not executable", context.Background(), Spec{Name: "g", Path: plain}, "start g: emulator " + plain + " is not an executable file", nil},
		{"exec format", context.Background(), Spec{Name: "g", Path: garbage}, "start g: exec " + garbage + ": exec format error", syscall.ENOEXEC},
		{"helper exec format", context.Background(), Spec{Name: "g", Path: garbage, MountNS: &MountNamespace{}}, "start g: exec " + garbage + ": exec format error", syscall.ENOEXEC},
		{"log dir missing", context.Background(), Spec{Name: "g", Path: "/bin/true", LogPath: "/nonexistent/g.log"}, "start g: open log: open /nonexistent/g.log: no such file or directory", syscall.ENOENT},
		{"relative dir", context.Background(), Spec{Name: "g", Path: "/bin/true", Dir: "tmp"}, `start g: working directory "tmp" is not absolute`, nil},
		{"cancelled", cancelled, Spec{Name: "g", Path: "/bin/true"}, "start g: context canceled", context.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := children(t)
			p, err := Start(tc.ctx, tc.spec)
			if err == nil {
				p.Kill()
				t.Fatalf("Start succeeded, want %q", tc.want)
			}
			if err.Error() != tc.want {
				t.Errorf("error:\n- want: %q\n-  got: %q", tc.want, err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tc.is)
			}
			for pid := range children(t) {
				if !before[pid] {
					t.Errorf("process %d left behind", pid)
				}
			}
		})
	}
}

func TestAttachGone(t *testing.T) {
	live := startT(t, Spec{Path: "/bin/sleep", Args: []string{"1000"}})
	dead := startT(t, Spec{Path: "/bin/true"})
	waitDone(t, dead)
	tests := []struct {
		name      string
		pid       int
		startTime uint64
	}{
		{"exited", dead.Pid, dead.StartTime},
		{"other start time", live.Pid, live.StartTime + 1},
		{"no pid", 0, 0},
		{"negative pid", -1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A wrongly attached Process would be live's: live's cleanup ends it.
			if _, err := Attach(tc.pid, tc.startTime); !errors.Is(err, ErrGone) {
				t.Fatalf("Attach(%d, %d): want ErrGone, got %v", tc.pid, tc.startTime, err)
			}
		})
	}
}

// TestAttachNotChild re-attaches to a QEMU that is not our child (its
// parent is a sleep that never reaps it) and sees Done when it is killed,
// while it is still an unreaped zombie.
func TestAttachNotChild(t *testing.T) {
	dir := t.TempDir()
	script := fmt.Sprintf(`%s -machine none -S -nodefaults -display none -qmp unix:%s/q.sock,server=on,wait=off >/dev/null 2>&1 & echo $!; exec sleep 1000`, qemuBin, dir)
	_, line := startShell(t, script)
	pid, err := strconv.Atoi(line)
	if err != nil {
		t.Fatalf("pid %q: %v", line, err)
	}
	st, err := readStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if st.PPid == os.Getpid() {
		t.Fatalf("QEMU %d is our child; the test needs a foreign process", pid)
	}
	p, err := Attach(pid, st.StartTime)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill() })
	select {
	case <-p.Done():
		t.Fatal("Done closed for a running process")
	default:
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	waitDone(t, p)
	if e := p.Exit(); e.Known || !e.Exited {
		t.Errorf("exit of a foreign process: %+v", e)
	}
	// Its parent (sleep) does not reap it: still a zombie, and Attach to a
	// zombie is ErrGone.
	if st, err := readStat(pid); err != nil || st.State != 'Z' {
		t.Logf("QEMU state after kill: %c, %v (expected a zombie)", st.State, err)
	}
	if _, err := Attach(pid, st.StartTime); !errors.Is(err, ErrGone) {
		t.Errorf("Attach to a zombie: want ErrGone, got %v", err)
	}
}

// TestSurvivesDaemon starts QEMU from a stand-in daemon (this test binary
// in spawner mode), SIGKILLs the daemon, and re-attaches: QEMU runs on,
// was adopted by us (the subreaper), answers QMP, and its end is seen.
func TestSurvivesDaemon(t *testing.T) {
	for _, path := range paths {
		t.Run(path.name, func(t *testing.T) {
			spec, sock := qemuSpec(t)
			path.set(&spec)
			js, err := json.Marshal(spec)
			if err != nil {
				t.Fatal(err)
			}
			daemon := exec.Command(os.Args[0], "-test.run=^$")
			daemon.Env = append(os.Environ(), spawnerEnv+"="+string(js))
			daemon.ExtraFiles = spec.ExtraFiles
			daemon.Stderr = os.Stderr
			out, err := daemon.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := daemon.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				daemon.Process.Kill()
				daemon.Wait()
			})
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil {
				t.Fatalf("stand-in daemon: %v", err)
			}
			var pid int
			var startTime uint64
			if _, err := fmt.Sscan(line, &pid, &startTime); err != nil {
				t.Fatalf("stand-in daemon said %q", line)
			}
			if err := daemon.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			daemon.Wait()

			p, err := Attach(pid, startTime)
			if err != nil {
				t.Fatalf("Attach after the daemon died: %v", err)
			}
			t.Cleanup(func() {
				p.Kill()
				<-p.Done()
			})
			if st, err := readStat(pid); err != nil || st.PPid != os.Getpid() {
				t.Errorf("QEMU's parent: want us (subreaper, %d), got %d (%v)", os.Getpid(), st.PPid, err)
			}
			q := dialQMP(t, sock)
			var status struct {
				Status string `json:"status"`
			}
			q.run(t, "query-status", &status)
			if status.Status != "prelaunch" {
				t.Errorf("status: %q", status.Status)
			}
			if err := p.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			waitDone(t, p)
			// Adopted, so ours to reap: QEMU exits 0 on SIGTERM.
			if e := p.Exit(); !e.Known || e.Code != 0 {
				t.Errorf("exit: want a known exit status 0, got %v", e)
			}
			if strings.Contains(statusOrEmpty(pid), "State") {
				t.Errorf("pid %d still exists after Done", pid)
			}
		})
	}
}

func statusOrEmpty(pid int) string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	return string(data)
}

// fdProbe returns a Spec that runs this test binary as a probe: it prints
// (as JSON, to its log) the fds it was started with, recognised as those
// without close-on-exec (the Go runtime's own have it), and exits.
func fdProbe(t *testing.T, extra []*os.File) Spec {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Spec{Path: exe, Env: []string{fdProbeEnv + "=1"}, LogPath: filepath.Join(t.TempDir(), "log"), ExtraFiles: extra}
}

// probedFds runs spec (an fdProbe) to its end and returns what it printed.
func probedFds(t *testing.T, spec Spec) map[int]string {
	t.Helper()
	p := startT(t, spec)
	waitDone(t, p)
	data, err := os.ReadFile(spec.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	var got map[int]string
	if err := json.Unmarshal(data, &got); err != nil || p.Exit().Code != 0 {
		t.Fatalf("probe: %v, %v: %s", p.Exit(), err, data)
	}
	return got
}

// TestFileDescriptors: the process has exactly stdin (/dev/null), the log
// on stdout and stderr, and its ExtraFiles; nothing of the daemon leaks.
func TestFileDescriptors(t *testing.T) {
	for _, path := range paths {
		t.Run(path.name, func(t *testing.T) {
			extra, err := os.Create(filepath.Join(t.TempDir(), "extra"))
			if err != nil {
				t.Fatal(err)
			}
			defer extra.Close()
			spec := fdProbe(t, []*os.File{extra})
			path.set(&spec)
			got := probedFds(t, spec)
			want := map[int]string{0: "/dev/null", 1: spec.LogPath, 2: spec.LogPath, 3: extra.Name()}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("fds:\n- want: %v\n-  got: %v", want, got)
			}
		})
	}
}
