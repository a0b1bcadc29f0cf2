package vrrp

import (
	"fmt"
	"maps"
	"math/rand"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1_700_000_000, 0)

func cand(prio uint8, claim bool) GroupView {
	return GroupView{Candidate: true, Priority: prio, Claim: claim}
}

func elect1(t *testing.T, in ElectionInput) Decision {
	t.Helper()
	if in.Now.IsZero() {
		in.Now = t0
	}
	res, _ := Elect(in, ElectionState{})
	if len(res.Decisions) != 1 {
		t.Fatalf("want 1 decision, got %d", len(res.Decisions))
	}
	return res.Decisions[0]
}

func TestElectRules(t *testing.T) {
	web := func(prio uint8, claiming, preempt bool) []LocalGroup {
		return []LocalGroup{{Name: "web", Priority: prio, Claiming: claiming, Preempt: preempt}}
	}
	peer := func(v GroupView) map[string]map[string]GroupView {
		return map[string]map[string]GroupView{"b": {"web": v}}
	}
	cases := []struct {
		name   string
		in     ElectionInput
		role   Role
		want   bool
		owner  string
		reason string
	}{
		{"alone takes over", ElectionInput{Self: "a", Groups: web(100, false, true)}, RoleMaster, false, "a", "no live owner"},
		{"starting claims nothing", ElectionInput{Self: "a", Groups: web(100, false, true), Starting: true}, RoleBackup, false, "", "starting"},
		{"higher peer idle has precedence", ElectionInput{Self: "a", Groups: web(100, false, true), Alive: peer(cand(200, false))}, RoleBackup, false, "b", "precedence"},
		{"higher self, idle peer: take over", ElectionInput{Self: "a", Groups: web(200, false, true), Alive: peer(cand(100, false))}, RoleMaster, false, "a", "taking over"},
		{"tie broken by smaller name (a wins)", ElectionInput{Self: "a", Groups: web(100, false, true), Alive: peer(cand(100, false))}, RoleMaster, false, "a", ""},
		{"tie broken by smaller name (b loses)", ElectionInput{Self: "c", Groups: web(100, false, true), Alive: peer(cand(100, false))}, RoleBackup, false, "b", ""},
		{"fault peer is not eligible", ElectionInput{Self: "a", Groups: web(100, false, true), Alive: peer(GroupView{Candidate: true, Priority: 200, Fault: true})}, RoleMaster, false, "a", ""},
		{"witness view is not a candidate", ElectionInput{Self: "a", Groups: web(100, false, true), Alive: peer(GroupView{Priority: 200})}, RoleMaster, false, "a", ""},
		{"never claim over a live claimant: want instead", ElectionInput{Self: "a", Groups: web(200, false, true), Alive: peer(cand(100, true))}, RoleBackup, true, "b", "preempting b"},
		{"nopreempt: live claimant stays", ElectionInput{Self: "a", Groups: web(200, false, false), Alive: peer(cand(100, true))}, RoleBackup, false, "b", "owned by b"},
		{"lower node never wants", ElectionInput{Self: "a", Groups: web(50, false, true), Alive: peer(cand(100, true))}, RoleBackup, false, "b", "owned by b"},
		{"even a fault claimant blocks a claim", ElectionInput{Self: "a", Groups: web(200, false, true), Alive: peer(GroupView{Candidate: true, Priority: 100, Fault: true, Claim: true})}, RoleBackup, true, "b", ""},
		{"claimant hands over to a wanting better peer", ElectionInput{Self: "a", Groups: web(100, true, true), Alive: peer(GroupView{Candidate: true, Priority: 200, Want: true})}, RoleBackup, false, "b", "handing over"},
		{"claimant keeps while better peer does not want", ElectionInput{Self: "a", Groups: web(100, true, true), Alive: peer(cand(200, false))}, RoleMaster, false, "a", "owner"},
		{"two claims: higher keeps and re-announces", ElectionInput{Self: "a", Groups: web(200, true, true), Alive: peer(cand(100, true))}, RoleMaster, false, "a", "re-announcing"},
		{"two claims: lower releases", ElectionInput{Self: "a", Groups: web(100, true, true), Alive: peer(cand(200, true))}, RoleBackup, false, "b", "outranks us"},
		{"two claims, equal priority: name decides", ElectionInput{Self: "c", Groups: web(100, true, false), Alive: peer(cand(100, true))}, RoleBackup, false, "b", "outranks us"},
		{"local fault", ElectionInput{Self: "a", Groups: []LocalGroup{{Name: "web", Priority: 100, Fault: true, FaultReason: "eth0 down", Claiming: true}}}, RoleFault, false, "", "eth0 down"},
		{"priority 0 is fault", ElectionInput{Self: "a", Groups: web(0, true, true)}, RoleFault, false, "", "priority 0"},
		{"promote forces want over nopreempt", ElectionInput{Self: "a", Groups: []LocalGroup{{Name: "web", Priority: 255, Force: true}}, Alive: peer(cand(100, true))}, RoleBackup, true, "b", "preempting"},
		{"demoted owner hands over even to a nopreempt peer", ElectionInput{Self: "a", Groups: []LocalGroup{{Name: "web", Priority: 1, Claiming: true, Yield: true}}, Alive: peer(cand(100, false))}, RoleBackup, false, "b", "demoted: handing over to b"},
		{"demoted owner keeps the group when alone", ElectionInput{Self: "a", Groups: []LocalGroup{{Name: "web", Priority: 1, Claiming: true, Yield: true}}}, RoleMaster, false, "a", "owner"},
		{"demoted node does not take over from nobody when a peer is eligible", ElectionInput{Self: "a", Groups: []LocalGroup{{Name: "web", Priority: 1, Yield: true, Preempt: true}}, Alive: peer(cand(2, false))}, RoleBackup, false, "b", "precedence"},
		{"idle demoted peer: take over and say why", ElectionInput{Self: "a", Groups: web(100, false, true), Alive: peer(GroupView{Candidate: true, Priority: 1, Yield: true, YieldSince: 5})}, RoleMaster, false, "a", "b is demoted"},
		{"both demoted: the one demoted later hands over", ElectionInput{Self: "a", Groups: []LocalGroup{{Name: "web", Priority: 1, Claiming: true, Yield: true, YieldSince: t0.Add(time.Second)}}, Alive: peer(GroupView{Candidate: true, Priority: 1, Yield: true, YieldSince: t0.UnixNano()})}, RoleBackup, false, "b", "demoted: handing over to b"},
		{"both demoted: the one demoted first keeps", ElectionInput{Self: "c", Groups: []LocalGroup{{Name: "web", Priority: 1, Claiming: true, Yield: true, YieldSince: t0}}, Alive: peer(GroupView{Candidate: true, Priority: 1, Yield: true, YieldSince: t0.Add(time.Second).UnixNano()})}, RoleMaster, false, "c", "owner"},
		{"unknown member ignored", ElectionInput{Self: "a", Members: []string{"a", "c"}, Groups: web(100, false, true), Alive: peer(cand(200, true))}, RoleMaster, false, "a", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := elect1(t, c.in)
			if d.Role != c.role || d.Want != c.want || d.Owner != c.owner || !strings.Contains(d.Reason, c.reason) {
				t.Fatalf("got role=%v want=%v owner=%q reason=%q; expected role=%v want=%v owner=%q reason~%q",
					d.Role, d.Want, d.Owner, d.Reason, c.role, c.want, c.owner, c.reason)
			}
		})
	}
}

