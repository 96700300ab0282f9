package e2e

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	goimage "image"
	"image/png"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qemufs/qemufs/tests/guest"
	"github.com/qemufs/qemufs/tests/harness"
)

// display is a VGA card and a VNC server on an autoport.
const display = `    <video><model type='vga'/></video>
    <graphics type='vnc' port='-1'/>`

// TestScreenshotVNC: screen.png is a PNG of the guest's VGA display; VNC
// autoport takes the first free port of qemu.conf's range (skipping one in
// use), live.xml shows it, and a VNC client there sees a framebuffer of
// the screenshot's size and pixels.
func TestScreenshotVNC(t *testing.T) {
	t.Parallel()
	// The range starts at a port this test holds, so autoport must skip it.
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	min := held.Addr().(*net.TCPAddr).Port
	max := min + 40
	if max > 65535 {
		min, max = 65535-40, 65535
	}
	m := harness.Start(t, harness.Options{QEMUConf: fmt.Sprintf("remote_display_port_min = %d\nremote_display_port_max = %d\n", min, max)})
	g := harness.Guest(t)
	m.Define("g", harness.GuestXML(t, "g", guest.ActionNone, display))
	if _, err := os.ReadFile(m.Path("g", "screen.png")); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("screen.png of a shut-off domain: %v, want EBUSY", err)
	}
	m.MustCtl("g", "start")
	m.WaitConsole("g", g.ReadyLine, boot)

	port := vncPort(t, m.Read("g", "live.xml"))
	if port <= min || port > max {
		t.Errorf("VNC autoport %d, want in %d..%d and not %d (in use)", port, min+1, max, min)
	}

	// QEMU listens where live.xml says.
	q, err := m.QMP("g", `{"execute":"query-vnc"}`, reply)
	if err != nil || !strings.Contains(q, fmt.Sprintf(`"service": "%d"`, port)) {
		t.Errorf("query-vnc: %s, %v; live.xml says port %d", q, err, port)
	}

	img := screenshot(t, m, "g")
	b := img.Bounds()
	t.Logf("screen.png: %dx%d", b.Dx(), b.Dy())
	switch [2]int{b.Dx(), b.Dy()} {
	case [2]int{720, 400}, [2]int{640, 480}, [2]int{800, 600}, [2]int{1024, 768}, [2]int{1280, 800}:
	default:
		t.Errorf("screenshot of %dx%d: not a VGA mode", b.Dx(), b.Dy())
	}

	fb, err := vncFramebuffer(fmt.Sprintf("127.0.0.1:%d", port), 30*time.Second)
	if err != nil {
		t.Fatalf("VNC on port %d: %v", port, err)
	}
	t.Logf("VNC server %q: %dx%d", fb.name, fb.w, fb.h)
	if fb.w != b.Dx() || fb.h != b.Dy() {
		t.Fatalf("VNC framebuffer %dx%d, screenshot %dx%d", fb.w, fb.h, b.Dx(), b.Dy())
	}
	// The pixels agree, but for a blinking text cursor.
	again := screenshot(t, m, "g")
	same, total := 0, fb.w*fb.h
	for y := 0; y < fb.h; y++ {
		for x := 0; x < fb.w; x++ {
			r, g, b, _ := again.At(x, y).RGBA()
			if fb.at(x, y) == [3]uint8{uint8(r >> 8), uint8(g >> 8), uint8(b >> 8)} {
				same++
			}
		}
	}
	if same < total*99/100 {
		t.Errorf("screen.png and the VNC framebuffer differ in %d of %d pixels", total-same, total)
	}
}

// TestScreenshotNoDisplay: a guest without a display has no screenshot:
// ENODEV, and error says why.
func TestScreenshotNoDisplay(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("g", bareXML("g", ""))
	m.MustCtl("g", "start --paused")
	_, err := os.ReadFile(m.Path("g", "screen.png"))
	if !errors.Is(err, syscall.ENODEV) {
		t.Errorf("screen.png without a display: %v, want ENODEV", err)
	}
	if msg := m.ErrorOf("g"); !regexp.MustCompile(`no display.*<video>`).MatchString(msg) {
		t.Errorf("error = %q, want the reason (no display, add <video>)", msg)
	}
}

// TestScreenshotPaused: a guest paused before its firmware ran still has
// a display to dump.
func TestScreenshotPaused(t *testing.T) {
	t.Parallel()
	m := harness.Start(t, harness.Options{})
	m.Define("g", bareXML("g", "<video><model type='vga'/></video>"))
	m.MustCtl("g", "start --paused")
	img := screenshot(t, m, "g")
	if b := img.Bounds(); b.Dx() < 320 || b.Dy() < 200 {
		t.Errorf("screenshot of %dx%d", b.Dx(), b.Dy())
	}
}

func screenshot(t *testing.T, m *harness.Mount, name string) goimage.Image {
	t.Helper()
	data, err := os.ReadFile(m.Path(name, "screen.png"))
	if err != nil {
		t.Fatalf("read screen.png: %v (error: %s)", err, m.ErrorOf(name))
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("screen.png (%d bytes) is not a PNG: %v", len(data), err)
	}
	return img
}

// vncPort finds the VNC port in a live XML.
func vncPort(t *testing.T, live string) int {
	t.Helper()
	mm := regexp.MustCompile(`<graphics type='vnc' port='(\d+)' autoport='yes'`).FindStringSubmatch(live)
	if mm == nil {
		t.Fatalf("live.xml has no autoport VNC port:\n%s", live)
	}
	n, _ := strconv.Atoi(mm[1])
	return n
}

