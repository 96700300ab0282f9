package driver

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// mustState fails the test unless domain name is in state want.
func mustState(t *testing.T, d *Driver, name, want string) {
	t.Helper()
	if got, _ := d.StateLine(name); got != want {
		e, _ := d.LastError(name)
		t.Fatalf("state %q, want %q (error: %s)", got, want, e)
	}
}

func mustControl(t *testing.T, d *Driver, name, line string) {
	t.Helper()
	if err := d.Control(context.Background(), name, line); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
}

// TestManagedSave saves a running guest, sees the state survive a new
// Driver (a remount), refuses to undefine it, and restores it with start.
func TestManagedSave(t *testing.T) {
	d := newDriver(t)
	d.Create("a")
	if err := d.Define("a", []byte(minimalXML("a"))); err != nil {
		t.Fatal(err)
	}
	mustControl(t, d, "a", "start")
	if err := d.Control(context.Background(), "a", "save extra"); !errors.Is(err, ErrInvalid) {
		t.Errorf("save with a relative FILE: %v", err)
	}
	ev, _ := d.Events("a")
	mustControl(t, d, "a", "save")
	mustState(t, d, "a", "shut off (saved)")
	img := d.managedSavePath("a")
	si, err := openSaveImage(img)
	if err != nil {
		t.Fatalf("managed image: %v", err)
	}
	if si.def.Name() != "a" || !si.running || si.hdr.StreamLen < 1<<10 {
		t.Errorf("image header: name %q running %v stream %d", si.def.Name(), si.running, si.hdr.StreamLen)
	}
	si.Close()
	got := readUntil(t, ev, `"stopped"`)
	if !strings.Contains(got, `"paused","detail":"saving"`) || !strings.Contains(got, `"stopped","detail":"saved"`) {
		t.Errorf("events of a save:\n%s", got)
	}
	if matches, _ := filepath.Glob(filepath.Join(filepath.Dir(img), ".*tmp*")); len(matches) > 0 {
		t.Errorf("temporary files left: %v", matches)
	}

	// A remount sees the saved state.
	d.Close()
	d2, err := New(d.opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.Control(context.Background(), "a", "destroy"); d2.Close() })
	d = d2
	mustState(t, d, "a", "shut off (saved)")
	if err := d.Remove("a"); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "managed save") {
		t.Errorf("undefine with a managed save: %v, want EBUSY naming the image", err)
	}
	if err := d.Control(context.Background(), "a", "restore /nonexistent"); !errors.Is(err, ErrBusy) {
		t.Errorf("restore FILE over a managed save: %v, want EBUSY", err)
	}

	mustControl(t, d, "a", "start")
	mustState(t, d, "a", "running (restored)")
	if d.hasManagedSave("a") {
		t.Error("the managed image is still there after the restore")
	}
	log, _ := os.ReadFile(d.runFiles("a").Log)
	if !strings.Contains(string(log), "-incoming defer") {
		t.Error("the restore did not start QEMU with -incoming defer")
	}
	mustControl(t, d, "a", "destroy")
	// The next start boots.
	mustControl(t, d, "a", "start --paused")
	mustState(t, d, "a", "paused (user)")

	// A paused guest is saved paused and comes back paused.
	mustControl(t, d, "a", "save")
	mustState(t, d, "a", "shut off (saved)")
	mustControl(t, d, "a", "start")
	mustState(t, d, "a", "paused (user)")
	mustControl(t, d, "a", "resume")
	mustState(t, d, "a", "running (unpaused)")

	// --force-boot discards the image; managedsave-remove too.
	mustControl(t, d, "a", "save")
	mustControl(t, d, "a", "start --force-boot")
	mustState(t, d, "a", "running (booted)")
	if d.hasManagedSave("a") {
		t.Error("--force-boot kept the image")
	}
	mustControl(t, d, "a", "save")
	mustControl(t, d, "a", "managedsave-remove")
	mustState(t, d, "a", "shut off (unknown)")
	if d.hasManagedSave("a") {
		t.Error("managedsave-remove kept the image")
	}
	mustControl(t, d, "a", "managedsave-remove") // nothing to do: fine, as virsh
	if err := d.Remove("a"); err != nil {
		t.Errorf("undefine after managedsave-remove: %v", err)
	}
}

