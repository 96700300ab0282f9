package corpus_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/beevik/etree"
	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/domain/qemutest"
)

// preparer makes the host resources a corpus case needs, rewriting the
// definition to point at them, or says why the case cannot run here.
type preparer struct {
	dir   string
	name  string
	files map[string]string // original path -> local file
	n     int
	vnc   int
	spice int
	// spiceTLS is the port of a SPICE TLS listener; tlsDir its certificates.
	spiceTLS int
	tlsDir   string
	close    []io.Closer
	shm      []string
	// wasKVM is set when a type='kvm' guest is run under TCG.
	wasKVM bool
}

var (
	portMu   sync.Mutex
	nextPort = 21000
)

// freePort returns a TCP port nobody listens on; ports are never handed
// out twice in one run, so parallel QEMUs do not collide.
func freePort() int {
	portMu.Lock()
	defer portMu.Unlock()
	for {
		p := nextPort
		nextPort++
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			l.Close()
			return p
		}
	}
}

func (p *preparer) path(base string) string {
	p.n++
	return filepath.Join(p.dir, fmt.Sprintf("%d-%s", p.n, base))
}

func (p *preparer) options() domain.CommandOptions {
	key := filepath.Join(p.dir, "master-key.aes")
	os.WriteFile(key, testMasterKey, 0o600)
	return withTestSecrets(domain.CommandOptions{
		QMPFD:        qemutest.QMPFD,
		DomainDir:    p.dir,
		LibDir:       p.dir,
		VNCPort:      p.vnc,
		SpicePort:    p.spice,
		SpiceTLSPort: p.spiceTLS,
		SpiceTLSDir:  p.tlsDir,
	}, key)
}

func (p *preparer) cleanup() {
	for _, c := range p.close {
		c.Close()
	}
	for _, s := range p.shm {
		os.Remove(s)
	}
}

func attr(e *etree.Element, k string) string {
	if e == nil {
		return ""
	}
	if a := e.SelectAttr(k); a != nil {
		return a.Value
	}
	return ""
}

// image creates a disk image of format. The corpus reuses placeholder
// paths (/dev/HostVG/QEMUGuest1) for unrelated disks; those get images of
// their own, and only disks marked shareable share one (QEMU's image
// locking would otherwise refuse the second writer).
func (p *preparer) image(orig, format string, shared bool) (string, error) {
	p.n++
	key := orig + "|" + format + "|" + strconv.Itoa(p.n)
	if shared {
		key = orig + "|" + format
	}
	if f, ok := p.files[key]; ok {
		return f, nil
	}
	switch format {
	case "", "raw", "iso", "aio", "fat", "dir", "none":
		format = "raw"
	case "qcow2", "qcow", "qed", "vmdk", "vdi", "vpc", "vhdx":
	case "luks", "luks2":
		return "", errSkip("disk image format " + format + " without <encryption>")
	default:
		return "", errSkip("disk image format " + format + " cannot be created with qemu-img")
	}
	f := p.path("disk." + format)
	out, err := exec.Command("qemu-img", "create", "-q", "-f", format, f, "8M").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("qemu-img create -f %s: %v: %s", format, err, out)
	}
	if p.files == nil {
		p.files = map[string]string{}
	}
	p.files[key] = f
	return f, nil
}

type errSkip string

func (e errSkip) Error() string { return string(e) }

// fakeKernel writes a minimal x86 Linux boot-protocol image: enough for
// QEMU to load it (the guest never runs: the VM stays paused).
func fakeKernel(path string) error {
	b := make([]byte, 64*1024)
	b[0x1f1] = 4 // setup sectors
	b[0x1fe], b[0x1ff] = 0x55, 0xaa
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x206:], 0x020f) // protocol 2.15
	b[0x211] = 0x01                                  // LOADED_HIGH
	binary.LittleEndian.PutUint32(b[0x22c:], 0x7fffffff)
	binary.LittleEndian.PutUint32(b[0x238:], 2047)
	return os.WriteFile(path, b, 0o644)
}

func zeroFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(size)
}

func children(e *etree.Element, tag string) []*etree.Element {
	if e == nil {
		return nil
	}
	var out []*etree.Element
	for _, c := range e.ChildElements() {
		if c.Space == "" && c.Tag == tag {
			out = append(out, c)
		}
	}
	return out
}

func child(e *etree.Element, tag string) *etree.Element {
	if l := children(e, tag); len(l) > 0 {
		return l[0]
	}
	return nil
}

