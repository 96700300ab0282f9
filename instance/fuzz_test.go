package instance

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// lineOfError matches the line number that starts a parse error.
var lineOfError = regexp.MustCompile(`^(\d+): `)

// FuzzConfig feeds arbitrary qemu.conf text to the parser: never a panic;
// a refused file names the line at fault; an accepted one leaves a
// configuration whose port range is ordered, as Parse promises.
func FuzzConfig(f *testing.F) {
	for _, s := range []string{
		"",
		"user = \"qemu\"\ngroup = \"qemu\"\n",
		"cgroup_device_acl = [\n  \"/dev/null\", \"/dev/full\",\n  \"/dev/kvm\"\n]\n",
		"namespaces = []\nseccomp_sandbox = 0\n",
		"vnc_listen = \"0.0.0.0\" # everywhere\nremote_display_port_min = 5910\nremote_display_port_max = 5920\n",
		"security_driver = [ \"selinux\", \"apparmor\" ]\n",
		"dynamic_ownership = 1\nunknown_key = 3\n",
		"user = \n",
		"remote_display_port_min = 99999999999999999999\n",
		"list = [ [ \"nested\" ] ]\n",
		"s = \"unterminated\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, k := range []Kind{Session, System} {
			c := DefaultConfig(k)
			_, err := c.Parse(data)
			if err != nil {
				m := lineOfError.FindStringSubmatch(err.Error())
				if m == nil {
					if !strings.Contains(err.Error(), "remote_display_port_min") {
						t.Fatalf("error %q does not name its line", err)
					}
					continue
				}
				if n, _ := strconv.Atoi(m[1]); n < 1 || n > strings.Count(string(data), "\n")+1 {
					t.Fatalf("error %q names line %d of a %d-line file", err, n, strings.Count(string(data), "\n")+1)
				}
				continue
			}
			if c.RemoteDisplayPortMin > c.RemoteDisplayPortMax {
				t.Fatalf("accepted port range %d-%d from %q", c.RemoteDisplayPortMin, c.RemoteDisplayPortMax, data)
			}
		}
	})
}
