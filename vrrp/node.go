package vrrp

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Event is one ownership transition of a group on this node.
type Event struct {
	Group  string
	State  Role
	Prev   Role
	Owner  string // who this node believes owns the group now
	Reason string
	At     time.Time
}

// Status is a snapshot for the control API and metrics.
type Status struct {
	Node    string
	Witness bool
	Quorum  bool
	Visible int // members visible, self included
	Needed  int // majority needed (0: no quorum required)
	Members []MemberStatus
	Groups  []GroupStatus
}

// MemberStatus is one configured or heard-from peer.
type MemberStatus struct {
	Name     string
	Alive    bool
	LastSeen time.Time // zero: never heard from
	Boot     uint64
	Gossip   string // memberlist's view: alive, suspect, dead, left, or ""
}

// GroupStatus is one local group.
type GroupStatus struct {
	Name     string
	State    Role
	Owner    string
	Priority uint8 // effective
	Base     int   // configured
	Fault    bool
	Reason   string
	Override Override
	// PromotedPeers are the live peers holding a promote of the group
	// (priority 255, which only a promote gives).
	PromotedPeers []string
	// PeerDemotedAt is the latest demotion stamp a peer announced for the
	// group (zero: none), dead peers included. A demotion here must be stamped after it to
	// count as the later one, whatever the clocks say (see SetOverride).
	PeerDemotedAt time.Time
	// Successor is the live, eligible peer that would take the group if this
	// node gave it up ("" none).
	Successor string
	// OverrideSince is when the operator set Override (orders demotions).
	OverrideSince time.Time
	Since         time.Time // last transition
	Addresses     []string
}

// Node runs the election for its groups and owns their addresses while it
// is master. Create it with New, start Run, stop with Stop (graceful).
type Node struct {
	spec    Spec
	log     *slog.Logger
	boot    uint64
	scripts map[string]*TrackScriptSpec

	addrs     addresser
	announcer announcer
	cl        atomic.Pointer[cluster] // set by Run
	send      func([]byte)            // heartbeat transport (cluster.send)

	inbox     chan any
	trackMu   sync.Mutex
	tracks    map[[2]string]trackMsg // latest tracked state per kind and name, for the loop
	trackWake chan struct{}
	tmpl      atomic.Pointer[[]byte] // current heartbeat, seq patched at send
	lastBadHB atomic.Int64           // Unix ns of the last unreadable heartbeat logged
	kick      chan struct{}          // send a heartbeat now
	queue     *serialQueue           // events, digests, user messages
	notes     map[string]*serialQueue

	mu        sync.Mutex
	status    Status
	onEvent   func(Event)
	onMessage func([]byte)
	onDigest  func(peer string, digest []byte)
	digest    []byte

	delegate atomic.Pointer[StateDelegate]

	running  atomic.Bool
	stopReq  chan context.Context
	finished chan struct{}
	dropped  atomic.Uint64
}

// New checks the spec and prepares a node; it touches no kernel state and
// opens no socket until Run.
func New(spec Spec, lg *slog.Logger) (*Node, error) {
	if lg == nil {
		lg = slog.Default()
	}
	spec = cloneSpec(spec)
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("vrrp: boot id: %w", err)
	}
	n := &Node{
		spec: spec, log: lg.With("node", spec.Node.Name), boot: binary.BigEndian.Uint64(b[:]),
		scripts: map[string]*TrackScriptSpec{}, addrs: netlinkAddresser{}, announcer: garpAnnouncer{},
		inbox: make(chan any, 512), kick: make(chan struct{}, 1), trackWake: make(chan struct{}, 1),
		stopReq: make(chan context.Context, 1), finished: make(chan struct{}),
		notes: map[string]*serialQueue{},
	}
	for i := range n.spec.TrackScripts {
		n.scripts[n.spec.TrackScripts[i].Name] = &n.spec.TrackScripts[i]
	}
	return n, nil
}

func cloneSpec(s Spec) Spec {
	out := s
	if s.Cluster != nil {
		c := *s.Cluster
		out.Cluster = &c
	}
	out.Groups = slices.Clone(s.Groups)
	out.TrackScripts = slices.Clone(s.TrackScripts)
	out.ServiceUp = maps.Clone(s.ServiceUp)
	return out
}

// SetEventHandler sets the function called, in order and off the election
// loop, for every transition. Call before Run.
func (n *Node) SetEventHandler(f func(Event)) { n.mu.Lock(); n.onEvent = f; n.mu.Unlock() }

// SetMessageHandler sets the receiver of other members' Broadcast messages.
func (n *Node) SetMessageHandler(f func([]byte)) { n.mu.Lock(); n.onMessage = f; n.mu.Unlock() }

// SetDigestHandler sets the receiver of peers' heartbeat digests; it is
// called when a peer's digest changes.
func (n *Node) SetDigestHandler(f func(peer string, digest []byte)) {
	n.mu.Lock()
	n.onDigest = f
	n.mu.Unlock()
}

// SetDigest sets the opaque bytes (at most 512) carried in every heartbeat.
func (n *Node) SetDigest(d []byte) error {
	if len(d) > maxDigest {
		return fmt.Errorf("vrrp: digest of %d bytes, at most %d", len(d), maxDigest)
	}
	n.mu.Lock()
	n.digest = slices.Clone(d)
	n.mu.Unlock()
	n.post(ctlMsg{op: "digest"})
	return nil
}

