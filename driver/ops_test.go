package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// opsXML is a domain with one of two vCPUs online, 48 of 64 MiB through the
// (default) virtio balloon, a raw virtio disk and a user-mode NIC.
func opsXML(name, disk, extra string) string {
	return fmt.Sprintf(`<domain type='qemu'><name>%s</name>
<memory unit='MiB'>64</memory><currentMemory unit='MiB'>48</currentMemory>
<vcpu current='1'>2</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<features><acpi/></features>
<devices>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
<interface type='user'><model type='virtio'/></interface>
<serial type='pty'/>%s
</devices></domain>`, name, disk, extra)
}

// statsMap reads the domain's stats into a map, failing on a malformed line.
func statsMap(t *testing.T, d *Driver, name string) map[string]string {
	t.Helper()
	b, err := d.Stats(context.Background(), name)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			t.Fatalf("stats line %q is not key=value:\n%s", l, b)
		}
		if _, dup := m[k]; dup {
			t.Fatalf("stats key %s twice:\n%s", k, b)
		}
		m[k] = v
	}
	return m
}

func statUint(t *testing.T, m map[string]string, key string) uint64 {
	t.Helper()
	v, ok := m[key]
	if !ok {
		t.Fatalf("stats lack %s: %v", key, m)
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("stats %s=%q: %v", key, v, err)
	}
	return n
}

// startOps defines and starts (paused) the ops domain "a".
func startOps(t *testing.T, extra string) (*Driver, string) {
	t.Helper()
	d := newDriver(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 16<<20); err != nil {
		t.Fatal(err)
	}
	d.Create("a")
	if err := d.Define("a", []byte(opsXML("a", disk, extra))); err != nil {
		t.Fatal(err)
	}
	// A shut-off domain has its state lines only.
	m := statsMap(t, d, "a")
	if len(m) != 4 || m["state.state"] != "5" || m["state.state.name"] != "shut off" || m["state.reason"] != "0" {
		t.Errorf("shut-off stats: %v", m)
	}
	if err := d.Control(context.Background(), "a", "start --paused"); err != nil {
		t.Fatal(err)
	}
	return d, disk
}

// TestOpsStats reads the stats of a real, paused QEMU.
func TestOpsStats(t *testing.T) {
	d, disk := startOps(t, "")
	m := statsMap(t, d, "a")
	want := map[string]string{
		"state.state": "3", "state.state.name": "paused", "state.reason": "1", "state.reason.name": "user",
		"balloon.maximum": "65536", "vcpu.current": "1", "vcpu.maximum": "2", "vcpu.0.state": "1",
		"block.count": "1", "block.0.name": "vda", "block.0.path": disk, "block.0.capacity": strconv.Itoa(16 << 20),
		"net.count": "1",
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s=%q, want %q", k, m[k], v)
		}
	}
	// QEMU has run a little (spawn, monitor), so it has used CPU.
	if statUint(t, m, "cpu.time") == 0 || statUint(t, m, "cpu.time") < statUint(t, m, "cpu.user") {
		t.Errorf("cpu times: %v", m)
	}
	statUint(t, m, "cpu.system")
	if rss := statUint(t, m, "balloon.rss"); rss == 0 {
		t.Error("balloon.rss is 0")
	}
	// No guest driver answers the balloon, so QEMU still reports all memory.
	if cur := statUint(t, m, "balloon.current"); cur == 0 || cur > 65536 {
		t.Errorf("balloon.current %d", cur)
	}
	statUint(t, m, "vcpu.0.time")
	for _, k := range []string{"rd.reqs", "rd.bytes", "rd.times", "wr.reqs", "wr.bytes", "wr.times", "fl.reqs", "fl.times", "allocation", "physical"} {
		statUint(t, m, "block.0."+k)
	}
	// A user-mode NIC has no host interface: no counters, as libvirt.
	for k := range m {
		if strings.HasPrefix(k, "net.0.") {
			t.Errorf("user-mode NIC has %s", k)
		}
	}
	// The live definition asks the balloon for currentMemory at start.
	if live, _ := d.LiveXML("a"); !strings.Contains(string(live), ">49152</currentMemory>") {
		t.Errorf("live currentMemory:\n%s", live)
	}
}

