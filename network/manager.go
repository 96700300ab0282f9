package network

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qemufs/qemufs/internal/atomicfile"
	"github.com/qemufs/qemufs/internal/errkind"
	"github.com/qemufs/qemufs/internal/objtable"
	"github.com/qemufs/qemufs/procmgr"
)

// Options configure a Manager.
type Options struct {
	// ConfigDir keeps the definitions (NAME.xml) and autostart marks.
	ConfigDir string
	// RunDir keeps the status of active networks and dnsmasq's files.
	RunDir string
	// LogDir receives dnsmasq's logs (NAME-dnsmasq.log).
	LogDir string
	// ID names this instance in host objects (firewall tables), so two
	// instances on one host never touch each other's.
	ID string
	// Default defines a `default` NAT network when none exists, as a
	// system instance has.
	Default bool
	// Logger receives the manager's own messages; nil discards them.
	Logger *log.Logger
}

// Manager runs the networks of one instance.
type Manager struct {
	opts Options
	logf func(string, ...any)

	mu   sync.Mutex // guards nets and the entries' fields
	nets *objtable.Table[*entry]
}

// entry is one network: a slot made by mkdir, defined by its config.xml.
type entry struct {
	objtable.Base // Op serialises start, destroy, define, remove
	def           *Network
	st            *status // non-nil while active
	dnsmasq       *procmgr.Process
}

func newEntry(name string) *entry { return &entry{Base: objtable.Base{Name: name}} }

// status is what an active network left on the host, kept in the run dir
// so that a restarted daemon takes it over and can undo it exactly.
type status struct {
	Bridge        string `json:"bridge"`
	CreatedBridge bool   `json:"createdBridge"`
	Table         string `json:"table,omitempty"`
	DnsmasqPid    int    `json:"dnsmasqPid,omitempty"`
	DnsmasqStart  uint64 `json:"dnsmasqStart,omitempty"`
}

// New loads the definitions and takes over the networks a previous daemon
// left active. A `default` network is defined when asked for and absent.
func New(opts Options) (*Manager, error) {
	m := &Manager{opts: opts, logf: func(string, ...any) {}}
	m.nets = objtable.New[*entry]("network", opts.ConfigDir, &m.mu)
	if opts.Logger != nil {
		m.logf = opts.Logger.Printf
	}
	for _, d := range []string{opts.ConfigDir, filepath.Join(opts.ConfigDir, "autostart"), opts.RunDir, opts.LogDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("networks: %w", err)
		}
	}
	files, _ := filepath.Glob(filepath.Join(opts.ConfigDir, "*.xml"))
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		n, err := Parse(data)
		if err != nil {
			m.logf("network %s: %v (definition skipped)", p, err)
			continue
		}
		e := newEntry(n.Name)
		e.def, e.Autostart = n, m.nets.Marked(n.Name)
		m.mu.Lock()
		m.nets.Put(e)
		m.mu.Unlock()
		m.reattach(e)
	}
	if opts.Default && !m.nets.Exists("default") {
		if err := m.defineDefault(); err != nil {
			m.logf("network default: %v", err)
		}
	}
	return m, nil
}

func (m *Manager) statusPath(name string) string { return filepath.Join(m.opts.RunDir, name+".json") }

// defineDefault defines `default` on the first free 192.168.N.0/24 from
// 122 on, with autostart, as libvirt's default network.
func (m *Manager) defineDefault() error {
	for i := 122; i < 255; i++ {
		sub := &net.IPNet{IP: net.IPv4(192, 168, byte(i), 0).To4(), Mask: net.CIDRMask(24, 32)}
		if subnetInUse(sub) || m.subnetTaken(sub) {
			continue
		}
		if err := m.Define("default", DefaultXML(sub.IP)); err != nil {
			return err
		}
		return m.SetAutostart("default", true)
	}
	return errors.New("no free 192.168.N.0/24 subnet")
}

