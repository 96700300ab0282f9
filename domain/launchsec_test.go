package domain

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/capabilities"
)

// lsDomain is a KVM guest with the given <launchSecurity> (and domain
// type, arch and machine).
func lsDomain(typ, arch, machine, ls string) string {
	emu := "/usr/bin/qemu-system-x86_64"
	if arch == "s390x" {
		emu = "/usr/bin/qemu-system-s390x"
	}
	return `<domain type='` + typ + `'><name>ls</name><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
  <memory unit='KiB'>219100</memory><vcpu>1</vcpu>
  <os><type arch='` + arch + `' machine='` + machine + `'>hvm</type></os>
  <devices><emulator>` + emu + `</emulator><memballoon model='none'/></devices>
  ` + ls + `
</domain>`
}

// blob is base64 of n bytes.
func blob(n int) string { return base64.StdEncoding.EncodeToString([]byte(strings.Repeat("q", n))) }

// TestLaunchSecurityParse: every element and attribute of libvirt's
// schema is accepted where it belongs; anything else, and every bad value,
// is refused with the element named.
func TestLaunchSecurityParse(t *testing.T) {
	for _, tc := range []struct {
		name, typ, ls string
		err           string // "" = accepted
	}{
		{"sev full", "kvm", `<launchSecurity type='sev' kernelHashes='yes'><cbitpos>47</cbitpos><reducedPhysBits>1</reducedPhysBits>
			<policy>0x0001</policy><handle>3</handle><dhCert>AAAA</dhCert><session>IHAVENOIDEA</session></launchSecurity>`, ""},
		{"sev policy without 0x", "kvm", `<launchSecurity type='sev'><policy>0033</policy></launchSecurity>`, ""},
		{"sev without policy", "kvm", `<launchSecurity type='sev'><cbitpos>47</cbitpos></launchSecurity>`, "element <policy> is required"},
		{"sev policy too wide", "kvm", `<launchSecurity type='sev'><policy>0x100000000</policy></launchSecurity>`, "not a valid policy"},
		{"sev policy not hex", "kvm", `<launchSecurity type='sev'><policy>zz</policy></launchSecurity>`, "not a valid policy"},
		{"sev cbitpos not a number", "kvm", `<launchSecurity type='sev'><cbitpos>x</cbitpos><policy>1</policy></launchSecurity>`, "launchSecurity/cbitpos"},
		{"sev snp attribute", "kvm", `<launchSecurity type='sev' authorKey='yes'><policy>1</policy></launchSecurity>`, "attribute authorKey is not allowed for launch security type 'sev'"},
		{"sev snp element", "kvm", `<launchSecurity type='sev'><policy>1</policy><idBlock>` + blob(96) + `</idBlock></launchSecurity>`, "unknown element <idBlock>"},
		{"sev kernelHashes bad", "kvm", `<launchSecurity type='sev' kernelHashes='maybe'><policy>1</policy></launchSecurity>`, "attribute kernelHashes"},
		{"sev twice policy", "kvm", `<launchSecurity type='sev'><policy>1</policy><policy>2</policy></launchSecurity>`, "may appear only once"},
		{"sev empty session", "kvm", `<launchSecurity type='sev'><policy>1</policy><session/></launchSecurity>`, "must not be empty"},
		{"sev on tcg", "qemu", `<launchSecurity type='sev'><policy>1</policy></launchSecurity>`, "needs domain type 'kvm'"},
		{"no type", "kvm", `<launchSecurity><policy>1</policy></launchSecurity>`, "attribute type is required"},
		{"unknown type", "kvm", `<launchSecurity type='cca'/>`, "unknown value \"cca\""},
		{"snp full", "kvm", `<launchSecurity type='sev-snp' authorKey='yes' vcek='no' kernelHashes='no'><cbitpos>47</cbitpos>
			<reducedPhysBits>1</reducedPhysBits><policy>0x00030000</policy><guestVisibleWorkarounds>` + blob(16) + `</guestVisibleWorkarounds>
			<idBlock>` + blob(96) + `</idBlock><idAuth>` + blob(4096) + `</idAuth><hostData>` + blob(32) + `</hostData></launchSecurity>`, ""},
		{"snp minimal", "kvm", `<launchSecurity type='sev-snp'/>`, ""},
		{"snp short host data", "kvm", `<launchSecurity type='sev-snp'><hostData>` + blob(31) + `</hostData></launchSecurity>`, "decodes to 31 bytes; QEMU needs exactly 32"},
		{"snp id block not base64", "kvm", `<launchSecurity type='sev-snp'><idBlock>!!!</idBlock></launchSecurity>`, "not valid base64"},
		{"snp idAuth without idBlock", "kvm", `<launchSecurity type='sev-snp'><idAuth>` + blob(4096) + `</idAuth></launchSecurity>`, "<idAuth> needs <idBlock>"},
		{"snp dhCert", "kvm", `<launchSecurity type='sev-snp'><dhCert>AAAA</dhCert></launchSecurity>`, "unknown element <dhCert>"},
		{"tdx full", "kvm", `<launchSecurity type='tdx'><policy>0x10000001</policy><mrConfigId>` + blob(48) + `</mrConfigId>
			<mrOwner>` + blob(48) + `</mrOwner><mrOwnerConfig>` + blob(48) + `</mrOwnerConfig>
			<quoteGenerationService path='/run/qgs.sock'/></launchSecurity>`, ""},
		{"tdx qgs relative", "kvm", `<launchSecurity type='tdx'><quoteGenerationService path='qgs.sock'/></launchSecurity>`, "must be absolute"},
		{"tdx qgs other attribute", "kvm", `<launchSecurity type='tdx'><quoteGenerationService port='4050'/></launchSecurity>`, "attribute port is not allowed"},
		{"tdx short digest", "kvm", `<launchSecurity type='tdx'><mrOwner>` + blob(32) + `</mrOwner></launchSecurity>`, "QEMU needs exactly 48"},
		{"tdx cbitpos", "kvm", `<launchSecurity type='tdx'><cbitpos>47</cbitpos></launchSecurity>`, "unknown element <cbitpos>"},
		{"s390-pv", "kvm", `<launchSecurity type='s390-pv'/>`, ""},
		{"s390-pv with a child", "kvm", `<launchSecurity type='s390-pv'><policy>1</policy></launchSecurity>`, "takes no child elements"},
		{"s390-pv with an attribute", "kvm", `<launchSecurity type='s390-pv' kernelHashes='yes'/>`, "attribute kernelHashes is not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(lsDomain(tc.typ, "x86_64", "pc", tc.ls)))
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.err != "" && err == nil:
				t.Fatalf("accepted, want an error containing %q", tc.err)
			case tc.err != "" && !strings.Contains(err.Error(), tc.err):
				t.Fatalf("error %q, want it to contain %q", err, tc.err)
			case tc.err != "" && !strings.Contains(err.Error(), "launchSecurity"):
				t.Fatalf("error %q does not name the element", err)
			}
		})
	}
}

