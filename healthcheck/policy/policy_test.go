package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/healthcheck"
)

const (
	up   = healthcheck.StateUp
	down = healthcheck.StateDown
	unk  = healthcheck.StateUnknown
)

func dest(last byte, weight int) director.Destination {
	return director.Destination{
		Key:     director.DestKey{Address: netip.AddrFrom4([4]byte{198, 18, 2, last}), Port: 80},
		Weight:  weight,
		Forward: director.ForwardDR,
	}
}

func be(last byte, weight int, h healthcheck.State) Backend {
	return Backend{Dest: dest(last, weight), Health: h, DynamicWeight: healthcheck.NoWeight}
}

// render prints destinations as "last:weight" for compact comparison.
func render(ds []director.Destination) string {
	var parts []string
	for _, d := range ds {
		parts = append(parts, fmt.Sprintf("%d:%d", d.Key.Address.As4()[3], d.Weight))
	}
	return strings.Join(parts, " ")
}

func TestEvaluateDestinations(t *testing.T) {
	sorry := dest(9, 0)
	cases := []struct {
		name     string
		p        Policy
		backends []Backend
		want     string
		sorry    bool
	}{
		{"all up", Policy{}, []Backend{be(2, 3, up), be(1, 1, up)}, "1:1 2:3", false},
		{"remove down", Policy{}, []Backend{be(1, 1, up), be(2, 3, down)}, "1:1", false},
		{"inhibit down", Policy{OnFailure: Inhibit}, []Backend{be(1, 1, up), be(2, 3, down)}, "1:1 2:0", false},
		{"unknown counts as down", Policy{}, []Backend{be(1, 1, unk)}, "", false},
		{"all down, no sorry", Policy{}, []Backend{be(1, 1, down), be(2, 1, down)}, "", false},
		{"all down, sorry", Policy{Sorry: &sorry}, []Backend{be(1, 1, down), be(2, 1, down)}, "9:1", true},
		{"all down, sorry, inhibit", Policy{Sorry: &sorry, OnFailure: Inhibit}, []Backend{be(1, 1, down)}, "1:0 9:1", true},
		{"one up, sorry idle", Policy{Sorry: &sorry}, []Backend{be(1, 1, up), be(2, 1, down)}, "1:1", false},
		{"drained", Policy{}, []Backend{{Dest: dest(1, 5), Health: up, Drained: true, DynamicWeight: 7}, be(2, 1, up)}, "1:0 2:1", false},
		{"all drained, sorry takes new clients", Policy{Sorry: &sorry}, []Backend{{Dest: dest(1, 5), Health: up, Drained: true, DynamicWeight: healthcheck.NoWeight}}, "9:1", true},
		{"dynamic weight", Policy{}, []Backend{{Dest: dest(1, 5), Health: up, DynamicWeight: 42}}, "1:42", false},
		{"dynamic weight 0 is up but idle", Policy{}, []Backend{{Dest: dest(1, 5), Health: up, DynamicWeight: 0}, be(2, 1, up)}, "1:0 2:1", false},
		{"sorry is also a backend", Policy{Sorry: &director.Destination{Key: dest(1, 0).Key, Weight: 4}}, []Backend{be(1, 1, down)}, "1:4", true},
		{"quorum lost with sorry: up backends out", Policy{Sorry: &sorry, Quorum: 3}, []Backend{be(1, 1, up), be(2, 1, down)}, "9:1", true},
		{"quorum lost with sorry, inhibit: up backends at 0", Policy{Sorry: &sorry, Quorum: 3, OnFailure: Inhibit}, []Backend{be(1, 1, up), be(2, 1, down)}, "1:0 2:0 9:1", true},
		{"quorum lost without sorry: up backends stay", Policy{Quorum: 3}, []Backend{be(1, 1, up), be(2, 1, down)}, "1:1", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.p.Validate(); err != nil {
				t.Fatal(err)
			}
			out, err := Evaluate(c.p, unk, c.backends)
			if err != nil {
				t.Fatal(err)
			}
			if got := render(out.Destinations); got != c.want || out.SorryActive != c.sorry {
				t.Fatalf("got %q sorry=%v, want %q sorry=%v", got, out.SorryActive, c.want, c.sorry)
			}
		})
	}
}

func TestEvaluateDoesNotAliasInput(t *testing.T) {
	sorry := dest(9, 0)
	p := Policy{Sorry: &sorry}
	in := []Backend{be(1, 1, down)}
	if _, err := Evaluate(p, unk, in); err != nil {
		t.Fatal(err)
	}
	if sorry.Weight != 0 || in[0].Dest.Weight != 1 {
		t.Fatal("Evaluate modified its inputs")
	}
}