// subnetTaken tells whether one of this instance's networks uses subnet.
func (m *Manager) subnetTaken(sub *net.IPNet) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	taken := false
	m.nets.Each(func(e *entry) {
		if e.def == nil {
			return
		}
		for _, ip := range e.def.IPs {
			taken = taken || ip.Net.Contains(sub.IP) || sub.Contains(ip.Net.IP)
		}
	})
	return taken
}

// reattach takes over an active network from its status file, or clears a
// status whose bridge is gone.
func (m *Manager) reattach(e *entry) {
	data, err := os.ReadFile(m.statusPath(e.Name))
	if err != nil {
		return
	}
	var st status
	if json.Unmarshal(data, &st) != nil || !linkExists(st.Bridge) {
		m.logf("network %s: its bridge is gone; marking it inactive", e.Name)
		m.undo(context.Background(), e.Name, &st, nil)
		return
	}
	e.st = &st
	if st.DnsmasqPid > 0 {
		p, err := procmgr.Attach(st.DnsmasqPid, st.DnsmasqStart)
		if err != nil {
			m.logf("network %s: dnsmasq (pid %d) is gone; restarting it", e.Name, st.DnsmasqPid)
			if err := m.startDnsmasq(context.Background(), e); err != nil {
				e.LastErr = err.Error()
			}
			return
		}
		e.dnsmasq = p
	}
}

func (m *Manager) lookup(name string) (*entry, error) { return m.nets.Lookup(name) }

// Names lists the networks, sorted.
func (m *Manager) Names() []string { return m.nets.Names() }

// Exists tells whether name is a network or an empty slot.
func (m *Manager) Exists(name string) bool { return m.nets.Exists(name) }

// Create makes an empty slot, defined by a later Define.
func (m *Manager) Create(name string) error {
	if !nameRE.MatchString(name) {
		return errkind.Errorf(errkind.ErrInvalid, "network name %q: use letters, digits and _ . + - (at most 64, not starting with . + -)", name)
	}
	return m.nets.Add(newEntry(name))
}

// Define checks a network XML and stores it as name's definition. An
// active network keeps running as it was; the definition takes effect at
// the next start.
func (m *Manager) Define(name string, data []byte) (err error) {
	defer func() { m.noteResult(name, err) }()
	n, err := Parse(data)
	if err != nil {
		return errkind.Errorf(errkind.ErrInvalid, "define network %s: %w", name, err)
	}
	if n.Name != name {
		return errkind.Errorf(errkind.ErrInvalid, "define network %s: the XML names it %q", name, n.Name)
	}
	m.mu.Lock()
	e, ok := m.nets.Get(name)
	if !ok {
		e = newEntry(name)
		m.nets.Put(e)
	}
	m.mu.Unlock()
	e.Op.Lock()
	defer e.Op.Unlock()
	if e.def != nil && n.UUID == "" {
		n.UUID = e.def.UUID
		setChild(n.doc.Root(), "uuid", 1).SetText(n.UUID)
	}
	if err := m.checkConflicts(n); err != nil {
		return errkind.Errorf(errkind.ErrInvalid, "define network %s: %w", name, err)
	}
	n.Expand(m.pickBridge)
	if err := writeAtomic(m.nets.DefPath(name), n.XML()); err != nil {
		return errkind.Errorf(errkind.ErrIO, "define network %s: %w", name, err)
	}
	m.mu.Lock()
	e.def = n
	m.mu.Unlock()
	return nil
}

// noteResult records the outcome of a command as the network's `error`.
func (m *Manager) noteResult(name string, err error) {
	if e, lerr := m.lookup(name); lerr == nil {
		m.nets.Note(e, err)
	}
}

