package capabilities

import (
	"sort"
	"strings"
)

// linuxToQEMU names the few /proc/cpuinfo flags whose QEMU name differs by
// more than punctuation.
var linuxToQEMU = map[string]string{
	"tsc_deadline_timer": "tsc-deadline",
	"sse3":               "pni",
}

// normFeature folds the spelling differences between Linux and QEMU
// feature names: sse4_2 / sse4.2, avx512_bf16 / avx512-bf16.
func normFeature(s string) string {
	return featurePunct.Replace(strings.ToLower(s))
}

var featurePunct = strings.NewReplacer("_", "", "-", "", ".", "")

// qemuFeatures maps Linux cpu flags to QEMU feature names, keeping only the
// flags QEMU knows (the rest are kernel bookkeeping: constant_tsc, rep_good).
// With no QEMU vocabulary (no emulator for the host arch), flags are kept
// with '_' turned into '-'.
func qemuFeatures(flags []string, vocab []string) []string {
	var out []string
	if len(vocab) == 0 {
		for _, f := range flags {
			out = append(out, strings.ReplaceAll(f, "_", "-"))
		}
		return sortUniq(out)
	}
	byNorm := make(map[string]string, len(vocab))
	for _, v := range vocab {
		if _, dup := byNorm[normFeature(v)]; !dup {
			byNorm[normFeature(v)] = v
		}
	}
	for _, f := range flags {
		if q, ok := linuxToQEMU[f]; ok {
			f = q
		}
		if q, ok := byNorm[normFeature(f)]; ok {
			out = append(out, q)
		}
	}
	return sortUniq(out)
}

// nestedOnly reports features a guest commonly lacks only because nested
// virtualization is off (svm, vmx and their details), and KVM paravirt
// features /proc/cpuinfo never shows. They do not count against a model
// when matching the host, so a VM on an EPYC host is still an EPYC.
func nestedOnly(f string) bool {
	switch f {
	case "svm", "npt", "nrip-save", "vmx", "vmcb-clean", "tsc-scale", "flushbyasid",
		"decodeassists", "pause-filter", "pfthreshold", "lbrv", "avic", "vgif",
		"v-vmsave-vmload", "vnmi", "svme-addr-chk":
		return true
	}
	return strings.HasPrefix(f, "vmx-") || strings.HasPrefix(f, "kvm")
}

// modelMatch is a CPU model chosen to describe a host CPU.
type modelMatch struct {
	Name    string   // the name to show (an alias when one points at it)
	Extra   []string // host features the model lacks
	Missing []string // model features the host lacks
}

// matchModel picks the CPU model closest to a host: among the expanded
// models of the host's vendor (and the generic ones), the one that needs
// the fewest changes to describe the host (host features it lacks plus
// features of its own the host lacks, nested-virtualization ones aside);
// on a tie the one with more features, then the vendor's own, then the
// later name (newer version). usableOnly restricts the choice to models QEMU
// reported usable with the accelerator it was probed with.
//
// A strict "model features are a subset of the host's" rule picks qemu32
// on VMs that hide one legacy flag (mtrr) from an AVX-512 EPYC; counting
// changes keeps the family and lists the differences.
func matchModel(models []CPUModel, vendorID string, hostFeatures []string, usableOnly bool) (modelMatch, bool) {
	host := make(map[string]bool, len(hostFeatures))
	for _, f := range hostFeatures {
		host[f] = true
	}
	var best *CPUModel
	bestCost, bestN := 0, 0
	for i := range models {
		m := &models[i]
		if m.Features == nil || m.AliasOf != "" || (usableOnly && !m.Usable) {
			continue
		}
		if m.Vendor != vendorID && nameVendor(m.Name) != "" {
			continue
		}
		n, missing := 0, 0
		for _, f := range m.Features {
			if host[f] {
				n++
			} else if !nestedOnly(f) {
				missing++
			}
		}
		cost := missing + len(hostFeatures) - n
		better := best == nil || cost < bestCost
		if !better && cost == bestCost {
			own, bestOwn := m.Vendor == vendorID, best.Vendor == vendorID
			switch {
			case n != bestN:
				better = n > bestN
			case own != bestOwn:
				better = own
			default:
				better = m.Name > best.Name
			}
		}
		if better {
			best, bestCost, bestN = m, cost, n
		}
	}
	if best == nil {
		return modelMatch{}, false
	}
	mm := modelMatch{Name: displayName(models, best.Name)}
	in := map[string]bool{}
	for _, f := range best.Features {
		in[f] = true
		if !host[f] {
			mm.Missing = append(mm.Missing, f)
		}
	}
	for _, f := range hostFeatures {
		if !in[f] {
			mm.Extra = append(mm.Extra, f)
		}
	}
	sort.Strings(mm.Extra)
	sort.Strings(mm.Missing)
	return mm, true
}

// displayName is the plain alias of a versioned model when there is one
// ("EPYC" for "EPYC-v1"), else the model's own name.
func displayName(models []CPUModel, name string) string {
	var aliases []string
	for _, m := range models {
		if m.AliasOf == name {
			aliases = append(aliases, m.Name)
		}
	}
	if len(aliases) == 0 {
		return name
	}
	sort.Slice(aliases, func(i, j int) bool {
		if len(aliases[i]) != len(aliases[j]) {
			return len(aliases[i]) < len(aliases[j])
		}
		return aliases[i] < aliases[j]
	})
	return aliases[0]
}

func sortUniq(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
