package healthcheck

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// targetOf turns a listener's address into a Target.
func targetOf(t *testing.T, addr net.Addr) Target {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	return Target{Addr: ap.Addr(), Port: ap.Port()}
}

// mustNew builds a checker; tests that do not test the timeout get a
// generous one, so a loaded machine running -race does not fail them.
func mustNew(t *testing.T, s Spec) Checker {
	t.Helper()
	if s.Timeout == 0 {
		s.Timeout = 5 * time.Second
		if s.Interval == 0 {
			s.Interval = 10 * time.Second
		}
	}
	c, err := New(s)
	if err != nil {
		t.Fatalf("New(%+v): %v", s, err)
	}
	return c
}

// closedPort returns a loopback port nobody listens on.
func closedPort(t *testing.T) Target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := targetOf(t, ln.Addr())
	ln.Close()
	return tg
}

// acceptForever accepts and closes connections, recording peers.
func acceptForever(ln net.Listener, peers chan<- string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		select {
		case peers <- c.RemoteAddr().String():
		default:
		}
		c.Close()
	}
}

// fullBacklog returns a target whose accept queue is full, so a connect
// hangs until its timeout (SYNs are dropped).
func fullBacklog(t *testing.T) Target {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	tg := Target{Addr: netip.MustParseAddr("127.0.0.1"), Port: uint16(sa.(*syscall.SockaddrInet4).Port)}
	// Fill the queue (backlog 0 admits one or two) with connections that are never accepted.
	for range 4 {
		c, err := net.DialTimeout("tcp", tg.String(), 100*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	return tg
}

func TestTCPCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peers := make(chan string, 16)
	go acceptForever(ln, peers)
	up := targetOf(t, ln.Addr())

	// Outside a Monitor a check waits in poll(2); in one, in the connect
	// poller, on reused sockets: the same outcomes either way.
	rt := testRuntime(t)
	for _, mode := range []struct {
		name  string
		build func(*testing.T, Spec) Checker
	}{
		{"alone", mustNew},
		{"in a monitor", func(t *testing.T, s Spec) Checker {
			c := mustNew(t, s).(*tcpChecker)
			c.rt = rt
			return c
		}},
	} {
		build := mode.build
		t.Run(mode.name, func(t *testing.T) {

			t.Run("up", func(t *testing.T) {
				r := build(t, Spec{Type: TypeTCP}).Check(context.Background(), up)
				if !r.OK || r.Reason != "" || r.Weight != NoWeight {
					t.Fatalf("got %+v, want plain success", r)
				}
			})
			t.Run("refused", func(t *testing.T) {
				r := build(t, Spec{Type: TypeTCP}).Check(context.Background(), closedPort(t))
				if r.OK || r.Reason != "connect refused" {
					t.Fatalf("got %+v, want connect refused", r)
				}
			})
			t.Run("timeout", func(t *testing.T) {
				tg := fullBacklog(t)
				start := time.Now()
				r := build(t, Spec{Type: TypeTCP, Timeout: 200 * time.Millisecond}).Check(context.Background(), tg)
				if r.OK || r.Reason != "timeout after 200ms" {
					t.Fatalf("got %+v, want timeout after 200ms", r)
				}
				if el := time.Since(start); el > 2*time.Second {
					t.Fatalf("timeout not honoured: took %s", el)
				}
			})
			t.Run("canceled context", func(t *testing.T) {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				r := build(t, Spec{Type: TypeTCP}).Check(ctx, fullBacklog(t))
				if r.OK || r.Reason != "canceled" {
					t.Fatalf("got %+v, want canceled", r)
				}
			})
			t.Run("source address", func(t *testing.T) {
				for len(peers) > 0 {
					<-peers
				}
				r := build(t, Spec{Type: TypeTCP, Source: netip.MustParseAddr("127.0.0.7")}).Check(context.Background(), up)
				if !r.OK {
					t.Fatalf("got %+v", r)
				}
				select {
				case p := <-peers:
					if !strings.HasPrefix(p, "127.0.0.7:") {
						t.Fatalf("server saw peer %s, want source 127.0.0.7", p)
					}
				case <-time.After(2 * time.Second):
					t.Fatal("server saw no connection")
				}
			})
			t.Run("source not local", func(t *testing.T) {
				// Binding fails before any packet is sent.
				r := build(t, Spec{Type: TypeTCP, Source: netip.MustParseAddr("198.18.0.1")}).Check(context.Background(), up)
				if r.OK || r.Reason != "source address not available" {
					t.Fatalf("got %+v, want source address not available", r)
				}
			})
		})
	}
}

func TestTCPCheckIPv6(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer ln.Close()
	go acceptForever(ln, nil)
	tg := targetOf(t, ln.Addr())
	if r := mustNew(t, Spec{Type: TypeTCP, Source: netip.MustParseAddr("::1")}).Check(context.Background(), tg); !r.OK {
		t.Fatalf("got %+v", r)
	}
	// An IPv4 source cannot reach an IPv6 target: a clear failure, not a hang.
	r := mustNew(t, Spec{Type: TypeTCP, Source: netip.MustParseAddr("127.0.0.1")}).Check(context.Background(), tg)
	if r.OK || r.Reason == "" {
		t.Fatalf("mixed families: got %+v", r)
	}
	t.Logf("mixed families reason: %q", r.Reason)
}
