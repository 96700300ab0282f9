package procmgr

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// reaped collects what the orphan reaper reaps during a test.
func reaped(t *testing.T) <-chan int {
	ch := make(chan int, 1024)
	f := func(pid int, _ unix.WaitStatus) {
		select {
		case ch <- pid:
		default:
		}
	}
	onReap.Store(&f)
	t.Cleanup(func() { onReap.Store(nil) })
	return ch
}

// orphan starts, through procmgr, a shell that leaves a sleep behind and
// exits; the sleep is adopted by the test process (a subreaper) and killed
// at cleanup.
func orphan(t *testing.T) int {
	t.Helper()
	pid, err := makeOrphan(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Our child, unreaped: safe to signal by pid.
	t.Cleanup(func() { unix.Kill(pid, unix.SIGKILL) })
	return pid
}

// makeOrphan is orphan without a *testing.T, for goroutines.
func makeOrphan(dir string) (int, error) {
	f, err := os.CreateTemp(dir, "orphan-*.log")
	if err != nil {
		return 0, err
	}
	f.Close()
	log := f.Name()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	p, err := Start(ctx, Spec{Path: "/bin/sh", Args: []string{"-c", "sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"}, LogPath: log})
	if err != nil {
		return 0, err
	}
	select {
	case <-p.Done():
	case <-time.After(testTimeout):
		p.Kill()
		return 0, fmt.Errorf("shell did not exit")
	}
	data, err := os.ReadFile(log)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("orphan pid %q: %w", data, err)
	}
	st, err := readStat(pid)
	if err != nil || st.PPid != os.Getpid() {
		unix.Kill(pid, unix.SIGKILL)
		return 0, fmt.Errorf("orphan %d: want it adopted by us (%d), parent %d (%v)", pid, os.Getpid(), st.PPid, err)
	}
	return pid, nil
}

func TestReapAdoptedOrphan(t *testing.T) {
	ch := reaped(t)
	pid := orphan(t)
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(testTimeout)
	for {
		select {
		case got := <-ch:
			if got != pid {
				continue
			}
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("/proc/%d after reaping: %v", pid, err)
			}
			return
		case <-deadline:
			t.Fatalf("orphan %d not reaped within %v", pid, testTimeout)
		}
	}
}

// TestReaperLeavesOSExecAlone: while the orphan reaper is busy, os/exec
// children (in our session, or leading their own) keep their exit status.
func TestReaperLeavesOSExecAlone(t *testing.T) {
	ch := reaped(t)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 1)
	dir := t.TempDir()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			// Each orphan's death sends SIGCHLD and runs a reaper scan.
			pid, err := makeOrphan(dir)
			if err != nil {
				errs <- err
				return
			}
			unix.Kill(pid, unix.SIGKILL)
		}
	}()
	for i := 0; i < 40; i++ {
		cmd := exec.Command("/bin/sh", "-c", "sleep 0.01; exit 7")
		if i%2 == 1 {
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		}
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Errorf("run %d: want exit status 7, got %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if len(ch) == 0 {
		t.Error("the reaper reaped no orphan meanwhile: the test proved nothing")
	}
	t.Logf("%d orphans reaped meanwhile", len(ch))
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want procStat
		err  bool
	}{
		{"plain", "123 (qemu-system-x86) S 1 123 123 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 3 0 98765 0 0",
			procStat{State: 'S', PPid: 1, Session: 123, StartTime: 98765}, false},
		{"parens and spaces in comm", "7 (a) b (c)) Z 5 7 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0",
			procStat{State: 'Z', PPid: 5, Session: 9, StartTime: 42}, false},
		{"truncated", "7 (x) S 1 2 3", procStat{}, true},
		{"no comm", "garbage", procStat{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.in))
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("parseStat(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.err)
			}
		})
	}
	// And the real thing: our own start time is stable and non-zero.
	a, err := readStat(os.Getpid())
	if err != nil || a.StartTime == 0 || a.PPid != os.Getppid() {
		t.Errorf("own stat: %+v, %v", a, err)
	}
}

func TestParseMountInfo(t *testing.T) {
	in := `23 26 0:6 / /dev rw,relatime shared:2 - devtmpfs devtmpfs rw,size=123k
25 23 0:23 / /dev/pts rw,relatime - devpts devpts rw,mode=600
40 26 0:50 / /mnt/my\040dir rw,nosuid,nodev,relatime - fuse.qemufs qemufs rw,user_id=0
41 26 0:51 / /mnt/other rw - fuse.sshfs qemufs rw
42 26 0:52 / /mnt/x rw - fuse host:/x rw
`
	got, err := parseMountInfo([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []mountEntry{
		{"/dev", "devtmpfs", "devtmpfs"},
		{"/dev/pts", "devpts", "devpts"},
		{"/mnt/my dir", "fuse.qemufs", "qemufs"},
		{"/mnt/other", "fuse.sshfs", "qemufs"},
		{"/mnt/x", "fuse", "host:/x"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	qemufs := []bool{false, false, true, true, false}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d:\n- want: %+v\n-  got: %+v", i, want[i], got[i])
		}
		if isQemufsMount(got[i]) != qemufs[i] {
			t.Errorf("isQemufsMount(%+v) = %v", got[i], !qemufs[i])
		}
	}
	if _, err := parseMountInfo([]byte("bad line\n")); err == nil {
		t.Error("malformed line accepted")
	}
}

func TestSteps(t *testing.T) {
	var ran []string
	mk := func(name string, err error) step[*[]string] {
		return step[*[]string]{Name: name, Fn: func(r *[]string) error { *r = append(*r, name); return err }}
	}
	boom := errors.New("boom")
	base := steps[*[]string]{mk("a", nil)}
	l := base.with(true, mk("b", boom)).with(false, mk("skipped", nil)).with(true, mk("c", nil))
	// with has value semantics: base is unchanged, and lists built from
	// it do not share a backing array.
	other := base.with(true, mk("x", nil))
	if base.String() != "[a]" || l.String() != "[a b c]" || other.String() != "[a x]" {
		t.Fatalf("lists: base %v, l %v, other %v", base, l, other)
	}
	var logged []string
	err := l.run(&ran, func(format string, args ...any) { logged = append(logged, format) })
	var se *stepError
	if !errors.As(err, &se) || se.Step != "b" || !errors.Is(err, boom) || err.Error() != "boom" {
		t.Errorf("error: %#v", err)
	}
	if strings.Join(ran, ",") != "a,b" {
		t.Errorf("ran %v, want a,b (stop at the first error)", ran)
	}
	if len(logged) != 2 {
		t.Errorf("logged %d lines, want 2", len(logged))
	}
}
