package config

import (
	"path/filepath"
)

// fragment is what one file contributes, decoded, defaulted and checked on
// its own. Fragments are cached per file; checks that need more than one
// file (names, references, files on disk) run when fragments are assembled.
type fragment struct {
	file     string
	syntaxOK bool
	errs     Errors

	includes []include
	main     *mainSections // defaults when the file has none of them
	hasMain  bool

	trackScripts []*TrackScript
	vipGroups    []*VIPGroup
	services     []*Service
	fileRefs     []fileRef // ca_file paths to check at assembly
}

type include struct {
	pattern string // resolved against the including file's directory
	pos     Pos
}

type fileRef struct {
	path string
	pos  Pos
	key  string
}

// mainSections are the sections only the main file may hold.
type mainSections struct {
	first Pos // of the first such section, for "only in the main file"

	node      Node
	nodeNameP Pos
	ipvs      IPVS
	syncIfP   Pos
	cluster   *Cluster
	clusterAt positions
	control   Control
	tokenP    Pos
	metrics   Metrics
}

type decoder struct {
	src  *source
	e    *errs
	dir  string
	f    *fragment
	seen backendSet // the current service's backends
}

// decodeFile parses and decodes one file's text.
func decodeFile(file string, data []byte) *fragment { return decodeFileIn(nil, file, data) }

// decodeFileIn is decodeFile with the parse tree in a (nil: no reuse),
// which it resets first: the previous file's tree must be dead.
func decodeFileIn(a *treeArena, file string, data []byte) *fragment {
	src := &source{file: file, data: data}
	if a != nil {
		a.reset()
		src.lineStarts = a.lines[:0]
		defer func() { a.lines = src.lineStarts[:0] }()
	}
	e := &errs{}
	f := &fragment{file: file}
	root, ok := parseTreeIn(a, src, e)
	f.syntaxOK = ok
	if ok {
		d := &decoder{src: src, e: e, dir: filepath.Dir(file), f: f}
		d.root(newReader(src, e, root))
	}
	f.errs = e.list
	return f
}

func (d *decoder) root(r *reader) {
	if vals, ok := r.elems("include"); ok {
		for i, v := range vals {
			if v.kind != kString || v.str == "" {
				d.e.at(d.src.pos(v.off), "include[%d]: want a non-empty glob string", i)
				continue
			}
			p := v.str
			if !filepath.IsAbs(p) {
				p = filepath.Join(d.dir, p)
			}
			if _, err := filepath.Match(p, ""); err != nil {
				d.e.at(d.src.pos(v.off), "include[%d]: bad glob %q: %v", i, v.str, err)
				continue
			}
			d.f.includes = append(d.f.includes, include{pattern: p, pos: d.src.pos(v.off)})
		}
	}

	m := &mainSections{}
	found := false
	for _, k := range []string{"node", "ipvs", "cluster", "control", "metrics"} {
		if r.has(k) {
			p := r.pos(k)
			if !found || p.Line < m.first.Line {
				m.first = p
			}
			found = true
		}
	}
	// Each sub-reader is made right before it is read: the keys a reader
	// asks for stack up above those its parent asked before it.
	node := r.sub("node")
	d.node(&node, m)
	ipvs := r.sub("ipvs")
	d.ipvs(&ipvs, m)
	if cluster := r.sub("cluster"); cluster.t != nil {
		m.cluster = d.cluster(&cluster, m)
	}
	control := r.sub("control")
	d.control(&control, m)
	metrics := r.sub("metrics")
	d.metrics(&metrics, m)
	d.f.main, d.f.hasMain = m, found

	for _, v := range r.tables("track_script") {
		tr := r.at("track_script", v)
		if ts := d.trackScript(&tr); ts != nil {
			d.f.trackScripts = append(d.f.trackScripts, ts)
		}
	}
	for _, v := range r.tables("vip_group") {
		gr := r.at("vip_group", v)
		if g := d.vipGroup(&gr); g != nil {
			d.f.vipGroups = append(d.f.vipGroups, g)
		}
	}
	for _, v := range r.tables("service") {
		sr := r.at("service", v)
		if s := d.service(&sr); s != nil {
			d.f.services = append(d.f.services, s)
		}
	}
	r.done()
}