// SetStateDelegate hooks the daemon's state into memberlist's push-pull.
func (n *Node) SetStateDelegate(d StateDelegate) {
	n.delegate.Store(&d)
}

// Broadcast gossips b to all members (delivered to their message handler).
func (n *Node) Broadcast(b []byte) error {
	cl := n.cl.Load()
	if cl == nil {
		return errors.New("vrrp: broadcast: no cluster (standalone, or not running)")
	}
	return cl.broadcast(b)
}

// Members reports memberlist's view of the cluster (empty when standalone).
func (n *Node) Members() []MemberInfo {
	if cl := n.cl.Load(); cl != nil {
		return cl.members()
	}
	return nil
}

// Status returns a snapshot.
func (n *Node) Status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.status
	s.Members = slices.Clone(s.Members)
	s.Groups = slices.Clone(s.Groups)
	return s
}

// SetServiceQuorum reports a service's quorum (from health checks); groups
// that track the service lower their priority or fault while it is down.
func (n *Node) SetServiceQuorum(name string, up bool) {
	n.post(trackMsg{kind: "service", name: name, up: up})
}

// Demote hands the group to any other eligible node at once and keeps this
// node at priority 1 until ClearOverride.
func (n *Node) Demote(group string) error {
	return n.SetOverride(group, OverrideDemote, n.DemotionStamp(group, time.Now()))
}

// DemotionStamp is the stamp for a demotion of group made now: now, or just
// after the latest demotion a live peer announces if that is not earlier,
// so a demotion made here last counts as the later one even when this
// node's clock is behind.
func (n *Node) DemotionStamp(group string, now time.Time) time.Time {
	for _, g := range n.Status().Groups {
		if g.Name == group && !now.After(g.PeerDemotedAt) {
			return g.PeerDemotedAt.Add(time.Millisecond)
		}
	}
	return now
}

// Promote takes the group over regardless of preemption settings and keeps
// it (priority 255) until ClearOverride.
func (n *Node) Promote(group string) error { return n.SetOverride(group, OverridePromote, time.Now()) }

// SetFault puts the group into fault (giving it up) or clears that.
func (n *Node) SetFault(group string, fault bool) error {
	if fault {
		return n.SetOverride(group, OverrideFault, time.Now())
	}
	return n.SetOverride(group, OverrideNone, time.Time{})
}

// ClearOverride removes any Demote, Promote or SetFault.
func (n *Node) ClearOverride(group string) error {
	return n.SetOverride(group, OverrideNone, time.Time{})
}

// SetOverride sets a group's standing override, stamped with the time the
// operator gave it (the caller persists the same stamp; for a demotion, use
// DemotionStamp). Between two demoted nodes the one demoted later gives way.
func (n *Node) SetOverride(group string, o Override, since time.Time) error {
	if !slices.ContainsFunc(n.spec.Groups, func(g GroupSpec) bool { return g.Name == group }) {
		return fmt.Errorf("vrrp: no vip_group named %q", group)
	}
	if !n.running.Load() {
		return errors.New("vrrp: node is not running")
	}
	reply := make(chan struct{})
	select {
	case n.inbox <- ctlMsg{op: "override", group: group, override: o, since: since, done: reply}:
	case <-n.finished:
		return errors.New("vrrp: node stopped")
	}
	select {
	case <-reply:
		return nil
	case <-n.finished:
		return errors.New("vrrp: node stopped")
	}
}

// UpdateGroups applies changed VIP group settings to the running election
// (a config reload): addresses, priority, preemption, announcements,
// notify scripts and tracking weights. The groups must be the same, in the
// same order, on the same interfaces, tracking the same interfaces and
// scripts: those need a restart, and such an update is refused as a whole
// with an error saying what differs. A group that holds its addresses adds
// and removes the changed ones and announces again.
func (n *Node) UpdateGroups(groups []GroupSpec) error {
	s := cloneSpec(n.spec)
	s.Groups = slices.Clone(groups)
	if err := s.Validate(); err != nil {
		return err
	}
	if !n.running.Load() {
		return errors.New("vrrp: node is not running")
	}
	m := &ctlMsg{op: "groups", groups: s.Groups, done: make(chan struct{})}
	select {
	case n.inbox <- m:
	case <-n.finished:
		return errors.New("vrrp: node stopped")
	}
	select {
	case <-m.done:
		return m.err
	case <-n.finished:
		return errors.New("vrrp: node stopped")
	}
}

// inPlace says why new cannot replace old in a running node ("" if it can).
func inPlace(old, new *GroupSpec) string {
	switch {
	case old.Name != new.Name:
		return fmt.Sprintf("vip_group %q became %q", old.Name, new.Name)
	case old.Interface != new.Interface:
		return fmt.Sprintf("vip_group %q: interface %s -> %s", old.Name, old.Interface, new.Interface)
	}
	oldIf, newIf := map[string]bool{}, map[string]bool{}
	for _, t := range old.TrackInterface {
		oldIf[t.Name] = true
	}
	for _, t := range new.TrackInterface {
		newIf[t.Name] = true
	}
	if !maps.Equal(oldIf, newIf) {
		return fmt.Sprintf("vip_group %q: track_interface names changed", old.Name)
	}
	oldSc, newSc := map[string]bool{}, map[string]bool{}
	for _, t := range old.TrackScript {
		oldSc[t.Name] = true
	}
	for _, t := range new.TrackScript {
		newSc[t.Name] = true
	}
	if !maps.Equal(oldSc, newSc) {
		return fmt.Sprintf("vip_group %q: track_script names changed", old.Name)
	}
	return ""
}

