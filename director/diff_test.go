package director_test

import (
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/director"
)

func TestDiffAddServiceBeforeDestinations(t *testing.T) {
	want := []director.DesiredService{
		desired(tcpSvc("198.18.1.100", 80), dest("198.18.2.2", 80, 1), dest("198.18.2.1", 80, 1)),
	}
	ops, err := director.Diff(want, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantOps(t, ops, `
		add-service tcp:198.18.1.100:80 rr flags=0x0 t=0s bits=32
		add-dest tcp:198.18.1.100:80 198.18.2.1:80 w=1 dr
		add-dest tcp:198.18.1.100:80 198.18.2.2:80 w=1 dr
	`)
}

func TestDiffDeleteServiceOmitsDestinationDeletes(t *testing.T) {
	have := []director.DesiredService{
		desired(tcpSvc("198.18.1.100", 80), dest("198.18.2.1", 80, 1), dest("198.18.2.2", 80, 1)),
	}
	ops, err := director.Diff(nil, have)
	if err != nil {
		t.Fatal(err)
	}
	wantOps(t, ops, `del-service tcp:198.18.1.100:80`)
}

func TestDiffInSyncIsZeroOps(t *testing.T) {
	set := []director.DesiredService{
		desired(persistent(tcpSvc("198.18.1.100", 0), 500*time.Second), dest("198.18.2.1", 0, 1), dest("198.18.2.2", 0, 1)),
		desired(fwmSvc(8, director.IPv4), dest("198.18.2.1", 0, 1)),
		desired(tcpSvc("2001:db8::100", 443), dest("2001:db8::1", 443, 3)),
	}
	// Destinations in another order and the kernel's hashed flag must not matter.
	have := []director.DesiredService{
		desired(set[0].Service, set[0].Destinations[1], set[0].Destinations[0]),
		set[1], set[2],
	}
	have[0].Service.Flags |= director.FlagHashed
	ops, err := director.Diff(set, have)
	if err != nil {
		t.Fatal(err)
	}
	wantOps(t, ops, ``)
}

func TestDiffUpdateServiceInPlace(t *testing.T) {
	base := persistent(tcpSvc("198.18.1.100", 80), 360*time.Second)
	cases := map[string]func(s *director.Service){
		"scheduler":   func(s *director.Service) { s.Scheduler = "wlc" },
		"flags":       func(s *director.Service) { s.Flags |= director.FlagOnePacket },
		"timeout":     func(s *director.Service) { s.Timeout = 500 * time.Second },
		"granularity": func(s *director.Service) { s.PersistenceBits = 24 },
		"persistence off": func(s *director.Service) {
			s.Flags &^= director.FlagPersistent
			s.Timeout = 0
		},
	}
	for name, change := range cases {
		t.Run(name, func(t *testing.T) {
			next := base
			change(&next)
			have := desired(base, dest("198.18.2.1", 80, 1))
			want := desired(next, dest("198.18.2.1", 80, 1))
			ops := director.DiffService(&want, &have)
			if len(ops) != 1 || ops[0].Kind != director.OpUpdateService || ops[0].Service != next {
				t.Fatalf("want one update-service to %+v, got\n%s", next, opsString(ops))
			}
		})
	}
}

func TestDiffDestinationChanges(t *testing.T) {
	svc := tcpSvc("198.18.1.100", 80)
	have := desired(svc, dest("198.18.2.1", 80, 1), dest("198.18.2.2", 80, 1), dest("198.18.2.3", 80, 1))
	cases := []struct {
		name string
		want director.DesiredService
		ops  string
	}{
		{"weight", desired(svc, dest("198.18.2.1", 80, 1), dest("198.18.2.2", 80, 5), dest("198.18.2.3", 80, 1)),
			`update-dest tcp:198.18.1.100:80 198.18.2.2:80 w=5 dr`},
		{"drain to weight 0", desired(svc, dest("198.18.2.1", 80, 0), dest("198.18.2.2", 80, 1), dest("198.18.2.3", 80, 1)),
			`update-dest tcp:198.18.1.100:80 198.18.2.1:80 w=0 dr`},
		{"threshold", desired(svc, dest("198.18.2.1", 80, 1), withThresholds(dest("198.18.2.2", 80, 1), 100, 10), dest("198.18.2.3", 80, 1)),
			`update-dest tcp:198.18.1.100:80 198.18.2.2:80 w=1 dr`},
		{"forwarding method", desired(svc, dest("198.18.2.1", 80, 1), dest("198.18.2.2", 80, 1), withForward(dest("198.18.2.3", 80, 1), director.ForwardTunnel)),
			`update-dest tcp:198.18.1.100:80 198.18.2.3:80 w=1 tunnel`},
		{"remove one", desired(svc, dest("198.18.2.1", 80, 1), dest("198.18.2.3", 80, 1)),
			`del-dest tcp:198.18.1.100:80 198.18.2.2:80 w=1 dr`},
		{"add one, adds before deletes", desired(svc, dest("198.18.2.4", 80, 1), dest("198.18.2.2", 80, 1), dest("198.18.2.3", 80, 1)), `
			add-dest tcp:198.18.1.100:80 198.18.2.4:80 w=1 dr
			del-dest tcp:198.18.1.100:80 198.18.2.1:80 w=1 dr`},
		{"port is part of the key", desired(svc, dest("198.18.2.1", 8080, 1), dest("198.18.2.2", 80, 1), dest("198.18.2.3", 80, 1)), `
			add-dest tcp:198.18.1.100:80 198.18.2.1:8080 w=1 dr
			del-dest tcp:198.18.1.100:80 198.18.2.1:80 w=1 dr`},
		{"empty", desired(svc), `
			del-dest tcp:198.18.1.100:80 198.18.2.1:80 w=1 dr
			del-dest tcp:198.18.1.100:80 198.18.2.2:80 w=1 dr
			del-dest tcp:198.18.1.100:80 198.18.2.3:80 w=1 dr`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantOps(t, director.DiffService(&c.want, &have), c.ops)
		})
	}
}

