package healthcheck

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func ok() Result             { return Result{OK: true, Weight: NoWeight} }
func fail(r string) Result   { return Result{Reason: r, Weight: NoWeight} }
func weighted(w int) Result  { return Result{OK: true, Weight: w} }
func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestTrackerRiseFall(t *testing.T) {
	tr := NewTracker(Spec{Rise: 2, Fall: 3})
	if tr.State() != StateUp {
		t.Fatalf("non-alpha starts %s, want up", tr.State())
	}
	steps := []struct {
		r       Result
		state   State
		changed bool
		okRun   int
		failRun int
	}{
		{fail("connect refused"), StateUp, false, 0, 1},
		{fail("connect refused"), StateUp, false, 0, 2},
		{ok(), StateUp, false, 1, 0}, // a success resets the failure run
		{fail("http 503"), StateUp, false, 0, 1},
		{fail("http 503"), StateUp, false, 0, 2},
		{fail("http 503"), StateDown, true, 0, 3},
		{fail("http 503"), StateDown, false, 0, 4},
		{ok(), StateDown, false, 1, 0},
		{fail("http 503"), StateDown, false, 0, 1},
		{ok(), StateDown, false, 1, 0},
		{ok(), StateUp, true, 2, 0},
		{ok(), StateUp, false, 3, 0},
	}
	now := t0
	for i, s := range steps {
		_, ch, changed := tr.Observe(now, now.Add(ms(1)), s.r)
		if tr.State() != s.state || changed != s.changed {
			t.Fatalf("step %d (%+v): state %s changed %v, want %s %v", i, s.r, tr.State(), changed, s.state, s.changed)
		}
		if ch.Successes != s.okRun || ch.Failures != s.failRun {
			t.Fatalf("step %d: counts %d/%d, want %d/%d", i, ch.Successes, ch.Failures, s.okRun, s.failRun)
		}
		if changed && s.state == StateDown && ch.Reason != "http 503" {
			t.Fatalf("step %d: reason %q, want the failing result's", i, ch.Reason)
		}
		now = now.Add(time.Second)
	}
}

func TestTrackerAlpha(t *testing.T) {
	tr := NewTracker(Spec{Rise: 3, Fall: 2, Alpha: true})
	if tr.State() != StateDown {
		t.Fatalf("alpha starts %s, want down", tr.State())
	}
	_, ch, changed := tr.Observe(t0, t0, ok())
	if !changed || ch.From != StateDown || ch.To != StateUp {
		t.Fatalf("first success under alpha: %+v changed=%v, want down→up at once", ch, changed)
	}
	// After that, rise applies as usual.
	tr.Observe(t0, t0, fail("x"))
	tr.Observe(t0, t0, fail("x"))
	if tr.State() != StateDown {
		t.Fatal("want down after fall failures")
	}
	for i := range 2 {
		if _, _, changed := tr.Observe(t0, t0, ok()); changed {
			t.Fatalf("came up after %d successes, rise is 3", i+1)
		}
	}
	if _, _, changed := tr.Observe(t0, t0, ok()); !changed {
		t.Fatal("did not come up after rise successes")
	}

	// Alpha whose first result fails stays down and needs rise.
	tr = NewTracker(Spec{Rise: 2, Alpha: true})
	tr.Observe(t0, t0, fail("x"))
	if _, _, changed := tr.Observe(t0, t0, ok()); changed {
		t.Fatal("alpha: a success after a failure must wait for rise")
	}
}

func TestTrackerSchedule(t *testing.T) {
	spec := Spec{Interval: time.Second, Timeout: ms(500), RetryDelay: ms(100), Rise: 2, Fall: 3}
	tr := NewTracker(spec)
	// Success: fixed rate from the planned start.
	next, _, _ := tr.Observe(t0, t0.Add(ms(30)), ok())
	if want := t0.Add(time.Second); !next.Equal(want) {
		t.Fatalf("after success next=%s, want %s", next.Sub(t0), want.Sub(t0))
	}
	// Failure while up: retry_delay after it finished.
	planned := t0.Add(time.Second)
	next, _, _ = tr.Observe(planned, planned.Add(ms(500)), fail("timeout after 500ms"))
	if want := planned.Add(ms(600)); !next.Equal(want) {
		t.Fatalf("after failure next=%s, want %s", next.Sub(t0), want.Sub(t0))
	}
	tr.Observe(next, next, fail("x"))
	next, _, _ = tr.Observe(next, next, fail("x")) // third: down
	if tr.State() != StateDown {
		t.Fatal("want down")
	}
	// Failing while down: back to the interval.
	n2, _, _ := tr.Observe(next, next.Add(ms(5)), fail("x"))
	if want := next.Add(time.Second); !n2.Equal(want) {
		t.Fatalf("while down next=%s after planned, want 1s", n2.Sub(next))
	}
	// A check that overran its slot runs again at once, not in the past.
	late := t0.Add(time.Hour)
	n3, _, _ := tr.Observe(t0, late, ok())
	if !n3.Equal(late) {
		t.Fatalf("overrun: next=%s, want the finish time", n3)
	}
	// retry_delay 0 means the interval.
	tr = NewTracker(Spec{Interval: time.Second, Fall: 3})
	n4, _, _ := tr.Observe(t0, t0.Add(ms(10)), fail("x"))
	if !n4.Equal(t0.Add(time.Second)) {
		t.Fatalf("retry_delay 0: next=%s, want 1s", n4.Sub(t0))
	}
}

