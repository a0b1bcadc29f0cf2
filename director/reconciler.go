package director

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Reconciler keeps the kernel's IPVS table equal to the desired state for the
// services it owns. It diffs against its own record of what it applied (never
// a kernel dump on the hot path), adopts matching kernel state at start-up,
// never touches services it does not own, and repairs drift incrementally.
// Safe for concurrent use.
type Reconciler struct {
	dp          Dataplane
	log         *slog.Logger
	resyncBatch int

	mu      sync.Mutex
	entries map[ServiceKey]*entry
	gen     uint64 // Sync generation, for duplicate and removal detection
	seq     uint64 // write sequence, to discard kernel reads made stale by writes
	order   []ServiceKey
	orderOK bool
	// ownedGen changes whenever the set of owned keys does (wherever
	// orderOK is cleared), for OwnedVersion.
	ownedGen uint64
	// last holds the entries of the previous Sync in its input order: a
	// reload usually lists services in the same order, and a positional hit
	// saves hashing 10,000 keys.
	last   []*entry
	cursor int
	stats  Stats
}

// entry is the record of one owned service.
type entry struct {
	key     ServiceKey
	dropped bool // removed from the record
	// want is the desired state (destinations in the caller's order, FlagHashed
	// cleared), or nil when the service is owned but no longer desired and is
	// to be deleted. Never mutated once stored: replaced on change.
	want *DesiredService
	// present says the kernel holds the service as far as the record knows;
	// have is then its kernel state. have shares want's slices while in sync.
	present bool
	have    DesiredService
	inSync  bool // present and have equals want
	// destsUnknown: the kernel's destinations may differ from have (the
	// service was found in the kernel rather than created); resync reads them first.
	destsUnknown bool
	seen         uint64 // last Sync generation that listed the service
	touched      uint64 // seq of the last write to the service
}

// unknownWeight marks a destination of the record whose kernel settings are
// unknown (add-dest said EEXIST): never equal to a valid weight, so the next
// diff updates it.
const unknownWeight = -1

// Option configures a Reconciler.
type Option func(*Reconciler)

// WithResyncBatch sets how many services' destinations Resync reads per call
// (round-robin). Reading destinations costs about 1 ms per service on a
// loaded kernel, so this bounds the time of one resync. Default 256.
func WithResyncBatch(n int) Option {
	return func(r *Reconciler) {
		if n > 0 {
			r.resyncBatch = n
		}
	}
}

// New returns a Reconciler writing through dp. Call Adopt before the first Sync.
func New(dp Dataplane, log *slog.Logger, opts ...Option) *Reconciler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reconciler{dp: dp, log: log, resyncBatch: 256, entries: make(map[ServiceKey]*entry)}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Result summarises one call.
type Result struct {
	Ops    OpCounts // writes that succeeded, by kind
	Failed OpCounts // writes that failed with an error, by kind
	// Drift counts differences between the record and the kernel that were
	// found (by a resync, or by the kernel's answer to a write) and repaired.
	Drift int
	// Pending counts services still not equal to their desired state after
	// the call; the next Sync or Resync retries them.
	Pending int
}

func (r *Result) add(o Result) {
	for k := range r.Ops {
		r.Ops[k] += o.Ops[k]
		r.Failed[k] += o.Failed[k]
	}
	r.Drift += o.Drift
}

// Stats are cumulative counters since New, for metrics.
type Stats struct {
	Ops     OpCounts // writes that succeeded, by kind
	Failed  OpCounts // writes that failed, by kind
	Drift   uint64   // drifted objects found and repaired
	Syncs   uint64   // Sync, SyncService and RemoveService calls
	Resyncs uint64
	Owned   int // services currently owned
	Pending int // owned services not yet equal to their desired state
}

// Stats returns the cumulative counters.
func (r *Reconciler) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.Owned = len(r.entries)
	for _, e := range r.entries {
		if !e.inSync {
			s.Pending++
		}
	}
	return s
}

// Owned returns the keys of every service lvsd owns, sorted: desired ones and
// ones still to be deleted. The daemon persists them and passes them to
// Adopt after a restart.
func (r *Reconciler) Owned() []ServiceKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make([]ServiceKey, 0, len(r.entries))
	for k := range r.entries {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, ServiceKey.Compare)
	return keys
}

