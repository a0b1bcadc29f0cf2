package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestDefaults(t *testing.T) {
	cfg := mustLoad(t, `
[node]
interface = "eth0"
[[vip_group]]
name = "web"
addresses = ["198.18.0.100/32"]
[[track_script]]
name = "chk"
command = ["/bin/true"]
weight = -20
[[vip_group]]
name = "v6"
addresses = ["2001:db8::100/128"]
track_script = [{ name = "chk" }, { name = "chk", weight = -5 }]
[[service]]
name = "web"
address = "198.18.1.100"
port = 80
  [service.check]
  type = "http"
  [[service.backend]]
  address = "198.18.1.1"
[[service]]
name = "v6"
address = "2001:db8::1"
port = 443
persistent = true
[[service]]
name = "fwm"
fwmark = 8
persistent = true
  [[service.backend]]
  address = "198.18.1.2"
`)
	if cfg.Node.Name != "dir-a" || cfg.Node.StateDir != "/var/lib/lvsd" {
		t.Errorf("node defaults: %+v", cfg.Node)
	}
	if !cfg.IPVS.ExpireNodestConn || !cfg.IPVS.ExpireQuiescentTemplate || cfg.IPVS.ResyncInterval != 30*time.Second ||
		cfg.IPVS.Sync.Enabled || cfg.IPVS.Sync.Interface != "eth0" {
		t.Errorf("ipvs defaults: %+v", cfg.IPVS)
	}
	if cfg.Cluster != nil || cfg.Control.Socket != "/run/lvsd/lvsd.sock" || cfg.Control.Listen.IsValid() || cfg.Metrics.Listen.IsValid() || !cfg.Metrics.PerBackend {
		t.Errorf("cluster %v control %+v metrics %+v", cfg.Cluster, cfg.Control, cfg.Metrics)
	}
	g := cfg.VIPGroup("web")
	if g.Interface != "eth0" || g.Priority != 100 || !g.Preempt || g.PreemptDelay != 0 || g.GARPCount != 5 ||
		g.GARPInterval != 20*time.Millisecond || g.GARPRefresh != 10*time.Second || g.NotifyTimeout != 5*time.Second {
		t.Errorf("vip group defaults: %+v", g)
	}
	if ts := cfg.VIPGroup("v6").TrackScripts; len(ts) != 2 || ts[0].Weight != -20 || ts[1].Weight != -5 {
		t.Errorf("track script weights: %+v", ts)
	}
	script := cfg.TrackScripts[0]
	if script.Interval != time.Second || script.Timeout != 500*time.Millisecond || script.Rise != 1 || script.Fall != 1 {
		t.Errorf("track script defaults: %+v", script)
	}

	s := cfg.Service("web")
	if s.Protocol != TCP || s.Scheduler != "wlc" || s.Persistent() || s.PersistenceBits != 32 || s.Forward != ForwardDR ||
		s.OnFailure != OnFailureRemove || s.Family != IPv4 || s.SorryServer.IsValid() {
		t.Errorf("service defaults: %+v", s)
	}
	c := s.Check
	if c.Type != CheckHTTP || c.Interval != time.Second || c.Timeout != 500*time.Millisecond || c.Rise != 2 || c.Fall != 3 ||
		c.InitialDelay != time.Second || c.Method != "GET" || c.Path != "/" || !c.TLSVerify ||
		!reflect.DeepEqual(c.Status, []StatusRange{{200, 299}}) {
		t.Errorf("check defaults: %+v", c)
	}
	b := s.Backends[0]
	if b.Port != 80 || b.Weight != 1 || b.Forward != ForwardDR || b.Check != s.Check || b.Key() != netip.MustParseAddrPort("198.18.1.1:80") {
		t.Errorf("backend defaults: %+v", b)
	}
	if v6 := cfg.Service("v6"); v6.Persistence != 360*time.Second || v6.PersistenceBits != 128 || v6.Family != IPv6 || v6.Check.Type != CheckNone {
		t.Errorf("v6 service: %+v", v6)
	}
	f := cfg.Service("fwm")
	if f.Protocol != "" || f.Family != IPv4 || f.Key() != (VirtualKey{Family: IPv4, FWMark: 8}) || f.Backends[0].Port != 0 {
		t.Errorf("fwmark service: %+v key %v", f, f.Key())
	}
	if !cfg.NeedsIPVS() {
		t.Error("NeedsIPVS false with services")
	}
}

