package secrets

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/qemufs/qemufs/internal/atomicfile"
	"github.com/qemufs/qemufs/internal/errkind"
)

// Options configure a Manager.
type Options struct {
	// ConfigDir keeps the definitions (UUID.xml) and the encrypted values
	// (UUID.value).
	ConfigDir string
	// KeyFile is the 32-byte AES-256 key that encrypts the values, made
	// at first use with mode 0600 (only the daemon's user reads it).
	KeyFile string
}

// Manager holds the secrets of one instance.
type Manager struct {
	opts Options

	mu      sync.Mutex
	key     []byte
	secrets map[string]*entry
}

// entry is one secret: a slot made by mkdir, defined by its config.xml.
type entry struct {
	def *Secret
	// value is the value of an ephemeral secret, which never reaches
	// the disk; persistent values are read from their file.
	value   []byte
	hasVal  bool
	lastErr string
}

// ErrPrivate is the reason a private secret's value is not shown.
var ErrPrivate = errors.New("the secret is private (private='yes'): its value can be set but never read back")

// New loads the definitions. The key file is made when missing.
func New(opts Options) (*Manager, error) {
	if err := os.MkdirAll(opts.ConfigDir, 0o700); err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	m := &Manager{opts: opts, secrets: map[string]*entry{}}
	key, err := loadKey(opts.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	m.key = key
	files, _ := filepath.Glob(filepath.Join(opts.ConfigDir, "*.xml"))
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s, err := Parse(data)
		if err != nil || s.UUID == "" || s.UUID+".xml" != filepath.Base(p) {
			continue
		}
		_, err = os.Stat(m.valuePath(s.UUID))
		m.secrets[s.UUID] = &entry{def: s, hasVal: err == nil}
	}
	return m, nil
}

// loadKey reads the at-rest key, or makes one (random, 0600).
func loadKey(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		if err := atomicfile.WriteFile(path, key, 0o600); err != nil {
			return nil, fmt.Errorf("key file: %w", err)
		}
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("key file %s: %d bytes, want 32 (an AES-256 key)", path, len(key))
	}
	return key, nil
}

func (m *Manager) defPath(u string) string   { return filepath.Join(m.opts.ConfigDir, u+".xml") }
func (m *Manager) valuePath(u string) string { return filepath.Join(m.opts.ConfigDir, u+".value") }

// seal encrypts a value with AES-256-GCM; the UUID is bound in as
// additional data, so a value file copied onto another secret fails.
func seal(key []byte, uuid string, value []byte) ([]byte, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return gcm.Seal(nonce, nonce, value, []byte(uuid)), nil
}

// open decrypts what seal made.
func open(key []byte, uuid string, data []byte) ([]byte, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(data) < gcm.NonceSize() {
		return nil, errors.New("value file is truncated")
	}
	out, err := gcm.Open(nil, data[:gcm.NonceSize()], data[gcm.NonceSize():], []byte(uuid))
	if err != nil {
		return nil, errors.New("the value does not decrypt with this instance's key file (wrong or replaced key, or a damaged value file)")
	}
	return out, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func (m *Manager) lookup(name string) (*entry, error) {
	e := m.secrets[name]
	if e == nil {
		return nil, errkind.Errorf(kindNotFound, "secret %s does not exist", name)
	}
	return e, nil
}

// Names lists the secrets' UUIDs, sorted.
func (m *Manager) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for n := range m.secrets {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Exists tells whether name is a secret or an empty slot.
func (m *Manager) Exists(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.secrets[name] != nil
}

// Create makes an empty slot named by its UUID (canonical form: lower
// case with dashes), defined by a later Define.
func (m *Manager) Create(name string) error {
	u, err := CanonicalUUID(name)
	if err != nil || u != name {
		return errkind.Errorf(kindInvalid, "secret directory %q: name it by the secret's UUID, lower case with dashes (e.g. from uuidgen)", name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.secrets[name] != nil {
		return errkind.Errorf(kindExist, "secret %s exists already", name)
	}
	m.secrets[name] = &entry{}
	return nil
}

// Remove undefines a secret and deletes its value.
func (m *Manager) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.lookup(name); err != nil {
		return err
	}
	for _, p := range []string{m.valuePath(name), m.defPath(name)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return errkind.Errorf(kindIO, "undefine secret %s: %w", name, err)
		}
	}
	delete(m.secrets, name)
	return nil
}

// Config returns the definition's XML; an empty slot has none.
func (m *Manager) Config(name string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, err := m.lookup(name)
	if err != nil || e.def == nil {
		return nil, err
	}
	return e.def.XML(), nil
}

// Define checks a secret XML and stores it as name's definition. A
// document without <uuid> takes the directory's name; one with another
// UUID is refused. A usage already claimed by another secret is refused,
// as libvirt does. A secret that is already defined keeps its value, but
// cannot change between ephemeral and persistent.
func (m *Manager) Define(name string, data []byte) (err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			e.lastErr = err.Error()
		} else {
			e.lastErr = ""
		}
	}()
	s, err := Parse(data)
	if err != nil {
		return errkind.Errorf(kindInvalid, "define secret %s: %w", name, err)
	}
	if s.UUID == "" {
		s.UUID = name
	}
	if s.UUID != name {
		return errkind.Errorf(kindInvalid, "define secret %s: the XML's uuid is %s; a secret's directory is named by its UUID", name, s.UUID)
	}
	if e.def != nil && e.def.Ephemeral != s.Ephemeral {
		return errkind.Errorf(kindInvalid, "define secret %s: cannot change ephemeral='%v' of a defined secret (remove it first)", name, yes(e.def.Ephemeral))
	}
	if s.UsageType != "" {
		for u, o := range m.secrets {
			if u != name && o.def != nil && o.def.UsageType == s.UsageType && o.def.UsageID == s.UsageID {
				return errkind.Errorf(kindExist, "define secret %s: secret %s already has usage %s %q", name, u, s.UsageType, s.UsageID)
			}
		}
	}
	if !s.Ephemeral {
		if err := atomicfile.WriteFile(m.defPath(name), s.XML(), 0o600); err != nil {
			return errkind.Errorf(kindIO, "define secret %s: %w", name, err)
		}
	}
	e.def = s
	return nil
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// SetValue stores a secret's value: encrypted in its value file, or in
// memory only for an ephemeral secret. One trailing newline is dropped
// (what echo(1) adds); a value ending in a newline cannot be set.
func (m *Manager) SetValue(name string, value []byte) (err error) {
	value = bytes.TrimSuffix(value, []byte("\n"))
	m.mu.Lock()
	defer m.mu.Unlock()
	e, err := m.lookup(name)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			e.lastErr = err.Error()
		} else {
			e.lastErr = ""
		}
	}()
	if e.def == nil {
		return errkind.Errorf(kindInvalid, "secret %s: write its config.xml before its value", name)
	}
	if len(value) == 0 {
		return errkind.Errorf(kindInvalid, "secret %s: an empty value", name)
	}
	if e.def.Ephemeral {
		e.value, e.hasVal = append([]byte(nil), value...), true
		return nil
	}
	sealed, err := seal(m.key, name, value)
	if err != nil {
		return errkind.Errorf(kindIO, "secret %s: %w", name, err)
	}
	if err := atomicfile.WriteFile(m.valuePath(name), sealed, 0o600); err != nil {
		return errkind.Errorf(kindIO, "secret %s: %w", name, err)
	}
	e.hasVal = true
	return nil
}

