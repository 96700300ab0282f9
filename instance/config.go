package instance

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Config is what qemu.conf says, with libvirt's key names, after defaults
// for the instance kind are applied.
type Config struct {
	// User and Group run QEMU in the system instance (DAC).
	User, Group string
	// DynamicOwnership makes qemufs chown disk images to User:Group at
	// start and restore them at stop.
	DynamicOwnership bool
	// SecurityDriver lists the LSM drivers to use; empty probes the host,
	// ["none"] disables them.
	SecurityDriver []string
	// SecurityDefaultConfined and SecurityRequireConfined are libvirt's
	// knobs for guests without a <seclabel>.
	SecurityDefaultConfined, SecurityRequireConfined bool
	// CgroupControllers are the controllers qemufs may use; nil = all.
	CgroupControllers []string
	// CgroupDeviceACL replaces the default device list; nil = default.
	CgroupDeviceACL []string
	// Namespaces lists the namespaces QEMU gets ("mount").
	Namespaces []string
	// SeccompSandbox: -1 = default for the instance, 0 = off, 1 = on.
	SeccompSandbox int
	// VNCListen is the address VNC servers listen on.
	VNCListen string
	// VNCAutoUnixSocket makes VNC listen on a UNIX socket instead of TCP.
	VNCAutoUnixSocket bool
	// SpiceListen is the address SPICE servers listen on.
	SpiceListen string
	// RemoteDisplayPortMin and RemoteDisplayPortMax bound autoport
	// allocations for VNC and SPICE.
	RemoteDisplayPortMin, RemoteDisplayPortMax int
	// EmulatorPaths are extra emulator binaries to probe.
	EmulatorPaths []string
	// AdminGroup may write to a system mount; ReadGroup may read it.
	AdminGroup, ReadGroup string
	// AutoStartDelay is a pause in milliseconds between autostarted guests.
	AutoStartDelay int
	// LogTimestamp prefixes QEMU's log lines with a time (-msg timestamp=on).
	LogTimestamp bool
	// SetProcessName adds process=qemu:NAME to -name.
	SetProcessName bool
	// MigrationIncomingTimeout is how many seconds a destination waits
	// for an incoming migration's data to start arriving before it
	// aborts the waiting guest (qemufs's own key); 0 waits for ever.
	MigrationIncomingTimeout int
}

// DefaultMigrationIncomingTimeout is migration_incoming_timeout's default,
// in seconds.
const DefaultMigrationIncomingTimeout = 300

// DefaultConfig returns the built-in settings for an instance kind.
func DefaultConfig(k Kind) *Config {
	c := &Config{
		DynamicOwnership:     true,
		SeccompSandbox:       -1,
		VNCListen:            "127.0.0.1",
		SpiceListen:          "127.0.0.1",
		RemoteDisplayPortMin: 5900,
		RemoteDisplayPortMax: 65535,
		LogTimestamp:         true,

		MigrationIncomingTimeout: DefaultMigrationIncomingTimeout,
	}
	if k == System {
		c.User, c.Group = DefaultQEMUUser, DefaultQEMUUser
		c.Namespaces = []string{"mount"}
	}
	return c
}

// DefaultQEMUUser is the account the system instance runs QEMU as, like the
// 'qemu' user of distributions' libvirt packages.
const DefaultQEMUUser = "qemu"

// LoadConfig reads qemu.conf at path, applying it over the defaults of k.
// A missing file gives the defaults. Unknown keys are warnings; bad values
// are errors.
func LoadConfig(path string, k Kind) (*Config, []string, error) {
	c := DefaultConfig(k)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	warnings, err := c.Parse(data)
	if err != nil {
		return nil, warnings, fmt.Errorf("%s:%w", path, err)
	}
	return c, warnings, nil
}

// value is one parsed right-hand side: a string, an integer or a list.
type value struct {
	line int
	str  *string
	num  *int64
	list []value
}

func (v value) kind() string {
	switch {
	case v.str != nil:
		return "a string"
	case v.num != nil:
		return "an integer"
	}
	return "a list"
}

type setter func(c *Config, v value) error

func str(f func(*Config) *string) setter {
	return func(c *Config, v value) error {
		if v.str == nil {
			return fmt.Errorf("expected a string, got %s", v.kind())
		}
		*f(c) = *v.str
		return nil
	}
}

func boolean(f func(*Config) *bool) setter {
	return func(c *Config, v value) error {
		if v.num == nil || (*v.num != 0 && *v.num != 1) {
			return fmt.Errorf("expected 0 or 1")
		}
		*f(c) = *v.num == 1
		return nil
	}
}

