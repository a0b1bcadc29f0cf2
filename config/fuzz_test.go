package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzLoad loads arbitrary text as the main file (with an included file and
// a key file beside it, all in memory). It must never panic, and its result
// must be either a config whose references are filled in, or a sorted list
// of errors that each name a file and say something.
func FuzzLoad(f *testing.F) {
	paths, _ := filepath.Glob("../configs/*.toml")
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(string(b))
		}
	}
	for _, tc := range semanticCases {
		text, _ := strip(tc.text)
		f.Add(text)
	}
	f.Add(`include = ["conf.d/*.toml"]
[cluster]
bind = "198.18.0.11:7946"
key_file = "gossip.key"
members = ["dir-a"]
`)
	f.Fuzz(func(t *testing.T, text string) {
		fsys := newMemFS()
		fsys.write("/etc/lvsd/lvsd.toml", text)
		fsys.write("/etc/lvsd/conf.d/a.toml", "[[service]]\nname = \"inc\"\naddress = \"198.18.9.1\"\nport = 80\n")
		fsys.write("/etc/lvsd/gossip.key", strings.Repeat("k", 32))
		l := &Loader{fs: fsys, Hostname: func() (string, error) { return "dir-a", nil }}
		cfg, err := l.Load("/etc/lvsd/lvsd.toml")
		if err != nil {
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error %T %v is not a non-empty Errors", err, err)
			}
			for _, e := range es {
				if e.File == "" || e.Msg == "" || e.Line < 0 || e.Col < 0 || (e.Line > 0 && e.Col == 0) {
					t.Fatalf("malformed error %#v", e)
				}
			}
			if !slices.IsSortedFunc(es, func(a, b Error) int {
				if c := strings.Compare(a.File, b.File); c != 0 {
					return c
				}
				if a.Line != b.Line {
					return a.Line - b.Line
				}
				return a.Col - b.Col
			}) {
				t.Fatalf("errors not sorted:\n%v", es)
			}
			return
		}
		for _, s := range cfg.Services {
			if s.Check == nil || s.Name == "" || (s.Family != IPv4 && s.Family != IPv6) || !s.Pos.IsValid() {
				t.Fatalf("incomplete service %+v", s)
			}
			for _, b := range s.Backends {
				if b.Check == nil || !b.Address.IsValid() || b.Weight < 0 || b.Weight > 65535 {
					t.Fatalf("incomplete backend %+v", b)
				}
			}
		}
		for _, g := range cfg.VIPGroups {
			if g.Interface == "" || len(g.Addresses) == 0 || g.Priority < 1 || g.Priority > 254 {
				t.Fatalf("incomplete vip group %+v", g)
			}
		}
	})
}
