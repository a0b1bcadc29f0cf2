package vrrp

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// pairSim runs two directors' elections against each other with 1 ms
// delivery and 20 ms heartbeats, and counts ownership changes.
type pairSim struct {
	nodes map[string]*pairNode
	now   time.Time
}

type pairNode struct {
	name     string
	prio     uint8
	yield    bool
	yieldAt  time.Time
	force    bool
	claiming bool
	peer     map[string]GroupView
	st       ElectionState
	last     map[string]GroupView
}

func newPairSim(a, b *pairNode) *pairSim {
	return &pairSim{nodes: map[string]*pairNode{a.name: a, b.name: b}, now: t0}
}

func (s *pairSim) other(n *pairNode) *pairNode {
	for name, o := range s.nodes {
		if name != n.name {
			return o
		}
	}
	return nil
}

func (s *pairSim) evaluate(n *pairNode) {
	o := s.other(n)
	in := ElectionInput{Self: n.name, Members: []string{"a", "b"}, Now: s.now,
		Alive: map[string]map[string]GroupView{o.name: n.peer}}
	lg := LocalGroup{Name: "g", Priority: n.prio, Claiming: n.claiming, Preempt: true, Force: n.force}
	if n.yield {
		lg.Priority, lg.Yield, lg.YieldSince = 1, true, n.yieldAt
	}
	in.Groups = []LocalGroup{lg}
	res, st := Elect(in, n.st)
	n.st = st
	d := res.Decisions[0]
	n.claiming = d.Role == RoleMaster
	n.last = map[string]GroupView{"g": {Candidate: true, Priority: lg.Priority, Claim: n.claiming,
		Want: d.Want, Vote: res.Votes["g"], Yield: lg.Yield}}
	if lg.Yield {
		v := n.last["g"]
		v.YieldSince = lg.YieldSince.UnixNano()
		n.last["g"] = v
	}
}

// run simulates d and returns the number of ownership changes and the
// final owner ("" none, "a+b" both).
func (s *pairSim) run(t *testing.T, d time.Duration) (changes int, owner string) {
	t.Helper()
	prev := s.owner()
	for step := time.Duration(0); step < d; step += time.Millisecond {
		s.now = s.now.Add(time.Millisecond)
		for _, name := range []string{"a", "b"} {
			n := s.nodes[name]
			before := n.last
			s.evaluate(n)
			o := s.other(n)
			if !maps.Equal(before, n.last) || step%(20*time.Millisecond) == 0 {
				o.peer = n.last
			}
		}
		if cur := s.owner(); cur != prev {
			changes++
			prev = cur
		}
	}
	return changes, s.owner()
}

func (s *pairSim) owner() string {
	a, b := s.nodes["a"].claiming, s.nodes["b"].claiming
	switch {
	case a && b:
		return "a+b"
	case a:
		return "a"
	case b:
		return "b"
	}
	return ""
}

func TestDemoteBothDirectorsSettles(t *testing.T) {
	// The 3 a.m. sequence: failover away from a (a demoted), patch, then
	// failover away from b (b demoted too) without clearing a.
	a := &pairNode{name: "a", prio: 200}
	b := &pairNode{name: "b", prio: 100}
	s := newPairSim(a, b)
	if _, owner := s.run(t, time.Second); owner != "a" {
		t.Fatalf("start: owner %q, want a", owner)
	}
	a.yield, a.yieldAt = true, s.now
	if _, owner := s.run(t, time.Second); owner != "b" {
		t.Fatalf("after demoting a: owner %q, want b", owner)
	}
	b.yield, b.yieldAt = true, s.now
	changes, owner := s.run(t, 2*time.Second)
	t.Logf("changes after demoting b: %d", changes)
	if owner != "a" {
		t.Errorf("after demoting b too: owner %q, want a (the older demotion yields to the newer)", owner)
	}
	if changes > 2 {
		t.Errorf("after demoting b too: %d ownership changes in 2 s, want at most 2 (b -> none -> a)", changes)
	}
	// Clearing a's demotion changes nothing: b is still demoted.
	a.yield = false
	changes, owner = s.run(t, time.Second)
	if owner != "a" || changes != 0 {
		t.Errorf("after clearing a: owner %q with %d changes, want a with none", owner, changes)
	}
}

