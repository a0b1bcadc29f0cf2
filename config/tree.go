package config

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/pelletier/go-toml/v2/unstable"
)

// This file turns TOML text into a tree of values that remember where they
// came from. BurntSushi/toml (and go-toml's decoder) keep key positions
// private and, for arrays of tables, keyed without the element index, so they
// cannot point a semantic error at "the weight of the 7th backend". go-toml's
// unstable parser gives every key and value its byte range; on top of it this
// file applies TOML's table rules (duplicate keys, table redefinition, dotted
// keys, arrays of tables, closed inline tables). tree_test.go checks these
// rules against BurntSushi/toml on the same inputs.

type kind uint8

const (
	kString kind = iota + 1
	kInt
	kFloat
	kBool
	kDatetime
	kArray
	kTable
)

func (k kind) String() string {
	return [...]string{"?", "string", "integer", "float", "boolean", "datetime", "array", "table"}[k]
}

type value struct {
	kind   kind
	aot    bool   // array created by [[header]] (only those may be extended)
	used   bool   // read by the decoder; unread keys are unknown keys
	b      bool   // kBool (here, not after num: 72 bytes, not 80)
	off    uint32 // byte offset of the value (of the header for tables from one)
	keyOff uint32 // byte offset of the key naming this value; = off for array elements
	str    string // kString; raw text for kFloat and kDatetime
	num    int64
	arr    []*value
	tab    *table
}

// how a table came to exist; decides which later definitions are allowed.
type how uint8

const (
	hImplicit how = iota + 1 // intermediate of a [a.b.c] header
	hHeader                  // [header], [[header]] element or the root
	hDotted                  // created by a dotted key a.b = 1
	hClosed                  // inline table, or any table inside a value: never extended
)

// table keeps its entries in order. Config tables are small, so lookups
// scan a slice; a map is built only for large ones.
type table struct {
	keys []string
	vals []*value
	big  map[string]int // index into keys/vals, once len > smallTable
	how  how
}

const smallTable = 16

func newTable(h how) *table { return &table{how: h} }

func (t *table) get(k string) *value {
	if t.big != nil {
		if i, ok := t.big[k]; ok {
			return t.vals[i]
		}
		return nil
	}
	for i, kk := range t.keys {
		if kk == k {
			return t.vals[i]
		}
	}
	return nil
}

func (t *table) set(k string, v *value) {
	t.keys = append(t.keys, k)
	t.vals = append(t.vals, v)
	switch {
	case t.big != nil:
		t.big[k] = len(t.keys) - 1
	case len(t.keys) > smallTable:
		t.big = make(map[string]int, 2*len(t.keys))
		for i, kk := range t.keys {
			t.big[kk] = i
		}
	}
}

// source is one file's text with a line index for positions, built as far
// as positions are asked for (they mostly come in file order), in one pass.
type source struct {
	file       string
	data       []byte
	lineStarts []int // of every line that starts before scanned
	scanned    int
	// the last position computed: columns of later offsets on the same
	// line continue from it, so many errors on one long line stay linear.
	lastLine, lastOff, lastCol int
}

func (s *source) pos(off uint32) Pos {
	o := min(int(off), len(s.data))
	if len(s.lineStarts) == 0 { // none yet (it may hold a reused array)
		s.lineStarts, s.scanned = append(s.lineStarts[:0], 0), 0
	}
	// Index the lines up to the end of o's line. Config lines are short: a
	// plain loop beats bytes.IndexByte's vector setup per line (by far in
	// the lab VM's emulated CPU).
	for i := s.scanned; s.scanned <= o && i < len(s.data); i++ {
		if s.data[i] == '\n' {
			s.scanned = i + 1
			s.lineStarts = append(s.lineStarts, s.scanned)
		} else if i == len(s.data)-1 {
			s.scanned = len(s.data)
		}
	}
	line := s.lineOf(o)
	from, col := s.lineStarts[line], 1
	if line == s.lastLine && o >= s.lastOff && s.lastCol > 0 {
		from, col = s.lastOff, s.lastCol
	}
	col += utf8.RuneCount(s.data[from:o])
	s.lastLine, s.lastOff, s.lastCol = line, o, col
	return Pos{File: s.file, Line: line + 1, Col: col}
}