// TestSaveFileRestore: save FILE and restore FILE, with --running and
// --paused, and the checks restore makes of whose image it is.
func TestSaveFileRestore(t *testing.T) {
	d := newDriver(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "a.img")
	for _, n := range []string{"a", "b"} {
		d.Create(n)
		if err := d.Define(n, []byte(minimalXML(n))); err != nil {
			t.Fatal(err)
		}
	}
	mustControl(t, d, "a", "start --paused")
	mustControl(t, d, "a", "save "+file)
	mustState(t, d, "a", "shut off (saved)")
	if d.hasManagedSave("a") {
		t.Error("save FILE made a managed image")
	}
	orig, _ := os.ReadFile(file)

	if err := d.Control(context.Background(), "b", "restore "+file); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `domain "a"`) {
		t.Errorf("restore of a's image into b: %v, want EINVAL naming a", err)
	}
	mustState(t, d, "b", "shut off (failed)")

	// The same name with another UUID is another domain.
	cfg, _ := d.Config("a")
	d.Remove("a")
	d.Create("a")
	if err := d.Define("a", []byte(minimalXML("a"))); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(context.Background(), "a", "restore "+file); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "UUID") {
		t.Errorf("restore into a new domain of the same name: %v, want EINVAL about the UUID", err)
	}
	if err := d.Define("a", cfg); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"restore", "restore " + file + " --paused --running", "restore " + file + " extra", "restore rel.img"} {
		if err := d.Control(context.Background(), "a", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %v, want EINVAL", bad, err)
		}
	}

	mustControl(t, d, "a", "restore "+file)
	mustState(t, d, "a", "paused (user)") // saved paused
	mustControl(t, d, "a", "destroy")
	mustControl(t, d, "a", "restore "+file+" --running")
	mustState(t, d, "a", "running (restored)")
	if err := d.Control(context.Background(), "a", "restore "+file); !errors.Is(err, ErrBusy) {
		t.Errorf("restore of a running domain: %v, want EBUSY", err)
	}
	if now, _ := os.ReadFile(file); !bytes.Equal(now, orig) {
		t.Error("restore changed the image")
	}
	// A running guest saved to FILE over an existing image replaces it.
	mustControl(t, d, "a", "save "+file)
	mustControl(t, d, "a", "restore "+file+" --paused")
	mustState(t, d, "a", "paused (user)")
}

// patchImage returns a copy of a good image with its header rewritten by fn
// (XML replaced by xml when not nil, with a matching CRC and length).
func patchImage(good []byte, xml []byte, fn func(h *saveHeader)) []byte {
	var h saveHeader
	binary.Read(bytes.NewReader(good), binary.LittleEndian, &h)
	rest := good[saveHeaderSize+int(h.XMLLen):]
	if xml == nil {
		xml = good[saveHeaderSize : saveHeaderSize+int(h.XMLLen)]
	} else {
		h.XMLLen, h.XMLCRC = uint32(len(xml)), crc32.ChecksumIEEE(xml)
	}
	if fn != nil {
		fn(&h)
	}
	return append(append(h.bytes(), xml...), rest...)
}

