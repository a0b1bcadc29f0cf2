package healthcheck

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeBackends is a set of backends whose health the test sets; its
// checker answers from that set and counts calls. Test-only.
type fakeBackends struct {
	mu    sync.Mutex
	down  map[netip.AddrPort]bool
	calls map[netip.AddrPort]int
	block bool // checks wait for their context to end
	seen  atomic.Int32
}

func newFakeBackends() *fakeBackends {
	return &fakeBackends{down: map[netip.AddrPort]bool{}, calls: map[netip.AddrPort]int{}}
}

func (f *fakeBackends) set(ap netip.AddrPort, up bool) {
	f.mu.Lock()
	f.down[ap] = !up
	f.mu.Unlock()
}

func (f *fakeBackends) callCount(ap netip.AddrPort) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[ap]
}

func (f *fakeBackends) Check(ctx context.Context, t Target) Result {
	ap := t.AddrPort()
	f.mu.Lock()
	f.calls[ap]++
	down, block := f.down[ap], f.block
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		f.seen.Add(1)
		return Result{Reason: "canceled", Weight: NoWeight}
	}
	if down {
		return Result{Reason: "connect refused", Weight: NoWeight}
	}
	return Result{OK: true, Weight: NoWeight}
}

func (f *fakeBackends) builder(s Spec) (Checker, error) { return f, nil }

func backend(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 2, byte(i)}), 80)
}

func fastSpec() Spec {
	return Spec{Type: TypeTCP, Interval: 20 * time.Millisecond, Timeout: 10 * time.Millisecond, Rise: 2, Fall: 2}
}

// waitFor polls cond every 5 ms for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestMonitorTCPDownAndUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go acceptForever(ln, nil)
	addr := ln.Addr().String()
	key := Key{Service: "web", Backend: netip.MustParseAddrPort(addr)}

	events := make(chan Event, 16)
	m := NewMonitor(Options{Logger: quietLogger(), OnTransition: func(e Event) { events <- e }})
	t.Cleanup(func() { m.Close() })
	if err := m.Update([]Check{{Key: key, Spec: Spec{Type: TypeTCP, Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 2, Fall: 2}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "first results", func() bool { st, _ := m.Status(key); return st.Checks >= 2 })
	if st, _ := m.Status(key); st.State != StateUp {
		t.Fatalf("state %s, want up", st.State)
	}

	ln.Close()
	var ev Event
	select {
	case ev = <-events:
	case <-time.After(3 * time.Second):
		t.Fatal("no down event after the listener closed")
	}
	if ev.Kind != KindHealth || ev.From != StateUp || ev.To != StateDown || ev.Reason != "connect refused" || ev.Failures != 2 || ev.Service != "web" || ev.Backend != key.Backend {
		t.Fatalf("down event %+v", ev)
	}

	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("could not listen again on %s: %v", addr, err)
	}
	defer ln2.Close()
	go acceptForever(ln2, nil)
	select {
	case ev = <-events:
	case <-time.After(3 * time.Second):
		t.Fatal("no up event after the listener came back")
	}
	if ev.From != StateDown || ev.To != StateUp || ev.Successes != 2 {
		t.Fatalf("up event %+v", ev)
	}
	hist := m.Events(0, 0)
	if len(hist) != 2 || hist[0].Seq != 1 || hist[1].Seq != 2 || hist[0].To != StateDown || hist[1].To != StateUp {
		t.Fatalf("history %+v", hist)
	}
}

