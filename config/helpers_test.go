package config

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// memFS is an in-memory fileSystem for tests and fuzzing: no test reads
// outside what it wrote.
type memFS struct {
	files   map[string][]byte
	version map[string]int64
}

func newMemFS() *memFS { return &memFS{files: map[string][]byte{}, version: map[string]int64{}} }

func (m *memFS) write(name string, data string) {
	m.files[name] = []byte(data)
	m.version[name]++
}

func (m *memFS) stat(p string) (fileID, bool, error) {
	if b, ok := m.files[p]; ok {
		return fileID{size: int64(len(b)), mtime: m.version[p]}, false, nil
	}
	prefix := strings.TrimSuffix(p, "/") + "/"
	for name := range m.files {
		if strings.HasPrefix(name, prefix) {
			return fileID{}, true, nil
		}
	}
	return fileID{}, false, &fs.PathError{Op: "stat", Path: p, Err: fs.ErrNotExist}
}

func (m *memFS) readFile(p string, limit int64) ([]byte, error) {
	b, ok := m.files[p]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
	if limit > 0 && int64(len(b)) > limit {
		b = b[:limit]
	}
	return b, nil
}

func (m *memFS) glob(pattern string) ([]string, error) {
	if _, err := path.Match(pattern, ""); err != nil {
		return nil, err
	}
	var out []string
	for name := range m.files {
		if ok, _ := path.Match(pattern, name); ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// marker shows where an error is expected in a test config: it is removed
// from the text and its line and column are the expected position.
const marker = "@@"

// strip removes markers and returns their positions in order.
func strip(text string) (string, []Pos) {
	var out strings.Builder
	var ps []Pos
	line, col := 1, 1
	for i := 0; i < len(text); {
		if strings.HasPrefix(text[i:], marker) {
			ps = append(ps, Pos{Line: line, Col: col})
			i += len(marker)
			continue
		}
		r, n := utf8.DecodeRuneInString(text[i:])
		out.WriteRune(r)
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		i += n
	}
	return out.String(), ps
}

// loadMem loads files (name -> text, markers stripped) from an in-memory FS;
// the first name given in order is the main file.
func loadMem(t testing.TB, order []string, files map[string]string) (*Config, Errors, map[string][]Pos) {
	t.Helper()
	fsys := newMemFS()
	marks := map[string][]Pos{}
	for name, text := range files {
		clean, ps := strip(text)
		fsys.write(name, clean)
		for _, p := range ps {
			p.File = name
			marks[name] = append(marks[name], p)
		}
	}
	l := &Loader{fs: fsys, Hostname: func() (string, error) { return "dir-a", nil }}
	cfg, err := l.Load(order[0])
	if err == nil {
		return cfg, nil, marks
	}
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("Load returned %T %v, want Errors", err, err)
	}
	return cfg, es, marks
}

// load loads one main file /etc/lvsd/lvsd.toml.
func load(t testing.TB, text string) (*Config, Errors, []Pos) {
	t.Helper()
	const main = "/etc/lvsd/lvsd.toml"
	cfg, es, marks := loadMem(t, []string{main}, map[string]string{main: text})
	return cfg, es, marks[main]
}

// mustLoad loads text and fails on any error.
func mustLoad(t testing.TB, text string) *Config {
	t.Helper()
	cfg, es, _ := load(t, text)
	if es != nil {
		t.Fatalf("unexpected errors:\n%v", es)
	}
	return cfg
}

// wantError requires an error containing msg at p.
func wantError(t testing.TB, es Errors, p Pos, msg string) {
	t.Helper()
	for _, e := range es {
		if e.Pos() == p && strings.Contains(e.Msg, msg) {
			return
		}
	}
	t.Errorf("want error %q at %s; got:\n%v", msg, p, es)
}

// writeDir writes files under a new temporary directory and returns it.
func writeDir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