// TestOpsSetmem: the balloon target, live and in the definition, and the
// errors that leave both as they were.
func TestOpsSetmem(t *testing.T) {
	d, _ := startOps(t, "")
	ctx := context.Background()
	cfg0, _ := d.Config("a")
	bad := []struct {
		line string
		kind error
	}{
		{"setmem", ErrInvalid},
		{"setmem 1 2", ErrInvalid},
		{"setmem lots", ErrInvalid},
		{"setmem 0", ErrInvalid},
		{"setmem 12Q", ErrInvalid},
		{"setmem 128M", ErrInvalid},
		{"setmem 65537", ErrInvalid},
		{"setmem 128M --config", ErrInvalid},
		{"setmem 32M --current --live", ErrInvalid},
		{"setmem 32M --bogus", ErrInvalid},
	}
	for _, b := range bad {
		if err := d.Control(ctx, "a", b.line); !errors.Is(err, b.kind) {
			t.Errorf("%s: %v, want %v", b.line, err, b.kind)
		}
	}
	if cfg, _ := d.Config("a"); !bytes.Equal(cfg, cfg0) {
		t.Error("failed setmem changed the definition")
	}
	if err := d.Control(ctx, "a", "setmem 32M"); err != nil {
		t.Fatal(err)
	}
	if live, _ := d.LiveXML("a"); !strings.Contains(string(live), ">32768</currentMemory>") {
		t.Errorf("live currentMemory after setmem 32M:\n%s", live)
	}
	if cfg, _ := d.Config("a"); !bytes.Equal(cfg, cfg0) {
		t.Error("setmem (live) changed the definition")
	}
	if err := d.Control(ctx, "a", "setmem 40960 --config"); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := d.Config("a"); !strings.Contains(string(cfg), ">40960</currentMemory>") {
		t.Errorf("config currentMemory after setmem --config:\n%s", cfg)
	}
	if err := d.Control(ctx, "a", "setmem 1GiB --live --config"); !errors.Is(err, ErrInvalid) {
		t.Errorf("setmem 1GiB --live --config: %v", err)
	}
	d.Control(ctx, "a", "destroy")
	if err := d.Control(ctx, "a", "setmem 16M --live"); !errors.Is(err, ErrBusy) {
		t.Errorf("setmem --live on a shut-off domain: %v", err)
	}
	if err := d.Control(ctx, "a", "setmem 16M"); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := d.Config("a"); !strings.Contains(string(cfg), ">16384</currentMemory>") {
		t.Errorf("setmem on a shut-off domain:\n%s", cfg)
	}
}

// TestOpsSetmemNoBalloon: without a balloon a running guest cannot change.
func TestOpsSetmemNoBalloon(t *testing.T) {
	d, _ := startOps(t, "<memballoon model='none'/>")
	err := d.Control(context.Background(), "a", "setmem 32M")
	if !errors.Is(err, ErrNoDevice) || !strings.Contains(err.Error(), "memballoon") {
		t.Errorf("setmem without a balloon: %v", err)
	}
	m := statsMap(t, d, "a")
	if m["balloon.current"] != "49152" { // currentMemory, as nothing balloons
		t.Errorf("balloon.current without a balloon: %q", m["balloon.current"])
	}
}

