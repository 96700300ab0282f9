package domain

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/beevik/etree"
	"github.com/qemufs/qemufs/capabilities"
)

// CommandOptions is what BuildCommand needs besides the definition: where
// the driver keeps this guest's files, ports it resolved, and what the
// security layer adds.
type CommandOptions struct {
	// Emulator is the probed binary; nil assumes QEMU 7.2 x86_64 at the
	// definition's <emulator> path.
	Emulator *capabilities.Emulator
	// QMPSocket is the path of the QMP control socket QEMU listens on.
	QMPSocket string
	// QMPFD, when > 0, is the number of an already listening socket QEMU
	// inherits for QMP instead of creating QMPSocket (libvirt's way: the
	// caller can connect at once, without waiting for the file to appear).
	QMPFD int
	// DomainDir is a private per-run directory for other sockets
	// (channels without a path, VNC sockets, swtpm, ...).
	DomainDir string
	// TPMSocket is the control socket of the guest's swtpm (an emulated
	// TPM), which the driver starts before QEMU. Default:
	// DomainDir/ALIAS-swtpm.sock.
	TPMSocket string
	// LibDir is the per-domain persistent directory (NVRAM copies,
	// swtpm state). Default: DomainDir.
	LibDir string
	// VNCPort is the TCP port of the first VNC display when it uses
	// autoport (the driver picks a free one); 0 means 5900.
	VNCPort int
	// SpicePort and SpiceTLSPort are the ports of an autoport SPICE display.
	SpicePort, SpiceTLSPort int
	// SpiceTLSDir is the x509 directory of SPICE's TLS port (qemu.conf
	// spice_tls=1, spice_tls_x509_cert_dir: ca-cert.pem, server-cert.pem,
	// server-key.pem). Empty: SPICE TLS is off, and a definition asking
	// for a TLS port or secure channels is rejected.
	SpiceTLSDir string
	// VNCListen and SpiceListen are the listen addresses used when the
	// definition names none (qemu.conf vnc_listen); default 127.0.0.1.
	VNCListen, SpiceListen string
	// Home is QEMU's HOME; XDG_{DATA,CACHE,CONFIG}_HOME are under it.
	// Default: DomainDir.
	Home string
	// PATH for QEMU; default /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin.
	Path string
	// Env is added to the environment (e.g. from qemu.conf).
	Env []string
	// ExtraArgs are added before the final "-msg timestamp=on", e.g. the
	// security layer's "-sandbox on,...".
	ExtraArgs []string
	// Incoming, when set, is the argument of "-incoming": QEMU waits for
	// a migration stream instead of booting (a restore uses "defer" and
	// then migrate-incoming).
	Incoming string
	// NetAttach says how the driver connected the host side of each
	// interface it manages (type network, bridge, or ethernet with a tap
	// it made), by the interface's alias (net0, ...). An interface of type
	// network or bridge without one cannot be built.
	NetAttach map[string]NetAttachment
	// Secret looks up the secrets that encrypted disks name; MasterKey
	// (32 bytes) encrypts them for QEMU, which reads it from
	// MasterKeyFile (a file of the run, 0600, QEMU's). SecretIV, when
	// set, gives the IVs instead of random ones (tests).
	Secret        SecretLookup
	MasterKey     []byte
	MasterKeyFile string
	SecretIV      func() []byte
}

// NetAttachment is the host side of one guest interface, made by the
// driver before QEMU starts.
type NetAttachment struct {
	// TapFD, when > 0, is an open TAP device QEMU inherits as this fd.
	TapFD int
	// FDName, when set, names the file (a TAP device, or the socket to
	// passt when Passt is set) that was handed to a running QEMU with QMP
	// getfd: a hot-plugged interface's.
	FDName string
	// Passt with FDName: the named file is a socket to passt.
	Passt bool
	// User connects a type='network' interface to user-mode networking,
	// as a session instance does (it has no host networks).
	User bool
	// PasstFD, when > 0, is a socket to a passt process the driver
	// started for a user-mode interface (backend passt, or type='network'
	// in a session where passt is installed); QEMU inherits it as this fd.
	PasstFD int
}