// lineOf returns the index of the line holding offset o. Offsets mostly
// come in file order, so the last line and the next few are tried first.
func (s *source) lineOf(o int) int {
	ls := s.lineStarts
	for l := s.lastLine; l < min(s.lastLine+4, len(ls)); l++ {
		if ls[l] > o {
			break
		}
		if l+1 == len(ls) || o < ls[l+1] {
			return l
		}
	}
	line, found := slices.BinarySearch(ls, o)
	if !found {
		line--
	}
	return line
}

// treeArena keeps the slabs of a parse tree for the next file: nothing
// decoded points into a file's tree, so once the file is decoded its tree
// is dead, and a worker decoding a hundred files reuses one file's slabs
// (and parser and line index) instead of leaving a hundred trees to the
// garbage collector. The zero treeArena is ready to use; a nil one
// allocates afresh for every file.
type treeArena struct {
	values [][]value
	tables [][]table
	keys   [][]string
	ptrs   [][]*value // tables' values and arrays' elements
	// chunks of each handed out since the last reset
	nv, nt, nk, np int
	parser         unstable.Parser
	lines          []int
	data           []byte // the file's text, when read into the arena
}

// Slab sizes: values and tables, and the entries of tables and arrays.
const (
	valueSlab = 256
	tableSlab = 64
	entrySlab = 1024
)

// reset makes every slab free for the next file's tree; the previous tree
// must be dead.
func (a *treeArena) reset() {
	if a != nil {
		a.nv, a.nt, a.nk, a.np = 0, 0, 0, 0
	}
}

// chunk hands out the next slab of *list, zeroed, allocating it the first
// time.
func chunk[T any](list *[][]T, n *int, size int) []T {
	if *n == len(*list) {
		*list = append(*list, make([]T, size))
	} else {
		clear((*list)[*n])
	}
	c := (*list)[*n]
	*n++
	return c
}

func (a *treeArena) valueSlab() []value {
	if a == nil {
		return make([]value, valueSlab)
	}
	return chunk(&a.values, &a.nv, valueSlab)
}

func (a *treeArena) tableSlab() []table {
	if a == nil {
		return make([]table, tableSlab)
	}
	return chunk(&a.tables, &a.nt, tableSlab)
}

func (a *treeArena) keySlab() []string {
	if a == nil {
		return make([]string, entrySlab)
	}
	return chunk(&a.keys, &a.nk, entrySlab)
}

func (a *treeArena) ptrSlab() []*value {
	if a == nil {
		return make([]*value, entrySlab)
	}
	return chunk(&a.ptrs, &a.np, entrySlab)
}

// treeBuilder applies one file's expressions to its root table.
type treeBuilder struct {
	src   *source
	p     *unstable.Parser
	root  *table
	cur   *table
	errs  *errs
	arena *treeArena // nil: no reuse

	parts []keyPart
	names internTable // interned key names: configs repeat a few keys
	vslab []value     // values and tables are carved from slabs:
	tslab []table     // a 10,000-service file has ~400,000 of them

	// Tables' key and value slices are carved from slabs too (see set):
	// kfree and vfree are the unused rest of the current slabs, and last
	// is the one table whose slices may grow into them, in place.
	kfree []string
	vfree []*value
	last  *table
	// Arrays of tables grow the same way in their own slab.
	afree []*value
	lastA *value
}

// set adds k = v to t, growing t's slices in the builder's slabs: a table
// is filled by consecutive lines, so it usually grows in place at the end
// of the slab, and 100,000 small tables cost no allocation each.
func (b *treeBuilder) set(t *table, k string, v *value) {
	if len(t.keys) == cap(t.keys) && len(t.keys) < slabGrowLimit {
		b.regrow(t)
	}
	t.set(k, v)
}

// slabGrowLimit bounds what set and appendElem move within the slabs: a
// larger table or array grows by append, doubling, so that two large ones
// growing in turn are not copied on every step.
const slabGrowLimit = 16

// appendElem appends elem to the array of tables arr, growing it in the
// builder's slab as set grows tables.
func (b *treeBuilder) appendElem(arr, elem *value) {
	if n := len(arr.arr); n == cap(arr.arr) && n < slabGrowLimit {
		if l := b.lastA; l != nil {
			m := len(l.arr)
			l.arr = l.arr[:m:m]
			b.afree = b.afree[m:]
			b.lastA = nil
		}
		if len(b.afree) <= n {
			b.afree = make([]*value, entrySlab)
		}
		copy(b.afree, arr.arr)
		arr.arr = b.afree[:n]
		b.lastA = arr
	}
	arr.arr = append(arr.arr, elem)
}

