package domain

// TPMEmulator is a TPM the driver emulates with swtpm
// (<tpm><backend type='emulator'>): the facts the driver needs to set up
// swtpm's state and start it before QEMU.
type TPMEmulator struct {
	// Alias is the device's alias (tpm0 once expanded).
	Alias string
	// Model is tpm-tis (default) or tpm-crb.
	Model string
	// Version is "1.2" or "2.0" (the default, as libvirt's).
	Version string
	// PersistentState is <backend persistent_state='yes'>: the state
	// survives undefining the domain.
	PersistentState bool
	// EncryptionSecret is the uuid of <encryption secret=...> ("" when the
	// state is not encrypted).
	EncryptionSecret string
	// PCRBanks are the <active_pcr_banks> children (sha1, sha256, ...).
	PCRBanks []string
}

// TPMEmulators lists the domain's emulated TPMs, in document order.
func (d *Domain) TPMEmulators() []TPMEmulator {
	var out []TPMEmulator
	for _, t := range children(child(d.root, "devices"), "tpm") {
		b := child(t, "backend")
		if attr(b, "type") != "emulator" {
			continue
		}
		e := TPMEmulator{
			Alias:            alias(t),
			Model:            attrOr(t, "model", "tpm-tis"),
			Version:          attrOr(b, "version", "2.0"),
			PersistentState:  attr(b, "persistent_state") == "yes",
			EncryptionSecret: attr(child(b, "encryption"), "secret"),
		}
		if e.Alias == "" {
			e.Alias = "tpm0"
		}
		if banks := child(b, "active_pcr_banks"); banks != nil {
			for _, c := range banks.ChildElements() {
				e.PCRBanks = append(e.PCRBanks, c.Tag)
			}
		}
		out = append(out, e)
	}
	return out
}