func TestTrackerDynamicWeight(t *testing.T) {
	tr := NewTracker(Spec{Rise: 1, Fall: 1})
	_, ch, changed := tr.Observe(t0, t0, weighted(5))
	if !changed || ch.From != StateUp || ch.To != StateUp || ch.FromWeight != NoWeight || ch.ToWeight != 5 {
		t.Fatalf("weight change: %+v changed=%v", ch, changed)
	}
	if ch.Reason != "ok, weight 5" {
		t.Fatalf("reason %q", ch.Reason)
	}
	if _, _, changed := tr.Observe(t0, t0, ok()); changed || tr.Weight() != 5 {
		t.Fatalf("exit 0 must keep weight 5, got %d changed=%v", tr.Weight(), changed)
	}
	if _, _, changed := tr.Observe(t0, t0, weighted(5)); changed {
		t.Fatal("same weight again is not a change")
	}
	tr.Observe(t0, t0, fail("exit status 1"))
	_, ch, _ = tr.Observe(t0, t0, weighted(9))
	if ch.From != StateDown || ch.To != StateUp || ch.ToWeight != 9 {
		t.Fatalf("coming up with a new weight: %+v", ch)
	}
}

// flapSim drives a tracker with a fake clock against a backend that is up
// for period, down for period, and so on; it returns the transitions and
// the checks run in total.
func flapSim(spec Spec, period, total time.Duration) (transitions, checks int) {
	tr := NewTracker(spec)
	now := t0
	end := t0.Add(total)
	for now.Before(end) {
		checks++
		up := (now.Sub(t0)/period)%2 == 0
		r := ok()
		if !up {
			r = fail("connect refused")
		}
		next, ch, changed := tr.Observe(now, now.Add(ms(1)), r)
		if changed && ch.StateChanged() {
			transitions++
		}
		now = next
	}
	return transitions, checks
}

// TestFlapping: a backend flapping every 300 ms (rise 2, fall 3) causes a
// bounded, exactly predictable number of transitions.
func TestFlapping(t *testing.T) {
	cases := []struct {
		name        string
		spec        Spec
		transitions int
	}{
		// 100 ms checks see 3 ups then 3 downs per 600 ms: down at
		// 600k+500 ms (third failure), up at 600k+700 ms (second success);
		// 10 downs and 9 ups fit in 6 s.
		{"interval 100ms", Spec{Interval: ms(100), Timeout: ms(50), Rise: 2, Fall: 3}, 19},
		// 200 ms checks never see 3 failures in a row: no transition at all.
		{"interval 200ms", Spec{Interval: ms(200), Timeout: ms(50), Rise: 2, Fall: 3}, 0},
		// 1 s checks alternate up/down samples: never 3 failures in a row either.
		{"interval 1s", Spec{Interval: time.Second, Timeout: ms(500), Rise: 2, Fall: 3}, 0},
		// retry_delay re-checks a failing backend fast, so it goes down in
		// the first down phase it meets (t=1.1 s); coming back needs 2
		// successes 1 s apart, which alternate samples never give.
		{"interval 1s retry 50ms", Spec{Interval: time.Second, Timeout: ms(40), RetryDelay: ms(50), Rise: 2, Fall: 3}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr, checks := flapSim(c.spec, ms(300), 6*time.Second)
			t.Logf("%d transitions in %d checks over 6s", tr, checks)
			if tr != c.transitions {
				t.Fatalf("%d transitions, want %d", tr, c.transitions)
			}
			// The general bound: a state change needs min(rise, fall) results.
			if bound := checks / min(c.spec.Rise, c.spec.Fall); tr > bound {
				t.Fatalf("%d transitions exceed the bound %d", tr, bound)
			}
		})
	}
}