func integer(f func(*Config) *int, min, max int64) setter {
	return func(c *Config, v value) error {
		if v.num == nil {
			return fmt.Errorf("expected an integer, got %s", v.kind())
		}
		if *v.num < min || *v.num > max {
			return fmt.Errorf("%d is out of range %d..%d", *v.num, min, max)
		}
		*f(c) = int(*v.num)
		return nil
	}
}

// strings accepts a list of strings, or a single string (as libvirt does for
// security_driver).
func stringList(f func(*Config) *[]string, allowed ...string) setter {
	return func(c *Config, v value) error {
		var out []string
		items := v.list
		if v.str != nil {
			items = []value{v}
		} else if v.num != nil {
			return fmt.Errorf("expected a list of strings, got an integer")
		}
		for _, it := range items {
			if it.str == nil {
				return fmt.Errorf("expected a list of strings, found %s in it", it.kind())
			}
			if len(allowed) > 0 && !contains(allowed, *it.str) {
				return fmt.Errorf("%q is not one of %s", *it.str, strings.Join(allowed, ", "))
			}
			out = append(out, *it.str)
		}
		if out == nil {
			out = []string{}
		}
		*f(c) = out
		return nil
	}
}

func contains(s []string, x string) bool {
	for _, y := range s {
		if x == y {
			return true
		}
	}
	return false
}

var keys = map[string]setter{
	"user":                      str(func(c *Config) *string { return &c.User }),
	"group":                     str(func(c *Config) *string { return &c.Group }),
	"dynamic_ownership":         boolean(func(c *Config) *bool { return &c.DynamicOwnership }),
	"security_driver":           stringList(func(c *Config) *[]string { return &c.SecurityDriver }, "none", "selinux", "apparmor", "dac"),
	"security_default_confined": boolean(func(c *Config) *bool { return &c.SecurityDefaultConfined }),
	"security_require_confined": boolean(func(c *Config) *bool { return &c.SecurityRequireConfined }),
	"cgroup_controllers": stringList(func(c *Config) *[]string { return &c.CgroupControllers },
		"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "net_cls", "perf_event", "name=systemd", "pids", "io"),
	"cgroup_device_acl":       stringList(func(c *Config) *[]string { return &c.CgroupDeviceACL }),
	"namespaces":              stringList(func(c *Config) *[]string { return &c.Namespaces }, "mount"),
	"seccomp_sandbox":         integer(func(c *Config) *int { return &c.SeccompSandbox }, -1, 1),
	"vnc_listen":              str(func(c *Config) *string { return &c.VNCListen }),
	"vnc_auto_unix_socket":    boolean(func(c *Config) *bool { return &c.VNCAutoUnixSocket }),
	"spice_listen":            str(func(c *Config) *string { return &c.SpiceListen }),
	"remote_display_port_min": integer(func(c *Config) *int { return &c.RemoteDisplayPortMin }, 5900, 65535),
	"remote_display_port_max": integer(func(c *Config) *int { return &c.RemoteDisplayPortMax }, 5900, 65535),
	"emulator_paths":          stringList(func(c *Config) *[]string { return &c.EmulatorPaths }),
	"admin_group":             str(func(c *Config) *string { return &c.AdminGroup }),
	"read_group":              str(func(c *Config) *string { return &c.ReadGroup }),
	"auto_start_delay":        integer(func(c *Config) *int { return &c.AutoStartDelay }, 0, 1<<31-1),
	"log_timestamp":           boolean(func(c *Config) *bool { return &c.LogTimestamp }),
	"set_process_name":        boolean(func(c *Config) *bool { return &c.SetProcessName }),

	// qemufs's own (libvirt has no such key): docs/migration.md.
	"migration_incoming_timeout": integer(func(c *Config) *int { return &c.MigrationIncomingTimeout }, 0, 1<<31-1),
}

// KnownKeys lists the qemu.conf keys qemufs acts on.
func KnownKeys() []string {
	var k []string
	for name := range keys {
		k = append(k, name)
	}
	sort.Strings(k)
	return k
}

// Parse applies qemu.conf text to c. Errors start with the line number.
func (c *Config) Parse(data []byte) (warnings []string, err error) {
	p := &parser{src: string(data), line: 1}
	for {
		p.skipSpace(true)
		if p.eof() {
			break
		}
		line := p.line
		key := p.ident()
		if key == "" {
			return warnings, fmt.Errorf("%d: expected a key, found %q", line, p.rest())
		}
		p.skipSpace(false)
		if !p.accept('=') {
			return warnings, fmt.Errorf("%d: expected '=' after %s", line, key)
		}
		v, err := p.value()
		if err != nil {
			return warnings, fmt.Errorf("%d: %s: %v", p.line, key, err)
		}
		p.skipSpace(false)
		if !p.eof() && !p.accept('\n') && !p.accept(';') {
			if p.peek() != '#' {
				return warnings, fmt.Errorf("%d: %s: unexpected %q after the value", p.line, key, p.rest())
			}
		}
		set, ok := keys[key]
		if !ok {
			warnings = append(warnings, fmt.Sprintf("line %d: unknown key %q ignored", line, key))
			continue
		}
		if err := set(c, v); err != nil {
			return warnings, fmt.Errorf("%d: %s: %v", line, key, err)
		}
	}
	if c.RemoteDisplayPortMin > c.RemoteDisplayPortMax {
		return warnings, fmt.Errorf(" remote_display_port_min %d is above remote_display_port_max %d",
			c.RemoteDisplayPortMin, c.RemoteDisplayPortMax)
	}
	return warnings, nil
}

type parser struct {
	src  string
	pos  int
	line int
}

func (p *parser) eof() bool { return p.pos >= len(p.src) }

func (p *parser) peek() byte {
	if p.eof() {
		return 0
	}
	return p.src[p.pos]
}

func (p *parser) rest() string {
	r := p.src[p.pos:]
	if i := strings.IndexByte(r, '\n'); i >= 0 {
		r = r[:i]
	}
	return r
}

func (p *parser) accept(b byte) bool {
	if p.peek() == b && !p.eof() {
		if b == '\n' {
			p.line++
		}
		p.pos++
		return true
	}
	return false
}

// skipSpace skips blanks and comments; newlines too when nl is set.
func (p *parser) skipSpace(nl bool) {
	for !p.eof() {
		switch b := p.peek(); {
		case b == ' ' || b == '\t' || b == '\r':
			p.pos++
		case b == '\n' && nl:
			p.pos++
			p.line++
		case b == '#':
			for !p.eof() && p.peek() != '\n' {
				p.pos++
			}
		default:
			return
		}
	}
}

func (p *parser) ident() string {
	start := p.pos
	for !p.eof() {
		b := p.peek()
		if b == '_' || b == '.' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' && p.pos > start {
			p.pos++
			continue
		}
		break
	}
	return p.src[start:p.pos]
}