// TestLaunchSecurityArgv checks the object and machine options of each
// type against what libvirt generates for it (libvirt 10.5+ for SEV-SNP,
// 11 for TDX, 7 for s390-pv; libvirt 9.0's SEV cases are checked against
// the corpus in tests/corpus).
func TestLaunchSecurityArgv(t *testing.T) {
	snpXML := `<launchSecurity type='sev-snp' authorKey='yes' vcek='no'><cbitpos>47</cbitpos><reducedPhysBits>1</reducedPhysBits>
	  <policy>0x00030000</policy><guestVisibleWorkarounds>` + blob(16) + `</guestVisibleWorkarounds><idBlock>` + blob(96) + `</idBlock>
	  <idAuth>` + blob(4096) + `</idAuth><hostData>` + blob(32) + `</hostData></launchSecurity>`
	qemu := func(ver int) *capabilities.Emulator {
		return &capabilities.Emulator{Path: "/usr/bin/qemu-system-x86_64", Arch: "x86_64", VersionNum: ver,
			SEV: &capabilities.SEVCapability{CBitPos: 51, ReducedPhysBits: 5}}
	}
	for _, tc := range []struct {
		name, arch, machine, ls string
		emu                     *capabilities.Emulator
		object                  string // the lsec0 -object
		machineHas              []string
		err                     string
	}{
		{name: "sev-snp", arch: "x86_64", machine: "pc-q35-8.2", ls: snpXML, emu: qemu(9001000),
			object: `{"qom-type":"sev-snp-guest","id":"lsec0","cbitpos":47,"reduced-phys-bits":1,"policy":196608,` +
				`"guest-visible-workarounds":"` + blob(16) + `","id-block":"` + blob(96) + `","id-auth":"` + blob(4096) + `",` +
				`"host-data":"` + blob(32) + `","author-key-enabled":true,"vcek-disabled":true}`,
			machineHas: []string{",memory-backend=pc.ram,confidential-guest-support=lsec0"}},
		{name: "sev-snp platform defaults", arch: "x86_64", machine: "q35", ls: `<launchSecurity type='sev-snp' kernelHashes='yes'/>`, emu: qemu(9001000),
			object: `{"qom-type":"sev-snp-guest","id":"lsec0","cbitpos":51,"reduced-phys-bits":5,"kernel-hashes":true}`},
		{name: "sev without platform", arch: "x86_64", machine: "pc", ls: `<launchSecurity type='sev'><policy>0x1</policy></launchSecurity>`,
			err: "host's SEV platform is unknown"},
		{name: "sev handle and QEMU 5.2", arch: "x86_64", machine: "pc", emu: qemu(5002000),
			ls:         `<launchSecurity type='sev'><cbitpos>47</cbitpos><reducedPhysBits>1</reducedPhysBits><policy>0x5</policy><handle>7</handle></launchSecurity>`,
			object:     `sev-guest,id=lsec0,cbitpos=47,reduced-phys-bits=1,policy=5,handle=7`,
			machineHas: []string{",memory-encryption=lsec0"}},
		{name: "sev kernelHashes on QEMU 6.0", arch: "x86_64", machine: "pc", emu: qemu(6000000),
			ls: `<launchSecurity type='sev' kernelHashes='yes'><policy>0x1</policy></launchSecurity>`, err: "kernelHashes needs QEMU 6.2"},
		{name: "tdx", arch: "x86_64", machine: "q35", emu: qemu(10001000),
			ls: `<launchSecurity type='tdx'><policy>0x10000001</policy><mrConfigId>` + blob(48) + `</mrConfigId><mrOwner>` + blob(48) +
				`</mrOwner><mrOwnerConfig>` + blob(48) + `</mrOwnerConfig><quoteGenerationService/></launchSecurity>`,
			object: `{"qom-type":"tdx-guest","id":"lsec0","attributes":268435457,"mrconfigid":"` + blob(48) + `","mrowner":"` + blob(48) +
				`","mrownerconfig":"` + blob(48) + `","quote-generation-socket":{"type":"unix","path":"/var/run/tdx-qgs/qgs.socket"}}`,
			machineHas: []string{",confidential-guest-support=lsec0,kernel_irqchip=split"}},
		{name: "tdx qgs path", arch: "x86_64", machine: "q35", emu: qemu(10001000),
			ls:     `<launchSecurity type='tdx'><quoteGenerationService path='/run/qgs.sock'/></launchSecurity>`,
			object: `{"qom-type":"tdx-guest","id":"lsec0","quote-generation-socket":{"type":"unix","path":"/run/qgs.sock"}}`},
		{name: "s390-pv", arch: "s390x", machine: "s390-ccw-virtio", ls: `<launchSecurity type='s390-pv'/>`,
			object: `{"qom-type":"s390-pv-guest","id":"lsec0"}`, machineHas: []string{",confidential-guest-support=lsec0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Parse([]byte(lsDomain("kvm", tc.arch, tc.machine, tc.ls)))
			if err != nil {
				t.Fatal(err)
			}
			cmd, err := BuildCommand(d, CommandOptions{Emulator: tc.emu, QMPSocket: "/run/q.qmp", DomainDir: "/run/d", LibDir: "/var/lib/q/ls"})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrUnsupported) {
					t.Fatalf("error %v, want one wrapping ErrUnsupported containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var objs, machines []string
			for i := 0; i+1 < len(cmd.Args); i++ {
				switch cmd.Args[i] {
				case "-object":
					if strings.Contains(cmd.Args[i+1], "lsec0") {
						objs = append(objs, cmd.Args[i+1])
					}
				case "-machine":
					machines = append(machines, cmd.Args[i+1])
				}
			}
			if len(objs) != 1 || objs[0] != tc.object {
				t.Errorf("lsec0 objects %q\nwant %s", objs, tc.object)
			}
			for _, m := range tc.machineHas {
				if len(machines) != 1 || !strings.Contains(machines[0], m) {
					t.Errorf("-machine %q lacks %q", machines, m)
				}
			}
		})
	}
	// Under TCG the builder refuses (QEMU itself would abort on the
	// assertion that the confidential guest support is ready).
	d, err := Parse([]byte(lsDomain("kvm", "x86_64", "pc", `<launchSecurity type='sev'><policy>1</policy></launchSecurity>`)))
	if err != nil {
		t.Fatal(err)
	}
	d.root.CreateAttr("type", "qemu")
	if _, err := BuildCommand(d, CommandOptions{Emulator: qemu(7002000)}); !errors.Is(err, ErrNeedsKVM) {
		t.Errorf("TCG build: %v, want ErrNeedsKVM", err)
	}
}

// TestCheckLaunchSecurity: each missing host or QEMU feature refuses the
// guest with a reason naming it; a host with everything accepts it.
func TestCheckLaunchSecurity(t *testing.T) {
	sevHost := capabilities.Host{KVM: true, LaunchSecurity: capabilities.LaunchSecurityHost{SEV: true, SEVES: true, SEVSNP: true, TDX: true, S390PV: true}}
	noHost := capabilities.Host{KVM: true, LaunchSecurity: capabilities.LaunchSecurityHost{Why: map[string]string{
		"sev": "AMD SEV needs the kvm_amd kernel module, which is not loaded", "tdx": "Intel TDX needs the kvm_intel kernel module"}}}
	noES := sevHost
	noES.LaunchSecurity = capabilities.LaunchSecurityHost{SEV: true, Why: map[string]string{"sev-es": "AMD SEV-ES is disabled"}}
	noKVM := sevHost
	noKVM.KVM = false
	full := &capabilities.Emulator{Path: "/usr/bin/qemu-system-x86_64", Version: "10.1.0", VersionNum: 10001000,
		Devices: map[string]bool{"sev-guest": true, "sev-snp-guest": true, "tdx-guest": true, "s390-pv-guest": true},
		SEV:     &capabilities.SEVCapability{CBitPos: 47, ReducedPhysBits: 1}}
	q72 := &capabilities.Emulator{Path: "/usr/bin/qemu-system-x86_64", Version: "7.2.22", VersionNum: 7002022,
		Devices: map[string]bool{"sev-guest": true}, SEVError: "query-sev-capabilities: SEV is not enabled in KVM"}
	sev := `<launchSecurity type='sev'><policy>0x1</policy></launchSecurity>`
	for _, tc := range []struct {
		name, ls string
		host     capabilities.Host
		emu      *capabilities.Emulator
		err      string
	}{
		{"sev ok", sev, sevHost, full, ""},
		{"sev no kvm_amd", sev, noHost, full, "kvm_amd kernel module, which is not loaded"},
		{"sev QEMU without platform", sev, sevHost, q72, "reports no SEV platform: query-sev-capabilities: SEV is not enabled in KVM"},
		{"sev-es policy without sev-es", `<launchSecurity type='sev'><policy>0x5</policy></launchSecurity>`, noES, full, "asks for SEV-ES (bit 2), and AMD SEV-ES is disabled"},
		{"sev no usable kvm", sev, noKVM, full, "KVM is not usable"},
		{"snp on QEMU 7.2", `<launchSecurity type='sev-snp'/>`, sevHost, q72, "has no sev-snp-guest object (it needs a QEMU with sev-snp support, 9.1 or later)"},
		{"snp ok", `<launchSecurity type='sev-snp'/>`, sevHost, full, ""},
		{"tdx no kvm_intel", `<launchSecurity type='tdx'/>`, noHost, full, "Intel TDX needs the kvm_intel kernel module"},
		{"tdx on QEMU 7.2", `<launchSecurity type='tdx'/>`, sevHost, q72, "has no tdx-guest object"},
		{"tdx ok", `<launchSecurity type='tdx'/>`, sevHost, full, ""},
		{"s390-pv on x86 host", `<launchSecurity type='s390-pv'/>`, noHost, full, "the host does not offer s390-pv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Parse([]byte(lsDomain("kvm", "x86_64", "q35", tc.ls)))
			if err != nil {
				t.Fatal(err)
			}
			err = d.CheckLaunchSecurity(&tc.host, tc.emu)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			case tc.err != "" && !errors.Is(err, ErrUnsupported):
				t.Fatalf("error %v does not wrap ErrUnsupported", err)
			}
		})
	}
	plain, _ := Parse([]byte(lsDomain("kvm", "x86_64", "q35", "")))
	if err := plain.CheckLaunchSecurity(&noHost, q72); err != nil {
		t.Errorf("a guest without launch security: %v", err)
	}
}

