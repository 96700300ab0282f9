package procmgr

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// procStat is what procmgr needs from /proc/PID/stat.
type procStat struct {
	State     byte   // field 3: R, S, D, Z, ...
	PPid      int    // field 4
	Session   int    // field 6
	StartTime uint64 // field 22: clock ticks after boot; with the pid, a process identity
}

// readStat parses /proc/PID/stat. The command name (field 2) may contain
// spaces and parentheses, so parsing starts after its last ')'.
func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(data)
}

func parseStat(data []byte) (procStat, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed stat %q", data)
	}
	// Fields from 3 on.
	f := bytes.Fields(data[i+1:])
	const startField = 22 - 3
	if len(f) <= startField || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("malformed stat %q", data)
	}
	var s procStat
	var err error
	s.State = f[0][0]
	if s.PPid, err = strconv.Atoi(string(f[4-3])); err != nil {
		return procStat{}, fmt.Errorf("malformed stat ppid: %w", err)
	}
	if s.Session, err = strconv.Atoi(string(f[6-3])); err != nil {
		return procStat{}, fmt.Errorf("malformed stat session: %w", err)
	}
	if s.StartTime, err = strconv.ParseUint(string(f[startField]), 10, 64); err != nil {
		return procStat{}, fmt.Errorf("malformed stat start time: %w", err)
	}
	return s, nil
}
