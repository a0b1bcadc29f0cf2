package healthcheck

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startConnect starts a non-blocking connect to tg on a new socket (not
// an idle one, so it is not in the poller's set yet).
func startConnect(t *testing.T, tg Target) int {
	t.Helper()
	fd, err := newTCP(Spec{Type: TypeTCP}).socket(unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, sockaddr(tg)); err != unix.EINPROGRESS {
		unix.Close(fd)
		t.Fatalf("connect %s: %v, want EINPROGRESS", tg, err)
	}
	return fd
}

func testPoller(t *testing.T) *connPoller {
	t.Helper()
	p, err := newConnPoller()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.close() })
	return p
}

// testRuntime is a Monitor's tcp runtime for checkers made in a test.
func testRuntime(t *testing.T) *tcpRuntime {
	t.Helper()
	rt, err := newTCPRuntime()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.close)
	return rt
}

// tcpIn is a tcp checker for s using rt, as a Monitor builds them.
func tcpIn(rt *tcpRuntime, s Spec) *tcpChecker {
	c := newTCP(s)
	c.rt = rt
	return c
}

func TestPollerWait(t *testing.T) {
	p := testPoller(t)
	upAddr := acceptingListener(t)
	up := targetOf(t, upAddr)
	never := make(chan struct{})
	noErr := func() error { return nil }

	t.Run("connected", func(t *testing.T) {
		fd := startConnect(t, up)
		defer unix.Close(fd)
		if _, err := p.wait(never, noErr, fd, false, time.Now().Add(5*time.Second)); err != nil {
			t.Fatalf("got %v, want connected", err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		fd := startConnect(t, closedPort(t))
		defer unix.Close(fd)
		if _, err := p.wait(never, noErr, fd, false, time.Now().Add(5*time.Second)); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("got %v, want ECONNREFUSED", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		fd := startConnect(t, fullBacklog(t))
		defer unix.Close(fd)
		if _, err := p.wait(never, noErr, fd, false, time.Now().Add(100*time.Millisecond)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("got %v, want os.ErrDeadlineExceeded", err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		fd := startConnect(t, fullBacklog(t))
		defer unix.Close(fd)
		ctx, cancel := context.WithCancel(context.Background())
		go cancel()
		if _, err := p.wait(ctx.Done(), ctx.Err, fd, false, time.Now().Add(time.Hour)); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	})
}

// TestPollerManyConcurrent mixes successes, refusals and timeouts with
// different deadlines, from many goroutines at once: each connect gets its
// own outcome, exactly once.
func TestPollerManyConcurrent(t *testing.T) {
	p := testPoller(t)
	upAddr := acceptingListener(t)
	up, refused, hang := targetOf(t, upAddr), closedPort(t), fullBacklog(t)
	never := make(chan struct{})
	noErr := func() error { return nil }

	const n = 300
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tg, deadline := up, time.Now().Add(10*time.Second)
			switch i % 3 {
			case 1:
				tg = refused
			case 2:
				tg, deadline = hang, time.Now().Add(time.Duration(50+i%7*10)*time.Millisecond)
			}
			sk, err := newTCP(Spec{Type: TypeTCP, Timeout: time.Second}).open(context.Background(), tg)
			if err != nil || sk.fd < 0 {
				errs[i] = errors.Join(errors.New("open"), err)
				return
			}
			_, errs[i] = p.wait(never, noErr, sk.fd, sk.polled, deadline)
			unix.Close(sk.fd)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		var want error
		switch i % 3 {
		case 1:
			want = syscall.ECONNREFUSED
		case 2:
			want = os.ErrDeadlineExceeded
		}
		if (want == nil && err != nil) || (want != nil && !errors.Is(err, want)) {
			t.Errorf("connect %d: got %v, want %v", i, err, want)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for fd, op := range p.ops {
		if op != nil {
			t.Errorf("descriptor %d still in the poller's table", fd)
		}
	}
}

// TestPollerStaleEvent: a connect canceled before its event arrives is not
// finished twice, and a later connect reusing its descriptor number is not
// finished by the earlier registration.
func TestPollerStaleEvent(t *testing.T) {
	p := testPoller(t)
	upAddr := acceptingListener(t)
	up := targetOf(t, upAddr)
	for range 50 {
		results := make(chan error, 2)
		op := &connOp{done: func(_ *connOp, err error) { results <- err }}
		fd := startConnect(t, up)
		if err := p.start(op, fd, false, time.Now().Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
		canceled := p.cancel(op, context.Canceled)
		unix.Close(fd)
		first := <-results
		if canceled != errors.Is(first, context.Canceled) {
			t.Fatalf("cancel reported %v but the outcome was %v", canceled, first)
		}
		// The same descriptor number, most likely, for the next connect.
		fd2 := startConnect(t, up)
		if _, err := p.wait(make(chan struct{}), func() error { return nil }, fd2, false, time.Now().Add(5*time.Second)); err != nil {
			t.Fatalf("next connect: %v", err)
		}
		unix.Close(fd2)
		select {
		case err := <-results:
			t.Fatalf("first connect finished twice (again with %v)", err)
		default:
		}
	}
}

// TestTCPStartCheck runs asynchronous tcp checks: results arrive once, with
// the same reasons as Check's.
func TestTCPStartCheck(t *testing.T) {
	rt := testRuntime(t)
	upAddr := acceptingListener(t)
	for _, c := range []struct {
		name    string
		tg      Target
		timeout time.Duration
		ok      bool
		reason  string
	}{
		{"up", targetOf(t, upAddr), 5 * time.Second, true, ""},
		{"refused", closedPort(t), 5 * time.Second, false, "connect refused"},
		{"timeout", fullBacklog(t), 150 * time.Millisecond, false, "timeout after 150ms"},
		{"bad source", Target{Addr: netip.MustParseAddr("::1"), Port: 1}, 5 * time.Second, false, "source 127.0.0.1 and target ::1 are of different address families"},
	} {
		t.Run(c.name, func(t *testing.T) {
			spec := Spec{Type: TypeTCP, Timeout: c.timeout}
			if c.name == "bad source" {
				spec.Source = netip.MustParseAddr("127.0.0.1")
			}
			results := make(chan Result, 2)
			r := newAsyncRun(nil, rt.poller, func(_ *asyncRun, res Result) { results <- res })
			tcpIn(rt, spec).startCheck(context.Background(), r, c.tg)
			res := <-results
			if res.OK != c.ok || res.Reason != c.reason || res.Weight != NoWeight {
				t.Fatalf("got %+v, want ok %v reason %q", res, c.ok, c.reason)
			}
			if len(results) != 0 {
				t.Fatalf("a second result: %+v", <-results)
			}
		})
	}
	t.Run("canceled", func(t *testing.T) {
		results := make(chan Result, 2)
		r := newAsyncRun(nil, rt.poller, func(_ *asyncRun, res Result) { results <- res })
		ctx, cancel := context.WithCancel(context.Background())
		tcpIn(rt, Spec{Type: TypeTCP, Timeout: time.Hour}).startCheck(ctx, r, fullBacklog(t))
		cancel()
		r.cancel()
		if res := <-results; res.OK || res.Reason != "canceled" {
			t.Fatalf("got %+v, want canceled", res)
		}
	})
	t.Run("canceled before start", func(t *testing.T) {
		results := make(chan Result, 2)
		r := newAsyncRun(nil, rt.poller, func(_ *asyncRun, res Result) { results <- res })
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		tcpIn(rt, Spec{Type: TypeTCP, Timeout: time.Hour}).startCheck(ctx, r, fullBacklog(t))
		if res := <-results; res.OK || res.Reason != "canceled" {
			t.Fatalf("got %+v, want canceled", res)
		}
	})
}

// TestMonitorCloseCancelsConnects: Close ends tcp checks whose connects
// hang (timeout an hour) instead of waiting for them.
func TestMonitorCloseCancelsConnects(t *testing.T) {
	hang := fullBacklog(t)
	m := NewMonitor(Options{Logger: quietLogger()})
	spec := Spec{Type: TypeTCP, Interval: 2 * time.Hour, Timeout: time.Hour}
	var checks []Check
	for i := range 20 {
		checks = append(checks, Check{Key: Key{"svc", netip.AddrPortFrom(hang.Addr, hang.Port)}, Spec: spec})
		checks[i].Key.Service = "svc" + string(rune('a'+i))
	}
	if err := m.Update(checks); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "connects to start", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return len(m.inflight) == len(checks)
	})
	p := m.tcp.poller
	m.Close()
	if n := m.ChecksRun(); n != 0 {
		t.Fatalf("%d results counted from canceled checks", n)
	}
	if len(m.inflight) != 0 {
		t.Errorf("%d checks in flight after Close", len(m.inflight))
	}
	p.mu.Lock()
	for fd, op := range p.ops {
		if op != nil {
			t.Errorf("descriptor %d still in the poller's table after Close", fd)
		}
	}
	p.mu.Unlock()
	// Close stops the monitor's poller with it.
	waitFor(t, 5*time.Second, "the poller to stop", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.broken != nil
	})
}

// TestTCPSocketReuse: sockets whose connect succeeded are reset and reused
// (also after waiting in the poller, and bound to a source), and a reused
// socket reports each new connect's own outcome.
func TestTCPSocketReuse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peers := make(chan string, 64)
	go acceptForever(ln, peers)
	up, refused := targetOf(t, ln.Addr()), closedPort(t)
	src := netip.MustParseAddr("127.0.0.9")
	rt := testRuntime(t)
	idle := func(source netip.Addr) int {
		rt.idle.mu.Lock()
		defer rt.idle.mu.Unlock()
		return len(rt.idle.m[sockKey{unix.AF_INET, source}])
	}

	c := tcpIn(rt, Spec{Type: TypeTCP, Timeout: 5 * time.Second, Source: src})
	results := make(chan Result, 1)
	r := newAsyncRun(nil, rt.poller, func(_ *asyncRun, res Result) { results <- res })
	for i := range 20 {
		tg, want := up, ""
		if i%5 == 4 {
			tg, want = refused, "connect refused"
		}
		if i%2 == 0 {
			c.startCheck(context.Background(), r, tg)
			if res := <-results; res.Reason != want {
				t.Fatalf("async check %d of %s: got %+v, want reason %q", i, tg, res, want)
			}
		} else if res := c.Check(context.Background(), tg); res.Reason != want {
			t.Fatalf("check %d of %s: got %+v, want reason %q", i, tg, res, want)
		}
		if n := idle(src); n != 1 && want == "" {
			t.Fatalf("after check %d: %d idle sockets for %s, want the one reused", i, n, src)
		}
	}
	for i := range 16 {
		select {
		case p := <-peers:
			if !strings.HasPrefix(p, "127.0.0.9:") {
				t.Errorf("server saw peer %s, want source 127.0.0.9", p)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("server saw %d connections, want 16", i)
		}
	}
}

// acceptingListener listens on loopback and accepts (and closes) every
// connection until the test ends; it returns the address.
func acceptingListener(t *testing.T) net.Addr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go acceptForever(ln, nil)
	return ln.Addr()
}
