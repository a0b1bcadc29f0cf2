package vrrp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAddrs records address changes instead of touching the kernel.
type fakeAddrs struct {
	mu  sync.Mutex
	log []string
}

func (f *fakeAddrs) add(ifname string, a []netip.Prefix) error    { return f.rec("add", ifname, a) }
func (f *fakeAddrs) remove(ifname string, a []netip.Prefix) error { return f.rec("remove", ifname, a) }
func (f *fakeAddrs) rec(op, ifname string, a []netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ps []string
	for _, p := range a {
		ps = append(ps, p.String())
	}
	f.log = append(f.log, op+" "+ifname+" "+strings.Join(ps, ","))
	return nil
}
func (f *fakeAddrs) ops() string { f.mu.Lock(); defer f.mu.Unlock(); return strings.Join(f.log, "; ") }

func (f *fakeAnnouncer) count() int { f.mu.Lock(); defer f.mu.Unlock(); return f.n }

type fakeAnnouncer struct {
	mu sync.Mutex
	n  int
}

func (f *fakeAnnouncer) announce(string, []netip.Prefix) error {
	f.mu.Lock()
	f.n++
	f.mu.Unlock()
	return nil
}

// TestStandaloneNodeLifecycle runs a standalone node on lo with fake address
// and announcement back ends: it owns its group, announces a burst, gives
// the group up on an operator fault, takes it back, and releases on Stop,
// with events and notify scripts in order.
func TestStandaloneNodeLifecycle(t *testing.T) {
	notes := filepath.Join(t.TempDir(), "notes")
	script := []string{"sh", "-c", `echo "$LVSD_STATE $LVSD_PREV_STATE" >> ` + notes}
	spec := Spec{Node: NodeSpec{Name: "solo", Interface: "lo"},
		Groups: []GroupSpec{{Name: "web", Addresses: []netip.Prefix{netip.MustParsePrefix("198.18.9.1/32")}, Priority: 100,
			GARPCount: 3, GARPInterval: time.Millisecond, NotifyMaster: script, NotifyFault: script, NotifyStop: script}}}
	n, err := New(spec, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	addrs, ann := &fakeAddrs{}, &fakeAnnouncer{}
	n.addrs, n.announcer = addrs, ann
	events := make(chan Event, 16)
	n.SetEventHandler(func(e Event) { events <- e })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	expect := func(state Role) Event {
		t.Helper()
		select {
		case e := <-events:
			if e.State != state {
				t.Fatalf("event %+v, want state %v", e, state)
			}
			return e
		case <-ctx.Done():
			t.Fatalf("no %v event", state)
		}
		return Event{}
	}
	expect(RoleMaster)
	for i := 0; i < 500 && ann.count() < 3; i++ { // the takeover burst
		time.Sleep(2 * time.Millisecond)
	}
	if c := ann.count(); c < 3 {
		t.Fatalf("announced %d times, want a burst of 3", c)
	}
	if err := n.SetFault("web", true); err != nil {
		t.Fatal(err)
	}
	if e := expect(RoleFault); !strings.Contains(e.Reason, "set by operator") {
		t.Fatalf("fault reason %q", e.Reason)
	}
	if st := n.Status(); st.Groups[0].State != RoleFault || st.Groups[0].Override != OverrideFault {
		t.Fatalf("status %+v", st.Groups[0])
	}
	if err := n.ClearOverride("web"); err != nil {
		t.Fatal(err)
	}
	expect(RoleMaster)
	if err := n.Demote("nope"); err == nil || !strings.Contains(err.Error(), `no vip_group named "nope"`) {
		t.Fatalf("unknown group: %v", err)
	}
	if err := n.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	expect(RoleStopped)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The stale-copy removal at start, then take/release/take/release.
	want := "remove lo 198.18.9.1/32; add lo 198.18.9.1/32; remove lo 198.18.9.1/32; add lo 198.18.9.1/32; remove lo 198.18.9.1/32"
	if got := addrs.ops(); got != want {
		t.Fatalf("address ops:\n got %s\nwant %s", got, want)
	}
	b, _ := os.ReadFile(notes) // Run waited for the notify queues
	if got := strings.TrimSpace(string(b)); got != "master backup\nfault master\nmaster fault\nstopped master" {
		t.Fatalf("notify scripts ran as:\n%s", got)
	}
}

func TestStartHoldEndsOnceEveryPeerIsHeard(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cluster *ClusterSpec
		alive   []string
		want    bool
	}{
		{"standalone", nil, nil, true},
		{"members all heard", &ClusterSpec{Members: []string{"a", "b", "w"}}, []string{"b", "w"}, true},
		{"a member missing", &ClusterSpec{Members: []string{"a", "b", "w"}}, []string{"b"}, false},
		{"peers by address all heard", &ClusterSpec{Peers: []string{"198.18.0.12:7946"}}, []string{"b"}, true},
		{"peers by address none heard", &ClusterSpec{Peers: []string{"198.18.0.12:7946"}}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &engine{n: &Node{spec: Spec{Node: NodeSpec{Name: "a"}, Cluster: tc.cluster}}, aliveSet: map[string]bool{}}
			for _, p := range tc.alive {
				e.aliveSet[p] = true
			}
			if got := e.heardAll(); got != tc.want {
				t.Fatalf("heardAll = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestUpdateGroupsInPlace: a reload changes a running group's addresses
// and priority; the owner adds and removes just the changed addresses and
// announces again. A change needing a restart is refused whole.
func TestUpdateGroupsInPlace(t *testing.T) {
	vip := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, a := range s {
			out = append(out, netip.MustParsePrefix(a))
		}
		return out
	}
	web := GroupSpec{Name: "web", Addresses: vip("198.18.9.1/32", "198.18.9.2/32"), Priority: 100, GARPCount: 2, GARPInterval: time.Millisecond}
	n, err := New(Spec{Node: NodeSpec{Name: "solo", Interface: "lo"}, Groups: []GroupSpec{web}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	addrs, ann := &fakeAddrs{}, &fakeAnnouncer{}
	n.addrs, n.announcer = addrs, ann
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for i := 0; i < 1000 && !cond(); i++ {
			time.Sleep(2 * time.Millisecond)
		}
		if !cond() {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
	waitFor("master", func() bool { g := n.Status().Groups; return len(g) == 1 && g[0].State == RoleMaster })
	waitFor("the takeover burst", func() bool { return ann.count() >= 2 })
	if err := n.Demote("web"); err != nil { // an override survives the update
		t.Fatal(err)
	}

	before := ann.count()
	upd := web
	upd.Addresses, upd.Priority = vip("198.18.9.2/32", "198.18.9.3/32"), 120
	if err := n.UpdateGroups([]GroupSpec{upd}); err != nil {
		t.Fatal(err)
	}
	g := n.Status().Groups[0]
	if g.State != RoleMaster || g.Base != 120 || g.Override != OverrideDemote || strings.Join(g.Addresses, " ") != "198.18.9.2/32 198.18.9.3/32" {
		t.Fatalf("after the update: %+v", g)
	}
	waitFor("a new burst", func() bool { return ann.count() >= before+2 })
	want := "remove lo 198.18.9.1/32,198.18.9.2/32; add lo 198.18.9.1/32,198.18.9.2/32; remove lo 198.18.9.1/32; add lo 198.18.9.3/32"
	if got := addrs.ops(); got != want {
		t.Fatalf("address ops:\n got %s\nwant %s", got, want)
	}

	for name, c := range map[string]struct {
		groups []GroupSpec
		want   string
	}{
		"interface": {[]GroupSpec{{Name: "web", Interface: "eth9", Addresses: upd.Addresses, Priority: 120}}, "interface lo -> eth9"},
		"renamed":   {[]GroupSpec{{Name: "db", Addresses: upd.Addresses, Priority: 120}}, `vip_group "web" became "db"`},
		"added":     {[]GroupSpec{upd, {Name: "db", Addresses: vip("198.18.9.9/32"), Priority: 1}}, "adding or removing a group"},
		"tracking":  {[]GroupSpec{{Name: "web", Addresses: upd.Addresses, Priority: 120, TrackInterface: []TrackInterface{{Name: "lo"}}}}, "track_interface names changed"},
		"invalid":   {[]GroupSpec{{Name: "web", Addresses: upd.Addresses, Priority: 300}}, "priority 300 out of range"},
	} {
		if err := n.UpdateGroups(c.groups); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", name, err, c.want)
		}
	}
	if g := n.Status().Groups[0]; g.Base != 120 || strings.Join(g.Addresses, " ") != "198.18.9.2/32 198.18.9.3/32" {
		t.Fatalf("a refused update changed the group: %+v", g)
	}
	if got := addrs.ops(); got != want {
		t.Fatalf("a refused update touched addresses:\n got %s\nwant %s", got, want)
	}
	if err := n.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := addrs.ops(); !strings.HasSuffix(got, "; remove lo 198.18.9.2/32,198.18.9.3/32") {
		t.Fatalf("stop released %s, want the updated addresses", got)
	}
}

// setAddrs keeps the set of addresses on the interface.
type setAddrs struct {
	mu  sync.Mutex
	set map[netip.Prefix]bool
}

func (f *setAddrs) add(_ string, a []netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range a {
		f.set[p] = true
	}
	return nil
}

func (f *setAddrs) remove(_ string, a []netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range a {
		delete(f.set, p)
	}
	return nil
}

// TestUpdateGroupsMovesAddressBetweenOwnedGroups: an address a reload moves
// from one group to another, both owned here, stays on the interface
// (removals never take what another owned group now holds).
func TestUpdateGroupsMovesAddressBetweenOwnedGroups(t *testing.T) {
	p := netip.MustParsePrefix
	b := GroupSpec{Name: "b", Addresses: []netip.Prefix{p("198.18.9.3/32")}, Priority: 100, GARPCount: 1, GARPInterval: time.Millisecond}
	a := GroupSpec{Name: "a", Addresses: []netip.Prefix{p("198.18.9.1/32"), p("198.18.9.2/32")}, Priority: 100, GARPCount: 1, GARPInterval: time.Millisecond}
	n, err := New(Spec{Node: NodeSpec{Name: "solo", Interface: "lo"}, Groups: []GroupSpec{b, a}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	addrs := &setAddrs{set: map[netip.Prefix]bool{}}
	n.addrs, n.announcer = addrs, &fakeAnnouncer{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	for i := 0; i < 1000; i++ {
		if g := n.Status().Groups; len(g) == 2 && g[0].State == RoleMaster && g[1].State == RoleMaster {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	b2, a2 := b, a
	b2.Addresses = []netip.Prefix{p("198.18.9.2/32"), p("198.18.9.3/32")}
	a2.Addresses = []netip.Prefix{p("198.18.9.1/32")}
	if err := n.UpdateGroups([]GroupSpec{b2, a2}); err != nil {
		t.Fatal(err)
	}
	addrs.mu.Lock()
	got := len(addrs.set) == 3 && addrs.set[p("198.18.9.2/32")]
	have := fmt.Sprint(addrs.set)
	addrs.mu.Unlock()
	if !got {
		t.Errorf("198.18.9.2 moved from a to b, both owned here: interface has %s, want .1 .2 .3", have)
	}
	if err := n.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	<-done
}

// failingAddrs fails its first adds.
type failingAddrs struct {
	fakeAddrs
	fails int
}

func (f *failingAddrs) add(ifname string, a []netip.Prefix) error {
	f.mu.Lock()
	fail := f.fails > 0
	f.fails--
	f.mu.Unlock()
	if fail {
		return errors.New("operation not permitted")
	}
	return f.fakeAddrs.add(ifname, a)
}

// TestAddressFailureIsFault: a group whose addresses cannot be added does
// not claim (peers would defer to a claim without addresses): it goes to
// fault with the reason, and takes the group once the add works.
func TestAddressFailureIsFault(t *testing.T) {
	spec := Spec{Node: NodeSpec{Name: "solo", Interface: "lo"},
		Groups: []GroupSpec{{Name: "web", Addresses: []netip.Prefix{netip.MustParsePrefix("198.18.9.1/32")}, Priority: 100,
			GARPCount: 1, GARPInterval: time.Millisecond}}}
	n, err := New(spec, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	addrs := &failingAddrs{fails: 1}
	n.addrs, n.announcer = addrs, &fakeAnnouncer{}
	events := make(chan Event, 16)
	n.SetEventHandler(func(e Event) { events <- e })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	var seen []string
	for len(seen) < 2 {
		select {
		case e := <-events:
			seen = append(seen, e.State.String()+": "+e.Reason)
		case <-ctx.Done():
			t.Fatalf("events %v, want fault then master", seen)
		}
	}
	if !strings.HasPrefix(seen[0], "fault: fault: cannot add its addresses: operation not permitted") || !strings.HasPrefix(seen[1], "master") {
		t.Fatalf("events %v, want fault (cannot add its addresses) then master", seen)
	}
	if err := n.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	<-done
	if got := addrs.ops(); !strings.Contains(got, "add lo 198.18.9.1/32") {
		t.Fatalf("address ops %q: the retry never added the address", got)
	}
}

// TestAddressFailureDoesNotPreempt: a group whose addresses failed does not
// retry (and so take the group from a live owner only to fail again) while
// a peer holds it: it stays in fault and backs off, 2 s doubling to 1 min.
func TestAddressFailureDoesNotPreempt(t *testing.T) {
	for fails, want := range map[int]time.Duration{1: 2 * time.Second, 2: 4 * time.Second, 5: 32 * time.Second, 6: time.Minute, 40: time.Minute} {
		if got := addrBackoff(fails); got != want {
			t.Errorf("addrBackoff(%d) = %v, want %v", fails, got, want)
		}
	}
	spec := Spec{Node: NodeSpec{Name: "a", Interface: "lo"},
		Cluster: &ClusterSpec{Bind: "127.0.0.1:7946", Insecure: true, DeadAfter: 100 * time.Millisecond},
		Groups:  []GroupSpec{{Name: "web", Addresses: []netip.Prefix{netip.MustParsePrefix("198.18.9.1/32")}, Priority: 200, Preempt: true}}}
	n, err := New(spec, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	n.send = func([]byte) {}
	n.addrs, n.announcer = &fakeAddrs{}, &fakeAnnouncer{}
	n.queue, n.notes["web"] = newSerialQueue(), newSerialQueue()
	defer n.queue.close(context.Background())
	defer n.notes["web"].close(context.Background())
	g := &groupRT{spec: &n.spec.Groups[0], role: RoleFault, addrErr: errors.New("operation not permitted"), addrRetry: t0, addrFails: 1}
	e := &engine{n: n, groups: []*groupRT{g},
		ts:       trackState{links: map[string]bool{"lo": true}, scripts: map[string]bool{}, services: map[string]bool{}},
		peers:    map[string]*peerState{"b": {lastSeen: t0, groups: map[string]GroupView{"web": cand(100, true)}}},
		aliveSet: map[string]bool{"b": true}}
	e.evaluate(t0.Add(time.Millisecond))
	if g.claiming || g.role != RoleFault || g.addrErr == nil || !g.addrRetry.After(t0.Add(time.Second)) {
		t.Fatalf("with a live owner: claiming %v role %v retry at %v; want fault, no takeover, retry pushed back", g.claiming, g.role, g.addrRetry.Sub(t0))
	}
}
