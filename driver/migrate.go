package driver

import (
	"context"
	"errors"
	"fmt"
	"github.com/qemufs/qemufs/internal/fault"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qemufs/qemufs/domain"
)

// Reasons of the migration states, with libvirt's names.
const (
	ReasonMigrating         = "migrating"          // paused while its state moves (either end)
	ReasonMigrated          = "migrated"           // running at the destination; shut off at the source
	ReasonMigrationCanceled = "migration canceled" // running again at the source after a failed migration
	ReasonPostcopy          = "post-copy"          // running at the destination while pages still arrive
)

// Bounds of a migration.
const (
	// migrateStallTimeout cancels a migration whose stream stops moving:
	// a cut network never fails a TCP send quickly by itself.
	migrateStallTimeout = 30 * time.Second
	// migrateProgress is how often the source looks at query-migrate
	// besides QEMU's MIGRATION events, for the progress it shows.
	migrateProgress = 100 * time.Millisecond
	// migrateDestCheck is how often the source looks at the destination's
	// state during a migration (a destination QEMU that died).
	migrateDestCheck = 2 * time.Second
	// incomingFinishTimeout bounds how long the destination waits for its
	// QEMU to have loaded the whole state once the source says it is sent.
	incomingFinishTimeout = 60 * time.Second
	// incomingFinishPoll is how often the destination looks at
	// query-migrate while it waits for its QEMU to have loaded the
	// state, besides QEMU's MIGRATION events.
	incomingFinishPoll = 100 * time.Millisecond
)

// migrateOptions are the words of `migrate DEST ...`.
type migrateOptions struct {
	dest           string
	live, offline  bool
	persistent     bool
	undefineSource bool
	uri            string // tcp:HOST[:PORT], "" for the destination's choice
	bandwidth      int64  // MiB/s, 0 for QEMU's default
	compressed     bool
	postcopy       bool
	copyStorage    bool
}

const migrateUsage = "migrate DEST [--live|--offline] [--persistent] [--undefinesource] [--uri tcp:HOST[:PORT]] [--bandwidth MiB/s] [--compressed] [--postcopy] [--copy-storage-all]"

func parseMigrateArgs(args []string) (migrateOptions, error) {
	var o migrateOptions
	for i := 0; i < len(args); i++ {
		a := args[i]
		value := func() (string, error) {
			if k, v, ok := strings.Cut(a, "="); ok && k != "" {
				return v, nil
			}
			if i+1 >= len(args) {
				return "", errBadArgs
			}
			i++
			return args[i], nil
		}
		name, _, _ := strings.Cut(a, "=")
		switch name {
		case "--live":
			o.live = true
		case "--offline":
			o.offline = true
		case "--persistent":
			o.persistent = true
		case "--undefinesource":
			o.undefineSource = true
		case "--compressed":
			o.compressed = true
		case "--postcopy":
			o.postcopy = true
		case "--copy-storage-all":
			o.copyStorage = true
		case "--uri":
			v, err := value()
			if err != nil {
				return o, err
			}
			if _, _, err := parseTCPURI(v); err != nil {
				return o, errorf(ErrInvalid, "migrate: --uri %q: %w", v, err)
			}
			o.uri = v
		case "--bandwidth":
			v, err := value()
			if err != nil {
				return o, err
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 || n > 1<<30 {
				return o, errorf(ErrInvalid, "migrate: --bandwidth %q: a positive number of MiB/s", v)
			}
			o.bandwidth = n
		default:
			if strings.HasPrefix(a, "-") || o.dest != "" {
				return o, errBadArgs
			}
			o.dest = a
		}
	}
	switch {
	case o.dest == "":
		return o, errBadArgs
	case !filepath.IsAbs(o.dest):
		return o, errorf(ErrInvalid, "migrate: DEST must be the absolute path of the destination's tree, got %q", o.dest)
	case o.live && o.offline:
		return o, errorf(ErrInvalid, "migrate: --live and --offline exclude each other")
	case o.offline && (o.postcopy || o.compressed || o.copyStorage || o.bandwidth > 0 || o.uri != ""):
		return o, errorf(ErrInvalid, "migrate: --offline moves only the definition; --uri, --bandwidth, --compressed, --postcopy and --copy-storage-all need a live migration")
	case o.offline && !o.persistent:
		return o, errorf(ErrInvalid, "migrate: --offline needs --persistent (it moves the persistent definition only)")
	case o.postcopy && !o.live:
		return o, errorf(ErrInvalid, "migrate: --postcopy needs --live")
	}
	o.dest = filepath.Clean(o.dest)
	return o, nil
}

// parseTCPURI splits tcp:HOST[:PORT] (HOST may be [v6]); port 0 when none.
func parseTCPURI(uri string) (host string, port int, err error) {
	rest, ok := strings.CutPrefix(uri, "tcp:")
	if !ok {
		return "", 0, errors.New("only tcp:HOST[:PORT] URIs are supported")
	}
	rest = strings.TrimPrefix(rest, "//")
	if h, p, err := net.SplitHostPort(rest); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 65535 {
			return "", 0, fmt.Errorf("bad port %q", p)
		}
		host, port = h, n
	} else {
		host = strings.Trim(rest, "[]")
	}
	if host == "" {
		return "", 0, errors.New("no host")
	}
	return host, port, nil
}

func init() {
	registerCommand(migrateUsage, func(ctx context.Context, d *Driver, dm *dom, args []string) error {
		o, err := parseMigrateArgs(args)
		if err != nil {
			return err
		}
		return d.migrate(ctx, dm, o)
	})
	// The destination's half: internal commands the source writes into
	// DEST/NAME/ctl (docs/migration.md describes the protocol).
	registerCommand("migrate-incoming URI [--postcopy] [--compressed] [--copy-storage=TARGET:BYTES...]", func(ctx context.Context, d *Driver, dm *dom, args []string) error {
		var uri string
		var postcopy, compressed bool
		sizes := map[string]int64{}
		for _, a := range args {
			switch {
			case a == "--postcopy":
				postcopy = true
			case a == "--compressed":
				compressed = true
			case strings.HasPrefix(a, "--copy-storage="):
				// --copy-storage=TARGET:BYTES, one per disk to copy
				t, n, ok := strings.Cut(strings.TrimPrefix(a, "--copy-storage="), ":")
				size, err := strconv.ParseInt(n, 10, 64)
				if !ok || err != nil || size <= 0 {
					return errBadArgs
				}
				sizes[t] = size
			case strings.HasPrefix(a, "-") || uri != "":
				return errBadArgs
			default:
				uri = a
			}
		}
		if uri == "" {
			return errBadArgs
		}
		return d.startIncoming(ctx, dm, uri, postcopy, compressed, sizes)
	})
	registerCommand("migrate-finish", noArgs(func(ctx context.Context, d *Driver, dm *dom) error {
		return d.finishIncoming(ctx, dm)
	}))
	registerCommand("migrate-abort", noArgs(func(ctx context.Context, d *Driver, dm *dom) error {
		return d.abortIncoming(ctx, dm)
	}))
}

