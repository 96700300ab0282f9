package agent

import (
	"errors"
	"testing"
)

// FuzzDecode feeds arbitrary agent replies to Decode: never a panic; an
// error reply is a *CommandError, anything else decodes or says why.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"return": {}}`,
		`{"return": [{"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]}]}`,
		`{"error": {"class": "GenericError", "desc": "no"}}`,
		`{"return": 42}`,
		`[1]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, reply []byte) {
		var ifaces []struct {
			Name string `json:"name"`
			IPs  []struct {
				Type   string `json:"ip-address-type"`
				Addr   string `json:"ip-address"`
				Prefix int    `json:"prefix"`
			} `json:"ip-addresses"`
		}
		err := Decode("guest-network-get-interfaces", reply, &ifaces)
		var ce *CommandError
		if err != nil && errors.As(err, &ce) && ce.Command != "guest-network-get-interfaces" {
			t.Fatalf("error reply names command %q", ce.Command)
		}
	})
}