// checkConflicts refuses a definition whose UUID, bridge or subnet another
// network of the instance has.
func (m *Manager) checkConflicts(n *Network) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var err error
	m.nets.Each(func(o *entry) {
		if err != nil || o.def == nil || o.Name == n.Name {
			return
		}
		switch {
		case n.UUID != "" && o.def.UUID == n.UUID:
			err = fmt.Errorf("network %s has UUID %s already", o.Name, n.UUID)
			return
		case n.Bridge != "" && o.def.Bridge == n.Bridge && n.Mode != ModeBridge:
			err = fmt.Errorf("network %s uses bridge %s already", o.Name, n.Bridge)
			return
		}
		for _, a := range n.IPs {
			for _, b := range o.def.IPs {
				if err == nil && (a.Net.Contains(b.Net.IP) || b.Net.Contains(a.Net.IP)) {
					err = fmt.Errorf("subnet %s overlaps network %s's %s", a.Net, o.Name, b.Net)
				}
			}
		}
	})
	return err
}

// pickBridge returns the first virbrN that no network defines and no host
// interface has (called with no lock held).
func (m *Manager) pickBridge() string {
	m.mu.Lock()
	used := map[string]bool{}
	m.nets.Each(func(o *entry) {
		if o.def != nil {
			used[o.def.Bridge] = true
		}
	})
	m.mu.Unlock()
	for i := 0; ; i++ {
		b := fmt.Sprintf("virbr%d", i)
		if !used[b] && !linkExists(b) {
			return b
		}
	}
}

// Remove undefines a network (EBUSY while active).
func (m *Manager) Remove(name string) error {
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	if e.st != nil {
		return errkind.Errorf(errkind.ErrBusy, "undefine network %s: it is active; destroy it first", name)
	}
	return m.nets.Remove(name)
}

// Config is the stored definition ("" for an empty slot).
func (m *Manager) Config(name string) ([]byte, error) {
	e, err := m.lookup(name)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.def == nil {
		return nil, nil
	}
	return e.def.XML(), nil
}

// State is "active", "inactive" or "undefined" (an empty slot).
func (m *Manager) State(name string) (string, error) {
	e, err := m.lookup(name)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case e.def == nil:
		return "undefined", nil
	case e.st != nil:
		return "active", nil
	}
	return "inactive", nil
}

// LastError is the last failure of a command on the network.
func (m *Manager) LastError(name string) string { return m.nets.LastError(name) }

// Control runs one ctl command: start, destroy, autostart on|off.
func (m *Manager) Control(ctx context.Context, name, line string) (err error) {
	if _, err := m.lookup(name); err != nil {
		return err
	}
	defer func() { m.noteResult(name, err) }()
	f := strings.Fields(line)
	switch {
	case len(f) == 1 && f[0] == "start":
		return m.Start(ctx, name)
	case len(f) == 1 && f[0] == "destroy":
		return m.Destroy(ctx, name)
	case len(f) == 2 && f[0] == "autostart" && (f[1] == "on" || f[1] == "off"):
		return m.SetAutostart(name, f[1] == "on")
	}
	return errkind.Errorf(errkind.ErrInvalid, "network %s: unknown command %q; commands: start, destroy, autostart on|off", name, strings.TrimSpace(line))
}

// SetAutostart marks the network to be started when the instance mounts.
func (m *Manager) SetAutostart(name string, on bool) error {
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	if e.def == nil {
		return errkind.Errorf(errkind.ErrInvalid, "autostart network %s: it is not defined", name)
	}
	return m.nets.SetAutostart(e, on)
}

// Autostart starts every inactive network marked autostart.
func (m *Manager) Autostart(ctx context.Context) {
	m.nets.Autostart(ctx, func(e *entry) bool { return e.st == nil && e.def != nil }, m.Start, m.logf)
}

// table is the nftables table of a network of this instance.
func (m *Manager) table(name string) string {
	h := sha256.Sum256([]byte(m.opts.ID + "\x00" + name))
	return "qemufs_" + hex.EncodeToString(h[:6])
}

