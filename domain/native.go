package domain

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// FromNative turns a QEMU command line into a domain definition, like
// libvirt's old domxml-from-native. argv is the shell form: optional
// NAME=VALUE environment assignments, the binary, then the arguments; one
// line, or several joined by backslash-newline (libvirt's .args files).
//
// It understands the common options: -name, -uuid, -m, -smp, -M/-machine,
// -accel/-enable-kvm, -cpu, -kernel/-initrd/-append/-dtb, -bios, -boot,
// -hda..-hdd/-cdrom/-fda/-fdb, -drive, -blockdev, -device (disks, NICs,
// serial ports, inputs, video, sound, watchdog, balloon, rng, USB and SCSI
// controllers), -netdev/-nic/-net, -serial/-parallel/-chardev, -vnc,
// -spice, -display/-nographic, -vga, -usb/-usbdevice, -rtc/-localtime,
// -no-acpi, -no-reboot, -k. Options that only concern how QEMU is run
// (-S, -daemonize, -pidfile, -monitor, -qmp, -nodefaults, -msg, ...) are
// dropped; anything else is kept verbatim in <qemu:commandline>, so no
// option is lost. Environment variables other than the usual LC_ALL, PATH,
// HOME, USER, LOGNAME and XDG_* become <qemu:env>.
//
// The result is validated like Parse's, but not expanded: Expand fills in
// the UUID, addresses and defaults.
func FromNative(argv string) (*Domain, error) {
	words, err := ShellWords(argv)
	if err != nil {
		return nil, &Error{Msg: "command line: " + err.Error()}
	}
	n := &native{}
	i := 0
	for ; i < len(words) && isEnvAssign(words[i]); i++ {
		n.env = append(n.env, words[i])
	}
	if i == len(words) {
		return nil, &Error{Msg: "command line: no QEMU binary"}
	}
	n.binary = words[i]
	if !strings.HasPrefix(n.binary, "/") {
		// A bare name runs from PATH.
		if p, err := exec.LookPath(n.binary); err == nil && filepath.IsAbs(p) {
			n.binary = p
		} else {
			n.binary = "/usr/bin/" + filepath.Base(n.binary)
		}
	}
	if err := n.parse(words[i+1:]); err != nil {
		return nil, err
	}
	doc, err := n.build()
	if err != nil {
		return nil, err
	}
	d := &Domain{doc: doc, root: doc.Root()}
	if err := d.check(); err != nil {
		return nil, fmt.Errorf("the converted definition is invalid: %w", err)
	}
	return d, nil
}

func isEnvAssign(w string) bool {
	i := strings.IndexByte(w, '=')
	return i > 0 && envNameRE.MatchString(w[:i])
}

