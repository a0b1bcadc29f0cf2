package config

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	gotoml "github.com/pelletier/go-toml/v2"
)

// generic converts a tree to plain Go values shaped like BurntSushi/toml's
// decoding into map[string]any; datetimes become a marker, since only their
// kind matters to lvsd (no key takes one).
func generic(v *value) any {
	switch v.kind {
	case kString:
		return v.str
	case kInt:
		return v.num
	case kBool:
		return v.b
	case kFloat:
		s := strings.ReplaceAll(v.str, "_", "")
		switch strings.TrimLeft(s, "+-") {
		case "inf":
			if strings.HasPrefix(s, "-") {
				return math.Inf(-1)
			}
			return math.Inf(1)
		case "nan":
			return "nan"
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return "bad float " + s
		}
		return f
	case kDatetime:
		return "datetime"
	case kArray:
		out := make([]any, len(v.arr))
		for i, e := range v.arr {
			out[i] = generic(e)
		}
		return out
	case kTable:
		return genericTable(v.tab)
	}
	return fmt.Sprintf("kind %d", v.kind)
}

func genericTable(t *table) map[string]any {
	m := make(map[string]any, len(t.keys))
	for i, k := range t.keys {
		m[k] = generic(t.vals[i])
	}
	return m
}

// normalize reshapes a decoder's output the same way.
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = normalize(e)
		}
		return m
	case []map[string]any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalize(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalize(e)
		}
		return out
	case float64:
		if math.IsNaN(x) {
			return "nan"
		}
		return x
	case string, int64, bool:
		return x
	case int:
		return int64(x)
	}
	return "datetime"
}

// compareWithDecoder parses doc with the tree and with go-toml's own
// decoder (which passes the toml-test suite; BurntSushi/toml accepts some
// documents the spec forbids, such as "a.b = 1\na = 2") and reports any
// disagreement on validity or values.
func compareWithDecoder(doc string) error {
	e := &errs{}
	tree, ok := parseTree(&source{file: "t.toml", data: []byte(doc)}, e)
	mine := ok && len(e.list) == 0

	var theirs map[string]any
	err := gotoml.Unmarshal([]byte(doc), &theirs)
	if mine && err != nil && hasDatetime(&value{kind: kTable, tab: tree}) {
		// The parser only delimits datetimes; go-toml's decoder also checks
		// their fields. No lvsd key takes a datetime, so any datetime is a
		// type error later anyway.
		return nil
	}
	switch {
	case mine && err != nil:
		return fmt.Errorf("accepted, go-toml rejects: %v", err)
	case !mine && err == nil:
		return fmt.Errorf("rejected (%v), go-toml accepts", e.list)
	case mine:
		if got, want := genericTable(tree), normalize(theirs); !reflect.DeepEqual(got, want) {
			return fmt.Errorf("values differ:\n got %#v\nwant %#v", got, want)
		}
	}
	return nil
}

func hasDatetime(v *value) bool {
	switch v.kind {
	case kDatetime:
		return true
	case kArray:
		for _, e := range v.arr {
			if hasDatetime(e) {
				return true
			}
		}
	case kTable:
		for _, e := range v.tab.vals {
			if hasDatetime(e) {
				return true
			}
		}
	}
	return false
}

var tomlCases = []string{
	// valid
	"a = 1\nb = \"x\"\nc = [1, 2]\n",
	"[a.b.c]\nx = 1\n[a]\ny = 2\n",
	"[fruit]\napple.color = \"red\"\napple.taste.sweet = true\n[fruit.apple.texture]\nsmooth = true\n",
	"[[s]]\nn = 1\n[[s.b]]\nx = 1\n[[s.b]]\nx = 2\n[s.c]\nz = 1\n[[s]]\nn = 2\n",
	"t = { a = 1, b.c = 2 }\n",
	"a = [{ x = 1 }, { x = 2 }]\n",
	"x = 0xff\ny = 0o17\nz = 0b101\nw = 1_000\nf = 1.5e3\ng = -inf\nh = nan\n",
	"'quoted key' = 1\n\"a.b\" = 2\n",
	"d = 1979-05-27T07:32:00Z\n",
	"s = \"\"\"\nmulti\nline\"\"\"\n",
	"[a]\n[a.b]\n[a.c]\n",
	// invalid
	"a = 1\na = 2\n",
	"[a]\n[a]\n",
	"[fruit]\napple.color = \"red\"\n[fruit.apple]\n",
	"t = { a = 1 }\n[t]\n",
	"t = { a = 1 }\n[t.b]\n",
	"a = [1]\n[[a]]\n",
	"a = 1\n[a]\n",
	"[[a]]\n[a]\n",
	"[a]\nb = 1\n[a.b]\n",
	"a.b = 1\na = 2\n",
	"a.b = 1\n[a]\n",
	"x = 9223372036854775808\n",
	"x = 0xffffffffffffffff\n",
	"[a.b.c]\nz = 9\n[a]\nb.c.t = 1\n",
	"[[a]]\n[a.b]\nx = 1\n[[a]]\n[a.b]\nx = 2\n",
	"a = 01\n",
	"a = \"x\" b = 1\n",
}

// growthCases interleave the growth of several tables and arrays of
// tables, beyond what the builder grows in its slabs, so that tables
// sharing a slab never overwrite each other.
func growthCases() []string {
	var dotted, aot, headers strings.Builder
	for i := range 40 {
		fmt.Fprintf(&dotted, "a.x%d = %d\nb.y%d = %d\nc.z.w%d = \"%d\"\n", i, i, i, -i, i, i)
		fmt.Fprintf(&aot, "[[s]]\nn = %d\n[[s.b]]\nx = %d\n[[t]]\nm = %d\n[[s.b]]\nx = %d\n[s.c]\ny = %d\n", i, i, i, -i, i)
		fmt.Fprintf(&headers, "[h%d]\nk = %d\n[h%d.sub]\nv = %d\n", i, i, i, i)
	}
	return []string{dotted.String(), aot.String(), headers.String(), dotted.String() + aot.String()}
}

