package capabilities

import (
	"reflect"
	"strings"
	"testing"
)

func TestQEMUFeatures(t *testing.T) {
	vocab := []string{"sse4.1", "sse4.2", "tsc-deadline", "lahf-lm", "avx512-bf16", "pni", "avx512vbmi2", "sha-ni"}
	flags := []string{"sse4_1", "sse4_2", "tsc_deadline_timer", "lahf_lm", "avx512_bf16", "pni", "avx512_vbmi2", "sha_ni", "constant_tsc", "rep_good"}
	want := []string{"avx512-bf16", "avx512vbmi2", "lahf-lm", "pni", "sha-ni", "sse4.1", "sse4.2", "tsc-deadline"}
	if got := qemuFeatures(flags, vocab); !reflect.DeepEqual(got, want) {
		t.Errorf("- want: %v\n-  got: %v", want, got)
	}
	// Without a QEMU vocabulary, Linux names are kept, '_' made '-'.
	if got := qemuFeatures([]string{"sse4_2", "avx"}, nil); !reflect.DeepEqual(got, []string{"avx", "sse4-2"}) {
		t.Errorf("no vocab: %v", got)
	}
}

func TestMatchModel(t *testing.T) {
	f := strings.Fields
	models := []CPUModel{
		{Name: "qemu64-v1", Vendor: "AuthenticAMD", Usable: true, Features: f("fpu sse sse2 lm")},
		{Name: "qemu64", AliasOf: "qemu64-v1", Usable: true},
		{Name: "Opteron_G1-v1", Vendor: "AuthenticAMD", Usable: true, Features: f("fpu sse sse2 lm mtrr")},
		{Name: "EPYC-v1", Vendor: "AuthenticAMD", Features: f("fpu sse sse2 lm avx avx2 svm npt sha-ni mtrr")},
		{Name: "EPYC", AliasOf: "EPYC-v1"},
		{Name: "EPYC-IBPB", AliasOf: "EPYC-v2"},
		{Name: "EPYC-v2", Vendor: "AuthenticAMD", Features: f("fpu sse sse2 lm avx avx2 svm npt sha-ni mtrr ibpb")},
		{Name: "Skylake-Client-v1", Vendor: "GenuineIntel", Features: f("fpu sse sse2 lm avx avx2 sha-ni mtrr vmx rdseed")},
		{Name: "Skylake-Client", AliasOf: "Skylake-Client-v1"},
	}
	tests := []struct {
		name       string
		vendor     string
		host       string
		usableOnly bool
		want       string
		extra      string
		missing    string
	}{
		// No svm/npt (nested virtualization off) does not stop an EPYC.
		{"epyc guest", "AuthenticAMD", "fpu sse sse2 lm avx avx2 sha-ni mtrr", false, "EPYC", "", "npt svm"},
		{"epyc with ibpb", "AuthenticAMD", "fpu sse sse2 lm avx avx2 sha-ni mtrr ibpb svm npt", false, "EPYC-IBPB", "", ""},
		// One hidden legacy flag does not make it a qemu64.
		{"epyc without mtrr", "AuthenticAMD", "fpu sse sse2 lm avx avx2 sha-ni avx512f", false, "EPYC", "avx512f", "mtrr npt svm"},
		{"old amd", "AuthenticAMD", "fpu sse sse2 lm mtrr", false, "Opteron_G1-v1", "", ""},
		{"intel", "GenuineIntel", "fpu sse sse2 lm avx avx2 sha-ni mtrr rdseed", false, "Skylake-Client", "", "vmx"},
		// Intel host: AMD-named models are not candidates, generic ones are.
		{"plain intel", "GenuineIntel", "fpu sse sse2 lm", false, "qemu64", "", ""},
		{"tcg usable only", "AuthenticAMD", "fpu sse sse2 lm avx avx2 sha-ni mtrr", true, "Opteron_G1-v1", "avx avx2 sha-ni", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mm, ok := matchModel(models, tt.vendor, f(tt.host), tt.usableOnly)
			if !ok {
				t.Fatal("no match")
			}
			if mm.Name != tt.want || strings.Join(mm.Extra, " ") != tt.extra || strings.Join(mm.Missing, " ") != tt.missing {
				t.Errorf("- want: %s +[%s] -[%s]\n-  got: %s +%v -%v", tt.want, tt.extra, tt.missing, mm.Name, mm.Extra, mm.Missing)
			}
		})
	}
	if _, ok := matchModel(nil, "GenuineIntel", f("fpu"), false); ok {
		t.Error("match with no models")
	}
}

func TestNameVendor(t *testing.T) {
	for name, want := range map[string]string{
		"EPYC-Rome-v2": "AuthenticAMD", "Opteron_G3": "AuthenticAMD", "phenom-v1": "AuthenticAMD",
		"Dhyana-v2": "HygonGenuine", "qemu64-v1": "", "kvm32": "", "Skylake-Server-v4": "GenuineIntel", "486-v1": "GenuineIntel",
	} {
		if got := nameVendor(name); got != want {
			t.Errorf("nameVendor(%s) = %q, want %q", name, got, want)
		}
	}
}
