package procmgr

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

// Both benchmarks report the median as well as the mean: on a loaded
// machine a few slow iterations distort the mean.

// timer collects iteration times and reports their median.
type timer struct {
	b    *testing.B
	t0   time.Time
	runs []time.Duration
}

func (t *timer) start() { t.b.StartTimer(); t.t0 = time.Now() }
func (t *timer) stop()  { t.runs = append(t.runs, time.Since(t.t0)); t.b.StopTimer() }
func (t *timer) report() {
	slices.Sort(t.runs)
	if len(t.runs) > 0 {
		t.b.ReportMetric(float64(t.runs[len(t.runs)/2].Nanoseconds()), "median-ns")
	}
}

// settle waits until the next spare helper is ready, as it is between two
// real starts (guests are not started every few milliseconds).
func settle() { flushSpares() }

// BenchmarkStart measures Start until the target runs (exec done), on the
// direct path and through the exec helper.
func BenchmarkStart(b *testing.B) {
	cg, err := os.MkdirTemp("/sys/fs/cgroup/pids", "qemufs-procmgr-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(cg)
	cases := []struct {
		name string
		set  func(*Spec)
	}{
		{"direct", func(*Spec) {}},
		{"helper-bare", nil},
		{"helper-cgroup", func(s *Spec) { s.CgroupProcs = []string{cg + "/cgroup.procs"} }},
		{"helper-mountns", func(s *Spec) {
			s.MountNS = &MountNamespace{Devices: []string{"/dev/null", "/dev/zero", "/dev/urandom"}}
		}},
		{"helper-full", func(s *Spec) {
			s.CgroupProcs = []string{cg + "/cgroup.procs"}
			s.MountNS = &MountNamespace{Devices: []string{"/dev/null", "/dev/zero", "/dev/urandom"}}
			s.Credential = &Credential{UID: 65534, GID: 65534}
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			spec := Spec{Name: "bench", Path: "/bin/sleep", Args: []string{"1000"}, Dir: "/"}
			if c.set == nil {
				forceHelper = true
				defer func() { forceHelper = false }()
			} else {
				c.set(&spec)
			}
			tm := &timer{b: b}
			b.StopTimer()
			for range b.N {
				settle()
				tm.start()
				p, err := Start(context.Background(), spec)
				if err != nil {
					b.Fatal(err)
				}
				tm.stop()
				p.Kill()
				<-p.Done()
			}
			tm.report()
		})
	}
}

// BenchmarkQMPReady measures spawn until QEMU's QMP greeting: bare
// os/exec, and procmgr's direct and helper paths.
func BenchmarkQMPReady(b *testing.B) {
	cg, err := os.MkdirTemp("/sys/fs/cgroup/pids", "qemufs-procmgr-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(cg)
	greet := func(b *testing.B, sock string) {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(testTimeout))
		var g map[string]any
		if err := json.NewDecoder(conn).Decode(&g); err != nil {
			b.Fatal(err)
		}
	}
	cases := []struct {
		name string
		set  func(*Spec)
	}{
		{"bare-os-exec", nil},
		{"direct", func(*Spec) {}},
		{"helper-full", func(s *Spec) {
			s.CgroupProcs = []string{cg + "/cgroup.procs"}
			s.MountNS = &MountNamespace{Devices: []string{"/dev/null", "/dev/zero", "/dev/urandom"}}
			s.Credential = &Credential{UID: 65534, GID: 65534}
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			tm := &timer{b: b}
			b.StopTimer()
			for range b.N {
				spec, sock := qemuSpec(b)
				settle()
				if c.set == nil {
					tm.start()
					cmd := exec.Command(spec.Path, spec.Args...)
					cmd.ExtraFiles = spec.ExtraFiles
					if err := cmd.Start(); err != nil {
						b.Fatal(err)
					}
					greet(b, sock)
					tm.stop()
					cmd.Process.Kill()
					cmd.Wait()
					continue
				}
				c.set(&spec)
				tm.start()
				p, err := Start(context.Background(), spec)
				if err != nil {
					b.Fatal(err)
				}
				greet(b, sock)
				tm.stop()
				p.Kill()
				<-p.Done()
			}
			tm.report()
		})
	}
}