// ShellWords splits a POSIX shell command line (quotes, backslashes,
// backslash-newline continuations; no expansions), as `argv` and to-native
// print one, so that callers can run what qemufs shows.
func ShellWords(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && s[i+1] == '\n':
			i++
		case c == '\\' && i+1 < len(s):
			cur.WriteByte(s[i+1])
			inWord = true
			i++
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			inWord = true
			i += j + 1
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`\n", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated double quote")
			}
			inWord = true
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

// kv is a parsed QEMU option string "first,key=value,flag,...".
type kv struct {
	first string // the leading bare value (e.g. the driver of -device)
	keys  []string
	vals  map[string]string
}

// parseKV parses QEMU's key=value syntax (",," escapes a comma). When
// implied is set, a leading word without '=' is stored as that key.
func parseKV(s, implied string) kv {
	k := kv{vals: map[string]string{}}
	for j, p := range splitKV(s) {
		if p == "" {
			continue
		}
		key, val, ok := strings.Cut(p, "=")
		if !ok {
			if j == 0 && implied != "" {
				k.first = p
				key, val = implied, p
			} else {
				key, val = p, "on"
			}
		}
		if _, dup := k.vals[key]; !dup {
			k.keys = append(k.keys, key)
		}
		k.vals[key] = val
	}
	return k
}

func (k kv) get(key string) string { return k.vals[key] }

func (k kv) has(key string) bool { _, ok := k.vals[key]; return ok }

// kvJSON parses a -device/-blockdev/-netdev argument in JSON or key=value
// form into a flat kv with implied as the key of a leading bare word.
func kvJSON(s, implied string) kv {
	if !strings.HasPrefix(strings.TrimSpace(s), "{") {
		return parseKV(s, implied)
	}
	k := kv{vals: map[string]string{}}
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return k
	}
	flatten("", m, &k)
	k.first = k.vals[implied]
	return k
}

func flatten(prefix string, m map[string]any, k *kv) {
	for key, v := range m {
		full := key
		if prefix != "" {
			full = prefix + "." + key
		}
		switch x := v.(type) {
		case map[string]any:
			flatten(full, x, k)
		case bool:
			k.keys = append(k.keys, full)
			k.vals[full] = onoff(x)
		case float64:
			k.keys = append(k.keys, full)
			k.vals[full] = strconv.FormatFloat(x, 'f', -1, 64)
		case string:
			k.keys = append(k.keys, full)
			k.vals[full] = x
		}
	}
}

// nDisk is a disk gathered from -hda/-cdrom/-drive/-blockdev/-device.
type nDisk struct {
	id       string // -drive id / blockdev node-name
	file     string
	format   string
	bus      string // ide, sata, scsi, virtio, usb, fdc
	device   string // disk, cdrom, floppy
	index    int    // unit index on its bus, -1 when unknown
	readonly bool
	cache    string
	serial   string
	boot     int
	used     bool
	dir      bool        // a directory exported as a FAT disk (vvfat)
	iotune   [][2]string // <iotune> children from a throttle group
}

type nNIC struct {
	kind  string // user, tap, socket, none
	id    string
	model string
	mac   string
	opts  kv
}

type nChr struct {
	kind string // serial, parallel, console, channel
	spec string // the -serial spec, or "chardev:ID" for a -chardev backend
	name string // virtserialport name
}

type native struct {
	env      []string
	binary   string
	name     string
	uuid     string
	memKiB   uint64
	maxKiB   uint64
	slots    string
	smp      kv
	machine  kv
	accel    string
	cpu      string
	kernel   string
	initrd   string
	append   string
	dtb      string
	bios     string
	boot     kv
	acpi     bool
	noReboot bool
	rtc      kv
	disks    []*nDisk
	drives   map[string]*nDisk // by -drive id / -blockdev node
	nics     []*nNIC
	netdevs  map[string]*nNIC
	chardevs map[string]kv
	chrs     []nChr
	vnc      string
	spice    kv
	display  string
	graphics bool // -nographic seen: none
	vga      string
	inputs   [][2]string // type, bus
	usb      []string    // USB controller models
	scsi     []string    // SCSI controller models
	sounds   []string
	watchdog string
	wdAction string
	balloon  bool
	rng      string                 // rng backend: a path, or "builtin"
	rngObjs  map[string]string      // -object rng-* by id
	throttle map[string][][2]string // throttle-group limits by id, as <iotune>
	usbBots  map[string]bool        // usb-bot ids
	keymap   string
	extra    []string // kept verbatim in qemu:commandline
	lsecObjs []kv     // confidential guest objects (native_launchsec.go)
}

// parse walks the arguments.
func (n *native) parse(args []string) error {
	n.acpi = true
	n.drives = map[string]*nDisk{}
	n.netdevs = map[string]*nNIC{}
	n.chardevs = map[string]kv{}
	rngObjects := map[string]string{}
	next := func(i *int, opt string) (string, error) {
		if *i+1 >= len(args) {
			return "", &Error{Msg: fmt.Sprintf("command line: option %s needs an argument", opt)}
		}
		*i++
		return args[*i], nil
	}
	hdIndex := map[string]int{"-hda": 0, "-hdb": 1, "-hdc": 2, "-hdd": 3}
	for i := 0; i < len(args); i++ {
		a := args[i]
		opt := a
		if strings.HasPrefix(opt, "--") {
			opt = opt[1:]
		}
		switch opt {
		case "-S", "-no-user-config", "-nodefaults", "-daemonize", "-no-shutdown", "-no-hpet",
			"-full-screen", "-no-kvm-pit-reinjection", "-no-frame", "-snapshot":
			if opt == "-no-hpet" {
				n.extra = append(n.extra, opt)
			}
		case "-enable-kvm":
			n.accel = "kvm"
		case "-no-acpi":
			n.acpi = false
		case "-no-reboot":
			n.noReboot = true
		case "-nographic":
			n.graphics = true
		case "-localtime":
			n.rtc = parseKV("base=localtime", "")
		case "-usb":
			if len(n.usb) == 0 {
				n.usb = append(n.usb, "") // the machine's default model
			}
		default:
			if !strings.HasPrefix(opt, "-") {
				// A bare disk image, like qemu's first non-option argument.
				n.disks = append(n.disks, &nDisk{file: a, bus: "ide", device: "disk", index: 0})
				continue
			}
			v, err := next(&i, a)
			if err != nil {
				return err
			}
			if err := n.option(opt, v, hdIndex, rngObjects); err != nil {
				return err
			}
		}
	}
	return nil
}

// option handles one option with its argument.
func (n *native) option(opt, v string, hdIndex map[string]int, rngObjects map[string]string) error {
	n.rngObjs = rngObjects
	switch opt {
	case "-name":
		k := parseKV(v, "guest")
		n.name = k.get("guest")
	case "-uuid":
		n.uuid = v
	case "-m":
		k := parseKV(v, "size")
		size, err := nativeSize(k.get("size"), "M")
		if err != nil {
			return &Error{Msg: fmt.Sprintf("command line: -m %s: %v", v, err)}
		}
		n.memKiB = size / 1024
		if mm := k.get("maxmem"); mm != "" {
			m, err := nativeSize(mm, "M")
			if err != nil {
				return &Error{Msg: fmt.Sprintf("command line: -m %s: %v", v, err)}
			}
			n.maxKiB = m / 1024
			n.slots = k.get("slots")
		}
	case "-smp":
		n.smp = parseKV(v, "cpus")
	case "-M", "-machine":
		k := parseKV(v, "type")
		n.machine = k
		if a := k.get("accel"); a != "" {
			n.accel = strings.SplitN(a, ":", 2)[0]
		}
	case "-accel":
		n.accel = parseKV(v, "accel").get("accel")
	case "-cpu":
		n.cpu = v
	case "-kernel":
		n.kernel = v
	case "-initrd":
		n.initrd = v
	case "-append":
		n.append = v
	case "-dtb":
		n.dtb = v
	case "-bios":
		n.bios = v
	case "-boot":
		n.boot = parseKV(v, "order")
	case "-rtc":
		n.rtc = parseKV(v, "")
	case "-hda", "-hdb", "-hdc", "-hdd":
		n.disks = append(n.disks, &nDisk{file: v, bus: "ide", device: "disk", index: hdIndex[opt]})
	case "-cdrom":
		n.disks = append(n.disks, &nDisk{file: v, bus: "ide", device: "cdrom", index: 2, readonly: true})
	case "-fda", "-fdb":
		idx := 0
		if opt == "-fdb" {
			idx = 1
		}
		n.disks = append(n.disks, &nDisk{file: v, bus: "fdc", device: "floppy", index: idx})
	case "-drive":
		n.drive(parseKV(v, ""))
	case "-blockdev":
		k := kvJSON(v, "driver")
		node := k.get("node-name")
		switch k.get("driver") {
		case "file", "host_device", "host_cdrom":
			n.drives[node] = &nDisk{id: node, file: k.get("filename"), index: -1, readonly: k.get("read-only") == "on"}
		case "vvfat":
			n.drives[node] = &nDisk{id: node, file: k.get("dir"), dir: true, index: -1, readonly: k.get("rw") != "on"}
		case "throttle", "copy-on-read":
			// Filters over a format node: the disk is the node below.
			if f := n.drives[k.get("file")]; f != nil {
				d := *f
				d.id = node
				if g := k.get("throttle-group"); g != "" {
					d.iotune = n.throttle[g]
				}
				n.drives[node] = &d
			}
		default:
			// A format node on top of a protocol node.
			if f := n.drives[k.get("file")]; f != nil {
				d := *f
				d.id, d.format = node, k.get("driver")
				d.readonly = d.readonly || k.get("read-only") == "on"
				n.drives[node] = &d
			} else if fn := k.get("file.filename"); fn != "" {
				n.drives[node] = &nDisk{id: node, file: fn, format: k.get("driver"), index: -1}
			}
		}
	case "-device":
		return n.device(kvJSON(v, "driver"), v)
	case "-netdev":
		k := kvJSON(v, "type")
		nic := &nNIC{kind: k.get("type"), id: k.get("id"), opts: k}
		n.netdevs[nic.id] = nic
	case "-nic":
		k := parseKV(v, "type")
		if k.get("type") == "none" {
			return nil
		}
		n.nics = append(n.nics, &nNIC{kind: k.get("type"), model: k.get("model"), mac: k.get("mac"), opts: k})
	case "-net":
		k := parseKV(v, "type")
		switch k.get("type") {
		case "none":
		case "nic":
			n.nics = append(n.nics, &nNIC{kind: "user", model: k.get("model"), mac: k.get("macaddr")})
		default:
			// -net user/tap: the backend of the -net nic before it.
			for _, nic := range n.nics {
				if nic.kind == "user" && nic.opts.vals == nil {
					nic.kind, nic.opts = k.get("type"), k
				}
			}
			if len(n.nics) == 0 {
				n.nics = append(n.nics, &nNIC{kind: k.get("type"), opts: k})
			}
		}
	case "-serial", "-parallel":
		kind := strings.TrimPrefix(opt, "-")
		if v != "none" {
			n.chrs = append(n.chrs, nChr{kind: kind, spec: v})
		}
	case "-chardev":
		k := parseKV(v, "backend")
		n.chardevs[k.get("id")] = k
	case "-vnc":
		n.vnc = v
	case "-spice":
		n.spice = parseKV(v, "")
	case "-display":
		n.display = v
		if strings.HasPrefix(v, "vnc=") {
			n.vnc = strings.TrimPrefix(v, "vnc=")
		}
	case "-vga":
		n.vga = v
	case "-k":
		n.keymap = v
	case "-usbdevice":
		switch v {
		case "tablet", "mouse", "keyboard":
			n.inputs = append(n.inputs, [2]string{v, "usb"})
			if len(n.usb) == 0 {
				n.usb = append(n.usb, "")
			}
		default:
			n.extra = append(n.extra, opt, v)
		}
	case "-soundhw", "-audio":
		n.sounds = append(n.sounds, strings.Split(v, ",")...)
	case "-watchdog":
		n.watchdog = v
	case "-watchdog-action":
		n.wdAction = v
	case "-object":
		k := kvJSON(v, "qom-type")
		switch k.get("qom-type") {
		case "rng-random":
			rngObjects[k.get("id")] = k.get("filename")
		case "rng-builtin":
			rngObjects[k.get("id")] = "builtin"
		case "throttle-group":
			if n.throttle == nil {
				n.throttle = map[string][][2]string{}
			}
			var lim [][2]string
			for _, m := range iotuneLimits {
				if v := k.get("limits." + m[1]); v != "" {
					lim = append(lim, [2]string{m[0], v})
				} else if v := k.get("x-" + m[1]); v != "" {
					lim = append(lim, [2]string{m[0], v})
				}
			}
			n.throttle[k.get("id")] = lim
		case "sev-guest", "sev-snp-guest", "tdx-guest", "s390-pv-guest":
			n.lsecObjs = append(n.lsecObjs, k)
		case "memory-backend-ram", "secret", "iothread":
			// libvirt's own boilerplate: nothing to keep
		default:
			n.extra = append(n.extra, opt, v)
		}
	case "-pidfile", "-monitor", "-qmp", "-mon", "-msg", "-sandbox", "-overcommit", "-D", "-d",
		"-chroot", "-runas", "-run-with", "-audiodev", "-global", "-smbios", "-action", "-name-short":
		switch opt {
		case "-global", "-smbios", "-action":
			// Settings libvirt generates from XML it has; kept verbatim
			// when not understood, so nothing is lost.
			if !strings.HasPrefix(v, "PIIX4_PM.") && !strings.HasPrefix(v, "kvm-pit.") && opt != "-action" {
				n.extra = append(n.extra, opt, v)
			}
		}
	default:
		n.extra = append(n.extra, opt, v)
	}
	return nil
}

// nativeSize parses a QEMU size ("512", "512M", "2G", "1024k") into bytes;
// dflt is the unit of a bare number.
func nativeSize(s, dflt string) (uint64, error) {
	s = strings.TrimSpace(s)
	unit := dflt
	if s != "" {
		switch last := strings.ToUpper(s[len(s)-1:]); last {
		case "K", "M", "G", "T", "B":
			unit, s = last, s[:len(s)-1]
		}
	}
	n, err := strconv.ParseFloat(s, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("malformed size")
	}
	mul := map[string]float64{"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[strings.ToUpper(unit)]
	return uint64(n * mul), nil
}

// drive handles -drive.
func (n *native) drive(k kv) {
	d := &nDisk{id: k.get("id"), file: k.get("file"), format: k.get("format"), cache: k.get("cache"),
		serial: k.get("serial"), index: -1, device: "disk"}
	if k.get("media") == "cdrom" {
		d.device = "cdrom"
		d.readonly = true
	}
	if k.get("readonly") == "on" {
		d.readonly = true
	}
	if idx := k.get("index"); idx != "" {
		d.index, _ = strconv.Atoi(idx)
	} else if u := k.get("unit"); u != "" {
		d.index, _ = strconv.Atoi(u)
		if b := k.get("bus"); b != "" {
			bb, _ := strconv.Atoi(b)
			d.index += 2 * bb
		}
	}
	switch iface := k.get("if"); iface {
	case "", "ide":
		d.bus = "ide"
	case "virtio":
		d.bus = "virtio"
	case "scsi":
		d.bus = "scsi"
	case "floppy":
		d.bus, d.device = "fdc", "floppy"
	case "none":
		n.drives[d.id] = d
		return
	default:
		d.bus = iface
	}
	n.disks = append(n.disks, d)
}

// device handles -device.
func (n *native) device(k kv, raw string) error {
	drv := k.get("driver")
	attach := func(bus, device string) {
		d := n.drives[k.get("drive")]
		if d == nil {
			d = &nDisk{index: -1}
			if device != "cdrom" {
				n.extra = append(n.extra, "-device", raw)
				return
			}
		}
		d.bus, d.device, d.used = bus, device, true
		if device == "cdrom" {
			d.readonly = true
		}
		if s := k.get("serial"); s != "" {
			d.serial = s
		}
		if b := k.get("bootindex"); b != "" {
			d.boot, _ = strconv.Atoi(b)
		}
		if u := k.get("unit"); u != "" && bus == "ide" {
			d.index, _ = strconv.Atoi(u)
			if strings.HasSuffix(k.get("bus"), ".1") {
				d.index += 2
			}
		}
		n.disks = append(n.disks, d)
	}
	switch drv {
	case "virtio-blk-pci", "virtio-blk":
		attach("virtio", "disk")
	case "ide-hd", "ide-drive", "ide-cd":
		dev := "disk"
		if drv == "ide-cd" {
			dev = "cdrom"
		}
		if b := k.get("bus"); strings.HasPrefix(b, "sata") || strings.HasPrefix(b, "ahci") {
			attach("sata", dev)
		} else {
			attach("ide", dev)
		}
	case "scsi-hd", "scsi-disk", "scsi-cd":
		dev := "disk"
		if drv == "scsi-cd" {
			dev = "cdrom"
		}
		// A SCSI drive behind a usb-bot bridge is a USB disk.
		if n.usbBots[strings.TrimSuffix(k.get("bus"), ".0")] {
			attach("usb", dev)
		} else {
			attach("scsi", dev)
		}
	case "usb-bot":
		if n.usbBots == nil {
			n.usbBots = map[string]bool{}
		}
		n.usbBots[k.get("id")] = true
	case "usb-storage":
		attach("usb", "disk")
	case "floppy":
		attach("fdc", "floppy")
	case "lsi", "lsi53c895a", "virtio-scsi-pci", "megasas", "mptsas1068", "pvscsi":
		n.scsi = append(n.scsi, map[string]string{"lsi": "lsilogic", "lsi53c895a": "lsilogic", "virtio-scsi-pci": "virtio-scsi",
			"megasas": "lsisas1078", "mptsas1068": "lsisas1068", "pvscsi": "vmpvscsi"}[drv])
	case "piix3-usb-uhci", "piix4-usb-uhci", "usb-ehci", "ich9-usb-ehci1", "qemu-xhci", "nec-usb-xhci", "pci-ohci":
		for m, q := range usbControllerDriver {
			if q == drv {
				n.usb = append(n.usb, m)
			}
		}
	case "usb-tablet", "usb-mouse", "usb-kbd":
		n.inputs = append(n.inputs, [2]string{map[string]string{"usb-tablet": "tablet", "usb-mouse": "mouse", "usb-kbd": "keyboard"}[drv], "usb"})
	case "virtio-tablet-pci", "virtio-mouse-pci", "virtio-keyboard-pci":
		n.inputs = append(n.inputs, [2]string{strings.TrimSuffix(strings.TrimPrefix(drv, "virtio-"), "-pci"), "virtio"})
	case "isa-serial", "pci-serial", "usb-serial":
		n.chrs = append(n.chrs, nChr{kind: "serial", spec: "chardev:" + k.get("chardev")})
	case "isa-parallel":
		n.chrs = append(n.chrs, nChr{kind: "parallel", spec: "chardev:" + k.get("chardev")})
	case "virtconsole":
		n.chrs = append(n.chrs, nChr{kind: "console", spec: "chardev:" + k.get("chardev")})
	case "virtserialport":
		n.chrs = append(n.chrs, nChr{kind: "channel", spec: "chardev:" + k.get("chardev"), name: k.get("name")})
	case "virtio-serial-pci", "virtio-serial":
	case "VGA", "cirrus-vga", "qxl-vga", "qxl", "virtio-vga", "virtio-gpu-pci", "vmware-svga", "bochs-display":
		n.vga = map[string]string{"VGA": "std", "cirrus-vga": "cirrus", "qxl-vga": "qxl", "qxl": "qxl",
			"virtio-vga": "virtio", "virtio-gpu-pci": "virtio", "vmware-svga": "vmware", "bochs-display": "bochs"}[drv]
	case "intel-hda", "ich9-intel-hda", "AC97", "ES1370", "sb16", "usb-audio":
		n.sounds = append(n.sounds, map[string]string{"intel-hda": "hda", "ich9-intel-hda": "ich9", "AC97": "ac97",
			"ES1370": "es1370", "sb16": "sb16", "usb-audio": "usb"}[drv])
	case "hda-duplex", "hda-micro", "hda-output":
	case "i6300esb", "ib700":
		n.watchdog = drv
	case "virtio-balloon-pci", "virtio-balloon":
		n.balloon = true
	case "virtio-rng-pci", "virtio-rng":
		n.rng = n.rngObjs[k.get("rng")]
		if n.rng == "" {
			n.rng = "/dev/urandom"
		}
	default:
		if nic := nicFromDevice(drv); nic {
			nd := n.netdevs[k.get("netdev")]
			if nd == nil {
				nd = &nNIC{kind: "user"}
			}
			c := *nd
			c.model, c.mac = modelFromNIC(drv), k.get("mac")
			n.nics = append(n.nics, &c)
			return nil
		}
		n.extra = append(n.extra, "-device", raw)
	}
	return nil
}

func nicFromDevice(drv string) bool { return knownNICs[drv] || drv == "virtio-net" }

func modelFromNIC(drv string) string {
	switch drv {
	case "virtio-net-pci", "virtio-net":
		return "virtio"
	}
	return drv
}

// build makes the domain document.
func (n *native) build() (*etree.Document, error) {
	doc := etree.NewDocument()
	r := doc.CreateElement("domain")
	typ := "qemu"
	if n.accel == "kvm" || strings.HasSuffix(n.binary, "kvm") {
		typ = "kvm"
	} else if n.accel == "hvf" {
		typ = "hvf"
	}
	r.CreateAttr("type", typ)
	name := n.name
	if name == "" {
		name = "unnamed"
	}
	r.CreateElement("name").SetText(name)
	if n.uuid != "" {
		r.CreateElement("uuid").SetText(n.uuid)
	}
	if n.maxKiB > 0 {
		mm := r.CreateElement("maxMemory")
		if n.slots != "" {
			mm.CreateAttr("slots", n.slots)
		}
		mm.CreateAttr("unit", "KiB")
		mm.SetText(strconv.FormatUint(n.maxKiB, 10))
	}
	mem := n.memKiB
	if mem == 0 {
		mem = 128 * 1024 // QEMU's default
	}
	for _, tag := range []string{"memory", "currentMemory"} {
		e := r.CreateElement(tag)
		e.CreateAttr("unit", "KiB")
		e.SetText(strconv.FormatUint(mem, 10))
	}
	cpus := 1
	if v := n.smp.get("cpus"); v != "" {
		cpus, _ = strconv.Atoi(v)
	}
	maxcpus := cpus
	if v := n.smp.get("maxcpus"); v != "" {
		maxcpus, _ = strconv.Atoi(v)
	}
	vc := r.CreateElement("vcpu")
	vc.CreateAttr("placement", "static")
	if maxcpus != cpus {
		vc.CreateAttr("current", strconv.Itoa(cpus))
	}
	if cpus == 0 { // -smp sockets=2,cores=2 without a count
		cpus = 1
		for _, k := range []string{"sockets", "dies", "cores", "threads"} {
			if v, err := strconv.Atoi(n.smp.get(k)); err == nil {
				cpus *= v
			}
		}
		maxcpus = cpus
	}
	vc.SetText(strconv.Itoa(maxcpus))

	arch := archFromBinary(n.binary)
	os := r.CreateElement("os")
	ot := os.CreateElement("type")
	ot.CreateAttr("arch", arch)
	if m := n.machine.get("type"); m != "" && m != "none" {
		ot.CreateAttr("machine", m)
	}
	ot.SetText("hvm")
	if n.bios != "" {
		os.CreateElement("loader").SetText(n.bios)
	}
	for _, p := range [][2]string{{"kernel", n.kernel}, {"initrd", n.initrd}, {"cmdline", n.append}, {"dtb", n.dtb}} {
		if p[1] != "" {
			os.CreateElement(p[0]).SetText(p[1])
		}
	}
	perDeviceBoot := false
	for _, d := range n.disks {
		if d.boot > 0 {
			perDeviceBoot = true
		}
	}
	if order := n.boot.get("order") + n.boot.get("once"); order != "" && !perDeviceBoot {
		for _, c := range order {
			dev := map[rune]string{'a': "fd", 'b': "fd", 'c': "hd", 'd': "cdrom", 'n': "network"}[c]
			if dev != "" {
				os.CreateElement("boot").CreateAttr("dev", dev)
			}
		}
	} else if n.kernel == "" && !perDeviceBoot {
		os.CreateElement("boot").CreateAttr("dev", "hd")
	}
	if m := n.boot.get("menu"); m != "" {
		os.CreateElement("bootmenu").CreateAttr("enable", map[string]string{"on": "yes", "off": "no"}[m])
	}
	if isX86(arch) {
		f := r.CreateElement("features")
		if n.acpi {
			f.CreateElement("acpi")
			f.CreateElement("apic")
		}
		if strings.Contains(n.cpu, "+pae") || strings.Contains(n.cpu, "pae=on") {
			f.CreateElement("pae")
		}
		if len(f.ChildElements()) == 0 {
			r.RemoveChild(f)
		}
	}
	if err := n.buildCPU(r); err != nil {
		return nil, err
	}
	cl := r.CreateElement("clock")
	switch n.rtc.get("base") {
	case "localtime":
		cl.CreateAttr("offset", "localtime")
	default:
		cl.CreateAttr("offset", "utc")
	}
	r.CreateElement("on_poweroff").SetText("destroy")
	if n.noReboot {
		r.CreateElement("on_reboot").SetText("destroy")
	} else {
		r.CreateElement("on_reboot").SetText("restart")
	}
	r.CreateElement("on_crash").SetText("destroy")
	devs := r.CreateElement("devices")
	devs.CreateElement("emulator").SetText(n.binary)
	if err := n.buildDisks(devs); err != nil {
		return nil, err
	}
	if len(n.usb) > 0 { // the first USB controller; more are rare by hand
		c := devs.CreateElement("controller")
		c.CreateAttr("type", "usb")
		c.CreateAttr("index", "0")
		if m := n.usb[0]; m != "" {
			c.CreateAttr("model", m)
		}
	}
	for i, m := range n.scsi {
		c := devs.CreateElement("controller")
		c.CreateAttr("type", "scsi")
		c.CreateAttr("index", strconv.Itoa(i))
		if m != "" {
			c.CreateAttr("model", m)
		}
	}
	n.buildNICs(devs)
	if err := n.buildChardevs(devs); err != nil {
		return nil, err
	}
	for _, in := range n.inputs {
		e := devs.CreateElement("input")
		e.CreateAttr("type", in[0])
		e.CreateAttr("bus", in[1])
	}
	n.buildGraphics(devs)
	for _, s := range n.sounds {
		model := map[string]string{"hda": "ich6", "ich9": "ich9", "ac97": "ac97", "es1370": "es1370", "sb16": "sb16",
			"usb": "usb", "pcspk": "pcspk", "all": "ich6"}[s]
		if model == "" {
			return nil, &Error{Msg: fmt.Sprintf("command line: unknown sound card %q", s)}
		}
		devs.CreateElement("sound").CreateAttr("model", model)
	}
	if n.watchdog != "" {
		w := devs.CreateElement("watchdog")
		w.CreateAttr("model", n.watchdog)
		if n.wdAction != "" {
			w.CreateAttr("action", n.wdAction)
		}
	}
	b := devs.CreateElement("memballoon")
	if n.balloon {
		b.CreateAttr("model", "virtio")
	} else {
		b.CreateAttr("model", "none")
	}
	if n.rng != "" {
		rng := devs.CreateElement("rng")
		rng.CreateAttr("model", "virtio")
		be := rng.CreateElement("backend")
		if n.rng == "builtin" {
			be.CreateAttr("model", "builtin")
		} else {
			be.CreateAttr("model", "random")
			be.SetText(n.rng)
		}
	}
	if err := n.buildLaunchSecurity(r); err != nil {
		return nil, err
	}
	n.buildQEMUNamespace(r)
	return doc, nil
}

func archFromBinary(bin string) string {
	base := filepath.Base(bin)
	switch {
	case strings.HasPrefix(base, "qemu-system-"):
		a := strings.TrimPrefix(base, "qemu-system-")
		switch a {
		case "i386":
			return "i686"
		case "arm":
			return "armv7l"
		}
		return a
	}
	return "x86_64" // qemu, qemu-kvm, kvm: the host's
}

func (n *native) buildCPU(r *etree.Element) error {
	k := n.smp
	if n.cpu == "" && !k.has("sockets") && !k.has("cores") && !k.has("threads") {
		return nil
	}
	cpu := r.CreateElement("cpu")
	if n.cpu != "" {
		parts := strings.Split(n.cpu, ",")
		switch parts[0] {
		case "host":
			cpu.CreateAttr("mode", "host-passthrough")
		case "max":
			cpu.CreateAttr("mode", "maximum")
		default:
			cpu.CreateAttr("mode", "custom")
			cpu.CreateAttr("match", "exact")
			cpu.CreateElement("model").SetText(parts[0])
		}
		for _, f := range parts[1:] {
			name, policy := f, "require"
			switch {
			case strings.HasPrefix(f, "+"):
				name = f[1:]
			case strings.HasPrefix(f, "-"):
				name, policy = f[1:], "disable"
			case strings.Contains(f, "="):
				kk, v, _ := strings.Cut(f, "=")
				name = kk
				if v == "off" || v == "false" {
					policy = "disable"
				} else if v != "on" && v != "true" {
					continue // a property, not a feature
				}
			}
			fe := cpu.CreateElement("feature")
			fe.CreateAttr("policy", policy)
			fe.CreateAttr("name", name)
		}
	}
	if k.has("sockets") || k.has("cores") || k.has("threads") {
		t := cpu.CreateElement("topology")
		total := 0
		if v := k.get("maxcpus"); v != "" {
			total, _ = strconv.Atoi(v)
		} else if v := k.get("cpus"); v != "" {
			total, _ = strconv.Atoi(v)
		}
		s, _ := strconv.Atoi(k.get("sockets"))
		c, _ := strconv.Atoi(k.get("cores"))
		th, _ := strconv.Atoi(k.get("threads"))
		// QEMU computes the missing ones.
		if th == 0 {
			th = 1
		}
		if c == 0 {
			c = 1
			if s > 0 && total > 0 {
				c = max(1, total/(s*th))
			}
		}
		if s == 0 {
			s = 1
			if total > 0 {
				s = max(1, total/(c*th))
			}
		}
		t.CreateAttr("sockets", strconv.Itoa(s))
		if d := k.get("dies"); d != "" {
			t.CreateAttr("dies", d)
		}
		t.CreateAttr("cores", strconv.Itoa(c))
		t.CreateAttr("threads", strconv.Itoa(th))
	}
	return nil
}

func (n *native) buildDisks(devs *etree.Element) error {
	// On q35, QEMU's if=ide drives (-hda, -cdrom) sit on the ICH9 AHCI
	// controller: SATA in libvirt's terms.
	if kindOf(n.machine.get("type")) == machineQ35 {
		for _, d := range n.disks {
			if d.bus == "ide" {
				d.bus = "sata"
			}
		}
	}
	// Drives defined but never attached (-drive if=none without -device)
	// are not disks of the guest.
	used := map[string]int{}
	names := map[string]bool{}
	for _, d := range n.disks {
		prefix := map[string]string{"ide": "hd", "sata": "sd", "scsi": "sd", "usb": "sd", "virtio": "vd", "fdc": "fd"}[d.bus]
		if prefix == "" {
			return &Error{Msg: fmt.Sprintf("command line: disk bus %q is not supported", d.bus)}
		}
		key := prefix
		if d.bus == "sata" || d.bus == "scsi" || d.bus == "usb" {
			key = "sd"
		}
		idx := d.index
		if idx < 0 {
			idx = used[key]
		}
		for names[prefix+diskName(idx)] {
			idx++
		}
		if idx >= used[key] {
			used[key] = idx + 1
		}
		target := prefix + diskName(idx)
		names[target] = true
		e := devs.CreateElement("disk")
		typ := "file"
		if strings.HasPrefix(d.file, "/dev/") {
			typ = "block"
		}
		if d.dir {
			typ = "dir"
		}
		e.CreateAttr("type", typ)
		e.CreateAttr("device", d.device)
		dr := e.CreateElement("driver")
		dr.CreateAttr("name", "qemu")
		format := d.format
		if format == "" || d.dir {
			format = "raw"
		}
		if d.dir {
			format = "fat"
		}
		dr.CreateAttr("type", format)
		if d.cache != "" {
			dr.CreateAttr("cache", d.cache)
		}
		if d.file != "" {
			src := e.CreateElement("source")
			switch typ {
			case "block":
				src.CreateAttr("dev", d.file)
			case "dir":
				src.CreateAttr("dir", d.file)
			default:
				src.CreateAttr("file", d.file)
			}
		}
		t := e.CreateElement("target")
		t.CreateAttr("dev", target)
		t.CreateAttr("bus", d.bus)
		if len(d.iotune) > 0 {
			io := e.CreateElement("iotune")
			for _, l := range d.iotune {
				io.CreateElement(l[0]).SetText(l[1])
			}
		}
		if d.boot > 0 {
			e.CreateElement("boot").CreateAttr("order", strconv.Itoa(d.boot))
		}
		if d.readonly {
			e.CreateElement("readonly")
		}
		if d.serial != "" {
			e.CreateElement("serial").SetText(d.serial)
		}
	}
	return nil
}

// diskName is the letters of a disk index: 0 a, 25 z, 26 aa.
func diskName(i int) string {
	s := ""
	for i++; i > 0; i = (i - 1) / 26 {
		s = string(rune('a'+(i-1)%26)) + s
	}
	return s
}

func (n *native) buildNICs(devs *etree.Element) {
	for _, nic := range n.nics {
		e := devs.CreateElement("interface")
		switch nic.kind {
		case "user", "":
			e.CreateAttr("type", "user")
		case "tap":
			e.CreateAttr("type", "ethernet")
		case "socket":
			switch {
			case nic.opts.has("listen"):
				e.CreateAttr("type", "server")
				nativeSocketSource(e, nic.opts.get("listen"))
			case nic.opts.has("connect"):
				e.CreateAttr("type", "client")
				nativeSocketSource(e, nic.opts.get("connect"))
			case nic.opts.has("mcast"):
				e.CreateAttr("type", "mcast")
				nativeSocketSource(e, nic.opts.get("mcast"))
			default:
				e.CreateAttr("type", "user")
			}
		default:
			e.CreateAttr("type", "user")
		}
		if nic.mac != "" {
			e.InsertChildAt(0, etree.NewElement("mac"))
			e.ChildElements()[0].CreateAttr("address", strings.ToLower(nic.mac))
		}
		if nic.kind == "tap" {
			if ifn := nic.opts.get("ifname"); ifn != "" {
				e.CreateElement("target").CreateAttr("dev", ifn)
			}
		}
		model := nic.model
		if model == "" {
			model = "e1000" // QEMU's default NIC on PCs
		}
		e.CreateElement("model").CreateAttr("type", modelFromNIC(model))
	}
}

func nativeSocketSource(e *etree.Element, hp string) {
	host, port, _ := strings.Cut(hp, ":")
	if i := strings.LastIndex(hp, ":"); i >= 0 {
		host, port = hp[:i], hp[i+1:]
	}
	src := e.CreateElement("source")
	if host != "" {
		src.CreateAttr("address", host)
	}
	src.CreateAttr("port", port)
}

// buildChardevs turns -serial/-parallel specs and -chardev backends into
// devices.
func (n *native) buildChardevs(devs *etree.Element) error {
	ports := map[string]int{}
	for _, c := range n.chrs {
		tag := c.kind
		e := devs.CreateElement(tag)
		var err error
		if strings.HasPrefix(c.spec, "chardev:") {
			err = chardevFromKV(e, n.chardevs[strings.TrimPrefix(c.spec, "chardev:")])
		} else {
			err = chardevFromSpec(e, c.spec)
		}
		if err != nil {
			return &Error{Msg: fmt.Sprintf("command line: %s %q: %v", c.kind, c.spec, err)}
		}
		t := e.CreateElement("target")
		switch tag {
		case "serial", "parallel":
			t.CreateAttr("port", strconv.Itoa(ports[tag]))
			ports[tag]++
		case "console":
			t.CreateAttr("type", "virtio")
		case "channel":
			t.CreateAttr("type", "virtio")
			if c.name != "" {
				t.CreateAttr("name", c.name)
			}
		}
	}
	return nil
}

// chardevFromSpec converts a -serial/-parallel spec ("pty", "file:/x",
// "tcp:host:port,server,nowait", "unix:/path,server", "/dev/ttyS0").
func chardevFromSpec(e *etree.Element, spec string) error {
	spec = strings.TrimPrefix(spec, "mon:")
	kind, rest, _ := strings.Cut(spec, ":")
	opts := ""
	if i := strings.IndexByte(rest, ','); i >= 0 {
		rest, opts = rest[:i], rest[i:]
	}
	server := strings.Contains(opts, "server")
	switch {
	case spec == "pty" || spec == "null" || spec == "stdio" || spec == "vc":
		e.CreateAttr("type", spec)
	case strings.HasPrefix(spec, "/dev/"):
		e.CreateAttr("type", "dev")
		e.CreateElement("source").CreateAttr("path", spec)
	case kind == "file" || kind == "pipe":
		e.CreateAttr("type", kind)
		e.CreateElement("source").CreateAttr("path", rest)
	case kind == "unix":
		e.CreateAttr("type", "unix")
		src := e.CreateElement("source")
		src.CreateAttr("mode", map[bool]string{true: "bind", false: "connect"}[server])
		src.CreateAttr("path", rest)
	case kind == "tcp" || kind == "telnet":
		e.CreateAttr("type", "tcp")
		src := e.CreateElement("source")
		src.CreateAttr("mode", map[bool]string{true: "bind", false: "connect"}[server])
		host, port := rest, ""
		if i := strings.LastIndex(rest, ":"); i >= 0 {
			host, port = rest[:i], rest[i+1:]
		}
		if host == "" {
			host = "127.0.0.1"
		}
		src.CreateAttr("host", host)
		src.CreateAttr("service", port)
		p := e.CreateElement("protocol")
		p.CreateAttr("type", map[bool]string{true: "telnet", false: "raw"}[kind == "telnet" || strings.Contains(opts, "telnet")])
	case kind == "udp":
		e.CreateAttr("type", "udp")
		host, port := rest, ""
		if i := strings.LastIndex(rest, ":"); i >= 0 {
			host, port = rest[:i], rest[i+1:]
		}
		src := e.CreateElement("source")
		src.CreateAttr("mode", "connect")
		if host != "" {
			src.CreateAttr("host", host)
		}
		src.CreateAttr("service", port)
	default:
		return fmt.Errorf("unsupported character device")
	}
	return nil
}

// chardevFromKV converts a -chardev backend.
func chardevFromKV(e *etree.Element, k kv) error {
	switch b := k.get("backend"); b {
	case "pty", "null", "stdio", "vc":
		e.CreateAttr("type", b)
	case "file", "pipe":
		e.CreateAttr("type", b)
		e.CreateElement("source").CreateAttr("path", k.get("path"))
	case "tty", "serial", "parport", "parallel":
		e.CreateAttr("type", "dev")
		e.CreateElement("source").CreateAttr("path", k.get("path"))
	case "socket":
		server := k.get("server") == "on"
		if k.has("path") {
			e.CreateAttr("type", "unix")
			src := e.CreateElement("source")
			src.CreateAttr("mode", map[bool]string{true: "bind", false: "connect"}[server])
			src.CreateAttr("path", k.get("path"))
			return nil
		}
		e.CreateAttr("type", "tcp")
		src := e.CreateElement("source")
		src.CreateAttr("mode", map[bool]string{true: "bind", false: "connect"}[server])
		src.CreateAttr("host", k.get("host"))
		src.CreateAttr("service", k.get("port"))
		p := e.CreateElement("protocol")
		p.CreateAttr("type", map[bool]string{true: "telnet", false: "raw"}[k.get("telnet") == "on"])
	case "udp":
		e.CreateAttr("type", "udp")
		src := e.CreateElement("source")
		src.CreateAttr("mode", "connect")
		if h := k.get("host"); h != "" {
			src.CreateAttr("host", h)
		}
		src.CreateAttr("service", k.get("port"))
	case "":
		return fmt.Errorf("no -chardev with that id")
	default:
		return fmt.Errorf("unsupported -chardev backend %q", b)
	}
	return nil
}

func (n *native) buildGraphics(devs *etree.Element) {
	if n.graphics || n.display == "none" {
		n.vga = "none"
	}
	hasGraphics := false
	if n.vnc != "" && n.vnc != "none" {
		hasGraphics = true
		g := devs.CreateElement("graphics")
		g.CreateAttr("type", "vnc")
		k := parseKV(n.vnc, "addr")
		addr := k.get("addr")
		switch {
		case strings.HasPrefix(addr, "unix:"):
			l := g.CreateElement("listen")
			l.CreateAttr("type", "socket")
			l.CreateAttr("socket", strings.TrimPrefix(addr, "unix:"))
		default:
			host, disp := addr, "0"
			if i := strings.LastIndex(addr, ":"); i >= 0 {
				host, disp = addr[:i], addr[i+1:]
			}
			host = strings.Trim(host, "[]")
			if host == "" {
				host = "0.0.0.0" // QEMU's -vnc :N listens on every address
			}
			d, _ := strconv.Atoi(disp)
			g.CreateAttr("port", strconv.Itoa(5900+d))
			g.CreateAttr("autoport", "no")
			g.CreateAttr("listen", host)
			if ws := k.get("websocket"); ws != "" && ws != "on" {
				g.CreateAttr("websocket", ws)
			}
		}
		if n.keymap != "" {
			g.CreateAttr("keymap", n.keymap)
		}
	}
	if len(n.spice.keys) > 0 {
		hasGraphics = true
		g := devs.CreateElement("graphics")
		g.CreateAttr("type", "spice")
		if p := n.spice.get("port"); p != "" {
			g.CreateAttr("port", p)
			g.CreateAttr("autoport", "no")
		} else {
			g.CreateAttr("autoport", "yes")
		}
		if a := n.spice.get("addr"); a != "" {
			g.CreateAttr("listen", a)
		}
	}
	if !hasGraphics && n.vga == "" {
		n.vga = "none" // no display at all
	}
	if n.vga != "" {
		model := map[string]string{"std": "vga", "cirrus": "cirrus", "vmware": "vmvga", "qxl": "qxl",
			"virtio": "virtio", "none": "none", "bochs": "bochs"}[n.vga]
		if model == "" {
			model = "vga"
		}
		if model == "none" && !hasGraphics {
			return
		}
		v := devs.CreateElement("video")
		v.CreateElement("model").CreateAttr("type", model)
	}
}

func (n *native) buildQEMUNamespace(r *etree.Element) {
	var env []string
	for _, e := range n.env {
		name, _, _ := strings.Cut(e, "=")
		switch {
		case name == "LC_ALL" || name == "PATH" || name == "HOME" || name == "USER" || name == "LOGNAME" ||
			strings.HasPrefix(name, "XDG_") || name == "QEMU_AUDIO_DRV":
		default:
			env = append(env, e)
		}
	}
	if len(n.extra) == 0 && len(env) == 0 {
		return
	}
	r.CreateAttr("xmlns:qemu", QEMUNamespace)
	cl := r.CreateElement("qemu:commandline")
	for _, a := range n.extra {
		cl.CreateElement("qemu:arg").CreateAttr("value", a)
	}
	for _, e := range env {
		name, val, _ := strings.Cut(e, "=")
		x := cl.CreateElement("qemu:env")
		x.CreateAttr("name", name)
		x.CreateAttr("value", val)
	}
}
