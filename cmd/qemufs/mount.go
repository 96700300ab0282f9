package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qemufs/qemufs/capabilities"
	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/driver"
	"github.com/qemufs/qemufs/fsnode"
	"github.com/qemufs/qemufs/instance"
	"github.com/qemufs/qemufs/network"
	"github.com/qemufs/qemufs/procmgr"
	"github.com/qemufs/qemufs/secrets"
	"github.com/qemufs/qemufs/security"
	"github.com/qemufs/qemufs/storage"
)

// notifyEnv names the fd a --daemon parent waits on: the daemon writes
// "READY" there once the mount works, or the reason it failed.
const notifyEnv = "QEMUFS_NOTIFY_FD"

// systemPrefixEnv relocates the system instance (instance.NewSystemUnder),
// for tests and packaging.
const systemPrefixEnv = "QEMUFS_SYSTEM_PREFIX"

type mountOptions struct {
	root       string
	system     bool
	daemon     bool
	mountpoint string
}

func parseMountArgs(args []string) (mountOptions, error) {
	var o mountOptions
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--system":
			o.system = true
		case a == "--daemon":
			o.daemon = true
		case a == "--root":
			if i+1 >= len(args) {
				return o, errors.New("mount: --root needs a directory")
			}
			i++
			o.root = args[i]
		case strings.HasPrefix(a, "--root="):
			o.root = strings.TrimPrefix(a, "--root=")
		case strings.HasPrefix(a, "-"):
			return o, fmt.Errorf("mount: unknown option %q\n%s", a, usage)
		case o.mountpoint != "":
			return o, fmt.Errorf("mount: one mount point only, got %q and %q", o.mountpoint, a)
		default:
			o.mountpoint = a
		}
	}
	switch {
	case o.mountpoint == "":
		return o, fmt.Errorf("mount: MOUNTPOINT is missing\n%s", usage)
	case o.system && o.root != "":
		return o, errors.New("mount: --root and --system are exclusive")
	case o.root != "" && !filepath.IsAbs(o.root):
		return o, fmt.Errorf("mount: --root %q: the root directory must be an absolute path", o.root)
	}
	mp, err := filepath.Abs(o.mountpoint)
	if err != nil {
		return o, err
	}
	o.mountpoint = mp
	return o, nil
}

func openInstance(o mountOptions) (*instance.Instance, error) {
	switch {
	case o.system:
		return instance.NewSystemUnder(os.Getenv(systemPrefixEnv))
	case o.root != "":
		return instance.NewEmbedded(o.root)
	}
	return instance.NewSession(os.Getenv)
}

func runMount(args []string) error {
	o, err := parseMountArgs(args)
	if err != nil {
		return err
	}
	if o.daemon {
		return daemonize(o, args)
	}
	notify := notifier()
	err = serve(o, notify)
	if err != nil {
		notify(err.Error())
	}
	return err
}

// notifier returns the function that tells a waiting --daemon parent how
// the mount went; without a parent it does nothing.
func notifier() func(msg string) {
	fd, err := strconv.Atoi(os.Getenv(notifyEnv))
	os.Unsetenv(notifyEnv)
	if err != nil || fd < 3 {
		return func(string) {}
	}
	f := os.NewFile(uintptr(fd), "notify")
	return func(msg string) {
		if f == nil {
			return
		}
		f.WriteString(msg)
		f.Close()
		f = nil
	}
}

// daemonize runs the mount in a new session in the background and returns
// once it is ready, or with the reason it failed.
func daemonize(o mountOptions, args []string) error {
	inst, err := openInstance(o)
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	logPath := filepath.Join(filepath.Dir(inst.LogDir), "qemufs.log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	defer logf.Close()
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	var rest []string
	for _, a := range args {
		if a != "--daemon" {
			rest = append(rest, a)
		}
	}
	rest[len(rest)-1] = o.mountpoint // absolute: the daemon runs in /
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, append([]string{"mount"}, rest...)...)
	cmd.Env = append(os.Environ(), notifyEnv+"=3")
	cmd.ExtraFiles = []*os.File{pw}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		return fmt.Errorf("mount: %w", err)
	}
	pw.Close()
	msg, _ := io.ReadAll(pr)
	pr.Close()
	if string(msg) == "READY" {
		cmd.Process.Release()
		return nil
	}
	cmd.Wait()
	if len(msg) == 0 {
		return fmt.Errorf("mount: the daemon exited before the mount was ready; see %s", logPath)
	}
	return errors.New(strings.TrimSpace(string(msg)))
}

