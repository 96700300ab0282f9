package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/qemufs/qemufs/internal/errkind"
)

// Image is what a volume resolves to for a guest's disk: its file, the
// format QEMU opens it with (raw for a LUKS image, whose encryption the
// disk's <encryption> names), and its backing chain, nearest first.
type Image struct {
	Path   string
	Format string
	Block  bool
	// Encrypted: a LUKS image, or LUKS inside qcow2.
	Encrypted bool
	Backing   []Image
}

// imageInfo is what qemu-img info says of one image of a chain.
type imageInfo struct {
	Filename    string `json:"filename"`
	Format      string `json:"format"`
	VirtualSize uint64 `json:"virtual-size"`
	ActualSize  uint64 `json:"actual-size"`
	Encrypted   bool   `json:"encrypted"`
	Backing     string `json:"full-backing-filename"`
	BackingFmt  string `json:"backing-filename-format"`
}

// info runs qemu-img info on an image and its backing chain. -U: a
// running guest holds the image's lock.
func info(ctx context.Context, path string) ([]imageInfo, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", "--backing-chain", path).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("qemu-img info %s: %s", path, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	var chain []imageInfo
	if err := json.Unmarshal(out, &chain); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("qemu-img info %s: no image", path)
	}
	return chain, nil
}

// volumePath is a volume's file in its pool.
func volumePath(p *Pool, vol string) string { return filepath.Join(p.Target, vol) }

