package healthcheck

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Key identifies one check: a backend of a service. The same real server in
// two services is checked twice, once per service's spec.
type Key struct {
	Service string
	Backend netip.AddrPort
}

func (k Key) String() string { return k.Service + "/" + k.Backend.String() }

// Check is one check the Monitor should run. The target is the backend's
// address with Spec.Port, if set, replacing the backend's port.
type Check struct {
	Key  Key
	Spec Spec
}

func (c Check) target(s Spec) Target {
	t := Target{Addr: c.Key.Backend.Addr(), Port: c.Key.Backend.Port()}
	if s.Port != 0 {
		t.Port = s.Port
	}
	return t
}

// Status is the current view of one check.
type Status struct {
	Key         Key
	State       State
	Weight      int // last dynamic weight, NoWeight if none
	Successes   int // consecutive
	Failures    int // consecutive
	Reason      string
	LastCheck   time.Time // zero until the first result
	LastLatency time.Duration
	Since       time.Time // when State was entered (or the check added)
	Checks      uint64    // results so far
}

// Options configure a Monitor. The zero value works.
type Options struct {
	Logger *slog.Logger // default slog.Default()
	// OnTransition, if set, receives every event in order from a single
	// goroutine. It may be slow: the checkers never wait for it. While it
	// lags, pending events for the same check are coalesced into one whose
	// From is what the consumer saw last and whose To is the current state
	// (so From == To means the backend went away and came back), which keeps
	// the backlog bounded by the number of checks. It must not call Close,
	// which waits for it to return.
	OnTransition func(Event)
	History      *History // default NewHistory(DefaultHistory)
	// MaxInFlight bounds concurrently running checks; default 8192.
	MaxInFlight int
	// NewChecker builds checkers; default New. Tests substitute fakes.
	NewChecker func(Spec) (Checker, error)
}

// batchWindow lets the scheduler start every check due within this window
// in one wake-up: 10,000 checks a second cost 100 timer wake-ups instead of
// 10,000, and a few hundred backends far fewer thread wake-ups (strace: 0.9
// futex calls per check at 2 ms, 0.36 at 10 ms). Checks run up to this much
// early; the next one is still planned from the nominal time, so nothing
// drifts.
const batchWindow = 10 * time.Millisecond

// Monitor runs checks on a schedule kept in one min-heap, served by one
// timer goroutine that hands due checks to a pool of workers (as many as
// checks in flight), so a waiting check costs a heap slot, not a sleeping
// goroutine and a timer.
type Monitor struct {
	log     *slog.Logger
	build   func(Spec) (Checker, error)
	history *History
	notify  *notifier
	ctx     context.Context
	cancel  context.CancelFunc
	jobs    chan *entry // to idle workers
	workers atomic.Int32
	max     int32
	wake    chan struct{}
	wg      sync.WaitGroup // scheduler, dispatcher and workers
	checks  atomic.Uint64
	closed  sync.Once
	upd     sync.Mutex // serialises Update (and Close)
	tcpOnce sync.Once
	tcp     *tcpRuntime // tcp checks' poller and idle sockets; nil until the first

	mu       sync.Mutex
	entries  map[Key]*entry
	queue    dueHeap
	inflight []*asyncRun // checks running without a worker
	timerAt  time.Time   // when the scheduler means to wake next
	epoch    time.Time
	done     bool
}

type entry struct {
	key     Key
	spec    Spec // with defaults
	checker Checker
	target  Target
	tr      *Tracker
	next    time.Time
	at      int64     // next as nanoseconds since the monitor's epoch: cheap heap order
	idx     int       // heap index, -1 while running or removed
	run     *asyncRun // for an asyncChecker, made on its first check
	running bool
	removed bool
	status  Status
}

