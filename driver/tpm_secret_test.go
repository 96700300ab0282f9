package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/secrets"
)

// TestTPMEncryptedState: a TPM whose state is encrypted with a secret
// (<encryption secret='UUID'/>) is made and started with the passphrase
// on a pipe, never in an argument; the state on disk does not open with
// another passphrase; a missing secret fails the start with its reason.
func TestTPMEncryptedState(t *testing.T) {
	needSwtpm(t)
	d := newDriver(t)
	ctx := context.Background()
	sec, err := secrets.New(secrets.Options{ConfigDir: filepath.Join(d.inst.ConfigDir, "secrets"), KeyFile: filepath.Join(filepath.Dir(d.inst.LibDir), "secrets", "key")})
	if err != nil {
		t.Fatal(err)
	}
	d.secs = sec
	const u = "32ee7e76-2178-47a1-ab7b-269e6e348015"
	xml := strings.Replace(tpmXML("e", "tpm-tis", "2.0", ""), "version='2.0'/>", "version='2.0'><encryption secret='"+u+"'/></backend>", 1)
	d.Create("e")
	if err := d.Define("e", []byte(xml)); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "e", "start --paused"); err == nil || !strings.Contains(err.Error(), u+" is not defined") {
		t.Fatalf("start without the secret: %v", err)
	}
	sec.Create(u)
	if err := sec.Define(u, []byte(`<secret private='yes'><usage type='vtpm'><name>e</name></usage></secret>`)); err != nil {
		t.Fatal(err)
	}
	if err := sec.SetValue(u, []byte("tpm-state-passphrase")); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "e", "start --paused"); err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(d.tpmFiles("e").Log)
	if !strings.Contains(string(log), "--key pwdfd=4,mode=aes-256-cbc") || strings.Contains(string(log), "tpm-state-passphrase") {
		t.Errorf("swtpm log:\n%s", log)
	}
	if err := d.Control(ctx, "e", "destroy"); err != nil {
		t.Fatal(err)
	}
	// The same state with another passphrase: QEMU's TPM does not come up.
	if err := sec.SetValue(u, []byte("another passphrase")); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "e", "start --paused"); err == nil {
		d.Control(ctx, "e", "destroy")
		t.Fatal("the encrypted TPM state opened with a wrong passphrase")
	} else {
		t.Logf("with a wrong passphrase: %v", err)
	}
	if got, _ := d.StateLine("e"); !strings.HasPrefix(got, "shut off") {
		t.Errorf("state %q after a failed start", got)
	}
}
