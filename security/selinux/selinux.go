// Package selinux is the SELinux sVirt driver's logic: base contexts,
// unique MCS categories per guest, and the labels a guest's process and
// files get. The kernel side sits behind Labeler, so the logic is tested
// with Memory on hosts without SELinux.
package selinux

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/qemufs/qemufs/security/lsm"
)

// Labeler reads and sets file labels.
type Labeler interface {
	FileLabel(path string) (string, error)
	SetFileLabel(path, label string) error
}

// Kernel is the real Labeler: the security.selinux extended attribute.
type Kernel struct{}

// FileLabel implements Labeler.
func (Kernel) FileLabel(path string) (string, error) { return lsm.FileLabel(path) }

// SetFileLabel implements Labeler.
func (Kernel) SetFileLabel(path, label string) error { return lsm.SetFileLabel(path, label) }

// Memory is an in-memory Labeler for tests. A path never labeled reads as
// Default, so restore-to-original is observable.
type Memory struct {
	Default string
	mu      sync.Mutex
	labels  map[string]string
}

// FileLabel implements Labeler; the path must exist.
func (m *Memory) FileLabel(path string) (string, error) {
	if _, err := os.Stat(path); err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if l, ok := m.labels[path]; ok {
		return l, nil
	}
	return m.Default, nil
}

// SetFileLabel implements Labeler; the path must exist.
func (m *Memory) SetFileLabel(path, label string) error {
	if _, err := os.Stat(path); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.labels == nil {
		m.labels = map[string]string{}
	}
	m.labels[path] = label
	return nil
}

// Contexts are the policy's base contexts for guests.
type Contexts struct {
	Domain    string // KVM guests' process: system_u:system_r:svirt_t:s0
	TCGDomain string // TCG guests' process: system_u:system_r:svirt_tcg_t:s0
	Image     string // exclusive and shared images: system_u:object_r:svirt_image_t:s0
	Content   string // read-only content: system_u:object_r:svirt_content_t:s0
}

// DefaultContexts are the targeted policy's values.
func DefaultContexts() Contexts {
	return Contexts{
		Domain:    "system_u:system_r:svirt_t:s0",
		TCGDomain: "system_u:system_r:svirt_tcg_t:s0",
		Image:     "system_u:object_r:svirt_image_t:s0",
		Content:   "system_u:object_r:svirt_content_t:s0",
	}
}

// LoadContexts reads the policy's virtual_domain_context (process, then
// TCG process) and virtual_image_context (image, then content) under
// dir, for example /etc/selinux/targeted/contexts; missing files or
// lines keep the defaults.
func LoadContexts(dir string) Contexts {
	c := DefaultContexts()
	read := func(name string, into ...*string) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return
		}
		i := 0
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") || i >= len(into) {
				continue
			}
			*into[i] = line
			i++
		}
	}
	read("virtual_domain_context", &c.Domain, &c.TCGDomain)
	read("virtual_image_context", &c.Image, &c.Content)
	return c
}

// Context is an SELinux context "user:role:type:level" split in parts.
type Context struct{ User, Role, Type, Level string }

// ParseContext splits a context; the level keeps its own colons
// ("s0:c1,c2").
func ParseContext(s string) (Context, error) {
	p := strings.SplitN(s, ":", 4)
	if len(p) != 4 || p[0] == "" || p[1] == "" || p[2] == "" || p[3] == "" {
		return Context{}, fmt.Errorf("selinux context %q: want user:role:type:level", s)
	}
	return Context{p[0], p[1], p[2], p[3]}, nil
}

func (c Context) String() string { return c.User + ":" + c.Role + ":" + c.Type + ":" + c.Level }

// WithCategories returns ctx at its sensitivity ("s0") with the given
// categories ("c1,c2") appended: the guest's MCS level.
func WithCategories(ctx, cats string) (string, error) {
	c, err := ParseContext(ctx)
	if err != nil {
		return "", err
	}
	sens, _, _ := strings.Cut(c.Level, ":")
	sens, _, _ = strings.Cut(sens, "-")
	c.Level = sens
	if cats != "" {
		c.Level += ":" + cats
	}
	return c.String(), nil
}

// Categories returns the category part of a context's level ("c1,c2"),
// "" when it has none.
func Categories(ctx string) string {
	c, err := ParseContext(ctx)
	if err != nil {
		return ""
	}
	_, cats, _ := strings.Cut(c.Level, ":")
	return cats
}

// MCS hands out category pairs "cA,cB" (A < B) unique among running
// guests. A pair is reused only after Release. Static labels share their
// pair with each other but never with a dynamic guest.
type MCS struct {
	n    int // categories c0..c(n-1)
	mu   sync.Mutex
	used map[string]int
}

// NewMCS returns an allocator over categories c0..c(n-1); libvirt's
// default range is 1024.
func NewMCS(n int) *MCS { return &MCS{n: n, used: map[string]int{}} }

// ErrExhausted is returned when every category pair is in use.
var ErrExhausted = errors.New("no free MCS category pair")

// Allocate reserves a free random pair.
func (m *MCS) Allocate() (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	total := m.n * (m.n - 1) / 2
	if len(m.used) >= total {
		return "", ErrExhausted
	}
	// Random probing finds a free pair fast while the space is sparse;
	// a scan guarantees an answer when it is nearly full.
	for i := 0; i < 64; i++ {
		a, _ := rand.Int(rand.Reader, big.NewInt(int64(m.n)))
		b, _ := rand.Int(rand.Reader, big.NewInt(int64(m.n)))
		x, y := int(a.Int64()), int(b.Int64())
		if x == y {
			continue
		}
		if x > y {
			x, y = y, x
		}
		if s := pair(x, y); m.used[s] == 0 {
			m.used[s] = 1
			return s, nil
		}
	}
	for x := 0; x < m.n; x++ {
		for y := x + 1; y < m.n; y++ {
			if s := pair(x, y); m.used[s] == 0 {
				m.used[s] = 1
				return s, nil
			}
		}
	}
	return "", ErrExhausted
}

func pair(x, y int) string { return fmt.Sprintf("c%d,c%d", x, y) }

// Reserve marks cats as in use, for a guest found running after a
// restart (exclusive: an error if already in use) or a static label
// (shared with other static labels).
func (m *MCS) Reserve(cats string, exclusive bool) error {
	if cats == "" {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if exclusive && m.used[cats] > 0 {
		return fmt.Errorf("MCS categories %s are already in use by another guest", cats)
	}
	m.used[cats]++
	return nil
}

// Release frees one use of cats.
func (m *MCS) Release(cats string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.used[cats] <= 1 {
		delete(m.used, cats)
	} else {
		m.used[cats]--
	}
}

// InUse reports how many distinct pairs are held.
func (m *MCS) InUse() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.used)
}

// HostContexts loads the contexts of the policy named in
// /etc/selinux/config (SELINUXTYPE, default "targeted").
func HostContexts() Contexts {
	policy := "targeted"
	if b, err := os.ReadFile("/etc/selinux/config"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "SELINUXTYPE="); ok && v != "" && !strings.Contains(v, "/") {
				policy = v
			}
		}
	}
	return LoadContexts(filepath.Join("/etc/selinux", policy, "contexts"))
}
