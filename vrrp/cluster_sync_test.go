package vrrp

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// startPair runs witnesses a and b on loopback, encrypted with key or, with
// a nil key, insecure; lg (nil: discard) logs for both.
func startPair(t *testing.T, key []byte, lg *slog.Logger, setup func(i int, n *Node)) ([]*Node, []string) {
	t.Helper()
	if lg == nil {
		lg = discardLogger()
	}
	names := []string{"a", "b"}
	addrs := []string{fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	nodes := make([]*Node, 2)
	for i, name := range names {
		n, err := New(Spec{Node: NodeSpec{Name: name}, Witness: true,
			Cluster: &ClusterSpec{Bind: addrs[i], Peers: addrs, Key: key, Insecure: key == nil, Members: names,
				RejoinInterval: 200 * time.Millisecond, Realtime: -1}}, lg)
		if err != nil {
			t.Fatal(err)
		}
		if setup != nil {
			setup(i, n)
		}
		nodes[i] = n
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { n.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	waitFor(t, "memberlist join", func() bool { return len(nodes[0].Members()) == 2 && len(nodes[1].Members()) == 2 })
	return nodes, addrs
}

// A broadcast of exactly MaxBroadcast bytes fits a gossip packet and
// arrives; one byte more is refused instead of sitting in the queue forever.
func TestClusterBroadcastBudget(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  []byte
		max  int
	}{{"encrypted", []byte("0123456789abcdef0123456789abcdef"), 1365}, {"insecure", nil, 1394}} {
		t.Run(tc.name, func(t *testing.T) {
			msgs := make(chan []byte, 4)
			nodes, _ := startPair(t, tc.key, nil, func(i int, n *Node) {
				if i == 1 {
					n.SetMessageHandler(func(b []byte) { msgs <- b })
				}
			})
			a := nodes[0]
			if got := a.MaxBroadcast(); got != tc.max {
				t.Fatalf("MaxBroadcast = %d, want %d", got, tc.max)
			}
			big := bytes.Repeat([]byte{'x'}, a.MaxBroadcast()+1)
			if err := a.cl.Load().broadcast(big); err == nil {
				t.Fatal("a broadcast larger than a gossip packet was accepted")
			}
			if q := a.QueuedBroadcasts(); q != 0 {
				t.Fatalf("the refused broadcast left %d messages queued", q)
			}
			full := big[:a.MaxBroadcast()]
			if err := a.Broadcast(full); err != nil {
				t.Fatal(err)
			}
			select {
			case m := <-msgs:
				if !bytes.Equal(m, full) {
					t.Fatalf("got %d bytes, want the %d sent", len(m), len(full))
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("a broadcast of MaxBroadcast (%d) bytes never arrived", len(full))
			}
			waitFor(t, "the gossip queue to drain", func() bool { return a.QueuedBroadcasts() == 0 })
		})
	}
}

// ExchangeState carries a state far larger than a packet both ways, and
// requests while one runs neither pile up nor queue gossip.
func TestClusterExchangeStateLargeState(t *testing.T) {
	k := []byte("0123456789abcdef0123456789abcdef")
	stores := []*stateStore{{local: []byte("a0")}, {local: []byte("b0")}}
	nodes, _ := startPair(t, k, nil, func(i int, n *Node) { n.SetStateDelegate(stores[i]) })
	waitFor(t, "the join's push-pull", func() bool { return stores[1].got("a0") && stores[0].got("b0") })

	for round := 1; round <= 3; round++ {
		la := fmt.Sprintf("a%d:%s", round, strings.Repeat("A", 300_000))
		lb := fmt.Sprintf("b%d:%s", round, strings.Repeat("B", 1_000))
		stores[0].mu.Lock()
		stores[0].local = []byte(la)
		stores[0].mu.Unlock()
		stores[1].mu.Lock()
		stores[1].local = []byte(lb)
		stores[1].mu.Unlock()
		for range 5 { // one runs, the rest fold into one more
			if err := nodes[1].ExchangeState("a"); err != nil {
				t.Fatal(err)
			}
		}
		// Well within memberlist's own 15 s push-pull period.
		deadline := time.Now().Add(3 * time.Second)
		for !(stores[1].got(la) && stores[0].got(lb)) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the exchange did not carry both states", round)
			}
			time.Sleep(10 * time.Millisecond)
		}
		for i, n := range nodes {
			if q := n.QueuedBroadcasts(); q != 0 {
				t.Fatalf("round %d: node %d has %d broadcasts queued", round, i, q)
			}
		}
	}
	if err := nodes[0].ExchangeState("nobody"); err == nil {
		t.Fatal("an exchange with an unknown member was accepted")
	}
}

// lineCounter is an slog handler that keeps the messages it gets.
type lineCounter struct {
	mu    sync.Mutex
	lines []string
}

func (c *lineCounter) Enabled(context.Context, slog.Level) bool { return true }
func (c *lineCounter) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
	c.mu.Lock()
	c.lines = append(c.lines, b.String())
	c.mu.Unlock()
	return nil
}
func (c *lineCounter) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *lineCounter) WithGroup(string) slog.Handler      { return c }
func (c *lineCounter) matching(sub string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, l := range c.lines {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return out
}

func TestMLLogWriterLimits(t *testing.T) {
	t.Run("addresses and numbers do not make lines distinct", func(t *testing.T) {
		lc := &lineCounter{}
		w := newMLLogWriter(slog.New(lc)) // every: 10 s, longer than the loop
		for i := range 2000 {
			fmt.Fprintf(w, "[ERR] memberlist: Decrypt packet failed: message authentication failed from=198.18.%d.%d:%d\n", i/250, i%250, 1024+i)
			fmt.Fprintf(w, "[ERR] memberlist: failed to read size %d from=[2001:db8::%x]:%d\n", i, i, 1024+i)
		}
		if got := lc.matching("ERROR"); len(got) != 2 {
			t.Fatalf("2 kinds of line x 2000 senders logged %d lines, want 2: %q", len(got), got)
		}
		w.flush() // what the summary timer does at the end of the period
		if got := lc.matching("suppressed=3998"); len(got) != 1 {
			t.Fatalf("summary: %q", lc.matching("suppressed"))
		}
	})
	t.Run("distinct messages are capped overall", func(t *testing.T) {
		lc := &lineCounter{}
		w := newMLLogWriter(slog.New(lc))
		w.every = 300 * time.Millisecond
		start := time.Now()
		for i := range 2000 {
			fmt.Fprintf(w, "[WARN] memberlist: something about node-%c%c\n", 'a'+i%26, 'a'+i/26%26)
		}
		elapsed := time.Since(start)
		logged := len(lc.matching("something about"))
		if max := int(w.burst + w.rate*elapsed.Seconds() + 1); logged > max || logged < int(w.burst) {
			t.Fatalf("%d distinct lines logged %d, want %d..%d", 2000, logged, int(w.burst), max)
		}
		waitFor(t, "the summary", func() bool {
			return len(lc.matching(fmt.Sprintf("suppressed=%d", 2000-logged))) == 1
		})
		// The period over and a token back, a kind seen before is logged again.
		time.Sleep(max(w.every, time.Duration(float64(time.Second)/w.rate)) + 50*time.Millisecond)
		fmt.Fprintln(w, "[WARN] memberlist: something about node-aa")
		if got := len(lc.matching("something about node-aa")); got != 2 {
			t.Fatalf("after the period: %d lines of node-aa, want 2", got)
		}
	})
	t.Run("debug lines the logger drops are not counted", func(t *testing.T) {
		lc := &lineCounter{}
		w := newMLLogWriter(slog.New(levelFilter{lc, slog.LevelInfo}))
		for range 100 {
			fmt.Fprintln(w, "[DEBUG] memberlist: Stream connection from=127.0.0.1:1")
		}
		w.mu.Lock()
		n := w.suppressed
		w.mu.Unlock()
		if len(lc.lines) != 0 || n != 0 {
			t.Fatalf("debug lines: %d logged, %d counted as suppressed", len(lc.lines), n)
		}
	})
}

type levelFilter struct {
	slog.Handler
	min slog.Level
}

func (f levelFilter) Enabled(_ context.Context, l slog.Level) bool { return l >= f.min }

// Garbage UDP from many source ports (no key needed to send it) makes
// memberlist log an error per packet; a handful reach the log.
func TestClusterGarbageFloodLogsBounded(t *testing.T) {
	lc := &lineCounter{}
	k := []byte("0123456789abcdef0123456789abcdef")
	_, addrs := startPair(t, k, slog.New(lc), nil)
	dst, err := net.ResolveUDPAddr("udp", addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		c, err := net.DialUDP("udp", nil, dst) // a new source port each time
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte(fmt.Sprintf("garbage %d %s", i, strings.Repeat("z", i%64)))); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	// Let memberlist read them all.
	time.Sleep(500 * time.Millisecond)
	lines := lc.matching("component=memberlist")
	if len(lines) == 0 {
		t.Fatal("no memberlist line at all: the flood did not reach memberlist")
	}
	if len(lines) > 5 {
		t.Fatalf("2000 garbage packets logged %d memberlist lines: %q", len(lines), lines[:10])
	}
}
