package daemon

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/lvsd/lvsd/config"
	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/healthcheck"
	"github.com/lvsd/lvsd/opstate"
)

func testService(t *testing.T, onFailure config.OnFailure, sorry string) *config.Service {
	t.Helper()
	chk := &config.Check{Type: config.CheckTCP}
	s := &config.Service{
		Name: "web", Family: config.IPv4, Protocol: config.TCP, Address: netip.MustParseAddr("198.18.1.63"), Port: 80,
		Scheduler: "rr", Persistence: 500e9, PersistenceBits: 24, Forward: config.ForwardDR, OnFailure: onFailure, Check: chk,
	}
	for _, a := range []string{"198.18.1.65", "198.18.1.66", "198.18.1.67"} {
		s.Backends = append(s.Backends, &config.Backend{Address: netip.MustParseAddr(a), Port: 80, Weight: 2, Forward: config.ForwardDR, Check: chk})
	}
	if sorry != "" {
		s.SorryServer = netip.MustParseAddrPort(sorry)
	}
	return s
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func weights(d director.DesiredService) map[string]int {
	m := map[string]int{}
	for _, x := range d.Destinations {
		m[x.Key.String()] = x.Weight
	}
	return m
}

func healthMap(down ...string) healthOf {
	return func(k healthcheck.Key) (healthcheck.State, int) {
		for _, d := range down {
			if k.Backend.String() == d {
				return healthcheck.StateDown, healthcheck.NoWeight
			}
		}
		return healthcheck.StateUp, healthcheck.NoWeight
	}
}

func TestServiceMapping(t *testing.T) {
	s := testService(t, config.OnFailureRemove, "")
	s.SchedulerFlags = []string{"sh-port"}
	got := serviceOf(s)
	want := director.Service{
		Key:       director.ServiceKey{Family: director.IPv4, Protocol: director.TCP, Address: s.Address, Port: 80},
		Scheduler: "rr", Flags: director.FlagPersistent | director.FlagSchedSH2, Timeout: 500e9, PersistenceBits: 24,
	}
	if got != want {
		t.Fatalf("serviceOf = %+v\nwant %+v", got, want)
	}
	fwm := &config.Service{Name: "fwm", Family: config.IPv6, FWMark: 8, Scheduler: "rr"}
	if k := serviceOf(fwm).Key; k != (director.ServiceKey{Family: director.IPv6, FWMark: 8}) {
		t.Fatalf("fwmark key = %+v", k)
	}
}

func TestComposeOverridesAndHealth(t *testing.T) {
	s := testService(t, config.OnFailureRemove, "")
	recs := []opstate.Record{
		{Service: "web", Backend: ap("198.18.1.65:80"), Admin: opstate.Drained},
		{Service: "web", Backend: ap("198.18.1.66:80"), Admin: opstate.Disabled},
		{Service: "web", Backend: ap("198.18.1.68:80"), Added: true, Weight: 5},
		{Service: "web", Backend: ap("198.18.1.69:80"), Admin: opstate.Drained}, // not configured, not added: ignored
	}
	views := effectiveBackends(s, recs)
	if len(views) != 4 || views[3].Origin != "runtime" || views[3].Dest.Forward != director.ForwardDR {
		t.Fatalf("views = %+v", views)
	}
	d, out, err := composeService(s, views, healthMap("198.18.1.67:80"), healthcheck.StateUnknown)
	if err != nil {
		t.Fatal(err)
	}
	w := weights(d)
	want := map[string]int{"198.18.1.65:80": 0, "198.18.1.68:80": 5}
	if len(w) != len(want) || w["198.18.1.65:80"] != 0 || w["198.18.1.68:80"] != 5 {
		t.Fatalf("destinations = %v, want %v (drained kept at 0, disabled and down removed, added in)", w, want)
	}
	if out.Quorum != healthcheck.StateUp {
		t.Fatalf("quorum = %v", out.Quorum)
	}
}

func TestComposeInhibitAndSorry(t *testing.T) {
	s := testService(t, config.OnFailureInhibit, "198.18.2.9:80")
	views := effectiveBackends(s, nil)
	d, _, err := composeService(s, views, healthMap("198.18.1.65:80"), healthcheck.StateUnknown)
	if err != nil {
		t.Fatal(err)
	}
	if w := weights(d); w["198.18.1.65:80"] != 0 || w["198.18.1.66:80"] != 2 || len(w) != 3 {
		t.Fatalf("inhibit: %v", w)
	}
	d, out, err := composeService(s, views, healthMap("198.18.1.65:80", "198.18.1.66:80", "198.18.1.67:80"), healthcheck.StateUp)
	if err != nil {
		t.Fatal(err)
	}
	if w := weights(d); w["198.18.2.9:80"] != 1 || !out.SorryActive {
		t.Fatalf("all down with a sorry server: %v %+v", w, out)
	}
}

func TestRemovedBackendIsHiddenAndReAddable(t *testing.T) {
	s := testService(t, config.OnFailureRemove, "")
	views := effectiveBackends(s, []opstate.Record{{Service: "web", Backend: ap("198.18.1.65:80"), Removed: true}})
	d, _, _ := composeService(s, views, healthMap(), healthcheck.StateUnknown)
	if _, ok := weights(d)["198.18.1.65:80"]; ok || len(d.Destinations) != 2 {
		t.Fatalf("removed backend still desired: %v", weights(d))
	}
}

func TestUncheckedBackendsAreUp(t *testing.T) {
	s := testService(t, config.OnFailureRemove, "")
	none := &config.Check{Type: config.CheckNone}
	for _, b := range s.Backends {
		b.Check = none
	}
	d, _, _ := composeService(s, effectiveBackends(s, nil), healthMap("198.18.1.65:80"), healthcheck.StateUnknown)
	if len(d.Destinations) != 3 {
		t.Fatalf("unchecked backends must stay in: %v", weights(d))
	}
}

// TestServiceMappingWithoutPersistence: services without persistence, IPv6
// and firewall-mark ones too, map to services the kernel accepts (an IPv6
// service needs a prefix length even without persistence), with the
// granularity ipvsadm and keepalived send (/32, /128).
func TestServiceMappingWithoutPersistence(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lvsd.toml")
	body := `
[node]
name = "d"
[[service]]
name = "v6"
address = "2001:db8:1::100"
port = 80
  [[service.backend]]
  address = "2001:db8:1::21"
[[service]]
name = "v6-fwm"
fwmark = 8
family = "ipv6"
  [[service.backend]]
  address = "2001:db8:1::22"
[[service]]
name = "v4"
address = "198.18.1.63"
port = 80
  [[service.backend]]
  address = "198.18.1.65"
`
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	var l config.Loader
	cfg, err := l.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"v6": 128, "v6-fwm": 128, "v4": 32}
	for _, s := range cfg.Services {
		ds := serviceOf(s)
		if err := ds.Validate(); err != nil {
			t.Errorf("%s: %v", s.Name, err)
		}
		if ds.Flags&director.FlagPersistent != 0 || ds.PersistenceBits != want[s.Name] {
			t.Errorf("%s: flags %#x granularity /%d, want not persistent, /%d", s.Name, ds.Flags, ds.PersistenceBits, want[s.Name])
		}
	}
}

