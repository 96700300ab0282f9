package selinux

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/security/lsm"
)

func TestMCSUnique(t *testing.T) {
	m := NewMCS(1024)
	seen := map[string]bool{}
	for i := 0; i < 2000; i++ {
		c, err := m.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		if seen[c] {
			t.Fatalf("pair %s handed out twice while in use", c)
		}
		seen[c] = true
	}
	if m.InUse() != 2000 {
		t.Errorf("InUse = %d", m.InUse())
	}
}

func TestMCSReuseOnlyAfterRelease(t *testing.T) {
	m := NewMCS(3) // pairs: c0,c1 c0,c2 c1,c2
	var got []string
	for i := 0; i < 3; i++ {
		c, err := m.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c)
	}
	if _, err := m.Allocate(); !errors.Is(err, ErrExhausted) {
		t.Fatalf("4th allocation: err = %v, want ErrExhausted", err)
	}
	m.Release(got[1])
	c, err := m.Allocate()
	if err != nil || c != got[1] {
		t.Fatalf("after release got %q, %v; want the released %s", c, err, got[1])
	}
}

func TestMCSReserve(t *testing.T) {
	m := NewMCS(1024)
	if err := m.Reserve("c1,c2", true); err != nil {
		t.Fatal(err)
	}
	if err := m.Reserve("c1,c2", true); err == nil {
		t.Error("second exclusive reservation of the same pair accepted")
	}
	// Static labels may share a pair.
	if err := m.Reserve("c5,c6", false); err != nil {
		t.Fatal(err)
	}
	if err := m.Reserve("c5,c6", false); err != nil {
		t.Fatal(err)
	}
	m.Release("c5,c6")
	if err := m.Reserve("c5,c6", true); err == nil {
		t.Error("pair still held by one static guest reserved exclusively")
	}
	m.Release("c5,c6")
	if err := m.Reserve("c5,c6", true); err != nil {
		t.Errorf("after both releases: %v", err)
	}
}

func TestAssign(t *testing.T) {
	no, yes := false, true
	d := &Driver{Contexts: DefaultContexts(), MCS: NewMCS(1024)}
	cases := []struct {
		name    string
		r       Request
		tcg     bool
		wantErr string
		check   func(t *testing.T, l Label)
	}{
		{name: "dynamic kvm", r: Request{}, check: func(t *testing.T, l Label) {
			if !strings.HasPrefix(l.Process, "system_u:system_r:svirt_t:s0:c") || !l.Relabel || l.Type != "dynamic" {
				t.Errorf("label %+v", l)
			}
			if Categories(l.Process) != l.MCS || Categories(l.Image) != l.MCS || !strings.Contains(l.Image, ":svirt_image_t:") {
				t.Errorf("process %s and image %s do not share MCS %s", l.Process, l.Image, l.MCS)
			}
		}},
		{name: "dynamic tcg", r: Request{Type: "dynamic"}, tcg: true, check: func(t *testing.T, l Label) {
			if !strings.Contains(l.Process, ":svirt_tcg_t:s0:c") {
				t.Errorf("label %s", l.Process)
			}
		}},
		{name: "dynamic baselabel", r: Request{BaseLabel: "system_u:system_r:my_t:s0"}, check: func(t *testing.T, l Label) {
			if !strings.HasPrefix(l.Process, "system_u:system_r:my_t:s0:c") {
				t.Errorf("label %s", l.Process)
			}
		}},
		{name: "dynamic relabel no", r: Request{Relabel: &no}, wantErr: "relabel='yes'"},
		{name: "dynamic with label", r: Request{Label: "a:b:c:s0"}, wantErr: "no <label>"},
		{name: "static", r: Request{Type: "static", Label: "system_u:system_r:svirt_t:s0:c7,c8"}, check: func(t *testing.T, l Label) {
			if l.Relabel || l.Image != "" || l.Process != "system_u:system_r:svirt_t:s0:c7,c8" || l.MCS != "c7,c8" {
				t.Errorf("label %+v", l)
			}
		}},
		{name: "static relabel", r: Request{Type: "static", Relabel: &yes, Label: "system_u:system_r:svirt_t:s0:c9,c10"}, check: func(t *testing.T, l Label) {
			if l.Image != "system_u:object_r:svirt_image_t:s0:c9,c10" {
				t.Errorf("image %s", l.Image)
			}
		}},
		{name: "static no label", r: Request{Type: "static"}, wantErr: "needs <label>"},
		{name: "static bad", r: Request{Type: "static", Label: "nonsense"}, wantErr: "user:role:type:level"},
		{name: "none", r: Request{Type: "none"}, check: func(t *testing.T, l Label) {
			if l.Process != "" || l.Relabel {
				t.Errorf("label %+v", l)
			}
		}},
		{name: "bogus type", r: Request{Type: "bogus"}, wantErr: "unknown type"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := d.MCS.InUse()
			l, err := d.Assign(c.r, c.tcg)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want %q", err, c.wantErr)
				}
				if d.MCS.InUse() != before {
					t.Error("a failed Assign kept a reservation")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, l)
			d.Release(l)
			if d.MCS.InUse() != before {
				t.Errorf("Release left %d pairs, want %d", d.MCS.InUse(), before)
			}
		})
	}
}

