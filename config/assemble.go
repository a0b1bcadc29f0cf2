package config

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// assemble merges the files' fragments into one Config and runs the checks
// that span files or touch the disk. Cached fragments are shared, so it
// copies what it changes (vip groups, track scripts) and never writes to a
// fragment's services.
func (l *Loader) assemble(frags []*fragment, e *errs) *Config {
	mainFrag := frags[0]
	cfg := &Config{File: mainFrag.file}
	allSyntaxOK := true
	for _, f := range frags {
		cfg.Files = append(cfg.Files, f.file)
		e.list = append(e.list, f.errs...)
		allSyntaxOK = allSyntaxOK && f.syntaxOK
		if f != mainFrag && f.hasMain {
			e.at(f.main.first, "[node], [ipvs], [cluster], [control] and [metrics] belong in the main config file (%s), not in an included file", mainFrag.file)
		}
	}
	m := mainFrag.main
	if m == nil { // the main file had a syntax error before anything
		m = decodeFile(mainFrag.file, nil).main
	}
	cfg.Node, cfg.IPVS, cfg.Control, cfg.Metrics = m.node, m.ipvs, m.control, m.metrics

	if cfg.Node.Name == "" {
		hostname := l.Hostname
		if hostname == nil {
			hostname = os.Hostname
		}
		h, err := hostname()
		if err != nil || !validName(h) {
			e.at(Pos{File: mainFrag.file}, "node.name is not set and the host name is unusable (%v): set node.name", err)
		}
		cfg.Node.Name = h
	}
	if cfg.IPVS.Sync.Interface == "" {
		cfg.IPVS.Sync.Interface = cfg.Node.Interface
	}
	if cfg.IPVS.Sync.Enabled && cfg.IPVS.Sync.Interface == "" {
		e.at(m.syncIfP, "ipvs.sync.interface is required when sync is enabled (or set node.interface)")
	}
	if m.cluster != nil {
		c := *m.cluster
		cfg.Cluster = &c
		if len(c.Members) > 0 && !slices.Contains(c.Members, cfg.Node.Name) {
			p := c.Pos
			if m.nodeNameP.IsValid() {
				p = m.nodeNameP
			}
			e.at(p, "node name %q is not in cluster.members (%s)", cfg.Node.Name, strings.Join(c.Members, ", "))
		}
		if c.KeyFile != "" {
			kp := m.clusterAt.get("key_file", c.Pos)
			b, err := l.files().readFile(c.KeyFile, 4096)
			if err != nil {
				e.at(kp, "cluster.key_file: cannot read %s: %v", c.KeyFile, bare(err))
			} else if key, ok := decodeKey(b); ok {
				c.Key = key
			} else {
				e.at(kp, "cluster.key_file: %s must hold a 32-byte key, raw or base64 (it has %d bytes)", c.KeyFile, len(b))
			}
		}
	}
	if (cfg.Cluster != nil || hasVIPGroups(frags)) && len(cfg.Node.Name) > maxElectionName {
		p := Pos{File: mainFrag.file}
		if m.nodeNameP.IsValid() {
			p = m.nodeNameP
		}
		e.at(p, "node.name: %q is %d bytes long; %s", cfg.Node.Name, len(cfg.Node.Name), electionNameLimit)
	}
	if tf := cfg.Control.TokenFile; tf != "" {
		checkToken(l.files(), tf, m.tokenP, e)
	}
	checked := map[string]bool{}
	for _, f := range frags {
		for _, ref := range f.fileRefs {
			if checked[ref.path] {
				continue
			}
			checked[ref.path] = true
			if _, _, err := l.files().stat(ref.path); err != nil {
				e.at(ref.pos, "%s: cannot read %s: %v", ref.key, ref.path, bare(err))
			}
		}
	}

	// Track scripts.
	scripts := map[string]*TrackScript{}
	for _, f := range frags {
		for _, ts := range f.trackScripts {
			if first, dup := scripts[ts.Name]; dup {
				e.at(ts.Pos, "duplicate track_script %q (first at %s)", ts.Name, first.Pos)
				continue
			}
			scripts[ts.Name] = ts
			cfg.TrackScripts = append(cfg.TrackScripts, ts)
		}
	}

	// Services: names, kernel identities, marks, through the index the
	// Loader keeps between loads.
	n := 0
	order := make(map[string]int, len(frags))
	for i, f := range frags {
		n += len(f.services)
		order[f.file] = i
	}
	cfg.Services = make([]*Service, 0, n)
	for _, f := range frags {
		cfg.Services = append(cfg.Services, f.services...)
	}
	cfg.loaded = true
	l.index.update(frags)
	loadOrder := func(a, b *Service) int {
		if c := order[a.Pos.File] - order[b.Pos.File]; c != 0 {
			return c
		}
		if a.Pos.Line != b.Pos.Line {
			return a.Pos.Line - b.Pos.Line
		}
		return a.Pos.Col - b.Pos.Col
	}
	l.index.names.clashes(loadOrder, func(name string, first, s *Service) {
		e.at(s.PosOf("name"), "duplicate service name %q (first at %s)", name, first.PosOf("name"))
	})
	l.index.keys.clashes(loadOrder, func(_ compactKey, first, s *Service) {
		p := s.PosOf("address")
		if s.FWMark != 0 {
			p = s.PosOf("fwmark")
		}
		e.at(p, "service %q duplicates virtual service %s of service %q (at %s)", s.Name, s.Key(), first.Name, first.Pos)
	})
	l.index.marks.clashes(loadOrder, func(mk markKey, first, s *Service) {
		e.at(s.Mark.Pos, "service %q marks the same traffic (%s %s port %d) as service %q (at %s)",
			s.Name, mk.proto, mk.dst, mk.port, first.Name, first.Mark.Pos)
	})

	// VIP groups: copies, since defaults from [node] are filled in here.
	groups := map[string]*VIPGroup{}
	owner := map[netip.Addr]*VIPGroup{}
	for _, f := range frags {
		for _, fg := range f.vipGroups {
			g := *fg
			if first, dup := groups[g.Name]; dup {
				e.at(g.PosOf("name"), "duplicate vip_group %q (first at %s)", g.Name, first.PosOf("name"))
				continue
			}
			groups[g.Name] = &g
			if g.Interface == "" {
				g.Interface = cfg.Node.Interface
			}
			if g.Interface == "" {
				e.at(g.Pos, "vip_group %q needs an interface (or set node.interface)", g.Name)
			}
			for i, a := range g.Addresses {
				if first, dup := owner[a.Addr()]; dup {
					e.at(g.PosOf(fmt.Sprintf("addresses[%d]", i)), "address %s is in vip_group %q and %q (at %s): an address belongs to one group",
						a.Addr(), first.Name, g.Name, first.Pos)
					continue
				}
				owner[a.Addr()] = &g
			}
			g.TrackScripts = slices.Clone(g.TrackScripts)
			for i := range g.TrackScripts {
				ref := &g.TrackScripts[i]
				ts, ok := scripts[ref.Name]
				switch {
				case !ok && allSyntaxOK:
					e.at(ref.Pos, "vip_group %q tracks unknown track_script %q", g.Name, ref.Name)
				case ok && ref.Weight == noWeight:
					ref.Weight = ts.Weight
				}
				if ref.Weight == noWeight {
					ref.Weight = 0
				}
			}
			for _, ref := range g.TrackServices {
				if !l.index.names.has(ref.Name) && allSyntaxOK {
					e.at(ref.Pos, "vip_group %q tracks unknown service %q", g.Name, ref.Name)
				}
			}
			cfg.VIPGroups = append(cfg.VIPGroups, &g)
		}
	}
	if allSyntaxOK {
		for _, s := range cfg.Services {
			if s.Group != "" && groups[s.Group] == nil {
				e.at(s.PosOf("group"), "service %q follows unknown vip_group %q", s.Name, s.Group)
			}
		}
	}
	return cfg
}

func hasVIPGroups(frags []*fragment) bool {
	for _, f := range frags {
		if len(f.vipGroups) > 0 {
			return true
		}
	}
	return false
}

// minTokenLen is the shortest control token lvsd takes (white space
// trimmed), as the daemon checks at start.
const minTokenLen = 16

// checkToken reads the control token file as lvsd does at start; the
// messages never show the token.
func checkToken(fsys fileSystem, path string, p Pos, e *errs) {
	b, err := fsys.readFile(path, 1<<20)
	if err != nil {
		e.at(p, "control.token_file: cannot read %s: %v", path, bare(err))
		return
	}
	const hint = "make one with: head -c 32 /dev/urandom | base64 > "
	switch n := len(strings.TrimSpace(string(b))); {
	case n == 0:
		e.at(p, "control.token_file: %s is empty; %s%s", path, hint, path)
	case n < minTokenLen:
		e.at(p, "control.token_file: the token in %s has %d characters, lvsd needs at least %d; %s%s", path, n, minTokenLen, hint, path)
	}
}
