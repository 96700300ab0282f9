package driver

// Emulated TPMs: <tpm><backend type='emulator' version='1.2|2.0'/></tpm>
// gets a swtpm process started before QEMU and stopped with it, as
// libvirt's TPM emulator support does.
//
//	lib/swtpm/UUID/tpm2 (or tpm1.2)   the TPM's state, made by swtpm_setup at
//	                                  the first start and kept across starts;
//	                                  removed at undefine unless
//	                                  persistent_state='yes'
//	log/swtpm/NAME-swtpm.log          swtpm_setup's and swtpm's output
//	run/swtpm/NAME-swtpm.sock         swtpm's control socket, QEMU's chardev
//	run/swtpm/NAME-swtpm.pid          swtpm's pid file
//
// swtpm is confined as QEMU is: same user and groups (the state directory
// and socket are QEMU's user's), same cgroup, started through procmgr so it
// outlives a daemon restart and is re-attached from the status file. The
// daemon listens on the control socket itself and hands it to swtpm as fd
// 3 (--ctrl type=unixio,fd=3), so QEMU can connect at once without waiting
// for the socket to appear; --terminate makes swtpm exit when QEMU's
// connection ends, and cleanup kills it by pid in any case.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/procmgr"
)

// swtpmSetupTimeout bounds swtpm_setup (a TPM 2's EK creation takes well
// under a second; a loaded machine may take much longer).
const swtpmSetupTimeout = 2 * time.Minute

// tpmRun is the swtpm of one run.
type tpmRun struct {
	proc     *procmgr.Process
	files    tpmFiles
	stateDir string
}

// tpmStatus is what the status file keeps of a run's swtpm, so that a
// restarted daemon re-attaches to it (and stops it with the guest).
type tpmStatus struct {
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	StateDir  string `json:"state_dir"`
}

// tpmFiles are the per-domain swtpm paths outside the state directory.
type tpmFiles struct {
	Socket, PidFile, Log string
}

func (d *Driver) tpmFiles(name string) tpmFiles {
	in := d.inst
	return tpmFiles{
		Socket:  filepath.Join(in.SwtpmRunDir, name+"-swtpm.sock"),
		PidFile: filepath.Join(in.SwtpmRunDir, name+"-swtpm.pid"),
		Log:     filepath.Join(in.SwtpmLogDir, name+"-swtpm.log"),
	}
}

// tpmStateDir is where the TPM of the domain with uuid keeps its state:
// lib/swtpm/UUID/tpm2 or tpm1.2, as libvirt lays it out.
func (d *Driver) tpmStateDir(uuid, version string) string {
	sub := "tpm2"
	if version == "1.2" {
		sub = "tpm1.2"
	}
	return filepath.Join(d.inst.SwtpmLibDir, uuid, sub)
}

// emulatedTPM returns the definition's emulated TPM (nil: none), or why
// qemufs cannot emulate it.
func emulatedTPM(def *domain.Domain) (*domain.TPMEmulator, error) {
	tpms := def.TPMEmulators()
	switch {
	case len(tpms) == 0:
		return nil, nil
	case len(tpms) > 1:
		return nil, fmt.Errorf("TPM: only one emulated TPM per domain is supported, the definition has %d", len(tpms))
	}
	t := tpms[0]
	if def.UUID() == "" {
		return nil, fmt.Errorf("TPM %s: the domain needs a uuid to name its TPM state", t.Alias)
	}
	return &t, nil
}

// swtpmBinaries finds swtpm and swtpm_setup, or says which package to
// install.
func swtpmBinaries() (swtpm, setup string, err error) {
	if swtpm, err = exec.LookPath("swtpm"); err != nil {
		return "", "", fmt.Errorf("TPM: swtpm is not installed (install the Debian package swtpm): %w", err)
	}
	if setup, err = exec.LookPath("swtpm_setup"); err != nil {
		return "", "", fmt.Errorf("TPM: swtpm_setup is not installed (install the Debian package swtpm-tools): %w", err)
	}
	return swtpm, setup, nil
}

// tpmArgs is swtpm's command line for a control socket on fd 3.
func tpmArgs(t *domain.TPMEmulator, stateDir string) []string {
	args := []string{"socket",
		"--ctrl", "type=unixio,fd=3",
		"--tpmstate", "dir=" + stateDir + ",mode=0600",
		"--log", "fd=1,level=1",
		"--terminate"}
	if t.Version != "1.2" {
		args = append(args, "--tpm2")
	}
	return args
}

