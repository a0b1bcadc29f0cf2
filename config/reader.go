package config

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// reader reads the keys of one table with type checks, reporting every
// problem at the key's position. Keys never asked for are reported by done
// as unknown, with a suggestion when one of the known keys is close.
//
// Readers are values holding no pointer to their parent, so that the
// 100,000 tables of a large config cost no allocation each: keep a child
// in a variable and pass its address.
type reader struct {
	rc    *readCtx
	t     *table
	off   uint32 // where the table starts (its header, or its key)
	where string // the table's name for messages: "service", "service.check", ...
	start int    // the reader's part of rc.asked starts here
}

// readCtx is what a file's readers share.
type readCtx struct {
	src *source
	e   *errs
	// The keys the decoder asked for are the known keys, for "did you
	// mean". They go on a stack shared by a file's readers (a sub-table's
	// reader is done before its parent reads on), so that 100,000
	// backend tables do not each allocate a list.
	asked []string
	// record, when set (tests), collects the full name of every key asked
	// for, to check that the reference config documents them all.
	record map[string]bool
	// joined caches a few table names built by join: the same few repeat
	// for every service.
	joined [8]joinedName
	next   int
}

type joinedName struct{ where, key, name string }

func newReader(src *source, e *errs, t *table) *reader {
	return &reader{rc: &readCtx{src: src, e: e}, t: t}
}

// join is where + "." + key, without allocating for a pair seen recently.
func (c *readCtx) join(where, key string) string {
	if where == "" {
		return key
	}
	for i := range c.joined {
		if j := &c.joined[i]; j.key == key && j.where == where && j.name != "" {
			return j.name
		}
	}
	name := where + "." + key
	c.joined[c.next] = joinedName{where, key, name}
	c.next = (c.next + 1) % len(c.joined)
	return name
}

func (r *reader) child(key string, t *table, off uint32) reader {
	return reader{rc: r.rc, t: t, off: off, where: r.rc.join(r.where, key), start: len(r.rc.asked)}
}

// known returns the keys asked for so far.
func (r *reader) known() []string { return r.rc.asked[min(r.start, len(r.rc.asked)):] }

func (r *reader) get(key string) *value {
	r.rc.asked = append(r.rc.asked, key)
	if r.rc.record != nil {
		r.rc.record[r.name(key)] = true
	}
	if r.t == nil {
		return nil
	}
	v := r.t.get(key)
	if v != nil {
		v.used = true
	}
	return v
}

// has reports whether key is set, without marking it read.
func (r *reader) has(key string) bool { return r.t != nil && r.t.get(key) != nil }

// pos is the position of key, or of the table when key is absent.
func (r *reader) pos(key string) Pos {
	if r.t != nil {
		if v := r.t.get(key); v != nil {
			return r.rc.src.pos(v.keyOff)
		}
	}
	return r.tablePos()
}

// tablePos is the position of the table's header (or key).
func (r *reader) tablePos() Pos { return r.rc.src.pos(r.off) }

func (r *reader) errorf(v *value, format string, args ...any) {
	r.rc.e.at(r.rc.src.pos(v.keyOff), format, args...)
}

func (r *reader) name(key string) string {
	if r.where != "" {
		return r.where + "." + key
	}
	return key
}

func (r *reader) typeErr(key string, v *value, want string) {
	r.errorf(v, "%s: want %s, got %s", r.name(key), want, v.kind)
}

func (r *reader) str(key string) (string, bool) {
	v := r.get(key)
	if v == nil {
		return "", false
	}
	if v.kind != kString {
		r.typeErr(key, v, "a string")
		return "", false
	}
	return v.str, true
}

func (r *reader) boolean(key string, def bool) bool {
	v := r.get(key)
	if v == nil {
		return def
	}
	if v.kind != kBool {
		r.typeErr(key, v, "true or false")
		return def
	}
	return v.b
}

// integer reads an integer within [lo, hi].
func (r *reader) integer(key string, lo, hi int64) (int64, bool) {
	v := r.get(key)
	if v == nil {
		return 0, false
	}
	if v.kind != kInt {
		r.typeErr(key, v, "an integer")
		return 0, false
	}
	if v.num < lo || v.num > hi {
		r.errorf(v, "%s: %d is out of range %d..%d", r.name(key), v.num, lo, hi)
		return 0, false
	}
	return v.num, true
}