// Command is a QEMU command line: run Path with Args in the environment Env
// (which is complete: it does not inherit the caller's).
type Command struct {
	Env  []string
	Path string
	Args []string // without argv[0]
}

// String is the one-line shell form, like libvirt's .args files on one
// line: "LC_ALL=C PATH=... /usr/bin/qemu-system-x86_64 -name ...".
func (c *Command) String() string {
	var parts []string
	for _, e := range c.Env {
		if i := strings.IndexByte(e, '='); i > 0 {
			parts = append(parts, e[:i+1]+shellQuote(e[i+1:]))
		} else {
			parts = append(parts, shellQuote(e))
		}
	}
	parts = append(parts, shellQuote(c.Path))
	for _, a := range c.Args {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

// Argv returns Path followed by Args.
func (c *Command) Argv() []string { return append([]string{c.Path}, c.Args...) }

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-+=,./:@%^", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// jobj is a JSON object that keeps its keys in insertion order, as QEMU's
// JSON command line syntax is written by libvirt.
type jobj []jprop

type jprop struct {
	k string
	v any
}

func obj(kv ...any) jobj {
	var o jobj
	for i := 0; i+1 < len(kv); i += 2 {
		o = append(o, jprop{kv[0+i].(string), kv[i+1]})
	}
	return o
}

func (o *jobj) add(k string, v any) { *o = append(*o, jprop{k, v}) }

// set replaces key k or appends it.
func (o *jobj) set(k string, v any) {
	for i := range *o {
		if (*o)[i].k == k {
			(*o)[i].v = v
			return
		}
	}
	o.add(k, v)
}

func (o *jobj) del(k string) {
	for i := range *o {
		if (*o)[i].k == k {
			*o = append((*o)[:i], (*o)[i+1:]...)
			return
		}
	}
}

func (o jobj) get(k string) (any, bool) {
	for _, p := range o {
		if p.k == k {
			return p.v, true
		}
	}
	return nil, false
}

func (o jobj) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, p := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(mustJSON(p.k))
		b.WriteByte(':')
		b.Write(mustJSON(p.v))
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func mustJSON(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("domain: cannot encode %T: %v", v, err))
	}
	return bytes.TrimRight(b.Bytes(), "\n")
}

func (o jobj) String() string { return string(mustJSON(o)) }

// keyval renders a flat object in QEMU's legacy key=value syntax, for
// options QEMU 7.2 only takes that way and for older emulators.
func (o jobj) keyval(first string) string {
	var parts []string
	if first != "" {
		if v, ok := o.get(first); ok {
			parts = append(parts, fmt.Sprint(v))
		}
	}
	for _, p := range o {
		if p.k == first {
			continue
		}
		var s string
		switch v := p.v.(type) {
		case bool:
			s = map[bool]string{true: "on", false: "off"}[v]
		case string:
			s = kvEscape(v)
		default:
			s = fmt.Sprint(v)
		}
		parts = append(parts, p.k+"="+s)
	}
	return strings.Join(parts, ",")
}

// kvEscape doubles commas, QEMU's escape in key=value option strings.
func kvEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// builder generates the command line of one expanded definition.
type builder struct {
	d    *Domain
	t    *target
	opts CommandOptions
	devs *etree.Element
	kind machineKind
	args []string
	// nodes numbers block nodes like libvirt: libvirt-N-storage/format.
	nodeNext int
	// audio is the id of the default audio backend ("" when none).
	audioID string
	// overrides maps a device id to its qemu:override properties.
	overrides map[string][]Override
	// bootIndex maps a device element to its boot index.
	bootIndex map[*etree.Element]int
	// fdcBoot holds the floppy boot indexes (unit -> index).
	fdcBoot map[int]int
	// throttleGroups are the throttle-group objects already added.
	throttleGroups map[string]bool
}