// serve mounts the instance and serves it until it is unmounted.
func serve(o mountOptions, notify func(string)) error {
	logger := log.New(os.Stderr, "qemufs: ", log.LstdFlags|log.Lmsgprefix)
	servePprof(logger)
	inst, err := openInstance(o)
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	conf, warnings, err := instance.LoadConfig(inst.ConfigFile, inst.Kind)
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	for _, w := range warnings {
		logger.Printf("%s: %s", inst.ConfigFile, w)
	}
	if err := prepareMountpoint(o.mountpoint); err != nil {
		return err
	}
	if err := inst.Create(); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	lock, err := inst.Acquire(o.mountpoint)
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	defer lock.Release()
	if err := inst.CheckSocketPaths(32); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	if err := procmgr.Init(); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	stack, err := security.New(securityConfig(inst, conf), security.ProbeHost())
	if err != nil {
		return fmt.Errorf("mount: security: %w", err)
	}
	ctx := context.Background()
	prober := capabilities.Prober{
		CacheDir:   inst.CacheDir,
		ExtraPaths: conf.EmulatorPaths,
		Version:    version,
		SecModels:  stack.Models(),
		KVMAccess:  stack.KVMAccess,
		// The instance's firmware descriptors, as the driver reads them.
		FirmwareDirs: []string{filepath.Join(inst.ConfigDir, "firmware")},
	}
	caps, err := prober.Probe(ctx)
	if err != nil {
		return fmt.Errorf("mount: capabilities: %w", err)
	}
	if prober.KVMDenied != nil {
		logger.Printf("KVM is not listed in capabilities: %v", prober.KVMDenied)
	}
	nets, err := network.New(network.Options{
		ConfigDir: filepath.Join(inst.ConfigDir, "networks"),
		RunDir:    filepath.Join(inst.RunDir, "network"),
		LogDir:    inst.LogDir,
		ID:        inst.RunDir,
		Default:   inst.Kind == instance.System,
		Logger:    logger,
	})
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	secretDrv, err := secrets.New(secrets.Options{
		ConfigDir: filepath.Join(inst.ConfigDir, "secrets"),
		// Beside QEMU's lib directory, not in it: QEMU's user owns that.
		KeyFile: filepath.Join(filepath.Dir(inst.LibDir), "secrets", "secrets-encryption-key"),
	})
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	pools, err := storage.New(storage.Options{
		ConfigDir: filepath.Join(inst.ConfigDir, "storage"),
		RunDir:    filepath.Join(inst.RunDir, "storage"),
		Secret:    secretDrv.Lookup,
		Logger:    logger,
	})
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	drv, err := driver.New(driver.Options{
		Instance: inst, Config: conf, Caps: caps, Security: stack,
		Networks: nets, Pools: pools, Secrets: secretDrv, Logger: logger, Version: version,
	})
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	pools.SetInUse(drv.DiskUser)
	access, err := accessFor(inst, conf)
	if err != nil {
		drv.Close()
		return fmt.Errorf("mount: %w", err)
	}
	srv, err := fsnode.Mount(o.mountpoint, &fsnode.Config{
		Driver:     drv,
		Networks:   nets,
		Pools:      pools,
		Secrets:    secretDrv,
		Caps:       caps,
		Version:    versionText(caps),
		FromNative: fromNative,
		Access:     access,
	})
	if err != nil {
		drv.Close()
		return err
	}
	nets.Autostart(ctx)
	pools.Autostart(ctx)
	drv.Autostart(ctx)
	logger.Printf("%s mounted at %s (pid %d)", inst, o.mountpoint, os.Getpid())
	notify("READY")

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	go func() {
		for s := range sigs {
			logger.Printf("%v: unmounting %s", s, o.mountpoint)
			if err := srv.Unmount(); err != nil {
				// Busy (a shell cd'ed into it): detach it lazily, as
				// fusermount3 -uz does; it goes away when released.
				logger.Printf("unmount: %v; detaching lazily", err)
				unix.Unmount(o.mountpoint, unix.MNT_DETACH)
			}
		}
	}()
	srv.Wait()
	signal.Stop(sigs)
	drv.Close()
	logger.Printf("%s unmounted from %s", inst, o.mountpoint)
	return nil
}

// prepareMountpoint makes sure mp is a directory, clearing the dead mount
// a killed daemon leaves ("transport endpoint is not connected").
func prepareMountpoint(mp string) error {
	_, err := os.Stat(mp)
	if errors.Is(err, unix.ENOTCONN) {
		if err := detach(mp); err != nil {
			return fmt.Errorf("mount: %s is the dead mount of a previous qemufs and could not be cleared: %w", mp, err)
		}
		_, err = os.Stat(mp)
	}
	if err != nil {
		return fmt.Errorf("mount: mount point: %w", err)
	}
	return nil
}

