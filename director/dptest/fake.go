// Package dptest provides an in-memory director.Dataplane for tests. It
// behaves like the kernel where the reconciler depends on it: adding an
// existing service is EEXIST, any op on a missing service is ESRCH, a missing
// destination is ENOENT, deleting a service deletes its destinations, and
// services read back with FlagHashed set. It records every write, can fail
// writes on demand and can change the table behind the reconciler's back.
package dptest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/lvsd/lvsd/director"
)

// Fake is an in-memory IPVS table keyed like the kernel's: by family,
// protocol, address, port and fwmark (director.ServiceKey). Safe for
// concurrent use.
type Fake struct {
	mu       sync.Mutex
	svcs     map[director.ServiceKey]*service
	writes   []director.Op
	record   bool
	fault    func(director.Op) error
	reads    Reads
	failRead error
	skipDump func(director.ServiceKey) bool
}

type service struct {
	svc   director.Service
	dests map[director.DestKey]director.Destination
}

// Reads counts read calls, for asserting how often the kernel was dumped.
type Reads struct {
	Services     int
	Destinations int
}

// New returns an empty table that records writes.
func New() *Fake {
	return &Fake{svcs: make(map[director.ServiceKey]*service), record: true}
}

// Apply performs ops in order like the kernel would, each independently.
func (f *Fake) Apply(ctx context.Context, ops []director.Op) []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for i, op := range ops {
		if f.record {
			f.writes = append(f.writes, op)
		}
		var err error
		if err = ctx.Err(); err == nil && f.fault != nil {
			err = f.fault(op)
		}
		if err == nil {
			err = f.apply(op)
		}
		if err != nil {
			if errs == nil {
				errs = make([]error, len(ops))
			}
			errs[i] = fmt.Errorf("fake %s: %w", op.Kind, err)
		}
	}
	return errs
}

func (f *Fake) apply(op director.Op) error {
	key := op.Service.Key
	s := f.svcs[key]
	switch op.Kind {
	case director.OpAddService:
		if s != nil {
			return syscall.EEXIST
		}
		if err := checkService(op.Service); err != nil {
			return err
		}
		f.svcs[key] = &service{svc: stored(op.Service), dests: make(map[director.DestKey]director.Destination)}
		return nil
	case director.OpUpdateService, director.OpDelService, director.OpAddDest, director.OpUpdateDest, director.OpDelDest:
		if s == nil {
			return syscall.ESRCH
		}
	default:
		return syscall.EINVAL
	}
	dk := op.Dest.Key
	_, exists := s.dests[dk]
	switch op.Kind {
	case director.OpUpdateService:
		if err := checkService(op.Service); err != nil {
			return err
		}
		s.svc = stored(op.Service)
	case director.OpDelService:
		delete(f.svcs, key)
	case director.OpAddDest, director.OpUpdateDest:
		if op.Kind == director.OpAddDest && exists {
			return syscall.EEXIST
		}
		if op.Kind == director.OpUpdateDest && !exists {
			return syscall.ENOENT
		}
		if err := checkDest(op.Dest); err != nil {
			return err
		}
		s.dests[dk] = op.Dest
	case director.OpDelDest:
		if !exists {
			return syscall.ENOENT
		}
		delete(s.dests, dk)
	}
	return nil
}

// checkService rejects what the kernel rejects with EINVAL or ENOENT.
func checkService(s director.Service) error {
	if s.Scheduler == "" {
		return syscall.ENOENT // no such scheduler module
	}
	if s.Key.Family == director.IPv6 && (s.PersistenceBits < 1 || s.PersistenceBits > 128) {
		return syscall.EINVAL
	}
	return nil
}

func checkDest(d director.Destination) error {
	if d.Weight < 0 {
		return syscall.EINVAL
	}
	if d.LowerThreshold > d.UpperThreshold {
		return syscall.ERANGE
	}
	return nil
}

// stored is the service as the kernel keeps it: whole-second timeout.
func stored(s director.Service) director.Service {
	s.Flags &^= director.FlagHashed
	s.Timeout = s.Timeout.Truncate(time.Second)
	return s
}