func TestReattachAfterRestart(t *testing.T) {
	d := &Driver{Contexts: DefaultContexts(), MCS: NewMCS(1024)}
	var labels []Label
	for i := 0; i < 50; i++ {
		l, err := d.Assign(Request{}, false)
		if err != nil {
			t.Fatal(err)
		}
		labels = append(labels, l)
	}
	// A new daemon: the allocator is empty until the records come back.
	d2 := &Driver{Contexts: DefaultContexts(), MCS: NewMCS(1024)}
	for _, l := range labels {
		if err := d2.Reattach(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := d2.Reattach(labels[0]); err == nil {
		t.Error("the same dynamic pair re-attached twice")
	}
	held := map[string]bool{}
	for _, l := range labels {
		held[l.MCS] = true
	}
	for i := 0; i < 500; i++ {
		l, err := d2.Assign(Request{}, false)
		if err != nil {
			t.Fatal(err)
		}
		if held[l.MCS] {
			t.Fatalf("new guest got %s, held by a re-attached guest", l.MCS)
		}
		d2.Release(l)
	}
}

func TestFileLabel(t *testing.T) {
	d := &Driver{Contexts: DefaultContexts(), MCS: NewMCS(1024)}
	l := Label{Image: "system_u:object_r:svirt_image_t:s0:c1,c2"}
	for k, want := range map[Kind]string{
		Exclusive: l.Image,
		Shared:    "system_u:object_r:svirt_image_t:s0",
		ReadOnly:  "system_u:object_r:svirt_content_t:s0",
	} {
		if got := d.FileLabel(l, k); got != want {
			t.Errorf("kind %d: %s, want %s", k, got, want)
		}
	}
}

func TestLoadContexts(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "virtual_domain_context"), []byte("# c\nsystem_u:system_r:x_t:s0\nsystem_u:system_r:y_t:s0\n"), 0o644)
	c := LoadContexts(dir)
	if c.Domain != "system_u:system_r:x_t:s0" || c.TCGDomain != "system_u:system_r:y_t:s0" || c.Image != DefaultContexts().Image {
		t.Errorf("contexts = %+v", c)
	}
	if LoadContexts(filepath.Join(dir, "none")) != DefaultContexts() {
		t.Error("missing dir does not give defaults")
	}
}

func TestWithCategories(t *testing.T) {
	for in, want := range map[string]string{
		"system_u:system_r:svirt_t:s0":             "system_u:system_r:svirt_t:s0:c1,c2",
		"system_u:system_r:svirt_t:s0:c3,c4":       "system_u:system_r:svirt_t:s0:c1,c2",
		"system_u:system_r:svirt_t:s0-s0:c0.c1023": "system_u:system_r:svirt_t:s0:c1,c2",
	} {
		got, err := WithCategories(in, "c1,c2")
		if err != nil || got != want {
			t.Errorf("WithCategories(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
}

func TestMemoryLabeler(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, nil, 0o600)
	m := &Memory{Default: "system_u:object_r:user_tmp_t:s0"}
	if l, _ := m.FileLabel(f); l != m.Default {
		t.Errorf("unlabeled file reads %q", l)
	}
	m.SetFileLabel(f, "x:y:z:s0")
	if l, _ := m.FileLabel(f); l != "x:y:z:s0" {
		t.Errorf("label %q", l)
	}
	if err := m.SetFileLabel(f+"missing", "a"); err == nil {
		t.Error("labeling a missing file succeeded")
	}
}

// TestKernelAbsent shows the real calls detect a host without SELinux.
func TestKernelAbsent(t *testing.T) {
	if lsm.SELinuxEnabled() {
		t.Skip("SELinux is active here")
	}
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, nil, 0o600)
	if _, err := (Kernel{}).FileLabel(f); err == nil {
		t.Error("getfilecon succeeded without SELinux")
	}
}
