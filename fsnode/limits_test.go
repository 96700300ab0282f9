package fsnode

import (
	"context"
	"strings"
	"syscall"
	"testing"
)

func TestWriteAt(t *testing.T) {
	for _, tc := range []struct {
		name string
		buf  string
		data string
		off  int64
		want string
		ok   bool
	}{
		{"append", "ab", "cd", 2, "abcd", true},
		{"overwrite", "abcd", "X", 1, "aXcd", true},
		{"hole", "a", "b", 3, "a\x00\x00b", true},
		{"up to the limit", "", "x", maxDocument - 1, "", true},
		{"past the limit", "", "xx", maxDocument - 1, "", false},
		{"an offset of a terabyte", "", "x", 1 << 40, "", false},
		{"negative offset", "", "x", -1, "", false},
	} {
		got, ok := writeAt([]byte(tc.buf), []byte(tc.data), tc.off)
		if ok != tc.ok {
			t.Errorf("%s: ok = %v, want %v", tc.name, ok, tc.ok)
			continue
		}
		if ok && tc.want != "" && string(got) != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
		if !ok && string(got) != tc.buf {
			t.Errorf("%s: a refused write changed the buffer", tc.name)
		}
	}
}

// TestXMLHandleTooBig: past maxDocument an XML handle (a definition's or
// a request file's) answers EFBIG, records why once, drops its buffer and
// commits nothing, not even at close; after a truncate it takes a document
// again.
func TestXMLHandleTooBig(t *testing.T) {
	for _, requests := range []bool{false, true} {
		t.Run(map[bool]string{false: "definition", true: "requests"}[requests], func(t *testing.T) { testXMLHandleTooBig(t, requests) })
	}
}

func testXMLHandleTooBig(t *testing.T, requests bool) {
	var defined, refused []string
	h := &xmlHandle{
		requests: requests,
		commit:   func(_ context.Context, b []byte) error { defined = append(defined, string(b)); return nil },
		refuse:   func(msg string) { refused = append(refused, msg) },
	}
	ctx := context.Background()
	chunk := []byte("<domain>" + strings.Repeat(" ", 1<<20))
	var off int64
	var e syscall.Errno
	for i := 0; i < 10 && e == 0; i++ {
		var n uint32
		n, e = h.Write(ctx, chunk, off)
		off += int64(n)
	}
	if e != syscall.EFBIG {
		t.Fatalf("write past %d bytes: errno %v, want EFBIG", maxDocument, e)
	}
	if _, e := h.Write(ctx, []byte("</domain>"), off); e != syscall.EFBIG {
		t.Errorf("next write: %v, want EFBIG", e)
	}
	if e := h.Flush(ctx); e != 0 {
		t.Errorf("flush: %v", e)
	}
	if len(defined) != 0 || len(refused) != 1 || !strings.Contains(refused[0], "larger than") {
		t.Errorf("defined %d documents, refused %q", len(defined), refused)
	}
	if h.buf != nil {
		t.Errorf("buffer of %d bytes kept", len(h.buf))
	}
	h.truncate()
	if _, e := h.Write(ctx, []byte("<domain/>"), 0); e != 0 || len(defined) != 1 {
		t.Errorf("after truncate: %v, defined %q", e, defined)
	}
}
