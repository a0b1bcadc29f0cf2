package director

import (
	"errors"
	"fmt"
	"slices"
)

// Diff returns the minimum ordered writes that turn applied into desired.
// applied is the owned set: services that lvsd put in the kernel. A service
// of applied that is not desired is deleted; nothing outside applied is ever
// deleted. Ops come in service-key order. desired is validated first; on any
// problem Diff returns every error and no ops.
func Diff(desired, applied []DesiredService) ([]Op, error) {
	var errs []error
	want := make(map[ServiceKey]*DesiredService, len(desired))
	for i := range desired {
		d := &desired[i]
		if err := d.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := want[d.Service.Key]; dup {
			errs = append(errs, fmt.Errorf("service %s is desired more than once", d.Service.Key))
			continue
		}
		want[d.Service.Key] = d
	}
	have := make(map[ServiceKey]*DesiredService, len(applied))
	for i := range applied {
		a := &applied[i]
		if _, dup := have[a.Service.Key]; dup {
			errs = append(errs, fmt.Errorf("service %s appears more than once in the applied record", a.Service.Key))
			continue
		}
		have[a.Service.Key] = a
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	keys := make([]ServiceKey, 0, len(want)+len(have))
	for k := range want {
		keys = append(keys, k)
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, ServiceKey.Compare)
	var ops []Op
	for _, k := range keys {
		ops = appendServiceOps(ops, want[k], have[k])
	}
	return ops, nil
}

// DiffService returns the minimum ordered writes that turn have into want for
// one service. A nil want deletes the service (its destinations go with it);
// a nil have means the kernel does not hold it. want must be valid (see
// DesiredService.Validate); the order of destinations does not matter.
func DiffService(want, have *DesiredService) []Op {
	return appendServiceOps(nil, want, have)
}

// appendServiceOps appends the ops for one service: the service op first,
// then destination adds and updates, then destination deletes, each in
// destination-key order. Adds go before deletes so that a service being
// re-staffed is never left without destinations in between.
func appendServiceOps(ops []Op, want, have *DesiredService) []Op {
	if want == nil {
		if have == nil {
			return ops
		}
		return append(ops, Op{Kind: OpDelService, Service: have.Service})
	}
	svc := want.Service
	svc.Flags &^= FlagHashed
	if have != nil && have.Service.Key != svc.Key {
		// Not produced by the reconciler; handled for completeness.
		ops = append(ops, Op{Kind: OpDelService, Service: have.Service})
		have = nil
	}
	if have == nil {
		ops = append(ops, Op{Kind: OpAddService, Service: svc})
		for _, d := range sortedDests(want.Destinations) {
			ops = append(ops, Op{Kind: OpAddDest, Service: svc, Dest: d})
		}
		return ops
	}
	if !SameService(svc, have.Service) {
		ops = append(ops, Op{Kind: OpUpdateService, Service: svc})
	}
	w, h := sortedDests(want.Destinations), sortedDests(have.Destinations)
	var dels []Op
	i, j := 0, 0
	for i < len(w) || j < len(h) {
		var c int
		switch {
		case i == len(w):
			c = 1
		case j == len(h):
			c = -1
		default:
			c = w[i].Key.Compare(h[j].Key)
		}
		switch {
		case c < 0:
			ops = append(ops, Op{Kind: OpAddDest, Service: svc, Dest: w[i]})
			i++
		case c > 0:
			dels = append(dels, Op{Kind: OpDelDest, Service: svc, Dest: h[j]})
			j++
		default:
			// Weight, thresholds and forwarding method are all changed in
			// place: IPVS_CMD_SET_DEST carries the conn flags, and the kernel's
			// __ip_vs_update_dest rewrites dest->conn_flags (forwarding method
			// included) for an existing destination. Existing connections keep
			// the method they were created with.
			if w[i] != h[j] {
				ops = append(ops, Op{Kind: OpUpdateDest, Service: svc, Dest: w[i]})
			}
			i++
			j++
		}
	}
	return append(ops, dels...)
}

// SameService reports whether two services have the same kernel-visible
// configuration, ignoring FlagHashed.
func SameService(a, b Service) bool {
	return a.Key == b.Key && a.Scheduler == b.Scheduler &&
		a.Flags&^FlagHashed == b.Flags&^FlagHashed &&
		a.Timeout == b.Timeout && a.PersistenceBits == b.PersistenceBits &&
		a.PEName == b.PEName
}

// sameDestSet reports whether a and b hold the same destinations in any order.
func sameDestSet(a, b []Destination) bool {
	if len(a) != len(b) {
		return false
	}
	if slices.Equal(a, b) {
		return true
	}
	return slices.Equal(sortedDests(a), sortedDests(b))
}

// sortedDests returns ds sorted by key, copying only when ds is not sorted.
func sortedDests(ds []Destination) []Destination {
	less := func(a, b Destination) int { return a.Key.Compare(b.Key) }
	if slices.IsSortedFunc(ds, less) {
		return ds
	}
	c := slices.Clone(ds)
	slices.SortFunc(c, less)
	return c
}