func TestTreeMatchesDecoder(t *testing.T) {
	for _, doc := range append(growthCases(), tomlCases...) {
		if err := compareWithDecoder(doc); err != nil {
			t.Errorf("%q: %v", doc, err)
		}
	}
}

// FuzzTreeMatchesDecoder checks that the positional tree accepts exactly the
// documents go-toml's decoder accepts, with the same values.
func FuzzTreeMatchesDecoder(f *testing.F) {
	for _, doc := range tomlCases {
		f.Add(doc)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		if err := compareWithDecoder(doc); err != nil {
			t.Fatalf("%q: %v", doc, err)
		}
	})
}

func TestPositions(t *testing.T) {
	src := &source{file: "f", data: []byte("a = 1\n# ü comment\n  bé = \"x\"\n")}
	for _, tc := range []struct {
		off  uint32
		want Pos
	}{
		{0, Pos{"f", 1, 1}},
		{4, Pos{"f", 1, 5}},
		{6, Pos{"f", 2, 1}},
		{24, Pos{"f", 3, 5}}, // after "  bé": é is two bytes but one column
		{1000, Pos{"f", 4, 1}},
	} {
		if got := src.pos(tc.off); got != tc.want {
			t.Errorf("pos(%d) = %v, want %v", tc.off, got, tc.want)
		}
	}
	// Offsets in any order, against a count from the start.
	text := strings.Repeat("ab = 1\n# ü\n\n  cé = [1, 2]\n", 50)
	src = &source{file: "f", data: []byte(text)}
	for i := range 3 * len(text) {
		off := (i * 7919) % (len(text) + 1)
		if i%3 == 0 {
			off = i / 3 // in order
		}
		before := text[:off]
		want := Pos{"f", strings.Count(before, "\n") + 1, len([]rune(before[strings.LastIndexByte(before, '\n')+1:])) + 1}
		if got := src.pos(uint32(off)); got != want {
			t.Fatalf("pos(%d) = %v, want %v", off, got, want)
		}
	}
}

// A file decoded in a reused arena decodes exactly as in a fresh one,
// whatever the arena held before, broken files included.
func TestArenaReuseDecodesAlike(t *testing.T) {
	paths, err := filepath.Glob("../configs/*.toml")
	if err != nil || len(paths) == 0 {
		t.Fatal("no example configs", err)
	}
	type doc struct {
		name string
		data []byte
	}
	var docs []doc
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, doc{p, data})
	}
	docs = append(docs,
		doc{"/c/big.toml", []byte(serviceFile(0, 50, 12, 3))},
		doc{"/c/growth.toml", []byte(growthCases()[3])},
		doc{"/c/broken.toml", []byte(serviceFile(0, 3, 2, 1) + "[[service]\nname = \"broken\"\n")},
		doc{"/c/bad.toml", []byte(serviceFile(0, 3, 2, 70000) + "[[service]]\nname = \"svc-0\"\nadress = \"x\"\n")},
	)
	for _, d := range tomlCases {
		docs = append(docs, doc{"/c/case.toml", []byte(d)})
	}
	var a treeArena
	for round := range 2 {
		for i := range docs {
			d := docs[(i*7+round*3)%len(docs)]
			got, want := decodeFileIn(&a, d.name, d.data), decodeFile(d.name, d.data)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s decodes differently in a reused arena:\n got %+v\nwant %+v", d.name, got, want)
			}
		}
	}
}

// Files read into a worker's reused buffer load as files read one by one:
// a tree of real files (sizes up and down, an empty one) through the OS,
// against the same tree in memory; then with a broken file.
func TestLoadFromDiskMatchesMemory(t *testing.T) {
	files := map[string]string{"lvsd.toml": "include = [\"conf.d/*.toml\"]\n[node]\nname = \"dir-a\"\n"}
	for i := range 24 {
		text := serviceFile(i, 1+(i*7)%13, 1+i%4, 1)
		switch i {
		case 5:
			text = ""
		case 17:
			text = strings.Repeat("# a long comment line to grow the buffer\n", 400) + text
		}
		files[fmt.Sprintf("conf.d/%02d.toml", i)] = text
	}
	load := func(l *Loader, main string) string {
		cfg, err := l.Load(main)
		if err != nil {
			return err.Error()
		}
		var b strings.Builder
		for _, s := range cfg.Services {
			fmt.Fprintf(&b, "%+v %+v\n", *s, *s.Check)
			for _, be := range s.Backends {
				fmt.Fprintf(&b, "  %+v\n", *be)
			}
		}
		return b.String()
	}
	for _, broken := range []bool{false, true} {
		if broken {
			files["conf.d/11.toml"] += "[[service]]\nname = \"bad\"\nadress = \"198.18.200.1\"\n"
		}
		dir := writeDir(t, files)
		fsys := newMemFS()
		for name, text := range files {
			fsys.write(filepath.Join(dir, name), text)
		}
		main := filepath.Join(dir, "lvsd.toml")
		disk, mem := load(&Loader{}, main), load(&Loader{fs: fsys}, main)
		if disk != mem || broken != strings.Contains(disk, `unknown key "service.adress"`) || !strings.Contains(disk, "svc-") && !broken {
			t.Fatalf("broken %v: from disk:\n%.1000s\nfrom memory:\n%.1000s", broken, disk, mem)
		}
	}
}
