package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"
	"unsafe"

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
	// rt is the Monitor's connect poller and idle sockets. A checker made
	// by New outside a Monitor has none: each check then waits in poll(2).
	rt *tcpRuntime
}

func newTCP(s Spec) *tcpChecker { return &tcpChecker{base: newBase(s)} }

// tcpRuntime is what a Monitor's tcp checks share: the connect poller and
// the sockets kept for reuse. The Monitor makes it on its first tcp check
// and closes it on Close.
type tcpRuntime struct {
	poller *connPoller
	idle   sockPool
}

func newTCPRuntime() (*tcpRuntime, error) {
	p, err := newConnPoller()
	if err != nil {
		return nil, err
	}
	return &tcpRuntime{poller: p, idle: sockPool{m: make(map[sockKey][]sock)}}, nil
}

// close stops the poller and closes the idle sockets; no check may be in
// flight.
func (rt *tcpRuntime) close() {
	rt.poller.close()
	rt.idle.closeAll()
}

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
	sk, err := c.open(ctx, t)
	if err != nil || sk.fd < 0 {
		return err
	}
	if c.rt == nil {
		err = waitBlocking(ctx, sk.fd, deadline)
	} else {
		var polled bool
		polled, err = c.rt.poller.wait(ctx.Done(), ctx.Err, sk.fd, sk.polled, deadline)
		sk.polled = sk.polled || polled
	}
	c.release(sk, err)
	return err
}

// waitBlocking waits for fd's connect without a poller (a checker made
// outside a Monitor): poll(2) in slices of at most blockingSlice, so ctx
// ends the wait promptly.
func waitBlocking(ctx context.Context, fd int, deadline time.Time) error {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return os.ErrDeadlineExceeded
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(min(left, blockingSlice).Milliseconds())+1)
		switch {
		case err == unix.EINTR || (err == nil && n == 0):
			continue
		case err != nil:
			return os.NewSyscallError("poll", err)
		case pfd[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0:
			return soError(fd)
		}
		return nil
	}
}

const blockingSlice = 20 * time.Millisecond

// sock is a socket for a tcp check; polled says it is in the connect
// poller's set.
type sock struct {
	fd     int
	family int
	polled bool
}

// open starts a non-blocking connect to t, on a reused socket if one is
// idle. It returns the socket while the connect is in progress, or fd -1
// and the outcome when it is already decided.
func (c *tcpChecker) open(ctx context.Context, t Target) (sock, error) {
	if err := ctx.Err(); err != nil {
		return sock{fd: -1}, err
	}
	family := unix.AF_INET6
	if t.Addr.Unmap().Is4() {
		family = unix.AF_INET
	}
	if c.source.IsValid() && (family == unix.AF_INET) != c.source.Unmap().Is4() {
		return sock{fd: -1}, fmt.Errorf("source %s and target %s are of different address families", c.source, t.Addr)
	}
	var sk sock
	ok := false
	if c.rt != nil {
		sk, ok = c.rt.idle.get(family, c.source)
	}
	if !ok {
		fd, err := c.socket(family)
		if err != nil {
			return sock{fd: -1}, err
		}
		sk = sock{fd: fd, family: family}
	}
	switch err := unix.Connect(sk.fd, sockaddr(t)); err {
	case nil:
		c.release(sk, nil)
		return sock{fd: -1}, nil
	case unix.EINPROGRESS:
		return sk, nil
	default:
		c.release(sk, err)
		return sock{fd: -1}, os.NewSyscallError("connect", err)
	}
}

// socket makes a new non-blocking socket bound to the source, if any.
func (c *tcpChecker) socket(family int) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("setsockopt", err)
	}
	if c.source.IsValid() {
		if err := unix.Bind(fd, sockaddr(Target{Addr: c.source})); err != nil {
			unix.Close(fd)
			return -1, os.NewSyscallError("bind", err)
		}
	}
	return fd, nil
}

// release ends the socket's connection after a connect's outcome err: in a
// Monitor, a socket that connected is reset and kept for the next check
// (creating and freeing one costs more than the check's own handshake on
// loopback); any other is closed (with RST, linger 0).
func (c *tcpChecker) release(sk sock, err error) {
	if err != nil || c.rt == nil || !c.rt.idle.put(sk, c.source) {
		unix.Close(sk.fd)
	}
}

// maxIdleSockets bounds a sockPool: the peak of connects in flight beyond
// it is closed.
const maxIdleSockets = 512

