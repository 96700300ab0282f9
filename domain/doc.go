// Package domain is qemufs's model of a libvirt domain XML document: it
// parses and validates a definition, expands it for a stable guest ABI,
// formats it back, and turns it into the QEMU command line that runs it.
//
// # Design
//
// The source of truth is the parsed XML tree (github.com/beevik/etree), not
// a set of Go structs. Typed views (Disks, Serials, Graphics, ...) are read
// from the tree on demand, and Expand writes its defaults, controllers,
// addresses, aliases and MAC addresses into the tree. This is deliberate:
// libvirt's XML is large and open-ended (metadata, the qemu: namespace,
// elements qemufs does not act on), and a definition must come back from
// config.xml exactly as the user wrote it plus what expansion filled in.
// Structs would silently drop whatever they do not model; the tree keeps it.
//
// The life of a definition:
//
//	d, err := domain.Parse(xml)          // syntax, structure, semantics
//	err = d.Validate(caps)               // host checks (emulator, machine, arch)
//	err = domain.Expand(d, caps)         // defaults and addresses; idempotent
//	stored := d.XML()                    // what config.xml returns
//	cmd, err := domain.BuildCommand(d, domain.CommandOptions{...})
//
// Around it:
//
//	d.CheckHost()                        // at start: /dev/kvm, host devices, swtpm, ...
//	d.Disks(), d.HostPaths(), d.NVRAMPath(libDir)   // what the security layer grants
//	d.Tuning()                           // memtune/cputune/... for cgroups
//	d.ImpliedTaints()                    // qemu: namespace use, for live.xml and the log
//	live := d.Clone(); live.SetChardevPath(...); live.SetGraphicsPort(...);
//	live.SetSecLabels(...); live.AddTaint(...)   // the live definition
//	domain.FromNative(argv)              // QEMU argv -> definition
//
// BuildCommand's documentation says what the driver must do on QMP
// events to honour on_poweroff, on_reboot and on_crash.
//
// Expansion is deterministic apart from the UUID, which is random when the
// definition has none (as libvirt does); MAC addresses are derived from the
// UUID and the interface's position, so expanding the same definition gives
// the same bytes, and expanding an expanded definition changes nothing.
//
// Argument generation lives in one place (command.go and the argv_*.go
// files, one per device class) and targets QEMU 7.2's interfaces: -blockdev,
// and JSON for -device, -netdev, -object and -audiodev, as libvirt 9.0 does.
package domain