// NewMonitor starts an empty monitor; feed it with Update, stop it with
// Close.
func NewMonitor(opts Options) *Monitor {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.History == nil {
		opts.History = NewHistory(DefaultHistory)
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 8192
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Monitor{
		log:     opts.Logger,
		build:   opts.NewChecker,
		history: opts.History,
		ctx:     ctx,
		cancel:  cancel,
		jobs:    make(chan *entry),
		max:     int32(min(opts.MaxInFlight, 1<<20)),
		wake:    make(chan struct{}, 1),
		entries: make(map[Key]*entry),
		epoch:   time.Now(),
	}
	if m.build == nil {
		m.build = m.newChecker
	}
	if opts.OnTransition != nil {
		m.notify = newNotifier(opts.OnTransition)
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.notify.run(ctx) }()
	}
	m.wg.Add(1)
	go func() { defer m.wg.Done(); m.schedule() }()
	return m
}

// newChecker is New, with tcp checkers sharing the Monitor's connect
// poller and idle sockets (made on the first tcp check).
func (m *Monitor) newChecker(s Spec) (Checker, error) {
	c, err := New(s)
	if tc, ok := c.(*tcpChecker); ok {
		m.tcpOnce.Do(func() {
			rt, err := newTCPRuntime()
			if err != nil {
				m.log.Warn("tcp checks: no connect poller, each check waits in a thread of its own", "err", err)
				return
			}
			m.tcp = rt
		})
		tc.rt = m.tcp
	}
	return c, err
}

// History returns the event history (the daemon adds quorum events to it).
func (m *Monitor) History() *History { return m.history }

// Events is History().Events.
func (m *Monitor) Events(since uint64, limit int) []Event { return m.history.Events(since, limit) }

// ChecksRun returns how many checks have completed since the start.
func (m *Monitor) ChecksRun() uint64 { return m.checks.Load() }

// Update makes the set of checks equal to checks. Unchanged checks keep
// their state, counters and timers; changed ones get a new checker and
// restart their counters and timers (initial delay included) but keep their
// up/down state, so a reload that edits a check never yanks a healthy
// backend; removed ones stop (a running check's result is dropped). A check
// whose spec is unchanged but names a file (ca_file) whose content differs
// from what its checker read counts as changed, so a CA bundle replaced in
// place is picked up; each such file is read once per Update, and checks
// that name none cost no file access. Nothing is applied unless every check
// is valid, files included; errors name the check and field.
func (m *Monitor) Update(checks []Check) error {
	m.upd.Lock()
	defer m.upd.Unlock()
	return m.update(checks)
}

// RereadFiles rebuilds the checks whose checker was built from a file
// (ca_file) that has changed since: Update with the checks already running.
// A reload that leaves every check's spec as it was calls this rather than
// skipping the health checks, or a CA bundle rotated in place would only be
// read at the next restart. When no file changed it costs a look at each
// check and one read of each distinct file. Errors, all-or-nothing, are
// Update's.
func (m *Monitor) RereadFiles() error {
	m.upd.Lock()
	defer m.upd.Unlock()
	m.mu.Lock()
	readers := make(map[Checker]bool)
	for _, e := range m.entries {
		if fr, ok := e.checker.(fileReader); ok && len(fr.stamps()) > 0 {
			readers[e.checker] = true
		}
	}
	m.mu.Unlock()
	sums := fileSums{}
	stale := false
	for c := range readers {
		if f, err := sums.stale(c); f != nil || err != nil {
			stale = true // Update says which checks and why
			break
		}
	}
	if !stale {
		return nil
	}
	m.mu.Lock()
	checks := make([]Check, 0, len(m.entries))
	for k, e := range m.entries {
		checks = append(checks, Check{Key: k, Spec: e.spec})
	}
	m.mu.Unlock()
	return m.update(checks)
}