// TestLaunchSecurityFiles: the SEV blobs are written where the argv
// points, 0600, and only for SEV.
func TestLaunchSecurityFiles(t *testing.T) {
	dir := t.TempDir()
	d, err := Parse([]byte(lsDomain("kvm", "x86_64", "pc", `<launchSecurity type='sev'><policy>1</policy><dhCert>DHCERT</dhCert><session>SESSION</session></launchSecurity>`)))
	if err != nil {
		t.Fatal(err)
	}
	files := d.LaunchSecurityFiles(dir)
	want := []string{filepath.Join(dir, "dh_cert.base64"), filepath.Join(dir, "session.base64")}
	if strings.Join(files, " ") != strings.Join(want, " ") {
		t.Fatalf("files %q, want %q", files, want)
	}
	if err := d.WriteLaunchSecurityFiles(dir); err != nil {
		t.Fatal(err)
	}
	for f, content := range map[string]string{want[0]: "DHCERT", want[1]: "SESSION"} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(f)
		if string(data) != content || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %q mode %v", f, data, st.Mode().Perm())
		}
	}
	snp, _ := Parse([]byte(lsDomain("kvm", "x86_64", "q35", `<launchSecurity type='sev-snp'/>`)))
	if f := snp.LaunchSecurityFiles(dir); len(f) != 0 {
		t.Errorf("SEV-SNP files %q", f)
	}
}