func TestElectConflictReportsLosers(t *testing.T) {
	d := elect1(t, ElectionInput{Self: "a", Groups: []LocalGroup{{Name: "g", Priority: 200, Claiming: true}},
		Alive: map[string]map[string]GroupView{"b": {"g": cand(100, true)}, "c": {"g": cand(50, true)}}})
	if d.Role != RoleMaster || fmt.Sprint(d.Conflict) != "[b c]" {
		t.Fatalf("got %v conflict=%v", d.Role, d.Conflict)
	}
}

func TestElectPreemptDelay(t *testing.T) {
	in := ElectionInput{Self: "a", Now: t0,
		Groups: []LocalGroup{{Name: "web", Priority: 200, Preempt: true, PreemptDelay: 3 * time.Second}},
		Alive:  map[string]map[string]GroupView{"b": {"web": cand(100, true)}}}
	res, st := Elect(in, ElectionState{})
	if d := res.Decisions[0]; d.Want || !strings.Contains(d.Reason, "preempt delay") {
		t.Fatalf("at t0: %+v", d)
	}
	if !res.NextWake.Equal(t0.Add(3 * time.Second)) {
		t.Fatalf("NextWake = %v", res.NextWake)
	}
	in.Now = t0.Add(2999 * time.Millisecond)
	res, st = Elect(in, st)
	if res.Decisions[0].Want {
		t.Fatal("wanted before the delay ran out")
	}
	in.Now = t0.Add(3 * time.Second)
	res, st = Elect(in, st)
	if !res.Decisions[0].Want {
		t.Fatalf("no want after the delay: %+v", res.Decisions[0])
	}
	// The claimant vanishing and coming back restarts the delay.
	in.Alive = nil
	res, st = Elect(in, st)
	if res.Decisions[0].Role != RoleMaster {
		t.Fatalf("dead claimant: %+v", res.Decisions[0])
	}
	in.Groups[0].Claiming = false
	in.Alive = map[string]map[string]GroupView{"b": {"web": cand(100, true)}}
	in.Now = t0.Add(10 * time.Second)
	res, _ = Elect(in, st)
	if res.Decisions[0].Want {
		t.Fatal("delay not restarted")
	}
}