func (b *builder) add(args ...string) { b.args = append(b.args, args...) }

// device adds one -device in JSON (QEMU >= 6.2) or key=value syntax,
// applying qemu:override properties for its id.
func (b *builder) device(o jobj) {
	if id, ok := o.get("id"); ok {
		for _, ov := range b.overrides[fmt.Sprint(id)] {
			switch ov.Type {
			case "remove":
				o.del(ov.Name)
			case "string":
				o.set(ov.Name, ov.Value)
			case "unsigned":
				n, _ := strconv.ParseUint(ov.Value, 10, 64)
				o.set(ov.Name, n)
			case "signed":
				n, _ := strconv.ParseInt(ov.Value, 10, 64)
				o.set(ov.Name, n)
			case "bool":
				o.set(ov.Name, ov.Value == "true")
			}
		}
	}
	if b.jsonDevice() {
		b.add("-device", o.String())
	} else {
		b.add("-device", o.keyval("driver"))
	}
}

func (b *builder) jsonDevice() bool {
	return b.t.atLeast(6, 2) && !b.d.capDeleted("device.json")
}

// object adds one -object.
func (b *builder) object(o jobj) {
	if b.t.atLeast(6, 0) {
		b.add("-object", o.String())
	} else {
		b.add("-object", o.keyval("qom-type"))
	}
}