// prepare rewrites d in place. It returns a non-empty skip reason when the
// case needs something this host cannot have.
func (p *preparer) prepare(d *domain.Domain) (string, error) {
	skip, err := p.rewrite(d)
	if se, ok := err.(errSkip); ok {
		return string(se), nil
	}
	return skip, err
}

func (p *preparer) rewrite(d *domain.Domain) (string, error) {
	r := d.Root()
	// No /dev/kvm here: KVM guests run under TCG.
	if t := attr(r, "type"); t == "kvm" || t == "hvf" {
		r.CreateAttr("type", "qemu")
		p.wasKVM = true
	}
	devs := child(r, "devices")
	if emu := child(devs, "emulator"); emu != nil {
		if _, err := os.Stat(strings.TrimSpace(emu.Text())); err != nil {
			emu.SetText("/usr/bin/qemu-system-x86_64")
		}
	}
	if cpu := child(r, "cpu"); cpu != nil && attr(cpu, "mode") == "host-passthrough" {
		return "KVM-only: CPU mode host-passthrough", nil
	}
	if mb := child(r, "memoryBacking"); child(mb, "hugepages") != nil {
		return "hugepages: no hugetlbfs mounted on this host", nil
	} else if a := child(mb, "allocation"); attr(a, "mode") == "immediate" && d.MemoryKiB() > 2<<20 {
		return fmt.Sprintf("host memory: preallocating %d MiB", d.MemoryKiB()/1024), nil
	}
	for _, m := range children(devs, "memory") {
		if child(child(m, "source"), "pagesize") != nil {
			return "hugepages: memory device with a page size", nil
		}
	}
	if err := p.os(r); err != nil {
		return "", err
	}
	for _, disk := range children(devs, "disk") {
		if err := p.disk(disk); err != nil {
			return "", err
		}
	}
	for _, tag := range []string{"serial", "parallel", "console", "channel", "redirdev", "smartcard"} {
		for _, e := range children(devs, tag) {
			if err := p.chardev(e); err != nil {
				return "", err
			}
		}
	}
	for _, rng := range children(devs, "rng") {
		if b := child(rng, "backend"); attr(b, "model") == "egd" {
			if err := p.chardev(b); err != nil {
				return "", err
			}
		} else if attr(b, "model") == "random" {
			if path := strings.TrimSpace(b.Text()); path != "" && path != "/dev/urandom" && path != "/dev/random" {
				if _, err := os.Stat(path); err != nil {
					return "host device: rng " + path, nil
				}
			}
		}
	}
	for _, g := range children(devs, "graphics") {
		if skip := p.graphics(g); skip != "" {
			return skip, nil
		}
	}
	for _, n := range children(devs, "interface") {
		if skip, err := p.iface(n); skip != "" || err != nil {
			return skip, err
		}
	}
	for _, f := range children(devs, "filesystem") {
		if d := child(f, "driver"); attr(d, "type") == "virtiofs" {
			return "virtiofsd: not installed on this host", nil
		}
		if src := child(f, "source"); src != nil && attr(src, "dir") != "" {
			dir := p.path("fs")
			if err := os.Mkdir(dir, 0o755); err != nil {
				return "", err
			}
			src.CreateAttr("dir", dir)
		}
	}
	for _, s := range children(devs, "shmem") {
		name := fmt.Sprintf("qcorpus-%d-%s", os.Getpid(), p.name)
		if len(name) > 100 {
			name = name[:100]
		}
		s.CreateAttr("name", name)
		p.shm = append(p.shm, "/dev/shm/"+name)
	}
	for _, m := range children(devs, "memory") {
		if src := child(m, "source"); src != nil {
			if pe := child(src, "path"); pe != nil {
				f := p.path("nvdimm")
				if err := zeroFile(f, 1<<30); err != nil {
					return "", err
				}
				pe.SetText(f)
			}
		}
		if attr(m, "model") == "sgx-epc" {
			return "host device: SGX", nil
		}
	}
	switch {
	case len(children(devs, "hostdev")) > 0:
		return "host device: hostdev", nil
	case len(children(devs, "tpm")) > 0:
		return "swtpm/TPM device: not available on this host", nil
	case len(children(devs, "vsock")) > 0:
		return "host device: /dev/vhost-vsock", nil
	}
	for _, in := range children(devs, "input") {
		if t := attr(in, "type"); t == "passthrough" || t == "evdev" {
			return "host device: input " + t, nil
		}
	}
	for _, a := range children(devs, "audio") {
		switch attr(a, "type") {
		case "pulseaudio", "jack", "sdl", "coreaudio", "alsa", "oss", "pipewire":
			return "host audio: " + attr(a, "type"), nil
		case "file":
			a.CreateAttr("path", p.path("audio.wav"))
		}
	}
	for _, v := range children(devs, "video") {
		if acc := child(child(v, "model"), "acceleration"); acc != nil && attr(acc, "accel3d") == "yes" {
			return "GPU: 3D acceleration", nil
		}
		if d := child(v, "driver"); attr(d, "name") == "vhostuser" {
			return "GPU: vhost-user-gpu", nil
		}
	}
	return "", nil
}