// regrow moves t's entries to the free part of the slabs, with the rest of
// the slab as spare capacity, and makes t the table that grows there. The
// previous such table loses its spare capacity (a later append to it
// reallocates), so no two tables ever share a slot.
func (b *treeBuilder) regrow(t *table) {
	if l := b.last; l != nil {
		n := len(l.keys)
		l.keys, l.vals = l.keys[:n:n], l.vals[:n:n]
		b.kfree, b.vfree = b.kfree[n:], b.vfree[n:]
		b.last = nil
	}
	n := len(t.keys)
	if len(b.kfree) <= n { // n < slabGrowLimit: a slab has room
		b.kfree, b.vfree = b.arena.keySlab(), b.arena.ptrSlab()
	}
	copy(b.kfree, t.keys)
	copy(b.vfree, t.vals)
	t.keys, t.vals = b.kfree[:n], b.vfree[:n]
	b.last = t
}

func (b *treeBuilder) newValue() *value {
	if len(b.vslab) == 0 {
		b.vslab = b.arena.valueSlab()
	}
	v := &b.vslab[0]
	b.vslab = b.vslab[1:]
	return v
}

func (b *treeBuilder) newTable(h how) *table {
	if len(b.tslab) == 0 {
		b.tslab = b.arena.tableSlab()
	}
	t := &b.tslab[0]
	b.tslab = b.tslab[1:]
	t.how = h
	return t
}

func (b *treeBuilder) intern(name []byte) string { return b.names.intern(name) }

// internTable interns key names in a small open-addressed table with a
// cheap hash of the name's length and ends: a map's string hash costs more
// than the rest of handling a key (much more in an emulated CPU without
// AES instructions), and configs use a few dozen distinct keys.
type internTable struct {
	slots [internSlots]string
	n     int
}

const internSlots = 512

func (t *internTable) intern(name []byte) string {
	if len(name) == 0 {
		return ""
	}
	h := uint(len(name))*131 + uint(name[0])*31 + uint(name[len(name)-1]) + uint(name[len(name)/2])*7
	for i := range uint(8) {
		slot := &t.slots[(h+i)%internSlots]
		switch {
		case *slot == "":
			s := string(name)
			if t.n < internSlots/2 {
				*slot = s
				t.n++
			}
			return s
		case *slot == string(name):
			return *slot
		}
	}
	return string(name)
}

// parseTree parses a file. It returns false when a syntax error stopped the
// parse (the tree then holds only what came before it). Violations of TOML's
// table rules are reported and the offending expression is skipped, so more
// than one can be reported per file.
func parseTree(src *source, e *errs) (*table, bool) { return parseTreeIn(nil, src, e) }

// parseTreeIn is parseTree with the tree's memory from a, when not nil;
// the tree lives until a's next reset.
func parseTreeIn(a *treeArena, src *source, e *errs) (*table, bool) {
	b := &treeBuilder{src: src, errs: e, arena: a}
	if a != nil {
		b.p = &a.parser
	} else {
		b.p = &unstable.Parser{}
	}
	b.root = b.newTable(hHeader)
	b.cur = b.root
	b.p.Reset(src.data)
	for b.p.NextExpression() {
		expr := b.p.Expression()
		switch expr.Kind {
		case unstable.KeyValue:
			b.keyValue(b.cur, expr)
		case unstable.Table, unstable.ArrayTable:
			b.header(expr)
		}
	}
	if err := b.p.Error(); err != nil {
		off := uint32(len(src.data))
		var perr *unstable.ParserError
		if errors.As(err, &perr) && perr.Highlight != nil {
			// The highlight is a sub-slice of the input; its offset follows
			// from the capacities (checked, so a foreign slice cannot panic).
			if o := cap(src.data) - cap(perr.Highlight); o >= 0 && o <= len(src.data) {
				off = uint32(o)
			}
		}
		b.errs.at(src.pos(off), "TOML syntax: %s", err.Error())
		return b.root, false
	}
	return b.root, true
}

type keyPart struct {
	name string
	off  uint32
}