// updateGroups is UpdateGroups on the loop.
func (e *engine) updateGroups(groups []GroupSpec) error {
	n := e.n
	if len(groups) != len(e.groups) {
		return fmt.Errorf("vrrp: %d vip_groups running, %d given (adding or removing a group)", len(e.groups), len(groups))
	}
	var why []string
	for i, g := range e.groups {
		if w := inPlace(g.spec, &groups[i]); w != "" {
			why = append(why, w)
		}
	}
	if len(why) > 0 {
		return fmt.Errorf("vrrp: %s", strings.Join(why, "; "))
	}
	// All removals before all additions, and never of an address a group
	// held here still has: an address moving between two groups this node
	// owns must stay on the interface.
	type change struct {
		g              *groupRT
		old            *GroupSpec
		added, removed []netip.Prefix
	}
	var changes []change
	for i, g := range e.groups {
		old, new := g.spec, &groups[i]
		new.Override, new.OverrideSince = old.Override, old.OverrideSince
		g.spec = new
		if g.claiming {
			added, removed := prefixDiff(old.Addresses, new.Addresses)
			changes = append(changes, change{g, old, added, removed})
		}
	}
	held := func(ifname string, p netip.Prefix) bool {
		for _, g := range e.groups {
			if g.claiming && g.spec.Interface == ifname && slices.Contains(g.spec.Addresses, p) {
				return true
			}
		}
		return false
	}
	for _, c := range changes {
		var gone []netip.Prefix
		for _, p := range c.removed {
			if !held(c.g.spec.Interface, p) {
				gone = append(gone, p)
			}
		}
		if len(gone) > 0 {
			if err := n.addrs.remove(c.g.spec.Interface, gone); err != nil {
				n.log.Error("removing addresses dropped from the group", "group", c.g.spec.Name, "err", err)
			}
		}
	}
	for _, c := range changes {
		if len(c.added) > 0 {
			if err := n.addrs.add(c.g.spec.Interface, c.added); err != nil {
				n.log.Error("adding addresses new to the group", "group", c.g.spec.Name, "err", err)
			}
		}
	}
	for _, c := range changes {
		g, old, new := c.g, c.old, c.g.spec
		if len(c.added)+len(c.removed) > 0 || old.GARPCount != new.GARPCount || old.GARPInterval != new.GARPInterval || old.GARPRefresh != new.GARPRefresh {
			// The announcer holds the spec it started with: start anew,
			// with a burst for the new addresses.
			lg := n.log.With("group", new.Name)
			lg.Info("group updated while owner: announcing again", "added", c.added, "removed", c.removed)
			g.stopAnnouncing()
			actx, cancel := context.WithCancel(context.Background())
			g.annCancel, g.annKick = cancel, make(chan struct{}, 1)
			go announceLoop(actx, n.announcer, g.spec, g.annKick, lg)
		}
	}
	n.log.Info("vip_groups updated", "groups", len(groups))
	e.dirty = true
	return nil
}

// prefixDiff returns the prefixes of b not in a, and of a not in b.
func prefixDiff(a, b []netip.Prefix) (added, removed []netip.Prefix) {
	for _, p := range b {
		if !slices.Contains(a, p) {
			added = append(added, p)
		}
	}
	for _, p := range a {
		if !slices.Contains(b, p) {
			removed = append(removed, p)
		}
	}
	return added, removed
}

func (n *Node) post(m any) {
	if t, ok := m.(trackMsg); ok {
		n.postTrack(t)
		return
	}
	select {
	case n.inbox <- m:
	default:
		n.dropped.Add(1)
	}
}