// update is Update, with upd held.
func (m *Monitor) update(checks []Check) error {
	type prepared struct {
		c       Check
		spec    Spec
		checker Checker
		keep    bool // unchanged: keeps its entry
	}
	type current struct {
		spec    Spec
		checker Checker
	}
	m.mu.Lock()
	if m.done {
		m.mu.Unlock()
		return errors.New("healthcheck: update after close")
	}
	existing := make(map[Key]current, len(m.entries))
	for k, e := range m.entries {
		existing[k] = current{e.spec, e.checker}
	}
	m.mu.Unlock()

	// Build checkers outside the lock; one per distinct spec.
	var errs []error
	built := make(map[string]Checker)
	seen := make(map[Key]bool, len(checks))
	preps := make([]prepared, 0, len(checks))
	sums := fileSums{}                  // files unchanged checks were built from, each read once
	changedFiles := map[[2]string]int{} // field and path -> checks rebuilt for it
	for _, c := range checks {
		if seen[c.Key] {
			errs = append(errs, fmt.Errorf("check %s: listed twice", c.Key))
			continue
		}
		seen[c.Key] = true
		if !c.Key.Backend.IsValid() {
			errs = append(errs, fmt.Errorf("check %s: invalid backend address", c.Key))
			continue
		}
		spec := c.Spec.WithDefaults()
		p := prepared{c: c, spec: spec}
		if old, ok := existing[c.Key]; ok && reflect.DeepEqual(old.spec, spec) {
			// Only checkers built from files look at them.
			f, err := sums.stale(old.checker)
			if err != nil {
				errs = append(errs, fmt.Errorf("check %s: %w", c.Key, err))
				continue
			}
			if f == nil {
				p.keep = true // unchanged: keeps its checker
				preps = append(preps, p)
				continue
			}
			changedFiles[[2]string{f.field, f.path}]++ // rebuilt below, like a changed spec
		}
		if terrs := spec.validateTiming(); len(terrs) > 0 {
			errs = append(errs, fmt.Errorf("check %s: %w", c.Key, errors.Join(terrs...)))
			continue
		}
		if src, dst := spec.Source, c.Key.Backend.Addr(); src.IsValid() && src.Unmap().Is4() != dst.Unmap().Is4() {
			errs = append(errs, fmt.Errorf("check %s: %w", c.Key,
				fieldErr("source", "%s and backend %s are of different address families", src, dst)))
			continue
		}
		if spec.NeedsPort() && c.target(spec).Port == 0 {
			errs = append(errs, fmt.Errorf("check %s: %w", c.Key,
				fieldErr("port", "backend port is 0; set the check's port")))
			continue
		}
		fp, err := json.Marshal(spec)
		if err != nil {
			errs = append(errs, fmt.Errorf("check %s: %w", c.Key, err))
			continue
		}
		if p.checker = built[string(fp)]; p.checker == nil {
			if p.checker, err = m.build(spec); err != nil {
				errs = append(errs, fmt.Errorf("check %s: %w", c.Key, err))
				continue
			}
			built[string(fp)] = p.checker
		}
		preps = append(preps, p)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	m.mu.Lock()
	if m.done {
		m.mu.Unlock()
		return errors.New("healthcheck: update after close")
	}
	now := time.Now()
	for k, e := range m.entries {
		if !seen[k] {
			m.drop(e)
		}
	}
	for _, p := range preps {
		if p.keep {
			continue
		}
		old := m.entries[p.c.Key]
		e := &entry{
			key:     p.c.Key,
			spec:    p.spec,
			checker: p.checker,
			target:  p.c.target(p.spec),
			tr:      NewTracker(p.spec),
			idx:     -1,
		}
		if old != nil {
			e.tr.carry(old.tr)
			e.status = old.status
			m.drop(old)
		} else {
			e.status = Status{Key: e.key, Since: now}
		}
		e.status.State, e.status.Weight = e.tr.State(), e.tr.Weight()
		e.status.Successes, e.status.Failures = 0, 0
		var jitter time.Duration
		if p.spec.InitialDelay > 0 {
			jitter = rand.N(p.spec.InitialDelay)
		}
		e.next = now.Add(jitter)
		m.entries[e.key] = e
		m.push(e)
	}
	m.mu.Unlock()
	for f, n := range changedFiles {
		m.log.Info("health checks rebuilt: a file they read has changed", "field", f[0], "path", f[1], "checks", n)
	}
	return nil
}

// drop forgets e; called with mu held.
func (m *Monitor) drop(e *entry) {
	e.removed = true
	if e.idx >= 0 {
		m.queue.remove(e.idx)
	}
	if m.entries[e.key] == e {
		delete(m.entries, e.key)
	}
}

// push schedules e and wakes the scheduler if e is due before it planned
// to wake; called with mu held.
func (m *Monitor) push(e *entry) {
	e.at = int64(e.next.Sub(m.epoch))
	m.queue.push(e)
	if m.timerAt.IsZero() || e.next.Before(m.timerAt) {
		m.timerAt = e.next
		select {
		case m.wake <- struct{}{}:
		default:
		}
	}
}

// Status returns the current status of one check.
func (m *Monitor) Status(k Key) (Status, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[k]
	if !ok {
		return Status{}, false
	}
	return e.status, true
}

// Statuses returns every check's status, sorted by service then backend.
func (m *Monitor) Statuses() []Status {
	m.mu.Lock()
	out := make([]Status, 0, len(m.entries))
	for _, e := range m.entries {
		out = append(out, e.status)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Status) int {
		return cmp.Or(cmp.Compare(a.Key.Service, b.Key.Service), a.Key.Backend.Compare(b.Key.Backend))
	})
	return out
}