func TestElectQuorumWithWitness(t *testing.T) {
	members := []string{"a", "b", "w"}
	wit := []string{"w"}
	g := func(claiming bool) []LocalGroup {
		return []LocalGroup{{Name: "web", Priority: 100, Claiming: claiming, Preempt: true}}
	}
	// Isolated: sees nobody.
	d := elect1(t, ElectionInput{Self: "a", Members: members, Witnesses: wit, Groups: g(true)})
	if d.Role != RoleBackup || !strings.Contains(d.Reason, "no quorum") {
		t.Fatalf("isolated owner kept the group: %+v", d)
	}
	// Partition a|b, witness sees both and votes for the claimant a.
	witness := map[string]GroupView{"web": {Vote: "a"}}
	d = elect1(t, ElectionInput{Self: "b", Members: members, Witnesses: wit,
		Groups: []LocalGroup{{Name: "web", Priority: 200, Preempt: true}},
		Alive:  map[string]map[string]GroupView{"w": witness}})
	if d.Role != RoleBackup || !strings.Contains(d.Reason, "majority vote") {
		t.Fatalf("b claimed without the witness's vote: %+v", d)
	}
	d = elect1(t, ElectionInput{Self: "a", Members: members, Witnesses: wit, Groups: g(true),
		Alive: map[string]map[string]GroupView{"w": witness}})
	if d.Role != RoleMaster {
		t.Fatalf("a lost the group it holds with the witness's vote: %+v", d)
	}
	// The witness votes for b once a is gone: b takes over.
	d = elect1(t, ElectionInput{Self: "b", Members: members, Witnesses: wit,
		Groups: []LocalGroup{{Name: "web", Priority: 50}},
		Alive:  map[string]map[string]GroupView{"w": {"web": {Vote: "b"}}}})
	if d.Role != RoleMaster {
		t.Fatalf("b did not take over with the witness's vote: %+v", d)
	}
}

func TestElectWitnessVotes(t *testing.T) {
	members := []string{"a", "b", "w"}
	in := ElectionInput{Self: "w", Members: members, Witnesses: []string{"w"}, Now: t0,
		Alive: map[string]map[string]GroupView{"a": {"web": cand(100, true)}, "b": {"web": cand(200, false)}}}
	res, _ := Elect(in, ElectionState{})
	if len(res.Decisions) != 0 || res.Votes["web"] != "a" {
		t.Fatalf("witness should vote for the live claimant a: %+v", res)
	}
	in.Alive["a"] = map[string]GroupView{"web": cand(100, false)}
	if res, _ = Elect(in, ElectionState{}); res.Votes["web"] != "b" {
		t.Fatalf("with no claimant the witness votes for the best: %v", res.Votes)
	}
	delete(in.Alive, "a")
	delete(in.Alive, "b")
	if res, _ = Elect(in, ElectionState{}); res.Quorum || res.Votes["web"] != "" {
		t.Fatalf("witness without quorum must not vote: %+v", res)
	}
}

// simNode is one node of the discrete-event simulation below.
type simNode struct {
	name     string
	prio     uint8
	up       bool
	demoted  bool
	claiming bool
	started  time.Time
	seen     map[string]time.Time
	views    map[string]map[string]GroupView
	st       ElectionState
	last     map[string]GroupView
}

