package daemon

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/config"
	"github.com/lvsd/lvsd/ipvsconn"
	"github.com/lvsd/lvsd/opstate"
	"github.com/lvsd/lvsd/vrrp"
)

// controller serves the control API from the engine's loop.
type controller struct{ e *engine }

func (c controller) Status(ctx context.Context) (api.Status, error) { return c.e.status(ctx) }

func (c controller) Events(ctx context.Context, since time.Time, limit int) ([]api.Event, error) {
	return c.e.events.since(since, limit), nil
}

func (c controller) Reload(ctx context.Context) (res api.CheckResult, err error) {
	err = c.e.do(ctx, func() { res = c.e.reload() })
	return res, err
}

func (c controller) CheckConfig(ctx context.Context) (api.CheckResult, error) {
	return c.e.checkConfig(), nil
}

func (c controller) BackendAction(ctx context.Context, action string, req api.BackendRequest) (b api.Backend, err error) {
	derr := c.e.do(ctx, func() { b, err = c.e.backendAction(action, req) })
	if derr != nil {
		return b, derr
	}
	return b, err
}

func (c controller) GroupAction(ctx context.Context, action, group string) (api.Group, error) {
	var eff string
	var err error
	if derr := c.e.do(ctx, func() { eff, err = c.e.groupAction(action, group) }); derr != nil {
		return api.Group{}, derr
	}
	if err != nil {
		return api.Group{}, err
	}
	// The election acts within a heartbeat; wait (off the loop) for the
	// state it reaches, so the operator sees the outcome.
	for i := 0; i < 100 && !settled(eff, c.e.groupState(group)); i++ {
		select {
		case <-ctx.Done():
			return api.Group{}, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	var g api.Group
	err = c.e.do(ctx, func() {
		for _, x := range c.e.groups() {
			if x.Name == group {
				g = x
			}
		}
	})
	return g, err
}

func (c controller) Connections(ctx context.Context, client netip.Addr, limit int) ([]api.Conn, error) {
	return c.e.connections(ctx, client, limit)
}

// connections reads the kernel's connection table (off the loop: it can
// hold millions of entries) and names the lvsd service of each entry.
func (e *engine) connections(ctx context.Context, client netip.Addr, limit int) ([]api.Conn, error) {
	var nameOf func(ipvsconn.Conn) string
	witness := e.opts.Witness
	if err := e.do(ctx, func() { nameOf = serviceNamer(e.cfg.Services) }); err != nil {
		return nil, err
	}
	if witness {
		return nil, api.BadRequest("run it on a director", "a witness has no connections")
	}
	path := e.opts.ConnTable
	if path == "" {
		path = ipvsconn.DefaultPath
	}
	n := 0
	conns, err := ipvsconn.Read(path, func(c ipvsconn.Conn) bool {
		if n >= limit || client.IsValid() && c.Client.Addr() != client {
			return false
		}
		n++
		return true
	})
	if err != nil {
		return nil, err
	}
	out := make([]api.Conn, 0, len(conns))
	for _, c := range conns {
		name := nameOf(c)
		out = append(out, api.Conn{Service: name, Protocol: c.Protocol, Client: c.Client.String(), Virtual: c.Virtual.String(),
			Backend: c.Dest.String(), State: c.State, Expires: c.Expires.Seconds(), Template: c.Template()})
	}
	return out, nil
}

// serviceNamer names the service of a connection-table entry ("" when
// none of services matches).
func serviceNamer(services []*config.Service) func(ipvsconn.Conn) string {
	type markKey struct {
		v6   bool
		mark uint32
	}
	type marked struct { // traffic a fwmark service marks itself (its mark = {...})
		name string
		mark *config.Mark
	}
	byVIP, byMark := map[netip.AddrPort]string{}, map[markKey]string{}
	var marks []marked
	for _, s := range services {
		if s.FWMark != 0 {
			byMark[markKey{s.Family == config.IPv6, s.FWMark}] = s.Name
			if s.Mark != nil {
				marks = append(marks, marked{s.Name, s.Mark})
			}
		} else {
			byVIP[netip.AddrPortFrom(s.Address, s.Port)] = s.Name
		}
	}
	return func(c ipvsconn.Conn) string {
		name := byVIP[c.Virtual]
		if name == "" {
			name = byVIP[netip.AddrPortFrom(c.Virtual.Addr(), 0)] // a port-0 (PCC) service
		}
		if name == "" && c.Protocol == "IP" {
			// A fwmark template holds the mark in its address's first 32 bits.
			a := c.Virtual.Addr().AsSlice()
			name = byMark[markKey{c.Virtual.Addr().Is6(), binary.BigEndian.Uint32(a[:4])}]
		}
		for i := 0; name == "" && i < len(marks); i++ {
			// A fwmark service's connection shows the address and port the
			// client reached: the service's own mark rule says which.
			m := marks[i].mark
			if strings.EqualFold(c.Protocol, string(m.Protocol)) && m.Destination.Contains(c.Virtual.Addr()) &&
				(len(m.Ports) == 0 || slices.Contains(m.Ports, c.Virtual.Port())) {
				name = marks[i].name
			}
		}
		return name
	}
}

// backendAction applies an operator action to one backend: it becomes a
// replicated, persisted record, then IPVS follows.
func (e *engine) backendAction(action string, req api.BackendRequest) (api.Backend, error) {
	if e.opts.Witness {
		return api.Backend{}, api.BadRequest("run it on a director", "a witness has no services")
	}
	s := e.cfg.Service(req.Service)
	if s == nil {
		return api.Backend{}, api.NotFound("lvsctl status lists the services", "unknown service %q", req.Service)
	}
	key, err := e.resolveBackend(s, req.Backend, action == "add")
	if err != nil {
		return api.Backend{}, err
	}
	cur, had := e.store.Get(opstate.Key{Service: s.Name, Backend: key})
	view, inView := e.view(s.Name, key)
	exists := inView && !view.Removed
	if !exists && action != "add" {
		return api.Backend{}, api.NotFound(fmt.Sprintf("lvsctl status lists the backends of %s", s.Name), "service %s has no backend %s", s.Name, key)
	}
	rec := opstate.Record{Service: s.Name, Backend: key}
	if had {
		rec = cur
	}
	switch action {
	case "drain":
		rec.Admin = opstate.Drained
	case "undrain":
		if view.Admin != opstate.Drained {
			return api.Backend{}, api.Conflict(undoHint(view.Admin), "backend %s of %s is not drained", key, s.Name)
		}
		rec.Admin = opstate.AdminNone
	case "disable":
		rec.Admin = opstate.Disabled
	case "enable":
		if view.Admin != opstate.Disabled {
			return api.Backend{}, api.Conflict(undoHint(view.Admin), "backend %s of %s is not disabled", key, s.Name)
		}
		rec.Admin = opstate.AdminNone
	case "add":
		if exists {
			return api.Backend{}, api.Conflict("use drain/undrain or disable/enable to change it", "service %s already has backend %s", s.Name, key)
		}
		rec.Removed = false
		rec.Admin = opstate.AdminNone
		if !inView || view.Origin == "runtime" {
			rec.Added = true
			rec.Weight = config.DefaultWeight
		} else {
			// The config has it (it may have gained it since a runtime add):
			// back in, with the config's weight.
			rec.Added, rec.Weight = false, 0
		}
		if req.Weight != nil {
			if !rec.Added {
				return api.Backend{}, api.BadRequest("its weight comes from the config", "backend %s of %s is configured; --weight applies to new backends", key, s.Name)
			}
			rec.Weight = *req.Weight
		}
		if rec.Weight < 0 || rec.Weight > 65535 {
			return api.Backend{}, api.BadRequest("use 0..65535", "weight %d out of range", rec.Weight)
		}
		check := s.Check
		if inView {
			check = view.Check
		}
		if checked(check) && noCheckPort(checkSpec(s, check), key) {
			hint := "set port in the service's [service.check]: a backend added at run time is checked with it"
			if s.Forward == config.ForwardNAT {
				hint = fmt.Sprintf("add it as %s:PORT, or %s", key.Addr(), hint)
			}
			return api.Backend{}, api.BadRequest(hint, "service %s's %s check needs a port and backend %s has none", s.Name, check.Type, key)
		}
	case "remove":
		rec.Removed = true
		rec.Admin = opstate.AdminNone
		if inView && view.Origin == "config" {
			rec.Added, rec.Weight = false, 0 // a runtime weight lasts until remove
		}
	default:
		return api.Backend{}, api.BadRequest("", "unknown action %q", action)
	}
	stamped, err := e.store.Put(rec)
	if err != nil {
		return api.Backend{}, fmt.Errorf("record %s of %s/%s: %w", action, s.Name, key, err)
	}
	e.publish(stamped)
	e.events.add(api.Event{Kind: "operator", Subject: stamped.Key().String(), To: describe(stamped), Reason: action + " on " + e.cfg.Node.Name})
	e.applyOverrides([]opstate.Key{stamped.Key()}, "local")
	for _, b := range e.backendsOf(s) {
		if b.Address == key.String() {
			return b, nil
		}
	}
	// A removed backend is no longer listed.
	return api.Backend{Address: key.String(), Admin: string(stamped.Admin), Origin: "removed", Weight: -1}, nil
}

func undoHint(a opstate.Admin) string {
	switch a {
	case opstate.Drained:
		return "it is drained: use undrain"
	case opstate.Disabled:
		return "it is disabled: use enable"
	}
	return "it is in normal service already"
}

func (e *engine) view(service string, key netip.AddrPort) (backendView, bool) {
	for _, v := range e.views[service] {
		if v.Key == key {
			return v, true
		}
	}
	return backendView{}, false
}

// resolveBackend parses ADDRESS[:PORT]. Without a port it means the one
// backend with that address, or, for an add, the service's port.
func (e *engine) resolveBackend(s *config.Service, arg string, adding bool) (netip.AddrPort, error) {
	var key netip.AddrPort
	if a, err := netip.ParseAddr(arg); err == nil {
		a = a.Unmap()
		var matches []netip.AddrPort
		for _, v := range e.views[s.Name] {
			if v.Key.Addr() == a && !v.Removed {
				matches = append(matches, v.Key)
			}
		}
		switch {
		case len(matches) == 1 && !adding:
			return matches[0], nil
		case len(matches) > 1:
			return key, api.BadRequest("give the port too, e.g. "+matches[0].String(), "service %s has %d backends at %s", s.Name, len(matches), a)
		}
		key = netip.AddrPortFrom(a, s.Port)
	} else if ap, err := netip.ParseAddrPort(arg); err == nil {
		key = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	} else {
		return key, api.BadRequest("use ADDRESS or ADDRESS:PORT, IPv6 with a port as [2001:db8::1]:80", "malformed backend %q", arg)
	}
	if a := key.Addr(); a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
		// As the config refuses them: a real server is a unicast address.
		return key, api.BadRequest("give the real server's unicast address, without a %zone", "%s cannot be a real server", a)
	}
	if string(s.Family) != familyOfAddr(key.Addr()) {
		return key, api.BadRequest("a service and its backends share one address family", "backend %s is %s but service %s is %s", key.Addr(), familyOfAddr(key.Addr()), s.Name, s.Family)
	}
	if adding {
		fwd := s.Forward
		if fwd == config.ForwardNAT && key.Port() == 0 {
			return key, api.BadRequest("give the backend's port, e.g. "+netip.AddrPortFrom(key.Addr(), 80).String(), "service %s forwards with NAT and has port 0, so a backend needs a port", s.Name)
		}
		if fwd != config.ForwardNAT && key.Port() != s.Port {
			return key, api.BadRequest(fmt.Sprintf("use port %d or omit it", s.Port), "%s forwarding cannot change the port: backend port %d differs from service port %d", fwd, key.Port(), s.Port)
		}
	}
	return key, nil
}

func familyOfAddr(a netip.Addr) string {
	if a.Is4() {
		return "ipv4"
	}
	return "ipv6"
}

// groupAction applies an ownership action and returns the effective one
// (failover becomes demote on the owner, promote elsewhere).
func (e *engine) groupAction(action, group string) (string, error) {
	if e.node == nil || e.cfg.VIPGroup(group) == nil || e.opts.Witness {
		return "", api.NotFound("lvsctl status lists the VIP groups", "unknown VIP group %q", group)
	}
	eff := action
	if action == "failover" {
		eff = "promote"
		if gs := e.groupStatus(group); gs.State == vrrp.RoleMaster {
			eff = "demote"
			// Before patching, a failover that leaves the VIP here would be
			// a trap: refuse it (an explicit demote is still possible).
			if gs.Successor == "" {
				return "", api.Conflict("check the other directors (lvsctl status there); `lvsctl demote` sets the override anyway",
					"no other director is alive and eligible for group %s: a failover would leave its VIPs here", group)
			}
		}
	}
	o, ok := parseOverride(eff)
	if !ok && eff != "clear" {
		return "", api.BadRequest("", "unknown action %q", action)
	}
	// Two promotes tie (priority 255 each; the smaller name wins), so a
	// second one would do nothing, or nothing lasting.
	if peers := e.groupStatus(group).PromotedPeers; eff == "promote" && len(peers) > 0 {
		return "", api.Conflict(fmt.Sprintf("run `lvsctl clear %s` on %s first", group, peers[0]),
			"%s holds a promote of group %s: a promote here would tie with it", peers[0], group)
	}
	// Persist first: an override the file does not hold would be undone by
	// a restart (a demoted director taking the VIP back after patching).
	now := time.Now()
	if o == vrrp.OverrideDemote {
		now = e.node.DemotionStamp(group, now)
	}
	next := maps.Clone(e.overrides)
	if eff == "clear" {
		delete(next, group)
	} else {
		next[group] = groupOverride{Override: eff, Since: now}
	}
	path := overridesPath(e.cfg.Node.StateDir)
	if err := saveOverrides(path, next); err != nil {
		return "", fmt.Errorf("%s %s: %w", action, group, err)
	}
	if err := e.node.SetOverride(group, o, now); err != nil {
		if rerr := saveOverrides(path, e.overrides); rerr != nil {
			e.log.Error("restoring VIP group overrides after a failed action", "err", rerr)
		}
		return "", fmt.Errorf("%s %s: %w", action, group, err)
	}
	e.overrides = next
	e.events.add(api.Event{Kind: "operator", Subject: group, To: eff, Reason: action + " on " + e.cfg.Node.Name})
	return eff, nil
}

func settled(action string, r vrrp.Role) bool {
	switch action {
	case "demote":
		return r != vrrp.RoleMaster
	case "promote":
		return r == vrrp.RoleMaster
	}
	return true
}

func (e *engine) groupState(group string) vrrp.Role { return e.groupStatus(group).State }

func (e *engine) groupStatus(group string) vrrp.GroupStatus {
	for _, g := range e.node.Status().Groups {
		if g.Name == group {
			return g
		}
	}
	return vrrp.GroupStatus{Name: group, State: vrrp.RoleStopped}
}
