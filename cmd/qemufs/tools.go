package main

import (
	"context"
	"fmt"
	"os"

	"github.com/qemufs/qemufs/capabilities"
	"github.com/qemufs/qemufs/domain"
	"github.com/qemufs/qemufs/instance"
)

// probe returns the host's capabilities, using the session's cache.
func probe() (*capabilities.Capabilities, error) {
	p := capabilities.Prober{Version: version}
	if inst, err := instance.NewSession(os.Getenv); err == nil {
		if conf, _, err := instance.LoadConfig(inst.ConfigFile, inst.Kind); err == nil {
			p.ExtraPaths = conf.EmulatorPaths
		}
		if os.MkdirAll(inst.CacheDir, 0o700) == nil {
			p.CacheDir = inst.CacheDir
		}
	}
	return p.Probe(context.Background())
}

func runCapabilities(args []string) error {
	if len(args) != 0 {
		return fmt.Errorf("capabilities: no arguments expected")
	}
	caps, err := probe()
	if err != nil {
		return fmt.Errorf("capabilities: %w", err)
	}
	os.Stdout.Write(caps.XML())
	return nil
}

func runToNative(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("to-native: usage: qemufs to-native FILE.xml")
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return fmt.Errorf("to-native: %w", err)
	}
	d, err := domain.Parse(data)
	if err != nil {
		return fmt.Errorf("to-native: %s: %w", args[0], err)
	}
	caps, err := probe()
	if err != nil {
		return fmt.Errorf("to-native: %w", err)
	}
	if err := d.Validate(caps); err != nil {
		return fmt.Errorf("to-native: %s: %w", args[0], err)
	}
	if err := domain.Expand(d, caps); err != nil {
		return fmt.Errorf("to-native: %s: %w", args[0], err)
	}
	emu, _, err := caps.Lookup(d.Arch(), d.Type(), d.Machine(), d.Emulator())
	if err != nil {
		return fmt.Errorf("to-native: %s: %w", args[0], err)
	}
	dir := "/run/qemufs/qemu/" + d.Name() + ".d"
	cmd, err := domain.BuildCommand(d, domain.CommandOptions{
		Emulator:  emu,
		QMPSocket: "/run/qemufs/qemu/" + d.Name() + ".qmp",
		DomainDir: dir,
	})
	if err != nil {
		return fmt.Errorf("to-native: %s: %w", args[0], err)
	}
	fmt.Println(cmd.String())
	return nil
}

func runFromNative(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("from-native: usage: qemufs from-native FILE.args")
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return fmt.Errorf("from-native: %w", err)
	}
	out, err := fromNative(string(data))
	if err != nil {
		return fmt.Errorf("from-native: %s: %w", args[0], err)
	}
	os.Stdout.Write(out)
	return nil
}