func TestNoServicesNoIPVS(t *testing.T) {
	cfg := mustLoad(t, "[node]\ninterface = \"eth0\"\n[[vip_group]]\nname = \"g\"\naddresses = [\"198.18.0.1/32\"]\n")
	if cfg.NeedsIPVS() {
		t.Error("a VRRP-only config must not need IPVS")
	}
	cfg = mustLoad(t, "[ipvs.sync]\nenabled = true\ninterface = \"eth1\"\n")
	if !cfg.NeedsIPVS() {
		t.Error("the sync daemon needs IPVS")
	}
}

func TestParsedValues(t *testing.T) {
	cfg := mustLoad(t, `
[[service]]
name = "s"
address = "::ffff:198.18.1.1"
port = 443
persistence = "6m"
persistence_granularity = "255.255.255.0"
scheduler = "sh"
scheduler_flags = ["sh-port", "sh-fallback"]
sorry_server = "198.18.2.9"
  [service.check]
  type = "https"
  status = [200, "301-302"]
  body_sha256 = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
  body_regex = "ok|ready"
  headers = { "X-Check" = "lvsd" }
  [[service.backend]]
  address = "198.18.1.5"
  forward = "nat"
  port = 8443
  upper_threshold = 100
  lower_threshold = 50
    [service.backend.check]
    type = "dns"
    query_name = "example.org"
    query_type = "aaaa"
    rcode = "nxdomain"
`)
	s := cfg.Services[0]
	if s.Address != netip.MustParseAddr("198.18.1.1") || s.Persistence != 6*time.Minute || s.PersistenceBits != 24 ||
		s.SorryServer != netip.MustParseAddrPort("198.18.2.9:443") || len(s.SchedulerFlags) != 2 {
		t.Errorf("service: %+v", s)
	}
	if c := s.Check; len(c.BodySHA256) != 32 || !c.BodyRegex.MatchString("ready") || c.Headers["X-Check"] != "lvsd" ||
		!reflect.DeepEqual(c.Status, []StatusRange{{200, 200}, {301, 302}}) {
		t.Errorf("check: %+v", c)
	}
	b := s.Backends[0]
	if b.Port != 8443 || b.Forward != ForwardNAT || b.UpperThreshold != 100 || b.LowerThreshold != 50 {
		t.Errorf("backend: %+v", b)
	}
	// The override changes the type: inherited http keys are dropped.
	if c := b.Check; c.Type != CheckDNS || c.QueryName != "example.org." || c.QueryType != 28 || c.RCode != 3 {
		t.Errorf("backend check: %+v", c)
	}
	if s.PosOf("persistence").Line != 6 || s.Pos.Line != 2 || b.Pos.Line != 17 || b.Pos.Col != 3 {
		t.Errorf("positions: service %v persistence %v backend %v", s.Pos, s.PosOf("persistence"), b.Pos)
	}
}

func TestMetricsPerBackend(t *testing.T) {
	for _, tc := range []struct {
		text string
		want bool
	}{
		{"[metrics]\nlisten = \"127.0.0.1:9120\"\n", true},
		{"[metrics]\nper_backend = true\n", true},
		{"[metrics]\nlisten = \"127.0.0.1:9120\"\nper_backend = false\n", false},
	} {
		if got := mustLoad(t, tc.text).Metrics.PerBackend; got != tc.want {
			t.Errorf("%q: per_backend %v, want %v", tc.text, got, tc.want)
		}
	}
}