// Services lists every service with FlagHashed set, as the kernel does, in
// no particular order.
func (f *Fake) Services(ctx context.Context) ([]director.Service, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads.Services++
	if f.failRead != nil {
		return nil, f.failRead
	}
	out := make([]director.Service, 0, len(f.svcs))
	for _, s := range f.svcs {
		if f.skipDump != nil && f.skipDump(s.svc.Key) {
			continue
		}
		svc := s.svc
		svc.Flags |= director.FlagHashed
		out = append(out, svc)
	}
	return out, nil
}

// Destinations lists the destinations of one service; ESRCH if it is missing.
func (f *Fake) Destinations(ctx context.Context, key director.ServiceKey) ([]director.Destination, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads.Destinations++
	if f.failRead != nil {
		return nil, f.failRead
	}
	s := f.svcs[key]
	if s == nil {
		return nil, fmt.Errorf("fake destinations of %s: %w", key, syscall.ESRCH)
	}
	out := make([]director.Destination, 0, len(s.dests))
	for _, d := range s.dests {
		out = append(out, d)
	}
	return out, nil
}

// Writes returns a copy of every write attempted since the last ResetWrites,
// failed ones included.
func (f *Fake) Writes() []director.Op {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.writes)
}

// ResetWrites forgets the recorded writes.
func (f *Fake) ResetWrites() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = nil
}

// RecordWrites turns write recording on or off (off for benchmarks).
func (f *Fake) RecordWrites(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record = on
	f.writes = nil
}

// Reads returns how many read calls were made.
func (f *Fake) Reads() Reads {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

// SetFault installs a hook consulted before every write; a non-nil error
// fails that write, which then does not happen. nil removes the hook.
func (f *Fake) SetFault(fn func(director.Op) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault = fn
}

// SkipInDump makes Services leave out the services skip matches, as a
// kernel dump does when the table changes under it; nil restores it.
func (f *Fake) SkipInDump(skip func(director.ServiceKey) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.skipDump = skip
}

// FailReads makes Services and Destinations fail with err; nil restores them.
func (f *Fake) FailReads(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failRead = err
}

// Put creates or replaces a service and its destinations without recording a
// write: state made by someone else (another tool, a previous run).
func (f *Fake) Put(svc director.Service, dests ...director.Destination) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &service{svc: stored(svc), dests: make(map[director.DestKey]director.Destination, len(dests))}
	for _, d := range dests {
		s.dests[d.Key] = d
	}
	f.svcs[svc.Key] = s
}

// Flush deletes every service, like `ipvsadm -C`.
func (f *Fake) Flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.svcs)
}

// DeleteService deletes one service behind the reconciler's back; it reports
// whether the service existed.
func (f *Fake) DeleteService(key director.ServiceKey) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.svcs[key]
	delete(f.svcs, key)
	return ok
}

// SetDest creates or changes one destination behind the reconciler's back,
// like `ipvsadm -a/-e`; it reports whether the service existed.
func (f *Fake) SetDest(key director.ServiceKey, d director.Destination) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.svcs[key]
	if s != nil {
		s.dests[d.Key] = d
	}
	return s != nil
}

// DeleteDest deletes one destination behind the reconciler's back, like
// `ipvsadm -d`; it reports whether it existed.
func (f *Fake) DeleteDest(key director.ServiceKey, dk director.DestKey) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.svcs[key]
	if s == nil {
		return false
	}
	_, ok := s.dests[dk]
	delete(s.dests, dk)
	return ok
}

// Table returns the whole table sorted by service and destination key, with
// FlagHashed cleared, for comparing against desired state.
func (f *Fake) Table() []director.DesiredService {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]director.DesiredService, 0, len(f.svcs))
	for _, s := range f.svcs {
		ds := director.DesiredService{Service: s.svc}
		for _, d := range s.dests {
			ds.Destinations = append(ds.Destinations, d)
		}
		slices.SortFunc(ds.Destinations, func(a, b director.Destination) int { return a.Key.Compare(b.Key) })
		out = append(out, ds)
	}
	slices.SortFunc(out, func(a, b director.DesiredService) int { return a.Service.Key.Compare(b.Service.Key) })
	return out
}
