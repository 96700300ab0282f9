package capabilities

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// cacheFormat changes whenever the cached shape or meaning changes, so old
// entries are re-probed rather than misread.
const cacheFormat = 2

// cacheKey identifies what a cached probe is valid for: one version of one
// binary (path, size, mtime, ctime), probed by one qemufs version, with the
// host conditions that change the answers (KVM used or not, host CPU vendor
// for the model expansion, the QEMU module directory that adds devices).
type cacheKey struct {
	Format   int    `json:"format"`
	Path     string `json:"path"`
	Size     int64  `json:"size"`
	MtimeNs  int64  `json:"mtime"`
	CtimeNs  int64  `json:"ctime"`
	Qemufs   string `json:"qemufs"`
	Accels   string `json:"accels,omitempty"`
	Expand   string `json:"expand,omitempty"`
	ModsTime int64  `json:"modules,omitempty"`
	// LaunchSec lists the launch-security features the host kernel
	// offers (see launchSecurityKey): QEMU's SEV and SGX answers change
	// with them.
	LaunchSec string `json:"launchSec,omitempty"`
}

// cacheEntry is one cached probe: compact, with sets as sorted lists.
type cacheEntry struct {
	Key      cacheKey     `json:"key"`
	Emulator cachedResult `json:"emulator"`
}

type cachedResult struct {
	Arch        string     `json:"arch,omitempty"`
	Version     string     `json:"version,omitempty"`
	VersionNum  int        `json:"versionNum,omitempty"`
	Package     string     `json:"package,omitempty"`
	Machines    []Machine  `json:"machines,omitempty"`
	CPUModels   []CPUModel `json:"cpuModels,omitempty"`
	CPUFeatures []string   `json:"cpuFeatures,omitempty"`
	Devices     []string   `json:"devices,omitempty"`
	Commands    []string   `json:"commands,omitempty"`
	KVMPresent  bool       `json:"kvmPresent,omitempty"`
	ProbedAccel string     `json:"probedAccel,omitempty"`
	Err         string     `json:"err,omitempty"`

	SEV      *SEVCapability `json:"sev,omitempty"`
	SEVError string         `json:"sevError,omitempty"`
	SGX      *SGXCapability `json:"sgx,omitempty"`
	SGXError string         `json:"sgxError,omitempty"`
}

// cachePath is where the entry for a binary lives: one file per path.
func cachePath(dir, binary string) string {
	sum := sha256.Sum256([]byte(binary))
	return filepath.Join(dir, hex.EncodeToString(sum[:12])+".json")
}

// loadCache returns the cached probe of key.Path, or nil when there is none
// or it was made for another key (the binary changed, qemufs was upgraded,
// KVM appeared...).
func loadCache(dir string, key cacheKey) *Emulator {
	if dir == "" {
		return nil
	}
	data, err := os.ReadFile(cachePath(dir, key.Path))
	if err != nil {
		return nil
	}
	var ent cacheEntry
	if json.Unmarshal(data, &ent) != nil || ent.Key != key {
		return nil
	}
	r := ent.Emulator
	return &Emulator{
		Path: key.Path, Arch: r.Arch, Version: r.Version, VersionNum: r.VersionNum, Package: r.Package,
		Machines: r.Machines, CPUModels: r.CPUModels, CPUFeatures: r.CPUFeatures,
		Devices: toSet(r.Devices), Commands: toSet(r.Commands),
		KVMPresent: r.KVMPresent, ProbedAccel: r.ProbedAccel, Err: r.Err, Cached: true,
		SEV: r.SEV, SEVError: r.SEVError, SGX: r.SGX, SGXError: r.SGXError,
	}
}

// storeCache writes the probe of key.Path atomically (temp file + rename),
// so a concurrent reader sees the old entry or the new one, never a mix.
func storeCache(dir string, key cacheKey, e *Emulator) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("capabilities cache: %w", err)
	}
	ent := cacheEntry{Key: key, Emulator: cachedResult{
		Arch: e.Arch, Version: e.Version, VersionNum: e.VersionNum, Package: e.Package,
		Machines: e.Machines, CPUModels: e.CPUModels, CPUFeatures: e.CPUFeatures,
		Devices: sortedKeys(e.Devices), Commands: sortedKeys(e.Commands),
		KVMPresent: e.KVMPresent, ProbedAccel: e.ProbedAccel, Err: e.Err,
		SEV: e.SEV, SEVError: e.SEVError, SGX: e.SGX, SGXError: e.SGXError,
	}}
	data, err := json.Marshal(&ent)
	if err != nil {
		return err
	}
	path := cachePath(dir, key.Path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("capabilities cache: %w", err)
	}
	// No fsync: a torn entry after a crash fails to parse and is re-probed.
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("capabilities cache %s: %w", path, err)
	}
	return nil
}

func toSet(names []string) map[string]bool {
	if names == nil {
		return nil
	}
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}
