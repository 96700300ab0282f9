package guest

import (
	"testing"

	"github.com/qemufs/qemufs/domain"
)

func TestDomainXMLParses(t *testing.T) {
	g := &Guest{Kernel: "/k", Initrd: "/i", Cmdline: "console=ttyS0"}
	for _, x := range []string{
		g.DomainXML("a", ActionNone, "", ""),
		g.DomainXML("a", ActionPoweroff, "<panic model='isa'/>", "  <qemu:commandline>\n    <qemu:arg value='-S'/>\n  </qemu:commandline>\n"),
	} {
		if _, err := domain.Parse([]byte(x)); err != nil {
			t.Fatalf("%v\n%s", err, x)
		}
	}
}
