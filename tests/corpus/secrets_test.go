package corpus_test

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/domain"
)

// libvirt's test suite gives every secret this value, makes its master key
// and IVs from a mocked random source (bytes 0, 1, 2, ...), and keeps the
// key in the domain's lib directory; with the same inputs the secret
// objects must come out byte for byte as libvirt's.
var (
	testSecretValue = []byte("AQCVn5hO6HzFAhAAq0NCv8jtJcIcE+HOBlMQ1A")
	testMasterKey   = seq(32)
	testIV          = seq(16)
)

func seq(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// libvirtMasterKeyFile is where libvirt's tests keep a domain's master key.
func libvirtMasterKeyFile(d *domain.Domain) string {
	return "/tmp/lib/domain--1-" + d.Name() + "/master-key.aes"
}

// withTestSecrets gives o libvirt's test secrets, master key and IVs.
func withTestSecrets(o domain.CommandOptions, keyFile string) domain.CommandOptions {
	o.Secret = func(uuid, usageType, usageID string) ([]byte, error) { return testSecretValue, nil }
	o.MasterKey = testMasterKey
	o.MasterKeyFile = keyFile
	o.SecretIV = func() []byte { return testIV }
	return o
}

// encryptedImage makes a LUKS image (raw format) or a LUKS-encrypted
// qcow2 image whose passphrase is the test secret.
func (p *preparer) encryptedImage(format string) (string, error) {
	obj := "secret,id=sec0,format=base64,data=" + base64.StdEncoding.EncodeToString(testSecretValue)
	var args []string
	switch format {
	case "", "raw":
		format = "luks"
		args = []string{"create", "-q", "--object", obj, "-f", "luks", "-o", "key-secret=sec0"}
	case "qcow2":
		args = []string{"create", "-q", "--object", obj, "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0"}
	default:
		return "", errSkip("encrypted disk image format " + format)
	}
	f := p.path("disk." + format)
	// LUKS key derivation is slow by design; a short iteration time keeps
	// the corpus fast.
	args = append(args, f, "8M")
	if format == "luks" {
		args[len(args)-3] += ",iter-time=10"
	} else {
		args[len(args)-3] += ",encrypt.iter-time=10"
	}
	var out []byte
	var err error
	// QEMU times the key derivation with the thread's CPU clock and gives
	// up when a measurement is empty, as on a busy machine: retry that.
	for try := 0; try < 5; try++ {
		if out, err = exec.Command("qemu-img", args...).CombinedOutput(); err == nil || !strings.Contains(string(out), "Unable to get accurate CPU usage") {
			break
		}
	}
	if err != nil {
		return "", fmt.Errorf("qemu-img %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return f, nil
}

// TestCorpusSecretObjects checks the encrypted-disk cases' secret objects
// and block nodes against libvirt's expected argv, exactly.
func TestCorpusSecretObjects(t *testing.T) {
	for _, name := range []string{"luks-disks", "encrypted-disk", "encrypted-disk-usage"} {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(corpusDir, name+".xml"))
			if err != nil {
				t.Skipf("corpus not available: %v", err)
			}
			d, err := domain.Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			if err := domain.Expand(d, nil); err != nil {
				t.Fatal(err)
			}
			cmd, err := domain.BuildCommand(d, withTestSecrets(domain.CommandOptions{QMPSocket: "/run/q.qmp", DomainDir: "/run/d"}, libvirtMasterKeyFile(d)))
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join(corpusDir, name+".x86_64-latest.args"))
			if err != nil {
				t.Fatal(err)
			}
			pick := func(args []string) []string {
				var out []string
				for i := 0; i+1 < len(args); i++ {
					if (args[i] == "-object" && strings.Contains(args[i+1], `"secret"`)) || args[i] == "-blockdev" {
						out = append(out, args[i]+" "+args[i+1])
					}
				}
				return out
			}
			got, exp := pick(cmd.Args), pick(shellSplit(string(want)))
			if strings.Join(got, "\n") != strings.Join(exp, "\n") {
				t.Fatalf("secret objects and block nodes differ\ngot:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(exp, "\n"))
			}
		})
	}
}