// postTrack records a tracked state for the loop. Tracked states are sent
// only when they change, so unlike a heartbeat (the next one follows) none
// may be lost to a full inbox: the latest per kind and name waits here and
// a wake-up, which cannot be lost, tells the loop.
func (n *Node) postTrack(t trackMsg) {
	n.trackMu.Lock()
	if n.tracks == nil {
		n.tracks = map[[2]string]trackMsg{}
	}
	n.tracks[[2]string{t.kind, t.name}] = t
	n.trackMu.Unlock()
	select {
	case n.trackWake <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// takeTracks returns the tracked states posted since the last call.
func (n *Node) takeTracks() []trackMsg {
	n.trackMu.Lock()
	defer n.trackMu.Unlock()
	out := make([]trackMsg, 0, len(n.tracks))
	for _, t := range n.tracks {
		out = append(out, t)
	}
	clear(n.tracks)
	return out
}

// Stop hands over gracefully: releases every group at once (removing the
// addresses), tells the peers so they take over without waiting for
// dead_after, runs the stop notifications, leaves the cluster, and waits for
// Run to return (bounded by ctx).
func (n *Node) Stop(ctx context.Context) error {
	if !n.running.Load() {
		return nil
	}
	select {
	case n.stopReq <- ctx:
	default:
	}
	select {
	case <-n.finished:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("vrrp: stopping: %w", ctx.Err())
	}
}

type hbMsg struct {
	h  Heartbeat
	at time.Time
}

type trackMsg struct {
	kind, name, detail string
	up                 bool
}

type ctlMsg struct {
	op       string
	group    string
	override Override
	since    time.Time
	groups   []GroupSpec // op "groups"
	err      error       // op "groups": the answer, set before done closes
	done     chan struct{}
}

type peerState struct {
	boot, seq  uint64
	lastSeen   time.Time
	graceUntil time.Time // see deathGrace
	releasing  bool
	readsV2    bool
	retired    map[uint64]uint64 // the peer's past boots and the last seq heard from each
	groups     map[string]GroupView
	digest     []byte
}

type groupRT struct {
	spec      *GroupSpec
	role      Role
	claiming  bool
	owner     string
	reason    string
	since     time.Time
	override  Override
	overSince time.Time // when the override was set
	conflict  bool
	annCancel context.CancelFunc
	annKick   chan struct{}
	successor string
	// addrErr is why the addresses could not be added at the last takeover;
	// the group is in fault until addrRetry, then tries again.
	addrErr   error
	addrRetry time.Time
	addrFails int // consecutive failed takeovers, for the back-off
	prio      uint8
	fault     bool
}

// Run starts the cluster, trackers and election loop and blocks until ctx
// ends or Stop is called; either way it hands over gracefully.
func (n *Node) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("vrrp: Run called twice")
	}
	defer close(n.finished)
	lg := n.log
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if c := n.spec.Cluster; c != nil && c.Realtime > 0 {
		if err := setRealtime(c.Realtime); err != nil {
			lg.Warn("realtime scheduling unavailable: heartbeats may stall on a busy host", "err", err)
		} else {
			lg.Info("realtime scheduling enabled", "policy", "SCHED_RR", "priority", c.Realtime)
		}
	}
	n.queue = newSerialQueue()
	defer n.queue.close(context.Background())
	stopCtx := context.Background() // Stop's, once asked
	defer func() {
		for _, q := range n.notes { // let notify scripts finish (each bounded by notify_timeout)
			q.close(stopCtx)
		}
	}()

	groups := make([]*groupRT, len(n.spec.Groups))
	now := time.Now()
	ifaces := map[string]bool{}
	for i := range n.spec.Groups {
		g := &n.spec.Groups[i]
		groups[i] = &groupRT{spec: g, role: RoleBackup, since: now, reason: "starting",
			override: g.Override, overSince: g.OverrideSince}
		n.notes[g.Name] = newSerialQueue()
		ifaces[g.Interface] = true
		for _, ti := range g.TrackInterface {
			ifaces[ti.Name] = true
		}
		// A crashed previous run may have left our addresses behind; we are
		// not the owner yet, so they must go.
		if err := n.addrs.remove(g.Interface, g.Addresses); err != nil {
			lg.Warn("removing stale addresses", "group", g.Name, "err", err)
		}
	}
	ifList := slices.Sorted(maps.Keys(ifaces))
	ts := trackState{links: readLinks(ifList), scripts: map[string]bool{}, services: maps.Clone(n.spec.ServiceUp)}
	if ts.services == nil {
		ts.services = map[string]bool{}
	}
	if len(ifList) > 0 {
		err := watchLinks(runCtx, ifList, lg, func(name string, up bool) {
			n.post(trackMsg{kind: "link", name: name, up: up})
		})
		if err != nil {
			return fmt.Errorf("vrrp: %w", err)
		}
	}
	used := map[string]bool{}
	for _, g := range n.spec.Groups {
		for _, tr := range g.TrackScript {
			used[tr.Name] = true
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for name := range used {
		s := n.scripts[name]
		wg.Go(func() {
			runScript(runCtx, s, lg, func(name string, up bool, detail string) {
				n.post(trackMsg{kind: "script", name: name, up: up, detail: detail})
			})
		})
	}

	var hold time.Duration
	if c := n.spec.Cluster; c != nil {
		cl, err := newCluster(c, n.spec.Node.Name, lg, &n.delegate, n.receive)
		if err != nil {
			return fmt.Errorf("vrrp: %w", err)
		}
		n.cl.Store(cl)
		n.send, hold = cl.send, c.DeadAfter
		wg.Go(func() { cl.run(runCtx) })
		wg.Go(func() { n.sendLoop(runCtx, c.HeartbeatInterval) })
	}

	e := &engine{n: n, groups: groups, ts: ts, peers: map[string]*peerState{}, started: now, hold: hold}
	e.evaluate(time.Now())
	timer := time.NewTimer(e.nextWake(time.Now()))
	defer timer.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case stopCtx = <-n.stopReq:
			break loop
		case m := <-n.inbox:
			e.handle(m)
		case <-n.trackWake:
			for _, t := range n.takeTracks() {
				e.handle(t)
			}
		case <-timer.C:
			// A deadline passed: first take in whatever arrived meanwhile
			// (this loop may have been scheduled late), so a peer is not
			// declared dead with its heartbeat waiting in the inbox.
			for drained := false; !drained; {
				select {
				case m := <-n.inbox:
					e.handle(m)
				default:
					drained = true
				}
			}
		}
		now := time.Now()
		if e.dirty || e.expired(now) || e.addrRetryDue(now) {
			e.evaluate(now)
		}
		timer.Reset(e.nextWake(now))
	}
	e.shutdown()
	cancel()
	if cl := n.cl.Load(); cl != nil {
		cl.close(500 * time.Millisecond)
	}
	return nil
}