// detach lazily unmounts mp.
func detach(mp string) error {
	if os.Geteuid() == 0 {
		return unix.Unmount(mp, unix.MNT_DETACH)
	}
	out, err := exec.Command("fusermount3", "-uz", mp).CombinedOutput()
	if err != nil {
		return fmt.Errorf("fusermount3: %s", strings.TrimSpace(string(out)))
	}
	return nil
}

// securityConfig turns qemu.conf into the security stack's configuration.
func securityConfig(inst *instance.Instance, conf *instance.Config) security.Config {
	return security.Config{
		User:              conf.User,
		Group:             conf.Group,
		DynamicOwnership:  conf.DynamicOwnership,
		SecurityDriver:    conf.SecurityDriver,
		CgroupControllers: conf.CgroupControllers,
		CgroupDeviceACL:   conf.CgroupDeviceACL,
		Namespaces:        conf.Namespaces,
		SeccompSandbox:    conf.SeccompSandbox,
		Privileged:        os.Geteuid() == 0 && inst.Kind != instance.Session,
		InstanceName:      inst.Name,
		RunDir:            inst.RunDir,
		LibDir:            inst.LibDir,
		CacheDir:          inst.CacheDir,
		LogDir:            inst.LogDir,
	}
}

// accessFor says who may use the mount: the owner only, or for the system
// instance root and admin_group (writes) and read_group (reads).
func accessFor(inst *instance.Instance, conf *instance.Config) (fsnode.Access, error) {
	a := fsnode.Access{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), AdminGID: -1, ReadGID: -1}
	if inst.Kind != instance.System {
		return a, nil
	}
	a.Shared = true
	lookup := func(name, key string) (int, error) {
		if name == "" {
			return -1, nil
		}
		g, err := user.LookupGroup(name)
		if err != nil {
			return -1, fmt.Errorf("qemu.conf %s = %q: %w", key, name, err)
		}
		return strconv.Atoi(g.Gid)
	}
	var err error
	if a.AdminGID, err = lookup(conf.AdminGroup, "admin_group"); err != nil {
		return a, err
	}
	if a.ReadGID, err = lookup(conf.ReadGroup, "read_group"); err != nil {
		return a, err
	}
	if a.AdminGID >= 0 {
		a.GID = uint32(a.AdminGID)
	}
	return a, nil
}

// versionText is the `version` file: qemufs, its daemon, and the QEMUs found.
func versionText(caps *capabilities.Capabilities) string {
	var b strings.Builder
	fmt.Fprintf(&b, "qemufs %s\ndaemon pid %d\n", version, os.Getpid())
	for _, e := range caps.Emulators {
		if e.Err != "" {
			fmt.Fprintf(&b, "%s: unusable: %s\n", e.Path, e.Err)
			continue
		}
		fmt.Fprintf(&b, "QEMU %s %s\n", e.Version, e.Path)
	}
	return b.String()
}

// fromNative converts a QEMU command line to domain XML.
func fromNative(args string) ([]byte, error) {
	d, err := domain.FromNative(args)
	if err != nil {
		return nil, err
	}
	return d.XML(), nil
}

// runUnmount unmounts a tree and waits for its daemon to finish, so the
// instance can be mounted again at once.
func runUnmount(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("unmount: usage: qemufs unmount MOUNTPOINT")
	}
	mp, err := filepath.Abs(args[0])
	if err != nil {
		return err
	}
	pid := daemonPid(mp)
	if os.Geteuid() == 0 {
		err = unix.Unmount(mp, 0)
	} else if out, e := exec.Command("fusermount3", "-u", mp).CombinedOutput(); e != nil {
		err = errors.New(strings.TrimSpace(string(out)))
	}
	switch {
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("unmount %s: busy: a process uses a file or directory in it (a shell cd'ed into it, an open file)", mp)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("unmount %s: not mounted", mp)
	case err != nil:
		return fmt.Errorf("unmount %s: %w", mp, err)
	}
	if pid > 0 {
		waitExit(pid, 30*time.Second)
	}
	return nil
}

// daemonPid reads the serving daemon's pid from the mount's version file.
func daemonPid(mp string) int {
	data, err := os.ReadFile(filepath.Join(mp, "version"))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "daemon pid "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// waitExit waits until process pid has exited, or timeout.
func waitExit(pid int, timeout time.Duration) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // already gone
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		n, err := unix.Poll(fds, int(left/time.Millisecond)+1)
		if n > 0 || err != nil && err != unix.EINTR {
			return
		}
	}
}