// Value returns a secret's value for a user who reads the value file:
// a private secret's is refused (EACCES) with the reason.
func (m *Manager) Value(name string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, err := m.lookup(name)
	if err != nil {
		return nil, err
	}
	if e.def != nil && e.def.Private {
		err := errkind.Errorf(kindPerm, "secret %s: %w", name, ErrPrivate)
		e.lastErr = err.Error()
		return nil, err
	}
	return m.value(name, e)
}

// value reads and decrypts a value; m.mu is held.
func (m *Manager) value(name string, e *entry) ([]byte, error) {
	if e.def == nil {
		return nil, errkind.Errorf(kindNotFound, "secret %s is not defined", name)
	}
	if !e.hasVal {
		return nil, errkind.Errorf(kindNotFound, "secret %s has no value", name)
	}
	if e.def.Ephemeral {
		return append([]byte(nil), e.value...), nil
	}
	data, err := os.ReadFile(m.valuePath(name))
	if err != nil {
		return nil, errkind.Errorf(kindIO, "secret %s: %w", name, err)
	}
	v, err := open(m.key, name, data)
	if err != nil {
		return nil, errkind.Errorf(kindIO, "secret %s: %w", name, err)
	}
	return v, nil
}

// HasValue tells whether a value is set (the value file's size is not
// the value's).
func (m *Manager) HasValue(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.secrets[name]
	return e != nil && e.hasVal
}

// Lookup returns the value of the secret with uuid, or when uuid is empty
// of the one with usage (usageType, usageID), for the drivers that give it
// to QEMU: private secrets are returned too (they stay within the daemon
// and QEMU).
func (m *Manager) Lookup(uuid, usageType, usageID string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if uuid != "" {
		u, err := CanonicalUUID(uuid)
		if err != nil {
			return nil, errkind.Errorf(kindInvalid, "secret: %w", err)
		}
		e := m.secrets[u]
		if e == nil || e.def == nil {
			return nil, errkind.Errorf(kindNotFound, "secret %s is not defined (define it under secrets/%s)", u, u)
		}
		return m.value(u, e)
	}
	for u, e := range m.secrets {
		if e.def != nil && e.def.UsageType == usageType && e.def.UsageID == usageID {
			return m.value(u, e)
		}
	}
	return nil, errkind.Errorf(kindNotFound, "no secret has usage %s %q", usageType, usageID)
}

// LastError is the message of the secret's last failed operation.
func (m *Manager) LastError(name string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.secrets[name]; e != nil {
		return e.lastErr
	}
	return ""
}

// State is "defined", "defined, value set" or "empty" (a slot awaiting
// its config.xml).
func (m *Manager) State(name string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, err := m.lookup(name)
	if err != nil {
		return "", err
	}
	switch {
	case e.def == nil:
		return "empty", nil
	case e.hasVal:
		return "defined, value set", nil
	}
	return "defined", nil
}
