package daemon

import (
	"context"
	"net/netip"
	"slices"
	"strings"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/config"
	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/director/ipvsdp"
	"github.com/lvsd/lvsd/healthcheck"
	"github.com/lvsd/lvsd/metrics"
	"github.com/lvsd/lvsd/vrrp"
)

// status builds the API status: the loop's view first, then the kernel's
// counters, read off the loop because a dump of a large table takes seconds.
func (e *engine) status(ctx context.Context) (api.Status, error) {
	var st api.Status
	var dp Kernel
	var keys map[string]director.ServiceKey
	if err := e.do(ctx, func() {
		st = api.Status{Node: e.cfg.Node.Name, Mode: e.mode(), Config: e.cfg.File, Started: e.started}
		st.Members = e.members()
		st.Groups = e.groups()
		if s := e.cfg.IPVS.Sync; s.Enabled && e.dp != nil {
			st.Sync = &api.ConnSyncStatus{Interface: s.Interface, SyncID: int(s.SyncID)}
		}
		keys = map[string]director.ServiceKey{}
		for _, s := range e.cfg.Services {
			if e.opts.Witness {
				break // a witness has no services
			}
			st.Services = append(st.Services, e.serviceStatus(s))
			keys[s.Name] = serviceKeyOf(s)
		}
		dp = e.dp
	}); err != nil {
		return st, err
	}
	if dp == nil {
		return st, nil
	}
	stats, err := dp.Stats(ctx)
	if err != nil {
		return st, err
	}
	byKey := map[director.ServiceKey]ipvsdp.ServiceStats{}
	for _, s := range stats {
		byKey[s.Service.Key] = s
	}
	for i := range st.Services {
		svc := &st.Services[i]
		ks, ok := byKey[keys[svc.Name]]
		svc.InKernel = ok
		dests := map[string]ipvsdp.DestStats{}
		for _, d := range ks.Destinations {
			dests[netip.AddrPortFrom(d.Destination.Key.Address, d.Destination.Key.Port).String()] = d
		}
		for j := range svc.Backends {
			b := &svc.Backends[j]
			d, ok := dests[b.Address]
			b.InKernel = ok
			if ok {
				b.Weight = d.Destination.Weight
				b.ActiveConns = int(d.ActiveConns)
				b.InactiveConns = int(d.InactiveConns)
			} else {
				b.Weight = -1
			}
		}
	}
	if st.Sync != nil {
		if ds, err := dp.SyncDaemons(ctx); err == nil {
			for _, d := range ds {
				st.Sync.Master = st.Sync.Master || d.State == ipvsdp.SyncMaster
				st.Sync.Backup = st.Sync.Backup || d.State == ipvsdp.SyncBackup
			}
		}
	}
	return st, nil
}

func (e *engine) members() []api.Member {
	if e.node == nil || e.cfg.Cluster == nil {
		return nil
	}
	ns := e.node.Status()
	witness := map[string]bool{}
	for _, w := range e.cfg.Cluster.Witnesses {
		witness[w] = true
	}
	addrs := map[string]string{}
	for _, m := range e.node.Members() {
		addrs[m.Name] = m.Addr
	}
	out := []api.Member{{Name: e.cfg.Node.Name, Self: true, Alive: true, Witness: e.opts.Witness, Address: e.cfg.Cluster.Bind.String()}}
	for _, m := range ns.Members {
		if m.Name == e.cfg.Node.Name {
			continue
		}
		out = append(out, api.Member{Name: m.Name, Alive: m.Alive, LastSeen: m.LastSeen, Witness: witness[m.Name], Address: addrs[m.Name]})
	}
	return out
}

func (e *engine) groups() []api.Group {
	if e.node == nil {
		return nil
	}
	var out []api.Group
	for _, g := range e.node.Status().Groups {
		ag := api.Group{Name: g.Name, State: g.State.String(), Owner: g.Owner, Priority: int(g.Priority), BasePriority: g.Base,
			Addresses: g.Addresses, Reason: g.Reason, LastTransition: g.Since}
		if cg := e.cfg.VIPGroup(g.Name); cg != nil {
			ag.Interface = cg.Interface
		}
		if g.Override != vrrp.OverrideNone {
			ag.Override, ag.OverrideSince = g.Override.String(), g.OverrideSince
			ag.Reason = strings.TrimSpace(ag.Reason + " (override: " + g.Override.String() + ")")
		}
		out = append(out, ag)
	}
	return out
}

