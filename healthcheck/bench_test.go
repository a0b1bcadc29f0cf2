package healthcheck

import (
	"context"
	"net"
	"testing"
)

// BenchmarkTCPCheck is one TCP check against a loopback listener, client
// and server in this process (so it counts the accept side too).
func BenchmarkTCPCheck(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go acceptForever(ln, nil)
	tg := Target{}
	{
		t := &testing.T{}
		tg = targetOf(t, ln.Addr())
	}
	c, err := New(Spec{Type: TypeTCP})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if r := c.Check(ctx, tg); !r.OK {
			b.Fatal(r.Reason)
		}
	}
}