// migrationJob is what `NAME/migration` shows: the last or current
// migration of a domain, outgoing or incoming.
type migrationJob struct {
	mu       sync.Mutex
	outgoing bool
	dest     string
	uri      string
	phase    string // qemufs's step: checking, preparing, migrating, finishing, completed, failed
	started  time.Time
	ended    time.Time
	stats    migrateStats
	err      string

	canceled    bool // cancel was written to NAME/migration
	postcopyRan bool // the guest switched to the destination in post-copy

	// phaseTimes records how long each of qemufs's steps took, in order.
	phaseTimes []phaseTime

	// incoming side only
	missingDisks []missingDisk  // disks this host lacks (made for --copy-storage-all)
	createdDisks []string       // images made here, removed when the migration fails
	nbd          string         // tcp:HOST:PORT of the NBD server, for --copy-storage-all
	def          *domain.Domain // the definition the source sent (incoming.xml)
	postcopy     bool
}

type phaseTime struct {
	phase string
	d     time.Duration
}

// enter starts phase, closing the time of the previous one.
func (j *migrationJob) enter(phase string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.closePhase()
	j.phase = phase
}

// closePhase records the time of the current phase. j.mu is held.
func (j *migrationJob) closePhase() {
	var since time.Duration
	for _, p := range j.phaseTimes {
		since += p.d
	}
	if j.phase != "" && !j.started.IsZero() {
		j.phaseTimes = append(j.phaseTimes, phaseTime{j.phase, time.Since(j.started) - since})
	}
}

// migrationJobs holds each domain's migrationJob (by *dom), kept apart from
// the dom struct so that migration owns its state in this file.
var migrationJobs sync.Map

func jobOf(dm *dom) *migrationJob {
	if v, ok := migrationJobs.Load(dm); ok {
		return v.(*migrationJob)
	}
	return nil
}

func (j *migrationJob) set(fn func(j *migrationJob)) {
	j.mu.Lock()
	fn(j)
	j.mu.Unlock()
}

// migrateStats is query-migrate's answer, the parts shown and used.
type migrateStats struct {
	Status           string `json:"status"`
	ErrorDesc        string `json:"error-desc"`
	TotalTime        int64  `json:"total-time"`
	Downtime         int64  `json:"downtime"`
	ExpectedDowntime int64  `json:"expected-downtime"`
	SetupTime        int64  `json:"setup-time"`
	RAM              *struct {
		Transferred    int64   `json:"transferred"`
		Remaining      int64   `json:"remaining"`
		Total          int64   `json:"total"`
		Duplicate      int64   `json:"duplicate"`
		Normal         int64   `json:"normal"`
		NormalBytes    int64   `json:"normal-bytes"`
		DirtySyncCount int64   `json:"dirty-sync-count"`
		Mbps           float64 `json:"mbps"`
		DirtyPagesRate int64   `json:"dirty-pages-rate"`
		PageSize       int64   `json:"page-size"`
	} `json:"ram"`
	XBZRLE *struct {
		Bytes      int64   `json:"bytes"`
		CacheMiss  int64   `json:"cache-miss"`
		Overflow   int64   `json:"overflow"`
		CacheSize  int64   `json:"cache-size"`
		EncodedRat float64 `json:"encoding-rate"`
	} `json:"xbzrle-cache"`
	SocketAddress []struct {
		Type string `json:"type"`
		Host string `json:"host"`
		Port string `json:"port"`
	} `json:"socket-address"`
}

func (r *run) queryMigrateStats(ctx context.Context) (migrateStats, error) {
	var st migrateStats
	err := r.mon.Execute(ctx, "query-migrate", nil, &st)
	return st, err
}