// OwnedVersion changes whenever the set Owned returns changes (and only
// then, apart from Adopt), so a caller persisting that set can skip sorting
// and writing 10,000 unchanged keys.
func (r *Reconciler) OwnedVersion() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ownedGen
}

// Writes returns the cumulative write counters of Stats without the
// per-service scan Stats makes for Pending: cheap enough to call after
// every write.
func (r *Reconciler) Writes() (ops, failed OpCounts) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats.Ops, r.stats.Failed
}

// Adopt takes ownership at start-up with one dump of the kernel. Desired
// services already in the kernel are adopted as they are, so that only what
// differs is written: never a delete and re-add, never a flush. Services in
// previouslyOwned (the Owned set of a previous run) that are no longer
// desired are deleted. Every other kernel service is left alone. The whole
// record is replaced; on a read error nothing is written.
func (r *Reconciler) Adopt(ctx context.Context, desired []DesiredService, previouslyOwned []ServiceKey) (Result, error) {
	start := time.Now()
	// The new record's map finds duplicates while every service is
	// checked: nothing is read or written unless all of desired is valid.
	entries := make(map[ServiceKey]*entry, len(desired))
	list := make([]*entry, 0, len(desired)) // in desired order, then orphans
	slab := make([]entry, len(desired))
	var errs []error
	for i := range desired {
		d := &desired[i]
		key := d.Service.Key
		if entries[key] != nil {
			errs = append(errs, fmt.Errorf("service %s is desired more than once", key))
			continue
		}
		e := &slab[i]
		e.key = key
		entries[key] = e
		list = append(list, e)
		if err := d.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := joinCapped(errs); err != nil {
		return Result{}, fmt.Errorf("adopt: invalid desired state: %w", err)
	}
	kernel, err := r.dp.Services(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("adopt: list kernel services: %w", err)
	}
	inKernel := make(map[ServiceKey]Service, len(kernel))
	for _, s := range kernel {
		s.Flags &^= FlagHashed
		inKernel[s.Key] = s
	}
	clones := newDesiredSlab(desired)
	adopted := 0
	for i, e := range list { // all of desired: no duplicates
		key := e.key
		e.want = clones.clone(&desired[i])
		if ks, ok := inKernel[key]; ok {
			dests, err := r.dp.Destinations(ctx, key)
			switch {
			case errors.Is(err, syscall.ESRCH): // gone since the dump: add it
			case err != nil:
				return Result{}, fmt.Errorf("adopt: list destinations of %s: %w", key, err)
			default:
				e.present = true
				e.have = DesiredService{Service: ks, Destinations: dests}
				adopted++
			}
		}
	}
	orphans := 0
	for _, key := range previouslyOwned {
		if _, ok := entries[key]; ok {
			continue
		}
		ks, ok := inKernel[key]
		if !ok {
			// Missing from the dump: it may have skipped the service (see
			// Resync). Deleting needs the key only.
			switch _, err := r.dp.Destinations(ctx, key); {
			case errors.Is(err, syscall.ESRCH):
				continue // gone
			case err != nil:
				// As every failed read here: forgetting an owned service
				// would leave it in the kernel for good.
				return Result{}, fmt.Errorf("adopt: look up %s, owned before and missing from the dump: %w", key, err)
			}
			ks, ok = Service{Key: key}, true
		}
		if ok {
			e := &entry{key: key, present: true, have: DesiredService{Service: ks}}
			entries[key] = e
			list = append(list, e)
			orphans++
		}
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.entries {
		e.dropped = true
	}
	r.entries = entries
	r.orderOK = false
	r.ownedGen++
	r.seq++ // a resync that read the kernel before this must not judge these entries
	var todo []*entry
	for _, e := range list {
		e.touched = r.seq
		if e.want != nil && e.present && SameService(e.want.Service, e.have.Service) && sameDestSet(e.want.Destinations, e.have.Destinations) {
			e.have = *e.want
			e.inSync = true
			continue
		}
		if todo == nil {
			todo = make([]*entry, 0, len(list))
		}
		todo = append(todo, e)
	}
	res, err := r.applyEntries(ctx, todo, nil)
	r.stats.Syncs++
	r.log.Info("ipvs adopted kernel state",
		"desired", len(desired), "adopted", adopted, "orphans_deleted", orphans,
		"unowned_untouched", len(kernel)-adopted-orphans,
		"writes", res.Ops.String(), "failed", res.Failed.Total(), "took", time.Since(start))
	if err != nil {
		return res, fmt.Errorf("adopt: %w", err)
	}
	return res, nil
}

// Sync makes the owned set equal to desired, the full desired state (e.g.
// after a reload): services not listed are deleted if owned. Only services
// whose desired state differs from the record are compared in detail and
// written. Invalid input (checked for changed services only, since unchanged
// ones were checked when first applied) fails the whole call with every
// problem listed and nothing written.
func (r *Reconciler) Sync(ctx context.Context, desired []DesiredService) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("sync: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	gen := r.gen
	var (
		changed []int
		fresh   map[ServiceKey]bool
		errs    []error
	)
	if cap(r.last) < len(desired) {
		r.last = slices.Grow(r.last[:0], len(desired))
	}
	r.last = r.last[:len(desired)]
	for i := range desired {
		d := &desired[i]
		key := d.Service.Key
		e := r.last[i]
		if e == nil || e.dropped || e.key != key {
			e = r.entries[key]
			r.last[i] = e
		}
		if e != nil {
			if e.seen == gen {
				errs = append(errs, fmt.Errorf("service %s is desired more than once", key))
				continue
			}
			e.seen = gen
			if e.inSync && e.want != nil && sameDesired(d, e.want) {
				continue
			}
		} else {
			if fresh[key] {
				errs = append(errs, fmt.Errorf("service %s is desired more than once", key))
				continue
			}
			if fresh == nil {
				fresh = make(map[ServiceKey]bool)
			}
			fresh[key] = true
		}
		if err := d.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		changed = append(changed, i)
	}
	if len(errs) > 0 {
		return Result{}, fmt.Errorf("sync: invalid desired state, nothing written: %w", joinCapped(errs))
	}
	todo := make([]*entry, 0, len(changed))
	var clones desiredSlab // a single change is cloned on its own
	if len(changed) > 1 {
		clones = newDesiredSlabOf(desired, changed)
	}
	for _, i := range changed {
		d := &desired[i]
		key := d.Service.Key
		e := r.entries[key]
		if e == nil {
			e = &entry{key: key}
			r.entries[key] = e
			r.orderOK = false
			r.ownedGen++
			r.last[i] = e
		}
		e.seen = gen
		e.want = clones.clone(d)
		todo = append(todo, e)
	}
	for _, e := range r.entries {
		if e.seen != gen {
			e.want = nil
			todo = append(todo, e)
		}
	}
	r.stats.Syncs++
	return r.applyEntries(ctx, todo, nil)
}

// SyncService makes one owned (or new) service equal to d, leaving every
// other service alone: for health and operator changes.
func (r *Reconciler) SyncService(ctx context.Context, d DesiredService) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("sync service %s: %w", d.Service.Key, err)
	}
	if err := d.Validate(); err != nil {
		return Result{}, fmt.Errorf("sync service: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.Syncs++
	key := d.Service.Key
	e := r.entries[key]
	if e == nil {
		e = &entry{key: key}
		r.entries[key] = e
		r.orderOK = false
		r.ownedGen++
	} else if e.inSync && e.want != nil && sameDesired(&d, e.want) {
		return Result{}, nil
	}
	e.want = cloneDesired(&d)
	return r.applyEntries(ctx, []*entry{e}, nil)
}

// RemoveService deletes one owned service from the kernel and the owned set.
// A service lvsd does not own is never touched: that is a no-op.
func (r *Reconciler) RemoveService(ctx context.Context, key ServiceKey) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("remove service %s: %w", key, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.Syncs++
	e := r.entries[key]
	if e == nil {
		return Result{}, nil
	}
	e.want = nil
	return r.applyEntries(ctx, []*entry{e}, nil)
}

// Resync repairs drift between the record and the kernel, off the hot path:
// one Services dump finds missing, appeared and changed services; the
// destinations of a bounded batch of services (those of unknown state first,
// then round-robin) are read and compared. The kernel is read without holding
// the lock; services written meanwhile are skipped. Drift is repaired with
// the usual minimal writes, and each repaired service is logged once with
// what drifted and what was done. Services left out of sync by earlier
// failures are retried too.
func (r *Reconciler) Resync(ctx context.Context) (Result, error) {
	r.mu.Lock()
	start := r.seq
	batch := r.pickResyncBatch()
	r.mu.Unlock()

	kernel, err := r.dp.Services(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("resync: list kernel services: %w", err)
	}
	type destRead struct {
		key   ServiceKey
		dests []Destination
	}
	reads := make([]destRead, 0, len(batch))
	var readErrs []error
	for _, key := range batch {
		if err := ctx.Err(); err != nil {
			return Result{}, fmt.Errorf("resync: %w", err)
		}
		dests, err := r.dp.Destinations(ctx, key)
		if err != nil {
			// A service deleted since the dump shows up in the next resync.
			if !errors.Is(err, syscall.ESRCH) {
				readErrs = append(readErrs, fmt.Errorf("list destinations of %s: %w", key, err))
			}
			continue
		}
		reads = append(reads, destRead{key, dests})
	}
	inKernel := make(map[ServiceKey]Service, len(kernel))
	for _, s := range kernel {
		s.Flags &^= FlagHashed
		inKernel[s.Key] = s
	}
	// A dump resumes by position in a table every namespace shares: a
	// service added or deleted elsewhere meanwhile (kube-proxy, docker) can
	// make it skip one of ours. Ask before calling one missing.
	r.mu.Lock()
	var absent []ServiceKey
	for key, e := range r.entries {
		if _, found := inKernel[key]; e.present && !found && e.touched <= start {
			absent = append(absent, key)
		}
	}
	r.mu.Unlock()
	skipped := map[ServiceKey]bool{}
	for _, key := range absent {
		if _, err := r.dp.Destinations(ctx, key); err == nil {
			skipped[key] = true
		} else if !errors.Is(err, syscall.ESRCH) {
			skipped[key] = true // unknown: not proof it is gone
			readErrs = append(readErrs, fmt.Errorf("look up %s, missing from the dump: %w", key, err))
		}
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.Resyncs++
	drift := make(map[ServiceKey]string)
	for key, e := range r.entries {
		if e.touched > start {
			continue // written after the dump began: the dump may be stale
		}
		ks, found := inKernel[key]
		switch {
		case e.present && !found && skipped[key]:
			// There after all; compared at the next resync.
		case e.present && !found:
			drift[key] = "service missing from the kernel"
			e.present, e.have, e.inSync = false, DesiredService{}, false
		case !e.present && found && e.want != nil:
			drift[key] = "service appeared in the kernel"
			e.present, e.have, e.inSync, e.destsUnknown = true, DesiredService{Service: ks}, false, true
		case e.present && found && !SameService(ks, e.have.Service):
			drift[key] = "service changed: " + describeServiceDrift(e.have.Service, ks)
			e.have.Service, e.inSync = ks, false
		}
	}
	for _, rd := range reads {
		e := r.entries[rd.key]
		if e == nil || e.touched > start || !e.present {
			continue
		}
		if !sameDestSet(rd.dests, e.have.Destinations) {
			note := "destinations changed: " + describeDestDrift(e.have.Destinations, rd.dests)
			if d, ok := drift[rd.key]; ok {
				note = d + "; " + note
			}
			drift[rd.key] = note
			e.have.Destinations = sortedDests(slices.Clone(rd.dests))
			e.inSync = false
		}
		e.destsUnknown = false
	}
	var todo []*entry
	for _, e := range r.entries {
		if !e.inSync {
			todo = append(todo, e)
		}
	}
	res, err := r.applyEntries(ctx, todo, drift)
	res.Drift += len(drift)
	r.stats.Drift += uint64(len(drift))
	res.Pending = 0
	for _, e := range r.entries {
		if !e.inSync {
			res.Pending++
		}
	}
	if len(readErrs) > 0 {
		err = errors.Join(err, fmt.Errorf("resync: %w", joinCapped(readErrs)))
	}
	return res, err
}

// pickResyncBatch chooses whose destinations to read: services of unknown
// destination state first, then the next ones round-robin. Caller holds mu.
func (r *Reconciler) pickResyncBatch() []ServiceKey {
	batch := make([]ServiceKey, 0, min(r.resyncBatch, len(r.entries)))
	picked := make(map[ServiceKey]bool)
	for k, e := range r.entries {
		if len(batch) == r.resyncBatch {
			break
		}
		if e.present && e.destsUnknown {
			batch = append(batch, k)
			picked[k] = true
		}
	}
	if !r.orderOK {
		r.order = r.order[:0]
		for k := range r.entries {
			r.order = append(r.order, k)
		}
		slices.SortFunc(r.order, ServiceKey.Compare)
		r.orderOK = true
		if r.cursor >= len(r.order) {
			r.cursor = 0
		}
	}
	for n := 0; n < len(r.order) && len(batch) < r.resyncBatch; n++ {
		k := r.order[r.cursor]
		r.cursor = (r.cursor + 1) % len(r.order)
		if e := r.entries[k]; e != nil && e.present && !picked[k] {
			batch = append(batch, k)
		}
	}
	return batch
}

// applyChunkOps is how many writes applyEntries hands the dataplane at a
// time (16 of ipvsdp's netlink batches), so that a full table (110,000
// writes) is neither built as one slice nor waited for in one piece: the
// next chunk is built and the previous one recorded while the kernel
// works through the current one.
const applyChunkOps = 16000

// firstChunkOps is the size of the first chunk: the kernel starts on it
// while the next is built.
const firstChunkOps = 2000

// opChunk is one Apply call's writes and the services they belong to.
type opChunk struct {
	ops   []Op
	spans []span
	errs  []error // Apply's answer
	done  chan struct{}
}

// span is the writes of one service within a chunk.
type span struct {
	e          *entry
	start, end int
}

// applyEntries diffs, writes and records the given services, with one
// follow-up round for services whose write answers revealed drift (e.g.
// EEXIST on an add). drift, when non-nil, holds resync findings: each such
// service is logged once with what was done. Writes go out in service-key
// order. Caller holds mu.
func (r *Reconciler) applyEntries(ctx context.Context, es []*entry, drift map[ServiceKey]string) (Result, error) {
	if len(es) == 0 {
		return Result{}, nil
	}
	start := time.Now()
	spanKeys := len(es)
	var res Result
	var errs []error
	done := make(map[ServiceKey][]string, len(drift))
	pending := make(map[ServiceKey]bool)
	slices.SortFunc(es, func(a, b *entry) int { return a.key.Compare(b.key) })
	// Two chunks: while one is being applied, the other is built, then
	// recorded once its answers are in.
	var chunks [2]opChunk
	size := 0 // an upper bound of the writes, to size the chunks once
	for _, e := range es {
		size += 1 + len(e.have.Destinations)
		if e.want != nil {
			size += len(e.want.Destinations)
		}
		if size >= applyChunkOps {
			size = applyChunkOps + 64 // a chunk ends after the service that fills it
			break
		}
	}
	chunks[0].ops = make([]Op, 0, size)
	if size > firstChunkOps {
		chunks[1].ops = make([]Op, 0, size)
	}
	record := func(c *opChunk, retry *[]*entry) {
		for _, sp := range c.spans {
			var spanErrs []error
			if c.errs != nil {
				spanErrs = c.errs[sp.start:sp.end]
			}
			ops := c.ops[sp.start:sp.end]
			out := r.commit(sp.e, ops, spanErrs)
			res.add(out.Result)
			errs = append(errs, out.errs...)
			key := sp.e.key
			if _, resynced := drift[key]; resynced || out.Drift > 0 || done[key] != nil {
				done[key] = append(done[key], out.summary(ops))
			}
			if out.Drift > 0 {
				*retry = append(*retry, sp.e)
			}
			if !out.inSync {
				pending[key] = true
			} else if len(pending) > 0 {
				delete(pending, key)
			}
		}
		clear(c.spans) // drop the entry pointers
		c.ops, c.spans, c.errs = c.ops[:0], c.spans[:0], nil
	}
	for round := 0; round < 2 && len(es) > 0; round++ {
		r.seq++
		var retry []*entry
		cur := &chunks[0]
		limit := firstChunkOps
		var inFlight *opChunk // being applied
		// send hands cur to the dataplane, asynchronously unless it is the
		// last, and records the chunk applied before it.
		send := func(last bool) {
			prev := inFlight
			if prev != nil {
				<-prev.done
				r.checkAnswers(prev)
			}
			inFlight = nil
			if len(cur.ops) > 0 {
				c := cur
				c.done = make(chan struct{})
				if last {
					c.errs = r.dp.Apply(ctx, c.ops)
					close(c.done)
				} else {
					go func() {
						defer close(c.done)
						c.errs = r.dp.Apply(ctx, c.ops)
					}()
				}
				inFlight = c
				cur = &chunks[0]
				if c == cur {
					cur = &chunks[1]
				}
			}
			if prev != nil {
				record(prev, &retry)
			}
			if last && inFlight != nil {
				r.checkAnswers(inFlight)
				record(inFlight, &retry)
				inFlight = nil
			}
		}
		for _, e := range es {
			if e.dropped {
				continue // deleted in the previous round
			}
			e.touched = r.seq
			n := len(cur.ops)
			var have *DesiredService
			if e.present {
				have = &e.have
			}
			cur.ops = appendServiceOps(cur.ops, e.want, have)
			if len(cur.ops) == n {
				r.settle(e) // already equal: nothing to write
				continue
			}
			cur.spans = append(cur.spans, span{e, n, len(cur.ops)})
			if len(cur.ops) >= limit {
				send(false)
				limit = applyChunkOps
			}
		}
		send(true)
		es = retry
	}
	res.Pending = len(pending)
	r.stats.Drift += uint64(res.Drift)
	logged := make([]ServiceKey, 0, len(drift)+len(done))
	for k := range drift {
		logged = append(logged, k)
	}
	for k := range done {
		if _, ok := drift[k]; !ok {
			logged = append(logged, k)
		}
	}
	slices.SortFunc(logged, ServiceKey.Compare) // stable log order
	for _, k := range logged {
		note, fromResync := drift[k]
		if !fromResync {
			note = "kernel answers differed from the record"
		}
		what, repaired := done[k]
		if !repaired {
			r.log.Warn("ipvs drift recorded", "service", k.String(), "drift", note, "repair", "none needed")
			continue
		}
		r.log.Warn("ipvs drift repaired", "service", k.String(), "drift", note, "repair", strings.Join(what, "; then "))
	}
	for k := range r.stats.Ops {
		r.stats.Ops[k] += res.Ops[k]
		r.stats.Failed[k] += res.Failed[k]
	}
	if n := res.Ops.Total() + res.Failed.Total(); n > 0 {
		r.log.Info("ipvs writes", "services", spanKeys, "done", res.Ops.String(), "failed", res.Failed.String(),
			"pending", res.Pending, "took", time.Since(start))
	}
	if len(errs) > 0 {
		return res, &WriteError{Err: fmt.Errorf("%d ipvs writes failed: %w", len(errs), joinCapped(errs))}
	}
	return res, nil
}

// WriteError is the error of a call whose kernel writes (some of them)
// failed: unlike bad input or a failed read, the record still says exactly
// what the kernel holds, everything else was written, and the services
// concerned stay pending for the next Sync or Resync. A caller can carry on.
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// checkAnswers makes sure a chunk has one answer per write, or none.
func (r *Reconciler) checkAnswers(c *opChunk) {
	if c.errs != nil && len(c.errs) != len(c.ops) {
		err := fmt.Errorf("dataplane returned %d results for %d writes", len(c.errs), len(c.ops))
		c.errs = make([]error, len(c.ops))
		for i := range c.errs {
			c.errs[i] = err
		}
	}
}

// settle records that the kernel equals want for e (or that a not-desired
// service is gone). Caller holds mu.
func (r *Reconciler) drop(e *entry) {
	delete(r.entries, e.key)
	e.dropped = true
	r.orderOK = false
	r.ownedGen++
}

func (r *Reconciler) settle(e *entry) {
	if e.want == nil {
		if !e.present {
			r.drop(e)
		}
		return
	}
	if e.present {
		e.have = *e.want
		e.inSync = true
	}
}

type commitResult struct {
	Result
	inSync  bool // the service now equals its desired state (or is gone as desired)
	errs    []error
	outcome []string // per op: "ok", or what the kernel said; nil when all were ok
}

func (c commitResult) summary(ops []Op) string {
	var b strings.Builder
	for i, op := range ops {
		if i > 0 {
			b.WriteString(", ")
		}
		if i == 8 {
			fmt.Fprintf(&b, "and %d more", len(ops)-i)
			break
		}
		b.WriteString(op.Kind.String())
		if op.Kind >= OpAddDest {
			b.WriteString(" " + op.Dest.Key.String())
		}
		if c.outcome != nil && c.outcome[i] != "ok" {
			b.WriteString(" (" + c.outcome[i] + ")")
		}
	}
	return b.String()
}

// commit updates the record of one service from the outcome of its writes,
// so that the record reflects what the kernel now holds: a failed write did
// not happen, and errno answers (EEXIST, ESRCH, ENOENT) correct the record
// where it was wrong. Caller holds mu.
func (r *Reconciler) commit(e *entry, ops []Op, errs []error) commitResult {
	var out commitResult
	key := e.key
	if errs == nil {
		for _, op := range ops {
			out.Ops[op.Kind]++
		}
		e.present = e.want != nil
		e.destsUnknown = e.destsUnknown && e.present
		r.settle(e)
		out.inSync = true
		return out
	}
	out.outcome = make([]string, len(ops))
	// Rebuild have step by step from what actually happened.
	dests := make(map[DestKey]Destination, len(e.have.Destinations))
	if e.present {
		for _, d := range e.have.Destinations {
			dests[d.Key] = d
		}
	}
	svc := e.have.Service
	present := e.present
	gone := func() {
		present = false
		clear(dests)
	}
	addFailed := false // the service could not be added: its dest ops fail with ESRCH as a consequence
	for i, op := range ops {
		err := errs[i]
		if err != nil && addFailed && errors.Is(err, syscall.ESRCH) {
			out.Failed[op.Kind]++
			out.outcome[i] = "skipped, service not added"
			continue
		}
		if err == nil {
			out.Ops[op.Kind]++
			out.outcome[i] = "ok"
			switch op.Kind {
			case OpAddService:
				present, svc = true, op.Service
				clear(dests)
			case OpUpdateService:
				svc = op.Service
			case OpDelService:
				gone()
			case OpAddDest, OpUpdateDest:
				dests[op.Dest.Key] = op.Dest
			case OpDelDest:
				delete(dests, op.Dest.Key)
			}
			continue
		}
		drifted := true
		switch {
		case op.Kind == OpAddService && errors.Is(err, syscall.EEXIST):
			// Someone else created it: take it, settings unknown.
			present, svc = true, Service{Key: key}
			clear(dests)
			e.destsUnknown = true
		case op.Kind == OpDelService && (errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT)):
			gone() // already gone: the delete's goal is met
		case op.Kind != OpAddService && errors.Is(err, syscall.ESRCH):
			gone()
		case op.Kind == OpAddDest && errors.Is(err, syscall.EEXIST):
			d := op.Dest
			d.Weight = unknownWeight
			dests[d.Key] = d
		case (op.Kind == OpUpdateDest || op.Kind == OpDelDest) && errors.Is(err, syscall.ENOENT):
			delete(dests, op.Dest.Key)
		default:
			drifted = false
		}
		if drifted {
			out.Drift++
			out.outcome[i] = errnoName(err)
			continue
		}
		if op.Kind == OpAddService {
			addFailed = true
		}
		out.Failed[op.Kind]++
		out.outcome[i] = "failed"
		out.errs = append(out.errs, fmt.Errorf("%s: %w", op, err))
		r.log.Error("ipvs write failed", "op", op.String(), "error", err)
	}
	e.present = present
	e.inSync = false
	e.have = DesiredService{Service: svc}
	if present {
		e.have.Destinations = make([]Destination, 0, len(dests))
		for _, d := range dests {
			e.have.Destinations = append(e.have.Destinations, d)
		}
		e.have.Destinations = sortedDests(e.have.Destinations)
	}
	if e.want == nil && !present {
		r.drop(e)
		out.inSync = true
	} else if e.want != nil && present && SameService(e.want.Service, svc) && sameDestSet(e.want.Destinations, e.have.Destinations) {
		e.have = *e.want
		e.inSync = true
		out.inSync = true
	}
	return out
}

func errnoName(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EEXIST:
			return "EEXIST"
		case syscall.ESRCH:
			return "ESRCH"
		case syscall.ENOENT:
			return "ENOENT"
		}
	}
	return err.Error()
}

