package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// tcpChecker succeeds when a TCP connection is established. It is the
// check that runs 10,000 times a second, so it skips the net package's
// generality (address parsing, local/peer address lookups, socket options
// for a connection that lives microseconds): a non-blocking socket, one
// connect, a wait in the shared connect poller (poller.go), and a close with
// RST (linger 0) so no TIME_WAIT sockets pile up on the director.
type tcpChecker struct {
	base
}

func newTCP(s Spec) *tcpChecker { return &tcpChecker{base: newBase(s)} }

func (c *tcpChecker) Check(ctx context.Context, t Target) Result {
	start := time.Now()
	deadline := start.Add(c.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	err := c.connect(ctx, t, deadline)
	if err != nil && ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = ctx.Err()
	}
	return c.result(start, err)
}

func sockaddr(a Target) unix.Sockaddr {
	if a.Addr.Unmap().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr.Unmap().As4(), Port: int(a.Port)}
	}
	return &unix.SockaddrInet6{Addr: a.Addr.As16(), Port: int(a.Port)}
}

func (c *tcpChecker) connect(ctx context.Context, t Target, deadline time.Time) error {
	fd, err := c.open(ctx, t)
	if err != nil || fd < 0 {
		return err
	}
	p, err := thePoller()
	if err == nil {
		err = p.wait(ctx.Done(), ctx.Err, fd, deadline)
	}
	unix.Close(fd)
	return err
}

// open starts a non-blocking connect to t. It returns the socket while the
// connect is in progress, or -1 and the outcome when it is already decided.
func (c *tcpChecker) open(ctx context.Context, t Target) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	family := unix.AF_INET6
	if t.Addr.Unmap().Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("setsockopt", err)
	}
	if c.source.IsValid() {
		if (family == unix.AF_INET) != c.source.Unmap().Is4() {
			unix.Close(fd)
			return -1, fmt.Errorf("source %s and target %s are of different address families", c.source, t.Addr)
		}
		if err := unix.Bind(fd, sockaddr(Target{Addr: c.source})); err != nil {
			unix.Close(fd)
			return -1, os.NewSyscallError("bind", err)
		}
	}
	switch err := unix.Connect(fd, sockaddr(t)); err {
	case nil:
		unix.Close(fd)
		return -1, nil
	case unix.EINPROGRESS:
		return fd, nil
	default:
		unix.Close(fd)
		return -1, os.NewSyscallError("connect", err)
	}
}

// asyncChecker is a Checker that can also run a check with no goroutine
// waiting on it: the Monitor starts tcp checks from its scheduler and gets
// their results from the connect poller's goroutine, instead of handing
// each to a worker that would sleep through the connect.
type asyncChecker interface {
	Checker
	// startCheck starts a check of t and calls r.finish with its result
	// exactly once, perhaps before it returns, on any goroutine. Canceling
	// ctx ends the check at once (see asyncRun.cancel).
	startCheck(ctx context.Context, r *asyncRun, t Target)
}

// asyncRun is one check in flight without a goroutine. The Monitor keeps
// one per entry and reuses it (an entry runs one check at a time).
type asyncRun struct {
	op     connOp
	c      *tcpChecker
	start  time.Time
	finish func(*asyncRun, Result)
	// For the Monitor.
	entry   *entry
	planned time.Time
	idx     int // in Monitor.inflight
}

func newAsyncRun(e *entry, finish func(*asyncRun, Result)) *asyncRun {
	r := &asyncRun{entry: e, finish: finish}
	r.op.arg = r
	r.op.done = asyncConnected
	return r
}

// cancel ends r's connect, if it is in the poller, as canceled.
func (r *asyncRun) cancel() {
	if p, err := thePoller(); err == nil {
		p.cancel(&r.op, context.Canceled)
	}
}

func (c *tcpChecker) startCheck(ctx context.Context, r *asyncRun, t Target) {
	r.c, r.start = c, time.Now()
	fd, err := c.open(ctx, t)
	if err != nil || fd < 0 {
		r.finish(r, c.result(r.start, err))
		return
	}
	p, err := thePoller()
	if err == nil {
		err = p.start(&r.op, fd, r.start.Add(c.timeout))
	}
	if err != nil {
		unix.Close(fd)
		r.finish(r, c.result(r.start, err))
		return
	}
	// A cancel that ran before the start found nothing to cancel.
	if err := ctx.Err(); err != nil {
		p.cancel(&r.op, err)
	}
}

// asyncConnected is an asyncRun's connOp.done.
func asyncConnected(op *connOp, err error) {
	r := op.arg.(*asyncRun)
	unix.Close(op.fd)
	r.finish(r, r.c.result(r.start, err))
}
