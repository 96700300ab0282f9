package fsnode

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/qemufs/qemufs/driver"
)

// TestXMLCommitHandle: snapshots/create takes a document once, as soon
// as it is complete (the write gets the error) or at close, and a
// truncation starts over.
func TestXMLCommitHandle(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		writes  []string
		flush   bool
		fail    bool
		commits []string
		errno   syscall.Errno // of the last write, or of the flush
	}{
		{"one write", []string{"<domainsnapshot/>\n"}, true, false, []string{"<domainsnapshot/>\n"}, 0},
		{"in pieces", []string{"<domainsnapshot>", "<name>a</name>", "</domainsnapshot>"}, true, false,
			[]string{"<domainsnapshot><name>a</name></domainsnapshot>"}, 0},
		{"partial at close", []string{"<domainsnapshot><name>a</name>"}, true, false, []string{"<domainsnapshot><name>a</name>"}, 0},
		{"refused on the write", []string{"<domainsnapshot/>"}, false, true, []string{"<domainsnapshot/>"}, syscall.EINVAL},
		{"broken at once", []string{"<a></b>"}, false, true, []string{"<a></b>"}, syscall.EINVAL},
		{"nothing written", nil, true, false, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			h := &xmlHandle{requests: true, commit: func(_ context.Context, b []byte) error {
				got = append(got, string(b))
				if tt.fail {
					return errors.Join(driver.ErrInvalid, errors.New("bad"))
				}
				return nil
			}}
			var e syscall.Errno
			off := int64(0)
			for _, w := range tt.writes {
				_, e = h.Write(ctx, []byte(w), off)
				off += int64(len(w))
			}
			if tt.flush {
				e = h.Flush(ctx)
				if again := h.Flush(ctx); again != 0 || len(got) > len(tt.commits) {
					t.Errorf("a second flush committed again (%v, %d commits)", again, len(got))
				}
			}
			if e != tt.errno {
				t.Errorf("errno %v, want %v", e, tt.errno)
			}
			if len(got) != len(tt.commits) || len(got) > 0 && got[0] != tt.commits[0] {
				t.Errorf("commits %q, want %q", got, tt.commits)
			}
		})
	}
	var got []string
	h := &xmlHandle{requests: true, commit: func(_ context.Context, b []byte) error { got = append(got, string(b)); return nil }}
	h.Write(ctx, []byte("<junk"), 0)
	h.truncate()
	h.Write(ctx, []byte("<domainsnapshot/>"), 0)
	if len(got) != 1 || got[0] != "<domainsnapshot/>" {
		t.Errorf("after a truncation: commits %q", got)
	}
}
