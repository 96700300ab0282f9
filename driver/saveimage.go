package driver

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"github.com/qemufs/qemufs/domain"
)

// A save image is qemufs's own small header, the domain XML, then QEMU's
// migration stream, as libvirt's save images are:
//
//	offset  size  field
//	0       8     magic "QFSSAVE\n"
//	8       4     version (1)
//	12      4     flags (bit 0: the guest was running when saved)
//	16      4     XML length in bytes
//	20      4     CRC-32 (IEEE) of the XML
//	24      8     stream length in bytes
//	32      n     the domain XML (the live definition, runtime details removed)
//	32+n    m     QEMU's migration stream (starts with "QEVM")
//
// All integers are little-endian. The stream length is written last, once
// QEMU finished, so a cut-off image is told from a whole one before QEMU
// ever sees it.
const (
	saveMagic      = "QFSSAVE\n"
	saveVersion    = 1
	saveHeaderSize = 32
	// saveFlagRunning marks an image of a guest that was running.
	saveFlagRunning = 1
	// maxSaveXML bounds the XML a header may announce.
	maxSaveXML = 16 << 20
)

// qemuStreamMagic starts every QEMU migration stream ("QEVM", version 3).
var qemuStreamMagic = []byte{'Q', 'E', 'V', 'M', 0, 0, 0, 3}

// saveHeader is the fixed part of a save image.
type saveHeader struct {
	Magic     [8]byte
	Version   uint32
	Flags     uint32
	XMLLen    uint32
	XMLCRC    uint32
	StreamLen uint64
}

func newSaveHeader(xml []byte, running bool) saveHeader {
	h := saveHeader{Version: saveVersion, XMLLen: uint32(len(xml)), XMLCRC: crc32.ChecksumIEEE(xml)}
	copy(h.Magic[:], saveMagic)
	if running {
		h.Flags |= saveFlagRunning
	}
	return h
}

func (h saveHeader) bytes() []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, h)
	return b.Bytes()
}

// saveImage is an opened, checked save image, positioned at its stream.
type saveImage struct {
	path    string
	f       *os.File
	hdr     saveHeader
	xml     []byte
	def     *domain.Domain
	running bool // the guest was running when saved
}

// Close closes the image file.
func (img *saveImage) Close() error { return img.f.Close() }

// openSaveImage opens path and checks everything that can be checked
// without QEMU: the header, the size, the XML, the start of QEMU's stream.
// Its errors are ErrInvalid (not a usable image) or ErrIO; the file is
// never changed.
func openSaveImage(path string) (*saveImage, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errorf(ErrInvalid, "save image %s does not exist", path)
		}
		return nil, errorf(ErrIO, "save image: %w", err)
	}
	img, err := readSaveImage(path, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return img, nil
}

func readSaveImage(path string, f *os.File) (*saveImage, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, errorf(ErrIO, "save image %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, errorf(ErrInvalid, "save image %s is not a regular file", path)
	}
	bad := func(format string, args ...any) error {
		return errorf(ErrInvalid, "save image %s: %s", path, fmt.Sprintf(format, args...))
	}
	var raw [saveHeaderSize]byte
	if _, err := io.ReadFull(f, raw[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, bad("too short for a qemufs save image header (%d bytes)", st.Size())
		}
		return nil, errorf(ErrIO, "save image %s: %w", path, err)
	}
	var h saveHeader
	binary.Read(bytes.NewReader(raw[:]), binary.LittleEndian, &h)
	if string(h.Magic[:]) != saveMagic {
		return nil, bad("not a qemufs save image (bad magic %q)", h.Magic[:])
	}
	if h.Version != saveVersion {
		return nil, bad("format version %d; this qemufs reads version %d", h.Version, saveVersion)
	}
	if h.XMLLen == 0 || h.XMLLen > maxSaveXML {
		return nil, bad("bad XML length %d in the header", h.XMLLen)
	}
	if h.StreamLen == 0 {
		return nil, bad("the image is incomplete (no stream length: the save did not finish)")
	}
	want := int64(saveHeaderSize) + int64(h.XMLLen) + int64(h.StreamLen)
	if st.Size() != want {
		what := "truncated"
		if st.Size() > want {
			what = "has trailing data"
		}
		return nil, bad("%s: the header says %d bytes, the file has %d", what, want, st.Size())
	}
	xml := make([]byte, h.XMLLen)
	if _, err := io.ReadFull(f, xml); err != nil {
		return nil, errorf(ErrIO, "save image %s: %w", path, err)
	}
	if crc32.ChecksumIEEE(xml) != h.XMLCRC {
		return nil, bad("the domain XML is corrupt (checksum mismatch)")
	}
	def, err := domain.Parse(xml)
	if err != nil {
		return nil, bad("domain XML: %v", err)
	}
	magic := make([]byte, len(qemuStreamMagic))
	if _, err := io.ReadFull(f, magic); err != nil {
		return nil, errorf(ErrIO, "save image %s: %w", path, err)
	}
	if !bytes.Equal(magic, qemuStreamMagic) {
		return nil, bad("the saved state is not a QEMU migration stream (starts %q)", magic)
	}
	if _, err := f.Seek(saveHeaderSize+int64(h.XMLLen), io.SeekStart); err != nil {
		return nil, errorf(ErrIO, "save image %s: %w", path, err)
	}
	return &saveImage{path: path, f: f, hdr: h, xml: xml, def: def, running: h.Flags&saveFlagRunning != 0}, nil
}