// tpmSetupArgs is swtpm_setup's command line making a fresh TPM's state:
// manufactured, with its endorsement key (no certificates: they would need
// a local CA outside the instance).
func tpmSetupArgs(t *domain.TPMEmulator, stateDir, vmid string) []string {
	args := []string{"--tpm-state", stateDir, "--vmid", vmid, "--createek", "--not-overwrite"}
	if t.Version != "1.2" {
		args = append(args, "--tpm2")
		if len(t.PCRBanks) > 0 {
			args = append(args, "--pcr-banks", strings.Join(t.PCRBanks, ","))
		}
	}
	return args
}

// hasTPMState reports whether dir holds a TPM's permanent state already.
func hasTPMState(dir, version string) bool {
	name := "tpm2-00.permall"
	if version == "1.2" {
		name = "tpm-00.permall"
	}
	fi, err := os.Stat(filepath.Join(dir, name))
	return err == nil && fi.Size() > 0
}

// startTPM starts the run's swtpm, if the guest has an emulated TPM, after
// the security stack filled spec (QEMU's credential and cgroups, which
// swtpm shares) and before QEMU. On failure nothing of it runs.
func (d *Driver) startTPM(ctx context.Context, r *run, spec *procmgr.Spec) (err error) {
	name := r.dm.name
	t, err := emulatedTPM(r.live)
	if err != nil || t == nil {
		if err != nil {
			return errorf(ErrInvalid, "start %s: %w", name, err)
		}
		return nil
	}
	swtpm, setup, err := swtpmBinaries()
	if err != nil {
		return errorf(ErrInvalid, "start %s: %w", name, err)
	}
	cred := spec.Credential
	files := d.tpmFiles(name)
	stateDir := d.tpmStateDir(r.live.UUID(), t.Version)
	fail := func(format string, args ...any) error {
		return errorf(ErrIO, "start %s: TPM: %s", name, fmt.Sprintf(format, args...))
	}
	if err := d.tpmDirs(cred, stateDir); err != nil {
		return fail("%v", err)
	}
	if err := touch(files.Log); err != nil {
		return fail("log: %v", err)
	}
	if cred != nil {
		os.Chown(files.Log, int(cred.UID), int(cred.GID))
	}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + filepath.Dir(stateDir)}

	if !hasTPMState(stateDir, t.Version) {
		d.appendLog(files.Log, "creating the TPM %s state of %s in %s", t.Version, name, stateDir)
		setupSpec := procmgr.Spec{
			Name:       name + " swtpm_setup",
			Path:       setup,
			Args:       tpmSetupArgs(t, stateDir, name+":"+r.live.UUID()),
			Env:        append(env, "TMPDIR="+filepath.Dir(stateDir)),
			Dir:        "/",
			LogPath:    files.Log,
			Credential: cred,
		}
		keyArgs, key, err := d.tpmKey(t, 3, true)
		if err != nil {
			return errorf(ErrInvalid, "start %s: %w", name, err)
		}
		if key != nil {
			setupSpec.Args = append(setupSpec.Args, keyArgs...)
			setupSpec.ExtraFiles = []*os.File{key}
			defer key.Close()
		}
		p, err := procmgr.Start(ctx, setupSpec)
		if err != nil {
			return fail("swtpm_setup: %v", err)
		}
		select {
		case <-p.Done():
		case <-time.After(swtpmSetupTimeout):
			p.Kill()
			<-p.Done()
			return fail("swtpm_setup did not finish in %v%s", swtpmSetupTimeout, logTail(files.Log))
		}
		if ex := p.Exit(); ex.Code != 0 {
			return fail("swtpm_setup failed (%s)%s", ex, logTail(files.Log))
		}
	}

	os.Remove(files.Socket)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: files.Socket, Net: "unix"})
	if err != nil {
		return fail("control socket: %v", err)
	}
	ln.SetUnlinkOnClose(false)
	sock, err := ln.File()
	ln.Close()
	if err != nil {
		os.Remove(files.Socket)
		return fail("control socket: %v", err)
	}
	defer sock.Close()
	defer func() {
		if err != nil {
			os.Remove(files.Socket)
		}
	}()
	// QEMU connects to it as its own user; nobody else may.
	if err := os.Chmod(files.Socket, 0o600); err != nil {
		return fail("control socket: %v", err)
	}
	if cred != nil {
		if err := os.Chown(files.Socket, int(cred.UID), int(cred.GID)); err != nil {
			return fail("control socket: %v", err)
		}
	}

	args, extra := tpmArgs(t, stateDir), []*os.File{sock}
	keyArgs, key, err := d.tpmKey(t, 4, false)
	if err != nil {
		return errorf(ErrInvalid, "start %s: %w", name, err)
	}
	if key != nil {
		args, extra = append(args, keyArgs...), append(extra, key)
		defer key.Close()
	}
	d.appendLog(files.Log, "starting swtpm for %s: %s %s", name, swtpm, strings.Join(args, " "))
	p, err := procmgr.Start(ctx, procmgr.Spec{
		Name:        name + " swtpm",
		Path:        swtpm,
		Args:        args,
		Env:         env,
		Dir:         "/",
		LogPath:     files.Log,
		PidPath:     files.PidFile,
		Credential:  cred,
		CgroupProcs: spec.CgroupProcs,
		ExtraFiles:  extra,
	})
	if err != nil {
		return fail("swtpm: %v%s", err, logTail(files.Log))
	}
	r.mu.Lock()
	r.tpm = &tpmRun{proc: p, files: files, stateDir: stateDir}
	r.mu.Unlock()
	return nil
}

