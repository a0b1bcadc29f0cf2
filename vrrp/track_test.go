package vrrp

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func intp(i int) *int { return &i }

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestEffectivePriority(t *testing.T) {
	scripts := map[string]*TrackScriptSpec{
		"chk":   {Name: "chk", Weight: -30},
		"bonus": {Name: "bonus", Weight: 20},
		"hard":  {Name: "hard", Weight: 0},
	}
	g := &GroupSpec{Name: "web", Interface: "eth0", Priority: 150,
		TrackInterface: []TrackInterface{{Name: "eth1", Weight: -50}, {Name: "eth2", Weight: 0}},
		TrackScript:    []TrackRef{{Name: "chk"}, {Name: "bonus"}, {Name: "hard"}, {Name: "chk", Weight: intp(-5)}},
		TrackService:   []TrackRef{{Name: "svc", Weight: intp(-40)}, {Name: "vital"}},
	}
	allUp := func() trackState {
		return trackState{links: map[string]bool{"eth0": true, "eth1": true, "eth2": true},
			scripts: map[string]bool{"chk": true, "bonus": true, "hard": true}, services: map[string]bool{}}
	}
	cases := []struct {
		name   string
		mod    func(*trackState)
		o      Override
		prio   uint8
		fault  bool
		reason string
	}{
		{"all up: bonus applies", nil, OverrideNone, 170, false, ""},
		{"unknown scripts count as up", func(s *trackState) { s.scripts = map[string]bool{} }, OverrideNone, 170, false, ""},
		{"tracked link down lowers", func(s *trackState) { s.links["eth1"] = false }, OverrideNone, 120, false, ""},
		{"script failing lowers by both refs", func(s *trackState) { s.scripts["chk"] = false }, OverrideNone, 135, false, ""},
		{"positive weight lost when failing", func(s *trackState) { s.scripts["bonus"] = false }, OverrideNone, 150, false, ""},
		{"weight 0 script: fault", func(s *trackState) { s.scripts["hard"] = false }, OverrideNone, 170, true, "track script hard failing"},
		{"weight 0 link: fault", func(s *trackState) { s.links["eth2"] = false }, OverrideNone, 170, true, "tracked interface eth2 down"},
		{"own interface down: fault", func(s *trackState) { s.links["eth0"] = false }, OverrideNone, 170, true, "interface eth0 down"},
		{"missing interface: fault", func(s *trackState) { delete(s.links, "eth0") }, OverrideNone, 170, true, "eth0 down"},
		{"service quorum lost lowers", func(s *trackState) { s.services["svc"] = false }, OverrideNone, 130, false, ""},
		{"service quorum lost, weight 0: fault", func(s *trackState) { s.services["vital"] = false }, OverrideNone, 170, true, "service vital lost quorum"},
		{"failures add up", func(s *trackState) {
			s.links["eth1"] = false
			s.scripts["chk"] = false
			s.scripts["bonus"] = false
			s.services["svc"] = false
		}, OverrideNone, 25, false, ""},
		{"demote", nil, OverrideDemote, 1, false, ""},
		{"promote", nil, OverridePromote, 255, false, ""},
		{"operator fault", nil, OverrideFault, 170, true, "set by operator"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := allUp()
			if c.mod != nil {
				c.mod(&ts)
			}
			prio, fault, why := effective(g, scripts, ts, c.o)
			if prio != c.prio || fault != c.fault || !strings.Contains(why, c.reason) {
				t.Fatalf("got %d %v %q, want %d %v ~%q", prio, fault, why, c.prio, c.fault, c.reason)
			}
		})
	}
	low := &GroupSpec{Name: "x", Interface: "eth0", Priority: 10, TrackInterface: []TrackInterface{{Name: "eth1", Weight: -50}}}
	if prio, _, _ := effective(low, nil, trackState{links: map[string]bool{"eth0": true}}, OverrideNone); prio != 2 {
		t.Fatalf("clamp: got %d, want 2 (1 is reserved for demoted nodes)", prio)
	}
}

func TestRiseFall(t *testing.T) {
	r := riseFall{rise: 2, fall: 3}
	steps := []struct {
		ok      bool
		changed bool
		up      bool
	}{
		{true, true, true}, // first result decides at once
		{false, false, true},
		{false, false, true},
		{true, false, true}, // streak broken
		{false, false, true},
		{false, false, true},
		{false, true, false}, // third failure in a row
		{true, false, false},
		{true, true, true}, // second success in a row
	}
	for i, s := range steps {
		if changed := r.observe(s.ok); changed != s.changed || r.up != s.up {
			t.Fatalf("step %d (ok=%v): changed=%v up=%v, want %v %v", i, s.ok, changed, r.up, s.changed, s.up)
		}
	}
}

