// Package capabilities finds out what this host and its QEMU binaries can
// run, and says so in libvirt's capabilities and domcapabilities XML, so
// that tools reading libvirt's formats can read qemufs'.
//
// A Prober looks for qemu, qemu-kvm and every qemu-system-* in its search
// directories (default /usr/bin, plus /usr/libexec/qemu-kvm) and in
// qemu.conf's emulator_paths, and asks each binary over QMP what it
// supports: version, target arch, machine types, CPU models, KVM support,
// commands and QOM types (device models). For the host's own arch (x86) it
// also expands the CPU models of the host's vendor, to name the host CPU.
//
// Speed: binaries are probed in parallel. Each QEMU is started stopped
// with -machine none and the QMP socket already listening (created by us,
// inherited as fd 3), so we connect before QEMU is up and never poll for a
// socket file; all queries are sent at once. A cold probe costs about what
// a bare QEMU start plus the same queries costs (see BenchmarkProbeCold and
// BenchmarkBareQEMU). The answers are cached per binary under
// CacheDir/capabilities, keyed by the binary's path, size, mtime and ctime,
// the qemufs version, the accelerators probed with, the host CPU vendor and
// the QEMU module directory's mtime; a warm Probe runs no QEMU. Host facts
// (/proc, /sys, firmware) are read afresh each time: they are cheap.
//
// Failures: a binary that is missing, exits, talks garbage or hangs past
// Prober.Timeout gets Emulator.Err and is left out of the XML and of Lookup;
// the others are still probed. Failures are cached like answers, except
// timeouts, which may be the machine's load and are retried next time.
//
// Accelerators: TCG when the binary has it; KVM when the KVM device can be
// opened read-write and the binary was built with KVM (query-kvm present);
// HVF on macOS when kern.hv_support is 1 and the binary has hvf-accel (see
// Accels). With KVM usable, QEMU is probed under KVM, so CPU model
// usability is KVM's; domcapabilities then says usable='unknown' for TCG.
//
// Files: capabilities.xml is (*Capabilities).XML. Each domcapabilities
// file is named <arch>-<machine>-<virttype>.xml, listed both under the
// machine's canonical name and its alias (x86_64-pc-i440fx-7.2-qemu.xml and
// x86_64-pc-qemu.xml), and only where Lookup, which domain validation uses,
// picks that same emulator; see DomainCapsNames and DomainCapsXML.
//
// Host CPU model: among the QEMU models of the host's vendor and the
// generic ones, the model needing the fewest feature changes to describe
// the host (as libvirt decides), ignoring nested-virtualization features a
// guest usually lacks; host features beyond it are listed as <feature>.
package capabilities
