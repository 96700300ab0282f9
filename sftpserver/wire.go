package sftpserver

import (
	"encoding/binary"
	"errors"
)

// Packet types of SFTP version 3 (draft-ietf-secsh-filexfer-02) and the
// OpenSSH extensions sshfs uses.
const (
	fxpInit          = 1
	fxpVersion       = 2
	fxpOpen          = 3
	fxpClose         = 4
	fxpRead          = 5
	fxpWrite         = 6
	fxpLstat         = 7
	fxpFstat         = 8
	fxpSetstat       = 9
	fxpFsetstat      = 10
	fxpOpendir       = 11
	fxpReaddir       = 12
	fxpRemove        = 13
	fxpMkdir         = 14
	fxpRmdir         = 15
	fxpRealpath      = 16
	fxpStat          = 17
	fxpRename        = 18
	fxpReadlink      = 19
	fxpSymlink       = 20
	fxpStatus        = 101
	fxpHandle        = 102
	fxpData          = 103
	fxpName          = 104
	fxpAttrs         = 105
	fxpExtended      = 200
	fxpExtendedReply = 201
)

// Status codes of version 3.
const (
	fxOK               = 0
	fxEOF              = 1
	fxNoSuchFile       = 2
	fxPermissionDenied = 3
	fxFailure          = 4
	fxBadMessage       = 5
	fxOpUnsupported    = 8
)

// Open flags (pflags).
const (
	fxfRead   = 0x01
	fxfWrite  = 0x02
	fxfAppend = 0x04
	fxfCreat  = 0x08
	fxfTrunc  = 0x10
	fxfExcl   = 0x20
)

// Attribute flags.
const (
	attrSize        = 0x01
	attrUIDGID      = 0x02
	attrPermissions = 0x04
	attrACModTime   = 0x08
	attrExtended    = 0x80000000
)

// maxPacket bounds one request: sshfs sends at most 64 KiB of data in a
// write; OpenSSH's server takes 256 KiB.
const maxPacket = 256<<10 + 1024

// maxRead bounds the data of one read reply.
const maxRead = 256 << 10

var errShort = errors.New("short packet")

// dec reads the fields of one packet; the first error sticks.
type dec struct {
	b   []byte
	err error
}

func (d *dec) u32() uint32 {
	if len(d.b) < 4 {
		d.err = errShort
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *dec) u64() uint64 {
	if len(d.b) < 8 {
		d.err = errShort
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *dec) bytes() []byte {
	n := d.u32()
	if d.err != nil || uint32(len(d.b)) < n {
		d.err = errShort
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) str() string { return string(d.bytes()) }

// attrs are the attributes a client sets (SETSTAT, OPEN, MKDIR).
type attrs struct {
	flags        uint32
	size         uint64
	uid, gid     uint32
	perm         uint32
	atime, mtime uint32
}

func (d *dec) attrs() attrs {
	var a attrs
	a.flags = d.u32()
	if a.flags&attrSize != 0 {
		a.size = d.u64()
	}
	if a.flags&attrUIDGID != 0 {
		a.uid, a.gid = d.u32(), d.u32()
	}
	if a.flags&attrPermissions != 0 {
		a.perm = d.u32()
	}
	if a.flags&attrACModTime != 0 {
		a.atime, a.mtime = d.u32(), d.u32()
	}
	if a.flags&attrExtended != 0 {
		for n := d.u32(); n > 0 && d.err == nil; n-- {
			d.str()
			d.str()
		}
	}
	return a
}

// enc builds one packet; the 4-byte length is filled in by packet.
type enc struct{ b []byte }

func newPacket(typ byte, id uint32) *enc {
	e := &enc{b: make([]byte, 4, 64)}
	e.b = append(e.b, typ)
	if typ != fxpVersion {
		e.u32(id)
	}
	return e
}

func (e *enc) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *enc) str(s string) { e.u32(uint32(len(s))); e.b = append(e.b, s...) }
func (e *enc) data(p []byte) {
	e.u32(uint32(len(p)))
	e.b = append(e.b, p...)
}

func (e *enc) attrs(a attrs) {
	e.u32(a.flags)
	if a.flags&attrSize != 0 {
		e.u64(a.size)
	}
	if a.flags&attrUIDGID != 0 {
		e.u32(a.uid)
		e.u32(a.gid)
	}
	if a.flags&attrPermissions != 0 {
		e.u32(a.perm)
	}
	if a.flags&attrACModTime != 0 {
		e.u32(a.atime)
		e.u32(a.mtime)
	}
}

// packet returns the finished packet with its length.
func (e *enc) packet() []byte {
	binary.BigEndian.PutUint32(e.b, uint32(len(e.b)-4))
	return e.b
}
