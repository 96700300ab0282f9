package driver

import "testing"

// FuzzSnapshotXML feeds arbitrary domainsnapshot XML to the parser of
// snapshots/create and to the metadata reader: never a panic, and
// metadata written by qemufs reads back to the same XML.
func FuzzSnapshotXML(f *testing.F) {
	for _, s := range []string{
		`<domainsnapshot><name>s1</name><description>before</description></domainsnapshot>`,
		`<domainsnapshot><name>e</name><memory snapshot='no'/><disks><disk name='vda' snapshot='external'><source file='/i/e.qcow2'/></disk><disk name='vdb' snapshot='no'/></disks></domainsnapshot>`,
		`<domainsnapshot><name>m</name><memory snapshot='internal'/></domainsnapshot>`,
		`<domainsnapshot><name>../x</name></domainsnapshot>`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		parseSnapshotRequest(data)
		sn, err := parseSnapshotMeta(data)
		if err != nil {
			return
		}
		once := sn.xml()
		sn2, err := parseSnapshotMeta(once)
		if err != nil {
			t.Fatalf("snapshot metadata qemufs wrote does not read back: %v\n%s", err, once)
		}
		if string(sn2.xml()) != string(once) {
			t.Fatalf("metadata round trip differs:\n%s\n---\n%s", once, sn2.xml())
		}
	})
}