// Start brings a defined network up: bridge, addresses, firewall, dnsmasq.
// On failure nothing is left behind.
func (m *Manager) Start(ctx context.Context, name string) error {
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	m.mu.Lock()
	n, active := e.def, e.st != nil
	m.mu.Unlock()
	switch {
	case n == nil:
		return errkind.Errorf(errkind.ErrInvalid, "start network %s: it is not defined: write its config.xml first", name)
	case active:
		return errkind.Errorf(errkind.ErrBusy, "start network %s: it is already active", name)
	case os.Geteuid() != 0:
		return errkind.Errorf(errkind.ErrPerm, "start network %s: creating bridges and firewall rules needs root (a session instance uses user-mode networking for type='network')", name)
	}
	st := &status{Bridge: n.Bridge}
	fail := func(err error) error {
		m.undo(ctx, name, st, nil)
		return errkind.Errorf(errkind.ErrIO, "start network %s: %w", name, err)
	}
	if n.Mode == ModeBridge {
		if !isBridge(n.Bridge) {
			return errkind.Errorf(errkind.ErrInvalid, "start network %s: host bridge %s does not exist", name, n.Bridge)
		}
	} else {
		if err := createBridge(ctx, n); err != nil {
			return errkind.Errorf(errkind.ErrIO, "start network %s: %w", name, err)
		}
		st.CreatedBridge = true
	}
	if n.Mode == ModeNAT || n.Mode == ModeRoute {
		if err := enableForwarding(); err != nil {
			return fail(err)
		}
	}
	if rules := firewall(m.table(name), n); rules != "" {
		st.Table = m.table(name)
		if err := addFirewall(ctx, st.Table, rules); err != nil {
			return fail(err)
		}
	}
	m.mu.Lock()
	e.st = st
	m.mu.Unlock()
	if n.DHCPIP() != nil || n.Mode == ModeNAT || n.Mode == ModeRoute {
		if err := m.startDnsmasq(ctx, e); err != nil {
			m.mu.Lock()
			e.st = nil
			m.mu.Unlock()
			return fail(err)
		}
	}
	if err := m.saveStatus(name, st); err != nil {
		m.stop(ctx, e)
		return errkind.Errorf(errkind.ErrIO, "start network %s: %w", name, err)
	}
	return nil
}

// Destroy takes an active network down and removes what it added.
// Guests' TAP devices on it go with the bridge, as in libvirt.
func (m *Manager) Destroy(ctx context.Context, name string) error {
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	e.Op.Lock()
	defer e.Op.Unlock()
	m.mu.Lock()
	active := e.st != nil
	m.mu.Unlock()
	if !active {
		return errkind.Errorf(errkind.ErrBusy, "destroy network %s: it is not active", name)
	}
	if err := m.stop(ctx, e); err != nil {
		return errkind.Errorf(errkind.ErrIO, "destroy network %s: %w", name, err)
	}
	return nil
}

// stop ends dnsmasq and undoes the status; the caller holds e.Op.
func (m *Manager) stop(ctx context.Context, e *entry) error {
	m.mu.Lock()
	st, p := e.st, e.dnsmasq
	e.st, e.dnsmasq = nil, nil
	m.mu.Unlock()
	return m.undo(ctx, e.Name, st, p)
}

// undo removes, in reverse, what a start added, and the status file.
func (m *Manager) undo(ctx context.Context, name string, st *status, dnsmasq *procmgr.Process) error {
	var errs []error
	if dnsmasq == nil && st != nil && st.DnsmasqPid > 0 {
		dnsmasq, _ = procmgr.Attach(st.DnsmasqPid, st.DnsmasqStart)
	}
	if dnsmasq != nil {
		dnsmasq.Signal(syscall.SIGTERM)
		select {
		case <-dnsmasq.Done():
		case <-time.After(5 * time.Second):
			dnsmasq.Kill()
			<-dnsmasq.Done()
		}
		dnsmasq.Cleanup()
	}
	if st != nil {
		if err := removeFirewall(ctx, st.Table); err != nil {
			errs = append(errs, err)
		}
		if st.CreatedBridge {
			if err := deleteLink(ctx, st.Bridge); err != nil {
				errs = append(errs, err)
			}
		}
	}
	os.Remove(m.statusPath(name))
	os.Remove(m.dnsmasqConf(name))
	return errors.Join(errs...)
}

