// Command bench measures qemufs against its floors: QEMU started by hand,
// libvirt's embedded QEMU driver driven by one long-lived virsh, and a
// QMP socket used directly. It prints a markdown table (min/median/max of
// repeated runs), the targets met or missed, and the machine it ran on.
// `make bench` runs it; see docs/performance.md.
//
//	go run ./bench -qemufs bin/qemufs [-n 20] [-boot 5] [-scale 1000,50] [-quick]
//
// Everything it starts runs under a private directory in /tmp and is
// ended, by pid, when it finishes or is interrupted.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
)

// benchEnv is what every section uses.
type benchEnv struct {
	bin     string // the qemufs binary
	base    string // private directory, removed at the end
	kernel  string // test guest, copied where QEMU's user can read it
	initrd  string
	cmdline string
	ready   string

	n, nBoot, nMount, nFast int
	domains, guests, rounds int
	skipLibvirt             bool
	only                    map[string]bool // sections to run; nil: all

	rep *report
}

func main() {
	var (
		bin      = flag.String("qemufs", "bin/qemufs", "the qemufs binary to measure")
		n        = flag.Int("n", 20, "repetitions of the fast measurements (start, cycles, destroy)")
		nBoot    = flag.Int("boot", 5, "repetitions of the boot measurement")
		nMount   = flag.Int("mounts", 10, "repetitions of the mount-time measurement")
		scale    = flag.String("scale", "1000,50", "DOMAINS,GUESTS: domains defined and guests started at once for the scale test")
		rounds   = flag.Int("rounds", 3, "start/destroy rounds of the scale guests")
		quick    = flag.Bool("quick", false, "a short run: few repetitions, 200 domains, 10 guests")
		noVirsh  = flag.Bool("no-libvirt", false, "skip the libvirt comparison")
		keepBase = flag.Bool("keep", false, "keep the bench's directory (logs) instead of removing it")
		only     = flag.String("only", "", "comma-separated sections to run (start,cycle,boot,fuse,hotplug,mount,scale,save,migrate); all when empty")
	)
	flag.Parse()
	env := &benchEnv{n: *n, nBoot: *nBoot, nMount: *nMount, rounds: *rounds, skipLibvirt: *noVirsh, rep: &report{}}
	if *only != "" {
		env.only = map[string]bool{}
		for _, k := range strings.Split(*only, ",") {
			env.only[strings.TrimSpace(k)] = true
		}
	}
	if _, err := fmt.Sscanf(*scale, "%d,%d", &env.domains, &env.guests); err != nil || env.guests > env.domains {
		fatalf("-scale %q: want DOMAINS,GUESTS with GUESTS <= DOMAINS", *scale)
	}
	if *quick {
		env.n, env.nBoot, env.nMount, env.rounds = 5, 2, 3, 1
		env.domains, env.guests = 200, 10
	}
	env.nFast = max(env.n*50, 200)
	if os.Geteuid() != 0 {
		fatalf("run as root: qemufs's instance runs QEMU as the qemu account, as make test does")
	}
	abs, err := filepath.Abs(*bin)
	if err != nil {
		fatalf("%v", err)
	}
	env.bin = abs
	if _, err := os.Stat(env.bin); err != nil {
		fatalf("-qemufs: %v (make build)", err)
	}

	env.base, err = os.MkdirTemp("/tmp", "qfsbench-")
	if err != nil {
		fatalf("%v", err)
	}
	os.Chmod(env.base, 0o755)
	var virshProc *virsh
	// cleanup runs once; a second caller (Ctrl-C during the run's own
	// cleanup) waits until it is done.
	doCleanup := func() {
		for _, m := range mounts() {
			m.forceDown()
		}
		if virshProc != nil {
			virshProc.close()
		}
		if k := procs.killAll(); k > 0 {
			fmt.Fprintf(os.Stderr, "bench: cleanup killed %d QEMU processes left running\n", k)
		}
		for _, m := range mounts() {
			removeCgroupPartitions(m.root)
		}
		if *keepBase {
			fmt.Fprintf(os.Stderr, "bench: kept %s\n", env.base)
		} else {
			os.RemoveAll(env.base)
		}
	}
	var once sync.Once
	cleanup := func() { once.Do(doCleanup) }
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "bench: %v: cleaning up\n", s)
		cleanup()
		os.Exit(1)
	}()

	err = run(env, &virshProc)
	signal.Stop(sigs)
	cleanup()
	if err != nil {
		fatalf("%v", err)
	}
}