// TestOpsSetvcpus plugs a vCPU into a real QEMU and checks the bounds.
func TestOpsSetvcpus(t *testing.T) {
	d, _ := startOps(t, "")
	ctx := context.Background()
	for _, line := range []string{"setvcpus", "setvcpus 0", "setvcpus x", "setvcpus 3", "setvcpus 2 --maximum", "setvcpus 5 --config"} {
		if err := d.Control(ctx, "a", line); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", line, err)
		}
	}
	if err := d.Control(ctx, "a", "setvcpus 2"); err != nil {
		t.Fatal(err)
	}
	m := statsMap(t, d, "a")
	if m["vcpu.current"] != "2" || m["vcpu.1.state"] != "1" {
		t.Errorf("after setvcpus 2: %v", m)
	}
	if live, _ := d.LiveXML("a"); strings.Contains(string(live), "current=") {
		t.Errorf("live vcpu after setvcpus 2:\n%s", live)
	}
	if err := d.Control(ctx, "a", "setvcpus 2"); err != nil {
		t.Errorf("setvcpus to the current count: %v", err)
	}
	// No guest OS runs to honour the ACPI eject: the unplug times out.
	// Unplug under TCG on QEMU 7.2 corrupts QEMU's heap: refused.
	if err := d.Control(ctx, "a", "setvcpus 1"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "TCG") {
		t.Errorf("unplug under TCG: %v", err)
	}
	if m := statsMap(t, d, "a"); m["vcpu.current"] != "2" {
		t.Errorf("after a refused unplug: vcpu.current=%s", m["vcpu.current"])
	}
	// The definition.
	if err := d.Control(ctx, "a", "setvcpus 2 --config"); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := d.Config("a"); strings.Contains(string(cfg), "current=") || !strings.Contains(string(cfg), ">2</vcpu>") {
		t.Errorf("config after setvcpus 2 --config:\n%s", cfg)
	}
	if err := d.Control(ctx, "a", "setvcpus 4 --maximum --config"); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := d.Config("a"); !strings.Contains(string(cfg), ">4</vcpu>") || !strings.Contains(string(cfg), "current='2'") && !strings.Contains(string(cfg), `current="2"`) {
		t.Errorf("config after --maximum 4:\n%s", cfg)
	}
	// The next start boots what the definition says: 2 of 4.
	d.Control(ctx, "a", "destroy")
	if err := d.Control(ctx, "a", "start --paused"); err != nil {
		t.Fatal(err)
	}
	if m := statsMap(t, d, "a"); m["vcpu.current"] != "2" || m["vcpu.maximum"] != "4" {
		t.Errorf("restart: %v", m)
	}
}

// TestOpsSendKey sends keys to a real QEMU: every key of the table is one
// QEMU knows, and bad keys fail before reaching it.
func TestOpsSendKey(t *testing.T) {
	d, _ := startOps(t, "")
	ctx := context.Background()
	for i := 0; i < len(linuxKeys); i += maxSendKeys {
		var names []string
		for _, k := range linuxKeys[i:min(i+maxSendKeys, len(linuxKeys))] {
			names = append(names, k.name)
		}
		if err := d.Control(ctx, "a", "send-key --holdtime 1 "+strings.Join(names, " ")); err != nil {
			t.Fatalf("send-key %v: %v", names, err)
		}
	}
	good := []string{"send-key KEY_LEFTCTRL KEY_LEFTALT KEY_DELETE", "send-key key_a", "send-key 30 48",
		"send-key --codeset qnum 0x1e", "send-key --codeset=linux --holdtime=50 KEY_A", "send-key 0x1e"}
	for _, l := range good {
		if err := d.Control(ctx, "a", l); err != nil {
			t.Errorf("%s: %v", l, err)
		}
	}
	bad := []string{"send-key", "send-key KEY_NOPE", "send-key --codeset xt 30", "send-key --codeset qnum KEY_A",
		"send-key --codeset qnum 300", "send-key 9999", "send-key --holdtime x KEY_A", "send-key --holdtime",
		"send-key --fast KEY_A", "send-key " + strings.Repeat("KEY_A ", 17)}
	for _, l := range bad {
		if err := d.Control(ctx, "a", l); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", l, err)
		}
	}
	if e, _ := d.LastError("a"); !strings.Contains(e, "at most 16") {
		t.Errorf("error of 17 keys: %q", e)
	}
}

