package driver

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeFirmware puts a blank UEFI image and its descriptor in the
// instance's own firmware directory (ahead of the system's), and returns
// the image and its variable template. The guests only start paused: the
// image never runs.
func fakeFirmware(t *testing.T, d *Driver) (code, vars string) {
	t.Helper()
	dir := filepath.Join(d.inst.ConfigDir, "firmware")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	code, vars = filepath.Join(dir, "CODE.fd"), filepath.Join(dir, "VARS.fd")
	if err := os.WriteFile(code, make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vars, bytes.Repeat([]byte("VARS"), 32<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	desc := `{"interface-types":["uefi"],"mapping":{"device":"flash","executable":{"filename":"` + code +
		`","format":"raw"},"nvram-template":{"filename":"` + vars + `","format":"raw"}},` +
		`"targets":[{"architecture":"x86_64","machines":["pc-i440fx-*","pc-q35-*"]}],"features":[]}`
	if err := os.WriteFile(filepath.Join(dir, "00-test.json"), []byte(desc), 0o644); err != nil {
		t.Fatal(err)
	}
	return code, vars
}

func efiXML(name, os string) string {
	return `<domain type='qemu'><name>` + name + `</name><memory unit='MiB'>64</memory>
<os firmware='efi'><type arch='x86_64' machine='pc'>hvm</type>` + os + `</os><devices><serial type='pty'/></devices></domain>`
}

// TestNVRAMLifecycle: the variable store is named at define, created from
// the template at the first start (also where the XML names a file that
// does not exist yet), kept across starts, reset on request, and removed
// only by undefine --nvram.
func TestNVRAMLifecycle(t *testing.T) {
	d := newDriver(t)
	code, vars := fakeFirmware(t, d)
	tmpl, _ := os.ReadFile(vars)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctl := func(name, line string) error {
		t.Helper()
		return d.Control(ctx, name, line)
	}
	mustCtl := func(name, line string) {
		t.Helper()
		if err := ctl(name, line); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
	}
	same := func(path string) bool {
		got, err := os.ReadFile(path)
		return err == nil && bytes.Equal(got, tmpl)
	}

	for _, n := range []string{"a", "b", "c", "bios"} {
		if err := d.Create(n); err != nil {
			t.Fatal(err)
		}
	}
	// a: the default store under lib/qemu/nvram.
	if err := d.Define("a", []byte(efiXML("a", ""))); err != nil {
		t.Fatal(err)
	}
	nv := filepath.Join(d.inst.LibDir, "nvram", "a_VARS.fd")
	conf, _ := d.Config("a")
	if want := "<loader readonly='yes' type='pflash'>" + code + "</loader>\n    <nvram template='" + vars + "'>" + nv + "</nvram>"; !strings.Contains(string(conf), want) {
		t.Errorf("definition lacks\n%s\n%s", want, conf)
	}
	mustCtl("a", "start --paused")
	if !same(nv) {
		t.Error("first start: the store is not a copy of the template")
	}
	mustCtl("a", "destroy")
	written := bytes.Repeat([]byte("GUEST"), len(tmpl)/5+1)[:len(tmpl)] // what a guest might leave
	if err := os.WriteFile(nv, written, 0o600); err != nil {
		t.Fatal(err)
	}
	mustCtl("a", "start --paused")
	if got, _ := os.ReadFile(nv); !bytes.Equal(got, written) {
		t.Errorf("second start recreated the store: %.20q", got)
	}
	if err := ctl("a", "undefine"); !errors.Is(err, ErrBusy) {
		t.Errorf("undefine of a running domain: %v, want ErrBusy", err)
	}
	mustCtl("a", "destroy")
	mustCtl("a", "start --paused --reset-nvram")
	if !same(nv) {
		t.Error("start --reset-nvram did not restore the template")
	}
	mustCtl("a", "destroy")
	mustCtl("a", "undefine")
	if !same(nv) {
		t.Error("undefine without --nvram removed the store")
	}
	if err := d.Define("a", []byte(efiXML("a", ""))); err != nil {
		t.Fatal(err)
	}
	mustCtl("a", "undefine --nvram")
	if _, err := os.Stat(nv); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("undefine --nvram left the store: %v", err)
	}
	if err := ctl("a", "undefine"); !errors.Is(err, ErrInvalid) {
		t.Errorf("undefine of an undefined domain: %v, want ErrInvalid", err)
	}
	if err := ctl("a", "undefine --bogus"); !errors.Is(err, ErrInvalid) {
		t.Errorf("undefine --bogus: %v, want ErrInvalid", err)
	}

	// b: the XML names a store in a directory that does not exist yet.
	given := filepath.Join(d.inst.LibDir, "b", "sub", "b_VARS.fd")
	if err := d.Define("b", []byte(efiXML("b", "<nvram>"+given+"</nvram>"))); err != nil {
		t.Fatal(err)
	}
	mustCtl("b", "start --paused")
	if !same(given) {
		t.Errorf("the named store %s was not created from the template", given)
	}
	mustCtl("b", "destroy")

	// c: a pflash loader no descriptor describes, without a template.
	other := filepath.Join(t.TempDir(), "OTHER_CODE.fd")
	os.WriteFile(other, make([]byte, 2<<20), 0o644)
	if err := d.Define("c", []byte(strings.Replace(efiXML("c", "<loader readonly='yes' type='pflash'>"+other+"</loader>"), " firmware='efi'", "", 1))); err != nil {
		t.Fatal(err)
	}
	err := ctl("c", "start --paused")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "no NVRAM template matches the loader "+other) {
		t.Errorf("start without a template: %v", err)
	}

	// A BIOS guest has no store to reset.
	if err := d.Define("bios", []byte(minimalXML("bios"))); err != nil {
		t.Fatal(err)
	}
	if err := ctl("bios", "start --reset-nvram"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "no UEFI variable store") {
		t.Errorf("--reset-nvram of a BIOS guest: %v", err)
	}
}

