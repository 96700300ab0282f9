package domain

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// corpusDir finds libvirt's qemuxml corpus ($QEMUFS_CORPUS, else
// shared/corpus/libvirt-qemuxml beside the checkout or above it).
func corpusDir(t *testing.T) string {
	if d := os.Getenv("QEMUFS_CORPUS"); d != "" {
		return d
	}
	dir, _ := filepath.Abs(".")
	for {
		c := filepath.Join(dir, "shared", "corpus", "libvirt-qemuxml")
		if _, err := os.Stat(filepath.Join(c, "TIERS.txt")); err == nil {
			return c
		}
		if dir == filepath.Dir(dir) {
			t.Skip("libvirt corpus not found (set QEMUFS_CORPUS)")
		}
		dir = filepath.Dir(dir)
	}
}

// tpmLines returns the -chardev/-tpmdev/-device arguments of a TPM from
// an argv, as "OPTION VALUE" strings in order.
func tpmLines(args []string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		a, v := args[i], args[i+1]
		switch {
		case a == "-tpmdev",
			a == "-chardev" && strings.Contains(v, "id=chrtpm"),
			a == "-device" && strings.Contains(v, `"tpmdev"`):
			out = append(out, a+" "+v)
		}
	}
	return out
}

// splitArgs splits a libvirt .args file into words (one argument per
// line, backslash continuations, single quotes).
func splitArgs(s string) []string {
	var out []string
	for _, line := range strings.Split(strings.ReplaceAll(s, "\\\n", "\n"), "\n") {
		for _, w := range strings.Fields(strings.TrimSpace(line)) {
			out = append(out, strings.Trim(w, "'"))
		}
	}
	return out
}

// TestTPMArgvCorpus: an emulated or external TPM's arguments are exactly
// libvirt's, for every tpm-emulator and tpm-external case of the corpus
// (libvirt's tests put the swtpm socket at /dev/test).
func TestTPMArgvCorpus(t *testing.T) {
	dir := corpusDir(t)
	cases, _ := filepath.Glob(filepath.Join(dir, "tpm-emulator*.xml"))
	cases = append(cases, filepath.Join(dir, "tpm-external.xml"))
	if len(cases) < 4 {
		t.Fatalf("only %d TPM cases in %s", len(cases), dir)
	}
	for _, f := range cases {
		name := strings.TrimSuffix(filepath.Base(f), ".xml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join(dir, name+".x86_64-latest.args"))
			if err != nil {
				t.Fatal(err)
			}
			d, err := Parse(data)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if err := Expand(d, nil); err != nil {
				t.Fatalf("Expand: %v", err)
			}
			opts := argvOpts
			opts.TPMSocket = "/dev/test"
			cmd, err := BuildCommand(d, opts)
			if err != nil {
				t.Fatalf("BuildCommand: %v", err)
			}
			got, exp := tpmLines(cmd.Args), tpmLines(splitArgs(string(want)))
			if len(exp) != 3 {
				t.Fatalf("corpus argv has %d TPM arguments: %q", len(exp), exp)
			}
			if strings.Join(got, "\n") != strings.Join(exp, "\n") {
				t.Errorf("TPM arguments:\n%s\nwant (libvirt):\n%s", strings.Join(got, "\n"), strings.Join(exp, "\n"))
			}
		})
	}
}

const tpmDomain = `<domain type='qemu'><name>t</name><uuid>11d7cd22-da89-3094-6212-079a48a309a1</uuid>
<memory unit='MiB'>64</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices>%s</devices></domain>`

// TestTPMEmulators: the emulated TPM's facts as the driver reads them, its
// argv with the driver's socket, and the definitions that are refused.
func TestTPMEmulators(t *testing.T) {
	tests := []struct {
		name, dev string
		want      TPMEmulator // Alias "" : none
		argv      []string
		err       string
	}{
		{name: "crb-2.0", dev: `<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>`,
			want: TPMEmulator{Alias: "tpm0", Model: "tpm-crb", Version: "2.0"},
			argv: []string{"-chardev socket,id=chrtpm,path=/run/swtpm/t-swtpm.sock", "-tpmdev emulator,id=tpm-tpm0,chardev=chrtpm",
				`-device {"driver":"tpm-crb","tpmdev":"tpm-tpm0","id":"tpm0"}`}},
		{name: "tis-1.2", dev: `<tpm model='tpm-tis'><backend type='emulator' version='1.2'/></tpm>`,
			want: TPMEmulator{Alias: "tpm0", Model: "tpm-tis", Version: "1.2"},
			argv: []string{"-chardev socket,id=chrtpm,path=/run/swtpm/t-swtpm.sock", "-tpmdev emulator,id=tpm-tpm0,chardev=chrtpm",
				`-device {"driver":"tpm-tis","tpmdev":"tpm-tpm0","id":"tpm0"}`}},
		{name: "defaults", dev: `<tpm><backend type='emulator' persistent_state='yes'><active_pcr_banks><sha256/><sha384/></active_pcr_banks></backend></tpm>`,
			want: TPMEmulator{Alias: "tpm0", Model: "tpm-tis", Version: "2.0", PersistentState: true, PCRBanks: []string{"sha256", "sha384"}}},
		{name: "passthrough", dev: `<tpm><backend type='passthrough'/></tpm>`},
		{name: "crb-1.2", dev: `<tpm model='tpm-crb'><backend type='emulator' version='1.2'/></tpm>`, err: "TPM 1.2 cannot use model tpm-crb"},
		{name: "bad-version", dev: `<tpm><backend type='emulator' version='3'/></tpm>`, err: "version"},
		{name: "bad-pstate", dev: `<tpm><backend type='emulator' persistent_state='maybe'/></tpm>`, err: "persistent_state"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Parse([]byte(strings.Replace(tpmDomain, "%s", tc.dev, 1)))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Parse: %v, want an error about %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := Expand(d, nil); err != nil {
				t.Fatal(err)
			}
			got := d.TPMEmulators()
			if tc.want.Alias == "" {
				if len(got) != 0 {
					t.Fatalf("TPMEmulators = %+v, want none", got)
				}
				return
			}
			if len(got) != 1 || got[0].Alias != tc.want.Alias || got[0].Model != tc.want.Model || got[0].Version != tc.want.Version ||
				got[0].PersistentState != tc.want.PersistentState || strings.Join(got[0].PCRBanks, ",") != strings.Join(tc.want.PCRBanks, ",") {
				t.Fatalf("TPMEmulators = %+v, want %+v", got, tc.want)
			}
			if tc.argv == nil {
				return
			}
			opts := argvOpts
			opts.TPMSocket = "/run/swtpm/t-swtpm.sock"
			cmd, err := BuildCommand(d, opts)
			if err != nil {
				t.Fatal(err)
			}
			if g := tpmLines(cmd.Args); strings.Join(g, "\n") != strings.Join(tc.argv, "\n") {
				t.Errorf("argv:\n%s\nwant:\n%s", strings.Join(g, "\n"), strings.Join(tc.argv, "\n"))
			}
		})
	}
}