// receive runs on memberlist's goroutine: decode and hand over, never block.
func (n *Node) receive(kind byte, payload []byte, at time.Time) {
	switch kind {
	case msgHeartbeat:
		var h Heartbeat
		if err := h.UnmarshalBinary(append([]byte{kind}, payload...)); err != nil {
			// A peer whose heartbeats cannot be read counts as dead: say so
			// loudly (once a minute), it may run another lvsd version.
			if now := time.Now().UnixNano(); now-n.lastBadHB.Load() > int64(time.Minute) {
				n.lastBadHB.Store(now)
				n.log.Warn("dropping heartbeats that cannot be read (a peer on another lvsd version?)", "err", err)
			} else {
				n.log.Debug("dropping malformed heartbeat", "err", err)
			}
			return
		}
		n.post(hbMsg{h: h, at: at})
	case msgUser:
		msg := slices.Clone(payload)
		n.mu.Lock()
		f := n.onMessage
		n.mu.Unlock()
		if f != nil && n.queue != nil {
			n.queue.push(func() { f(msg) })
		}
	}
}

// sendLoop sends the current heartbeat every interval and whenever kicked.
// It does nothing else so that it stays cheap under CPU pressure.
func (n *Node) sendLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var seq uint64
	buf := make([]byte, 0, maxHeartbeat)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.kick:
		}
		if p := n.tmpl.Load(); p != nil {
			seq++
			buf = append(buf[:0], *p...)
			setSeq(buf, seq)
			n.send(buf)
		}
	}
}

// engine is the election loop's state; only Run's goroutine touches it.
type engine struct {
	n           *Node
	groups      []*groupRT
	ts          trackState
	peers       map[string]*peerState
	aliveSet    map[string]bool
	st          ElectionState
	started     time.Time
	hold        time.Duration
	dirty       bool
	wake        time.Time // preempt delay
	lastViews   map[string]GroupView
	lastDig     []byte
	lastV1Only  bool
	lastDupWarn time.Time // last warning about another node with our name
	released    bool
	starting    bool
}

func (e *engine) handle(m any) {
	n := e.n
	switch m := m.(type) {
	case hbMsg:
		h := m.h
		if h.Name == n.spec.Node.Name {
			if now := time.Now(); h.Boot != n.boot && now.Sub(e.lastDupWarn) > time.Minute {
				e.lastDupWarn = now // once a minute, not 50 lines a second
				n.log.Warn("heartbeat from another node using our name: node names must be unique", "name", h.Name)
			}
			return
		}
		if c := n.spec.Cluster; c != nil && len(c.Members) > 0 && !slices.Contains(c.Members, h.Name) {
			n.log.Debug("heartbeat from a node not in cluster.members", "name", h.Name)
			return
		}
		p := e.peers[h.Name]
		if p == nil {
			p = &peerState{}
			e.peers[h.Name] = p
		}
		if p.boot == h.Boot && h.Seq <= p.seq && !p.lastSeen.IsZero() {
			return // stale or reordered
		}
		if p.boot != h.Boot && !p.lastSeen.IsZero() {
			// Another boot of the peer. The cipher has no replay protection,
			// so this may be a replayed capture, which could keep a dead peer
			// alive, fake a release, or lock the live boot out. A real
			// restart leaves the current boot silent first (a process
			// start outlasts dead_after; reordered packets settle within
			// it), and a past boot may only come back with heartbeats newer
			// than any it sent before.
			last, past := p.retired[h.Boot]
			switch {
			case m.at.Sub(p.lastSeen) < e.deadAfter():
				n.log.Debug("dropping a heartbeat of another boot while the current one is alive", "peer", h.Name)
				return
			case past && h.Seq <= last:
				n.log.Debug("dropping a replayed heartbeat of a past boot", "peer", h.Name)
				return
			}
			n.log.Info("peer restarted", "peer", h.Name)
			if p.retired == nil {
				p.retired = map[uint64]uint64{}
			}
			p.retired[p.boot] = p.seq
			if len(p.retired) > maxRetiredBoots { // forget one, any: a bound, not an order
				for b := range p.retired {
					if b != p.boot {
						delete(p.retired, b)
						break
					}
				}
			}
		}
		changed := p.boot != h.Boot || p.releasing != h.Releasing || !maps.Equal(p.groups, h.Groups) || !e.aliveSet[h.Name]
		p.boot, p.seq, p.lastSeen, p.releasing, p.groups = h.Boot, h.Seq, m.at, h.Releasing, h.Groups
		p.readsV2 = h.ReadsV2
		p.graceUntil = time.Time{}
		if string(p.digest) != string(h.Digest) {
			p.digest = h.Digest
			n.mu.Lock()
			f := n.onDigest
			n.mu.Unlock()
			if f != nil {
				name, d := h.Name, h.Digest
				n.queue.push(func() { f(name, d) })
			}
		}
		e.dirty = e.dirty || changed
	case trackMsg:
		switch m.kind {
		case "link":
			e.ts.links[m.name] = m.up
		case "script":
			e.ts.scripts[m.name] = m.up
		case "service":
			e.ts.services[m.name] = m.up
		}
		n.log.Info("tracked state changed", "kind", m.kind, "name", m.name, "up", m.up, "detail", m.detail)
		e.dirty = true
	case *ctlMsg:
		m.err = e.updateGroups(m.groups)
		if m.err == nil {
			e.evaluate(time.Now())
		}
		close(m.done)
	case ctlMsg:
		switch m.op {
		case "override":
			for _, g := range e.groups {
				if g.spec.Name == m.group {
					n.log.Info("operator override", "group", m.group, "override", m.override)
					g.override, g.overSince = m.override, m.since
				}
			}
		}
		e.dirty = true
		if m.done != nil {
			// Apply before acknowledging, so Demote returns after the release.
			e.evaluate(time.Now())
			close(m.done)
		}
	}
}

