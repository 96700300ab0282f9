package e2e

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// TestOps: the day-2 operations on the booted test guest, through the
// mount of a system instance (QEMU runs as another user): stats, setmem,
// setvcpus, send-key and dump.
func TestOps(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{System: true})
	disk := filepath.Join(m.Base, "disk.raw")
	if err := os.WriteFile(disk, bytes.Repeat([]byte("qemufs!\n"), 4<<20), 0o600); err != nil { // 32 MiB
		t.Fatal(err)
	}
	xml := harness.GuestXML(t, "g", guest.ActionNone, `    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='`+disk+`'/><target dev='vda' bus='virtio'/></disk>
    <interface type='user'><model type='virtio'/></interface>`)
	xml = strings.Replace(xml, "<vcpu>1</vcpu>", "<currentMemory unit='MiB'>160</currentMemory>\n  <vcpu current='1'>2</vcpu>", 1)
	m.Boot("g", xml)

	// The start set the balloon to <currentMemory>.
	if _, err := m.WaitStat("g", 2*time.Minute, func(s map[string]string) bool { return s["balloon.current"] == "163840" }); err != nil {
		t.Error(err)
	}

	st := m.Stats("g")
	if st["state.state"] != "1" || st["state.reason"] != "1" || st["state.state.name"] != "running" {
		t.Errorf("state lines: %v", st)
	}
	if m.StatUint(st, "cpu.time") == 0 {
		t.Error("cpu.time is 0 after a boot")
	}
	if st["vcpu.current"] != "1" || st["vcpu.maximum"] != "2" || st["block.count"] != "1" || st["block.0.name"] != "vda" ||
		st["block.0.path"] != disk || st["block.0.capacity"] != strconv.Itoa(32<<20) || st["net.count"] != "1" {
		t.Errorf("stats: %v", st)
	}
	if _, ok := st["net.0.name"]; ok {
		t.Errorf("a user-mode NIC has host counters: %v", st)
	}

	// Block counters follow the guest's reads.
	rd0 := m.StatUint(st, "block.0.rd.bytes")
	if _, err := m.Shell("g", "dd if=/dev/vda of=/dev/null bs=1M count=16; echo DD-$((8+8))", "DD-16", time.Minute); err != nil {
		t.Fatal(err)
	}
	st = m.Stats("g")
	if rd := m.StatUint(st, "block.0.rd.bytes"); rd < rd0+16<<20 || m.StatUint(st, "block.0.rd.reqs") == 0 {
		t.Errorf("block.0.rd.bytes %d after reading 16 MiB (was %d)", rd, rd0)
	}

	// The balloon: the guest's virtio_balloon driver gives memory back.
	m.MustCtl("g", "setmem 128M")
	if _, err := m.WaitStat("g", 2*time.Minute, func(s map[string]string) bool { return s["balloon.current"] == "131072" }); err != nil {
		t.Error(err)
	}
	if live := m.Read("g", "live.xml"); !strings.Contains(live, ">131072</currentMemory>") {
		t.Errorf("live.xml after setmem:\n%s", live)
	}
	if err := m.Ctl("g", "setmem 1G"); !errors.Is(err, syscall.EINVAL) || !strings.Contains(m.ErrorOf("g"), "maximum memory") {
		t.Errorf("setmem beyond <memory>: %v", err)
	}
	m.MustCtl("g", "setmem 150MiB --config")
	if cfg := m.Read("g", "config.xml"); !strings.Contains(cfg, ">153600</currentMemory>") {
		t.Errorf("config.xml after setmem --config:\n%s", cfg)
	}

	// A second vCPU, plugged and brought online by the guest.
	m.MustCtl("g", "setvcpus 2")
	if st := m.Stats("g"); st["vcpu.current"] != "2" {
		t.Errorf("vcpu.current after setvcpus 2: %v", st)
	}
	// The guest learns of the CPU from an ACPI event it handles in its
	// own time: wait (bounded) for it to appear before onlining it.
	out, err := m.Shell("g", "i=0; while [ ! -e /sys/devices/system/cpu/cpu1/online ] && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; "+
		"echo 1 > /sys/devices/system/cpu/cpu1/online; echo CPUS-$(cat /sys/devices/system/cpu/online)-$((40+2))END", "-42END", 2*time.Minute)
	if err != nil || !strings.Contains(out, "CPUS-0-1-42END") {
		t.Errorf("guest CPUs after setvcpus 2: %v %q", err, out)
	}
	if err := m.Ctl("g", "setvcpus 3"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("setvcpus beyond <vcpu>: %v", err)
	}
	// Unplug is refused under TCG on QEMU 7.2 (it corrupts QEMU's heap
	// and the guest dies at the next command); the guest keeps running.
	if err := m.Ctl("g", "setvcpus 1"); !errors.Is(err, syscall.EINVAL) || !strings.Contains(m.ErrorOf("g"), "TCG") {
		t.Errorf("setvcpus 1 under TCG: %v", err)
	}
	if st := m.Stats("g"); st["vcpu.current"] != "2" {
		t.Errorf("vcpu.current after a refused unplug: %v", st)
	}

	// Keys reach the guest's PS/2 keyboard: its interrupt count grows.
	irq := func(tag string) int {
		// The keyboard's interrupts, summed over the CPUs.
		sum := `$(awk '/i8042/ {for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; print s; exit}' /proc/interrupts)`
		out, err := m.Shell("g", "echo "+tag+"-"+sum+"-$((3+4))"+tag, "-7"+tag, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		mt := regexp.MustCompile(tag + `-(\d+)-7` + tag).FindStringSubmatch(out)
		if mt == nil {
			t.Fatalf("no i8042 interrupt count in %q", out)
		}
		n, _ := strconv.Atoi(mt[1])
		return n
	}
	before := irq("IRQA")
	m.MustCtl("g", "send-key KEY_A KEY_B")
	m.MustCtl("g", "send-key --holdtime 20 KEY_LEFTSHIFT KEY_C")
	after := irq("IRQB")
	t.Logf("i8042 interrupts %d before send-key, %d after", before, after)
	if after <= before {
		t.Errorf("i8042 interrupts %d -> %d after send-key", before, after)
	}
	if err := m.Ctl("g", "send-key KEY_BOGUS"); !errors.Is(err, syscall.EINVAL) || !strings.Contains(m.ErrorOf("g"), "KEY_BOGUS") {
		t.Errorf("send-key KEY_BOGUS: %v", err)
	}

	// A dump into a directory only root (qemufs) may write: QEMU runs as
	// another user, but qemufs opens the file and hands it over.
	dumps := filepath.Join(m.Base, "dumps")
	os.Mkdir(dumps, 0o700)
	core := filepath.Join(dumps, "g.core")
	m.MustCtl("g", "dump --memory-only "+core)
	f, err := os.Open(core)
	if err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 18)
	f.Read(hdr)
	fi, _ := f.Stat()
	f.Close()
	if !bytes.Equal(hdr[:4], []byte("\x7fELF")) || hdr[16] != 4 {
		t.Errorf("dump is not an ELF core: % x", hdr)
	}
	if fi.Size() < 192<<20 || fi.Size() > 200<<20 {
		t.Errorf("dump of a 192 MiB guest is %d bytes", fi.Size())
	}
	if s := fi.Sys().(*syscall.Stat_t); s.Uid != 0 {
		t.Errorf("dump owned by uid %d, want qemufs's 0", s.Uid)
	}
	t.Logf("dump: %d bytes", fi.Size())
	if got := m.State("g"); got != "running (unpaused)" {
		t.Errorf("state after dumping a running guest: %s", got)
	}
	if err := m.Ctl("g", "dump relative.core"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("dump to a relative path: %v", err)
	}
	if err := m.Ctl("g", "dump "+filepath.Join(dumps, "none", "x")); !errors.Is(err, syscall.EINVAL) || !strings.Contains(m.ErrorOf("g"), "no such file") {
		t.Errorf("dump into a missing directory: %v", err)
	}
	// The guest still runs its shell.
	if _, err := m.Shell("g", "echo ALIVE-$((2+3))", "ALIVE-5", time.Minute); err != nil {
		t.Error(err)
	}

	m.MustCtl("g", "destroy")
	st = m.Stats("g")
	if len(st) != 4 || st["state.state"] != "5" || st["state.reason"] != "2" || st["state.reason.name"] != "destroyed" {
		t.Errorf("stats of a destroyed domain: %v", st)
	}
}
