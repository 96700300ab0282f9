package domain

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/beevik/etree"
	"github.com/qemufs/qemufs/capabilities"
)

// Launch security (<launchSecurity>): confidential guests whose memory
// the host cannot read (AMD SEV, SEV-ES, SEV-SNP; Intel TDX; IBM s390
// protected virtualization). A definition that asks for it either runs
// protected or does not run: Parse validates every element and attribute
// libvirt's schema allows (and refuses any other), BuildCommand turns it
// into the object libvirt creates (id lsec0) and the machine's
// confidential-guest-support, and CheckLaunchSecurity refuses, naming the
// missing host feature, a host or QEMU that cannot provide it.

// LaunchSecurity is the parsed <launchSecurity> of a definition.
type LaunchSecurity struct {
	// Type is sev, sev-snp, tdx or s390-pv.
	Type string
	// CBitPos and ReducedPhysBits (SEV, SEV-SNP) are -1 when absent:
	// the host's values are used then.
	CBitPos, ReducedPhysBits int64
	// Policy is the guest policy (SEV: 32-bit; SEV-SNP, TDX: 64-bit);
	// HasPolicy tells whether the definition gave one.
	Policy    uint64
	HasPolicy bool
	// Handle is the SEV firmware handle (-1 when absent).
	Handle int64
	// DHCert and Session are the SEV guest owner's base64 blobs.
	DHCert, Session string
	// KernelHashes, AuthorKey and VCEK are "yes", "no" or "" (absent).
	KernelHashes, AuthorKey, VCEK string
	// SEV-SNP blobs (base64).
	GuestVisibleWorkarounds, IDBlock, IDAuth, HostData string
	// TDX measurement registers (base64 SHA-384 digests).
	MrConfigID, MrOwner, MrOwnerConfig string
	// QGS is set when <quoteGenerationService> is present; QGSPath is its
	// socket ("" for QEMU's default).
	QGS     bool
	QGSPath string
}

// LaunchSecurityTypes are the <launchSecurity type> values qemufs runs.
var LaunchSecurityTypes = []string{"sev", "sev-snp", "tdx", "s390-pv"}

// launchSecuritySchema lists, per type, the attributes and child elements
// libvirt's schema allows.
var launchSecuritySchema = map[string]struct{ attrs, elems []string }{
	"sev": {attrs: []string{"type", "kernelHashes"},
		elems: []string{"cbitpos", "reducedPhysBits", "policy", "handle", "dhCert", "session"}},
	"sev-snp": {attrs: []string{"type", "kernelHashes", "authorKey", "vcek"},
		elems: []string{"cbitpos", "reducedPhysBits", "policy", "guestVisibleWorkarounds", "idBlock", "idAuth", "hostData"}},
	"tdx":     {attrs: []string{"type"}, elems: []string{"policy", "mrConfigId", "mrOwner", "mrOwnerConfig", "quoteGenerationService"}},
	"s390-pv": {attrs: []string{"type"}},
}

// snpBlobBytes and tdxDigestBytes are the decoded sizes QEMU requires.
var snpBlobBytes = map[string]int{"guestVisibleWorkarounds": 16, "idBlock": 96, "idAuth": 4096, "hostData": 32}

const tdxDigestBytes = 48 // SHA-384

