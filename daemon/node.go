package daemon

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/healthcheck"
	"github.com/lvsd/lvsd/opstate"
	"github.com/lvsd/lvsd/vrrp"
)

// startNode creates the VIP election node and hooks lvsd's replicated
// operator state into the cluster: records are broadcast as they change,
// exchanged in full by memberlist's push-pull, and every heartbeat carries a
// digest of them so a peer that differs exchanges full state with us at once
// (see hookCluster).
func (e *engine) startNode() error {
	spec := vrrpSpec(e.cfg, e.opts.Witness)
	e.restoreOverrides(&spec)
	// The services' quorum as composed at start: reported later only when
	// it changes, so a tracked service down already at start (alpha, dead
	// backends) must be known before the election first runs.
	for _, g := range spec.Groups {
		for _, t := range g.TrackService {
			if spec.ServiceUp == nil {
				spec.ServiceUp = map[string]bool{}
			}
			spec.ServiceUp[t.Name] = e.quorum[t.Name] != healthcheck.StateDown
		}
	}
	n, err := vrrp.New(spec, e.log)
	if err != nil {
		return fmt.Errorf("VIP election: %w", err)
	}
	e.node = n
	n.SetEventHandler(func(ev vrrp.Event) {
		e.log.Info("VIP group transition", "group", ev.Group, "from", ev.Prev, "to", ev.State, "owner", ev.Owner, "reason", ev.Reason)
		e.events.add(api.Event{Time: ev.At, Kind: "election", Subject: ev.Group, From: ev.Prev.String(), To: ev.State.String(), Reason: ev.Reason})
		e.metrics.GroupTransition(ev.Group, ev.State.String())
	})
	if e.cfg.Cluster != nil {
		if err := e.hookCluster(n); err != nil {
			return err
		}
	}
	return nil
}

func (e *engine) digest() []byte { return binary.BigEndian.AppendUint64(nil, e.store.Digest()) }

// hookCluster replicates the operator records through n: the store is
// memberlist's push-pull state, peers' broadcasts are merged, our digest
// rides on every heartbeat, and a peer whose digest differs from ours for
// longer than a broadcast takes to arrive gets a push-pull with us, which
// carries both full states (whichever side lacks records).
func (e *engine) hookCluster(n *vrrp.Node) error {
	n.SetStateDelegate(stateDelegate{e})
	n.SetMessageHandler(e.mergeRemote)
	ds := &digestSync{settle: digestSettle, every: time.Second, local: e.digest, exchange: func(peer string) {
		if err := n.ExchangeState(peer); err != nil {
			e.log.Debug("operator state differs from a peer's; no exchange now", "peer", peer, "err", err)
		}
	}}
	n.SetDigestHandler(ds.observe)
	return n.SetDigest(e.digest())
}

// digestSettle is how long a differing digest may last before a state
// exchange: a peer's heartbeat carries its new digest before the gossip of
// the record that changed it arrives (gossip goes out every 100 ms).
const digestSettle = 300 * time.Millisecond

// publish replicates locally made records: gossip reaches every member at
// once, and the new digest in our heartbeats makes each peer that does not
// get the gossip exchange full state with us. A record too large for one
// gossip packet (a long service name with many escaped characters, or an
// IPv6 zone) is left to that exchange.
func (e *engine) publish(recs ...opstate.Record) {
	if e.node == nil || e.cfg.Cluster == nil {
		return
	}
	data, err := opstate.Encode(recs)
	if err == nil && len(data) > e.node.MaxBroadcast() {
		err = fmt.Errorf("%d bytes do not fit a gossip packet (at most %d)", len(data), e.node.MaxBroadcast())
	}
	if err == nil {
		err = e.node.Broadcast(data)
	}
	if err != nil {
		e.log.Warn("operator change not gossiped; peers get it by the state exchange their digest comparison starts", "err", err)
	}
	if err := e.node.SetDigest(e.digest()); err != nil {
		e.log.Error("set operator state digest", "err", err)
	}
}

// mergeRemote takes records from a peer (broadcast or push-pull). It runs on
// memberlist's goroutines; the store is safe for that, and the effect on
// IPVS is applied on the loop.
func (e *engine) mergeRemote(data []byte) {
	recs, err := opstate.Decode(data)
	if err != nil {
		e.log.Warn("ignoring malformed operator state from a peer", "err", err)
		return
	}
	refused := e.store.Refused()
	changed, err := e.store.Merge(recs)
	if err != nil {
		e.log.Error("persist operator state from a peer", "err", err)
	}
	if n := e.store.Refused() - refused; n > 0 {
		if now := time.Now().UnixNano(); now-e.lastRefusedLog.Load() > int64(time.Minute) {
			e.lastRefusedLog.Store(now) // once a minute: every state exchange repeats them
			e.log.Warn("refused operator records from a peer: malformed, or stamped more than an hour ahead (check the peers' clocks)", "records", n)
		}
	}
	if len(changed) == 0 {
		return
	}
	e.node.SetDigest(e.digest())
	e.post(func() { e.applyOverrides(changed, "peer") })
}