// TestOpsDump dumps a real QEMU's memory through a passed descriptor.
func TestOpsDump(t *testing.T) {
	d, _ := startOps(t, "")
	ctx := context.Background()
	dir := t.TempDir()
	core := filepath.Join(dir, "core.elf")
	if err := d.Control(ctx, "a", "dump "+core); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(core)
	if err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 20)
	f.Read(hdr)
	fi, _ := f.Stat()
	f.Close()
	// ELF magic, 64-bit, little endian, e_type ET_CORE (4).
	if !bytes.Equal(hdr[:4], []byte("\x7fELF")) || hdr[4] != 2 || hdr[5] != 1 || hdr[16] != 4 || hdr[17] != 0 {
		t.Errorf("not an ELF core: % x", hdr)
	}
	if fi.Size() < 64<<20 || fi.Size() > 80<<20 {
		t.Errorf("dump is %d bytes for 64 MiB of guest memory", fi.Size())
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("dump mode %v", fi.Mode())
	}
	if got, _ := d.StateLine("a"); got != "paused (user)" {
		t.Errorf("after dumping a paused guest: %s", got)
	}
	kd := filepath.Join(dir, "core.kdump")
	if err := d.Control(ctx, "a", "dump --memory-only --format=kdump-zlib "+kd); err != nil {
		t.Fatal(err)
	}
	// QEMU 7.2 writes kdump in makedumpfile's flattened form.
	if b, _ := os.ReadFile(kd); !bytes.HasPrefix(b, []byte("KDUMP   ")) && !bytes.HasPrefix(b, []byte("makedumpfile\x00")) {
		t.Errorf("kdump-zlib dump does not start with a kdump signature: %q", b[:min(len(b), 16)])
	}
	bad := []struct {
		line string
		kind error
	}{
		{"dump", ErrInvalid},
		{"dump core.elf", ErrInvalid},
		{"dump " + core + " --format=bogus", ErrInvalid},
		{"dump " + filepath.Join(dir, "no", "such", "dir") + " --memory-only", ErrInvalid},
		{"dump /sys/qemufs-dump-test", ErrPerm},
		{"dump " + core + " " + core, ErrInvalid},
		{"dump " + core + " --reset --crash", ErrInvalid},
	}
	for _, b := range bad {
		if err := d.Control(ctx, "a", b.line); !errors.Is(err, b.kind) {
			t.Errorf("%s: %v, want %v", b.line, err, b.kind)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "no")); err == nil {
		t.Error("a failed dump created directories")
	}
	// --crash leaves the domain crashed and stopped.
	if err := d.Control(ctx, "a", "dump --crash "+core); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.StateLine("a"); got != "shut off (crashed)" {
		t.Errorf("after dump --crash: %s", got)
	}
	if err := d.Control(ctx, "a", "dump "+core); !errors.Is(err, ErrBusy) {
		t.Errorf("dump of a shut-off domain: %v", err)
	}
}

// TestOpsStatsTap: NICs with a host tap (type='ethernet', qemufs makes the
// tap as root here) have host counters, found by target dev or, without
// one, by the name qemufs gave the tap (vnetN, as libvirt).
func TestOpsStatsTap(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating taps needs root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	tap := fmt.Sprintf("qfs%d", os.Getpid()%100000)
	d, _ := startOps(t, `<interface type='ethernet'><target dev='`+tap+`'/><model type='virtio'/></interface>
<interface type='ethernet'><model type='e1000'/></interface>`)
	m := statsMap(t, d, "a")
	if m["net.count"] != "3" || m["net.1.name"] != tap || !strings.HasPrefix(m["net.2.name"], "vnet") {
		t.Fatalf("tap NICs: %v", m)
	}
	for _, i := range []string{"1", "2"} {
		for _, k := range []string{"rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs", "tx.drop"} {
			statUint(t, m, "net."+i+"."+k)
		}
	}
	// type='ethernet' shows the host interface's own view, as libvirt.
	c, err := readNetCounters(tap)
	if err != nil {
		t.Fatal(err)
	}
	if got := statUint(t, m, "net.1.tx.bytes"); got > c.txBytes {
		t.Errorf("net.1.tx.bytes %d is more than the tap's tx_bytes %d read later", got, c.txBytes)
	}
}

// TestOpsDumpDestroy: a running dump does not hold the domain's lock, so
// destroy ends the guest at once; the dump then fails and leaves no file.
func TestOpsDumpDestroy(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	d.Create("a")
	big := strings.Replace(minimalXML("a"), "<memory unit='MiB'>64</memory>", "<memory unit='MiB'>1024</memory>", 1)
	if err := d.Define("a", []byte(big)); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "a", "start --paused"); err != nil {
		t.Fatal(err)
	}
	core := filepath.Join(t.TempDir(), "core")
	done := make(chan error, 1)
	go func() { done <- d.Control(ctx, "a", "dump "+core) }()
	// Wait until QEMU writes, then destroy.
	for {
		if fi, err := os.Stat(core); err == nil && fi.Size() > 0 {
			break
		}
		select {
		case err := <-done:
			t.Skipf("the dump ended (%v) before it could be interrupted", err)
		default:
		}
		runtime.Gosched()
	}
	if err := d.Control(ctx, "a", "destroy"); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if err == nil {
		t.Skip("the dump completed before destroy")
	}
	if !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("dump ended by destroy: %v", err)
	}
	if _, err := os.Stat(core); err == nil {
		t.Error("the partial dump was left behind")
	}
	if got, _ := d.StateLine("a"); got != "shut off (destroyed)" {
		t.Errorf("state %s", got)
	}
}
