package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// samples are the durations of repeated runs of one measurement.
type samples []time.Duration

func (s samples) sorted() samples {
	c := append(samples(nil), s...)
	sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
	return c
}

func (s samples) min() time.Duration {
	if len(s) == 0 {
		return 0
	}
	return s.sorted()[0]
}

func (s samples) max() time.Duration {
	if len(s) == 0 {
		return 0
	}
	return s.sorted()[len(s)-1]
}

// median is the middle sample (the mean of the two middle ones for an even
// count).
func (s samples) median() time.Duration {
	if len(s) == 0 {
		return 0
	}
	c := s.sorted()
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// row is one line of the result table: a timed figure (samples), or a
// plain value (text) such as a memory size or a leak count.
type row struct {
	id    string
	what  string
	s     samples
	text  string // instead of min/median/max
	notes string
}

// check is a target with its verdict, printed under the table.
type check struct {
	what   string
	target string
	got    string
	met    bool
}

// report collects rows and checks and prints them as markdown.
type report struct {
	rows   []row
	checks []check
	notes  []string
}

func (r *report) add(id, what string, s samples, notes string) {
	r.rows = append(r.rows, row{id: id, what: what, s: s, notes: notes})
}

func (r *report) value(id, what, text, notes string) {
	r.rows = append(r.rows, row{id: id, what: what, text: text, notes: notes})
}

func (r *report) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (r *report) target(what, target, got string, met bool) {
	r.checks = append(r.checks, check{what, target, got, met})
}

// ratio is a/b of two medians.
func ratio(a, b samples) float64 {
	if b.median() == 0 {
		return 0
	}
	return float64(a.median()) / float64(b.median())
}

// minRatio is a/b of two minimums: the least disturbed runs, which a busy
// machine moves less than medians.
func minRatio(a, b samples) float64 {
	if b.min() == 0 {
		return 0
	}
	return float64(a.min()) / float64(b.min())
}

func (r *report) print(w io.Writer) {
	fmt.Fprintln(w, "| # | measurement | n | min | median | max | notes |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---|")
	for _, x := range r.rows {
		if x.s == nil {
			fmt.Fprintf(w, "| %s | %s | | | %s | | %s |\n", x.id, x.what, x.text, x.notes)
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s | %s |\n", x.id, x.what, len(x.s), dur(x.s.min()), dur(x.s.median()), dur(x.s.max()), x.notes)
	}
	if len(r.checks) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| target | wanted | got | |")
		fmt.Fprintln(w, "|---|---|---|---|")
		for _, c := range r.checks {
			v := "met"
			if !c.met {
				v = "**missed**"
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", c.what, c.target, c.got, v)
		}
	}
	if len(r.notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range r.notes {
			fmt.Fprintln(w, "- "+strings.TrimSpace(n))
		}
	}
}

// dur formats a duration with three significant digits in a fitting unit.
func dur(d time.Duration) string {
	if d < 0 {
		return "-" + dur(-d)
	}
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

// sign is "+" for a duration that is not negative (dur prints the "-").
func sign(d time.Duration) string {
	if d < 0 {
		return ""
	}
	return "+"
}

// timeIt runs fn n times and returns how long each run took; it stops at
// the first error.
func timeIt(n int, fn func() error) (samples, error) {
	s := make(samples, 0, n)
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if err := fn(); err != nil {
			return s, err
		}
		s = append(s, time.Since(t0))
	}
	return s, nil
}
