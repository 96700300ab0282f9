package domain

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/beevik/etree"
	"github.com/google/uuid"
)

// unitScale maps libvirt's scaled-integer units to bytes.
var unitScale = map[string]uint64{
	"b": 1, "bytes": 1,
	"kb": 1000, "k": 1024, "kib": 1024,
	"mb": 1000 * 1000, "m": 1 << 20, "mib": 1 << 20,
	"gb": 1000 * 1000 * 1000, "g": 1 << 30, "gib": 1 << 30,
	"tb": 1000 * 1000 * 1000 * 1000, "t": 1 << 40, "tib": 1 << 40,
	"pb": 1000 * 1000 * 1000 * 1000 * 1000, "p": 1 << 50, "pib": 1 << 50,
	"eb": 1000 * 1000 * 1000 * 1000 * 1000 * 1000, "e": 1 << 60, "eib": 1 << 60,
}

// scaled parses a libvirt scaled integer (text of e, unit attribute or
// dfltUnit) into bytes.
func scaled(value, unit, dfltUnit string) (uint64, error) {
	value = strings.TrimSpace(value)
	if unit == "" {
		unit = dfltUnit
	}
	scale, ok := unitScale[strings.ToLower(unit)]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q", unit)
	}
	n, err := strconv.ParseUint(value, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid value %q: expected a non-negative integer", value)
	}
	if n != 0 && scale > math.MaxUint64/n {
		return 0, fmt.Errorf("value %s %s is too large", value, unit)
	}
	return n * scale, nil
}

// memoryKiB parses a memory-like element (text plus unit, default KiB) into
// KiB, rounding up.
func memoryKiB(e *etree.Element) (uint64, error) {
	if e == nil {
		return 0, nil
	}
	b, err := scaled(e.Text(), attr(e, "unit"), "KiB")
	if err != nil {
		return 0, err
	}
	return (b + 1023) / 1024, nil
}

// canonicalUUID accepts the forms libvirt accepts (with or without dashes,
// any case) and returns the dashed lower-case form.
func canonicalUUID(s string) (string, bool) {
	s = strings.TrimSpace(s)
	compact := strings.ReplaceAll(s, "-", "")
	compact = strings.ReplaceAll(compact, " ", "")
	if len(compact) != 32 {
		return "", false
	}
	u, err := uuid.Parse(compact)
	if err != nil {
		return "", false
	}
	return u.String(), true
}