// Close stops every check and waits for running ones and the transition
// consumer to return. Pending undelivered transitions are dropped.
func (m *Monitor) Close() error {
	m.closed.Do(func() {
		m.upd.Lock() // an Update building checkers finishes first
		defer m.upd.Unlock()
		m.mu.Lock()
		m.done = true // no check starts after this
		m.mu.Unlock()
		m.cancel()
		// A check still starting sees the canceled context once it is in
		// the poller, so none is missed.
		m.mu.Lock()
		runs := slices.Clone(m.inflight)
		m.mu.Unlock()
		for _, r := range runs {
			r.cancel()
		}
		m.wg.Wait()
		if m.tcp != nil {
			m.tcp.close()
		}
	})
	return nil
}

// schedule is the single timer loop: start what is due, sleep until the
// earliest next check or a wake-up from push.
func (m *Monitor) schedule() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due []*entry
	for {
		m.mu.Lock()
		if m.done {
			m.mu.Unlock()
			return
		}
		now := time.Now()
		horizon := now.Add(batchWindow)
		due = due[:0]
		for len(m.queue) > 0 && !m.queue[0].e.next.After(horizon) {
			e := m.queue.pop()
			e.running = true
			if ac, ok := asyncOf(e.checker); ok {
				if e.run == nil || e.run.p != ac.poller() {
					e.run = newAsyncRun(e, ac.poller(), m.finish)
				}
				e.run.planned = e.next
				e.run.idx = len(m.inflight)
				m.inflight = append(m.inflight, e.run)
				m.wg.Add(1)
			}
			due = append(due, e)
		}
		wait := time.Hour
		m.timerAt = time.Time{}
		if len(m.queue) > 0 {
			m.timerAt = m.queue[0].e.next
			wait = m.timerAt.Sub(now)
		}
		m.mu.Unlock()

		closing := false
		for _, e := range due {
			if ac, ok := asyncOf(e.checker); ok {
				// Even when closing: a check registered above must
				// finish (as canceled) for Close to return.
				ac.startCheck(m.ctx, e.run, e.target)
			} else if !closing && !m.dispatch(e) {
				closing = true
			}
		}
		if closing {
			return
		}
		timer.Reset(wait)
		select {
		case <-m.ctx.Done():
			return
		case <-timer.C:
		case <-m.wake:
		}
	}
}

// asyncOf returns c as an asyncChecker if it can start checks without a
// goroutine.
func asyncOf(c Checker) (asyncChecker, bool) {
	ac, ok := c.(asyncChecker)
	return ac, ok && ac.poller() != nil
}

// workerIdle is how long an idle worker waits for work before it exits, so
// a burst of slow checks does not leave thousands of goroutines behind.
const workerIdle = 10 * time.Second

// dispatch hands e to an idle worker, or starts one if fewer than max
// exist, or waits for one; false when closing. (The scheduler starts an
// asyncChecker's checks itself.)
func (m *Monitor) dispatch(e *entry) bool {
	select {
	case m.jobs <- e:
		return true
	default:
	}
	if m.workers.Load() < m.max {
		m.workers.Add(1)
		m.wg.Add(1)
		go m.worker(e)
		return true
	}
	select {
	case m.jobs <- e:
		return true
	case <-m.ctx.Done():
		return false
	}
}