// MigrationInfo renders `NAME/migration`: the progress of the running
// migration or the result of the last one, as virsh domjobinfo shows it.
func (d *Driver) MigrationInfo(name string) ([]byte, error) {
	dm, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	j := jobOf(dm)
	if j == nil {
		return []byte("Job type:         None\n"), nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	var b strings.Builder
	kv := func(k string, format string, args ...any) {
		fmt.Fprintf(&b, "%-26s %s\n", k+":", fmt.Sprintf(format, args...))
	}
	jobType := "Unbounded"
	switch j.phase {
	case "completed":
		jobType = "Completed"
	case "failed":
		jobType = "Failed"
	}
	kv("Job type", "%s", jobType)
	if j.outgoing {
		kv("Operation", "Outgoing migration")
		kv("Destination", "%s", j.dest)
	} else {
		kv("Operation", "Incoming migration")
	}
	if j.uri != "" {
		kv("URI", "%s", j.uri)
	}
	if j.nbd != "" {
		kv("NBD", "%s", j.nbd)
	}
	kv("Phase", "%s", j.phase)
	if j.postcopyRan {
		kv("Post-copy", "yes")
	}
	if !j.started.IsZero() {
		end := j.ended
		if end.IsZero() {
			end = time.Now()
		}
		kv("Time elapsed", "%d ms", end.Sub(j.started).Milliseconds())
	}
	for _, p := range j.phaseTimes {
		kv("Time "+p.phase, "%d ms", p.d.Milliseconds())
	}
	st := j.stats
	if st.Status != "" {
		kv("QEMU status", "%s", st.Status)
	}
	if ram := st.RAM; ram != nil {
		mib := func(n int64) string { return fmt.Sprintf("%.3f MiB", float64(n)/(1<<20)) }
		kv("Data processed", "%s", mib(ram.Transferred))
		kv("Data remaining", "%s", mib(ram.Remaining))
		kv("Data total", "%s", mib(ram.Total))
		kv("Memory processed", "%s", mib(ram.Transferred))
		kv("Memory remaining", "%s", mib(ram.Remaining))
		kv("Memory total", "%s", mib(ram.Total))
		kv("Memory bandwidth", "%.3f MiB/s", ram.Mbps/8*1e6/(1<<20))
		if ram.PageSize > 0 {
			kv("Dirty rate", "%d pages/s", ram.DirtyPagesRate)
			kv("Page size", "%d bytes", ram.PageSize)
		}
		kv("Iteration", "%d", ram.DirtySyncCount)
		kv("Constant pages", "%d", ram.Duplicate)
		kv("Normal pages", "%d", ram.Normal)
		kv("Normal data", "%s", mib(ram.NormalBytes))
	}
	if x := st.XBZRLE; x != nil {
		kv("Compression cache", "%d bytes", x.CacheSize)
		kv("Compressed data", "%d bytes", x.Bytes)
		kv("Compression cache misses", "%d", x.CacheMiss)
		kv("Compression overflows", "%d", x.Overflow)
	}
	if st.ExpectedDowntime > 0 && st.Status != "completed" {
		kv("Expected downtime", "%d ms", st.ExpectedDowntime)
	}
	if st.Status == "completed" {
		kv("Total downtime", "%d ms", st.Downtime)
		kv("Setup time", "%d ms", st.SetupTime)
		if st.TotalTime > 0 {
			kv("QEMU total time", "%d ms", st.TotalTime)
		}
	}
	if j.err != "" {
		kv("Error", "%s", j.err)
	}
	return []byte(b.String()), nil
}

// ---- the source's side ----

// destTree is the destination instance's tree as the source uses it.
type destTree struct {
	dir  string // DEST
	name string
}

func (t destTree) path(elem ...string) string {
	return filepath.Join(append([]string{t.dir, t.name}, elem...)...)
}

// write writes data to DEST/NAME/file; a refusal carries the destination's
// reason (its NAME/error), which is what its instance answered.
func (t destTree) write(file, data string) error {
	err := os.WriteFile(t.path(file), []byte(data), 0o600)
	if err == nil {
		return nil
	}
	if reason := t.lastError(); reason != "" {
		return fmt.Errorf("%s (%w)", reason, unwrapPathError(err))
	}
	return err
}

// refusalKind is the kind of a refusal the destination's tree answered
// a write with, from its errno; def when the errno says nothing more
// (a remote tree's sshfs turns most into EIO or EPERM).
func refusalKind(err, def error) error {
	var e syscall.Errno
	if errors.As(err, &e) {
		switch e {
		case syscall.EINVAL:
			return ErrInvalid
		case syscall.EBUSY:
			return ErrBusy
		case syscall.EEXIST:
			return ErrExist
		case syscall.ENODEV:
			return ErrNoDevice
		}
	}
	return def
}

func (t destTree) lastError() string {
	b, _ := os.ReadFile(t.path("error"))
	return strings.TrimSpace(string(b))
}

func (t destTree) state() (string, error) {
	b, err := os.ReadFile(t.path("state"))
	return strings.TrimSpace(string(b)), err
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// migrate moves domain dm to the instance whose tree is at o.dest. Nothing
// moves before the destination is checked; on any failure the guest keeps
// running here, as it was, and the destination is cleaned.
func (d *Driver) migrate(ctx context.Context, dm *dom, o migrateOptions) (err error) {
	name := dm.name
	fail := func(kind error, format string, args ...any) error {
		return errorf(kind, "migrate %s to %s: %s", name, o.dest, fmt.Sprintf(format, args...))
	}
	dm.op.Lock()
	locked := true
	defer func() {
		if locked {
			dm.op.Unlock()
		}
	}()
	dm.mu.Lock()
	def, defXML, r, state := dm.def, dm.defXML, dm.run, dm.state
	dm.mu.Unlock()
	if o.offline {
		if def == nil {
			return fail(ErrInvalid, "the domain is not defined; an offline migration moves its definition")
		}
	} else {
		if r == nil {
			if def == nil {
				return fail(ErrInvalid, "the domain is not defined")
			}
			return fail(ErrBusy, "the domain is not running; use --offline to move its definition")
		}
		if state != StateRunning && state != StatePaused {
			return fail(ErrBusy, "the domain is %s; only a running or paused guest migrates", state)
		}
		if j := jobOf(dm); j != nil {
			j.mu.Lock()
			busy := j.phase != "completed" && j.phase != "failed"
			j.mu.Unlock()
			if busy {
				return fail(ErrBusy, "a migration of this domain is already under way")
			}
		}
	}
	var guest *domain.Domain
	if o.offline {
		guest = def
	} else {
		guest = r.def()
	}
	job := &migrationJob{outgoing: true, dest: o.dest, phase: "checking", started: time.Now()}
	if !o.offline {
		migrationJobs.Store(dm, job)
	}
	defer func() {
		job.set(func(j *migrationJob) {
			j.closePhase()
			j.ended = time.Now()
			if err != nil {
				j.phase, j.err = "failed", err.Error()
			} else {
				j.phase = "completed"
			}
		})
	}()

	// 1. The destination: a qemufs tree other than ours (before anything
	// is written there), that can run this guest. The second check only
	// reads the destination's files: it runs while the destination
	// prepares (3), together with the setup of this QEMU's migration, and
	// the migration waits for both before anything moves; a failed check
	// undoes the preparation.
	if err := d.checkDestTree(o.dest); err != nil {
		return fail(Kind(err), "%v", err)
	}
	t := destTree{dir: o.dest, name: name}
	ready := make(chan error, 1)
	go func() {
		if err := d.checkDestHost(o.dest, guest); err != nil {
			ready <- fail(Kind(err), "%v", err)
			return
		}
		if !o.offline {
			if err := r.setMigrationParams(ctx, o); err != nil {
				ready <- fail(ErrIO, "setting up this QEMU's migration: %v", err)
				return
			}
		}
		ready <- nil
	}()
	readyErr, waited := error(nil), false
	waitReady := func() error {
		if !waited {
			readyErr, waited = <-ready, true
		}
		return readyErr
	}
	split := false // a post-copy failure: the guest cannot continue here
	defer func() {
		if err != nil && !o.offline && !split {
			waitReady()
			r.resetMigrationParams()
		}
	}()
	// refuse is a failure before anything moved: the check's reason comes
	// first (a destination that cannot run the guest may refuse it for
	// that very reason, in less precise words).
	refuse := func(kind error, format string, args ...any) error {
		if err := waitReady(); err != nil {
			return err
		}
		return fail(kind, format, args...)
	}
	if o.offline {
		if err := waitReady(); err != nil {
			return err
		}
	}

	// 2. The domain's directory there.
	created := false
	switch err := os.Mkdir(t.path(), 0o755); {
	case err == nil:
		created = true
	case errors.Is(err, os.ErrExist):
		st, err := t.state()
		if err != nil {
			return refuse(ErrIO, "reading the destination's %s/state: %v", name, err)
		}
		if !strings.HasPrefix(st, string(StateUndefined)) && !strings.HasPrefix(st, string(StateShutoff)) {
			return refuse(ErrBusy, "the domain is %s at the destination", st)
		}
	default:
		return refuse(ErrIO, "creating the domain at the destination: %v", err)
	}
	cleanDest := func() {
		if created {
			os.Remove(t.path())
		}
	}

	if o.offline {
		if err := t.write("config.xml", string(defXML)); err != nil {
			cleanDest()
			return fail(ErrInvalid, "the destination refused the definition: %v", err)
		}
		d.appendLog(d.runFiles(name).Log, "definition migrated (offline) to %s", o.dest)
		if o.undefineSource {
			dm.op.Unlock()
			locked = false
			return d.undefineMigrated(dm)
		}
		return nil
	}

	// 3. The destination prepares: it checks the definition (disks
	// reachable from there, its emulator, machine) and starts QEMU waiting.
	job.enter("preparing")
	xml := r.savedXML()
	if err := t.write("incoming.xml", string(xml)); err != nil {
		cleanDest()
		return refuse(refusalKind(err, ErrInvalid), "the destination refused the guest: %v", err)
	}
	listen := "tcp:0.0.0.0:0"
	if o.uri != "" {
		host, port, _ := parseTCPURI(o.uri)
		listen = "tcp:" + net.JoinHostPort(host, strconv.Itoa(port))
	}
	line := "migrate-incoming " + listen
	if o.postcopy {
		line += " --postcopy"
	}
	if o.compressed {
		line += " --compressed"
	}
	if o.copyStorage {
		words, err := r.copySizes(ctx)
		if err != nil {
			cleanDest()
			return refuse(ErrIO, "%v", err)
		}
		line += " " + strings.Join(words, " ")
	}
	if err := t.write("ctl", line+"\n"); err != nil {
		cleanDest()
		return refuse(refusalKind(err, ErrIO), "the destination refused the guest: %v", err)
	}
	abortDest := func() {
		if err := t.write("ctl", "migrate-abort\n"); err != nil {
			d.appendLog(r.files.Log, "migration: cleaning the destination: %v", err)
		}
		cleanDest()
	}
	uri, err := t.incomingURI(o.uri)
	if err != nil {
		abortDest()
		return refuse(ErrIO, "%v", err)
	}
	if err := waitReady(); err != nil {
		abortDest()
		return err
	}
	var mirrors []mirror
	if o.copyStorage {
		job.enter("copying storage")
		host, _, _ := parseTCPURI(uri)
		if mirrors, err = d.startMirrors(ctx, r, t, host); err != nil {
			abortDest()
			d.appendLog(r.files.Log, "migration failed copying the disks: %v", err)
			return fail(ErrIO, "%v; the guest keeps running here", err)
		}
	}
	fault.PointPid("migrate.prepared", r.proc.Pid)
	job.enter("migrating")
	job.set(func(j *migrationJob) { j.uri = uri })
	d.appendLog(r.files.Log, "migrating to %s over %s", o.dest, uri)

	// 4. QEMU sends the guest.
	wasRunning := state == StateRunning
	sendErr := d.sendGuest(ctx, r, t, job, uri, o, wasRunning)
	if sendErr == nil && len(mirrors) > 0 {
		// The guest is paused and every copy in step: end the mirrors,
		// which leaves the destination's disks complete.
		sendErr = r.cancelMirrors(mirrors, false)
		mirrors = nil
	}
	if sendErr != nil && len(mirrors) > 0 {
		r.cancelMirrors(mirrors, true)
	}
	var pce *postcopyError
	if errors.As(sendErr, &pce) {
		// Neither end has the whole guest: libvirt leaves it paused
		// ("post-copy failed") for the user to destroy.
		split = true
		dm.setState(StatePaused, ReasonPostcopyFailed)
		d.appendLog(r.files.Log, "post-copy migration failed: %v", pce.err)
		return fail(ErrIO, "%v; the guest's memory is split between both ends and it cannot continue at either: destroy it (here and at the destination)", pce.err)
	}
	if sendErr != nil {
		d.recoverSource(r, wasRunning)
		abortDest()
		d.appendLog(r.files.Log, "migration failed: %v", sendErr)
		return fail(Kind(sendErr), "%v; the guest keeps running here", sendErr)
	}

	// 5. The destination runs the guest; this QEMU ends.
	fault.PointPid("migrate.sent", r.proc.Pid)
	job.enter("finishing")
	if err := t.write("ctl", "migrate-finish\n"); err != nil {
		if job.postcopyRan {
			split = true
			dm.setState(StatePaused, ReasonPostcopyFailed)
			return fail(ErrIO, "the destination could not complete the post-copy migration: %v; the guest's memory is split between both ends and it cannot continue at either: destroy it", err)
		}
		d.recoverSource(r, wasRunning)
		abortDest()
		d.appendLog(r.files.Log, "migration failed at the destination's finish: %v", err)
		return fail(ErrIO, "the destination could not run the guest: %v; the guest keeps running here", err)
	}
	d.appendLog(r.files.Log, "migrated to %s", o.dest)
	job.enter("ending")
	r.kill(ReasonMigrated)
	<-r.done
	var defErr error
	if o.persistent {
		x := defXML
		if x == nil {
			x = xml
		}
		if err := t.write("config.xml", string(x)); err != nil {
			defErr = fail(ErrIO, "the guest runs at the destination, but defining it there failed: %v", err)
		}
	}
	if o.undefineSource && defErr == nil && def != nil {
		dm.op.Unlock()
		locked = false
		return d.undefineMigrated(dm)
	}
	return defErr
}

// undefineMigrated removes the source's definition (--undefinesource).
func (d *Driver) undefineMigrated(dm *dom) error {
	if err := d.undefine(dm, false); err != nil {
		return fmt.Errorf("migrate %s: migrated, but undefining the source failed: %w", dm.name, err)
	}
	return nil
}

// incomingURI reads the address the destination's QEMU listens on from its
// NAME/migration; asked is the --uri of the migration ("" when none).
func (t destTree) incomingURI(asked string) (string, error) {
	b, err := os.ReadFile(t.path("migration"))
	if err != nil {
		return "", fmt.Errorf("reading the destination's %s/migration: %w", t.name, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.TrimSpace(k) == "URI" {
			uri := strings.TrimSpace(v)
			if asked != "" {
				// Keep the host the user named (a name the destination
				// need not know), with the port QEMU got there.
				h, _, _ := parseTCPURI(asked)
				_, p, err := parseTCPURI(uri)
				if err != nil {
					return "", fmt.Errorf("the destination's URI %q: %w", uri, err)
				}
				return "tcp:" + net.JoinHostPort(h, strconv.Itoa(p)), nil
			}
			return uri, nil
		}
	}
	return "", fmt.Errorf("the destination's %s/migration names no URI: %q", t.name, b)
}

// unlimitedBandwidth is max-bandwidth without --bandwidth: no limit, as
// libvirt sets (QEMU 7.2's own default is 128 MiB/s).
const unlimitedBandwidth = int64(1) << 50

// setMigrationCaps sets the migration capabilities both ends of a
// migration agree on: XBZRLE, post-copy, and the MIGRATION events each
// end waits on instead of polling.
func (r *run) setMigrationCaps(ctx context.Context, compressed, postcopy bool) error {
	caps := []map[string]any{
		{"capability": "xbzrle", "state": compressed},
		{"capability": "postcopy-ram", "state": postcopy},
		{"capability": "events", "state": true},
	}
	if err := r.mon.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil); err != nil {
		return fmt.Errorf("migrate-set-capabilities: %w", err)
	}
	return nil
}

// setMigrationParams sets this QEMU's migration capabilities and
// parameters for o: those of setMigrationCaps, and max-bandwidth.
func (r *run) setMigrationParams(ctx context.Context, o migrateOptions) error {
	if err := r.setMigrationCaps(ctx, o.compressed, o.postcopy); err != nil {
		return err
	}
	params := map[string]any{"max-bandwidth": unlimitedBandwidth}
	if o.bandwidth > 0 {
		params["max-bandwidth"] = o.bandwidth << 20
	}
	if err := r.mon.Execute(ctx, "migrate-set-parameters", params, nil); err != nil {
		return fmt.Errorf("migrate-set-parameters: %w", err)
	}
	return nil
}

// resetMigrationParams turns off the capabilities a failed migration set
// on the QEMU that keeps the guest: a later save (QEMU's migration to a
// file) would otherwise carry them, and an image saved with post-copy
// advised cannot be restored where post-copy is off. (max-bandwidth need
// not be: save sets its own.)
func (r *run) resetMigrationParams() {
	select {
	case <-r.proc.Done():
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.setMigrationCaps(ctx, false, false); err != nil {
		r.d.appendLog(r.files.Log, "migration: resetting the capabilities after the failure: %v", err)
	}
}

// sendGuest runs QEMU's migration to uri and waits until it completed.
// It looks at query-migrate on each MIGRATION and MIGRATION_PASS event of
// QEMU's, and every migrateProgress for the progress shown in
// NAME/migration and the checks that no event marks (a stalled stream, a
// destination gone).
func (d *Driver) sendGuest(ctx context.Context, r *run, t destTree, job *migrationJob, uri string, o migrateOptions, wasRunning bool) error {
	r.mu.Lock()
	r.pauseReason = ReasonMigrating // QEMU's STOP at the end (or ours, below)
	r.mu.Unlock()
	if wasRunning && !o.live {
		// Without --live the guest is paused for the whole migration.
		if err := r.qmp.Stop(); err != nil {
			return errorf(ErrIO, "stop: %w", err)
		}
		r.dm.transition(StateRunning, StatePaused, ReasonMigrating, EventPaused)
	}
	if err := r.mon.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil); err != nil {
		return errorf(ErrIO, "migrate: %w", err)
	}
	cancel := func() {
		c, stop := context.WithTimeout(context.Background(), 10*time.Second)
		defer stop()
		r.mon.Execute(c, "migrate_cancel", nil, nil)
		for c.Err() == nil {
			st, err := r.queryMigrateStats(c)
			if err != nil || st.Status == "cancelled" || st.Status == "failed" || st.Status == "completed" || st.Status == "none" {
				return
			}
			select {
			case <-r.migWake:
			case <-time.After(50 * time.Millisecond):
			case <-c.Done():
			}
		}
	}
	tick := time.NewTicker(migrateProgress)
	defer tick.Stop()
	last, lastMove, lastDest := int64(-1), time.Now(), time.Now()
	postcopyStarted, postcopyRunning := false, false
	for {
		select {
		case <-r.proc.Done():
			return errorf(ErrIO, "QEMU ended during the migration (%s)", r.proc.Exit())
		case <-ctx.Done():
			cancel()
			return errorf(ErrInterrupted, "interrupted; the migration was cancelled")
		case <-r.migWake:
		case <-tick.C:
		}
		st, err := r.queryMigrateStats(ctx)
		if err != nil {
			cancel()
			return errorf(ErrIO, "query-migrate: %w", err)
		}
		job.set(func(j *migrationJob) { j.stats = st })
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			job.mu.Lock()
			canceled := job.canceled
			job.mu.Unlock()
			if canceled {
				return errorf(ErrIO, "cancelled (cancel written to migration)")
			}
			if postcopyStarted {
				return &postcopyError{fmt.Errorf("QEMU's migration %s in post-copy: %s", st.Status, st.ErrorDesc)}
			}
			return errorf(ErrIO, "QEMU's migration %s: %s", st.Status, st.ErrorDesc)
		}
		if st.Status == "postcopy-active" && !postcopyRunning {
			// The source's CPUs stopped for good: the guest is to run at
			// the destination now, fetching what it lacks from here.
			r.dm.setState(StatePaused, ReasonPostcopy)
			if err := t.write("ctl", "migrate-finish\n"); err != nil {
				return &postcopyError{fmt.Errorf("the destination could not run the guest in post-copy: %v", err)}
			}
			postcopyRunning = true
			job.set(func(j *migrationJob) { j.postcopyRan = true })
		}
		moved := int64(0)
		if st.RAM != nil {
			moved = st.RAM.Transferred
		}
		if moved != last {
			last, lastMove = moved, time.Now()
		} else if time.Since(lastMove) > migrateStallTimeout {
			if postcopyStarted {
				return &postcopyError{fmt.Errorf("no data reached the destination for %s in post-copy", migrateStallTimeout)}
			}
			cancel()
			return errorf(ErrIO, "no data reached the destination for %s (%d bytes sent, QEMU status %s): the network to %s seems cut", migrateStallTimeout, moved, st.Status, uri)
		}
		if time.Since(lastDest) > migrateDestCheck {
			lastDest = time.Now()
			s, err := t.state()
			if postcopyRunning && err == nil && s == string(StateRunning)+" ("+ReasonPostcopy+")" {
				// as it should be
			} else if err != nil || !strings.HasPrefix(s, string(StatePaused)) {
				if postcopyStarted {
					return &postcopyError{fmt.Errorf("the destination's guest is %s in post-copy", s)}
				}
				cancel()
				if err != nil {
					return errorf(ErrIO, "the destination's %s/state: %v", t.name, err)
				}
				why := t.lastError()
				if why == "" {
					why = "no reason given"
				}
				return errorf(ErrIO, "the destination's guest is %s (%s)", s, why)
			}
		}
		if o.postcopy && !postcopyStarted && st.Status == "active" && st.RAM != nil && st.RAM.DirtySyncCount >= 2 {
			// One full pass is done: switch to post-copy so that the
			// migration ends however fast the guest dirties memory.
			if err := r.mon.Execute(ctx, "migrate-start-postcopy", nil, nil); err != nil {
				cancel()
				return errorf(ErrIO, "migrate-start-postcopy: %w", err)
			}
			postcopyStarted = true
		}
	}
}

// postcopyError is a failure after post-copy began: the guest's memory is
// split between both ends, so it cannot run again at the source.
type postcopyError struct{ err error }

func (e *postcopyError) Error() string { return e.err.Error() }
func (e *postcopyError) Unwrap() error { return errorf(ErrIO, "%v", e.err) }

// ReasonPostcopyFailed is the state reason of a guest whose post-copy
// migration failed, at the source (libvirt's "post-copy failed").
const ReasonPostcopyFailed = "post-copy failed"

// MigrationControl runs a command written to NAME/migration: "cancel"
// stops the domain's outgoing migration (virsh domjobabort). It is a file
// of its own, not a ctl command, because the kernel serialises writes to
// one file: a cancel written to ctl would wait for the migrate it cancels.
func (d *Driver) MigrationControl(ctx context.Context, name, line string) (err error) {
	dm, err := d.lookup(name)
	if err != nil {
		return err
	}
	defer func() { dm.noteResult(err) }()
	if cmd := strings.TrimSpace(line); cmd != "cancel" {
		return errorf(ErrInvalid, "%s/migration: unknown command %q; the one command is cancel", name, cmd)
	}
	return d.cancelMigration(ctx, dm)
}

// cancelMigration stops the domain's outgoing migration. It does not take
// the domain's lock, which the migration holds: it asks QEMU to cancel,
// and the migration then fails, resumes the guest here and cleans the
// destination as for any failure.
func (d *Driver) cancelMigration(ctx context.Context, dm *dom) error {
	j := jobOf(dm)
	dm.mu.Lock()
	r := dm.run
	dm.mu.Unlock()
	if j == nil || !j.outgoing || r == nil {
		return errorf(ErrInvalid, "migrate-cancel %s: no outgoing migration", dm.name)
	}
	j.mu.Lock()
	phase := j.phase
	j.mu.Unlock()
	if phase != "migrating" {
		return errorf(ErrBusy, "migrate-cancel %s: the migration is %s, not migrating", dm.name, phase)
	}
	j.set(func(j *migrationJob) { j.canceled = true })
	if err := r.mon.Execute(ctx, "migrate_cancel", nil, nil); err != nil {
		return errorf(ErrIO, "migrate-cancel %s: %w", dm.name, err)
	}
	return nil
}

// recoverSource makes a guest whose migration failed run here again, as it
// did before (a paused guest stays paused).
func (d *Driver) recoverSource(r *run, wasRunning bool) {
	dm := r.dm
	if !wasRunning {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	if err := r.mon.Execute(ctx, "query-status", nil, &st); err != nil {
		d.appendLog(r.files.Log, "migration: query-status after the failure: %v", err)
		return
	}
	r.mu.Lock()
	r.pauseReason = ""
	r.mu.Unlock()
	if !st.Running {
		dm.setState(StateRunning, ReasonMigrationCanceled)
		if err := r.mon.Execute(ctx, "cont", nil, nil); err != nil {
			dm.setState(StatePaused, ReasonMigrating)
			d.appendLog(r.files.Log, "migration: resuming after the failure: %v", err)
			return
		}
	} else {
		dm.setState(StateRunning, ReasonMigrationCanceled)
	}
	dm.publish(EventResumed, ReasonMigrationCanceled)
	r.saveStatus()
}

// ---- the destination's side ----

// PrepareIncoming is the first step of an incoming migration: the source
// writes the guest's migratable definition to NAME/incoming.xml. It is
// checked here, against this host: the definition itself, its emulator and
// machine, and that every file it uses (disks, kernel, firmware) is
// reachable from this instance, since the storage is shared.
func (d *Driver) PrepareIncoming(name string, xml []byte) (err error) {
	dm, err := d.lookup(name)
	if err != nil {
		return err
	}
	dm.op.Lock()
	defer dm.op.Unlock()
	defer func() { dm.noteResult(err) }()
	fail := func(kind error, format string, args ...any) error {
		return errorf(kind, "incoming migration of %s: %s", name, fmt.Sprintf(format, args...))
	}
	def, err := domain.Parse(xml)
	if err != nil {
		return fail(ErrInvalid, "%v", err)
	}
	if def.Name() != name {
		return fail(ErrInvalid, "the definition is of domain %q", def.Name())
	}
	dm.mu.Lock()
	cur, active := dm.def, dm.run != nil
	dm.mu.Unlock()
	if active {
		return fail(ErrBusy, "the domain is already running here")
	}
	if cur != nil && !strings.EqualFold(cur.UUID(), def.UUID()) {
		return fail(ErrExist, "a different domain %q (UUID %s) is defined here; the incoming guest has UUID %s", name, cur.UUID(), def.UUID())
	}
	if other := d.uuidOwner(def.UUID(), name); other != "" {
		return fail(ErrExist, "UUID %s is already used here by domain %q", def.UUID(), other)
	}
	if err := def.Validate(d.caps); err != nil {
		return fail(ErrInvalid, "%v", err)
	}
	missing, err := checkReachable(def)
	if err != nil {
		return fail(ErrInvalid, "%v", err)
	}
	migrationJobs.Store(dm, &migrationJob{def: def, phase: "prepared", started: time.Now(), missingDisks: missing})
	return nil
}

// checkReachable stats every host file the guest's state depends on: a
// live migration with shared storage needs them at the same paths here.
// Writable file disks that are missing are returned, not refused: a
// migration with --copy-storage-all makes them (migrate-incoming refuses
// them otherwise, with the reason in missingDisk.err).
func checkReachable(def *domain.Domain) ([]missingDisk, error) {
	type file struct{ path, what string }
	var files []file
	var missing []missingDisk
	for _, dk := range def.Disks() {
		if (dk.Type == "file" || dk.Type == "block" || dk.Type == "") && strings.HasPrefix(dk.Source, "/") {
			if _, err := os.Stat(dk.Source); err != nil && dk.Type != "block" && !dk.ReadOnly && dk.Device == "disk" {
				missing = append(missing, missingDisk{target: dk.Target, path: dk.Source, format: dk.Format,
					err: fmt.Errorf("disk %s %s is not reachable from the destination (%v); migrate with shared storage at the same path, or --copy-storage-all", dk.Target, dk.Source, unwrapPathError(err))})
				continue
			}
			files = append(files, file{dk.Source, "disk " + dk.Target})
		}
	}
	for _, f := range []file{{def.Kernel(), "kernel"}, {def.Initrd(), "initrd"}, {def.DTB(), "dtb"}} {
		if f.path != "" {
			files = append(files, f)
		}
	}
	if p, _ := def.Loader(); p != "" {
		files = append(files, file{p, "loader"})
	}
	for _, f := range files {
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("%s %s is not reachable from the destination (%v); migrate with shared storage at the same path", f.what, f.path, unwrapPathError(err))
		}
	}
	return missing, nil
}

// startIncoming starts QEMU for the prepared incoming guest, waiting for
// the source's stream on uri (tcp:HOST:PORT, port 0 for any); the port QEMU
// got shows in NAME/migration.
func (d *Driver) startIncoming(ctx context.Context, dm *dom, uri string, postcopy, compressed bool, copySizes map[string]int64) error {
	ctx = context.WithoutCancel(ctx)
	if _, _, err := parseTCPURI(uri); err != nil {
		return errorf(ErrInvalid, "migrate-incoming %s: %q: %v", dm.name, uri, err)
	}
	dm.op.Lock()
	defer dm.op.Unlock()
	j := jobOf(dm)
	if j == nil || j.outgoing || j.def == nil || j.phase != "prepared" {
		return errorf(ErrInvalid, "migrate-incoming %s: no prepared incoming migration (write the definition to incoming.xml first)", dm.name)
	}
	dm.mu.Lock()
	active := dm.run != nil
	dm.mu.Unlock()
	if active {
		return errorf(ErrBusy, "migrate-incoming %s: the domain is already running", dm.name)
	}
	if postcopy {
		// Refused before QEMU starts or any disk is made: QEMU would
		// refuse only once it runs, with a reason that says less.
		if err := checkUserfaultfd(userfaultfdSysctl, d.qemuHasPtrace(j.def)); err != nil {
			return errorf(ErrInvalid, "migrate-incoming %s: %v", dm.name, err)
		}
	}
	j.set(func(j *migrationJob) { j.postcopy = postcopy })
	j.enter("starting")
	// Disks this host lacks: made empty here for the source to copy into,
	// or the reason the migration is refused.
	for _, m := range j.missingDisks {
		size, ok := copySizes[m.target]
		if !ok {
			return errorf(ErrInvalid, "migrate-incoming %s: %v", dm.name, m.err)
		}
		if err := createDiskImage(ctx, m, size); err != nil {
			d.removeCreatedDisks(j)
			return errorf(ErrIO, "migrate-incoming %s: %v", dm.name, err)
		}
		j.set(func(j *migrationJob) { j.createdDisks = append(j.createdDisks, m.path) })
	}
	in := &incomingMigration{listen: uri, job: j, postcopy: postcopy, compressed: compressed, copyStorage: len(copySizes) > 0}
	if err := d.start(ctx, dm, j.def, StartOptions{Paused: true, migrating: in}); err != nil {
		d.removeCreatedDisks(j)
		dm.mu.Lock()
		if dm.run == nil {
			if dm.def == nil {
				dm.state, dm.reason = StateUndefined, ReasonUnknown
			} else {
				dm.state, dm.reason = StateShutoff, ReasonFailed
			}
		}
		dm.mu.Unlock()
		j.set(func(j *migrationJob) { j.phase, j.err = "failed", err.Error() })
		return err
	}
	dm.mu.Lock()
	r := dm.run
	dm.mu.Unlock()
	// The status file now records the waiting migration (where it
	// listens, the NBD exports, the disks made), for a restarted daemon.
	if r == nil {
		return nil // it ended at once; supervision has said why
	}
	if err := r.saveStatus(); err != nil {
		d.logf("%s: status: %v", dm.name, err)
	}
	d.boundIncoming(dm, r, j)
	return nil
}

// incomingMigration is an incoming migration that a start makes QEMU
// wait for instead of booting the guest (StartOptions.migrating).
type incomingMigration struct {
	listen      string // tcp:HOST:PORT for migrate-incoming
	job         *migrationJob
	postcopy    bool
	compressed  bool
	copyStorage bool // serve the disks over NBD for the source to mirror into
}

// listenIncoming (called by start for an incoming migration) has QEMU,
// started with -incoming defer, listen for the migration stream.
func (d *Driver) listenIncoming(ctx context.Context, r *run, in *incomingMigration) error {
	name := r.dm.name
	if err := r.setMigrationCaps(ctx, in.compressed, in.postcopy); err != nil {
		return errorf(ErrIO, "migrate-incoming %s: %w%s", name, err, logTail(r.files.Log))
	}
	if err := r.mon.Execute(ctx, "migrate-incoming", map[string]any{"uri": in.listen}, nil); err != nil {
		return errorf(ErrIO, "migrate-incoming %s: %w%s", name, err, logTail(r.files.Log))
	}
	st, err := r.queryMigrateStats(ctx)
	if err != nil {
		return errorf(ErrIO, "migrate-incoming %s: query-migrate: %w", name, err)
	}
	host, _, _ := parseTCPURI(in.listen)
	port := ""
	for _, a := range st.SocketAddress {
		if a.Type == "inet" {
			port = a.Port
			if host == "0.0.0.0" || host == "::" {
				host = a.Host
			}
			break
		}
	}
	if port == "" {
		return errorf(ErrIO, "migrate-incoming %s: QEMU names no listening address (query-migrate: %+v)", name, st)
	}
	if host == "0.0.0.0" || host == "::" || host == "" {
		host = hostAddress()
	}
	in.job.set(func(j *migrationJob) {
		j.uri = "tcp:" + net.JoinHostPort(host, port)
		j.closePhase()
		j.phase = "listening"
		j.stats = st
	})
	d.appendLog(r.files.Log, "incoming migration: listening on %s", in.job.uri)
	if in.copyStorage {
		if err := d.startNBD(ctx, r, in.job, host); err != nil {
			return errorf(ErrIO, "migrate-incoming %s: %v", name, err)
		}
	}
	return nil
}

// hostAddress is the address a source reaches this host at when the
// migration named none: the first global address of an interface that is
// up, loopback when there is none.
func hostAddress() string {
	ifs, _ := net.Interfaces()
	for _, v6 := range []bool{false, true} {
		for _, ifc := range ifs {
			if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
				continue
			}
			addrs, _ := ifc.Addrs()
			for _, a := range addrs {
				ipn, ok := a.(*net.IPNet)
				if !ok || !ipn.IP.IsGlobalUnicast() || (ipn.IP.To4() == nil) != v6 {
					continue
				}
				return ipn.IP.String()
			}
		}
	}
	return "127.0.0.1"
}