func (r *reader) intOr(key string, lo, hi, def int64) int64 {
	if n, ok := r.integer(key, lo, hi); ok {
		return n
	}
	return def
}

// duration reads a Go duration string ("500ms", "6m"); negative ones are
// refused.
func (r *reader) duration(key string) (time.Duration, bool) {
	v := r.get(key)
	if v == nil {
		return 0, false
	}
	if v.kind != kString {
		r.errorf(v, "%s: want a duration string such as \"500ms\" or \"6m\", got %s", r.name(key), v.kind)
		return 0, false
	}
	d, err := time.ParseDuration(v.str)
	if err != nil {
		r.errorf(v, "%s: invalid duration %q (want e.g. \"500ms\", \"6m\")", r.name(key), v.str)
		return 0, false
	}
	if d < 0 {
		r.errorf(v, "%s: duration %q must not be negative", r.name(key), v.str)
		return 0, false
	}
	return d, true
}

func (r *reader) durationOr(key string, def time.Duration) time.Duration {
	if d, ok := r.duration(key); ok {
		return d
	}
	return def
}

// strs reads an array of strings.
func (r *reader) strs(key string) ([]string, bool) {
	v := r.get(key)
	if v == nil {
		return nil, false
	}
	if v.kind != kArray {
		r.typeErr(key, v, "an array of strings")
		return nil, false
	}
	out := make([]string, 0, len(v.arr))
	ok := true
	for i, e := range v.arr {
		if e.kind != kString {
			r.rc.e.at(r.rc.src.pos(e.off), "%s[%d]: want a string, got %s", r.name(key), i, e.kind)
			ok = false
			continue
		}
		out = append(out, e.str)
	}
	return out, ok
}

// elems reads an array and returns its elements (for mixed or custom types).
func (r *reader) elems(key string) ([]*value, bool) {
	v := r.get(key)
	if v == nil {
		return nil, false
	}
	if v.kind != kArray {
		r.typeErr(key, v, "an array")
		return nil, false
	}
	return v.arr, true
}

// sub returns a reader for a sub-table; its table is nil when absent.
func (r *reader) sub(key string) reader {
	v := r.get(key)
	s := r.child(key, nil, r.off)
	if v == nil {
		return s
	}
	if v.kind != kTable {
		r.typeErr(key, v, "a table")
		return s
	}
	s.t, s.off = v.tab, v.off
	return s
}

// tables returns the tables of an array of tables (written as [[key]] or
// as an array of inline tables) and the offset of each.
func (r *reader) tables(key string) []*value {
	v := r.get(key)
	if v == nil {
		return nil
	}
	if v.kind != kArray {
		r.typeErr(key, v, "an array of tables")
		return nil
	}
	if !slices.ContainsFunc(v.arr, func(e *value) bool { return e.kind != kTable }) {
		return v.arr // the usual case: no copy; callers only read it
	}
	out := make([]*value, 0, len(v.arr))
	for i, e := range v.arr {
		if e.kind != kTable {
			r.rc.e.at(r.rc.src.pos(e.off), "%s[%d]: want a table, got %s", r.name(key), i, e.kind)
			continue
		}
		out = append(out, e)
	}
	return out
}

// at returns a reader for a table value from tables.
func (r *reader) at(key string, v *value) reader {
	return r.child(key, v.tab, v.off)
}

// done reports keys of the table that were never asked for.
func (r *reader) done() {
	defer func() { r.rc.asked = r.rc.asked[:min(r.start, len(r.rc.asked))] }()
	if r.t == nil {
		return
	}
	for i, k := range r.t.keys {
		v := r.t.vals[i]
		if v.used {
			continue
		}
		msg := fmt.Sprintf("unknown key %q", r.name(k))
		if s := closest(k, r.known()); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		r.errorf(v, "%s", msg)
	}
}

// closest returns the candidate nearest to k when it is a likely typo.
func closest(k string, candidates []string) string {
	best, bestD := "", math.MaxInt
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(k), c); d < bestD {
			best, bestD = c, d
		}
	}
	if bestD <= max(1, len(k)/3) {
		return best
	}
	return ""
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and swaps of neighbours ("nmae") cost 1.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
