package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/config"
	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/healthcheck"
	"github.com/lvsd/lvsd/opstate"
)

// checkSpecs validates what only the health checker can judge (a CA file that
// does not parse, an exec command that is not executable) and reports it at
// the config position of the offending key.
func checkSpecs(cfg *config.Config) error {
	var errs config.Errors
	seen := map[*config.Check]bool{}
	for _, s := range cfg.Services {
		for _, b := range s.Backends {
			c := b.Check
			if !checked(c) || seen[c] {
				continue
			}
			seen[c] = true
			for _, fe := range healthcheck.FieldErrors(checkSpec(s, c).Validate()) {
				p := c.PosOf(fe.Field)
				errs = append(errs, config.Error{File: p.File, Line: p.Line, Col: p.Col, Msg: fmt.Sprintf("check %s: %v", fe.Field, fe.Err)})
			}
		}
	}
	// The election's own limits (a heartbeat must fit one packet), so that
	// lvsd --check and a reload catch what would stop lvsd from starting.
	if len(cfg.VIPGroups) > 0 && cfg.Cluster != nil {
		spec := vrrpSpec(cfg, false)
		if err := spec.Validate(); err != nil {
			p := cfg.VIPGroups[0].Pos
			for _, msg := range strings.Split(strings.TrimPrefix(err.Error(), "vrrp: invalid spec: "), "\n") {
				errs = append(errs, config.Error{File: p.File, Line: p.Line, Col: p.Col, Msg: msg})
			}
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// configErrors turns a load error into lines for the API.
func configErrors(err error) []string {
	var ce config.Errors
	if errors.As(err, &ce) {
		out := make([]string, len(ce))
		for i, e := range ce {
			out[i] = e.Error()
		}
		return out
	}
	return []string{err.Error()}
}

// checkConfig loads the config file without applying it.
func (e *engine) checkConfig() api.CheckResult {
	res := api.CheckResult{Config: e.opts.ConfigPath}
	var l config.Loader // a fresh loader: checking must not touch the reload cache
	cfg, err := l.Load(e.opts.ConfigPath)
	if err == nil {
		err = checkSpecs(cfg)
	}
	if err != nil {
		res.Errors = configErrors(err)
		return res
	}
	res.OK = true
	return res
}

// reload loads the config and applies only the difference. An invalid config
// changes nothing.
func (e *engine) reload() api.CheckResult {
	start := time.Now()
	res := api.CheckResult{Config: e.opts.ConfigPath}
	cfg, err := e.loader.Load(e.opts.ConfigPath)
	if err == nil {
		err = checkSpecs(cfg)
	}
	if err != nil {
		res.Errors = configErrors(err)
		e.metrics.Reload(false, start)
		e.events.add(api.Event{Kind: "reload", Subject: e.opts.ConfigPath, To: "rejected", Reason: fmt.Sprintf("%d error(s); running config unchanged", len(res.Errors))})
		return res
	}
	res.OK = true
	res.Changes = e.apply(cfg)
	e.metrics.Reload(true, time.Now())
	e.log.Info("config reloaded", "config", cfg.File, "changes", len(res.Changes), "took", time.Since(start).Round(time.Microsecond))
	e.events.add(api.Event{Kind: "reload", Subject: e.opts.ConfigPath, To: "applied", Reason: fmt.Sprintf("%d change(s)", len(res.Changes))})
	return res
}

// apply switches to a validated config, touching only what changed.
func (e *engine) apply(cfg *config.Config) []string {
	ctx := e.loopCtx
	old := e.cfg
	var changes []string
	for _, what := range restartOnly(old, cfg) {
		changes = append(changes, what+" changed: restart lvsd to apply it (kept the running value)")
		e.log.Warn("reload: change needs a restart", "what", what)
	}
	changes = append(changes, e.applyGroups(old, cfg)...)
	keepRunning(old, cfg)
	if e.opts.Witness {
		e.cfg = cfg
		return changes
	}

	// The loader shares the services of unchanged files (same pointers)
	// between loads. Only the others need a look: a reload that changed one
	// file costs that file's services, not all 10,000. A shared service
	// cannot have the name or key of an unshared old one (both would have
	// been in the old config), so names and keys are compared among the
	// unshared ones only.
	gone, added := unshared(old.Services, cfg.Services)
	goneByName := make(map[string]*config.Service, len(gone))
	for _, s := range gone {
		goneByName[s.Name] = s
	}
	addedByName := make(map[string]*config.Service, len(added))
	addedKeys := make(map[director.ServiceKey]bool, len(added))
	for _, s := range added {
		addedByName[s.Name] = s
		addedKeys[serviceKeyOf(s)] = true
	}
	e.cfg = cfg
	if old.IPVS.ResyncInterval != cfg.IPVS.ResyncInterval && e.resyncT != nil {
		e.resyncT.Reset(cfg.IPVS.ResyncInterval) // a new interval counts from now, 0s stops it
	}
	if err := e.ensureDataplane(ctx); err != nil {
		e.log.Error("reload: IPVS", "err", err)
		changes = append(changes, "IPVS: "+err.Error())
	}

	// Removed services (and services whose virtual address moved) go first,
	// unless another service now has the same key, which keeps its
	// connections.
	checksChanged := false
	for _, s := range gone {
		ns := addedByName[s.Name]
		if ns == nil {
			checksChanged = checksChanged || hasChecks(s)
		}
		if ns != nil && serviceKeyOf(ns) == serviceKeyOf(s) {
			continue
		}
		if ns == nil {
			delete(e.views, s.Name)
			delete(e.quorum, s.Name)
			delete(e.repeated, "sync service "+s.Name) // a service of that name later logs afresh
			changes = append(changes, "service "+s.Name+" removed"+e.orphans(s.Name, nil))
		}
		delete(e.inKernel, s.Name)
		if e.rec != nil && !addedKeys[serviceKeyOf(s)] {
			if _, err := e.rec.RemoveService(ctx, serviceKeyOf(s)); err != nil {
				e.log.Error("remove service", "service", s.Name, "err", err)
			}
		}
	}
	for _, s := range added {
		prev := goneByName[s.Name]
		e.views[s.Name] = effectiveBackends(s, e.store.ForService(s.Name))
		checksChanged = checksChanged || hasChecks(s) || (prev != nil && hasChecks(prev))
		e.syncService(ctx, s)
	}
	for _, s := range added { // described after the writes, which wait for nothing
		if prev := goneByName[s.Name]; prev != nil {
			changes = append(changes, "service "+s.Name+" changed"+backendChanges(prev, s)+e.orphans(s.Name, s))
		} else {
			changes = append(changes, "service "+s.Name+" added")
		}
	}
	// Health checks change only with services that have (or had) checks.
	if checksChanged {
		if err := e.mon.Update(e.checks()); err != nil {
			// Specs were validated above; this is a bug, not bad input.
			e.log.Error("update health checks", "err", err)
		}
		// Health of new backends may differ from the initial assumption.
		for _, s := range added {
			e.syncService(ctx, s)
		}
	} else if err := e.mon.RereadFiles(); err != nil {
		// A CA bundle rotated in place: checked by checkSpecs above.
		e.log.Error("reread health-check files", "err", err)
	}
	if err := e.applyMarks(ctx); err != nil {
		e.log.Error("reload: firewall marks", "err", err)
		changes = append(changes, "firewall marks: "+err.Error())
	}
	e.saveOwned()
	return changes
}

// orphans describes the operator overrides of service name that no longer
// apply after a reload: all of them when the service is gone (s nil; a
// renamed service is a new one), else those of backends the config lost
// (a port change moves every backend). They are kept, and apply again if
// the service or backend comes back; the reload says so, and logs it,
// rather than silently undraining.
func (e *engine) orphans(name string, s *config.Service) string {
	var lost []string
	for _, r := range e.store.ForService(name) {
		if r.Admin == opstate.AdminNone && !r.Removed && !r.Added {
			continue // nothing the operator asked is in force
		}
		if s != nil && (r.Added || slices.ContainsFunc(s.Backends, func(b *config.Backend) bool { return b.Key() == r.Backend })) {
			continue
		}
		lost = append(lost, describe(r)+" "+r.Backend.String())
	}
	if len(lost) == 0 {
		return ""
	}
	e.log.Warn("reload: operator overrides no longer match the config; kept until undone", "service", name, "overrides", lost)
	return fmt.Sprintf(": operator overrides no longer apply (kept; they return with the service or backend): %s", strings.Join(lost, ", "))
}

// unshared returns the services of a that are not in b and those of b that
// are not in a, by pointer, each in its list's order.
func unshared(a, b []*config.Service) (gone, added []*config.Service) {
	index := make(map[*config.Service]int32, len(b))
	for i, s := range b {
		index[s] = int32(i)
	}
	for _, s := range a {
		n := len(index)
		if delete(index, s); len(index) == n {
			gone = append(gone, s)
		}
	}
	if len(index) == 0 {
		return gone, nil
	}
	at := make([]int32, 0, len(index))
	for _, i := range index {
		at = append(at, i)
	}
	slices.Sort(at)
	added = make([]*config.Service, len(at))
	for k, i := range at {
		added[k] = b[i]
	}
	return gone, added
}

// hasChecks reports whether a service or any of its backends is health
// checked (backends added at run time use the service's check).
func hasChecks(s *config.Service) bool {
	if checked(s.Check) {
		return true
	}
	for _, b := range s.Backends {
		if checked(b.Check) {
			return true
		}
	}
	return false
}

// backendChanges summarises backend additions and removals of a service.
func backendChanges(a, b *config.Service) string {
	keys := func(s *config.Service) map[netip.AddrPort]*config.Backend {
		m := map[netip.AddrPort]*config.Backend{}
		for _, x := range s.Backends {
			m[x.Key()] = x
		}
		return m
	}
	ka, kb := keys(a), keys(b)
	var added, removed []string
	for k := range kb {
		if ka[k] == nil {
			added = append(added, k.String())
		}
	}
	for k := range ka {
		if kb[k] == nil {
			removed = append(removed, k.String())
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	out := ""
	if len(added) > 0 {
		out += fmt.Sprintf(": backends added %v", added)
	}
	if len(removed) > 0 {
		out += fmt.Sprintf(": backends removed %v", removed)
	}
	return out
}

// applyGroups hands changed [[vip_group]] settings to the running election.
// What it cannot change in place (a group added, removed or renamed, its
// interface, the interfaces and scripts it tracks) is refused whole, and
// the running groups stay.
func (e *engine) applyGroups(old, cfg *config.Config) []string {
	if e.opts.Witness || sameGroups(old.VIPGroups, cfg.VIPGroups) {
		return nil // a witness holds no group
	}
	err := errors.New("the VIP election is not running (lvsd started without [cluster] or [[vip_group]])")
	if e.node != nil {
		err = e.node.UpdateGroups(vrrpSpec(cfg, false).Groups)
	}
	if err != nil {
		cfg.VIPGroups = old.VIPGroups
		e.log.Warn("reload: change needs a restart", "what", "[[vip_group]]", "err", err)
		return []string{fmt.Sprintf("[[vip_group]] changed beyond what a reload applies (%v): restart lvsd to apply it (kept the running value)", err)}
	}
	var names []string
	for i, g := range cfg.VIPGroups {
		if !sameGroups(old.VIPGroups[i:i+1], cfg.VIPGroups[i:i+1]) {
			names = append(names, g.Name)
		}
	}
	e.log.Info("reload: VIP groups updated in place", "groups", names)
	return []string{"vip_group " + strings.Join(names, ", ") + " updated"}
}

// keepRunning puts the running values of the sections a reload cannot
// change back into the new config, so that what lvsd reports and uses
// (state_dir, the group names lvsctl accepts) is what actually runs.
func keepRunning(old, cfg *config.Config) {
	cfg.Node, cfg.Cluster, cfg.Control, cfg.Metrics = old.Node, old.Cluster, old.Control, old.Metrics
	// Scripts run as they started; only a weight takes effect (through the
	// groups), so the kept scripts carry the new weights.
	if sameScriptNames(old.TrackScripts, cfg.TrackScripts) {
		kept := make([]*config.TrackScript, len(old.TrackScripts))
		for i, s := range old.TrackScripts {
			c := *s
			c.Weight = cfg.TrackScripts[i].Weight
			kept[i] = &c
		}
		cfg.TrackScripts = kept
	} else {
		cfg.TrackScripts = old.TrackScripts
	}
}

// restartOnly lists sections a reload cannot change in place: the node's
// identity, the cluster and track scripts (the running election keeps
// them), the control socket and listeners, and [metrics] (listener and
// per_backend: the collectors are built once, at start). [[vip_group]] is
// applyGroups'.
func restartOnly(a, b *config.Config) []string {
	var out []string
	if a.Node != b.Node {
		out = append(out, "[node]")
	}
	if !sameCluster(a.Cluster, b.Cluster) {
		out = append(out, "[cluster]")
	}
	out = append(out, scriptRestarts(a.TrackScripts, b.TrackScripts)...)
	if a.Control != b.Control {
		out = append(out, "[control]")
	}
	if a.Metrics != b.Metrics { // named by key: the section has more than one
		what := "[metrics]"
		if a.Metrics.Listen != b.Metrics.Listen {
			what += " listen"
		}
		if a.Metrics.PerBackend != b.Metrics.PerBackend {
			what += " per_backend"
		}
		out = append(out, what)
	}
	return out
}

func sameGroups(a, b []*config.VIPGroup) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := *a[i], *b[i]
		x.Pos, y.Pos = config.Pos{}, config.Pos{}
		if !reflect.DeepEqual(vrrpGroupFields(x), vrrpGroupFields(y)) {
			return false
		}
	}
	return true
}

// vrrpGroupFields is what the election uses of a group (not positions).
func vrrpGroupFields(g config.VIPGroup) []any {
	return []any{g.Name, g.Interface, g.Addresses, g.Priority, g.Preempt, g.PreemptDelay, g.GARPCount, g.GARPInterval, g.GARPRefresh,
		names(g.TrackInterfaces), names(g.TrackScripts), names(g.TrackServices), g.NotifyMaster, g.NotifyBackup, g.NotifyFault, g.NotifyStop, g.NotifyTimeout}
}

func names(refs []config.TrackRef) []string {
	var out []string
	for _, r := range refs {
		out = append(out, fmt.Sprintf("%s:%d", r.Name, r.Weight))
	}
	return out
}

func sameCluster(a, b *config.Cluster) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	x.Pos, y.Pos = config.Pos{}, config.Pos{}
	return reflect.DeepEqual(x, y)
}

// scriptRestarts names the [[track_script]] changes a reload cannot apply:
// scripts added, removed or reordered, and any field but weight. A weight
// reaches the election through the groups' references to the script
// (config resolves it there), which applyGroups applies in place.
func scriptRestarts(a, b []*config.TrackScript) []string {
	if !sameScriptNames(a, b) {
		return []string{"[[track_script]] (scripts added, removed or renamed)"}
	}
	var out []string
	for i := range a {
		x, y := *a[i], *b[i]
		var fields []string
		if !slices.Equal(x.Command, y.Command) {
			fields = append(fields, "command")
		}
		if x.Interval != y.Interval {
			fields = append(fields, "interval")
		}
		if x.Timeout != y.Timeout {
			fields = append(fields, "timeout")
		}
		if x.Rise != y.Rise {
			fields = append(fields, "rise")
		}
		if x.Fall != y.Fall {
			fields = append(fields, "fall")
		}
		if len(fields) > 0 {
			out = append(out, fmt.Sprintf("[[track_script]] %s %s", x.Name, strings.Join(fields, ", ")))
		}
	}
	return out
}

func sameScriptNames(a, b []*config.TrackScript) bool {
	return slices.EqualFunc(a, b, func(x, y *config.TrackScript) bool { return x.Name == y.Name })
}
