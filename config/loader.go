package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
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

func statID(path string) (fileID, fs.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, nil, err
	}
	id := fileID{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.ctime = st.Ctim.Nano()
		id.ino, id.dev = st.Ino, uint64(st.Dev)
	}
	return id, fi, nil
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
	var visit func(file string, from Pos) bool
	visit = func(file string, from Pos) bool {
		if _, done := next[file]; done {
			return true // included twice, or a cycle: each file counts once
		}
		frag, id, err := l.file(file)
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
			matches, err := filepath.Glob(inc.pattern)
			if err != nil {
				e.at(inc.pos, "include %q: %v", inc.pattern, err)
				continue
			}
			if len(matches) == 0 && !hasMeta(inc.pattern) {
				e.at(inc.pos, "include %s: no such file", inc.pattern)
			}
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

// file returns the decoded file, from the cache when unchanged.
func (l *Loader) file(path string) (*fragment, fileID, error) {
	id, fi, err := statID(path)
	if err != nil {
		return nil, id, bare(err)
	}
	if fi.IsDir() {
		return nil, id, errors.New("is a directory")
	}
	if c, ok := l.cache[path]; ok && c.id == id {
		return c.frag, id, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, id, bare(err)
	}
	return decodeFile(path, data), id, nil
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
