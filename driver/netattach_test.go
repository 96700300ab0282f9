package driver

import (
	"reflect"
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