type stateDelegate struct{ e *engine }

func (d stateDelegate) LocalState() []byte {
	data, err := opstate.Encode(d.e.store.Records())
	if err != nil {
		return nil
	}
	return data
}

func (d stateDelegate) MergeRemoteState(buf []byte) { d.e.mergeRemote(buf) }

// digestSync starts a state exchange with a peer whose heartbeat digest
// differs from ours once it has differed for settle, and at most once per
// every per peer. The vrrp node reports a peer's digest only when it
// changes, so a difference seen inside the limit is not dropped: it is
// checked again when the limit ends, against the peer's latest digest.
type digestSync struct {
	settle, every time.Duration
	local         func() []byte
	exchange      func(peer string)

	mu    sync.Mutex
	peers map[string]*digestPeer
}

type digestPeer struct {
	digest  []byte
	last    time.Time // last exchange started
	pending bool      // a check is scheduled
}

// observe takes a peer's new digest (vrrp's digest handler).
func (s *digestSync) observe(peer string, d []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.peers == nil {
		s.peers = map[string]*digestPeer{}
	}
	p := s.peers[peer]
	if p == nil {
		p = &digestPeer{}
		s.peers[peer] = p
	}
	p.digest = bytes.Clone(d)
	if p.pending || bytes.Equal(d, s.local()) {
		return
	}
	wait := max(s.settle, time.Until(p.last.Add(s.every)))
	p.pending = true
	time.AfterFunc(wait, func() { s.check(peer) })
}

// check starts an exchange if the peer's latest digest still differs.
func (s *digestSync) check(peer string) {
	s.mu.Lock()
	p := s.peers[peer]
	p.pending = false
	if bytes.Equal(p.digest, s.local()) {
		s.mu.Unlock()
		return
	}
	p.last = time.Now()
	s.mu.Unlock()
	s.exchange(peer)
}

// applyOverrides re-reads the overrides of the services whose records
// changed and pushes them to IPVS.
func (e *engine) applyOverrides(keys []opstate.Key, origin string) {
	services := map[string]bool{}
	for _, k := range keys {
		services[k.Service] = true
		if r, ok := e.store.Get(k); ok && origin == "peer" {
			e.events.add(api.Event{Kind: "operator", Subject: k.String(), To: describe(r), Reason: "replicated from " + r.Version.Node})
		}
	}
	checksChanged := false
	for name := range services {
		s := e.cfg.Service(name)
		if s == nil {
			continue // an override for a service this node's config lacks
		}
		old := e.views[name]
		e.views[name] = effectiveBackends(s, e.store.ForService(name))
		checksChanged = checksChanged || len(old) != len(e.views[name]) || removedChanged(old, e.views[name])
		e.syncService(e.loopCtx, s)
	}
	if checksChanged && e.mon != nil {
		if err := e.mon.Update(e.checks()); err != nil {
			e.log.Error("update health checks after an operator change", "err", err)
		}
	}
}

func removedChanged(a, b []backendView) bool {
	for i := range a {
		if a[i].Key != b[i].Key || a[i].Removed != b[i].Removed {
			return true
		}
	}
	return false
}

func describe(r opstate.Record) string {
	switch {
	case r.Removed:
		return "removed"
	case r.Admin != opstate.AdminNone:
		return string(r.Admin)
	case r.Added:
		return fmt.Sprintf("added (weight %d)", r.Weight)
	}
	return "in service" // undrain, enable, or a re-add of a configured backend
}

// restoreOverrides puts the saved demote/promote of each configured group
// back into the election spec; saved entries of groups no longer configured
// are reported and left in the file (the group may come back).
func (e *engine) restoreOverrides(spec *vrrp.Spec) {
	for i := range spec.Groups {
		g := &spec.Groups[i]
		if o, ok := e.overrides[g.Name]; ok {
			g.Override, _ = parseOverride(o.Override)
			g.OverrideSince = o.Since
			e.log.Warn("VIP group override restored from the state file: `lvsctl clear` ends it",
				"group", g.Name, "override", o.Override, "since", o.Since)
		}
	}
	for name := range e.overrides {
		if !slices.ContainsFunc(spec.Groups, func(g vrrp.GroupSpec) bool { return g.Name == name }) {
			e.log.Warn("saved VIP group override names a group not in the config: ignored", "group", name)
		}
	}
}