func (e *engine) serviceStatus(s *config.Service) api.Service {
	out := api.Service{
		Name: s.Name, Key: serviceKeyOf(s).String(), Group: s.Group, Scheduler: s.Scheduler,
		Persistent: s.Persistent(), OnePacket: s.OnePacket, QuorumUp: e.quorum[s.Name] != healthcheck.StateDown,
	}
	if s.Persistent() {
		out.Timeout = s.Persistence.String()
		full := 32
		if s.Family == config.IPv6 {
			full = 128
		}
		if s.PersistenceBits != full {
			out.Granularity = s.PersistenceBits // only a grain coarser than one client is worth showing
		}
	}
	out.Backends = e.backendsOf(s)
	return out
}

// backendsOf describes a service's backends as lvsd wants them; the kernel's
// numbers are filled in by status.
func (e *engine) backendsOf(s *config.Service) []api.Backend {
	want := map[director.DestKey]director.Destination{}
	desired, ok := e.inKernel[s.Name]
	if !ok {
		desired, _, _ = composeService(s, e.views[s.Name], e.health, e.quorum[s.Name])
	}
	for _, d := range desired.Destinations {
		want[d.Key] = d
	}
	var out []api.Backend
	seen := map[director.DestKey]bool{}
	for _, v := range e.views[s.Name] {
		if v.Removed {
			continue
		}
		dk := director.DestKey{Address: v.Key.Addr(), Port: v.Key.Port()}
		seen[dk] = true
		b := api.Backend{Address: v.Key.String(), Forward: v.Dest.Forward.String(), ConfigWeight: v.Dest.Weight, Weight: -1,
			Health: "unchecked", Admin: string(v.Admin), Origin: v.Origin}
		if d, ok := want[dk]; ok {
			b.Weight = d.Weight
			b.InKernel = true
		}
		if checked(v.Check) && e.mon != nil {
			if st, ok := e.mon.Status(healthcheck.Key{Service: s.Name, Backend: v.Key}); ok {
				b.Health = st.State.String()
				b.Reason = st.Reason
				b.Since = st.Since
			}
		}
		out = append(out, b)
	}
	for dk, d := range want {
		if !seen[dk] { // the sorry server
			out = append(out, api.Backend{Address: netip.AddrPortFrom(dk.Address, dk.Port).String(), Forward: d.Forward.String(),
				Weight: d.Weight, ConfigWeight: d.Weight, Health: "unchecked", Origin: "sorry", InKernel: true})
		}
	}
	return out
}

// backendStates appends what backendsOf reports of s's backends, in the
// same order, as metrics wants it: a scrape runs this on the loop for every
// service, so it skips the API's strings and per-service maps (10,000 × 10:
// 166 ms and 134 MB per scrape through backendsOf).
func (e *engine) backendStates(s *config.Service, out []metrics.BackendState) []metrics.BackendState {
	desired, ok := e.inKernel[s.Name]
	if !ok {
		desired, _, _ = composeService(s, e.views[s.Name], e.health, e.quorum[s.Name])
	}
	dests := desired.Destinations
	var index map[director.DestKey]int // only for big services
	if len(dests) > 16 {
		index = make(map[director.DestKey]int, len(dests))
		for i, d := range dests {
			index[d.Key] = i
		}
	}
	find := func(k director.DestKey) int {
		if index != nil {
			if i, ok := index[k]; ok {
				return i
			}
			return -1
		}
		for i := range dests {
			if dests[i].Key == k {
				return i
			}
		}
		return -1
	}
	matched := 0
	for _, v := range e.views[s.Name] {
		if v.Removed {
			continue
		}
		bs := metrics.BackendState{Service: s.Name, Backend: v.Key.String(), Up: true, Weight: -1}
		if i := find(director.DestKey{Address: v.Key.Addr(), Port: v.Key.Port()}); i >= 0 {
			bs.Weight = dests[i].Weight
			matched++
		}
		if checked(v.Check) && e.mon != nil {
			if hs, ok := e.mon.Status(healthcheck.Key{Service: s.Name, Backend: v.Key}); ok {
				bs.Checked, bs.Up = true, hs.State != healthcheck.StateDown
				bs.LastCheck, bs.Checks = hs.LastLatency, hs.Checks
			}
		}
		out = append(out, bs)
	}
	if matched == len(dests) {
		return out
	}
	for _, d := range dests { // the sorry server
		in := slices.ContainsFunc(e.views[s.Name], func(v backendView) bool {
			return !v.Removed && v.Key.Addr() == d.Key.Address && v.Key.Port() == d.Key.Port
		})
		if !in {
			out = append(out, metrics.BackendState{Service: s.Name, Backend: netip.AddrPortFrom(d.Key.Address, d.Key.Port).String(), Up: true, Weight: d.Weight})
		}
	}
	return out
}