// TestSnapshotNVRAM: a snapshot keeps a copy of the UEFI variable store,
// a revert writes it back in place (same inode, owner and mode), and
// deleting the snapshot drops the copy.
func TestSnapshotNVRAM(t *testing.T) {
	needQemuImg(t)
	d := newDriver(t)
	fakeFirmware(t, d)
	disk := filepath.Join(t.TempDir(), "d.qcow2")
	mkQcow(t, disk)
	if err := d.Create("e"); err != nil {
		t.Fatal(err)
	}
	x := strings.Replace(efiXML("e", ""), "<devices>", "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='"+disk+"'/><target dev='vda' bus='virtio'/></disk>", 1)
	if err := d.Define("e", []byte(x)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := d.Control(ctx, "e", "start --paused"); err != nil { // creates the store
		t.Fatal(err)
	}
	if err := d.Control(ctx, "e", "destroy"); err != nil {
		t.Fatal(err)
	}
	nv := filepath.Join(d.inst.LibDir, "nvram", "e_VARS.fd")
	before := bytes.Repeat([]byte("A"), 4096)
	if err := os.WriteFile(nv, before, 0o640); err != nil {
		t.Fatal(err)
	}
	os.Chmod(nv, 0o640) // an owner or mode of its own, which a revert keeps
	st0, _ := os.Stat(nv)
	if err := d.SnapshotCreate(ctx, "e", "s1"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nv, bytes.Repeat([]byte("B"), 8192), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := d.SnapshotControl(ctx, "e", "s1", "revert"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(nv)
	if !bytes.Equal(got, before) {
		t.Fatalf("after revert the store holds %q..., want the snapshot's", got[:min(len(got), 8)])
	}
	st1, _ := os.Stat(nv)
	if !os.SameFile(st0, st1) || st1.Mode().Perm() != 0o640 {
		t.Errorf("revert replaced the store (same file %v, mode %v)", os.SameFile(st0, st1), st1.Mode())
	}
	if _, err := os.Stat(d.snapNVRAMPath("e", "s1")); err != nil {
		t.Fatalf("no copy with the snapshot: %v", err)
	}
	if err := d.SnapshotDelete(ctx, "e", "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.snapNVRAMPath("e", "s1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the copy outlives the snapshot: %v", err)
	}
}