// framebuffer is what a minimal RFB 3.8 client read from a VNC server.
type framebuffer struct {
	name string
	w, h int
	pf   pixelFormat
	pix  []byte // raw pixels, w*h*bpp/8, row by row
}

type pixelFormat struct {
	BPP, Depth, BigEndian, TrueColour uint8
	RedMax, GreenMax, BlueMax         uint16
	RedShift, GreenShift, BlueShift   uint8
	_                                 [3]byte
}

// at returns the RGB of pixel (x, y).
func (f *framebuffer) at(x, y int) [3]uint8 {
	n := int(f.pf.BPP / 8)
	p := f.pix[(y*f.w+x)*n:][:n]
	var v uint32
	for i := 0; i < n; i++ {
		if f.pf.BigEndian != 0 {
			v = v<<8 | uint32(p[i])
		} else {
			v |= uint32(p[i]) << (8 * i)
		}
	}
	c := func(shift uint8, max uint16) uint8 { return uint8((v >> shift) & uint32(max) * 255 / uint32(max)) }
	return [3]uint8{c(f.pf.RedShift, f.pf.RedMax), c(f.pf.GreenShift, f.pf.GreenMax), c(f.pf.BlueShift, f.pf.BlueMax)}
}

// vncFramebuffer speaks RFB 3.8 to addr: version, security type None,
// ClientInit, ServerInit, then one full framebuffer update in Raw
// encoding.
func vncFramebuffer(addr string, timeout time.Duration) (*framebuffer, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	r := bufio.NewReader(c)
	read := func(v any) error { return binary.Read(r, binary.BigEndian, v) }
	write := func(v any) error { return binary.Write(c, binary.BigEndian, v) }

	ver := make([]byte, 12)
	if _, err := io.ReadFull(r, ver); err != nil {
		return nil, fmt.Errorf("version: %w", err)
	}
	if !regexp.MustCompile(`^RFB 003\.00[378]\n$`).Match(ver) {
		return nil, fmt.Errorf("not an RFB server: %q", ver)
	}
	if _, err := c.Write([]byte("RFB 003.008\n")); err != nil {
		return nil, err
	}
	var n uint8
	if err := read(&n); err != nil {
		return nil, fmt.Errorf("security types: %w", err)
	}
	if n == 0 {
		var l uint32
		read(&l)
		reason := make([]byte, l)
		io.ReadFull(r, reason)
		return nil, fmt.Errorf("server refused: %s", reason)
	}
	types := make([]byte, n)
	if _, err := io.ReadFull(r, types); err != nil {
		return nil, err
	}
	if !bytes.Contains(types, []byte{1}) {
		return nil, fmt.Errorf("security types %v lack None (1)", types)
	}
	if err := write(uint8(1)); err != nil {
		return nil, err
	}
	var result uint32
	if err := read(&result); err != nil || result != 0 {
		return nil, fmt.Errorf("security result %d, %v", result, err)
	}
	if err := write(uint8(1)); err != nil { // ClientInit: shared
		return nil, err
	}
	var si struct {
		W, H uint16
		PF   pixelFormat
		NLen uint32
	}
	if err := read(&si); err != nil {
		return nil, fmt.Errorf("ServerInit: %w", err)
	}
	name := make([]byte, si.NLen)
	if _, err := io.ReadFull(r, name); err != nil {
		return nil, err
	}
	fb := &framebuffer{name: string(name), w: int(si.W), h: int(si.H), pf: si.PF}
	if si.PF.TrueColour == 0 || si.PF.BPP%8 != 0 {
		return nil, fmt.Errorf("pixel format %+v", si.PF)
	}
	bpp := int(si.PF.BPP / 8)
	fb.pix = make([]byte, fb.w*fb.h*bpp)

	// SetEncodings: Raw only; FramebufferUpdateRequest: all, not incremental.
	write(struct {
		Type, Pad uint8
		N         uint16
		Enc       int32
	}{2, 0, 1, 0})
	write(struct {
		Type, Incr uint8
		X, Y, W, H uint16
	}{3, 0, 0, 0, si.W, si.H})
	covered := 0
	for covered < fb.w*fb.h {
		var hdr struct {
			Type, Pad uint8
			N         uint16
		}
		if err := read(&hdr); err != nil {
			return nil, fmt.Errorf("update: %w", err)
		}
		if hdr.Type != 0 {
			return nil, fmt.Errorf("server message type %d", hdr.Type)
		}
		for i := 0; i < int(hdr.N); i++ {
			var rect struct {
				X, Y, W, H uint16
				Enc        int32
			}
			if err := read(&rect); err != nil {
				return nil, err
			}
			if rect.Enc != 0 {
				// A pseudo-encoding rectangle (QEMU sends none when
				// asked for Raw only); it has no pixel data we know.
				return nil, fmt.Errorf("rectangle in encoding %d", rect.Enc)
			}
			for y := int(rect.Y); y < int(rect.Y+rect.H); y++ {
				row := fb.pix[(y*fb.w+int(rect.X))*bpp:][:int(rect.W)*bpp]
				if _, err := io.ReadFull(r, row); err != nil {
					return nil, err
				}
			}
			covered += int(rect.W) * int(rect.H)
		}
	}
	return fb, nil
}