func TestBackendCheckOverride(t *testing.T) {
	_, es, ps := load(t, `
[[service]]
name = "s"
address = "198.18.1.1"
port = 80
  [service.check]
  type = "http"
  path = "/healthz"
  interval = "3s"
  [[service.backend]]
  address = "198.18.1.5"
    [service.backend.check]
    type = "tcp"
    @@host = "x"
`)
	if len(es) != 1 {
		t.Fatalf("want one error, got %v", es)
	}
	wantError(t, es, ps[0], "service.backend.check.host is not used by tcp checks")

	cfg := mustLoad(t, `
[[service]]
name = "s"
address = "198.18.1.1"
port = 80
  [service.check]
  type = "http"
  path = "/healthz"
  interval = "3s"
  [[service.backend]]
  address = "198.18.1.5"
    [service.backend.check]
    path = "/other"
  [[service.backend]]
  address = "198.18.1.6"
`)
	s := cfg.Services[0]
	over, shared := s.Backends[0].Check, s.Backends[1].Check
	if over.Path != "/other" || over.Interval != 3*time.Second || over.Type != CheckHTTP || shared != s.Check || shared.Path != "/healthz" {
		t.Errorf("override %+v shared %+v", over, shared)
	}
}

func TestErrorsSortedAcrossFiles(t *testing.T) {
	main := `include = ["conf.d/*.toml"]
[node]
@@nmae = "x"
[[service]]
@@name = "dup"
address = "198.18.1.1"
port = 80
`
	a := `[[service]]
@@name = "dup"
address = "198.18.1.2"
port = 80
@@weight = 3
`
	b := `@@[node]
name = "x"
[[service]]
name = "b"
@@address = "198.18.1.1"
port = 80
`
	_, es, marks := loadMem(t, []string{"/etc/lvsd/lvsd.toml"}, map[string]string{
		"/etc/lvsd/lvsd.toml": main, "/etc/lvsd/conf.d/a.toml": a, "/etc/lvsd/conf.d/b.toml": b})
	want := []struct {
		file string
		i    int
		msg  string
	}{
		{"/etc/lvsd/conf.d/a.toml", 0, `duplicate service name "dup" (first at /etc/lvsd/lvsd.toml:5:1)`},
		{"/etc/lvsd/conf.d/a.toml", 1, `unknown key "service.weight"`},
		{"/etc/lvsd/conf.d/b.toml", 0, "belong in the main config file"},
		{"/etc/lvsd/conf.d/b.toml", 1, `duplicates virtual service tcp 198.18.1.1:80 of service "dup"`},
		{"/etc/lvsd/lvsd.toml", 0, `unknown key "node.nmae"`},
	}
	if len(es) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(es), len(want), es)
	}
	for i, w := range want {
		p := marks[w.file][w.i]
		if es[i].Pos() != p || !strings.Contains(es[i].Msg, w.msg) {
			t.Errorf("error %d = %v, want %q at %s", i, es[i], w.msg, p)
		}
	}
	if got := es[0].Error(); !strings.HasPrefix(got, "/etc/lvsd/conf.d/a.toml:2:1: duplicate service name") {
		t.Errorf("Error() = %q, want file:line:col: message", got)
	}
	if !strings.Contains(es.Error(), "\n/etc/lvsd/conf.d/a.toml:5:1: ") {
		t.Errorf("Errors.Error() joins lines: %q", es.Error())
	}
}

