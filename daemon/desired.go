package daemon

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/lvsd/lvsd/config"
	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/healthcheck"
	"github.com/lvsd/lvsd/healthcheck/policy"
	"github.com/lvsd/lvsd/opstate"
)

// backendView is one backend of a service after operator overrides: what the
// config (or a runtime add) says, and what the operator set on it.
type backendView struct {
	Key     netip.AddrPort
	Dest    director.Destination // as configured (or added), before health
	Check   *config.Check        // nil or type none: not checked
	Origin  string               // "config" or "runtime"
	Admin   opstate.Admin
	Removed bool // hidden by lvsctl backend remove
}

// effectiveBackends overlays a service's operator records on its configured
// backends. Removed backends are kept (flagged) so status can show them.
func effectiveBackends(s *config.Service, recs []opstate.Record) []backendView {
	out := make([]backendView, 0, len(s.Backends)+len(recs))
	for _, b := range s.Backends {
		out = append(out, backendView{Key: b.Key(), Dest: destOf(b), Check: b.Check, Origin: "config"})
	}
	if len(recs) == 0 {
		return out
	}
	index := make(map[netip.AddrPort]int, len(s.Backends))
	for i, v := range out {
		index[v.Key] = i
	}
	for _, r := range recs {
		i, ok := index[r.Backend]
		if !ok {
			if !r.Added {
				continue // an override for a backend the config no longer has
			}
			i = len(out)
			index[r.Backend] = i
			out = append(out, backendView{
				Key: r.Backend,
				Dest: director.Destination{
					Key:     director.DestKey{Address: r.Backend.Addr(), Port: r.Backend.Port()},
					Weight:  r.Weight,
					Forward: forwardOf(s.Forward),
				},
				Check:  s.Check,
				Origin: "runtime",
			})
		}
		if ok && r.Added {
			// Added at run time, then the config gained it: the operator's
			// weight stays until remove (README, "which wins").
			out[i].Dest.Weight = r.Weight
		}
		out[i].Admin = r.Admin
		out[i].Removed = r.Removed
	}
	return out
}

// recordsByService groups operator records by service, keeping their order
// (what Store.ForService returns for each).
func recordsByService(recs []opstate.Record) map[string][]opstate.Record {
	if len(recs) == 0 {
		return nil
	}
	out := make(map[string][]opstate.Record)
	for _, r := range recs {
		out[r.Service] = append(out[r.Service], r)
	}
	return out
}

// healthOf answers a backend's health: its state and dynamic weight.
type healthOf func(k healthcheck.Key) (healthcheck.State, int)

// composeService is the desired IPVS state of one service: config, then
// operator overrides, then health (with the service's failure policy).
func composeService(s *config.Service, views []backendView, health healthOf, prevQuorum healthcheck.State) (director.DesiredService, policy.Outcome, error) {
	return composeWith(nil, s, views, health, prevQuorum)
}

// composeWith is composeService with a scratch buffer for the policy's
// input, which it does not keep: composing 10,000 services reuses one.
func composeWith(scratch *[]policy.Backend, s *config.Service, views []backendView, health healthOf, prevQuorum healthcheck.State) (director.DesiredService, policy.Outcome, error) {
	var bs []policy.Backend
	if scratch != nil {
		bs = (*scratch)[:0]
		defer func() { *scratch = bs[:0] }()
	}
	bs = slices.Grow(bs, len(views))
	for _, v := range views {
		if v.Removed || v.Admin == opstate.Disabled {
			continue
		}
		pb := policy.Backend{Dest: v.Dest, Health: healthcheck.StateUp, DynamicWeight: healthcheck.NoWeight, Drained: v.Admin == opstate.Drained}
		if checked(v.Check) {
			pb.Health, pb.DynamicWeight = health(healthcheck.Key{Service: s.Name, Backend: v.Key})
		}
		bs = append(bs, pb)
	}
	out, err := policy.Evaluate(policyOf(s), prevQuorum, bs)
	if err != nil {
		return director.DesiredService{}, policy.Outcome{}, fmt.Errorf("service %q: %w", s.Name, err)
	}
	return director.DesiredService{Service: serviceOf(s), Destinations: slices.Clip(out.Destinations)}, out, nil
}
