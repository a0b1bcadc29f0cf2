package vrrp

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// freePort picks a port free for both UDP and TCP on 127.0.0.1.
func freePort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 20; i++ {
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

type stateStore struct {
	mu     sync.Mutex
	local  []byte
	merged [][]byte
}

func (s *stateStore) LocalState() []byte { s.mu.Lock(); defer s.mu.Unlock(); return s.local }
func (s *stateStore) MergeRemoteState(b []byte) {
	s.mu.Lock()
	s.merged = append(s.merged, append([]byte(nil), b...))
	s.mu.Unlock()
}
func (s *stateStore) got(want string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.merged {
		if string(m) == want {
			return true
		}
	}
	return false
}

// startWitnesses runs vote-only nodes (no addresses touched) on loopback.
func startWitnesses(t *testing.T, names []string, keys [][]byte, setup func(i int, n *Node)) []*Node {
	t.Helper()
	addrs := make([]string, len(names))
	for i := range names {
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	}
	nodes := make([]*Node, len(names))
	for i, name := range names {
		n, err := New(Spec{Node: NodeSpec{Name: name}, Witness: true,
			Cluster: &ClusterSpec{Bind: addrs[i], Peers: addrs, Key: keys[i], Members: names,
				RejoinInterval: 200 * time.Millisecond, Realtime: -1}}, discardLogger()) // not the test process
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
	return nodes
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestClusterHeartbeatsGossipAndState(t *testing.T) {
	k := []byte("0123456789abcdef0123456789abcdef")
	stores := []*stateStore{{local: []byte("state-a")}, {local: []byte("state-b")}}
	msgs := make(chan string, 10)
	digests := make(chan string, 10)
	nodes := startWitnesses(t, []string{"a", "b"}, [][]byte{k, k}, func(i int, n *Node) {
		n.SetStateDelegate(stores[i])
		if i == 1 {
			n.SetMessageHandler(func(b []byte) { msgs <- string(b) })
			n.SetDigestHandler(func(peer string, d []byte) { digests <- peer + "=" + string(d) })
		}
	})
	waitFor(t, "a and b alive to each other", func() bool {
		sa, sb := nodes[0].Status(), nodes[1].Status()
		return len(sa.Members) == 1 && sa.Members[0].Alive && len(sb.Members) == 1 && sb.Members[0].Alive
	})
	waitFor(t, "memberlist join", func() bool { return len(nodes[0].Members()) == 2 })
	waitFor(t, "push-pull state exchange", func() bool { return stores[1].got("state-a") && stores[0].got("state-b") })
	if err := nodes[0].SetDigest([]byte("d1")); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-digests:
		if d != "a=d1" {
			t.Fatalf("digest %q", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("digest never arrived")
	}
	if err := nodes[0].SetDigest(make([]byte, maxDigest+1)); err == nil {
		t.Fatal("oversized digest accepted")
	}
	if err := nodes[0].Broadcast([]byte("drain rs1")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		if m != "drain rs1" {
			t.Fatalf("message %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("broadcast never arrived")
	}
}

func TestClusterWrongKeyIsIgnored(t *testing.T) {
	good := []byte("0123456789abcdef0123456789abcdef")
	bad := []byte("fedcba9876543210fedcba9876543210")
	nodes := startWitnesses(t, []string{"a", "b", "x"}, [][]byte{good, good, bad}, nil)
	waitFor(t, "a and b alive to each other", func() bool {
		for _, m := range nodes[0].Status().Members {
			if m.Name == "b" && m.Alive {
				return true
			}
		}
		return false
	})
	time.Sleep(700 * time.Millisecond) // several heartbeats and re-join attempts from x
	for i, n := range nodes[:2] {
		for _, m := range n.Status().Members {
			if m.Name == "x" && (m.Alive || !m.LastSeen.IsZero()) {
				t.Fatalf("node %d heard the node with the wrong key: %+v", i, m)
			}
		}
		for _, m := range n.Members() {
			if m.Name == "x" {
				t.Fatalf("node %d let the node with the wrong key join memberlist", i)
			}
		}
	}
	if st := nodes[2].Status(); st.Visible != 1 {
		t.Fatalf("the node with the wrong key sees %d members", st.Visible)
	}
}