type sockKey struct {
	family int
	source netip.Addr
}

// sockPool holds sockets whose connection was reset (connect with
// AF_UNSPEC: the kernel sends RST, frees the port and leaves the socket
// ready to connect again), by family and source address.
type sockPool struct {
	mu sync.Mutex
	m  map[sockKey][]sock
	n  int
}

func (p *sockPool) get(family int, source netip.Addr) (sock, bool) {
	k := sockKey{family, source}
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.m[k]
	if len(s) == 0 {
		return sock{}, false
	}
	sk := s[len(s)-1]
	p.m[k] = s[:len(s)-1]
	p.n--
	return sk, true
}

// closeAll closes every idle socket.
func (p *sockPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, socks := range p.m {
		for _, sk := range socks {
			unix.Close(sk.fd)
		}
		delete(p.m, k)
	}
	p.n = 0
}

// put resets sk's connection and keeps it; false if it should be closed
// instead.
func (p *sockPool) put(sk sock, source netip.Addr) bool {
	p.mu.Lock()
	full := p.n >= maxIdleSockets
	p.mu.Unlock()
	if full || disconnect(sk.fd) != nil {
		return false
	}
	k := sockKey{sk.family, source}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n >= maxIdleSockets {
		return false
	}
	p.m[k] = append(p.m[k], sk)
	p.n++
	return true
}

// disconnect dissolves fd's connection (connect(2) with AF_UNSPEC; for an
// established TCP socket the kernel sends RST) and clears the socket error
// that leaves, which would otherwise fail the next connect's poll.
func disconnect(fd int) error {
	sa := unix.RawSockaddrAny{}
	sa.Addr.Family = unix.AF_UNSPEC
	if _, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa)); e != 0 {
		return e
	}
	_, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	return err
}

// asyncChecker is a Checker that can also run a check with no goroutine
// waiting on it: the Monitor starts tcp checks from its scheduler and gets
// their results from the connect poller's goroutine, instead of handing
// each to a worker that would sleep through the connect.
type asyncChecker interface {
	Checker
	// poller is the connect poller its checks wait in; nil: none, so the
	// checker cannot start checks without a goroutine.
	poller() *connPoller
	// startCheck starts a check of t and calls r.finish with its result
	// exactly once, perhaps before it returns, on any goroutine. Canceling
	// ctx ends the check at once (see asyncRun.cancel).
	startCheck(ctx context.Context, r *asyncRun, t Target)
}

// asyncRun is one check in flight without a goroutine. The Monitor keeps
// one per entry and reuses it (an entry runs one check at a time).
type asyncRun struct {
	op     connOp
	p      *connPoller
	c      *tcpChecker
	sk     sock
	start  time.Time
	finish func(*asyncRun, Result)
	// For the Monitor.
	entry   *entry
	planned time.Time
	idx     int // in Monitor.inflight
}

func newAsyncRun(e *entry, p *connPoller, finish func(*asyncRun, Result)) *asyncRun {
	r := &asyncRun{entry: e, p: p, finish: finish}
	r.op.arg = r
	r.op.done = asyncConnected
	return r
}

// cancel ends r's connect, if it is in the poller, as canceled.
func (r *asyncRun) cancel() { r.p.cancel(&r.op, context.Canceled) }

func (c *tcpChecker) poller() *connPoller {
	if c.rt == nil {
		return nil
	}
	return c.rt.poller
}

func (c *tcpChecker) startCheck(ctx context.Context, r *asyncRun, t Target) {
	r.c, r.start = c, time.Now()
	sk, err := c.open(ctx, t)
	if err != nil || sk.fd < 0 {
		r.finish(r, c.result(r.start, err))
		return
	}
	rearm := sk.polled
	sk.polled = true
	r.sk = sk // before the start: the result may come at once
	if err := r.p.start(&r.op, sk.fd, rearm, r.start.Add(c.timeout)); err != nil {
		unix.Close(sk.fd)
		r.finish(r, c.result(r.start, err))
		return
	}
	// A cancel that ran before the start found nothing to cancel.
	if err := ctx.Err(); err != nil {
		r.p.cancel(&r.op, err)
	}
}

// asyncConnected is an asyncRun's connOp.done.
func asyncConnected(op *connOp, err error) {
	r := op.arg.(*asyncRun)
	r.c.release(r.sk, err)
	r.finish(r, r.c.result(r.start, err))
}
