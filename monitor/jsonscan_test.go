package monitor

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestObjIter(t *testing.T) {
	deep := `{"a":` + strings.Repeat("[", maxNesting) + strings.Repeat("]", maxNesting) + `}`
	tooDeep := `{"a":` + strings.Repeat("[", maxNesting+1) + strings.Repeat("]", maxNesting+1) + `}`
	cases := []struct {
		in      string
		want    []string // key=value, raw
		wantErr bool
	}{
		{in: `{}`},
		{in: " \r\n{ \t} "},
		{in: `{"a":1}`, want: []string{`"a"=1`}},
		{in: ` { "a" : 1 , "b":"x" } `, want: []string{`"a"=1`, `"b"="x"`}},
		{in: `{"a":{"b":[1,{"c":"}"}]},"d":null}`, want: []string{`"a"={"b":[1,{"c":"}"}]}`, `"d"=null`}},
		{in: `{"s":"a\"b\\","t":"\\\""}`, want: []string{`"s"="a\"b\\"`, `"t"="\\\""`}},
		{in: `{"n":-1.5e+3,"t":true,"f":false}`, want: []string{`"n"=-1.5e+3`, `"t"=true`, `"f"=false`}},
		{in: `{"k\"":[]}`, want: []string{`"k\""=[]`}},
		{in: deep, want: []string{`"a"=` + deep[5:len(deep)-1]}},
		{in: ``, wantErr: true},
		{in: `[1]`, wantErr: true},
		{in: `"x"`, wantErr: true},
		{in: `{"a"}`, wantErr: true},
		{in: `{"a":}`, wantErr: true},
		{in: `{"a":1,}`, wantErr: true},
		{in: `{"a":1`, wantErr: true},
		{in: `{"a":[1}`, wantErr: true},
		{in: `{"a":{]}`, wantErr: true},
		{in: `{"a":"x`, wantErr: true},
		{in: `{a:1}`, wantErr: true},
		{in: tooDeep, wantErr: true},
	}
	for _, tc := range cases {
		b := []byte(tc.in)
		it := newObjIter(b)
		var got []string
		for m, ok := it.next(); ok; m, ok = it.next() {
			got = append(got, string(b[m.keyStart:m.keyEnd])+"="+string(b[m.valStart:m.valEnd]))
		}
		if tc.wantErr != (it.err != nil) {
			t.Errorf("%.60q: err %v, want error: %v", tc.in, it.err, tc.wantErr)
			continue
		}
		if !tc.wantErr && !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%.60q\n- want: %q\n-  got: %q", tc.in, tc.want, got)
		}
	}
}

func TestKeyAndString(t *testing.T) {
	cases := []struct {
		in, key string
		isKey   bool
		str     string
		isStr   bool
	}{
		{`{"id":"x"}`, "id", true, "x", true},
		{`{"\u0069d":"a\/b\u0041"}`, "id", true, "a/bA", true},
		{`{"idx":1}`, "id", false, "", false},
		{`{"i\"d":[]}`, `i"d`, true, "", false},
	}
	for _, tc := range cases {
		b := []byte(tc.in)
		it := newObjIter(b)
		m, ok := it.next()
		if !ok {
			t.Fatalf("%s: %v", tc.in, it.err)
		}
		if got := m.keyIs(b, tc.key); got != tc.isKey {
			t.Errorf("%s: keyIs(%q) = %v", tc.in, tc.key, got)
		}
		s, ok := m.stringValue(b)
		if ok != tc.isStr || s != tc.str {
			t.Errorf("%s: stringValue = %q, %v", tc.in, s, ok)
		}
	}
}

// FuzzObjIter checks the scanner against encoding/json on every valid JSON
// object: the same members, with the same raw values.
func FuzzObjIter(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":1}`, `{"execute":"x","arguments":{"a":[1,"]"]},"id":{"x":null}}`,
		`{ "a" : "\"}" , "b" : [ ] }`, `{"\u0069d":2}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		type kv struct{ k, v string }
		var want []kv
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		if !json.Valid(b) {
			return
		}
		if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
			return
		}
		for dec.More() {
			k, _ := dec.Token()
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				t.Fatal(err)
			}
			want = append(want, kv{k.(string), string(v)})
		}
		var got []kv
		it := newObjIter(b)
		for m, ok := it.next(); ok; m, ok = it.next() {
			var k string
			if err := json.Unmarshal(b[m.keyStart:m.keyEnd], &k); err != nil {
				t.Fatalf("key %q: %v", b[m.keyStart:m.keyEnd], err)
			}
			got = append(got, kv{k, string(b[m.valStart:m.valEnd])})
		}
		if it.err != nil {
			if bytes.Count(b, []byte("["))+bytes.Count(b, []byte("{")) > maxNesting {
				return // may be too deep
			}
			t.Fatalf("%q: %v", b, it.err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q\n- want: %q\n-  got: %q", b, want, got)
		}
	})
}

// FuzzUserCommand checks the id splice: whatever a user sends, QEMU gets
// one JSON object that is the user's with only the id changed, and the
// user gets the reply back with their id.
func FuzzUserCommand(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { } `, `{"execute":"query-status"}`, `{"execute":"x","id":"u"}`,
		`{"id":{"a":[1,2]},"execute":"x"}`, "{\"execute\":\"x\",\"id\":[1,\n2]}",
		`{"execute":"x","id":1,"id":2}`, `[1]`, `{"a":"\u0069d"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := parseUserCommand(b)
		if err != nil {
			if !errors.Is(err, ErrBadCommand) {
				t.Fatalf("error %v does not wrap ErrBadCommand", err)
			}
			return
		}
		wire := u.wire(nil, 4242)
		if !bytes.HasSuffix(wire, []byte("\n")) || bytes.Count(wire, []byte("\n")) > bytes.Count(b, []byte("\n"))+1 {
			t.Fatalf("wire %q: one trailing newline expected", wire)
		}
		var orig, sent map[string]any
		if err := json.Unmarshal(b, &orig); err != nil {
			t.Fatalf("valid input does not decode: %v", err)
		}
		if err := json.Unmarshal(wire, &sent); err != nil {
			t.Fatalf("wire %q is not JSON: %v", wire, err)
		}
		// With duplicate "id" keys encoding/json keeps the last (QEMU
		// refuses them), so compare only where there can be none.
		simple := bytes.Count(b, []byte(`"id"`)) <= 1 && !bytes.Contains(b, []byte(`\u`))
		if simple && sent["id"] != 4242.0 {
			t.Fatalf("wire %q: id is %v", wire, sent["id"])
		}
		if simple {
			delete(orig, "id")
			delete(sent, "id")
			if !reflect.DeepEqual(orig, sent) {
				t.Fatalf("wire %q changed more than the id of %q", wire, b)
			}
		}
		// A reply to it, in both of QEMU's orders, comes back with the
		// user's id or none.
		for _, line := range []string{`{"return": {}, "id": 4242}`, `{"id": 4242, "error": {"class": "C", "desc": "d"}}`} {
			r, _ := classify([]byte(line))
			out := u.restore(r)
			var got map[string]json.RawMessage
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("restored %q is not JSON: %v", out, err)
			}
			id, has := got["id"]
			if has != u.hasID || (has && !jsonEqual(id, u.id)) {
				t.Fatalf("restored %q for user id %q", out, u.id)
			}
			if bytes.ContainsAny(out, "\r\n") {
				t.Fatalf("restored %q spans lines", out)
			}
		}
	})
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && reflect.DeepEqual(x, y)
}
