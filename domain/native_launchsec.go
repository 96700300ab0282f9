package domain

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// Command-line conversion (from-native) of confidential guests: a
// sev-guest, sev-snp-guest, tdx-guest or s390-pv-guest object that the
// machine uses (confidential-guest-support, or memory-encryption before
// QEMU 6.0) becomes <launchSecurity>. Nothing is dropped: a property the
// conversion does not know, an object the machine does not use (QEMU would
// run that guest unprotected), or a machine pointing at no such object is
// an error.

// lsecProps maps each object type's QEMU properties to how they are kept.
var lsecProps = map[string]map[string]string{
	"sev-guest": {"cbitpos": "cbitpos", "reduced-phys-bits": "reducedPhysBits", "policy": "policy", "handle": "handle",
		"dh-cert-file": "dhCert", "session-file": "session", "kernel-hashes": "@kernelHashes"},
	"sev-snp-guest": {"cbitpos": "cbitpos", "reduced-phys-bits": "reducedPhysBits", "policy": "policy",
		"guest-visible-workarounds": "guestVisibleWorkarounds", "id-block": "idBlock", "id-auth": "idAuth",
		"host-data": "hostData", "author-key-enabled": "@authorKey", "vcek-disabled": "@vcek", "kernel-hashes": "@kernelHashes"},
	"tdx-guest": {"attributes": "policy", "mrconfigid": "mrConfigId", "mrowner": "mrOwner", "mrownerconfig": "mrOwnerConfig",
		"quote-generation-socket.type": "", "quote-generation-socket.path": "quoteGenerationService"},
	"s390-pv-guest": {},
}

// lsecType is the <launchSecurity type> of each object type.
var lsecType = map[string]string{"sev-guest": "sev", "sev-snp-guest": "sev-snp", "tdx-guest": "tdx", "s390-pv-guest": "s390-pv"}

// buildLaunchSecurity adds <launchSecurity> for the command line's
// confidential guest object, if any.
func (n *native) buildLaunchSecurity(r *etree.Element) error {
	id := n.machine.get("confidential-guest-support")
	if id == "" {
		id = n.machine.get("memory-encryption")
	}
	var o *kv
	for i := range n.lsecObjs {
		if n.lsecObjs[i].get("id") == id {
			o = &n.lsecObjs[i]
		} else {
			return &Error{Msg: fmt.Sprintf("command line: -object %s,id=%s is not the machine's confidential-guest-support, so QEMU would run the guest unprotected; not converted",
				n.lsecObjs[i].get("qom-type"), n.lsecObjs[i].get("id"))}
		}
	}
	if o == nil {
		if id != "" {
			return &Error{Msg: fmt.Sprintf("command line: -machine confidential-guest-support=%s names no sev-guest, sev-snp-guest, tdx-guest or s390-pv-guest object", id)}
		}
		return nil
	}
	qt := o.get("qom-type")
	props := lsecProps[qt]
	ls := r.CreateElement("launchSecurity")
	ls.CreateAttr("type", lsecType[qt])
	keys := append([]string(nil), o.keys...)
	if len(keys) == 0 {
		for k := range o.vals {
			keys = append(keys, k)
		}
		sort.Strings(keys)
	}
	for _, k := range keys {
		v := o.get(k)
		if k == "qom-type" || k == "id" {
			continue
		}
		to, ok := props[k]
		if !ok {
			return &Error{Msg: fmt.Sprintf("command line: %s property %q has no <launchSecurity> equivalent; not converted", qt, k)}
		}
		switch {
		case to == "":
			if v != "unix" {
				return &Error{Msg: fmt.Sprintf("command line: %s %s=%s: only a unix socket has a <launchSecurity> equivalent", qt, k, v)}
			}
		case strings.HasPrefix(to, "@"):
			on := v == "on" || v == "true" || v == "yes"
			if to == "@vcek" {
				on = !on // vcek-disabled
			}
			ls.CreateAttr(to[1:], map[bool]string{true: "yes", false: "no"}[on])
		case to == "policy":
			p, err := parseUint(v)
			if err != nil {
				return &Error{Msg: fmt.Sprintf("command line: %s %s=%q is not a number", qt, k, v)}
			}
			ls.CreateElement("policy").SetText("0x" + strconv.FormatUint(p, 16))
		case to == "dhCert" || to == "session":
			data, err := os.ReadFile(v)
			if err != nil {
				return &Error{Msg: fmt.Sprintf("command line: %s %s: %v (its content becomes <%s>)", qt, k, err, to)}
			}
			ls.CreateElement(to).SetText(strings.TrimSpace(string(data)))
		case to == "quoteGenerationService":
			ls.CreateElement(to).CreateAttr("path", v)
		default:
			ls.CreateElement(to).SetText(v)
		}
	}
	return nil
}
