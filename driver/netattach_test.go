package driver

import (
	"reflect"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/domain"
)

// TestPasstForwards: libvirt's <portForward> ranges as passt's options.
func TestPasstForwards(t *testing.T) {
	for _, c := range []struct {
		name string
		pfs  []domain.PortForward
		want []string
	}{
		{"one port", []domain.PortForward{{Proto: "tcp", Ranges: []domain.PortRange{{Start: 80}}}}, []string{"--tcp-ports", "80"}},
		{"mapped", []domain.PortForward{{Proto: "tcp", Address: "127.0.0.1", Ranges: []domain.PortRange{{Start: 2222, To: 22}}}}, []string{"--tcp-ports", "127.0.0.1/2222:22"}},
		{"range mapped", []domain.PortForward{{Proto: "udp", Ranges: []domain.PortRange{{Start: 5000, End: 5020, To: 6000}}}}, []string{"--udp-ports", "5000-5020:6000-6020"}},
		{"range with exclusion", []domain.PortForward{{Proto: "tcp", Ranges: []domain.PortRange{{Start: 1000, End: 1050}, {Start: 1020, Exclude: true}}}},
			[]string{"--tcp-ports", "1000-1050,~1020"}},
		{"only exclusions forward nothing", []domain.PortForward{{Proto: "tcp", Ranges: []domain.PortRange{{Start: 1020, Exclude: true}}}}, nil},
		{"two forwards, address on the list", []domain.PortForward{{Proto: "tcp", Address: "::1", Ranges: []domain.PortRange{{Start: 22}, {Start: 80, To: 8080}}}, {Proto: "udp", Ranges: []domain.PortRange{{Start: 53}}}},
			[]string{"--tcp-ports", "::1/22,80:8080", "--udp-ports", "53"}},
		{"to itself", []domain.PortForward{{Proto: "tcp", Ranges: []domain.PortRange{{Start: 443, To: 443}}}}, []string{"--tcp-ports", "443"}},
		{"none", nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := passtForwards(c.pfs); !reflect.DeepEqual(got, c.want) {
				t.Errorf("passtForwards = %q, want %q", got, c.want)
			}
		})
	}
}

// TestPlanHostSide: how each interface's host side is made, privileged and
// not (a session), with and without passt installed.
func TestPlanHostSide(t *testing.T) {
	d := &Driver{}
	fwd := []domain.PortForward{{Proto: "tcp", Ranges: []domain.PortRange{{Start: 2222, To: 22}}}}
	for _, c := range []struct {
		name       string
		ifc        domain.Interface
		priv       bool
		passt      string
		want       hostSide
		wantErrSub string
	}{
		{"user is QEMU's own", domain.Interface{Type: "user"}, false, "/usr/bin/passt", sideQEMU, ""},
		{"user with the passt backend", domain.Interface{Type: "user", Backend: "passt"}, false, "/usr/bin/passt", sidePasst, ""},
		{"passt backend without passt", domain.Interface{Type: "user", Backend: "passt", Alias: "net0"}, false, "", 0, "needs passt"},
		{"session network with passt", domain.Interface{Type: "network", Source: "default"}, false, "/usr/bin/passt", sidePasst, ""},
		{"session network without passt", domain.Interface{Type: "network", Source: "default"}, false, "", sideSlirp, ""},
		{"session network with port forwards", domain.Interface{Type: "network", Source: "default", PortForwards: fwd}, false, "/usr/bin/passt", sideSlirp, ""},
		{"privileged network without a driver", domain.Interface{Type: "network", Source: "default", Alias: "net0"}, true, "", 0, "no network driver"},
		{"session bridge", domain.Interface{Type: "bridge", Source: "br0", Alias: "net0"}, false, "", 0, "needs a privileged instance"},
		{"privileged bridge", domain.Interface{Type: "bridge", Source: "br0"}, true, "", sideTap, ""},
		{"managed ethernet", domain.Interface{Type: "ethernet"}, true, "", sideTap, ""},
		{"unmanaged ethernet", domain.Interface{Type: "ethernet", Unmanaged: true}, true, "", sideQEMU, ""},
		{"session ethernet", domain.Interface{Type: "ethernet"}, false, "", sideQEMU, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			old := privileged
			privileged = func() bool { return c.priv }
			defer func() { privileged = old }()
			got, err := d.plan(c.ifc, c.passt)
			if c.wantErrSub != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErrSub) {
					t.Fatalf("plan: %v, want an error with %q", err, c.wantErrSub)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("plan = %v, %v; want %v", got, err, c.want)
			}
		})
	}
}
