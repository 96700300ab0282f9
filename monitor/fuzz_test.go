package monitor

import (
	"encoding/json"
	"testing"
)

// FuzzClassify feeds arbitrary lines from "QEMU": never a panic, and what
// is classified holds together (event data is JSON; a reply from a
// well-formed object loses exactly its id when restored without one).
func FuzzClassify(f *testing.F) {
	for _, s := range []string{
		`{"return": {}, "id": 1}`,
		`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}`,
		`{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "timestamp": {"seconds": 1, "microseconds": 2}}`,
		`{"QMP": {"version": {}, "capabilities": ["oob"]}}`,
		`{"error": {"class": "GenericError", "desc": "no"}}`,
		`{"id": "x", "return": [1, 2, {"a": "}"}]}`,
		`{"return": {}, "id": 3, "id": 4}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		r, ev := classify(line)
		if r != nil && ev != nil {
			t.Fatalf("%q is both a reply and an event", line)
		}
		if ev != nil && ev.Data != nil && json.Valid(line) && !json.Valid(ev.Data) {
			t.Fatalf("event data %q of %q is not JSON", ev.Data, line)
		}
		if r == nil || !r.hasID || !json.Valid(line) {
			return
		}
		r.qemuError()
		u := &userCommand{}
		got := u.restore(r)
		var m map[string]json.RawMessage
		if err := json.Unmarshal(got, &m); err != nil {
			t.Fatalf("reply %q without its id is %q, not JSON: %v", line, got, err)
		}
		if _, has := m["id"]; has && !hasDuplicateKeys(line) {
			t.Fatalf("reply %q without its id still has one: %q", line, got)
		}
	})
}

// hasDuplicateKeys tells whether an object repeats a top-level key, where
// JSON decoders disagree on which one wins.
func hasDuplicateKeys(b []byte) bool {
	seen := map[string]bool{}
	it := newObjIter(b)
	for m, ok := it.next(); ok; m, ok = it.next() {
		var k string
		if json.Unmarshal(b[m.keyStart:m.keyEnd], &k) != nil {
			return true
		}
		if seen[k] {
			return true
		}
		seen[k] = true
	}
	return false
}