// checkLaunchSecurity validates <launchSecurity> in full.
func (d *Domain) checkLaunchSecurity(c *checker) {
	ls := child(d.root, "launchSecurity")
	if ls == nil {
		return
	}
	if !hasAttr(ls, "type") {
		c.fail(ls, "attribute type is required (one of: %s)", strings.Join(LaunchSecurityTypes, ", "))
		return
	}
	typ := c.enum(ls, "type", LaunchSecurityTypes...)
	if c.err != nil {
		return
	}
	schema := launchSecuritySchema[typ]
	for _, a := range ls.Attr {
		if a.Space != "" {
			continue
		}
		if !slices.Contains(schema.attrs, a.Key) {
			allowed := append([]string(nil), schema.attrs...)
			sort.Strings(allowed)
			c.fail(ls, "attribute %s is not allowed for launch security type '%s' (allowed: %s)", a.Key, typ, strings.Join(allowed, ", "))
			return
		}
	}
	if len(schema.elems) == 0 {
		for _, e := range ls.ChildElements() {
			if e.Space == "" {
				c.fail(e, "launch security type '%s' takes no child elements", typ)
				return
			}
		}
	} else {
		c.known(ls, schema.elems...)
		c.once(ls, schema.elems...)
	}
	c.yesno(ls, "kernelHashes", "authorKey", "vcek")
	if c.err != nil {
		return
	}
	for _, e := range ls.ChildElements() {
		if e.Space != "" {
			continue
		}
		v := strings.TrimSpace(e.Text())
		switch e.Tag {
		case "cbitpos", "reducedPhysBits", "handle":
			if n, err := parseUint(v); err != nil || n > 1<<32-1 {
				c.fail(e, "%q is not an unsigned 32-bit integer", v)
			}
		case "policy":
			bits := 64
			if typ == "sev" {
				bits = 32
			}
			if _, ok := parsePolicy(v, bits); !ok {
				c.fail(e, "%q is not a valid policy (hexadecimal, with or without 0x, e.g. 0x0003; at most %d bits)", v, bits)
			}
		case "dhCert", "session":
			// QEMU reads these leniently (libvirt's own tests use blobs
			// that are not strict base64); only emptiness is an error.
			if v == "" {
				c.fail(e, "must not be empty")
			}
		case "guestVisibleWorkarounds", "idBlock", "idAuth", "hostData":
			checkBlob(c, e, v, snpBlobBytes[e.Tag])
		case "mrConfigId", "mrOwner", "mrOwnerConfig":
			checkBlob(c, e, v, tdxDigestBytes)
		case "quoteGenerationService":
			c.absPath(e, "path")
			for _, a := range e.Attr {
				if a.Space == "" && a.Key != "path" {
					c.fail(e, "attribute %s is not allowed (only path)", a.Key)
				}
			}
		}
	}
	if typ == "sev" && child(ls, "policy") == nil {
		c.fail(ls, "element <policy> is required for launch security type 'sev'")
	}
	if typ == "sev-snp" && child(ls, "idAuth") != nil && child(ls, "idBlock") == nil {
		c.fail(child(ls, "idAuth"), "<idAuth> needs <idBlock>")
	}
	if d.Type() != "kvm" {
		c.fail(ls, "launch security type '%s' needs domain type 'kvm': only a hardware accelerator can protect guest memory (this domain's type is '%s')", typ, d.Type())
	}
}

// parsePolicy parses libvirt's hexuint (hexadecimal with or without 0x)
// of at most bits bits.
func parsePolicy(v string, bits int) (uint64, bool) {
	h := strings.TrimPrefix(strings.TrimPrefix(v, "0x"), "0X")
	if h == "" || len(h) > bits/4 {
		return 0, false
	}
	n, err := strconv.ParseUint(h, 16, 64)
	return n, err == nil
}

// checkBlob checks that v is standard base64 of exactly n bytes, as QEMU
// requires of SEV-SNP's and TDX's measurement inputs.
func checkBlob(c *checker, e *etree.Element, v string, n int) {
	b, err := base64.StdEncoding.DecodeString(v)
	switch {
	case v == "":
		c.fail(e, "must not be empty")
	case err != nil:
		c.fail(e, "not valid base64: %v", err)
	case len(b) != n:
		c.fail(e, "decodes to %d bytes; QEMU needs exactly %d", len(b), n)
	}
}

// LaunchSecurity returns the definition's <launchSecurity>, nil when it
// has none.
func (d *Domain) LaunchSecurity() *LaunchSecurity {
	ls := child(d.root, "launchSecurity")
	if ls == nil {
		return nil
	}
	l := &LaunchSecurity{Type: attr(ls, "type"), CBitPos: -1, ReducedPhysBits: -1, Handle: -1,
		KernelHashes: attr(ls, "kernelHashes"), AuthorKey: attr(ls, "authorKey"), VCEK: attr(ls, "vcek")}
	txt := func(tag string) string { return strings.TrimSpace(text(child(ls, tag))) }
	num := func(tag string) int64 {
		if e := child(ls, tag); e != nil {
			if n, err := parseUint(txt(tag)); err == nil {
				return int64(n)
			}
		}
		return -1
	}
	l.CBitPos, l.ReducedPhysBits, l.Handle = num("cbitpos"), num("reducedPhysBits"), num("handle")
	if n, ok := parsePolicy(txt("policy"), 64); ok {
		l.Policy, l.HasPolicy = n, true
	}
	l.DHCert, l.Session = txt("dhCert"), txt("session")
	l.GuestVisibleWorkarounds, l.IDBlock, l.IDAuth, l.HostData = txt("guestVisibleWorkarounds"), txt("idBlock"), txt("idAuth"), txt("hostData")
	l.MrConfigID, l.MrOwner, l.MrOwnerConfig = txt("mrConfigId"), txt("mrOwner"), txt("mrOwnerConfig")
	if q := child(ls, "quoteGenerationService"); q != nil {
		l.QGS, l.QGSPath = true, attr(q, "path")
	}
	return l
}

// sevESPolicy is the SEV policy bit that asks for SEV-ES (encrypted
// register state).
const sevESPolicy = 0x4