// TestElectSimulatedClusterNeverTwoOwners runs three directors and a witness
// exchanging heartbeats with random delays, crashing, demoting and restarting
// nodes at random, and checks that no two connected nodes ever claim the
// group at the same instant and that an owner is always re-established.
func TestElectSimulatedClusterNeverTwoOwners(t *testing.T) {
	const (
		hb   = 20 * time.Millisecond
		dead = 100 * time.Millisecond
		step = time.Millisecond
	)
	for seed := int64(1); seed <= 12; seed++ {
		rng := rand.New(rand.NewSource(seed))
		withWitness := seed%2 == 0
		members := []string{"a", "b", "c"}
		var witnesses []string
		if withWitness {
			members = append(members, "w")
			witnesses = []string{"w"}
		}
		nodes := map[string]*simNode{}
		for i, n := range members {
			nodes[n] = &simNode{name: n, prio: uint8(100 + 10*i), up: true, started: t0, seen: map[string]time.Time{},
				views: map[string]map[string]GroupView{}}
		}
		type msg struct {
			at       time.Time
			from, to string
			views    map[string]GroupView
		}
		var inflight []msg
		now := t0
		send := func(n *simNode, views map[string]GroupView) {
			for _, to := range members {
				if to != n.name {
					inflight = append(inflight, msg{now.Add(time.Duration(rng.Intn(4000)) * time.Microsecond), n.name, to, views})
				}
			}
		}
		evaluate := func(n *simNode) {
			alive := map[string]map[string]GroupView{}
			for p, at := range n.seen {
				if now.Sub(at) < dead {
					alive[p] = n.views[p]
				}
			}
			in := ElectionInput{Self: n.name, Members: members, Witnesses: witnesses, Alive: alive,
				Now: now, Starting: now.Sub(n.started) < dead}
			if n.name != "w" {
				prio := n.prio
				if n.demoted {
					prio = 1
				}
				in.Groups = []LocalGroup{{Name: "g", Priority: prio, Claiming: n.claiming, Preempt: true}}
			}
			res, st := Elect(in, n.st)
			n.st = st
			views := map[string]GroupView{}
			for g, v := range res.Votes {
				views[g] = GroupView{Vote: v}
			}
			for _, d := range res.Decisions {
				n.claiming = d.Role == RoleMaster
				views[d.Group] = GroupView{Candidate: true, Priority: in.Groups[0].Priority,
					Claim: n.claiming, Want: d.Want, Vote: res.Votes[d.Group]}
			}
			if !maps.Equal(views, n.last) {
				n.last = views
				send(n, views) // state changed: heartbeat at once
			}
		}
		ownerless := time.Duration(0)
		for i := 0; i < 30000; i++ { // 30 s of simulated time
			now = now.Add(step)
			if i%2000 == 1000 { // every 2 s: perturb one director
				n := nodes[[]string{"a", "b", "c"}[rng.Intn(3)]]
				switch rng.Intn(3) {
				case 0: // crash (addresses die with it) and come back later
					n.up, n.claiming = false, false
				case 1:
					n.demoted = !n.demoted
				case 2:
					n.up, n.started = true, now
				}
			}
			for _, name := range members {
				if n := nodes[name]; !n.up && i%2000 == 1500 {
					n.up, n.started, n.seen = true, now, map[string]time.Time{}
				}
			}
			kept := inflight[:0]
			for _, m := range inflight {
				if m.at.After(now) {
					kept = append(kept, m)
					continue
				}
				if to := nodes[m.to]; to.up && nodes[m.from].up {
					to.seen[m.from] = m.at
					to.views[m.from] = m.views
					evaluate(to)
				}
			}
			inflight = kept
			for _, name := range members {
				if n := nodes[name]; n.up && i%5 == 0 { // the real node re-evaluates on timers too
					evaluate(n)
					if i%int(hb/step) == 0 {
						send(n, n.last)
					}
				}
			}
			var owners []string
			for _, name := range members {
				if n := nodes[name]; n.up && n.claiming {
					owners = append(owners, n.name)
				}
			}
			if len(owners) > 1 {
				t.Fatalf("seed %d at %v: two owners %v", seed, now.Sub(t0), owners)
			}
			anyUp := false
			for _, n := range []string{"a", "b", "c"} {
				anyUp = anyUp || nodes[n].up
			}
			if len(owners) == 0 && anyUp {
				ownerless += step
				if ownerless > 2*time.Second {
					t.Fatalf("seed %d at %v: no owner for %v", seed, now.Sub(t0), ownerless)
				}
			} else {
				ownerless = 0
			}
		}
	}
}

func TestElectSuccessor(t *testing.T) {
	own := []LocalGroup{{Name: "web", Priority: 200, Claiming: true, Preempt: true}}
	for _, c := range []struct {
		name  string
		alive map[string]map[string]GroupView
		want  string
	}{
		{"alone", nil, ""},
		{"eligible peer", map[string]map[string]GroupView{"b": {"web": cand(100, false)}}, "b"},
		{"peer in fault", map[string]map[string]GroupView{"b": {"web": {Candidate: true, Priority: 100, Fault: true}}}, ""},
		{"witness only", map[string]map[string]GroupView{"w": {"web": {Vote: "a"}}}, ""},
		{"best of two", map[string]map[string]GroupView{"b": {"web": cand(100, false)}, "c": {"web": cand(150, false)}}, "c"},
	} {
		d := elect1(t, ElectionInput{Self: "a", Groups: own, Alive: c.alive})
		if d.Successor != c.want || d.Role != RoleMaster {
			t.Errorf("%s: successor %q role %v, want %q as master", c.name, d.Successor, d.Role, c.want)
		}
	}
}