// TestRestoreBadImages feeds restore and a managed start images that are
// foreign, cut off or corrupt: each is a clear error, and the image, the
// definition and the shut-off state stay.
func TestRestoreBadImages(t *testing.T) {
	d := newDriver(t)
	d.Create("a")
	if err := d.Define("a", []byte(minimalXML("a"))); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	goodPath := filepath.Join(dir, "good.img")
	mustControl(t, d, "a", "start")
	mustControl(t, d, "a", "save "+goodPath)
	good, err := os.ReadFile(goodPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := d.Config("a")
	os.MkdirAll(filepath.Dir(d.managedSavePath("a")), 0o700)
	xmlLen := int(binary.LittleEndian.Uint32(good[16:]))
	stream := saveHeaderSize + xmlLen
	xml := good[saveHeaderSize:stream]

	flip := func(off int) []byte {
		b := bytes.Clone(good)
		b[off] ^= 0xff
		return b
	}
	// A stream QEMU must reject: right magic and length, garbage after.
	garbage := bytes.Clone(good)
	for i := stream + len(qemuStreamMagic); i < len(garbage); i++ {
		garbage[i] = 0xa5
	}
	tests := []struct {
		name string
		data []byte
		kind error
		msg  string
	}{
		{"empty", nil, ErrInvalid, "too short"},
		{"short header", good[:20], ErrInvalid, "too short"},
		{"bad magic", flip(0), ErrInvalid, "not a qemufs save image"},
		{"other version", patchImage(good, nil, func(h *saveHeader) { h.Version = 9 }), ErrInvalid, "version 9"},
		{"unfinished", patchImage(good, nil, func(h *saveHeader) { h.StreamLen = 0 }), ErrInvalid, "incomplete"},
		{"huge XML length", patchImage(good, nil, func(h *saveHeader) { h.XMLLen = 1 << 30 }), ErrInvalid, "XML length"},
		{"truncated", good[:len(good)-4096], ErrInvalid, "truncated"},
		{"trailing data", append(bytes.Clone(good), 0), ErrInvalid, "trailing"},
		{"corrupt XML", flip(saveHeaderSize + 10), ErrInvalid, "checksum"},
		{"bad XML", patchImage(good, []byte("<domain><name>a</name"), nil), ErrInvalid, "XML"},
		{"other domain", patchImage(good, bytes.Replace(xml, []byte("<name>a</name>"), []byte("<name>z</name>"), 1), nil), ErrInvalid, `domain "z"`},
		{"missing emulator", patchImage(good, bytes.Replace(xml, []byte("<emulator>"), []byte("<emulator>/nope"), 1), nil), ErrInvalid, "/nope"},
		{"not a QEMU stream", flip(stream), ErrInvalid, "not a QEMU migration stream"},
		{"QEMU rejects the stream", garbage, ErrIO, "could not load"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, managed := range []bool{false, true} {
				path := filepath.Join(dir, "bad.img")
				cmd := "restore " + path
				if managed {
					path = d.managedSavePath("a")
					cmd = "start"
				}
				if err := os.WriteFile(path, tt.data, 0o600); err != nil {
					t.Fatal(err)
				}
				err := d.Control(context.Background(), "a", cmd)
				if !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.msg) {
					t.Fatalf("%s: %v; want %v mentioning %q", cmd, err, tt.kind, tt.msg)
				}
				if e, _ := d.LastError("a"); e != err.Error() {
					t.Errorf("error file %q, want %q", e, err)
				}
				if now, err := os.ReadFile(path); err != nil || !bytes.Equal(now, tt.data) {
					t.Errorf("%s: the image changed or vanished (%v)", cmd, err)
				}
				if now, _ := d.Config("a"); !bytes.Equal(now, cfg) {
					t.Errorf("%s: the definition changed", cmd)
				}
				want := "shut off (failed)"
				if managed {
					want = "shut off (saved)"
				}
				mustState(t, d, "a", want)
				if d.Active("a") {
					t.Fatal("QEMU runs after a failed restore")
				}
				os.Remove(path)
			}
		})
	}
	// The good image still restores, and --force-boot over a bad one boots.
	mustControl(t, d, "a", "restore "+goodPath)
	mustState(t, d, "a", "running (restored)")
	mustControl(t, d, "a", "destroy")
	os.WriteFile(d.managedSavePath("a"), garbage, 0o600)
	mustControl(t, d, "a", "start --force-boot")
	mustState(t, d, "a", "running (booted)")
	if d.hasManagedSave("a") {
		t.Error("--force-boot kept the bad image")
	}
}

// TestSaveFailures: a save that cannot complete leaves the guest running
// and no image behind.
func TestSaveFailures(t *testing.T) {
	d := newDriver(t)
	d.Create("a")
	if err := d.Define("a", []byte(minimalXML("a"))); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(context.Background(), "a", "save"); !errors.Is(err, ErrBusy) {
		t.Errorf("save of a shut-off domain: %v, want EBUSY", err)
	}
	mustControl(t, d, "a", "start")
	if err := d.Control(context.Background(), "a", "save /nonexistent-dir/x.img"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("save into a missing directory: %v", err)
	}
	mustState(t, d, "a", "running (booted)")
	if err := d.Control(context.Background(), "a", "save /dev/null"); !errors.Is(err, ErrInvalid) {
		t.Errorf("save over a device: %v", err)
	}

	// An interrupted save is cancelled and the guest runs on.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Control(ctx, "a", "save "+t.TempDir()+"/x.img"); !errors.Is(err, ErrInterrupted) {
		t.Errorf("interrupted save: %v, want EINTR", err)
	}
	mustState(t, d, "a", "running (save canceled)")

	// A full file system: a small tmpfs.
	full := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", full).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { syscall.Unmount(full, syscall.MNT_DETACH) })
	err := d.Control(context.Background(), "a", "save "+full+"/a.img")
	if !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "no space") {
		t.Fatalf("save to a full file system: %v, want EIO about space", err)
	}
	mustState(t, d, "a", "running (save canceled)")
	if entries, _ := os.ReadDir(full); len(entries) > 0 {
		t.Errorf("left in the full file system: %v", entries)
	}
	// The guest runs on and can still be saved.
	mustControl(t, d, "a", "save "+t.TempDir()+"/a.img")
	mustState(t, d, "a", "shut off (saved)")
}
