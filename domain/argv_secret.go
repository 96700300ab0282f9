package domain

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"fmt"

	"github.com/beevik/etree"
)

// MasterKeyID is the id of the secret object that holds the run's master
// key; every other secret QEMU gets is encrypted with it, so that no
// secret value appears on QEMU's command line (libvirt's scheme).
const MasterKeyID = "masterKey0"

// SecretLookup returns the value of a secret named by its UUID, or when
// uuid is empty by its usage (usageType "volume" and the image path for a
// disk passphrase). The driver backs it with its secret driver.
type SecretLookup func(uuid, usageType, usageID string) ([]byte, error)

// UsesSecrets tells whether the definition needs secrets given to QEMU
// (an encrypted disk image), so that the caller makes a master key.
func (d *Domain) UsesSecrets() bool {
	for _, disk := range children(child(d.root, "devices"), "disk") {
		if diskEncryption(disk, disk) != nil {
			return true
		}
		for bs := child(disk, "backingStore"); bs != nil; bs = child(bs, "backingStore") {
			if diskEncryption(bs, nil) != nil {
				return true
			}
		}
	}
	return false
}

// diskEncryption returns a layer's <encryption>: under its <source>, or
// (for the disk itself, top) directly under <disk> as older XML has it.
func diskEncryption(layer, top *etree.Element) *etree.Element {
	if e := child(child(layer, "source"), "encryption"); e != nil {
		return e
	}
	if top != nil {
		return child(top, "encryption")
	}
	return nil
}

// masterKey adds the master key object, when the definition needs one.
func (b *builder) masterKey() error {
	if !b.d.UsesSecrets() {
		return nil
	}
	if len(b.opts.MasterKey) != 32 || b.opts.MasterKeyFile == "" {
		// Unsupported: validation has no secrets; start-time callers do.
		return unsupportedAt(b.d.root, "encrypted disks need a master key for QEMU's secrets, which this caller did not provide")
	}
	b.add("-object", obj("qom-type", "secret", "id", MasterKeyID, "format", "raw", "file", b.opts.MasterKeyFile).String())
	return nil
}

// secretObject adds a secret object holding value encrypted with the
// master key (AES-256-CBC, PKCS#7 padding, a fresh IV), as QEMU's secret
// object decrypts it.
func (b *builder) secretObject(id string, value []byte) error {
	iv := make([]byte, aes.BlockSize)
	if b.opts.SecretIV != nil {
		copy(iv, b.opts.SecretIV())
	} else if _, err := rand.Read(iv); err != nil {
		return fmt.Errorf("secret %s: %w", id, err)
	}
	data, err := EncryptSecret(b.opts.MasterKey, iv, value)
	if err != nil {
		return fmt.Errorf("secret %s: %w", id, err)
	}
	b.add("-object", obj("qom-type", "secret", "id", id, "data", base64.StdEncoding.EncodeToString(data),
		"keyid", MasterKeyID, "iv", base64.StdEncoding.EncodeToString(iv), "format", "base64").String())
	return nil
}

// EncryptSecret encrypts value for a QEMU secret object whose keyid is a
// 32-byte key: AES-256-CBC with PKCS#7 padding.
func EncryptSecret(key, iv, value []byte) ([]byte, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	pad := aes.BlockSize - len(value)%aes.BlockSize
	buf := append(append([]byte(nil), value...), bytes.Repeat([]byte{byte(pad)}, pad)...)
	cipher.NewCBCEncrypter(blk, iv).CryptBlocks(buf, buf)
	return buf, nil
}

// encryptionSecret resolves a layer's <encryption>: the secret object it
// needs is added, and the format node's encryption properties returned
// (the whole node becomes driver luks for a raw image, qcow2's "encrypt"
// for a qcow2 one). path is the image, the default usage of the secret.
func (b *builder) encryptionSecret(enc *etree.Element, format, secretID, path string) (luks bool, encrypt jobj, err error) {
	switch f := attrOr(enc, "format", "default"); f {
	case "luks":
	case "default":
		if format != "qcow2" {
			return false, nil, errAt(enc, "<encryption format='default'> is only known for qcow2 images (use format='luks')")
		}
	case "qcow":
		return false, nil, unsupportedAt(enc, "qcow encryption (AES) is deprecated and unsupported by QEMU 7.2 for new guests; use format='luks'")
	default:
		return false, nil, errAt(enc, "unsupported <encryption format=%q> (want luks)", f)
	}
	if e := attrOr(enc, "engine", "qemu"); e != "qemu" {
		return false, nil, unsupportedAt(enc, "<encryption engine=%q>: only engine='qemu' is supported", e)
	}
	var sec *etree.Element
	for _, s := range children(enc, "secret") {
		if attr(s, "type") == "passphrase" || attr(s, "type") == "" {
			sec = s
		}
	}
	if sec == nil {
		return false, nil, errAt(enc, "<encryption> needs a <secret type='passphrase' uuid='...'/> (or usage='...')")
	}
	if b.opts.Secret == nil {
		return false, nil, unsupportedAt(enc, "encrypted disk %s: this caller has no secret driver", path)
	}
	uuid, usage := attr(sec, "uuid"), attr(sec, "usage")
	if uuid == "" && usage == "" {
		return false, nil, errAt(sec, "<secret> needs uuid='...' or usage='...'")
	}
	value, err := b.opts.Secret(uuid, "volume", usage)
	if err != nil {
		return false, nil, fmt.Errorf("encrypted disk %s: %w", path, err)
	}
	if err := b.secretObject(secretID, value); err != nil {
		return false, nil, err
	}
	switch format {
	case "raw", "luks":
		return true, nil, nil
	case "qcow2":
		return false, obj("format", "luks", "key-secret", secretID), nil
	}
	return false, nil, errAt(enc, "LUKS encryption of a %s image: only raw (LUKS) and qcow2 images can be encrypted", format)
}