func (p *preparer) os(r *etree.Element) error {
	os_ := child(r, "os")
	for _, tag := range []string{"kernel", "initrd", "dtb"} {
		e := child(os_, tag)
		if e == nil || strings.TrimSpace(e.Text()) == "" {
			continue
		}
		f := p.path(tag)
		var err error
		if tag == "kernel" {
			err = fakeKernel(f)
		} else {
			err = zeroFile(f, 4096)
		}
		if err != nil {
			return err
		}
		e.SetText(f)
	}
	if l := child(os_, "loader"); l != nil && strings.TrimSpace(l.Text()) != "" {
		f := p.path("loader.fd")
		size := int64(2 << 20)
		if attr(l, "type") != "pflash" && attr(l, "readonly") != "yes" {
			// -bios: use the real SeaBIOS so QEMU accepts the image
			data, err := os.ReadFile("/usr/share/seabios/bios-256k.bin")
			if err != nil {
				return err
			}
			if err := os.WriteFile(f, data, 0o644); err != nil {
				return err
			}
		} else if err := zeroFile(f, size); err != nil {
			return err
		}
		l.SetText(f)
	}
	for _, t := range children(child(os_, "acpi"), "table") {
		f := p.path("acpi.dat")
		if err := zeroFile(f, 64); err != nil {
			return err
		}
		t.SetText(f)
	}
	if n := child(os_, "nvram"); n != nil {
		if attr(n, "type") == "network" {
			return errSkip("network block server: NVRAM")
		}
		f := p.path("vars.fd")
		if err := zeroFile(f, 128<<10); err != nil {
			return err
		}
		if src := child(n, "source"); src != nil {
			src.CreateAttr("file", f)
		} else if strings.TrimSpace(n.Text()) != "" {
			n.SetText(f)
		}
		if attr(n, "template") != "" {
			n.CreateAttr("template", f)
		}
	}
	return nil
}

func (p *preparer) disk(disk *etree.Element) error {
	typ := attr(disk, "type")
	if typ == "" {
		typ = "file"
	}
	src := child(disk, "source")
	switch typ {
	case "network":
		return errSkip("network block server: disk protocol " + attr(src, "protocol"))
	case "volume":
		return errSkip("storage pool volume")
	case "nvme":
		return errSkip("host device: NVMe")
	case "vhostuser":
		return errSkip("vhost-user block server")
	}
	encrypted := child(disk, "encryption") != nil || child(src, "encryption") != nil
	format := attr(child(disk, "driver"), "type")
	if src != nil {
		switch typ {
		case "file", "block":
			orig := attr(src, "file") + attr(src, "dev")
			if orig == "" {
				break
			}
			if attr(disk, "device") == "lun" {
				return errSkip("host device: SCSI LUN passthrough")
			}
			var f string
			var err error
			if encrypted {
				f, err = p.encryptedImage(format)
			} else {
				f, err = p.image(orig, format, child(disk, "shareable") != nil)
			}
			if err != nil {
				return err
			}
			disk.CreateAttr("type", "file")
			src.RemoveAttr("dev")
			src.CreateAttr("file", f)
		case "dir":
			dir := p.path("dir")
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
			src.CreateAttr("dir", dir)
		}
	}
	for bs := child(disk, "backingStore"); bs != nil; bs = child(bs, "backingStore") {
		bsrc := child(bs, "source")
		if bsrc == nil {
			continue
		}
		switch attr(bs, "type") {
		case "network":
			return errSkip("network block server: backing store")
		case "file", "block", "":
			f, err := p.image(attr(bsrc, "file")+attr(bsrc, "dev"), attr(child(bs, "format"), "type"), false)
			if err != nil {
				return err
			}
			bs.CreateAttr("type", "file")
			bsrc.RemoveAttr("dev")
			bsrc.CreateAttr("file", f)
		}
	}
	return nil
}

