package healthcheck

import (
	"context"
	"net"
	"time"
)

// tcpChecker succeeds when a TCP connection is established. It closes with
// RST (linger 0) so that thousands of checks a second leave no TIME_WAIT
// sockets behind on the director.
type tcpChecker struct {
	base
	d *net.Dialer
}

func newTCP(s Spec) *tcpChecker {
	b := newBase(s)
	d := b.dialer()
	d.KeepAlive = -1 // the connection lives for microseconds
	return &tcpChecker{base: b, d: d}
}

func (c *tcpChecker) Check(ctx context.Context, t Target) Result {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	conn, err := c.d.DialContext(ctx, "tcp", t.String())
	if err != nil {
		return c.result(start, err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
	return c.result(start, nil)
}
