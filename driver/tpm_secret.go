package driver

import (
	"fmt"
	"os"
	"strconv"

	"github.com/qemufs/qemufs/domain"
)

// tpmKey gives swtpm_setup (setup) or swtpm the passphrase of an
// encrypted TPM state (<encryption secret='UUID'/>, a secret of the secret
// driver) on a pipe that becomes fd in the child, as libvirt does: the
// arguments that name it and the pipe's read end, which the caller closes
// once the child has it. An unencrypted state needs neither.
func (d *Driver) tpmKey(t *domain.TPMEmulator, fd int, setup bool) ([]string, *os.File, error) {
	if t.EncryptionSecret == "" {
		return nil, nil, nil
	}
	if d.secs == nil {
		return nil, nil, fmt.Errorf("TPM %s: an encrypted TPM state needs the secret driver, which this instance has not", t.Alias)
	}
	v, err := d.secs.Lookup(t.EncryptionSecret, "", "")
	if err != nil {
		return nil, nil, fmt.Errorf("TPM %s: encrypted TPM state: %w", t.Alias, err)
	}
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("TPM %s: %w", t.Alias, err)
	}
	_, err = wr.Write(v) // far below a pipe's buffer
	if cerr := wr.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		rd.Close()
		return nil, nil, fmt.Errorf("TPM %s: %w", t.Alias, err)
	}
	if setup {
		return []string{"--pwdfile-fd", strconv.Itoa(fd), "--cipher", "aes-256-cbc"}, rd, nil
	}
	return []string{"--key", "pwdfd=" + strconv.Itoa(fd) + ",mode=aes-256-cbc"}, rd, nil
}