func run(env *benchEnv, vp **virsh) error {
	machine := machineInfo()
	load0 := loadavg()
	progress("building/loading the test guest")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	g, err := guest.Build(ctx, os.Getenv("QEMUFS_GUEST_DIR")) // "": the default cache, as the tests
	cancel()
	if err != nil {
		return err
	}
	img := filepath.Join(env.base, "img")
	os.Mkdir(img, 0o755)
	for _, f := range []struct{ src, dst *string }{{&g.Kernel, &env.kernel}, {&g.Initrd, &env.initrd}} {
		data, err := os.ReadFile(*f.src)
		if err != nil {
			return err
		}
		*f.dst = filepath.Join(img, filepath.Base(*f.src))
		if err := os.WriteFile(*f.dst, data, 0o644); err != nil {
			return err
		}
	}
	env.cmdline, env.ready = g.Cmdline, g.ReadyLine

	m, err := newMount(env.bin, env.base, "m")
	if err != nil {
		return err
	}
	if err := m.mount(); err != nil {
		return err
	}
	if env.only != nil && !env.only["cycle"] {
		// no libvirt needed
	} else if path := virshPath(); path == "" || env.skipLibvirt {
		if path == "" {
			env.rep.note("libvirt comparison skipped: virsh or libvirt's QEMU driver is not installed (make bench installs libvirt-clients and libvirt-daemon-driver-qemu)")
		} else {
			env.rep.note("libvirt comparison skipped (-no-libvirt)")
		}
	} else {
		progress("starting virsh on qemu:///embed")
		if *vp, err = startVirsh(path, env.base); err != nil {
			return fmt.Errorf("libvirt: %w", err)
		}
	}

	steps := []struct {
		key, name string
		fn        func() error
	}{
		{"start", "1-2,7 floor vs start --paused, destroy", func() error { return benchStart(env, m) }},
		{"cycle", "2 define/start/destroy/undefine cycles", func() error { return benchCycle(env, m, *vp) }},
		{"boot", "3 boot", func() error { return benchBoot(env, m) }},
		{"fuse", "5 FUSE costs", func() error { return benchFUSE(env, m) }},
		{"hotplug", "8 attach a disk to a running guest", func() error { return benchHotplug(env, m) }},
		{"mount", "6 mount time", func() error { return benchMount(env) }},
		{"scale", "4 scale", func() error { return benchScale(env) }},
		{"save", "9 managed save + restore", func() error { return benchSave(env, m) }},
		{"migrate", "10 live migration", func() error { return benchMigrate(env, m) }},
	}
	for _, s := range steps {
		if env.only != nil && !env.only[s.key] {
			continue
		}
		progress("section %s", s.name)
		if err := s.fn(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	load1 := loadavg()

	out := os.Stdout
	fmt.Fprintf(out, "qemufs bench, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(out, "Machine: %s\n", machine)
	fmt.Fprintf(out, "Load average (1/5/15 min) before: %s; after: %s\n", load0, load1)
	fmt.Fprintf(out, "Repetitions: n=%d, boot=%d, mounts=%d, fast=%d; scale %d domains, %d guests x %d rounds\n\n",
		env.n, env.nBoot, env.nMount, env.nFast, env.domains, env.guests, env.rounds)
	env.rep.print(out)
	return nil
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

var benchStartTime = time.Now()

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: [%6.1fs] %s\n", time.Since(benchStartTime).Seconds(), fmt.Sprintf(format, args...))
}

// machineInfo describes the host: CPU model, cores, kernel, QEMU.
func machineInfo() string {
	model := "?"
	if out, err := exec.Command("lscpu").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, "Model name:"); ok {
				model = strings.TrimSpace(v)
			}
		}
	}
	var uts syscall.Utsname
	syscall.Uname(&uts)
	kernel := utsString(uts.Release[:])
	qemu := "?"
	if out, err := exec.Command("qemu-system-x86_64", "--version").Output(); err == nil {
		qemu = strings.SplitN(string(out), "\n", 2)[0]
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(string(data))
		if len(f) > 1 {
			kb, _ := strconv.Atoi(f[1])
			mem = fmt.Sprintf(", %d GiB RAM", (kb+(1<<19))>>20)
		}
	}
	accel := "TCG (no /dev/kvm)"
	if _, err := os.Stat("/dev/kvm"); err == nil {
		accel = "/dev/kvm present (the bench's domains use type='qemu', TCG)"
	}
	return fmt.Sprintf("%s, %d cores%s; Linux %s; %s; %s", model, runtime.NumCPU(), mem, kernel, qemu, accel)
}

func utsString(b []int8) string {
	var s strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		s.WriteByte(byte(c))
	}
	return s.String()
}

func loadavg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