// TestQuorumHysteresis walks the healthy weight up and down across the
// thresholds of quorum 4, hysteresis 1: gained at >= 5, lost below 3.
func TestQuorumHysteresis(t *testing.T) {
	p := Policy{Quorum: 4, Hysteresis: 1}
	steps := []struct {
		healthy int
		want    healthcheck.State
		change  bool
	}{
		{4, down, true}, // first evaluation: 4 < 5, starts down (from unknown)
		{5, up, true},
		{4, up, false},
		{3, up, false},
		{2, down, true},
		{3, down, false},
		{4, down, false},
		{5, up, true},
		{6, up, false},
		{0, down, true},
	}
	prev := unk
	for i, s := range steps {
		var backends []Backend
		for j := range s.healthy {
			backends = append(backends, be(byte(j+1), 1, up))
		}
		backends = append(backends, be(100, 1, down))
		out, err := Evaluate(p, prev, backends)
		if err != nil {
			t.Fatal(err)
		}
		if out.Quorum != s.want || (out.Change != nil) != s.change || out.HealthyWeight != s.healthy {
			t.Fatalf("step %d (healthy %d, was %s): quorum %s change %+v, want %s change=%v",
				i, s.healthy, prev, out.Quorum, out.Change, s.want, s.change)
		}
		if out.Change != nil {
			if out.Change.From != prev || out.Change.To != s.want {
				t.Fatalf("step %d: change %+v", i, out.Change)
			}
			ev := out.Change.Event("web")
			if ev.Kind != healthcheck.KindQuorum || ev.Service != "web" || ev.Weight != s.healthy || ev.Reason == "" {
				t.Fatalf("step %d: event %+v", i, ev)
			}
		}
		prev = out.Quorum
	}
}

func TestQuorumOffAndZeroHysteresis(t *testing.T) {
	out, _ := Evaluate(Policy{}, unk, []Backend{be(1, 1, down)})
	if out.Quorum != up || out.Change == nil || out.Change.Reason() != "quorum off" {
		t.Fatalf("quorum off: %+v", out)
	}
	// Quorum 2, no hysteresis: lost below 2, regained at 2.
	p := Policy{Quorum: 2}
	out, _ = Evaluate(p, up, []Backend{be(1, 1, up), be(2, 1, down)})
	if out.Quorum != down || out.Change.Reason() != "healthy weight 1 < 2 (quorum 2 - hysteresis 0)" {
		t.Fatalf("lost: %+v %q", out, out.Change.Reason())
	}
	out, _ = Evaluate(p, down, []Backend{be(1, 1, up), be(2, 1, up)})
	if out.Quorum != up || out.Change.Reason() != "healthy weight 2 >= 2 (quorum 2 + hysteresis 0)" {
		t.Fatalf("regained: %+v", out)
	}
	// Hysteresis as large as the quorum: only losing all weight drops it.
	p = Policy{Quorum: 2, Hysteresis: 2}
	out, _ = Evaluate(p, up, []Backend{be(1, 1, up), be(2, 1, down)})
	if out.Quorum != up {
		t.Fatalf("wide hysteresis lost quorum with weight 1: %+v", out)
	}
	out, _ = Evaluate(p, up, []Backend{be(1, 1, down)})
	if out.Quorum != down {
		t.Fatalf("wide hysteresis kept quorum with weight 0: %+v", out)
	}
}

func TestEvaluateErrors(t *testing.T) {
	if _, err := Evaluate(Policy{}, unk, []Backend{be(1, 1, up), be(1, 2, down)}); err == nil ||
		!strings.Contains(err.Error(), "198.18.2.1:80 listed twice") {
		t.Fatalf("duplicate backend: %v", err)
	}
	for _, c := range []struct {
		p    Policy
		want string
	}{
		{Policy{Quorum: -1}, "quorum: must not be negative"},
		{Policy{Quorum: 1, Hysteresis: -1}, "quorum_hysteresis: must not be negative"},
		{Policy{Hysteresis: 1}, "quorum_hysteresis: needs a quorum"},
		{Policy{OnFailure: 7}, "on_failure"},
		{Policy{Sorry: &director.Destination{}}, "sorry_server: invalid address"},
	} {
		if err := c.p.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.p, err, c.want)
		}
	}
	if _, err := ParseOnFailure("drop"); err == nil || !strings.Contains(err.Error(), `on_failure: "drop"`) {
		t.Errorf("ParseOnFailure: %v", err)
	}
	if o, err := ParseOnFailure("inhibit"); err != nil || o != Inhibit {
		t.Errorf("ParseOnFailure(inhibit) = %v, %v", o, err)
	}
}