func TestMonitorAlpha(t *testing.T) {
	fb := newFakeBackends()
	events := make(chan Event, 4)
	m := NewMonitor(Options{Logger: quietLogger(), NewChecker: fb.builder, OnTransition: func(e Event) { events <- e }})
	t.Cleanup(func() { m.Close() })
	spec := fastSpec()
	spec.Alpha = true
	spec.InitialDelay = 200 * time.Millisecond
	key := Key{"svc", backend(1)}
	if err := m.Update([]Check{{Key: key, Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.Status(key); st.State != StateDown || st.Checks != 0 {
		t.Fatalf("alpha before first check: %+v, want down", st)
	}
	select {
	case ev := <-events:
		if ev.From != StateDown || ev.To != StateUp || ev.Successes != 1 {
			t.Fatalf("event %+v, want down→up on the first success", ev)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("alpha check never came up")
	}
}

func TestMonitorUpdatePreservesState(t *testing.T) {
	fb := newFakeBackends()
	m := NewMonitor(Options{Logger: quietLogger(), NewChecker: fb.builder})
	t.Cleanup(func() { m.Close() })
	a, b, c := Key{"svc", backend(1)}, Key{"svc", backend(2)}, Key{"svc", backend(3)}
	fb.set(a.Backend, false)
	checks := []Check{{Key: a, Spec: fastSpec()}, {Key: b, Spec: fastSpec()}, {Key: c, Spec: fastSpec()}}
	if err := m.Update(checks); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "a down, b and c checked", func() bool {
		sa, _ := m.Status(a)
		sb, _ := m.Status(b)
		sc, _ := m.Status(c)
		return sa.State == StateDown && sa.Failures >= 3 && sb.Successes >= 3 && sc.Checks >= 3
	})

	// b's spec changes (rise), c is removed, a is unchanged.
	changed := fastSpec()
	changed.Rise = 5
	before, _ := m.Status(a)
	if err := m.Update([]Check{{Key: a, Spec: fastSpec()}, {Key: b, Spec: changed}}); err != nil {
		t.Fatal(err)
	}
	sa, _ := m.Status(a)
	sb, _ := m.Status(b)
	if sa.State != StateDown || sa.Checks < before.Checks || sa.Failures < before.Failures {
		t.Fatalf("unchanged check lost its state: before %+v after %+v", before, sa)
	}
	if sb.State != StateUp || sb.Successes != 0 {
		t.Fatalf("changed check: %+v, want state kept (up) and counters restarted", sb)
	}
	if _, ok := m.Status(c); ok {
		t.Fatal("removed check still has a status")
	}
	cCalls := fb.callCount(c.Backend)
	waitFor(t, 2*time.Second, "a and b checked after the update", func() bool {
		sa2, _ := m.Status(a)
		sb2, _ := m.Status(b)
		return sa2.Checks >= sa.Checks+3 && sb2.Successes >= 3
	})
	if got := fb.callCount(c.Backend); got > cCalls+1 { // one may have been in flight
		t.Fatalf("removed check still running: %d calls, was %d", got, cCalls)
	}
	if got := len(m.Statuses()); got != 2 {
		t.Fatalf("%d statuses, want 2", got)
	}
}

func TestMonitorUpdateErrors(t *testing.T) {
	m := NewMonitor(Options{Logger: quietLogger()})
	t.Cleanup(func() { m.Close() })
	good := Check{Key: Key{"web", backend(1)}, Spec: Spec{Type: TypeTCP}}
	cases := []struct {
		checks []Check
		want   []string
	}{
		{[]Check{good, {Key: Key{"web", backend(2)}, Spec: Spec{Type: TypeHTTP, BodyRegex: "("}}},
			[]string{"check web/198.18.2.2:80", "body_regex"}},
		{[]Check{{Key: Key{"web", backend(2)}, Spec: Spec{Type: TypeTCP, Interval: time.Second, Timeout: 3 * time.Second}}},
			[]string{"timeout: 3s is longer than interval 1s"}},
		{[]Check{{Key: Key{"pcc", netip.MustParseAddrPort("198.18.2.1:0")}, Spec: Spec{Type: TypeTCP}}},
			[]string{"check pcc/198.18.2.1:0", "port: backend port is 0"}},
		{[]Check{good, good}, []string{"listed twice"}},
		{[]Check{{Key: Key{"v6", netip.MustParseAddrPort("[2001:db8::1]:80")}, Spec: Spec{Type: TypeTCP, Source: netip.MustParseAddr("198.18.0.1")}}},
			[]string{"source: 198.18.0.1 and backend 2001:db8::1 are of different address families"}},
	}
	for _, c := range cases {
		err := m.Update(c.checks)
		if err == nil {
			t.Fatalf("%+v: no error", c.checks)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not mention %q", err, w)
			}
		}
		if n := len(m.Statuses()); n != 0 {
			t.Fatalf("a failed update applied %d checks", n)
		}
	}
	// Port 0 is fine with a port override, and for exec.
	ok := []Check{
		{Key: Key{"pcc", netip.MustParseAddrPort("198.18.2.1:0")}, Spec: Spec{Type: TypeTCP, Port: 80, InitialDelay: time.Hour}},
		{Key: Key{"pcc2", netip.MustParseAddrPort("198.18.2.1:0")}, Spec: Spec{Type: TypeExec, Command: []string{"/bin/true"}, InitialDelay: time.Hour}},
	}
	if err := m.Update(ok); err != nil {
		t.Fatal(err)
	}
}

// TestMonitorSlowConsumer: a consumer that does not read never stalls the
// checks, and its backlog is coalesced to one event per check.
func TestMonitorSlowConsumer(t *testing.T) {
	fb := newFakeBackends()
	release := make(chan struct{})
	var mu sync.Mutex
	var got []Event
	m := NewMonitor(Options{Logger: quietLogger(), NewChecker: fb.builder, OnTransition: func(e Event) {
		<-release
		mu.Lock()
		got = append(got, e)
		mu.Unlock()
	}})
	t.Cleanup(func() { m.Close() })
	spec := fastSpec()
	spec.Rise, spec.Fall = 1, 1
	keys := []Key{{"svc", backend(1)}, {"svc", backend(2)}}
	if err := m.Update([]Check{{Key: keys[0], Spec: spec}, {Key: keys[1], Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	// Flip both backends many times while the consumer is stuck.
	for i := range 10 {
		for _, k := range keys {
			fb.set(k.Backend, i%2 == 1)
		}
		target := m.history.Events(0, 0)
		waitFor(t, 2*time.Second, "the flip to be seen", func() bool {
			return len(m.history.Events(0, 0)) >= len(target)+2
		})
	}
	checksWhileStuck := m.ChecksRun()
	if checksWhileStuck < 20 {
		t.Fatalf("only %d checks ran while the consumer was stuck", checksWhileStuck)
	}
	recorded := len(m.Events(0, 0))
	close(release)
	waitFor(t, 2*time.Second, "delivery", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= 1
	})
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	delivered := len(got)
	last := map[Key]Event{}
	for _, e := range got {
		last[Key{e.Service, e.Backend}] = e
	}
	mu.Unlock()
	// One event was taken before the consumer blocked; the rest coalesced
	// to at most one per key (plus a possible new flip racing the release).
	t.Logf("%d events recorded, %d delivered", recorded, delivered)
	if recorded < 20 || delivered > 1+2*len(keys) {
		t.Fatalf("recorded %d, delivered %d: backlog not coalesced", recorded, delivered)
	}
	for _, k := range keys {
		st, _ := m.Status(k)
		if e, ok := last[k]; !ok || e.To != st.State {
			t.Fatalf("%s: last delivered %+v, current state %s", k, e, st.State)
		}
	}
}

func TestMonitorCloseWaitsForChecks(t *testing.T) {
	fb := newFakeBackends()
	fb.block = true
	m := NewMonitor(Options{Logger: quietLogger(), NewChecker: fb.builder})
	if err := m.Update([]Check{{Key: Key{"svc", backend(1)}, Spec: fastSpec()}, {Key: Key{"svc", backend(2)}, Spec: fastSpec()}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "checks to start", func() bool {
		return fb.callCount(backend(1)) == 1 && fb.callCount(backend(2)) == 1
	})
	m.Close()
	if n := fb.seen.Load(); n != 2 {
		t.Fatalf("Close returned with %d of 2 running checks finished", n)
	}
	if err := m.Update(nil); err == nil {
		t.Fatal("Update after Close succeeded")
	}
	m.Close() // idempotent
}

// TestMonitorLogLine: each transition is one structured log line.
func TestMonitorLogLine(t *testing.T) {
	var buf syncBuffer
	fb := newFakeBackends()
	fb.set(backend(1), false)
	m := NewMonitor(Options{Logger: slog.New(slog.NewJSONHandler(&buf, nil)), NewChecker: fb.builder})
	t.Cleanup(func() { m.Close() })
	if err := m.Update([]Check{{Key: Key{"web", backend(1)}, Spec: fastSpec()}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "a log line", func() bool { return strings.Contains(buf.String(), "\n") })
	m.Close()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("%d log lines, want 1: %q", len(lines), buf.String())
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"service": "web", "backend": "198.18.2.1:80", "from": "up", "to": "down",
		"reason": "connect refused", "successes": 0.0, "failures": 2.0, "kind": "health"}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("log field %s = %v, want %v (line %s)", k, rec[k], v, lines[0])
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMonitorFlappingTCP: a real TCP backend flapping every 300 ms, checked
// every 100 ms with rise 2 and fall 3, makes a bounded number of transitions.
func TestMonitorFlappingTCP(t *testing.T) {
	if testing.Short() {
		t.Skip("3 s real-time run")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	flapDone := make(chan struct{})
	go func() { // up 300 ms, down 300 ms, ...
		defer close(flapDone)
		cur := ln
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				if cur != nil {
					cur.Close()
				}
				return
			case <-time.After(300 * time.Millisecond):
			}
			if cur != nil {
				cur.Close()
				cur = nil
			} else if l, err := net.Listen("tcp", addr); err == nil {
				cur = l
				go acceptForever(l, nil)
			}
		}
	}()
	go acceptForever(ln, nil)
	t.Cleanup(func() { cancel(); <-flapDone })

	m := NewMonitor(Options{Logger: quietLogger()})
	t.Cleanup(func() { m.Close() })
	key := Key{"flap", netip.MustParseAddrPort(addr)}
	spec := Spec{Type: TypeTCP, Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 2, Fall: 3}
	if err := m.Update([]Check{{Key: key, Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	st, _ := m.Status(key)
	n := len(m.Events(0, 0))
	t.Logf("flapping 300ms, rise 2 fall 3, interval 100ms: %d transitions in %d checks over 3s", n, st.Checks)
	if bound := int(st.Checks) / min(spec.Rise, spec.Fall); n > bound {
		t.Fatalf("%d transitions exceed %d", n, bound)
	}
	if n == 0 || n > 12 {
		t.Fatalf("%d transitions; the 600 ms cycle allows at most 2 per cycle (10 in 3 s, plus slack)", n)
	}
}

func ExampleHistory_Events() {
	h := NewHistory(3)
	for i := range 5 {
		h.Add(Event{Kind: KindHealth, Service: fmt.Sprint("s", i)})
	}
	for _, e := range h.Events(0, 0) {
		fmt.Println(e.Seq, e.Service)
	}
	fmt.Println(len(h.Events(4, 10)), len(h.Events(5, 10)))
	// Output:
	// 3 s2
	// 4 s3
	// 5 s4
	// 1 0
}

func TestNotifierCoalesces(t *testing.T) {
	var got []Event
	n := newNotifier(func(e Event) { got = append(got, e) })
	k1, k2 := Key{"s", backend(1)}, Key{"s", backend(2)}
	n.add(k1, Event{Seq: 1, Kind: KindHealth, From: StateUp, To: StateDown, Reason: "connect refused"})
	n.add(k2, Event{Seq: 2, Kind: KindHealth, From: StateUp, To: StateDown})
	n.add(k1, Event{Seq: 3, Kind: KindHealth, From: StateDown, To: StateUp, Reason: "ok"})
	n.add(k1, Event{Seq: 4, Kind: KindWeight, From: StateUp, To: StateUp, Weight: 7, Reason: "ok, weight 7"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.run(ctx); close(done) }()
	waitFor(t, 2*time.Second, "delivery", func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return len(n.queue) == 0 && len(n.pending) == 0
	})
	cancel()
	<-done
	if len(got) != 2 {
		t.Fatalf("delivered %d events, want 2 (one per key): %+v", len(got), got)
	}
	// k1: the consumer saw nothing of it yet, so From is "up" (before the
	// first event) and To the latest; it went down and came back.
	if e := got[0]; e.Seq != 4 || e.From != StateUp || e.To != StateUp || e.Weight != 7 || e.Kind != KindWeight {
		t.Fatalf("k1 coalesced to %+v", e)
	}
	if e := got[1]; e.Seq != 2 || e.To != StateDown {
		t.Fatalf("k2 %+v", e)
	}
	// A coalesced event whose states differ is a health event even if the
	// last one was a weight change.
	got = nil
	n.add(k1, Event{Kind: KindHealth, From: StateDown, To: StateUp})
	n.add(k1, Event{Kind: KindWeight, From: StateUp, To: StateUp, Weight: 3})
	if e := n.queue[0]; e.Kind != KindHealth || e.From != StateDown || e.To != StateUp {
		t.Fatalf("merged %+v", e)
	}
}
