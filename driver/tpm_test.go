package driver

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qemufs/qemufs/domain"
)

func tpmXML(name, model, version, extra string) string {
	return fmt.Sprintf(`<domain type='qemu'><name>%s</name><uuid>6c8f6b5e-2a7c-4c1e-9d3b-%012d</uuid><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><serial type='pty'/>
<tpm model='%s'><backend type='emulator' version='%s'%s/></tpm></devices></domain>`, name, len(name)*1000+len(version), model, version, extra)
}

func needSwtpm(t *testing.T) {
	t.Helper()
	for _, b := range []string{"swtpm", "swtpm_setup"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (scripts/deps.sh installs swtpm and swtpm-tools)", b)
		}
	}
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] != 'Z' && s[i+2] != 'X'
}

func statusOf(t *testing.T, d *Driver, name string) status {
	t.Helper()
	data, err := os.ReadFile(d.runFiles(name).Status)
	if err != nil {
		t.Fatal(err)
	}
	var st status
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// queryTPM asks QEMU which TPMs it has.
func queryTPM(t *testing.T, d *Driver, name string) string {
	t.Helper()
	dm, _ := d.lookup(name)
	r, err := dm.activeRun("query-tpm")
	if err != nil {
		t.Fatal(err)
	}
	var res json.RawMessage
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.mon.Execute(ctx, "query-tpm", nil, &res); err != nil {
		t.Fatal(err)
	}
	return string(res)
}

// TestTPMLifecycle starts guests with TPM 2.0 (CRB) and 1.2 (TIS): swtpm
// runs, a child of the daemon, with its state made under lib/swtpm/UUID;
// QEMU has the TPM; the status file records swtpm; a new Driver re-attaches
// to it; destroy ends and reaps it; the state survives for the next start
// and goes at undefine unless persistent_state='yes'.
func TestTPMLifecycle(t *testing.T) {
	needSwtpm(t)
	for _, tc := range []struct{ model, version, sub, perm string }{
		{"tpm-crb", "2.0", "tpm2", "tpm2-00.permall"},
		{"tpm-tis", "1.2", "tpm1.2", "tpm-00.permall"},
	} {
		t.Run(tc.version, func(t *testing.T) {
			d := newDriver(t)
			ctx := context.Background()
			name := "t" + strings.ReplaceAll(tc.version, ".", "")
			d.Create(name)
			if err := d.Define(name, []byte(tpmXML(name, tc.model, tc.version, ""))); err != nil {
				t.Fatal(err)
			}
			dm, _ := d.lookup(name)
			uuid := dm.def.UUID()
			stateDir := filepath.Join(d.inst.SwtpmLibDir, uuid, tc.sub)
			files := d.tpmFiles(name)
			if err := d.Control(ctx, name, "start --paused"); err != nil {
				t.Fatal(err)
			}
			st := statusOf(t, d, name)
			if st.TPM == nil || st.TPM.Pid <= 0 || st.TPM.StateDir != stateDir {
				t.Fatalf("status TPM record %+v, want swtpm's pid and state dir %s", st.TPM, stateDir)
			}
			pid := st.TPM.Pid
			if !alive(pid) {
				t.Fatalf("swtpm %d not running; log:\n%s", pid, readFile(files.Log))
			}
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); filepath.Base(exe) != "swtpm" {
				t.Fatalf("pid %d is %s, not swtpm", pid, exe)
			}
			if ppid := procPPid(t, pid); ppid != os.Getpid() {
				t.Errorf("swtpm's parent is %d, want the daemon %d", ppid, os.Getpid())
			}
			if fi, err := os.Stat(filepath.Join(stateDir, tc.perm)); err != nil || fi.Size() == 0 {
				t.Errorf("TPM state %s: %v", tc.perm, err)
			}
			if _, err := os.Stat(files.Socket); err != nil {
				t.Errorf("control socket: %v", err)
			}
			if got := queryTPM(t, d, name); !strings.Contains(got, `"model": "`+tc.model+`"`) && !strings.Contains(got, `"model":"`+tc.model+`"`) {
				t.Errorf("query-tpm = %s, want model %s", got, tc.model)
			}
			perm, _ := os.Stat(filepath.Join(stateDir, tc.perm))

			// A new daemon finds swtpm again.
			d.Close()
			d2, err := New(d.opts)
			if err != nil {
				t.Fatal(err)
			}
			d = d2
			defer d2.Close()
			dm2, _ := d2.lookup(name)
			if dm2.run == nil || dm2.run.tpm == nil || dm2.run.tpm.proc == nil || dm2.run.tpm.proc.Pid != pid {
				t.Fatalf("re-attached run has no swtpm %d", pid)
			}
			if err := d2.Control(ctx, name, "destroy"); err != nil {
				t.Fatal(err)
			}
			if alive(pid) {
				t.Errorf("swtpm %d still running after destroy", pid)
			}
			for _, p := range []string{files.Socket, files.PidFile} {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("%s left behind", p)
				}
			}

			// The state persists: the next start does not make it again.
			if err := d2.Control(ctx, name, "start --paused"); err != nil {
				t.Fatal(err)
			}
			pid2 := statusOf(t, d2, name).TPM.Pid
			if p2, err := os.Stat(filepath.Join(stateDir, tc.perm)); err != nil || !os.SameFile(perm, p2) && !p2.ModTime().After(perm.ModTime()) {
				t.Errorf("state after restart: %v", err)
			}
			if n := strings.Count(readFile(files.Log), "creating the TPM"); n != 1 {
				t.Errorf("swtpm_setup ran %d times, want once:\n%s", n, readFile(files.Log))
			}
			if err := d2.Control(ctx, name, "destroy"); err != nil {
				t.Fatal(err)
			}
			if alive(pid2) {
				t.Errorf("swtpm %d still running after destroy", pid2)
			}
			if err := d2.Remove(name); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(d2.inst.SwtpmLibDir, uuid)); err == nil {
				t.Errorf("TPM state of an undefined domain left behind")
			}
		})
	}
}

