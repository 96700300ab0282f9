package domain

import (
	"strings"
	"testing"
)

func TestParseScaledKiB(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		bad  bool
	}{
		{"1024", 1024, false},
		{"64M", 64 << 10, false},
		{"64MiB", 64 << 10, false},
		{"64MB", 62500, false},
		{"1G", 1 << 20, false},
		{"1GiB", 1 << 20, false},
		{"2048K", 2048, false},
		{"2048KiB", 2048, false},
		{"1000KB", 977, false}, // 1,000,000 bytes rounded up to KiB
		{"1048576b", 1024, false},
		{"1048576bytes", 1024, false},
		{"1t", 1 << 30, false},
		{"", 0, true},
		{"M", 0, true},
		{"-5", 0, true},
		{"12Q", 0, true},
		{"1.5G", 0, true},
		{"99999999999999999999G", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseScaledKiB(tt.in)
		if tt.bad != (err != nil) || got != tt.want {
			t.Errorf("ParseScaledKiB(%q) = %d, %v; want %d (error %v)", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

// TestVCPUCurrent: <vcpu current='1'>2</vcpu> boots one CPU of two
// (-smp 1,maxcpus=2) and the setters keep the element as libvirt writes it.
func TestVCPUCurrent(t *testing.T) {
	x := strings.Replace(withDevices(""), "<os>", "<vcpu current='1'>2</vcpu><currentMemory unit='MiB'>32</currentMemory><os>", 1)
	d, err := Parse([]byte(x))
	if err != nil {
		t.Fatal(err)
	}
	if err := Expand(d, nil); err != nil {
		t.Fatal(err)
	}
	if d.VCPUs() != 1 || d.MaxVCPUs() != 2 {
		t.Fatalf("VCPUs %d MaxVCPUs %d", d.VCPUs(), d.MaxVCPUs())
	}
	if d.CurrentMemoryKiB() != 32<<10 || d.MemoryKiB() != 64<<10 {
		t.Fatalf("currentMemory %d memory %d", d.CurrentMemoryKiB(), d.MemoryKiB())
	}
	if b := d.MemBalloon(); b.Model != "virtio" || b.Alias != "balloon0" {
		t.Errorf("balloon %+v", b)
	}
	cmd, err := BuildCommand(d, CommandOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s := cmd.String(); !strings.Contains(s, "-smp 1,maxcpus=2,sockets=2,cores=1,threads=1") || !strings.Contains(s, "-m 64") {
		t.Errorf("argv: %s", s)
	}
	d.SetVCPUs(2)
	if s := string(d.XML()); !strings.Contains(s, "<vcpu placement=\"static\">2</vcpu>") && !strings.Contains(s, "<vcpu placement='static'>2</vcpu>") {
		t.Errorf("SetVCPUs(2) keeps current:\n%s", s)
	}
	d.SetVCPUs(1)
	if d.VCPUs() != 1 || !strings.Contains(string(d.XML()), "current=") {
		t.Errorf("SetVCPUs(1): %d\n%s", d.VCPUs(), d.XML())
	}
	d.SetMaxVCPUs(4)
	if d.VCPUs() != 1 || d.MaxVCPUs() != 4 {
		t.Errorf("SetMaxVCPUs(4): %d/%d", d.VCPUs(), d.MaxVCPUs())
	}
	d.SetVCPUs(3)
	d.SetMaxVCPUs(2)
	if d.VCPUs() != 2 || d.MaxVCPUs() != 2 {
		t.Errorf("SetMaxVCPUs(2) after 3 current: %d/%d", d.VCPUs(), d.MaxVCPUs())
	}
	d.SetCurrentMemoryKiB(16 << 10)
	if d.CurrentMemoryKiB() != 16<<10 {
		t.Errorf("SetCurrentMemoryKiB: %d", d.CurrentMemoryKiB())
	}
	if _, err := Parse(d.XML()); err != nil {
		t.Errorf("changed definition does not parse: %v", err)
	}
	// No balloon.
	n, _ := Parse([]byte(withDevices("<memballoon model='none'/>")))
	if b := n.MemBalloon(); b.Model != "none" {
		t.Errorf("balloon none: %+v", b)
	}
}