// TestDemotionStampAfterPeers: a demotion made here is stamped after every
// live peer's announced demotion, even when this node's clock is behind,
// so "the one demoted last gives way" holds across clock skew.
func TestDemotionStampAfterPeers(t *testing.T) {
	n, err := New(Spec{Node: NodeSpec{Name: "a", Interface: "lo"},
		Groups: []GroupSpec{{Name: "web", Addresses: []netip.Prefix{netip.MustParsePrefix("198.18.9.1/32")}, Priority: 100}}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	peerAt := t0.Add(time.Minute) // the peer's clock runs a minute ahead
	e := &engine{n: n, groups: []*groupRT{{spec: &n.spec.Groups[0]}},
		aliveSet: map[string]bool{"b": true, "c": false, "d": true},
		peers: map[string]*peerState{
			"b": {groups: map[string]GroupView{"web": {Candidate: true, Priority: 1, Yield: true, YieldSince: peerAt.UnixNano()}}},
			"c": {groups: map[string]GroupView{"web": {Candidate: true, Priority: 1, Yield: true, YieldSince: peerAt.Add(time.Hour).UnixNano()}}},
			"d": {groups: map[string]GroupView{"web": {Candidate: true, Priority: 255}}},
		}}
	e.snapshot(ElectionResult{})
	if got := n.Status().Groups[0].PromotedPeers; len(got) != 1 || got[0] != "d" {
		t.Errorf("PromotedPeers %v, want [d]", got)
	}
	// c is down now (rebooting for its patch): the demotion it announced
	// before still counts, it comes back with it.
	deadAt := peerAt.Add(time.Hour)
	if got := n.Status().Groups[0].PeerDemotedAt; !got.Equal(deadAt) {
		t.Fatalf("PeerDemotedAt %v, want the latest announced, %v", got, deadAt)
	}
	if got := n.DemotionStamp("web", t0); !got.After(deadAt) {
		t.Errorf("demotion stamp %v with the clock behind, want after %v", got, deadAt)
	}
	if later := deadAt.Add(time.Second); !n.DemotionStamp("web", later).Equal(later) {
		t.Errorf("demotion stamp with the clock ahead: want now (%v)", later)
	}
}

// TestPublishStampsOnlyForPeersThatReadThem: a demoted node sends its
// demotion stamp (heartbeat version 2) only when every live peer reads
// version 2, and not while starting; an older peer keeps hearing version 1.
func TestPublishStampsOnlyForPeersThatReadThem(t *testing.T) {
	n, err := New(Spec{Node: NodeSpec{Name: "a", Interface: "lo"},
		Groups: []GroupSpec{{Name: "web", Addresses: []netip.Prefix{netip.MustParsePrefix("198.18.9.1/32")}, Priority: 100}}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	n.send = func([]byte) {}
	views := map[string]GroupView{"web": {Candidate: true, Priority: 1, Yield: true, YieldSince: t0.UnixNano()}}
	e := &engine{n: n, aliveSet: map[string]bool{"b": true}, peers: map[string]*peerState{"b": {readsV2: false}}}
	sent := func() (byte, GroupView) {
		t.Helper()
		b := *n.tmpl.Load()
		var h Heartbeat
		if err := h.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		return b[1], h.Groups["web"]
	}
	e.publish(views, false)
	if v, g := sent(); v != 1 || g.Yield {
		t.Fatalf("with an older peer alive: version %d, %+v; want version 1 without the stamp", v, g)
	}
	e.peers["b"].readsV2 = true
	e.publish(views, false)
	if v, g := sent(); v != 2 || !g.Yield || g.YieldSince != t0.UnixNano() {
		t.Fatalf("every peer reads version 2: version %d, %+v; want the stamp", v, g)
	}
	e.starting = true
	e.publish(views, false)
	if v, _ := sent(); v != 1 {
		t.Fatalf("while starting: version %d, want 1", v)
	}
}

// TestHeartbeatVotesOnlyWithWitnesses: votes are sent only when witnesses
// make them count, and a heartbeat that cannot be encoded is not replaced
// by the previous one (peers would keep its stale claims): nothing is sent.
func TestHeartbeatVotesOnlyWithWitnesses(t *testing.T) {
	for _, witnesses := range [][]string{nil, {"w"}} {
		spec := Spec{Node: NodeSpec{Name: "a", Interface: "lo"},
			Cluster: &ClusterSpec{Bind: "127.0.0.1:7946", Insecure: true, Members: []string{"a", "b", "w"}, Witnesses: witnesses},
			Groups:  []GroupSpec{{Name: "web", Addresses: []netip.Prefix{netip.MustParsePrefix("198.18.9.1/32")}, Priority: 100}}}
		n, err := New(spec, discardLogger())
		if err != nil {
			t.Fatal(err)
		}
		n.send = func([]byte) {}
		n.addrs, n.announcer = &fakeAddrs{}, &fakeAnnouncer{} // it becomes master: nothing real
		n.queue, n.notes["web"] = newSerialQueue(), newSerialQueue()
		g := &groupRT{spec: &n.spec.Groups[0], role: RoleBackup}
		e := &engine{n: n, groups: []*groupRT{g},
			ts: trackState{links: map[string]bool{"lo": true}, scripts: map[string]bool{}, services: map[string]bool{}},
			// b alive: with the witness, two of three members make a quorum.
			peers:    map[string]*peerState{"b": {lastSeen: t0, groups: map[string]GroupView{"web": cand(50, false)}}},
			aliveSet: map[string]bool{"b": true}}
		e.evaluate(t0)
		g.stopAnnouncing()
		n.queue.close(context.Background())
		n.notes["web"].close(context.Background())
		var h Heartbeat
		if err := h.UnmarshalBinary(*n.tmpl.Load()); err != nil {
			t.Fatal(err)
		}
		if got, want := h.Groups["web"].Vote, map[bool]string{false: "", true: "a"}[witnesses != nil]; got != want {
			t.Errorf("witnesses %v: vote %q, want %q", witnesses, got, want)
		}
	}
	n, err := New(Spec{Node: NodeSpec{Name: "a", Interface: "lo"}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	n.send = func([]byte) {}
	e := &engine{n: n, aliveSet: map[string]bool{}, peers: map[string]*peerState{}}
	e.publish(map[string]GroupView{"web": {Candidate: true, Claim: true}}, false)
	if n.tmpl.Load() == nil {
		t.Fatal("no heartbeat for a small view")
	}
	huge := map[string]GroupView{}
	for i := range 60 {
		huge[fmt.Sprintf("group-with-a-long-name-%02d", i)] = GroupView{Candidate: true, Vote: strings.Repeat("v", 60)}
	}
	e.publish(huge, false)
	if n.tmpl.Load() != nil {
		t.Fatal("a heartbeat that does not encode left the previous one to be sent")
	}
}

// TestReplayedBootsCannotTakeOver: heartbeats of another boot of a peer
// (the cipher has no replay protection) are taken as a restart only once
// the current boot has been silent for dead_after, and a past boot only
// with heartbeats newer than any it sent: a replay can neither lock the
// live boot out, nor keep a dead peer alive, nor fake a release.
func TestReplayedBootsCannotTakeOver(t *testing.T) {
	n, err := New(Spec{Node: NodeSpec{Name: "a", Interface: "lo"},
		Cluster: &ClusterSpec{Bind: "127.0.0.1:7946", Insecure: true, DeadAfter: 100 * time.Millisecond}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	e := &engine{n: n, peers: map[string]*peerState{}, aliveSet: map[string]bool{}}
	hb := func(boot, seq uint64, at time.Duration, releasing bool) {
		e.handle(hbMsg{h: Heartbeat{Name: "b", Boot: boot, Seq: seq, Releasing: releasing}, at: t0.Add(at)})
	}
	want := func(step string, boot, seq uint64) {
		t.Helper()
		if p := e.peers["b"]; p.boot != boot || p.seq != seq || p.releasing {
			t.Fatalf("%s: boot %d seq %d releasing %v, want boot %d seq %d", step, p.boot, p.seq, p.releasing, boot, seq)
		}
	}
	hb(7, 100, 0, false)
	hb(99, 3, 10*time.Millisecond, true) // a replay while boot 7 is alive
	hb(7, 101, 20*time.Millisecond, false)
	want("a replay of an unknown boot while the peer is alive", 7, 101)
	hb(8, 1, time.Second, false) // boot 7 silent: a real restart
	want("a restart", 8, 1)
	hb(7, 50, 3*time.Second, true) // boot 8 silent too, but this is boot 7's past
	want("a replay of a past boot", 8, 1)
	hb(7, 102, 4*time.Second, false) // newer than anything boot 7 sent: it is back
	want("a past boot that is really back", 7, 102)
}

// TestTrackedStatesSurviveAFullInbox: a tracked state change is reported
// once, so a full inbox (a flood of heartbeats) must not lose it: the
// latest state per kind and name reaches the loop.
func TestTrackedStatesSurviveAFullInbox(t *testing.T) {
	n, err := New(Spec{Node: NodeSpec{Name: "a", Interface: "lo"}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	for len(n.inbox) < cap(n.inbox) {
		n.inbox <- hbMsg{}
	}
	n.SetServiceQuorum("web", false)
	n.SetServiceQuorum("db", false)
	n.SetServiceQuorum("web", true) // the latest wins
	n.post(trackMsg{kind: "link", name: "eth0", up: false})
	select {
	case <-n.trackWake:
	default:
		t.Fatal("no wake-up for the loop")
	}
	got := map[string]bool{}
	for _, m := range n.takeTracks() {
		got[m.kind+"/"+m.name] = m.up
	}
	want := map[string]bool{"service/web": true, "service/db": false, "link/eth0": false}
	if !maps.Equal(got, want) {
		t.Fatalf("tracked states %v, want %v", got, want)
	}
	if n.dropped.Load() != 0 {
		t.Fatalf("%d tracked states dropped", n.dropped.Load())
	}
}