// VolumeNames lists a pool's volumes: the regular files in its target
// (an active pool only) and the slots made by mkdir.
func (m *Manager) VolumeNames(pool string) []string {
	e, err := m.lookup(pool)
	if err != nil {
		return nil
	}
	m.mu.Lock()
	def, active := e.def, e.active
	names := map[string]bool{}
	for s := range e.slots {
		names[s] = true
	}
	m.mu.Unlock()
	if def != nil && active {
		ents, _ := os.ReadDir(def.Target)
		for _, de := range ents {
			if de.Type().IsRegular() && !strings.HasPrefix(de.Name(), ".") && NameRE.MatchString(de.Name()) {
				names[de.Name()] = true
			}
		}
	}
	var out []string
	for n := range names {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// VolumeExists tells whether vol is a volume or a slot of pool.
func (m *Manager) VolumeExists(pool, vol string) bool {
	e, err := m.lookup(pool)
	if err != nil {
		return false
	}
	m.mu.Lock()
	def, active, slot := e.def, e.active, e.slots[vol]
	m.mu.Unlock()
	if slot {
		return true
	}
	if def == nil || !active || !NameRE.MatchString(vol) {
		return false
	}
	fi, err := os.Stat(volumePath(def, vol))
	return err == nil && fi.Mode().IsRegular()
}

// CreateVolume makes an empty volume slot in an active pool; writing its
// config.xml creates the image.
func (m *Manager) CreateVolume(pool, vol string) error {
	e, err := m.lookup(pool)
	if err != nil {
		return err
	}
	if !NameRE.MatchString(vol) {
		return errkind.Errorf(kindInvalid, "volume name %q: use letters, digits and _ . + - (not starting with . + -)", vol)
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	p, err := m.active(e, "create a volume in")
	if err != nil {
		return err
	}
	if _, err := os.Lstat(volumePath(p, vol)); err == nil {
		return errkind.Errorf(kindExist, "volume %s/%s exists already", pool, vol)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.slots[vol] {
		return errkind.Errorf(kindExist, "volume %s/%s exists already", pool, vol)
	}
	e.slots[vol] = true
	return nil
}

// DeleteVolume deletes a volume's file (or drops an empty slot).
func (m *Manager) DeleteVolume(pool, vol string) error {
	e, err := m.lookup(pool)
	if err != nil {
		return err
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	m.mu.Lock()
	slot := e.slots[vol]
	delete(e.slots, vol)
	delete(e.volErr, vol)
	m.mu.Unlock()
	p, err := m.active(e, "delete a volume of")
	if err != nil {
		if slot {
			return nil
		}
		return err
	}
	if g := m.user(volumePath(p, vol)); g != "" {
		return errkind.Errorf(kindBusy, "delete volume %s/%s: guest %s is using it", pool, vol, g)
	}
	if err := os.Remove(volumePath(p, vol)); err != nil {
		if errors.Is(err, os.ErrNotExist) && slot {
			return nil
		}
		if errors.Is(err, os.ErrNotExist) {
			return errkind.Errorf(kindNotFound, "volume %s/%s does not exist", pool, vol)
		}
		return errkind.Errorf(kindIO, "delete volume %s/%s: %w", pool, vol, err)
	}
	return nil
}

// VolumePath returns the file of an existing volume.
func (m *Manager) VolumePath(pool, vol string) (string, error) {
	e, err := m.lookup(pool)
	if err != nil {
		return "", err
	}
	p, err := m.active(e, "use")
	if err != nil {
		return "", err
	}
	path := volumePath(p, vol)
	if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
		return "", errkind.Errorf(kindNotFound, "volume %s/%s does not exist (or is not created yet: write its config.xml)", pool, vol)
	}
	return path, nil
}

// VolumeError is the message of the volume's last failed operation.
func (m *Manager) VolumeError(pool, vol string) string {
	e, err := m.lookup(pool)
	if err != nil {
		return ""
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return e.volErr[vol]
}

// VolumeConfig describes an existing volume as libvirt's volume XML, its
// sizes read from the image (capacity) and the file's blocks (allocation).
// An empty slot has none.
func (m *Manager) VolumeConfig(ctx context.Context, pool, vol string) ([]byte, error) {
	e, err := m.lookup(pool)
	if err != nil {
		return nil, err
	}
	p, err := m.active(e, "use")
	if err != nil {
		return nil, err
	}
	path := volumePath(p, vol)
	fi, err := os.Stat(path)
	if err != nil {
		m.mu.Lock()
		slot := e.slots[vol]
		m.mu.Unlock()
		if slot {
			return nil, nil
		}
		return nil, errkind.Errorf(kindNotFound, "volume %s/%s does not exist", pool, vol)
	}
	chain, err := info(ctx, path)
	if err != nil {
		return nil, errkind.Errorf(kindIO, "volume %s/%s: %w", pool, vol, err)
	}
	top := chain[0]
	var alloc uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		alloc = uint64(st.Blocks) * 512
	}
	format, encrypted := top.Format, top.Encrypted
	if format == "luks" {
		format, encrypted = "raw", true
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "<volume type='file'>\n  <name>%s</name>\n  <key>%s</key>\n", esc(vol), esc(path))
	fmt.Fprintf(&b, "  <capacity unit='bytes'>%d</capacity>\n  <allocation unit='bytes'>%d</allocation>\n  <physical unit='bytes'>%d</physical>\n", top.VirtualSize, alloc, fi.Size())
	fmt.Fprintf(&b, "  <target>\n    <path>%s</path>\n    <format type='%s'/>\n", esc(path), esc(format))
	owner, group := 0, 0
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		owner, group = int(st.Uid), int(st.Gid)
	}
	fmt.Fprintf(&b, "    <permissions>\n      <mode>%04o</mode>\n      <owner>%d</owner>\n      <group>%d</group>\n    </permissions>\n", fi.Mode().Perm(), owner, group)
	if encrypted {
		b.WriteString("    <encryption format='luks'/>\n")
	}
	b.WriteString("  </target>\n")
	if len(chain) > 1 {
		bf := chain[1].Format
		fmt.Fprintf(&b, "  <backingStore>\n    <path>%s</path>\n    <format type='%s'/>\n  </backingStore>\n", esc(chain[1].Filename), esc(bf))
	}
	b.WriteString("</volume>\n")
	return b.Bytes(), nil
}

// Resolve gives what a <disk type='volume'> of a guest opens.
func (m *Manager) Resolve(ctx context.Context, pool, vol string) (Image, error) {
	path, err := m.VolumePath(pool, vol)
	if err != nil {
		return Image{}, err
	}
	chain, err := info(ctx, path)
	if err != nil {
		return Image{}, errkind.Errorf(kindIO, "volume %s/%s: %w", pool, vol, err)
	}
	conv := func(i imageInfo) Image {
		f := i.Format
		if f == "luks" {
			f = "raw"
		}
		return Image{Path: i.Filename, Format: f, Encrypted: i.Encrypted || i.Format == "luks"}
	}
	img := conv(chain[0])
	img.Path = path
	for _, c := range chain[1:] {
		img.Backing = append(img.Backing, conv(c))
	}
	return img, nil
}

// DefineVolume creates the volume vol of pool from its XML with qemu-img:
// raw or qcow2, a qcow2 over a backing store, LUKS encryption with a
// secret (a raw LUKS image, or LUKS inside qcow2). An existing volume is
// not changed (EEXIST): delete it first.
func (m *Manager) DefineVolume(ctx context.Context, pool, vol string, data []byte) (err error) {
	e, err := m.lookup(pool)
	if err != nil {
		return err
	}
	defer func() {
		m.mu.Lock()
		e.volErr[vol] = ""
		if err != nil {
			e.volErr[vol] = err.Error()
		}
		m.mu.Unlock()
	}()
	v, err := ParseVolume(data)
	if err != nil {
		return errkind.Errorf(kindInvalid, "create volume %s/%s: %w", pool, vol, err)
	}
	if v.Name != vol {
		return errkind.Errorf(kindInvalid, "create volume %s/%s: the XML names it %q", pool, vol, v.Name)
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	p, err := m.active(e, "create a volume in")
	if err != nil {
		return err
	}
	path := volumePath(p, vol)
	if _, err := os.Lstat(path); err == nil {
		return errkind.Errorf(kindExist, "create volume %s/%s: it exists already (rmdir it first)", pool, vol)
	}
	args := []string{"create", "-q"}
	var opts []string
	if v.Encrypted {
		if m.opts.Secret == nil {
			return errkind.Errorf(kindInvalid, "create volume %s/%s: encryption needs the secret driver", pool, vol)
		}
		value, err := m.opts.Secret(v.SecretUUID, "volume", v.SecretUsage)
		if err != nil {
			return errkind.Errorf(kindInvalid, "create volume %s/%s: %w", pool, vol, err)
		}
		// The passphrase reaches qemu-img in a file, never its argv.
		f, err := os.CreateTemp(m.opts.RunDir, ".secret-*")
		if err != nil {
			return errkind.Errorf(kindIO, "create volume %s/%s: %w", pool, vol, err)
		}
		defer os.Remove(f.Name())
		_, werr := f.Write(value)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return errkind.Errorf(kindIO, "create volume %s/%s: %w", pool, vol, werr)
		}
		args = append(args, "--object", "secret,id=sec0,format=raw,file="+f.Name())
		if v.Format == "raw" {
			args = append(args, "-f", "luks")
			opts = append(opts, "key-secret=sec0")
		} else {
			args = append(args, "-f", "qcow2")
			opts = append(opts, "encrypt.format=luks", "encrypt.key-secret=sec0")
		}
	} else {
		args = append(args, "-f", v.Format)
	}
	if v.HasAlloc && v.Allocation >= v.Capacity && v.BackingPath == "" {
		opts = append(opts, "preallocation=falloc")
	}
	if v.BackingPath != "" {
		bp := v.BackingPath
		if !filepath.IsAbs(bp) {
			bp = volumePath(p, bp)
		}
		chain, err := info(ctx, bp)
		if err != nil {
			return errkind.Errorf(kindInvalid, "create volume %s/%s: backing store: %w", pool, vol, err)
		}
		bf := v.BackingFormat
		if bf == "" {
			bf = chain[0].Format
		}
		args = append(args, "-b", bp, "-F", bf)
	}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	args = append(args, path, fmt.Sprint(v.Capacity))
	if out, err := qemuImgCreate(ctx, args); err != nil {
		os.Remove(path)
		return errkind.Errorf(kindInvalid, "create volume %s/%s: qemu-img %s: %s", pool, vol, strings.Join(args, " "), strings.TrimSpace(string(out)))
	}
	mode := os.FileMode(0o600)
	if v.Mode != 0 {
		mode = os.FileMode(v.Mode)
	}
	if err := os.Chmod(path, mode); err != nil {
		os.Remove(path)
		return errkind.Errorf(kindIO, "create volume %s/%s: %w", pool, vol, err)
	}
	m.mu.Lock()
	delete(e.slots, vol)
	m.mu.Unlock()
	return nil
}

// qemuImgCreate runs qemu-img create. QEMU times PBKDF2 for a LUKS key
// slot with the thread's CPU clock and gives up with "Unable to get
// accurate CPU usage" when a measurement comes back empty, which happens
// on a busy machine, for a while: that one failure is retried, with a
// growing pause (12 ms a try; 5 tries at once were seen all failing).
func qemuImgCreate(ctx context.Context, args []string) ([]byte, error) {
	for try := 1; ; try++ {
		out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput()
		if err == nil || try == 8 || !strings.Contains(string(out), "Unable to get accurate CPU usage") {
			return out, err
		}
		select {
		case <-ctx.Done():
			return out, err
		case <-time.After(time.Duration(try) * 150 * time.Millisecond):
		}
	}
}