func (e *engine) deadAfter() time.Duration {
	if c := e.n.spec.Cluster; c != nil {
		return c.DeadAfter
	}
	return time.Hour
}

// addrRetryDue reports whether a group whose addresses failed may try again.
func (e *engine) addrRetryDue(now time.Time) bool {
	for _, g := range e.groups {
		if g.addrErr != nil && !now.Before(g.addrRetry) {
			return true
		}
	}
	return false
}

// addrBackoff is how long a group whose addresses could not be added fails
// times in a row stays in fault before it may try again: 2 s, doubling, at
// most a minute.
func addrBackoff(fails int) time.Duration {
	return min(2*time.Second<<min(max(fails-1, 0), 5), time.Minute)
}

// peerClaims reports whether a live peer holds group.
func (e *engine) peerClaims(group string) bool {
	for name, alive := range e.aliveSet {
		if p := e.peers[name]; alive && p != nil && p.groups[group].Claim {
			return true
		}
	}
	return false
}

// maxRetiredBoots bounds the past boots remembered per peer.
const maxRetiredBoots = 16

// deathGrace is how long a peer past dead_after stays alive once the loop
// notices it. If this process was not scheduled for a while, its timer and
// the packet reader wake together; the grace lets the reader hand over a
// heartbeat that is already in the socket before the peer is declared dead.
const deathGrace = 3 * time.Millisecond

func (e *engine) alive(now time.Time) map[string]bool {
	out := map[string]bool{}
	for name, p := range e.peers {
		if p.releasing {
			continue
		}
		if now.Sub(p.lastSeen) < e.deadAfter() {
			out[name] = true
			continue
		}
		if e.aliveSet[name] {
			if p.graceUntil.IsZero() {
				p.graceUntil = now.Add(deathGrace)
			}
			if now.Before(p.graceUntil) {
				out[name] = true
			}
		}
	}
	return out
}

// heardAll reports whether every expected peer is alive. The start hold only
// exists to learn who is alive and what they claim before claiming anything;
// once every peer has been heard, waiting longer would only leave a group
// that a peer just handed over without an owner.
func (e *engine) heardAll() bool {
	c := e.n.spec.Cluster
	if c == nil {
		return true
	}
	if len(c.Members) > 0 {
		for _, m := range c.Members {
			if m != e.n.spec.Node.Name && !e.aliveSet[m] {
				return false
			}
		}
		return true
	}
	return len(c.Peers) > 0 && len(e.aliveSet) >= len(c.Peers)
}

// expired reports whether the set of alive peers changed, the start hold
// ended, or a preempt delay ran out since the last evaluation.
func (e *engine) expired(now time.Time) bool {
	if !e.wake.IsZero() && !now.Before(e.wake) {
		return true
	}
	if e.starting && !now.Before(e.started.Add(e.hold)) {
		return true
	}
	return !maps.Equal(e.alive(now), e.aliveSet)
}

// nextWake is how long until the earliest peer deadline, hold end or
// preempt delay.
func (e *engine) nextWake(now time.Time) time.Duration {
	if e.dirty {
		return 0
	}
	next := now.Add(time.Hour)
	for _, g := range e.groups {
		if g.addrErr != nil && g.addrRetry.Before(next) {
			next = g.addrRetry
		}
	}
	if e.starting {
		next = e.started.Add(e.hold)
	}
	for name := range e.aliveSet {
		if p := e.peers[name]; p != nil {
			d := p.lastSeen.Add(e.deadAfter())
			if !p.graceUntil.IsZero() {
				d = p.graceUntil
			}
			if d.Before(next) {
				next = d
			}
		}
	}
	if !e.wake.IsZero() && e.wake.Before(next) {
		next = e.wake
	}
	return max(next.Sub(now), 0)
}