// keyParts returns the parts of a key; the slice is reused by the next call.
func (b *treeBuilder) keyParts(n *unstable.Node) []keyPart {
	parts := b.parts[:0]
	it := n.Key()
	for it.Next() {
		k := it.Node()
		parts = append(parts, keyPart{name: b.intern(k.Data), off: k.Raw.Offset})
	}
	b.parts = parts
	return parts
}

func dotted(parts []keyPart) string {
	names := make([]string, len(parts))
	for i, p := range parts {
		names[i] = p.name
	}
	return strings.Join(names, ".")
}

// headerOffset finds the first '[' of a header whose first key is at keyOff.
func (b *treeBuilder) headerOffset(keyOff uint32) uint32 {
	o, first := int(keyOff), int(keyOff)
	for o > 0 {
		c := b.src.data[o-1]
		if c == '[' {
			first = o - 1
		} else if c != ' ' && c != '\t' {
			break
		}
		o--
	}
	return uint32(first)
}

func (b *treeBuilder) fail(off uint32, format string, args ...any) {
	b.errs.at(b.src.pos(off), format, args...)
}

// descend walks from t through the intermediate keys of a header or dotted
// key, creating tables of kind h where missing. It returns nil on error.
func (b *treeBuilder) descend(t *table, parts []keyPart, h how) *table {
	for i, p := range parts {
		v := t.get(p.name)
		if v == nil {
			nt := b.newTable(h)
			nv := b.newValue()
			*nv = value{kind: kTable, tab: nt, off: p.off, keyOff: p.off}
			b.set(t, p.name, nv)
			t = nt
			continue
		}
		switch {
		case v.kind == kTable && v.tab.how != hClosed && (h != hDotted || v.tab.how == hDotted):
			t = v.tab
		case v.kind == kArray && v.aot && h != hDotted:
			t = v.arr[len(v.arr)-1].tab
		default:
			b.fail(p.off, "cannot use %q as a table: it is already defined as %s at %s",
				dotted(parts[:i+1]), describe(v), b.src.pos(v.keyOff))
			return nil
		}
	}
	return t
}

func describe(v *value) string {
	switch {
	case v.kind == kTable && v.tab.how == hClosed:
		return "an inline table"
	case v.kind == kTable && v.tab.how == hDotted:
		return "a table (by dotted keys)"
	case v.kind == kTable:
		return "a table"
	case v.aot:
		return "an array of tables"
	case v.kind == kInt:
		return "an integer"
	case v.kind == kArray:
		return "an array"
	}
	return "a " + v.kind.String()
}

// discard receives the keys of a header that could not be applied, so they
// do not land in (and confuse) the previous table.
func (b *treeBuilder) discard() { b.cur = b.newTable(hHeader) }

func (b *treeBuilder) header(n *unstable.Node) {
	parts := b.keyParts(n)
	hoff := b.headerOffset(parts[0].off)
	parent := b.descend(b.root, parts[:len(parts)-1], hImplicit)
	if parent == nil {
		b.discard()
		return
	}
	last := parts[len(parts)-1]
	v := parent.get(last.name)
	exists := v != nil
	if n.Kind == unstable.ArrayTable {
		nt := b.newTable(hHeader)
		elem := b.newValue()
		*elem = value{kind: kTable, tab: nt, off: hoff, keyOff: hoff}
		switch {
		case !exists:
			arr := b.newValue()
			*arr = value{kind: kArray, aot: true, off: hoff, keyOff: hoff}
			b.appendElem(arr, elem)
			b.set(parent, last.name, arr)
		case v.aot:
			b.appendElem(v, elem)
		default:
			name := dotted(parts)
			b.fail(last.off, "cannot define [[%s]]: %q is already %s at %s", name, name, describe(v), b.src.pos(v.keyOff))
			b.discard()
			return
		}
		b.cur = nt
		return
	}
	switch {
	case !exists:
		nt := b.newTable(hHeader)
		nv := b.newValue()
		*nv = value{kind: kTable, tab: nt, off: hoff, keyOff: hoff}
		b.set(parent, last.name, nv)
		b.cur = nt
	case v.kind == kTable && v.tab.how == hImplicit:
		v.tab.how = hHeader
		v.off, v.keyOff = hoff, hoff
		b.cur = v.tab
	default:
		b.fail(last.off, "cannot define [%s]: it is already %s at %s", dotted(parts), describe(v), b.src.pos(v.keyOff))
		b.discard()
	}
}