// joinCapped joins errors, keeping the first few so a broken kernel or a
// huge bad input does not produce a megabyte error string.
func joinCapped(errs []error) error {
	const max = 20
	if len(errs) <= max {
		return errors.Join(errs...)
	}
	kept := append(slices.Clone(errs[:max]), fmt.Errorf("and %d more", len(errs)-max))
	return errors.Join(kept...)
}

// desiredSlab clones desired services for the record from two slabs
// sized up front, instead of two allocations per service.
type desiredSlab struct {
	ds    []DesiredService
	dests []Destination
}

// newDesiredSlab sizes a slab for all of desired.
func newDesiredSlab(desired []DesiredService) desiredSlab {
	n := 0
	for i := range desired {
		n += len(desired[i].Destinations)
	}
	return desiredSlab{ds: make([]DesiredService, len(desired)), dests: make([]Destination, n)}
}

// newDesiredSlabOf sizes a slab for the services of desired at indexes.
func newDesiredSlabOf(desired []DesiredService, indexes []int) desiredSlab {
	n := 0
	for _, i := range indexes {
		n += len(desired[i].Destinations)
	}
	return desiredSlab{ds: make([]DesiredService, len(indexes)), dests: make([]Destination, n)}
}

// clone is cloneDesired, from the slabs while they last.
func (s *desiredSlab) clone(d *DesiredService) *DesiredService {
	n := len(d.Destinations)
	if len(s.ds) == 0 || len(s.dests) < n {
		return cloneDesired(d)
	}
	c := &s.ds[0]
	s.ds = s.ds[1:]
	*c = DesiredService{Service: d.Service, Destinations: d.Destinations[:0:0]}
	if n > 0 {
		c.Destinations = s.dests[:n:n]
		copy(c.Destinations, d.Destinations)
		s.dests = s.dests[n:]
	}
	c.Service.Flags &^= FlagHashed
	return c
}

