package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lvsd/lvsd/config"
	"github.com/lvsd/lvsd/opstate"
	"github.com/lvsd/lvsd/vrrp"
)

// logLines is an slog handler that keeps what it gets.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l *logLines) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}
func (l *logLines) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logLines) WithGroup(string) slog.Handler      { return l }
func (l *logLines) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			n++
		}
	}
	return n
}

// loopbackPort picks a port free for both UDP and TCP on 127.0.0.1.
func loopbackPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// startReplicas runs two engines reduced to what replication needs: an
// in-memory store, a config with a cluster and no services, a loop that
// runs what they post, and a witness election node hooked up as startNode
// does, gossiping on loopback with a key.
func startReplicas(t *testing.T) ([]*engine, []*logLines) {
	t.Helper()
	key := []byte("0123456789abcdef0123456789abcdef")
	names := []string{"a", "b"}
	addrs := []string{fmt.Sprintf("127.0.0.1:%d", loopbackPort(t)), fmt.Sprintf("127.0.0.1:%d", loopbackPort(t))}
	var es []*engine
	var logs []*logLines
	for i, name := range names {
		st, err := opstate.Open(name, "")
		if err != nil {
			t.Fatal(err)
		}
		ll := &logLines{}
		ctx, cancel := context.WithCancel(context.Background())
		e := &engine{log: slog.New(ll), store: st, cfg: &config.Config{Cluster: &config.Cluster{}},
			reqs: make(chan func(), 16), loopCtx: ctx, events: newEventLog(64), views: map[string][]backendView{}}
		loopDone := make(chan struct{})
		go func() {
			defer close(loopDone)
			for {
				select {
				case f := <-e.reqs:
					f()
				case <-ctx.Done():
					return
				}
			}
		}()
		n, err := vrrp.New(vrrp.Spec{Node: vrrp.NodeSpec{Name: name}, Witness: true,
			Cluster: &vrrp.ClusterSpec{Bind: addrs[i], Peers: addrs, Key: key, Members: names,
				RejoinInterval: 200 * time.Millisecond, Realtime: -1}}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		e.node = n
		if err := e.hookCluster(n); err != nil {
			t.Fatal(err)
		}
		nodeDone := make(chan struct{})
		go func() { n.Run(ctx); close(nodeDone) }()
		t.Cleanup(func() { cancel(); <-nodeDone; <-loopDone })
		es, logs = append(es, e), append(logs, ll)
	}
	replicasEventually(t, "memberlist join", func() bool {
		return len(es[0].node.Members()) == 2 && len(es[1].node.Members()) == 2
	})
	return es, logs
}

func replicasEventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	replicasWithin(t, 5*time.Second, what, cond)
}

func replicasWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// sameRecords waits until to holds exactly from's records.
func sameRecords(t *testing.T, what string, from, to *opstate.Store) {
	t.Helper()
	replicasEventually(t, what, func() bool { return from.Digest() == to.Digest() })
	if a, b := from.Records(), to.Records(); !slices.Equal(a, b) {
		t.Fatalf("%s: digests equal but %d records differ from %d", what, len(b), len(a))
	}
}

func backendN(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 80)
}

// Records that gossip never carried (here: never broadcast) reach the peer
// through the digest comparison and a state exchange, a thousand at a time,
// in both directions, and nothing piles up in the gossip queue.
func TestReplicationFullStateByDigest(t *testing.T) {
	es, _ := startReplicas(t)
	a, b := es[0], es[1]
	for round, admin := range []opstate.Admin{opstate.Drained, opstate.Disabled, opstate.AdminNone} {
		for i := range 1000 {
			if _, err := a.store.Put(opstate.Record{Service: fmt.Sprintf("svc-%d", i%50), Backend: backendN(i), Admin: admin}); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.node.SetDigest(a.digest()); err != nil {
			t.Fatal(err)
		}
		sameRecords(t, fmt.Sprintf("round %d: a's 1000 records on b", round), a.store, b.store)
		for i, e := range es {
			if q := e.node.QueuedBroadcasts(); q != 0 {
				t.Fatalf("round %d: node %d has %d broadcasts queued", round, i, q)
			}
		}
	}
	if n := len(b.store.Records()); n != 1000 {
		t.Fatalf("b has %d records, want 1000", n)
	}
	// The other way: the side that notices the difference pulls too.
	for i := range 300 {
		if _, err := b.store.Put(opstate.Record{Service: "only-b", Backend: backendN(i), Admin: opstate.Drained}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.node.SetDigest(b.digest()); err != nil {
		t.Fatal(err)
	}
	sameRecords(t, "b's records on a", b.store, a.store)
	if n := len(a.store.Records()); n != 1300 {
		t.Fatalf("a has %d records, want 1300", n)
	}
}

// Operator changes go out one record per gossip message; one too large for
// a packet is refused loudly and still arrives by the state exchange.
func TestReplicationPublish(t *testing.T) {
	es, logs := startReplicas(t)
	a, b := es[0], es[1]

	// The largest record a config allows fits one gossip packet: names of
	// 128 (service) and 64 (node) bytes of characters JSON escapes to 6.
	worst := opstate.Record{Service: strings.Repeat("<", 128), Backend: netip.MustParseAddrPort("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
		Admin: opstate.Disabled, Added: true, Removed: true, Weight: 65535,
		Version: opstate.Version{Wall: -1 << 63, Node: strings.Repeat("<", 64)}}
	data, err := opstate.Encode([]opstate.Record{worst})
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > a.node.MaxBroadcast() {
		t.Fatalf("the largest configurable record encodes to %d bytes, more than a gossip packet's %d", len(data), a.node.MaxBroadcast())
	}

	for i := range 200 {
		r, err := a.store.Put(opstate.Record{Service: "web", Backend: backendN(i), Admin: opstate.Drained})
		if err != nil {
			t.Fatal(err)
		}
		a.publish(r)
	}
	sameRecords(t, "200 published records on b", a.store, b.store)
	// Each message goes out 3 times, about 9 to a packet, a packet per 100 ms.
	replicasWithin(t, 20*time.Second, "the gossip queue to drain", func() bool { return a.node.QueuedBroadcasts() == 0 })

	// A runtime add takes an IPv6 zone of any length.
	zoned := netip.MustParseAddrPort("[fe80::1%" + strings.Repeat("z", 2000) + "]:80")
	r, err := a.store.Put(opstate.Record{Service: "web", Backend: zoned, Added: true, Weight: 1})
	if err != nil {
		t.Fatal(err)
	}
	a.publish(r)
	if n := logs[0].count("WARN operator change not gossiped"); n != 1 {
		t.Fatalf("the oversized record logged %d warnings, want 1", n)
	}
	if q := a.node.QueuedBroadcasts(); q != 0 {
		t.Fatalf("the oversized record left %d broadcasts queued", q)
	}
	sameRecords(t, "the oversized record on b", a.store, b.store)
}