// evaluate runs the election and applies its decisions.
func (e *engine) evaluate(now time.Time) {
	n := e.n
	e.dirty = false
	alive := e.alive(now)
	var returned []string
	for name := range alive {
		if !e.aliveSet[name] {
			n.log.Info("peer alive", "peer", name)
			returned = append(returned, name)
		}
	}
	for name := range e.aliveSet {
		if !alive[name] {
			p := e.peers[name]
			n.log.Info("peer dead", "peer", name, "releasing", p.releasing,
				"silent", now.Sub(p.lastSeen).Round(time.Millisecond), "last_seq", p.seq)
		}
	}
	e.aliveSet = alive
	e.starting = e.hold > 0 && now.Sub(e.started) < e.hold && !e.heardAll()
	in := ElectionInput{Self: n.spec.Node.Name, Now: now, Alive: map[string]map[string]GroupView{},
		Starting: e.starting}
	if c := n.spec.Cluster; c != nil {
		in.Members, in.Witnesses = c.Members, c.Witnesses
	}
	for name := range e.aliveSet {
		in.Alive[name] = e.peers[name].groups
	}
	for _, g := range e.groups {
		prio, fault, why := effective(g.spec, n.scripts, e.ts, g.override)
		if g.addrErr != nil && !now.Before(g.addrRetry) && e.peerClaims(g.spec.Name) {
			// A live peer holds the group: retrying would take it away
			// (preemption) only to fail again. Stay in fault, back off.
			g.addrRetry = now.Add(addrBackoff(g.addrFails))
		}
		if g.addrErr != nil {
			if now.Before(g.addrRetry) {
				fault, why = true, "cannot add its addresses: "+g.addrErr.Error()
			} else {
				g.addrErr = nil // nobody holds it: try again
			}
		}
		g.prio, g.fault = prio, fault
		in.Groups = append(in.Groups, LocalGroup{Name: g.spec.Name, Priority: prio, Fault: fault, FaultReason: why,
			Claiming: g.claiming, Preempt: g.spec.Preempt, PreemptDelay: g.spec.PreemptDelay,
			Force: g.override == OverridePromote, Yield: g.override == OverrideDemote, YieldSince: g.overSince})
	}
	res, st := Elect(in, e.st)
	e.st, e.wake = st, res.NextWake
	// Votes count only with witnesses (a majority is required then): without
	// them they are left out, which also keeps the heartbeat small.
	votes := n.spec.Cluster != nil && len(n.spec.Cluster.Witnesses) > 0
	views := map[string]GroupView{}
	if votes {
		for g, v := range res.Votes {
			views[g] = GroupView{Vote: v}
		}
	}
	for i, d := range res.Decisions {
		g := e.groups[i]
		g.successor = d.Successor
		wasClaiming := g.claiming
		e.apply(g, d, now)
		if wasClaiming && g.claiming && len(returned) > 0 {
			// A peer we could not hear may have owned the group meanwhile
			// (partition) and released before we saw its claim: neighbours
			// may still point at it, so announce again (keepalived #166).
			n.log.Info("re-announcing: peer back", "group", g.spec.Name, "peers", returned)
			g.kick()
		}
		v := GroupView{Candidate: true, Priority: g.prio, Fault: g.fault, Claim: g.claiming, Want: d.Want}
		if votes {
			v.Vote = res.Votes[g.spec.Name]
		}
		if g.override == OverrideDemote {
			v.Yield, v.YieldSince = true, g.overSince.UnixNano()
		}
		views[g.spec.Name] = v
	}
	e.publish(views, false)
	e.snapshot(res)
}

// apply carries out one decision: addresses first, announcements after.
func (e *engine) apply(g *groupRT, d Decision, now time.Time) {
	n := e.n
	lg := n.log.With("group", g.spec.Name)
	want := d.Role == RoleMaster
	if g.claiming && !want {
		g.stopAnnouncing()
		if err := n.addrs.remove(g.spec.Interface, g.spec.Addresses); err != nil {
			lg.Error("releasing addresses", "err", err)
		}
		g.claiming = false
	}
	if !g.claiming && want {
		if err := n.addrs.add(g.spec.Interface, g.spec.Addresses); err != nil {
			// Claiming without the addresses would black-hole the group
			// (peers defer to a claim): fault now, so a peer takes it, and
			// try again in a while.
			lg.Error("taking addresses failed: group in fault, trying again when no peer holds it", "err", err, "in", addrBackoff(g.addrFails+1))
			if rerr := n.addrs.remove(g.spec.Interface, g.spec.Addresses); rerr != nil {
				lg.Debug("removing what was added", "err", rerr)
			}
			g.addrFails++
			g.addrErr, g.addrRetry = err, now.Add(addrBackoff(g.addrFails))
			e.dirty = true
			return
		}
		g.addrFails = 0
		g.claiming = true
		actx, cancel := context.WithCancel(context.Background())
		g.annCancel, g.annKick = cancel, make(chan struct{}, 1)
		go announceLoop(actx, n.announcer, g.spec, g.annKick, lg)
	}
	conflict := len(d.Conflict) > 0
	if g.claiming && conflict != g.conflict {
		// A claim appeared (healed partition) or went away: announce again so
		// every neighbour ends on our MAC (keepalived #166).
		lg.Info("re-announcing after conflicting claim", "others", d.Conflict, "resolved", !conflict)
		g.kick()
	}
	g.conflict = conflict
	g.owner = d.Owner
	if d.Role != g.role {
		prev := g.role
		g.role, g.since, g.reason = d.Role, now, d.Reason
		lg.Info("state changed", "state", d.Role, "prev", prev, "owner", d.Owner, "reason", d.Reason)
		e.emit(g, prev, now)
	} else if d.Reason != g.reason {
		g.reason = d.Reason
		lg.Debug("election", "state", d.Role, "reason", d.Reason)
	}
}

func (e *engine) emit(g *groupRT, prev Role, now time.Time) {
	n := e.n
	ev := Event{Group: g.spec.Name, State: g.role, Prev: prev, Owner: g.owner, Reason: g.reason, At: now}
	spec, lg := g.spec, n.log
	n.notes[spec.Name].pushCtx(func(ctx context.Context) { runNotify(ctx, spec, ev.State, ev.Prev, ev.Reason, lg) })
	n.mu.Lock()
	f := n.onEvent
	n.mu.Unlock()
	if f != nil {
		n.queue.push(func() { f(ev) })
	}
}