// TestTPMPersistentState: persistent_state='yes' keeps the state after
// undefine.
func TestTPMPersistentState(t *testing.T) {
	needSwtpm(t)
	d := newDriver(t)
	ctx := context.Background()
	d.Create("p")
	if err := d.Define("p", []byte(tpmXML("p", "tpm-crb", "2.0", " persistent_state='yes'"))); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "p", "start --paused"); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(statusOf(t, d, "p").TPM.StateDir)
	if err := d.Control(ctx, "p", "destroy"); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove("p"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "tpm2", "tpm2-00.permall")); err != nil {
		t.Errorf("persistent TPM state removed at undefine: %v", err)
	}
}

// TestTPMStartErrors: what cannot start says why and leaves nothing
// running.
func TestTPMStartErrors(t *testing.T) {
	needSwtpm(t)
	d := newDriver(t)
	ctx := context.Background()
	enc := strings.Replace(tpmXML("e", "tpm-tis", "2.0", ""), "version='2.0'/>", "version='2.0'><encryption secret='32ee7e76-2178-47a1-ab7b-269e6e348015'/></backend>", 1)
	d.Create("e")
	if err := d.Define("e", []byte(enc)); err != nil {
		t.Fatal(err)
	}
	err := d.Control(ctx, "e", "start --paused")
	if err == nil || !strings.Contains(err.Error(), "encrypted TPM state") {
		t.Fatalf("start with an encrypted TPM: %v", err)
	}
	if got, _ := d.StateLine("e"); !strings.HasPrefix(got, "shut off") {
		t.Errorf("state %q", got)
	}
	// swtpm_setup missing: the error names the package.
	t.Setenv("PATH", t.TempDir())
	if _, _, err := swtpmBinaries(); err == nil || !strings.Contains(err.Error(), "Debian package swtpm") {
		t.Errorf("swtpmBinaries without swtpm: %v", err)
	}
}

// TestTPMArgs: swtpm's and swtpm_setup's command lines.
func TestTPMArgs(t *testing.T) {
	d, _ := newTPMDomain(t, "tpm-crb", "2.0", "<active_pcr_banks><sha256/><sha384/></active_pcr_banks>")
	tpm, err := emulatedTPM(d)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tpmArgs(tpm, "/s/tpm2"), " "); got != "socket --ctrl type=unixio,fd=3 --tpmstate dir=/s/tpm2,mode=0600 --log fd=1,level=1 --terminate --tpm2" {
		t.Errorf("swtpm args: %s", got)
	}
	if got := strings.Join(tpmSetupArgs(tpm, "/s/tpm2", "a:u"), " "); got != "--tpm-state /s/tpm2 --vmid a:u --createek --not-overwrite --tpm2 --pcr-banks sha256,sha384" {
		t.Errorf("swtpm_setup args: %s", got)
	}
	d, _ = newTPMDomain(t, "tpm-tis", "1.2", "")
	tpm, _ = emulatedTPM(d)
	if got := strings.Join(tpmArgs(tpm, "/s/tpm1.2"), " "); strings.Contains(got, "--tpm2") {
		t.Errorf("TPM 1.2 swtpm args: %s", got)
	}
	if got := strings.Join(tpmSetupArgs(tpm, "/s/tpm1.2", "a:u"), " "); got != "--tpm-state /s/tpm1.2 --vmid a:u --createek --not-overwrite" {
		t.Errorf("TPM 1.2 swtpm_setup args: %s", got)
	}
}

func readFile(p string) string {
	data, _ := os.ReadFile(p)
	return string(data)
}

func procPPid(t *testing.T, pid int) int {
	t.Helper()
	for _, l := range strings.Split(readFile(fmt.Sprintf("/proc/%d/status", pid)), "\n") {
		if v, ok := strings.CutPrefix(l, "PPid:"); ok {
			var n int
			fmt.Sscan(strings.TrimSpace(v), &n)
			return n
		}
	}
	t.Fatalf("no PPid for %d", pid)
	return 0
}

func newTPMDomain(t *testing.T, model, version, inner string) (*domainT, error) {
	t.Helper()
	x := fmt.Sprintf(`<domain type='qemu'><name>a</name><uuid>6c8f6b5e-2a7c-4c1e-9d3b-000000000001</uuid><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><tpm model='%s'><backend type='emulator' version='%s'>%s</backend></tpm></devices></domain>`, model, version, inner)
	d, err := domain.Parse([]byte(x))
	if err != nil {
		t.Fatal(err)
	}
	return d, nil
}

type domainT = domain.Domain