func (p *parser) value() (value, error) {
	p.skipSpace(false)
	v := value{line: p.line}
	switch b := p.peek(); {
	case b == '"' || b == '\'':
		p.pos++
		end := strings.IndexByte(p.src[p.pos:], b)
		if end < 0 {
			return v, fmt.Errorf("unterminated string")
		}
		s := p.src[p.pos : p.pos+end]
		if strings.Contains(s, "\n") {
			return v, fmt.Errorf("unterminated string")
		}
		p.pos += end + 1
		v.str = &s
	case b == '-' || b >= '0' && b <= '9':
		start := p.pos
		p.pos++
		for !p.eof() && p.peek() >= '0' && p.peek() <= '9' {
			p.pos++
		}
		n, err := strconv.ParseInt(p.src[start:p.pos], 10, 64)
		if err != nil {
			return v, fmt.Errorf("bad number %q", p.src[start:p.pos])
		}
		v.num = &n
	case b == '[':
		p.pos++
		v.list = []value{}
		for {
			p.skipSpace(true)
			if p.accept(']') {
				return v, nil
			}
			if p.eof() {
				return v, fmt.Errorf("unterminated list")
			}
			item, err := p.value()
			if err != nil {
				return v, err
			}
			if item.list != nil {
				return v, fmt.Errorf("nested lists are not allowed")
			}
			v.list = append(v.list, item)
			p.skipSpace(true)
			if p.accept(']') {
				return v, nil
			}
			if !p.accept(',') {
				if p.eof() {
					return v, fmt.Errorf("unterminated list")
				}
				return v, fmt.Errorf("expected ',' or ']' in list, found %q", p.rest())
			}
		}
	default:
		if p.eof() || b == '\n' {
			return v, fmt.Errorf("missing value")
		}
		return v, fmt.Errorf("bad value %q: strings need quotes", p.rest())
	}
	return v, nil
}