func cloneDesired(d *DesiredService) *DesiredService {
	c := &DesiredService{Service: d.Service, Destinations: slices.Clone(d.Destinations)}
	c.Service.Flags &^= FlagHashed
	return c
}

// sameDesired is the hot-path comparison: same service and the same
// destinations in the same order. A reordered list is merely "changed" and
// takes the slow path, which yields no writes.
func sameDesired(d, want *DesiredService) bool {
	return SameService(d.Service, want.Service) && slices.Equal(d.Destinations, want.Destinations)
}

func describeServiceDrift(had, got Service) string {
	var parts []string
	if had.Scheduler != got.Scheduler {
		parts = append(parts, fmt.Sprintf("scheduler %q -> %q", had.Scheduler, got.Scheduler))
	}
	if had.Flags&^FlagHashed != got.Flags&^FlagHashed {
		parts = append(parts, fmt.Sprintf("flags %#x -> %#x", had.Flags&^FlagHashed, got.Flags&^FlagHashed))
	}
	if had.Timeout != got.Timeout {
		parts = append(parts, fmt.Sprintf("timeout %s -> %s", had.Timeout, got.Timeout))
	}
	if had.PersistenceBits != got.PersistenceBits {
		parts = append(parts, fmt.Sprintf("granularity /%d -> /%d", had.PersistenceBits, got.PersistenceBits))
	}
	if had.PEName != got.PEName {
		parts = append(parts, fmt.Sprintf("pe %q -> %q", had.PEName, got.PEName))
	}
	return strings.Join(parts, ", ")
}