// kick asks the announcer for another burst.
func (g *groupRT) kick() {
	select {
	case g.annKick <- struct{}{}:
	default:
	}
}

func (g *groupRT) stopAnnouncing() {
	if g.annCancel != nil {
		g.annCancel()
		g.annCancel, g.annKick = nil, nil
	}
}

// publish installs a new heartbeat template and sends it at once when what
// we say changed (force: always).
func (e *engine) publish(views map[string]GroupView, force bool) {
	n := e.n
	if n.send == nil {
		return
	}
	n.mu.Lock()
	dig := n.digest
	n.mu.Unlock()
	// Demotion stamps go out only when every live peer reads them, and not
	// while starting (peers not heard yet may not).
	v1Only := e.starting
	for name, alive := range e.aliveSet {
		if p := e.peers[name]; alive && p != nil && !p.readsV2 {
			v1Only = true
		}
	}
	if !force && n.tmpl.Load() != nil && maps.Equal(views, e.lastViews) && string(dig) == string(e.lastDig) && v1Only == e.lastV1Only {
		return
	}
	h := Heartbeat{Name: n.spec.Node.Name, Boot: n.boot, Groups: views, Digest: dig, Releasing: e.released, V1Only: v1Only}
	b, err := h.MarshalBinary()
	if err != nil {
		// Stop sending rather than repeat an old heartbeat (its claims may
		// be stale): peers count this node dead. Nothing recorded, so the
		// next evaluation tries again.
		n.log.Error("encoding heartbeat: not sending any", "err", err)
		n.tmpl.Store(nil)
		return
	}
	e.lastViews, e.lastDig, e.lastV1Only = views, dig, v1Only
	n.tmpl.Store(&b)
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// shutdown releases everything, tells the peers, and notifies.
func (e *engine) shutdown() {
	n := e.n
	now := time.Now()
	e.released = true
	views := map[string]GroupView{}
	for _, g := range e.groups {
		if g.claiming {
			g.stopAnnouncing()
			if err := n.addrs.remove(g.spec.Interface, g.spec.Addresses); err != nil {
				n.log.Error("releasing addresses", "group", g.spec.Name, "err", err)
			}
			g.claiming = false
		}
		views[g.spec.Name] = GroupView{Candidate: true, Priority: g.prio, Fault: true}
		prev := g.role
		g.role, g.since, g.reason, g.owner = RoleStopped, now, "stopping", ""
		n.log.Info("state changed", "group", g.spec.Name, "state", RoleStopped, "prev", prev, "reason", "stopping")
		e.emit(g, prev, now)
	}
	if n.send != nil {
		e.publish(views, true)
		// Sent directly too (and twice: UDP) so the peers take over without
		// waiting for the send loop or for dead_after.
		if p := n.tmpl.Load(); p != nil {
			b := append([]byte(nil), *p...)
			setSeq(b, 1<<62)
			n.send(b)
			setSeq(b, 1<<62+1)
			n.send(b)
		}
	}
	e.snapshot(ElectionResult{})
}

func (e *engine) snapshot(res ElectionResult) {
	n := e.n
	st := Status{Node: n.spec.Node.Name, Witness: n.spec.Witness, Quorum: res.Quorum, Visible: res.Visible, Needed: res.Needed}
	gossip := map[string]string{}
	if cl := n.cl.Load(); cl != nil {
		for _, m := range cl.members() {
			gossip[m.Name] = m.State
		}
	}
	names := map[string]bool{}
	if c := n.spec.Cluster; c != nil {
		for _, m := range c.Members {
			names[m] = true
		}
	}
	for name := range e.peers {
		names[name] = true
	}
	delete(names, n.spec.Node.Name)
	for _, name := range slices.Sorted(maps.Keys(names)) {
		ms := MemberStatus{Name: name, Alive: e.aliveSet[name], Gossip: gossip[name]}
		if p := e.peers[name]; p != nil {
			ms.LastSeen, ms.Boot = p.lastSeen, p.boot
		}
		st.Members = append(st.Members, ms)
	}
	for _, g := range e.groups {
		gs := GroupStatus{Name: g.spec.Name, State: g.role, Owner: g.owner, Priority: g.prio, Base: g.spec.Priority,
			Fault: g.fault, Reason: g.reason, Override: g.override, OverrideSince: g.overSince, Since: g.since,
			Successor: g.successor}
		for _, name := range slices.Sorted(maps.Keys(e.aliveSet)) {
			if p := e.peers[name]; p != nil && e.aliveSet[name] {
				if v, ok := p.groups[g.spec.Name]; ok && v.Candidate && v.Priority == 255 {
					gs.PromotedPeers = append(gs.PromotedPeers, name)
				}
			}
		}
		// Every peer heard since start, dead ones too: one rebooting for
		// its patch comes back with the demotion it announced before.
		for _, p := range e.peers {
			if p != nil {
				if v, ok := p.groups[g.spec.Name]; ok && v.Yield && v.YieldSince > 0 {
					if at := time.Unix(0, v.YieldSince); at.After(gs.PeerDemotedAt) {
						gs.PeerDemotedAt = at
					}
				}
			}
		}
		for _, a := range g.spec.Addresses {
			gs.Addresses = append(gs.Addresses, a.String())
		}
		st.Groups = append(st.Groups, gs)
	}
	n.mu.Lock()
	n.status = st
	n.mu.Unlock()
}