// finishIncoming runs the guest once the source says its state is sent:
// QEMU must have loaded it all ("completed"), then the CPUs run.
func (d *Driver) finishIncoming(ctx context.Context, dm *dom) (err error) {
	ctx = context.WithoutCancel(ctx)
	dm.op.Lock()
	defer dm.op.Unlock()
	j := jobOf(dm)
	r, rerr := dm.activeRun("migrate-finish")
	if j == nil || j.outgoing || rerr != nil {
		return errorf(ErrInvalid, "migrate-finish %s: no incoming migration running", dm.name)
	}
	dm.mu.Lock()
	inPostcopy := dm.state == StateRunning && dm.reason == ReasonPostcopy
	dm.mu.Unlock()
	switchedToPostcopy := false
	j.enter("finishing")
	defer func() {
		j.set(func(j *migrationJob) {
			j.closePhase()
			switch {
			case err != nil:
				j.ended = time.Now()
				j.phase, j.err = "failed", err.Error()
			case switchedToPostcopy:
				j.phase = "post-copy"
			default:
				j.ended = time.Now()
				j.phase = "completed"
			}
		})
	}()
	deadline := time.Now().Add(incomingFinishTimeout)
	if inPostcopy {
		deadline = time.Now().Add(loadTimeout) // the rest of memory still comes
	}
	for {
		st, err := r.queryMigrateStats(ctx)
		if err != nil {
			return errorf(ErrIO, "migrate-finish %s: query-migrate: %w", dm.name, err)
		}
		j.set(func(j *migrationJob) { j.stats = st })
		if st.Status == "completed" {
			break
		}
		if st.Status == "postcopy-active" && !inPostcopy && j.postcopy {
			// Post-copy: the guest runs here from now on, and pages it
			// lacks come from the source on demand.
			dm.setState(StateRunning, ReasonPostcopy)
			if err := r.mon.Execute(ctx, "cont", nil, nil); err != nil {
				dm.setState(StatePaused, ReasonMigrating)
				return errorf(ErrIO, "migrate-finish %s: cont in post-copy: %w", dm.name, err)
			}
			dm.publish(EventResumed, ReasonPostcopy)
			r.saveStatus()
			switchedToPostcopy = true
			return nil
		}
		if st.Status == "failed" || st.Status == "cancelled" {
			return errorf(ErrIO, "migrate-finish %s: the incoming migration %s: %s", dm.name, st.Status, st.ErrorDesc)
		}
		if time.Now().After(deadline) {
			return errorf(ErrIO, "migrate-finish %s: the incoming migration is still %q after %s", dm.name, st.Status, incomingFinishTimeout)
		}
		select {
		case <-r.proc.Done():
			return errorf(ErrIO, "migrate-finish %s: QEMU ended (%s)%s", dm.name, r.proc.Exit(), logTail(r.files.Log))
		case <-r.migWake: // QEMU's MIGRATION event: the status changed
		case <-time.After(incomingFinishPoll):
		}
	}
	if inPostcopy {
		dm.setState(StateRunning, ReasonMigrated)
		r.saveStatus()
		d.appendLog(r.files.Log, "incoming post-copy migration completed")
		return nil
	}
	if err := r.stopNBD(ctx, j); err != nil {
		return errorf(ErrIO, "migrate-finish %s: %v", dm.name, err)
	}
	dm.setState(StateRunning, ReasonMigrated)
	if err := r.mon.Execute(ctx, "cont", nil, nil); err != nil {
		dm.setState(StatePaused, ReasonMigrating)
		return errorf(ErrIO, "migrate-finish %s: cont: %w", dm.name, err)
	}
	dm.publish(EventResumed, ReasonMigrated)
	r.saveStatus()
	d.appendLog(r.files.Log, "incoming migration completed; the guest runs here")
	return nil
}

