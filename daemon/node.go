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
// digest of them so a peer that differs gets our full state at once.
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
		n.SetStateDelegate(stateDelegate{e})
		n.SetMessageHandler(e.mergeRemote)
		lim := &digestLimiter{last: map[string]time.Time{}}
		n.SetDigestHandler(func(peer string, d []byte) {
			if !bytes.Equal(d, e.digest()) && lim.allow(peer, time.Now()) {
				e.broadcastAll()
			}
		})
		if err := n.SetDigest(e.digest()); err != nil {
			return err
		}
	}
	return nil
}

func (e *engine) digest() []byte { return binary.BigEndian.AppendUint64(nil, e.store.Digest()) }

// broadcastAll gossips every record (a peer's digest differs from ours).
func (e *engine) broadcastAll() {
	if data, err := opstate.Encode(e.store.Records()); err == nil {
		e.node.Broadcast(data)
	}
}

// publish replicates locally made records.
func (e *engine) publish(recs ...opstate.Record) {
	if e.node == nil || e.cfg.Cluster == nil {
		return
	}
	if data, err := opstate.Encode(recs); err == nil {
		if err := e.node.Broadcast(data); err != nil {
			e.log.Warn("replicate operator change", "err", err)
		}
	}
	e.node.SetDigest(e.digest())
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
	changed, err := e.store.Merge(recs)
	if err != nil {
		e.log.Error("persist operator state from a peer", "err", err)
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

// digestLimiter answers a differing digest at most once a second per peer:
// heartbeats arrive every 20 ms, the broadcast needs one gossip round.
type digestLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (l *digestLimiter) allow(peer string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.last[peer]) < time.Second {
		return false
	}
	l.last[peer] = now
	return true
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