// keyValue applies `a.b.c = value` to t.
func (b *treeBuilder) keyValue(t *table, n *unstable.Node) {
	parts := b.keyParts(n)
	parent := b.descend(t, parts[:len(parts)-1], hDotted)
	if parent == nil {
		return
	}
	last, keyOff := parts[len(parts)-1], parts[0].off
	if prev := parent.get(last.name); prev != nil {
		b.fail(last.off, "duplicate key %q (first defined at %s)", dotted(parts), b.src.pos(prev.keyOff))
		return
	}
	v := b.value(n.Value()) // may reuse parts for inline tables
	if v == nil {
		return
	}
	v.keyOff = keyOff
	b.set(parent, last.name, v)
}

// value converts a value node; nil after reporting an error.
func (b *treeBuilder) value(n *unstable.Node) *value {
	v := b.newValue()
	v.off = n.Raw.Offset
	v.keyOff = v.off
	switch n.Kind {
	case unstable.String:
		v.kind, v.str = kString, string(n.Data)
	case unstable.Bool:
		v.kind, v.b = kBool, n.Data[0] == 't'
	case unstable.Integer:
		i, err := parseIntBytes(n.Data)
		if err != nil {
			b.fail(v.off, "integer %s does not fit in 64 bits", n.Data)
			return nil
		}
		v.kind, v.num = kInt, i
	case unstable.Float:
		v.kind, v.str = kFloat, string(n.Data)
		if !validFloat(v.str) {
			b.fail(v.off, "float %s is out of range", n.Data)
			return nil
		}
	case unstable.LocalDate, unstable.LocalTime, unstable.LocalDateTime, unstable.DateTime:
		v.kind, v.str = kDatetime, string(n.Data)
	case unstable.Array:
		v.kind = kArray
		it := n.Children()
		for it.Next() {
			c := it.Node()
			if c.Kind == unstable.Comment {
				continue
			}
			e := b.value(c)
			if e == nil {
				return nil
			}
			v.arr = append(v.arr, e)
		}
	case unstable.InlineTable:
		v.kind = kTable
		v.tab = b.newTable(hDotted)
		it := n.Children()
		for it.Next() {
			if c := it.Node(); c.Kind == unstable.KeyValue {
				before := len(b.errs.list)
				b.keyValue(v.tab, c)
				if len(b.errs.list) != before {
					return nil
				}
			}
		}
		closeTable(v.tab)
	default:
		b.fail(v.off, "unsupported TOML value (%s)", n.Kind)
		return nil
	}
	return v
}

// closeTable marks an inline table and everything inside it as final.
func closeTable(t *table) {
	t.how = hClosed
	for _, v := range t.vals {
		closeValue(v)
	}
}

func closeValue(v *value) {
	switch v.kind {
	case kTable:
		closeTable(v.tab)
	case kArray:
		for _, e := range v.arr {
			closeValue(e)
		}
	}
}

// parseIntBytes parses a TOML integer the parser has already checked for
// syntax (sign, radix prefix, underscores, no leading zeros). Short plain
// decimals (ports, weights: nearly every integer of a config) are read from
// the bytes, without making a string.
func parseIntBytes(b []byte) (int64, error) {
	if len(b) > 0 && len(b) <= 18 {
		neg, d := false, b
		if d[0] == '+' || d[0] == '-' {
			neg, d = d[0] == '-', d[1:]
		}
		n, ok := int64(0), len(d) > 0
		for _, c := range d {
			if c < '0' || c > '9' {
				ok = false
				break
			}
			n = n*10 + int64(c-'0')
		}
		if ok {
			if neg {
				n = -n
			}
			return n, nil
		}
	}
	return parseIntText(string(b))
}

func parseIntText(s string) (int64, error) {
	s = strings.ReplaceAll(s, "_", "")
	if len(s) > 2 && s[0] == '0' {
		switch s[1] {
		case 'x':
			return strconv.ParseInt(s[2:], 16, 64)
		case 'o':
			return strconv.ParseInt(s[2:], 8, 64)
		case 'b':
			return strconv.ParseInt(s[2:], 2, 64)
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// validFloat reports whether a float the parser delimited fits in 64 bits.
func validFloat(s string) bool {
	s = strings.ReplaceAll(s, "_", "")
	if t := strings.TrimLeft(s, "+-"); t == "inf" || t == "nan" {
		return true
	}
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}