// metricsSource answers scrapes: lvsd's state from the loop, the kernel's
// counters off it.
type metricsSource struct{ e *engine }

func (m metricsSource) State(ctx context.Context, backends bool) (metrics.State, error) {
	var st metrics.State
	err := m.e.do(ctx, func() {
		e := m.e
		if e.node != nil {
			ns := e.node.Status()
			for _, mem := range ns.Members {
				if mem.Alive {
					st.Members.Alive++
				} else {
					st.Members.Dead++
				}
			}
			for _, g := range ns.Groups {
				gs := metrics.GroupState{Group: g.Name, State: g.State.String(), Owner: g.Owner, Priority: int(g.Priority)}
				if g.Override == vrrp.OverrideDemote || g.Override == vrrp.OverridePromote {
					gs.Override = g.Override.String()
				}
				st.Groups = append(st.Groups, gs)
			}
		}
		st.Quorum = make(map[string]bool, len(e.cfg.Services))
		if backends && !e.opts.Witness {
			n := 0
			for _, s := range e.cfg.Services {
				n += len(e.views[s.Name])
			}
			st.Backend = make([]metrics.BackendState, 0, n+1) // +1: a sorry server fits without a copy
		}
		for _, s := range e.cfg.Services {
			if e.opts.Witness {
				break
			}
			st.Quorum[s.Name] = e.quorum[s.Name] != healthcheck.StateDown
			if !backends {
				continue
			}
			st.Backend = e.backendStates(s, st.Backend)
		}
	})
	return st, err
}

func (m metricsSource) IPVSStats(ctx context.Context, backends bool) ([]metrics.ServiceStats, error) {
	var dp Kernel
	var names map[director.ServiceKey]string
	if err := m.e.do(ctx, func() {
		dp = m.e.dp
		names = make(map[director.ServiceKey]string, len(m.e.cfg.Services))
		for _, s := range m.e.cfg.Services {
			names[serviceKeyOf(s)] = s.Name
		}
	}); err != nil {
		return nil, err
	}
	if dp == nil {
		return nil, nil
	}
	stats, err := dp.Stats(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]metrics.ServiceStats, 0, len(stats))
	for _, s := range stats {
		name, ok := names[s.Service.Key]
		if !ok {
			continue // not lvsd's service
		}
		ms := metrics.ServiceStats{Service: name, Counters: counters(s.Counters)}
		if backends {
			ms.Backends = make([]metrics.BackendStats, 0, len(s.Destinations))
		}
		for _, d := range s.Destinations {
			if !backends {
				break
			}
			ms.Backends = append(ms.Backends, metrics.BackendStats{
				Backend:       netip.AddrPortFrom(d.Destination.Key.Address, d.Destination.Key.Port).String(),
				Counters:      counters(d.Counters),
				ActiveConns:   int(d.ActiveConns),
				InactiveConns: int(d.InactiveConns),
			})
		}
		out = append(out, ms)
	}
	return out, nil
}

func counters(c ipvsdp.Counters) metrics.Counters {
	return metrics.Counters{Connections: c.Conns, PacketsIn: c.InPkts, PacketsOut: c.OutPkts, BytesIn: c.InBytes, BytesOut: c.OutBytes}
}