// BuildCommand returns the QEMU command line that runs d: always paused
// (-S; the driver issues "cont"), with -no-user-config -nodefaults, the QMP
// monitor on opts.QMPSocket, and every device at the address expansion
// gave it. d itself is not modified (it is expanded on a copy if needed).
//
// # Lifecycle actions
//
// QEMU is always started with -no-shutdown, so a guest power-off stops the
// vCPUs instead of exiting, and qemufs decides what happens, as libvirt
// does. The driver must react to these QMP events:
//
//   - SHUTDOWN (data.guest true): if data.reason is "guest-reset" (only
//     seen with on_reboot=destroy, which adds "-action reboot=shutdown"),
//     destroy the domain. Otherwise apply OnPoweroff(): destroy: quit/kill
//     QEMU (state "shut off (shutdown)"); restart: "system_reset" then
//     "cont" (a fake reboot); preserve: leave the process stopped.
//     A SHUTDOWN with data.guest false (host signal, QMP quit) means QEMU is
//     exiting: record "shut off (destroyed)".
//   - RESET: with on_reboot=restart QEMU has already reset the guest;
//     nothing to do.
//   - GUEST_PANICKED: emitted when the guest has a panic device (or the
//     Hyper-V crash MSR); "-action panic=pause" is set then, so the guest
//     is stopped. Apply OnCrash(): destroy: kill QEMU ("shut off
//     (crashed)"); restart: "system_reset" + "cont"; preserve: leave it
//     paused ("crashed (panicked)"); coredump-destroy/coredump-restart:
//     "dump-guest-memory" to a file first, then as destroy/restart.
//   - WATCHDOG with action "pause" and the watchdog action "dump": dump the
//     guest memory, then "cont".
func BuildCommand(d *Domain, opts CommandOptions) (*Command, error) {
	x := d.Clone()
	t := newTarget(opts.Emulator)
	if err := x.expand(t); err != nil {
		return nil, err
	}
	if err := x.ResolveFirmware(); err != nil {
		return nil, err
	}
	if opts.LibDir == "" {
		opts.LibDir = opts.DomainDir
	}
	if opts.Home == "" {
		opts.Home = opts.DomainDir
	}
	if opts.VNCListen == "" {
		opts.VNCListen = "127.0.0.1"
	}
	if opts.SpiceListen == "" {
		opts.SpiceListen = "127.0.0.1"
	}
	b := &builder{d: x, t: t, opts: opts, devs: child(x.root, "devices"), kind: kindOf(x.Machine()),
		overrides: map[string][]Override{}, bootIndex: map[*etree.Element]int{}, fdcBoot: map[int]int{}}
	for _, o := range x.QEMUOverrides() {
		b.overrides[o.Alias] = append(b.overrides[o.Alias], o)
	}
	cmd := &Command{Path: x.Emulator()}
	if cmd.Path == "" && opts.Emulator != nil {
		cmd.Path = opts.Emulator.Path
	}
	cmd.Env = b.env()
	steps := []func() error{
		b.refuseSilentDrops, b.general, b.machine, b.cpu, b.firmware, b.memory, b.smp, b.defaultIOThread, b.numa, b.uuidSMBIOS,
		b.display, b.monitor, b.clock, b.lifecycle, b.pm, b.boot, b.kernel,
		b.pciHole64, b.controllers, b.disks, b.filesystems, b.nets, b.smartcards, b.chardevs,
		b.tpm, b.inputs, b.audios, b.graphics, b.videos, b.sounds, b.watchdog,
		b.redirdevs, b.hostdevs, b.memballoon, b.rngs, b.vmcoreinfo, b.panic, b.shmems,
		b.memoryDevices, b.iommu, b.vsock, b.launchSecurity, b.tail,
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	cmd.Args = b.args
	return cmd, nil
}

func (b *builder) env() []string {
	path := b.opts.Path
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	env := []string{"LC_ALL=C", "PATH=" + path}
	if h := b.opts.Home; h != "" {
		env = append(env, "HOME="+h,
			"XDG_DATA_HOME="+filepath.Join(h, ".local/share"),
			"XDG_CACHE_HOME="+filepath.Join(h, ".cache"),
			"XDG_CONFIG_HOME="+filepath.Join(h, ".config"))
	}
	if tz := attr(child(b.d.root, "clock"), "timezone"); attr(child(b.d.root, "clock"), "offset") == "timezone" && tz != "" {
		env = append(env, "TZ="+tz)
	}
	env = append(env, b.opts.Env...)
	env = append(env, b.d.QEMUEnv()...)
	return env
}

func (b *builder) general() error {
	b.add("-name", "guest="+kvEscape(b.d.Name())+",debug-threads=on")
	b.add("-S")
	return b.masterKey()
}

// tail adds qemu:commandline arguments and the final options.
func (b *builder) tail() error {
	switch b.d.QEMUDeprecation() {
	case "omit":
		b.add("-compat", "deprecated-output=hide")
	case "reject":
		b.add("-compat", "deprecated-input=reject,deprecated-output=hide")
	case "crash":
		b.add("-compat", "deprecated-input=crash,deprecated-output=hide")
	}
	if b.opts.Incoming != "" {
		b.add("-incoming", b.opts.Incoming)
	}
	b.add(b.opts.ExtraArgs...)
	b.pstores() // after the sandbox, where libvirt puts it
	b.add("-msg", "timestamp=on")
	b.add(b.d.QEMUArgs()...)
	return nil
}

// monitor adds the QMP control socket.
func (b *builder) monitor() error {
	switch {
	case b.opts.QMPFD > 0:
		b.add("-chardev", "socket,id=charmonitor,fd="+strconv.Itoa(b.opts.QMPFD)+",server=on,wait=off",
			"-mon", "chardev=charmonitor,id=monitor,mode=control")
	case b.opts.QMPSocket != "":
		b.add("-chardev", "socket,id=charmonitor,path="+kvEscape(b.opts.QMPSocket)+",server=on,wait=off",
			"-mon", "chardev=charmonitor,id=monitor,mode=control")
	}
	return nil
}

// accel is the -accel name of the domain type.
func (b *builder) accel() string {
	switch b.d.Type() {
	case "kvm":
		return "kvm"
	case "hvf":
		return "hvf"
	}
	return "tcg"
}