// tpmDirs makes the state directory (and its lib/swtpm/UUID parent) and
// gives both to swtpm's user; the shared lib/swtpm and run/swtpm
// directories only need to be searchable by it.
func (d *Driver) tpmDirs(cred *procmgr.Credential, stateDir string) error {
	uuidDir := filepath.Dir(stateDir)
	for _, dir := range []string{d.inst.SwtpmLibDir, d.inst.SwtpmRunDir, d.inst.SwtpmLogDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	if cred == nil {
		return nil
	}
	for _, dir := range []string{d.inst.SwtpmLibDir, d.inst.SwtpmRunDir} {
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o011 != 0o011 {
			if err := os.Chmod(dir, fi.Mode().Perm()|0o011); err != nil {
				return err
			}
		}
	}
	for _, dir := range []string{uuidDir, stateDir} {
		if err := os.Chown(dir, int(cred.UID), int(cred.GID)); err != nil {
			return fmt.Errorf("give %s to uid %d: %w", dir, cred.UID, err)
		}
	}
	// State a previous start left (as another user, or by the daemon).
	return filepath.WalkDir(stateDir, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(cred.UID), int(cred.GID))
	})
}

// stopTPM ends the run's swtpm (it normally exits by itself once QEMU is
// gone), waits until it is reaped and removes its socket and pid file.
// QEMU must have ended first.
func (r *run) stopTPM() {
	r.mu.Lock()
	t := r.tpm
	r.tpm = nil
	r.mu.Unlock()
	if t == nil {
		return
	}
	if t.proc != nil {
		select {
		case <-t.proc.Done():
		case <-time.After(2 * time.Second):
			t.proc.Signal(syscall.SIGTERM)
			select {
			case <-t.proc.Done():
			case <-time.After(5 * time.Second):
				t.proc.Kill()
				<-t.proc.Done()
			}
		}
		if ex := t.proc.Exit(); ex.Known && ex.Code != 0 {
			r.d.appendLog(t.files.Log, "swtpm (pid %d) ended: %s", t.proc.Pid, ex)
		}
		t.proc.Cleanup()
	}
	os.Remove(t.files.Socket)
	os.Remove(t.files.PidFile)
}

// tpmStatus describes the run's swtpm for the status file (nil: none).
func (r *run) tpmStatus() *tpmStatus {
	if r.tpm == nil || r.tpm.proc == nil {
		return nil
	}
	return &tpmStatus{Pid: r.tpm.proc.Pid, StartTime: r.tpm.proc.StartTime, StateDir: r.tpm.stateDir}
}

// reattachTPM finds the swtpm a previous daemon started for the run again.
// One that is gone leaves only its files to clean up.
func (r *run) reattachTPM(st *tpmStatus) {
	if st == nil {
		return
	}
	t := &tpmRun{files: r.d.tpmFiles(r.dm.name), stateDir: st.StateDir}
	p, err := procmgr.Attach(st.Pid, st.StartTime)
	switch {
	case err == nil:
		t.proc = p
	case errors.Is(err, procmgr.ErrGone):
		r.d.appendLog(t.files.Log, "swtpm (pid %d) ended while qemufs was not running", st.Pid)
	default:
		r.d.logf("%s: re-attach swtpm: %v", r.dm.name, err)
	}
	r.tpm = t
}

// removeTPMState deletes the TPM state and log of an undefined domain,
// unless its TPM keeps a persistent state.
func (d *Driver) removeTPMState(name string, def *domain.Domain) {
	tpms := def.TPMEmulators()
	if len(tpms) == 0 || def.UUID() == "" {
		return
	}
	for _, t := range tpms {
		if t.PersistentState {
			return
		}
	}
	if err := os.RemoveAll(filepath.Join(d.inst.SwtpmLibDir, def.UUID())); err != nil {
		d.logf("undefine %s: remove TPM state: %v", name, err)
	}
	os.Remove(d.tpmFiles(name).Log)
}