func (m *Manager) saveStatus(name string, st *status) error {
	data, _ := json.Marshal(st)
	return writeAtomic(m.statusPath(name), data)
}

func (m *Manager) dnsmasqConf(name string) string {
	return filepath.Join(m.opts.RunDir, name+".conf")
}

// leasesPath is dnsmasq's lease file of a network.
func (m *Manager) leasesPath(name string) string {
	return filepath.Join(m.opts.RunDir, name+".leases")
}

// dnsmasqConfig is dnsmasq's configuration for a network: DHCP and DNS on
// its bridge only.
func (m *Manager) dnsmasqConfig(n *Network) string {
	var b strings.Builder
	fmt.Fprintf(&b, "strict-order\nexcept-interface=lo\nbind-dynamic\ninterface=%s\n", n.Bridge)
	if n.Domain != "" {
		fmt.Fprintf(&b, "domain=%s\nexpand-hosts\nlocal=/%s/\n", n.Domain, n.Domain)
	}
	fmt.Fprintf(&b, "log-facility=%s\n", filepath.Join(m.opts.LogDir, n.Name+"-dnsmasq.log"))
	if ip := n.DHCPIP(); ip != nil {
		size := 0
		for _, r := range ip.DHCP {
			fmt.Fprintf(&b, "dhcp-range=%s,%s,%s\n", r.Start, r.End, net.IP(ip.Net.Mask))
			size += int(ipToUint(r.End)-ipToUint(r.Start)) + 1
		}
		for _, h := range ip.Hosts {
			parts := []string{}
			if h.MAC != "" {
				parts = append(parts, h.MAC)
			}
			parts = append(parts, h.IP.String())
			if h.Name != "" {
				parts = append(parts, h.Name)
			}
			fmt.Fprintf(&b, "dhcp-host=%s\n", strings.Join(parts, ","))
		}
		if len(ip.DHCP) == 0 {
			fmt.Fprintf(&b, "dhcp-range=%s,static\n", ip.Net.IP)
		}
		fmt.Fprintf(&b, "dhcp-no-override\ndhcp-authoritative\ndhcp-lease-max=%d\n", size+len(ip.Hosts))
		fmt.Fprintf(&b, "dhcp-leasefile=%s\n", m.leasesPath(n.Name))
	}
	return b.String()
}

func ipToUint(ip net.IP) uint32 {
	ip = ip.To4()
	return uint32(ip[0])<<24 | uint32(ip[1])<<16 | uint32(ip[2])<<8 | uint32(ip[3])
}

// startDnsmasq starts the network's dnsmasq, which outlives the daemon
// like QEMU does; it drops root for its own unprivileged user.
func (m *Manager) startDnsmasq(ctx context.Context, e *entry) error {
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		return errors.New("dnsmasq is not installed (Debian package dnsmasq-base)")
	}
	conf := m.dnsmasqConf(e.Name)
	if err := writeAtomic(conf, []byte(m.dnsmasqConfig(e.def))); err != nil {
		return err
	}
	p, err := procmgr.Start(ctx, procmgr.Spec{
		Name:    "dnsmasq-" + e.Name,
		Path:    bin,
		Args:    []string{"--keep-in-foreground", "--conf-file=" + conf},
		Env:     []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		Dir:     "/",
		LogPath: filepath.Join(m.opts.LogDir, e.Name+"-dnsmasq.log"),
	})
	if err != nil {
		return fmt.Errorf("dnsmasq: %w", err)
	}
	// dnsmasq checks its configuration before it serves: an early exit
	// is a refusal whose reason is in its log.
	select {
	case <-p.Done():
		p.Cleanup()
		return fmt.Errorf("dnsmasq exited (%s): %s", p.Exit(), lastLine(filepath.Join(m.opts.LogDir, e.Name+"-dnsmasq.log")))
	case <-time.After(200 * time.Millisecond):
	}
	m.mu.Lock()
	e.dnsmasq = p
	if e.st != nil {
		e.st.DnsmasqPid, e.st.DnsmasqStart = p.Pid, p.StartTime
	}
	st := e.st
	m.mu.Unlock()
	if st != nil {
		m.saveStatus(e.Name, st)
	}
	return nil
}