// TestRuntimeWeightOutlastsConfig: a backend added at run time with a
// weight, which the config then gains with another weight, keeps the
// operator's weight until it is removed (README, "which wins").
func TestRuntimeWeightOutlastsConfig(t *testing.T) {
	s := testService(t, config.OnFailureRemove, "") // config weight 2
	rec := opstate.Record{Service: "web", Backend: ap("198.18.1.66:80"), Added: true, Weight: 7}
	d, _, _ := composeService(s, effectiveBackends(s, []opstate.Record{rec}), healthMap(), healthcheck.StateUnknown)
	if w := weights(d); w["198.18.1.66:80"] != 7 || w["198.18.1.65:80"] != 2 {
		t.Fatalf("weights %v, want the runtime 7 for .66 and the config's 2 for the others", w)
	}
}

// TestTunnelDestinations: a tunnel backend's encapsulation reaches the
// kernel-side destination (type, GUE port, checksum flags) and validates.
func TestTunnelDestinations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lvsd.toml")
	body := `
[node]
name = "d"
[[service]]
name = "t"
address = "198.18.1.63"
port = 80
forward = "tunnel"
  [[service.backend]]
  address = "198.18.1.65"
  [[service.backend]]
  address = "198.18.1.66"
  tunnel_type = "gue"
  tunnel_port = 6080
  tunnel_checksum = "remcsum"
  [[service.backend]]
  address = "198.18.1.67"
  tunnel_type = "gre"
  tunnel_checksum = "csum"
`
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	var l config.Loader
	cfg, err := l.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []director.Destination{
		{TunnelType: director.TunnelIPIP},
		{TunnelType: director.TunnelGUE, TunnelPort: 6080, TunnelFlags: director.TunnelRemCsum},
		{TunnelType: director.TunnelGRE, TunnelFlags: director.TunnelCsum},
	}
	for i, b := range cfg.Services[0].Backends {
		d := destOf(b)
		if err := d.Validate(director.IPv4); err != nil {
			t.Errorf("%s: %v", b.Address, err)
		}
		if d.Forward != director.ForwardTunnel || d.TunnelType != want[i].TunnelType || d.TunnelPort != want[i].TunnelPort || d.TunnelFlags != want[i].TunnelFlags {
			t.Errorf("%s: %+v, want tunnel %s port %d flags %#x", b.Address, d, want[i].TunnelType, want[i].TunnelPort, want[i].TunnelFlags)
		}
	}
}