func withThresholds(d director.Destination, upper, lower uint32) director.Destination {
	d.UpperThreshold, d.LowerThreshold = upper, lower
	return d
}

func withForward(d director.Destination, f director.Forward) director.Destination {
	d.Forward = f
	return d
}

func TestDiffFWMarkAndIPv6(t *testing.T) {
	v6 := persistent(tcpSvc("2001:db8::100", 0), 500*time.Second)
	v6.PersistenceBits = 64
	want := []director.DesiredService{
		desired(fwmSvc(8, director.IPv6), dest("2001:db8::2", 0, 1)),
		desired(v6, dest("2001:db8::1", 0, 2)),
		desired(fwmSvc(8, director.IPv4), dest("198.18.2.1", 0, 1)),
	}
	ops, err := director.Diff(want, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The same mark in two families is two services; ipv4 sorts first.
	wantOps(t, ops, `
		add-service fwm:8/ipv4 rr flags=0x1 t=6m0s bits=32
		add-dest fwm:8/ipv4 198.18.2.1:0 w=1 dr
		add-service tcp:[2001:db8::100]:0 rr flags=0x1 t=8m20s bits=64
		add-dest tcp:[2001:db8::100]:0 [2001:db8::1]:0 w=2 dr
		add-service fwm:8/ipv6 rr flags=0x1 t=6m0s bits=128
		add-dest fwm:8/ipv6 [2001:db8::2]:0 w=1 dr
	`)
	// Changing the IPv6 persistence granularity is an in-place update.
	next := want[1]
	next.Service.PersistenceBits = 48
	wantOps(t, director.DiffService(&next, &want[1]), `update-service tcp:[2001:db8::100]:0 rr flags=0x1 t=8m20s bits=48`)
}

func TestDiffOnlyTouchesOwnedServices(t *testing.T) {
	// applied is the owned set: a desired service missing from it is added,
	// an owned one missing from desired deleted, nothing else emitted.
	a := desired(tcpSvc("198.18.1.100", 80), dest("198.18.2.1", 80, 1))
	b := desired(tcpSvc("198.18.1.101", 80), dest("198.18.2.1", 80, 1))
	c := desired(tcpSvc("198.18.1.102", 80), dest("198.18.2.1", 80, 1))
	ops, err := director.Diff([]director.DesiredService{c, a}, []director.DesiredService{a, b})
	if err != nil {
		t.Fatal(err)
	}
	wantOps(t, ops, `
		del-service tcp:198.18.1.101:80
		add-service tcp:198.18.1.102:80 rr flags=0x0 t=0s bits=32
		add-dest tcp:198.18.1.102:80 198.18.2.1:80 w=1 dr
	`)
}

func TestDiffRejectsBadInputNamingIt(t *testing.T) {
	good := tcpSvc("198.18.1.100", 80)
	cases := []struct {
		name string
		set  []director.DesiredService
		msg  string
	}{
		{"duplicate service", []director.DesiredService{desired(good), desired(good)}, "tcp:198.18.1.100:80 is desired more than once"},
		{"duplicate destination", []director.DesiredService{desired(good, dest("198.18.2.1", 80, 1), dest("198.18.2.1", 80, 2))},
			"destination 198.18.2.1:80 listed more than once"},
		{"weight", []director.DesiredService{desired(good, dest("198.18.2.1", 80, 70000))}, "198.18.2.1:80: weight 70000 out of range"},
		{"family", []director.DesiredService{desired(good, dest("2001:db8::1", 80, 1))}, "ipv6 destination in an ipv4 service needs tunnel"},
		{"port 0 without persistence", []director.DesiredService{desired(tcpSvc("198.18.1.100", 0))}, "port 0 is only allowed for persistent"},
		{"fwmark with address", []director.DesiredService{desired(func() director.Service {
			s := fwmSvc(8, director.IPv4)
			s.Key.Port = 80
			return s
		}())}, "fwmark 8 service must not have"},
		{"ipv6 granularity 0", []director.DesiredService{desired(func() director.Service {
			s := tcpSvc("2001:db8::100", 80)
			s.PersistenceBits = 0
			return s
		}())}, "granularity /0 out of range 1..128"},
		{"fractional timeout", []director.DesiredService{desired(persistent(good, 1500*time.Millisecond))}, "not a whole number of seconds"},
		{"thresholds", []director.DesiredService{desired(good, withThresholds(dest("198.18.2.1", 80, 1), 5, 10))}, "lower threshold 10 is above upper threshold 5"},
		{"gue on dr", []director.DesiredService{desired(good, func() director.Destination {
			d := dest("198.18.2.1", 80, 1)
			d.TunnelType = director.TunnelGUE
			d.TunnelPort = 6080
			return d
		}())}, "tunnel settings need tunnel forwarding, not dr"},
		{"gue without port", []director.DesiredService{desired(good, func() director.Destination {
			d := dest("198.18.2.1", 80, 1)
			d.Forward = director.ForwardTunnel
			d.TunnelType = director.TunnelGUE
			return d
		}())}, "a gue tunnel needs a port"},
		{"gre with port", []director.DesiredService{desired(good, func() director.Destination {
			d := dest("198.18.2.1", 80, 1)
			d.Forward = director.ForwardTunnel
			d.TunnelType, d.TunnelPort = director.TunnelGRE, 6080
			return d
		}())}, "tunnel port 6080: only gue has one"},
		{"remcsum on gre", []director.DesiredService{desired(good, func() director.Destination {
			d := dest("198.18.2.1", 80, 1)
			d.Forward = director.ForwardTunnel
			d.TunnelType, d.TunnelFlags = director.TunnelGRE, director.TunnelRemCsum
			return d
		}())}, "remcsum) is gue only"},
		{"csum on ipip", []director.DesiredService{desired(good, func() director.Destination {
			d := dest("198.18.2.1", 80, 1)
			d.Forward = director.ForwardTunnel
			d.TunnelFlags = director.TunnelCsum
			return d
		}())}, "ipip tunnels take no checksum flags"},
		{"unknown tunnel type", []director.DesiredService{desired(good, func() director.Destination {
			d := dest("198.18.2.1", 80, 1)
			d.Forward = director.ForwardTunnel
			d.TunnelType = 7
			return d
		}())}, "tunnel(7): want ipip, gue or gre"},
		{"empty scheduler", []director.DesiredService{desired(func() director.Service { s := good; s.Scheduler = ""; return s }())}, "scheduler is empty"},
		{"mapped address", []director.DesiredService{desired(good, dest("::ffff:198.18.2.1", 80, 1))}, "write it as 198.18.2.1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ops, err := director.Diff(c.set, nil)
			if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("want error containing %q, got %v", c.msg, err)
			}
			if ops != nil {
				t.Fatalf("want no ops with an error, got %d", len(ops))
			}
		})
	}
}

func TestDiffReportsEveryError(t *testing.T) {
	s := tcpSvc("198.18.1.100", 80)
	set := []director.DesiredService{desired(s, dest("198.18.2.1", 80, -1), dest("198.18.2.2", 80, 70000))}
	_, err := director.Diff(set, nil)
	if err == nil || !strings.Contains(err.Error(), "198.18.2.1:80: weight -1") || !strings.Contains(err.Error(), "198.18.2.2:80: weight 70000") {
		t.Fatalf("want both weight errors, got %v", err)
	}
}