func lastLine(path string) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return lines[len(lines)-1]
}

// Lease is one DHCP lease, as the leases file shows it.
type Lease struct {
	Expiry   int64  `json:"expiry"`
	MAC      string `json:"mac"`
	IP       string `json:"ip"`
	Hostname string `json:"hostname,omitempty"`
	ClientID string `json:"clientId,omitempty"`
	Prefix   int    `json:"prefix,omitempty"` // the network's prefix length
}

// Leases returns the network's current DHCP leases.
func (m *Manager) Leases(name string) ([]Lease, error) {
	e, err := m.lookup(name)
	if err != nil {
		return nil, err
	}
	prefix := 0
	m.mu.Lock()
	if e.def != nil && e.def.DHCPIP() != nil {
		prefix, _ = e.def.DHCPIP().Net.Mask.Size()
	}
	m.mu.Unlock()
	f, err := os.Open(m.leasesPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, errkind.Errorf(errkind.ErrIO, "leases of network %s: %w", name, err)
	}
	defer f.Close()
	var out []Lease
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 4 || fl[0] == "duid" {
			continue
		}
		var l Lease
		fmt.Sscan(fl[0], &l.Expiry)
		l.MAC, l.IP = fl[1], fl[2]
		if fl[3] != "*" {
			l.Hostname = fl[3]
		}
		if len(fl) > 4 && fl[4] != "*" {
			l.ClientID = fl[4]
		}
		l.Prefix = prefix
		out = append(out, l)
	}
	return out, nil
}

// LeasesJSON is the leases file's content: one JSON object per line.
func (m *Manager) LeasesJSON(name string) ([]byte, error) {
	ls, err := m.Leases(name)
	if err != nil {
		return nil, err
	}
	var b []byte
	for _, l := range ls {
		j, _ := json.Marshal(l)
		b = append(append(b, j...), '\n')
	}
	return b, nil
}

// LeaseFor returns the lease of a MAC address on any active network.
func (m *Manager) LeaseFor(mac string) (Lease, string, bool) {
	for _, name := range m.Names() {
		ls, _ := m.Leases(name)
		for _, l := range ls {
			if strings.EqualFold(l.MAC, mac) {
				return l, name, true
			}
		}
	}
	return Lease{}, "", false
}

// Tap makes a TAP device on the bridge of active network name for a guest
// interface with MAC mac.
func (m *Manager) Tap(ctx context.Context, name, mac string) (*Tap, error) {
	e, err := m.lookup(name)
	if err != nil {
		return nil, errkind.Errorf(errkind.ErrInvalid, "network %q is not defined", name)
	}
	m.mu.Lock()
	st := e.st
	m.mu.Unlock()
	if st == nil {
		return nil, errkind.Errorf(errkind.ErrInvalid, "network %s is not active: echo start > networks/%s/ctl", name, name)
	}
	t, err := OpenTap(ctx, st.Bridge, mac, "")
	if err != nil {
		return nil, errkind.Errorf(errkind.ErrIO, "network %s: %w", name, err)
	}
	return t, nil
}

// writeAtomic replaces a file of the network driver atomically.
func writeAtomic(path string, data []byte) error { return atomicfile.WriteFile(path, data, 0o600) }