// DefaultQGSSocket is the Intel quote generation service socket libvirt
// uses when <quoteGenerationService> names none.
const DefaultQGSSocket = "/var/run/tdx-qgs/qgs.socket"

// launchSecurityFiles are the files libvirt writes into the domain's lib
// directory for SEV: the guest owner's DH certificate and session blob,
// which QEMU reads by path.
func (l *LaunchSecurity) files(libDir string) map[string]string {
	out := map[string]string{}
	if l == nil || l.Type != "sev" {
		return out
	}
	if l.DHCert != "" {
		out[filepath.Join(libDir, "dh_cert.base64")] = l.DHCert
	}
	if l.Session != "" {
		out[filepath.Join(libDir, "session.base64")] = l.Session
	}
	return out
}

// LaunchSecurityFiles returns the files QEMU reads for the definition's
// launch security (SEV's dh_cert.base64 and session.base64 in libDir),
// sorted; the driver writes them with WriteLaunchSecurityFiles and lets
// QEMU's user read them.
func (d *Domain) LaunchSecurityFiles(libDir string) []string {
	var out []string
	for p := range d.LaunchSecurity().files(libDir) {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// WriteLaunchSecurityFiles writes the files of LaunchSecurityFiles into
// libDir (mode 0600, atomically), as libvirt does before starting an SEV
// guest.
func (d *Domain) WriteLaunchSecurityFiles(libDir string) error {
	for p, content := range d.LaunchSecurity().files(libDir) {
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			return fmt.Errorf("launch security: %w", err)
		}
		if err := os.Rename(tmp, p); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("launch security: %w", err)
		}
	}
	return nil
}

// launchSecurityQOM is the QOM type of each launch security type's object,
// and the QEMU release that brought it.
var launchSecurityQOM = map[string]struct {
	typ, since string
}{
	"sev": {"sev-guest", "2.12"}, "sev-snp": {"sev-snp-guest", "9.1"},
	"tdx": {"tdx-guest", "10.1"}, "s390-pv": {"s390-pv-guest", "6.0"},
}

// CheckLaunchSecurity reports, at define and at start, whether this host
// and emulator can run the definition's launch security: the kernel must
// offer it (kvm_amd sev/sev_es/sev_snp, kvm_intel tdx, s390 prot_virt_host)
// and QEMU must have the object type and, for SEV, have answered
// query-sev-capabilities. The error wraps ErrUnsupported and names what
// is missing. A nil emu or host skips the corresponding checks.
func (d *Domain) CheckLaunchSecurity(host *capabilities.Host, emu *capabilities.Emulator) error {
	l := d.LaunchSecurity()
	if l == nil {
		return nil
	}
	el := child(d.root, "launchSecurity")
	fail := func(format string, args ...any) error {
		return unsupportedAt(el, "launch security type '%s' cannot run on this host: %s", l.Type, fmt.Sprintf(format, args...))
	}
	if d.Type() != "kvm" {
		return fail("it needs domain type 'kvm'")
	}
	if host != nil {
		hf := host.LaunchSecurity
		need := map[string]string{"sev": "sev", "sev-snp": "sev-snp", "tdx": "tdx", "s390-pv": "s390-pv"}[l.Type]
		if why := hf.Missing(need); why != "" {
			return fail("%s", why)
		}
		if l.Type == "sev" && l.Policy&sevESPolicy != 0 {
			if why := hf.Missing("sev-es"); why != "" {
				return fail("the policy 0x%x asks for SEV-ES (bit 2), and %s", l.Policy, why)
			}
		}
		if !host.KVM {
			return fail("KVM is not usable (/dev/kvm)")
		}
	}
	if emu != nil {
		q := launchSecurityQOM[l.Type]
		if len(emu.Devices) > 0 && !emu.Devices[q.typ] {
			return fail("QEMU %s (%s) has no %s object (it needs a QEMU with %s support, %s or later)", emu.Version, emu.Path, q.typ, l.Type, q.since)
		}
		if l.Type == "sev" || l.Type == "sev-snp" {
			if emu.SEV == nil {
				why := emu.SEVError
				if why == "" {
					why = "QEMU did not report SEV capabilities"
				}
				return fail("QEMU %s (%s) reports no SEV platform: %s", emu.Version, emu.Path, why)
			}
		}
		if l.Type == "sev" && l.KernelHashes != "" && emu.VersionNum > 0 && emu.VersionNum < 6002000 {
			return fail("kernelHashes needs QEMU 6.2 or later (this is %s)", emu.Version)
		}
	}
	return nil
}

