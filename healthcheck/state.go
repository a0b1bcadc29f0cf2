package healthcheck

import (
	"fmt"
	"time"
)

// State is a backend's (or a service quorum's) health.
type State uint8

const (
	StateUnknown State = iota
	StateUp
	StateDown
)

func (s State) String() string {
	switch s {
	case StateUp:
		return "up"
	case StateDown:
		return "down"
	}
	return "unknown"
}

// MarshalText makes states read "up"/"down" in JSON.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Tracker is the pure, clock-free core of one check: it folds results into
// the rise/fall state and decides when the next check runs. Time comes in
// as arguments, so tests drive it with a fake clock. Not safe for concurrent
// use; the Monitor serialises access.
type Tracker struct {
	interval   time.Duration
	retryDelay time.Duration
	rise, fall int

	state   State
	weight  int // last dynamic weight, NoWeight if none reported
	okRun   int // consecutive successes
	failRun int // consecutive failures
	fresh   bool
}

// Change is what one result did to a Tracker.
type Change struct {
	From, To             State
	FromWeight, ToWeight int
	Successes, Failures  int // consecutive, after this result
	Reason               string
}

// StateChanged reports whether the up/down state flipped.
func (c Change) StateChanged() bool { return c.From != c.To }

// NewTracker starts a tracker for s (defaults applied): down when s.Alpha,
// up otherwise.
func NewTracker(s Spec) *Tracker {
	s = s.WithDefaults()
	t := &Tracker{
		interval:   s.Interval,
		retryDelay: s.RetryDelay,
		rise:       s.Rise,
		fall:       s.Fall,
		state:      StateUp,
		weight:     NoWeight,
		fresh:      true,
	}
	if s.Alpha {
		t.state = StateDown
	}
	return t
}

// carry moves state and dynamic weight from a tracker being replaced (a
// reload changed the check): counters restart, health does not.
func (t *Tracker) carry(old *Tracker) {
	t.state, t.weight, t.fresh = old.state, old.weight, old.fresh
}

// State returns the current state.
func (t *Tracker) State() State { return t.state }

// Weight returns the last dynamic weight, or NoWeight.
func (t *Tracker) Weight() int { return t.weight }

// Counts returns the consecutive successes and failures so far.
func (t *Tracker) Counts() (successes, failures int) { return t.okRun, t.failRun }

// Observe folds in the result of the check that was planned for planned and
// finished at done. It returns when the next check should run and the
// change, which is meaningful when changed is true (state flipped, or the
// dynamic weight moved while up).
//
// Rules: down→up after rise consecutive successes, except that the very
// first result of an alpha check brings it up at once ("down until the first
// success"); up→down after fall consecutive failures. While up and failing,
// the next check comes retry_delay after this one finished; otherwise checks
// keep a fixed rate, interval after the planned start, never in the past.
func (t *Tracker) Observe(planned, done time.Time, r Result) (next time.Time, ch Change, changed bool) {
	ch.From, ch.FromWeight = t.state, t.weight
	if r.OK {
		t.okRun++
		t.failRun = 0
		if r.Weight != NoWeight {
			t.weight = r.Weight
		}
	} else {
		t.failRun++
		t.okRun = 0
	}
	switch t.state {
	case StateDown:
		if r.OK && (t.okRun >= t.rise || t.fresh) {
			t.state = StateUp
		}
	case StateUp:
		if !r.OK && t.failRun >= t.fall {
			t.state = StateDown
		}
	}
	t.fresh = false

	ch.To, ch.ToWeight = t.state, t.weight
	ch.Successes, ch.Failures = t.okRun, t.failRun
	ch.Reason = r.Reason
	if r.OK && ch.Reason == "" {
		ch.Reason = "ok"
		if r.Weight != NoWeight {
			ch.Reason = fmt.Sprintf("ok, weight %d", r.Weight)
		}
	}
	changed = ch.From != ch.To || (ch.To == StateUp && ch.FromWeight != ch.ToWeight)

	if !r.OK && t.state == StateUp && t.retryDelay > 0 {
		next = done.Add(t.retryDelay)
	} else {
		next = planned.Add(t.interval)
	}
	if next.Before(done) {
		next = done
	}
	return next, ch, changed
}