// chardev rewrites a character device backend to local resources.
func (p *preparer) chardev(e *etree.Element) error {
	typ := attr(e, "type")
	for _, src := range children(e, "source") {
		switch typ {
		case "file":
			src.CreateAttr("path", p.path("chr.log"))
		case "pipe":
			base := p.path("pipe")
			for _, s := range []string{base + ".in", base + ".out"} {
				if err := syscall.Mkfifo(s, 0o600); err != nil {
					return err
				}
			}
			// QEMU opens path.in/path.out read-write; keep an end open so it
			// does not block.
			src.CreateAttr("path", base)
		case "dev":
			path := attr(src, "path")
			return errSkip("host device: " + path)
		case "unix":
			if attr(src, "path") == "" && attr(src, "mode") != "connect" {
				continue
			}
			sock := p.path("s")
			src.CreateAttr("path", sock)
			if attr(src, "mode") == "connect" {
				l, err := net.Listen("unix", sock)
				if err != nil {
					return err
				}
				p.close = append(p.close, l)
			}
		case "tcp", "udp":
			port := freePort()
			src.CreateAttr("service", strconv.Itoa(port))
			if h := attr(src, "host"); h != "" {
				src.CreateAttr("host", "127.0.0.1")
			}
			if typ == "tcp" && attr(src, "mode") != "bind" {
				l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
				if err != nil {
					return err
				}
				p.close = append(p.close, l)
				if attr(src, "host") == "" {
					src.CreateAttr("host", "127.0.0.1")
				}
			}
		}
	}
	if lg := child(e, "log"); lg != nil {
		lg.CreateAttr("file", p.path("chr-log"))
	}
	return nil
}

func localAddr(a string) bool {
	ip := net.ParseIP(strings.Trim(a, "[]"))
	return a == "" || (ip != nil && (ip.IsLoopback() || ip.IsUnspecified()))
}

func (p *preparer) graphics(g *etree.Element) string {
	switch attr(g, "type") {
	case "vnc", "spice":
	case "egl-headless":
		return "GPU: egl-headless"
	case "sdl":
		return "host display: SDL (no SDL module/display)"
	case "dbus":
		return "host D-Bus display"
	default:
		return ""
	}
	if gl := child(g, "gl"); gl != nil && attr(gl, "enable") == "yes" {
		return "GPU: OpenGL"
	}
	port := freePort()
	if attr(g, "type") == "vnc" {
		p.vnc = port
	} else {
		p.spice = port
	}
	if a := attr(g, "port"); a != "" && a != "-1" && a != "0" {
		g.CreateAttr("port", strconv.Itoa(port))
	}
	if attr(g, "type") == "spice" {
		p.spiceTLS = freePort()
		if t := attr(g, "tlsPort"); t != "" && t != "-1" && t != "0" {
			g.CreateAttr("tlsPort", strconv.Itoa(p.spiceTLS))
		}
	}
	if ws := attr(g, "websocket"); ws != "" && ws != "-1" && ws != "0" {
		g.CreateAttr("websocket", strconv.Itoa(freePort()))
	}
	if a := attr(g, "listen"); !localAddr(a) {
		g.CreateAttr("listen", "127.0.0.1")
	}
	for _, l := range children(g, "listen") {
		switch attr(l, "type") {
		case "address":
			if !localAddr(attr(l, "address")) {
				l.CreateAttr("address", "127.0.0.1")
			}
		case "socket":
			if attr(l, "socket") != "" {
				l.CreateAttr("socket", p.path("g.sock"))
			}
		case "network":
			l.CreateAttr("type", "address")
			l.RemoveAttr("network")
		}
	}
	if s := attr(g, "socket"); s != "" {
		g.CreateAttr("socket", p.path("g.sock"))
	}
	return ""
}

func (p *preparer) iface(n *etree.Element) (string, error) {
	switch t := attr(n, "type"); t {
	case "user", "null":
		return "", nil
	case "server", "client", "mcast", "udp":
		src := child(n, "source")
		if src == nil {
			return "", nil
		}
		if t == "mcast" {
			return "host networking: multicast", nil
		}
		port := freePort()
		src.CreateAttr("port", strconv.Itoa(port))
		src.CreateAttr("address", "127.0.0.1")
		if l := child(src, "local"); l != nil {
			l.CreateAttr("address", "127.0.0.1")
			l.CreateAttr("port", strconv.Itoa(freePort()))
		}
		if t == "client" {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				return "", err
			}
			p.close = append(p.close, l)
		}
		return "", nil
	case "vhostuser":
		return "vhost-user network server", nil
	default:
		return "host networking: interface type " + t, nil
	}
}