// confidentialGuest returns the -machine property that ties the launch
// security object to the machine: confidential-guest-support (QEMU 6.0
// and later), memory-encryption before.
func (b *builder) confidentialGuest() []string {
	if child(b.d.root, "launchSecurity") == nil {
		return nil
	}
	var out []string
	if b.t.atLeast(6, 0) {
		out = append(out, "confidential-guest-support=lsec0")
	} else {
		out = append(out, "memory-encryption=lsec0")
	}
	// A TD needs the split irqchip; <ioapic driver='qemu'/> already gives
	// it, later on the line.
	if attr(child(b.d.root, "launchSecurity"), "type") == "tdx" && attr(b.feature("ioapic"), "driver") != "qemu" {
		out = append(out, "kernel_irqchip=split")
	}
	return out
}

// launchSecurity adds the launch security object, id lsec0, with the
// properties libvirt gives it.
func (b *builder) launchSecurity() error {
	l := b.d.LaunchSecurity()
	if l == nil {
		return nil
	}
	el := child(b.d.root, "launchSecurity")
	if b.accel() != "kvm" {
		return &Error{Path: pathOf(el), Msg: fmt.Sprintf("launch security type '%s' needs KVM", l.Type), Err: ErrNeedsKVM}
	}
	// cbitpos and reduced-phys-bits come from the host's SEV platform
	// when the definition leaves them out, as libvirt fills them at start.
	platform := func() (*capabilities.SEVCapability, error) {
		if b.opts.Emulator != nil && b.opts.Emulator.SEV != nil {
			return b.opts.Emulator.SEV, nil
		}
		return nil, unsupportedAt(el, "<cbitpos> and <reducedPhysBits> are not given and the host's SEV platform is unknown (QEMU reported no SEV capabilities)")
	}
	sevCommon := func(o *jobj) error {
		cb, rb := l.CBitPos, l.ReducedPhysBits
		if cb < 0 || rb < 0 {
			p, err := platform()
			if err != nil {
				return err
			}
			if cb < 0 {
				cb = int64(p.CBitPos)
			}
			if rb < 0 {
				rb = int64(p.ReducedPhysBits)
			}
		}
		o.add("cbitpos", cb)
		o.add("reduced-phys-bits", rb)
		return nil
	}
	switch l.Type {
	case "sev":
		o := obj("qom-type", "sev-guest", "id", "lsec0")
		if err := sevCommon(&o); err != nil {
			return err
		}
		o.add("policy", l.Policy)
		if l.Handle >= 0 {
			o.add("handle", l.Handle)
		}
		if l.DHCert != "" {
			o.add("dh-cert-file", filepath.Join(b.opts.LibDir, "dh_cert.base64"))
		}
		if l.Session != "" {
			o.add("session-file", filepath.Join(b.opts.LibDir, "session.base64"))
		}
		if l.KernelHashes != "" {
			if !b.t.atLeast(6, 2) {
				return unsupportedAt(el, "kernelHashes needs QEMU 6.2 or later")
			}
			o.add("kernel-hashes", l.KernelHashes == "yes")
		}
		b.object(o)
	case "sev-snp":
		o := obj("qom-type", "sev-snp-guest", "id", "lsec0")
		if err := sevCommon(&o); err != nil {
			return err
		}
		if l.KernelHashes != "" {
			o.add("kernel-hashes", l.KernelHashes == "yes")
		}
		if l.HasPolicy {
			o.add("policy", l.Policy)
		}
		for _, p := range []struct{ k, v string }{
			{"guest-visible-workarounds", l.GuestVisibleWorkarounds}, {"id-block", l.IDBlock},
			{"id-auth", l.IDAuth}, {"host-data", l.HostData},
		} {
			if p.v != "" {
				o.add(p.k, p.v)
			}
		}
		if l.AuthorKey != "" {
			o.add("author-key-enabled", l.AuthorKey == "yes")
		}
		if l.VCEK != "" {
			o.add("vcek-disabled", l.VCEK == "no")
		}
		b.object(o)
	case "tdx":
		o := obj("qom-type", "tdx-guest", "id", "lsec0")
		if l.HasPolicy {
			o.add("attributes", l.Policy)
		}
		for _, p := range []struct{ k, v string }{
			{"mrconfigid", l.MrConfigID}, {"mrowner", l.MrOwner}, {"mrownerconfig", l.MrOwnerConfig},
		} {
			if p.v != "" {
				o.add(p.k, p.v)
			}
		}
		if l.QGS {
			path := l.QGSPath
			if path == "" {
				path = DefaultQGSSocket
			}
			o.add("quote-generation-socket", obj("type", "unix", "path", path))
		}
		// tdx-guest's socket address is a nested object: JSON only.
		b.add("-object", o.String())
	case "s390-pv":
		b.object(obj("qom-type", "s390-pv-guest", "id", "lsec0"))
	}
	return nil
}