// worker runs checks until it has been idle for workerIdle. Workers are
// reused rather than started per check: a fresh goroutine would grow its
// stack through the dialer's deep call chain on every check.
func (m *Monitor) worker(e *entry) {
	defer m.wg.Done()
	defer m.workers.Add(-1)
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		m.run(e)
		idle.Reset(workerIdle)
		select {
		case e = <-m.jobs:
		case <-idle.C:
			return
		case <-m.ctx.Done():
			return
		}
	}
}

// run performs one check and folds in its result.
func (m *Monitor) run(e *entry) {
	planned := e.next
	m.fold(e, planned, e.checker.Check(m.ctx, e.target), nil)
}

// finish is an asyncRun's finish: it folds in the result of a check that
// ran without a worker.
func (m *Monitor) finish(r *asyncRun, res Result) {
	m.fold(r.entry, r.planned, res, r)
	m.wg.Done()
}

// fold folds in the result of e's check planned for planned; r is the
// check's asyncRun, if it had one.
func (m *Monitor) fold(e *entry, planned time.Time, res Result, r *asyncRun) {
	done := time.Now()
	m.mu.Lock()
	if r != nil {
		last := len(m.inflight) - 1
		if r.idx != last {
			m.inflight[r.idx] = m.inflight[last]
			m.inflight[r.idx].idx = r.idx
		}
		m.inflight[last] = nil
		m.inflight = m.inflight[:last]
	}
	if m.ctx.Err() != nil {
		m.mu.Unlock()
		return // closing: the result says nothing about the backend
	}
	m.checks.Add(1)
	e.running = false
	if e.removed {
		m.mu.Unlock()
		return
	}
	next, ch, changed := e.tr.Observe(planned, done, res)
	st := &e.status
	st.Checks++
	st.Successes, st.Failures = ch.Successes, ch.Failures
	st.Reason, st.LastCheck, st.LastLatency = ch.Reason, done, res.Latency
	st.State, st.Weight = ch.To, ch.ToWeight
	if ch.StateChanged() {
		st.Since = done
	}
	e.next = next
	m.push(e)
	var ev Event
	if changed {
		kind := KindHealth
		if !ch.StateChanged() {
			kind = KindWeight
		}
		ev = m.history.Add(Event{
			Time: done, Kind: kind, Service: e.key.Service, Backend: e.key.Backend,
			From: ch.From, To: ch.To, Reason: ch.Reason,
			Successes: ch.Successes, Failures: ch.Failures, Weight: ch.ToWeight,
		})
		if m.notify != nil {
			m.notify.add(e.key, ev)
		}
	}
	m.mu.Unlock()

	if changed {
		m.log.LogAttrs(m.ctx, slog.LevelInfo, "backend health changed", ev.LogAttrs()...)
	}
}

// notifier hands events to a consumer without ever blocking the producer;
// events for a check still waiting in the queue are merged.
type notifier struct {
	fn     func(Event)
	signal chan struct{}

	mu      sync.Mutex
	queue   []Event
	pending map[Key]int // index in queue
}

func newNotifier(fn func(Event)) *notifier {
	return &notifier{fn: fn, signal: make(chan struct{}, 1), pending: make(map[Key]int)}
}

func (n *notifier) add(k Key, ev Event) {
	n.mu.Lock()
	if i, ok := n.pending[k]; ok {
		from := n.queue[i].From
		n.queue[i] = ev
		n.queue[i].From = from
		if from != ev.To {
			n.queue[i].Kind = KindHealth
		}
	} else {
		n.pending[k] = len(n.queue)
		n.queue = append(n.queue, ev)
	}
	n.mu.Unlock()
	select {
	case n.signal <- struct{}{}:
	default:
	}
}

func (n *notifier) run(ctx context.Context) {
	var batch []Event
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.signal:
		}
		n.mu.Lock()
		batch, n.queue = n.queue, batch[:0]
		clear(n.pending)
		n.mu.Unlock()
		for _, ev := range batch {
			if ctx.Err() != nil {
				return
			}
			n.fn(ev)
		}
	}
}