// TestFromNativeLaunchSecurity: the argv of each launch security type
// converts back to the same <launchSecurity> (from-native), and a command
// line whose object the machine does not use, or that has a property with
// no equivalent, is refused rather than converted to an unprotected guest.
func TestFromNativeLaunchSecurity(t *testing.T) {
	dir := t.TempDir()
	emu := &capabilities.Emulator{Path: "/usr/bin/qemu-system-x86_64", Arch: "x86_64", VersionNum: 10001000,
		SEV: &capabilities.SEVCapability{CBitPos: 51, ReducedPhysBits: 1}}
	for _, tc := range []struct{ name, arch, machine, ls string }{
		{"sev", "x86_64", "q35", `<launchSecurity type='sev' kernelHashes='yes'><cbitpos>47</cbitpos><reducedPhysBits>1</reducedPhysBits>
		  <policy>0x33</policy><handle>2</handle><dhCert>DHCERT</dhCert><session>SESSION</session></launchSecurity>`},
		{"sev-snp", "x86_64", "q35", `<launchSecurity type='sev-snp' authorKey='yes' vcek='no'><cbitpos>47</cbitpos><reducedPhysBits>1</reducedPhysBits>
		  <policy>0x30000</policy><idBlock>` + blob(96) + `</idBlock><idAuth>` + blob(4096) + `</idAuth><hostData>` + blob(32) + `</hostData></launchSecurity>`},
		{"tdx", "x86_64", "q35", `<launchSecurity type='tdx'><policy>0x10000001</policy><mrOwner>` + blob(48) + `</mrOwner>
		  <quoteGenerationService path='/run/qgs.sock'/></launchSecurity>`},
		{"s390-pv", "s390x", "s390-ccw-virtio", `<launchSecurity type='s390-pv'/>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Parse([]byte(lsDomain("kvm", tc.arch, tc.machine, tc.ls)))
			if err != nil {
				t.Fatal(err)
			}
			e := emu
			if tc.arch != "x86_64" {
				e = nil
			}
			cmd, err := BuildCommand(d, CommandOptions{Emulator: e, QMPSocket: "/run/q.qmp", DomainDir: dir, LibDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			if err := d.WriteLaunchSecurityFiles(dir); err != nil {
				t.Fatal(err)
			}
			back, err := FromNative(cmd.String())
			if err != nil {
				t.Fatalf("FromNative: %v\n%s", err, cmd)
			}
			want, got := *d.LaunchSecurity(), back.LaunchSecurity()
			if got == nil || *got != want {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
			}
		})
	}
	for _, tc := range []struct{ name, argv, err string }{
		{"object not used", "/usr/bin/qemu-system-x86_64 -machine q35 -accel kvm -object sev-guest,id=lsec0,cbitpos=47,reduced-phys-bits=1,policy=1",
			"would run the guest unprotected"},
		{"machine names no object", "/usr/bin/qemu-system-x86_64 -machine q35,confidential-guest-support=sev0 -accel kvm", "names no sev-guest"},
		{"unknown property", "/usr/bin/qemu-system-x86_64 -machine q35,confidential-guest-support=lsec0 -accel kvm -object sev-guest,id=lsec0,policy=1,sev-device=/dev/sev2",
			`property "sev-device" has no <launchSecurity> equivalent`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := FromNative(tc.argv); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("FromNative: %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

// TestVCPUsHonoured: a <vcpus> that says what -smp gives (boot vCPUs
// 0..current-1) is accepted; one that enables vCPUs by hot-plug at start
// is refused, naming <vcpus>.
func TestVCPUsHonoured(t *testing.T) {
	mk := func(vcpus string) error {
		x := strings.Replace(lsDomain("kvm", "x86_64", "pc", ""), "<vcpu>1</vcpu>", "<vcpu current='2'>4</vcpu>"+vcpus, 1)
		d, err := Parse([]byte(x))
		if err != nil {
			t.Fatal(err)
		}
		_, err = BuildCommand(d, CommandOptions{})
		return err
	}
	ok := `<vcpus><vcpu id='0' enabled='yes' hotpluggable='no'/><vcpu id='1' enabled='yes' hotpluggable='no'/>
	  <vcpu id='2' enabled='no' hotpluggable='yes'/><vcpu id='3' enabled='no' hotpluggable='yes'/></vcpus>`
	if err := mk(ok); err != nil {
		t.Errorf("boot vCPUs refused: %v", err)
	}
	for _, bad := range []string{
		`<vcpus><vcpu id='0' enabled='yes' hotpluggable='no'/><vcpu id='3' enabled='yes' hotpluggable='yes'/></vcpus>`,
		`<vcpus><vcpu id='0' enabled='yes' hotpluggable='no'/><vcpu id='1' enabled='yes' hotpluggable='yes'/></vcpus>`,
		`<vcpus><vcpu id='0' enabled='yes'/></vcpus>`,
	} {
		if err := mk(bad); err == nil || !errors.Is(err, ErrNotHonoured) || !strings.Contains(err.Error(), "<vcpus> is not supported") {
			t.Errorf("%s: %v, want a refusal naming <vcpus>", bad, err)
		}
	}
}
