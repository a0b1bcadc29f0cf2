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
// connect, a wait on Go's poller through os.File, and a close with RST
// (linger 0) so no TIME_WAIT sockets pile up on the director.
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
	if err := ctx.Err(); err != nil {
		return err
	}
	family := unix.AF_INET6
	if t.Addr.Unmap().Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		unix.Close(fd)
		return os.NewSyscallError("setsockopt", err)
	}
	if c.source.IsValid() {
		if (family == unix.AF_INET) != c.source.Unmap().Is4() {
			unix.Close(fd)
			return fmt.Errorf("source %s and target %s are of different address families", c.source, t.Addr)
		}
		if err := unix.Bind(fd, sockaddr(Target{Addr: c.source})); err != nil {
			unix.Close(fd)
			return os.NewSyscallError("bind", err)
		}
	}
	switch err := unix.Connect(fd, sockaddr(t)); err {
	case nil:
		unix.Close(fd)
		return nil
	case unix.EINPROGRESS:
	default:
		unix.Close(fd)
		return os.NewSyscallError("connect", err)
	}
	// os.NewFile registers the non-blocking fd with the runtime poller;
	// closing the File closes the socket.
	f := os.NewFile(uintptr(fd), "tcp-check")
	defer f.Close()
	if err := f.SetWriteDeadline(deadline); err != nil {
		return err
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	// RawConn.Write forgets readiness seen before it runs, so the callback
	// first asks the socket itself (poll with no wait), and only waits for
	// the poller's next edge while the connect is still in progress.
	var soErr int
	werr := rc.Write(func(fd uintptr) bool {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, perr := unix.Poll(pfd, 0)
		switch {
		case perr == unix.EINTR:
			return false
		case perr != nil:
			err = os.NewSyscallError("poll", perr)
			return true
		case n == 0:
			return false // SYN sent, no answer yet
		case pfd[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0:
			soErr, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
			if err == nil && soErr == 0 {
				soErr = int(unix.ECONNRESET)
			}
		}
		return true
	})
	switch {
	case werr != nil:
		return werr
	case err != nil:
		return err
	case soErr != 0:
		return os.NewSyscallError("connect", unix.Errno(soErr))
	}
	return nil
}
