package monitor

import (
	"encoding/json"
	"errors"
)

// This file holds a small scanner over the top level of a JSON object. It
// finds where each member's key and value lie without decoding the values, so
// that the connection can route a 120 KB reply by its "id", splice its own id
// into a user's command and put the user's id back into the reply, all
// without re-encoding anything.

// maxNesting bounds the depth of a user command. QEMU's parser refuses more
// than 1024 levels, and refuses them in a way (an error per fragment, with no
// id) that cannot be matched to a command, so qemufs refuses far earlier.
const maxNesting = 256

var errSyntax = errors.New("malformed JSON object")

// member is the position of one top-level member of a JSON object: key is the
// raw key including its quotes, and value is the raw value.
type member struct {
	keyStart, keyEnd int
	valStart, valEnd int
}

// objIter walks the members of the JSON object in b.
type objIter struct {
	b       []byte
	i       int
	started bool
	err     error
	done    bool
}

func newObjIter(b []byte) objIter {
	it := objIter{b: b}
	it.i = skipSpace(b, 0)
	if it.i >= len(b) || b[it.i] != '{' {
		it.err = errSyntax
		it.done = true
		return it
	}
	it.i++
	return it
}

// next returns the next member; ok is false at the end of the object or on a
// syntax error, which it.err then holds.
func (it *objIter) next() (m member, ok bool) {
	if it.done {
		return m, false
	}
	b := it.b
	i := skipSpace(b, it.i)
	if !it.started {
		it.started = true
		if i < len(b) && b[i] == '}' { // empty object
			it.done = true
			return m, false
		}
	}
	if i >= len(b) || b[i] != '"' {
		return it.fail()
	}
	m.keyStart = i
	end, ok := skipString(b, i)
	if !ok {
		return it.fail()
	}
	m.keyEnd = end
	i = skipSpace(b, end)
	if i >= len(b) || b[i] != ':' {
		return it.fail()
	}
	i = skipSpace(b, i+1)
	m.valStart = i
	end, ok = skipValue(b, i)
	if !ok {
		return it.fail()
	}
	m.valEnd = end
	i = skipSpace(b, end)
	switch {
	case i < len(b) && b[i] == ',':
		it.i = i + 1
	case i < len(b) && b[i] == '}':
		it.i = i
		it.done = true
	default:
		return it.fail()
	}
	return m, true
}

func (it *objIter) fail() (member, bool) {
	it.err = errSyntax
	it.done = true
	return member{}, false
}

// keyIs reports whether the member's key, unescaped, is name.
func (m member) keyIs(b []byte, name string) bool {
	raw := b[m.keyStart+1 : m.keyEnd-1]
	if !hasByte(raw, '\\') {
		return string(raw) == name
	}
	var s string
	return json.Unmarshal(b[m.keyStart:m.keyEnd], &s) == nil && s == name
}

// stringValue returns the member's value if it is a JSON string.
func (m member) stringValue(b []byte) (string, bool) {
	v := b[m.valStart:m.valEnd]
	if len(v) < 2 || v[0] != '"' {
		return "", false
	}
	if !hasByte(v, '\\') {
		return string(v[1 : len(v)-1]), true
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		return "", false
	}
	return s, true
}

func hasByte(b []byte, c byte) bool {
	for _, x := range b {
		if x == c {
			return true
		}
	}
	return false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\r', '\n':
			i++
		default:
			return i
		}
	}
	return i
}

// skipString returns the index just past the string that starts at b[i].
func skipString(b []byte, i int) (int, bool) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1, true
		}
	}
	return 0, false
}

// skipValue returns the index just past the value that starts at b[i]. It
// checks bracket balance and nesting depth, not full JSON grammar: user
// commands are checked with json.Valid first, and QEMU writes valid JSON.
func skipValue(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		var stack [maxNesting]byte
		depth := 0
		for j := i; j < len(b); j++ {
			switch c := b[j]; c {
			case '"':
				end, ok := skipString(b, j)
				if !ok {
					return 0, false
				}
				j = end - 1
			case '{', '[':
				if depth == maxNesting {
					return 0, false
				}
				stack[depth] = c
				depth++
			case '}', ']':
				if depth == 0 || stack[depth-1] != c-2 { // '{'+2 == '}', '['+2 == ']'
					return 0, false
				}
				depth--
				if depth == 0 {
					return j + 1, true
				}
			}
		}
		return 0, false
	default:
		j := i
		for j < len(b) {
			switch b[j] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				if j == i {
					return 0, false
				}
				return j, true
			}
			j++
		}
		if j == i {
			return 0, false
		}
		return j, true
	}
}