func TestIncludes(t *testing.T) {
	dir := writeDir(t, map[string]string{
		"lvsd.toml": `include = ["conf.d/*.toml", "extra.toml"]
[node]
interface = "eth0"
`,
		"conf.d/10-web.toml": `include = ["../groups/*.toml"]
[[service]]
name = "web"
group = "web"
address = "198.18.1.100"
port = 80
`,
		"conf.d/20-dns.toml": `[[service]]
name = "dns"
address = "198.18.1.100"
port = 53
protocol = "udp"
`,
		"conf.d/ignored.conf": "this is not toml",
		"groups/web.toml": `[[vip_group]]
name = "web"
addresses = ["198.18.1.100/32"]
[[track_script]]
name = "t"
command = ["/bin/true"]
`,
		"extra.toml": `include = ["lvsd.toml", "conf.d/*.toml"]   # cycles and repeats count once
`,
	})
	l := &Loader{Hostname: func() (string, error) { return "dir-a", nil }}
	cfg, err := l.Load(filepath.Join(dir, "lvsd.toml"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range cfg.Services {
		names = append(names, s.Name)
	}
	if !reflect.DeepEqual(names, []string{"web", "dns"}) || len(cfg.VIPGroups) != 1 || len(cfg.TrackScripts) != 1 || len(cfg.Files) != 5 {
		t.Fatalf("services %v groups %d scripts %d files %v", names, len(cfg.VIPGroups), len(cfg.TrackScripts), cfg.Files)
	}
	if cfg.VIPGroups[0].Interface != "eth0" {
		t.Errorf("vip group in an included file takes node.interface, got %q", cfg.VIPGroups[0].Interface)
	}

	// A literal include that does not exist is an error at its position.
	main := filepath.Join(dir, "missing.toml")
	if err := os.WriteFile(main, []byte("include = [\"conf.d/*.toml\", \"nope.toml\"]\n[node]\ninterface = \"eth0\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = l.Load(main)
	var es Errors
	if !errors.As(err, &es) || len(es) != 1 || es[0].Line != 1 || es[0].Col != 29 || !strings.Contains(es[0].Msg, "no such file") {
		t.Fatalf("missing include: %v", err)
	}
	// A missing main file.
	if _, err := l.Load(filepath.Join(dir, "absent.toml")); !errors.As(err, &es) || !strings.Contains(es.Error(), "absent.toml: no such file") {
		t.Fatalf("missing main file: %v", err)
	}
}

func TestLoaderCache(t *testing.T) {
	files := map[string]string{
		"lvsd.toml": "include = [\"conf.d/*.toml\"]\n[node]\ninterface = \"eth0\"\n",
	}
	for i := range 3 {
		files[filepath.Join("conf.d", string(rune('a'+i))+".toml")] = serviceFile(i, 2, 2, 1)
	}
	dir := writeDir(t, files)
	main := filepath.Join(dir, "lvsd.toml")
	l := &Loader{Hostname: func() (string, error) { return "dir-a", nil }}
	first, err := l.Load(main)
	if err != nil {
		t.Fatal(err)
	}
	second, err := l.Load(main)
	if err != nil {
		t.Fatal(err)
	}
	for i := range first.Services {
		if first.Services[i] != second.Services[i] {
			t.Fatalf("unchanged file re-decoded: service %d", i)
		}
	}

	// Change one weight in b.toml: only its services are new.
	changed := filepath.Join(dir, "conf.d", "b.toml")
	if err := os.WriteFile(changed, []byte(serviceFile(1, 2, 2, 7)), 0o644); err != nil {
		t.Fatal(err)
	}
	third, err := l.Load(main)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range third.Services {
		fromB := strings.HasPrefix(s.Pos.File, changed)
		if fromB == (s == second.Services[i]) {
			t.Errorf("service %s (file %s): reused=%v", s.Name, s.Pos.File, s == second.Services[i])
		}
		if fromB && s.Backends[0].Weight != 7 {
			t.Errorf("service %s: weight %d, want 7", s.Name, s.Backends[0].Weight)
		}
	}

	// A removed file leaves the config and the cache.
	if err := os.Remove(changed); err != nil {
		t.Fatal(err)
	}
	fourth, err := l.Load(main)
	if err != nil {
		t.Fatal(err)
	}
	if len(fourth.Services) != 4 || len(l.cache) != 3 {
		t.Errorf("after removal: %d services, %d cached files", len(fourth.Services), len(l.cache))
	}

	// An invalid edit fails the load; fixing it loads again.
	bad := filepath.Join(dir, "conf.d", "a.toml")
	if err := os.WriteFile(bad, []byte("[[service]]\nname = \"x\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Load(main); err == nil {
		t.Fatal("invalid file accepted")
	}
	if err := os.WriteFile(bad, []byte(serviceFile(0, 2, 2, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Load(main); err != nil {
		t.Fatal(err)
	}
}

func TestExampleConfigs(t *testing.T) {
	paths, err := filepath.Glob("../configs/*.toml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no example configs: %v", err)
	}
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			l := &Loader{Hostname: func() (string, error) { return "dir-a", nil }}
			cfg, err := l.Load(p)
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Services) == 0 && len(cfg.VIPGroups) == 0 && cfg.Cluster == nil {
				t.Error("example configures nothing")
			}
		})
	}
}

func TestSeedExamples(t *testing.T) {
	load := func(name string) *Config {
		cfg, err := Load(filepath.Join("..", "configs", name))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	rs := []netip.Addr{netip.MustParseAddr("198.18.1.65"), netip.MustParseAddr("198.18.1.66")}
	vip := netip.MustParseAddr("198.18.1.63")

	pcc := load("pcc.toml").Services
	if len(pcc) != 1 || pcc[0].Address != vip || pcc[0].Port != 0 || pcc[0].Scheduler != "rr" ||
		pcc[0].Persistence != 500*time.Second || pcc[0].Backends[1].Address != rs[1] || pcc[0].Backends[0].Forward != ForwardDR {
		t.Errorf("pcc: %+v", pcc[0])
	}
	ppc := load("ppc.toml").Services
	if len(ppc) != 2 || ppc[0].Port != 22 || ppc[1].Port != 80 || ppc[0].Persistence != 360*time.Second ||
		ppc[1].Persistence != 360*time.Second || len(ppc[0].Backends) != 1 || len(ppc[1].Backends) != 2 {
		t.Errorf("ppc: %+v %+v", ppc[0], ppc[1])
	}
	fwm := load("fwm.toml").Services
	if len(fwm) != 1 || fwm[0].FWMark != 8 || fwm[0].Persistence != 360*time.Second || fwm[0].Mark == nil ||
		!reflect.DeepEqual(fwm[0].Mark.Ports, []uint16{80, 443}) || fwm[0].Mark.Destination != netip.PrefixFrom(vip, 32) {
		t.Errorf("fwm: %+v", fwm[0])
	}
}

// Service looks a name up in the loaded config's own index: each Config
// answers with its own services across reloads, and a Config built by hand
// (no index) still answers.
func TestServiceLookup(t *testing.T) {
	fsys := newMemFS()
	fsys.write("/c/main.toml", "include = [\"d/*.toml\"]\n")
	fsys.write("/c/d/a.toml", serviceFile(0, 3, 1, 1))
	fsys.write("/c/d/b.toml", serviceFile(1, 3, 1, 1))
	l := &Loader{fs: fsys, Hostname: func() (string, error) { return "dir-a", nil }}
	first, err := l.Load("/c/main.toml")
	if err != nil {
		t.Fatal(err)
	}
	fsys.write("/c/d/b.toml", serviceFile(1, 3, 1, 5))
	second, err := l.Load("/c/main.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []*Config{first, second, {Services: first.Services}} {
		if len(cfg.Services) != 6 {
			t.Fatalf("%d services, want 6", len(cfg.Services))
		}
		for _, s := range cfg.Services {
			if got := cfg.Service(s.Name); got != s {
				t.Errorf("Service(%q) = %p, want %p", s.Name, got, s)
			}
		}
		if got := cfg.Service("svc-6"); got != nil {
			t.Errorf("Service(svc-6) = %v, want nil", got)
		}
	}
	if w := first.Service("svc-4").Backends[0].Weight; w != 1 {
		t.Errorf("first load's svc-4 has weight %d after the reload, want 1", w)
	}
	if w := second.Service("svc-4").Backends[0].Weight; w != 5 {
		t.Errorf("second load's svc-4 has weight %d, want 5", w)
	}
}

// Included files are decoded in parallel: the result (services in order,
// every error) is the same as decoding them one by one.
func TestParallelLoadMatchesSequential(t *testing.T) {
	tree := func(broken bool) *memFS {
		fsys := newMemFS()
		fsys.write("/c/main.toml", "include = [\"d/*.toml\", \"e/x.toml\"]\n")
		for i := range 30 {
			fsys.write(fmt.Sprintf("/c/d/%02d.toml", i), serviceFile(i, 3, 2, 1))
		}
		// Nested, and also included by the main file: visited once, here.
		fsys.write("/c/d/25.toml", "include = [\"../e/x.toml\"]\n"+serviceFile(25, 3, 2, 1))
		fsys.write("/c/e/x.toml", "[[service]]\nname = \"x\"\naddress = \"198.18.8.8\"\nport = 80\n")
		if broken {
			fsys.write("/c/d/07.toml", serviceFile(7, 3, 2, 1)+"[[service]]\nname = \"svc-0\"\naddress = \"198.18.9.9\"\nport = 80\n")
			fsys.write("/c/d/13.toml", "[[service]\nname = \"broken\"\n")
			fsys.write("/c/d/21.toml", serviceFile(21, 3, 2, 70000))
		}
		return fsys
	}
	load := func(procs int) string {
		t.Helper()
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
		_, err := (&Loader{fs: tree(true), Hostname: func() (string, error) { return "dir-a", nil }}).Load("/c/main.toml")
		if err == nil {
			t.Fatal("broken config loaded")
		}
		cfg, err2 := (&Loader{fs: tree(false), Hostname: func() (string, error) { return "dir-a", nil }}).Load("/c/main.toml")
		if err2 != nil {
			t.Fatal(err2)
		}
		var names []string
		for _, s := range cfg.Services {
			names = append(names, s.Name)
		}
		return err.Error() + "\n" + strings.Join(names, " ") + "\n" + strings.Join(cfg.Files, " ")
	}
	seq, par := load(1), load(4)
	if seq != par {
		t.Errorf("sequential load:\n%s\nparallel load:\n%s", seq, par)
	}
	for _, want := range []string{"/c/d/07.toml:", "/c/d/13.toml:", "/c/d/21.toml:", "svc-0 svc-1 svc-2 svc-3", "svc-75 svc-76 svc-77 x svc-78"} {
		if !strings.Contains(seq, want) {
			t.Errorf("result lacks %q:\n%s", want, seq)
		}
	}
}

// The cross-file index is kept between loads and updated per file: clashes
// must appear and disappear as files change, on the same Loader.
func TestLoaderIndexAcrossReloads(t *testing.T) {
	fsys := newMemFS()
	fsys.write("/c/main.toml", "include = [\"d/*.toml\"]\n")
	fsys.write("/c/d/a.toml", "[[service]]\nname = \"a\"\naddress = \"198.18.1.1\"\nport = 80\n")
	fsys.write("/c/d/b.toml", "[[service]]\nname = \"b\"\naddress = \"198.18.1.2\"\nport = 80\n")
	l := &Loader{fs: fsys, Hostname: func() (string, error) { return "dir-a", nil }}
	mustOK := func() {
		t.Helper()
		if _, err := l.Load("/c/main.toml"); err != nil {
			t.Fatal(err)
		}
	}
	mustFail := func(msg string) {
		t.Helper()
		_, err := l.Load("/c/main.toml")
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Fatalf("want error %q, got %v", msg, err)
		}
	}
	mustOK()
	fsys.write("/c/d/b.toml", "[[service]]\nname = \"a\"\naddress = \"198.18.1.1\"\nport = 80\n")
	mustFail(`/c/d/b.toml:2:1: duplicate service name "a" (first at /c/d/a.toml:2:1)`)
	mustFail(`/c/d/b.toml:3:1: service "a" duplicates virtual service tcp 198.18.1.1:80 of service "a"`)
	fsys.write("/c/d/a.toml", "[[service]]\nname = \"c\"\naddress = \"198.18.1.3\"\nport = 80\n")
	mustOK()
	delete(fsys.files, "/c/d/a.toml")
	fsys.write("/c/d/0.toml", "[[service]]\nname = \"a\"\naddress = \"198.18.1.9\"\nport = 80\n")
	mustFail(`/c/d/b.toml:2:1: duplicate service name "a" (first at /c/d/0.toml:2:1)`)
	delete(fsys.files, "/c/d/0.toml")
	mustOK()
	if n := len(l.index.names.m); n != 1 {
		t.Errorf("index holds %d names after removals, want 1", n)
	}
}

// Every key the decoder knows must appear in configs/reference.toml.
func TestReferenceDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile("../configs/reference.toml")
	if err != nil {
		t.Fatal(err)
	}
	src := &source{file: "reference.toml", data: data}
	e := &errs{}
	root, ok := parseTree(src, e)
	if !ok || len(e.list) > 0 {
		t.Fatalf("reference does not parse: %v", e.list)
	}
	d := &decoder{src: src, e: e, dir: "/etc/lvsd", f: &fragment{}}
	r := newReader(src, e, root)
	r.rc.record = map[string]bool{}
	d.root(r)

	present := map[string]bool{}
	var walk func(prefix string, t *table)
	walk = func(prefix string, t *table) {
		for i, k := range t.keys {
			name := k
			if prefix != "" {
				name = prefix + "." + k
			}
			present[name] = true
			v := t.vals[i]
			switch {
			case v.kind == kTable && name != "service.check.headers":
				walk(name, v.tab)
			case v.kind == kArray:
				for _, el := range v.arr {
					if el.kind == kTable {
						walk(name, el.tab)
					}
				}
			}
		}
	}
	walk("", root)
	for name := range r.rc.record {
		doc := strings.Replace(name, "service.backend.check.", "service.check.", 1)
		if strings.HasPrefix(doc, "service.check.headers.") {
			continue // header names are the user's
		}
		if !present[doc] {
			t.Errorf("key %q is not in configs/reference.toml", doc)
		}
	}
	if len(r.rc.record) < 100 {
		t.Errorf("recorded only %d keys; the recording hook is broken", len(r.rc.record))
	}
}

func TestHAExamples(t *testing.T) {
	var cfgs []*Config
	for _, name := range []string{"ha-dir-a.toml", "ha-dir-b.toml", "witness.toml"} {
		cfg, err := Load(filepath.Join("..", "configs", name))
		if err != nil {
			t.Fatal(err)
		}
		cfgs = append(cfgs, cfg)
	}
	a, b, w := cfgs[0], cfgs[1], cfgs[2]
	if len(a.Services) != 1 || len(b.Services) != 1 || a.Services[0].Group != "web" || a.VIPGroups[0].Priority <= b.VIPGroups[0].Priority {
		t.Errorf("directors: a %d services prio %d, b %d services prio %d", len(a.Services), a.VIPGroups[0].Priority, len(b.Services), b.VIPGroups[0].Priority)
	}
	if w.NeedsIPVS() || len(w.VIPGroups) != 0 || !reflect.DeepEqual(w.Cluster.Members, a.Cluster.Members) || !reflect.DeepEqual(w.Cluster.Witnesses, []string{"witness-1"}) {
		t.Errorf("witness: %+v", w.Cluster)
	}
	if a.Cluster.Bind == b.Cluster.Bind || len(a.Cluster.Peers) != 2 {
		t.Errorf("cluster addresses: a %v b %v peers %v", a.Cluster.Bind, b.Cluster.Bind, a.Cluster.Peers)
	}
}

func TestGRPCCheck(t *testing.T) {
	c := mustLoad(t, `
[[service]]
name = "api"
address = "198.18.0.100"
port = 9090
  [service.check]
  type = "grpc"
  grpc_service = "pkg.Svc"
  tls = true
  sni = "api.example"
  [[service.backend]]
  address = "198.18.1.65"
`)
	ch := c.Services[0].Check
	if ch.Type != CheckGRPC || ch.GRPCService != "pkg.Svc" || !ch.TLS || ch.SNI != "api.example" || !ch.TLSVerify {
		t.Fatalf("grpc check = %+v", ch)
	}
	_, errs, _ := load(t, `
[[service]]
name = "api"
address = "198.18.0.100"
port = 9090
  [service.check]
  type = "tcp"
  tls = true
  [[service.backend]]
  address = "198.18.1.65"
`)
	if len(errs) != 1 || !strings.Contains(errs[0].Msg, "not used by tcp checks") {
		t.Fatalf("tls on a tcp check: %v", errs)
	}
}