// abortIncoming ends the QEMU of an incoming migration that failed (the
// source keeps the guest); the domain is left as it was before.
func (d *Driver) abortIncoming(ctx context.Context, dm *dom) error {
	dm.op.Lock()
	defer dm.op.Unlock()
	j := jobOf(dm)
	if j == nil || j.outgoing {
		return errorf(ErrInvalid, "migrate-abort %s: no incoming migration", dm.name)
	}
	return d.endIncoming(dm, j, "aborted by the source")
}

// endIncoming ends the QEMU of incoming migration j, which failed for
// why, removes the disks it made and leaves the domain as it was before:
// an empty slot, or the persistent definition shut off. dm.op is held.
func (d *Driver) endIncoming(dm *dom, j *migrationJob, why string) error {
	j.set(func(j *migrationJob) {
		if j.phase != "failed" {
			j.phase, j.err = "failed", why
		}
		j.ended = time.Now()
	})
	dm.mu.Lock()
	r := dm.run
	dm.mu.Unlock()
	if r != nil {
		r.kill(ReasonFailed)
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			return errorf(ErrIO, "migrate-abort %s: QEMU did not end", dm.name)
		}
	}
	d.removeCreatedDisks(j)
	dm.mu.Lock()
	if dm.def == nil && dm.run == nil {
		dm.state, dm.reason = StateUndefined, ReasonUnknown
	}
	dm.mu.Unlock()
	return nil
}