func describeDestDrift(had, got []Destination) string {
	h := make(map[DestKey]Destination, len(had))
	for _, d := range had {
		h[d.Key] = d
	}
	var parts []string
	for _, d := range sortedDests(got) {
		old, ok := h[d.Key]
		delete(h, d.Key)
		switch {
		case !ok:
			parts = append(parts, fmt.Sprintf("%s unexpected (weight %d)", d.Key, d.Weight))
		case old != d:
			part := fmt.Sprintf("%s weight %d -> %d, %s -> %s, thresholds %d/%d -> %d/%d",
				d.Key, old.Weight, d.Weight, old.Forward, d.Forward,
				old.UpperThreshold, old.LowerThreshold, d.UpperThreshold, d.LowerThreshold)
			if old.TunnelType != d.TunnelType || old.TunnelPort != d.TunnelPort || old.TunnelFlags != d.TunnelFlags {
				part += fmt.Sprintf(", tunnel %s:%d/%#x -> %s:%d/%#x", old.TunnelType, old.TunnelPort, old.TunnelFlags,
					d.TunnelType, d.TunnelPort, d.TunnelFlags)
			}
			parts = append(parts, part)
		}
	}
	missing := make([]Destination, 0, len(h))
	for _, d := range h {
		missing = append(missing, d)
	}
	for _, d := range sortedDests(missing) {
		parts = append(parts, d.Key.String()+" missing")
	}
	if len(parts) > 8 {
		parts = append(parts[:8], fmt.Sprintf("and %d more", len(parts)-8))
	}
	return strings.Join(parts, ", ")
}