func TestRunScriptReportsChanges(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "fail")
	s := &TrackScriptSpec{Name: "chk", Command: []string{"sh", "-c", "test ! -e " + flag}, Interval: 10 * time.Millisecond,
		Timeout: time.Second, Rise: 1, Fall: 2}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got := make(chan bool, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runScript(ctx, s, discardLogger(), func(_ string, up bool, _ string) { got <- up })
	}()
	expect := func(want bool) {
		t.Helper()
		select {
		case up := <-got:
			if up != want {
				t.Fatalf("got up=%v, want %v", up, want)
			}
		case <-ctx.Done():
			t.Fatalf("no report (want up=%v)", want)
		}
	}
	expect(true)
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	expect(false)
	os.Remove(flag)
	expect(true)
	cancel()
	<-done
}

func TestExecOnceTimeoutAndExit(t *testing.T) {
	ctx := context.Background()
	if _, why := execOnce(ctx, []string{"sh", "-c", "sleep 5"}, 50*time.Millisecond, nil); !strings.Contains(why, "timeout after 50ms") {
		t.Fatalf("timeout: %q", why)
	}
	if out, why := execOnce(ctx, []string{"sh", "-c", "echo boom; exit 3"}, time.Second, nil); why != "exit status 3" || out != "boom" {
		t.Fatalf("exit: %q %q", out, why)
	}
	if _, why := execOnce(ctx, []string{"/nonexistent/x"}, time.Second, nil); why == "" {
		t.Fatal("missing binary reported success")
	}
}

func TestNotifyEnvironment(t *testing.T) {
	out := filepath.Join(t.TempDir(), "env")
	g := &GroupSpec{Name: "web", NotifyTimeout: time.Second,
		NotifyMaster: []string{"sh", "-c", `echo "$LVSD_GROUP $LVSD_STATE $LVSD_PREV_STATE $LVSD_REASON" > ` + out}}
	runNotify(context.Background(), g, RoleMaster, RoleBackup, "no live owner", discardLogger())
	b, err := os.ReadFile(out)
	if err != nil || strings.TrimSpace(string(b)) != "web master backup no live owner" {
		t.Fatalf("notify env: %q %v", b, err)
	}
}

func TestSpecValidate(t *testing.T) {
	good := func() Spec {
		return Spec{Node: NodeSpec{Name: "a", Interface: "eth0"},
			Cluster: &ClusterSpec{Bind: "198.18.0.1:7946", Peers: []string{"198.18.0.2:7946"}, Key: make([]byte, 32),
				Members: []string{"a", "b", "w"}, Witnesses: []string{"w"}},
			Groups: []GroupSpec{{Name: "web", Addresses: []netip.Prefix{netip.MustParsePrefix("198.18.0.100/32")}, Priority: 100}}}
	}
	s := good()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.Groups[0].Interface != "eth0" || s.Groups[0].GARPCount != DefaultGARPCount || s.Cluster.DeadAfter != DefaultDeadAfter {
		t.Fatalf("defaults not applied: %+v %+v", s.Groups[0], s.Cluster)
	}
	for name, c := range map[string]struct {
		mod  func(*Spec)
		want string
	}{
		"priority":   {func(s *Spec) { s.Groups[0].Priority = 255 }, `vip_group[0] "web": priority 255 out of range 1..254`},
		"no key":     {func(s *Spec) { s.Cluster.Key = nil }, "key_file: required unless insecure"},
		"short key":  {func(s *Spec) { s.Cluster.Key = make([]byte, 16) }, "16 bytes, want 32"},
		"bad peer":   {func(s *Spec) { s.Cluster.Peers = []string{"nohost"} }, `cluster.peers[0] "nohost"`},
		"witness":    {func(s *Spec) { s.Cluster.Witnesses = []string{"x"} }, `witnesses[0] "x": not in members`},
		"self":       {func(s *Spec) { s.Cluster.Members = []string{"b", "c", "w"} }, "does not list this node"},
		"dead_after": {func(s *Spec) { s.Cluster.DeadAfter = 30 * time.Millisecond }, "at least twice heartbeat_interval"},
		"dup vip": {func(s *Spec) {
			s.Groups = append(s.Groups, GroupSpec{Name: "db", Addresses: s.Groups[0].Addresses, Priority: 1})
		}, "already in vip_group"},
		"track script":  {func(s *Spec) { s.Groups[0].TrackScript = []TrackRef{{Name: "nope"}} }, `no [[track_script]] named "nope"`},
		"witness group": {func(s *Spec) { s.Witness = true }, "witness: must have no vip_group"},
		"no interface":  {func(s *Spec) { s.Node.Interface = "" }, "interface: none given"},
	} {
		s := good()
		c.mod(&s)
		err := s.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want error containing %q", name, err, c.want)
		}
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	raw := []byte("0123456789abcdef0123456789abcdef")
	p1 := filepath.Join(dir, "raw")
	os.WriteFile(p1, raw, 0o600)
	p2 := filepath.Join(dir, "b64")
	os.WriteFile(p2, []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o600)
	p3 := filepath.Join(dir, "short")
	os.WriteFile(p3, []byte("short"), 0o600)
	for _, p := range []string{p1, p2} {
		if k, err := LoadKey(p); err != nil || string(k) != string(raw) {
			t.Fatalf("%s: %q %v", p, k, err)
		}
	}
	if _, err := LoadKey(p3); err == nil || !strings.Contains(err.Error(), "want 32 raw bytes") {
		t.Fatalf("short key: %v", err)
	}
}
