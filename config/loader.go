package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
)

// Load reads, defaults and validates the config at path and the files it
// includes. On failure the error is an Errors listing every problem found.
func Load(path string) (*Config, error) {
	var l Loader
	return l.Load(path)
}

// Loader loads configs and keeps a per-file cache of decoded files, so a
// reload re-parses only files whose identity (size, mtime, ctime, inode)
// changed. The zero Loader is ready to use; it is safe for concurrent use.
type Loader struct {
	// Hostname supplies the default node name; nil means os.Hostname.
	Hostname func() (string, error)

	mu    sync.Mutex
	cache map[string]cached
	index serviceIndex
	fs    fileSystem // nil: the real one; tests use an in-memory one
}

// fileSystem is what loading reads: config files, globs and the files the
// config names (keys, tokens, CAs).
type fileSystem interface {
	stat(path string) (id fileID, isDir bool, err error)
	readFile(path string, limit int64) ([]byte, error)
	glob(pattern string) ([]string, error)
}

type osFS struct{}

func (osFS) stat(path string) (fileID, bool, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, false, err
	}
	id := fileID{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.ctime = st.Ctim.Nano()
		id.ino, id.dev = st.Ino, uint64(st.Dev)
	}
	return id, fi.IsDir(), nil
}

// readFile reads at most limit bytes (0: no limit), so a key_file pointing
// at something huge cannot stall a load.
func (osFS) readFile(path string, limit int64) ([]byte, error) {
	if limit == 0 {
		return os.ReadFile(path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

func (osFS) glob(pattern string) ([]string, error) { return filepath.Glob(pattern) }

func (l *Loader) files() fileSystem {
	if l.fs == nil {
		return osFS{}
	}
	return l.fs
}

type cached struct {
	id   fileID
	frag *fragment
}

// fileID identifies one version of a file without reading it. An edit that
// keeps size and all timestamps (to the nanosecond) and the inode would be
// missed; editors and config managers do not produce those.
type fileID struct {
	size         int64
	mtime, ctime int64
	ino, dev     uint64
}

// Load loads path like the package-level Load, reusing cached files.
func (l *Loader) Load(path string) (*Config, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, Errors{{File: path, Msg: fmt.Sprintf("resolving path: %v", err)}}
	}
	e := &errs{}
	next := make(map[string]cached)
	var frags []*fragment
	decoded := make(map[string]fileResult) // by prefetch
	var arena treeArena                    // for the files decoded here, one at a time
	var visit func(file string, from Pos) bool
	visit = func(file string, from Pos) bool {
		if _, done := next[file]; done {
			return true // included twice, or a cycle: each file counts once
		}
		r, ok := decoded[file]
		if !ok {
			r.frag, r.id, r.err = l.file(&arena, file)
		}
		frag, id, err := r.frag, r.id, r.err
		if err != nil {
			if from.IsValid() {
				e.at(from, "include %s: %v", file, err)
			} else {
				e.list = append(e.list, Error{File: file, Msg: err.Error()})
			}
			return false
		}
		next[file] = cached{id: id, frag: frag}
		frags = append(frags, frag)
		for _, inc := range frag.includes {
			matches, err := l.files().glob(inc.pattern)
			if err != nil {
				e.at(inc.pos, "include %q: %v", inc.pattern, err)
				continue
			}
			if len(matches) == 0 && !hasMeta(inc.pattern) {
				e.at(inc.pos, "include %s: no such file", inc.pattern)
			}
			l.prefetch(matches, next, decoded)
			for _, m := range matches {
				visit(m, inc.pos)
			}
		}
		return true
	}
	if !visit(abs, Pos{}) {
		return nil, e.list
	}
	l.cache = next // drops files no longer part of the config
	cfg := l.assemble(frags, e)
	if len(e.list) > 0 {
		return nil, e.list.sortDedup()
	}
	return cfg, nil
}

type fileResult struct {
	frag *fragment
	id   fileID
	err  error
}

// prefetch decodes, on every CPU, the files of paths that are not visited
// yet, into decoded: a cold load of 100 included files parses them in
// parallel. Caller holds mu; l.file only reads the cache.
func (l *Loader) prefetch(paths []string, visited map[string]cached, decoded map[string]fileResult) {
	var todo []string
	for _, p := range paths {
		if _, ok := visited[p]; ok {
			continue
		}
		if _, ok := decoded[p]; ok {
			continue
		}
		todo = append(todo, p)
	}
	workers := min(runtime.GOMAXPROCS(0), len(todo))
	if workers < 2 {
		return
	}
	results := make([]fileResult, len(todo))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var arena treeArena // one file's tree at a time
			for {
				i := int(next.Add(1)) - 1
				if i >= len(todo) {
					return
				}
				r := &results[i]
				r.frag, r.id, r.err = l.file(&arena, todo[i])
			}
		})
	}
	wg.Wait()
	for i, p := range todo {
		decoded[p] = results[i]
	}
}

// file returns the decoded file, from the cache when unchanged; a parse
// tree, if needed, is built in arena.
func (l *Loader) file(arena *treeArena, path string) (*fragment, fileID, error) {
	id, isDir, err := l.files().stat(path)
	if err != nil {
		return nil, id, bare(err)
	}
	if isDir {
		return nil, id, errors.New("is a directory")
	}
	if c, ok := l.cache[path]; ok && c.id == id {
		return c.frag, id, nil
	}
	var data []byte
	if r, ok := l.files().(intoReader); ok && arena != nil {
		// Into the arena's buffer: nothing decoded points into a file's text.
		arena.data, err = r.readFileInto(path, slices.Grow(arena.data[:0], int(id.size)+512))
		data = arena.data
	} else {
		data, err = l.files().readFile(path, 0)
	}
	if err != nil {
		return nil, id, bare(err)
	}
	return decodeFileIn(arena, path, data), id, nil
}

// intoReader is a fileSystem that reads a file into a buffer the caller
// reuses.
type intoReader interface {
	readFileInto(path string, buf []byte) ([]byte, error)
}

// readFileInto reads the whole file into buf (grown if needed).
func (osFS) readFileInto(path string, buf []byte) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, 4096)
		}
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func hasMeta(p string) bool {
	for _, c := range p {
		switch c {
		case '*', '?', '[', '\\':
			return true
		}
	}
	return false
}

// bare drops the path from a file error; the message names the file already.
func bare(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
