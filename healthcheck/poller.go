package healthcheck

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// connPoller waits for non-blocking connects to finish: one epoll set, in
// which every connect in flight is registered once (EPOLLOUT|EPOLLONESHOT),
// served by one goroutine. The set's own descriptor sits in Go's poller, so
// that goroutine sleeps in the scheduler like any network read and wakes
// once per burst of completions, and one runtime timer (the read deadline on
// the set) covers the earliest connect timeout. Compared with a descriptor
// per check in Go's poller (os.NewFile), a check costs one epoll_ctl instead
// of two, no runtime poll descriptor, finalizer or deadline timer, and no
// goroutine wake-up of its own when its caller does not wait (start).
//
// Each connect is finished exactly once, by whoever first takes it out of
// the table under mu: the poller goroutine (ready or timed out) or cancel.
// Events name a connect by descriptor and generation, so an event for a
// connect already finished (its descriptor perhaps reused) is ignored.
type connPoller struct {
	epfd  int
	file  *os.File // epfd, in Go's poller
	rc    syscall.RawConn
	epoch time.Time

	mu     sync.Mutex
	ops    []*connOp // by descriptor; nil when none in flight
	gen    uint32
	heap   deadlines
	armed  int64 // deadline set on file (since epoch), or -1 for none
	broken error
}

// connOp is one connect in flight. Its descriptor is closed by whoever
// receives the outcome, never by the poller.
type connOp struct {
	fd       int
	gen      uint32
	deadline int64 // since the poller's epoch
	// done receives the outcome, exactly once: nil (connected), the socket
	// error, os.ErrDeadlineExceeded, or the error given to cancel. It runs
	// on the poller goroutine or the canceller's, and must not block.
	done func(*connOp, error)
	ch   chan error // for wait
	arg  any        // for done's use
}

func newConnPoller() (*connPoller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(epfd), "healthcheck-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	p := &connPoller{epfd: epfd, file: f, rc: rc, epoch: time.Now(), armed: -1}
	go p.loop()
	return p, nil
}

// close stops the poller goroutine; connects still in flight finish with
// an error, and later starts fail.
func (p *connPoller) close() error { return p.file.Close() }

// start registers fd, whose non-blocking connect is in progress, as op,
// and arranges for op.done to be called once it is connected, failed, or
// past deadline. op.done (and op.arg) must be set. rearm says fd is in the
// set already (a reused socket, disarmed since its last event).
func (p *connPoller) start(op *connOp, fd int, rearm bool, deadline time.Time) error {
	at := int64(deadline.Sub(p.epoch))
	p.mu.Lock()
	if p.broken != nil {
		p.mu.Unlock()
		return p.broken
	}
	p.gen++
	op.fd, op.gen, op.deadline = fd, p.gen, at
	for fd >= len(p.ops) {
		p.ops = append(p.ops, nil)
	}
	p.ops[fd] = op
	ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLONESHOT, Fd: int32(fd), Pad: int32(op.gen)}
	ctl := unix.EPOLL_CTL_ADD
	if rearm {
		ctl = unix.EPOLL_CTL_MOD
	}
	err := unix.EpollCtl(p.epfd, ctl, fd, &ev)
	if err == unix.ENOENT && rearm {
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
	}
	if err != nil {
		p.ops[fd] = nil
		p.mu.Unlock()
		return os.NewSyscallError("epoll_ctl", err)
	}
	p.heap.push(deadlineAt{at: at, fd: int32(fd), gen: op.gen})
	if p.armed < 0 || at < p.armed {
		p.arm(at)
	}
	p.mu.Unlock()
	return nil
}

// arm sets the set's read deadline; called with mu held.
func (p *connPoller) arm(at int64) {
	p.armed = at
	d := time.Time{}
	if at >= 0 {
		d = p.epoch.Add(time.Duration(at))
	}
	_ = p.file.SetReadDeadline(d)
}

// take removes op from the table if it is still in flight; called with mu
// held.
func (p *connPoller) take(fd int32, gen uint32) *connOp {
	if int(fd) >= len(p.ops) {
		return nil
	}
	op := p.ops[fd]
	if op == nil || op.gen != gen {
		return nil
	}
	p.ops[fd] = nil
	return op
}

// cancel finishes op with err unless it has finished already; it reports
// whether it did. The descriptor stays registered (disarmed or not) until
// its owner closes it, which removes it from the set.
func (p *connPoller) cancel(op *connOp, err error) bool {
	p.mu.Lock()
	got := p.take(int32(op.fd), op.gen) // op.fd and op.gen are written under mu
	p.mu.Unlock()
	if got == nil {
		return false
	}
	op.done(op, err)
	return true
}

// wait is start for a caller that blocks: it returns the outcome, or
// ctxErr() once done is closed (unblocking the caller at once), and
// whether fd went into the set. The caller closes fd afterwards.
func (p *connPoller) wait(done <-chan struct{}, ctxErr func() error, fd int, rearm bool, deadline time.Time) (bool, error) {
	// A caller that blocks would also wait for the poller goroutine to
	// wake it, so first ask the socket itself (a connect on loopback is
	// decided by now).
	if decided, err := connectDone(fd); decided {
		return false, err
	}
	op := opPool.Get().(*connOp)
	if err := p.start(op, fd, rearm, deadline); err != nil {
		opPool.Put(op)
		return false, err
	}
	var err error
	select {
	case err = <-op.ch:
	case <-done:
		if cerr := ctxErr(); p.cancel(op, cerr) {
			<-op.ch
			err = cerr
		} else {
			err = <-op.ch
		}
	}
	opPool.Put(op)
	return true, err
}

var opPool = sync.Pool{New: func() any {
	return &connOp{ch: make(chan error, 1), done: func(op *connOp, err error) { op.ch <- err }}
}}

const pollBatch = 128

// loop is the poller goroutine: it drains ready events while the set is
// readable and expires connects when the read deadline passes.
func (p *connPoller) loop() {
	events := make([]unix.EpollEvent, pollBatch)
	var fatal error
	for {
		err := p.rc.Read(func(uintptr) bool {
			for {
				n, err := unix.EpollWait(p.epfd, events, 0)
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					fatal = os.NewSyscallError("epoll_wait", err)
					return true
				}
				p.complete(events[:n])
				if n < len(events) {
					return false // drained: wait for the next edge
				}
			}
		})
		switch {
		case fatal != nil:
			p.failAll(fatal)
			return
		case err == nil || errors.Is(err, os.ErrDeadlineExceeded):
		default:
			p.failAll(err)
			return
		}
		p.expire()
	}
}

// connectDone reports whether fd's connect is decided, without waiting,
// and if so its outcome.
func connectDone(fd int) (bool, error) {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(pfd, 0)
	switch {
	case err != nil || n == 0:
		return false, nil // EINTR or in progress: wait
	case pfd[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0:
		return true, soError(fd)
	}
	return true, nil
}

// soError is the error of a connect whose socket reported an error or
// hang-up.
func soError(fd int) error {
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	switch {
	case err != nil:
		return os.NewSyscallError("getsockopt", err)
	case soErr == 0:
		return os.NewSyscallError("connect", unix.ECONNRESET)
	}
	return os.NewSyscallError("connect", unix.Errno(soErr))
}

// complete finishes the connects whose events arrived.
func (p *connPoller) complete(evs []unix.EpollEvent) {
	for i := range evs {
		ev := &evs[i]
		p.mu.Lock()
		op := p.take(ev.Fd, uint32(ev.Pad))
		p.mu.Unlock()
		if op == nil {
			continue
		}
		var err error
		if ev.Events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			err = soError(op.fd)
		}
		op.done(op, err)
	}
}

// expire finishes, with os.ErrDeadlineExceeded, every connect past its
// deadline, drops finished ones from the top of the deadline heap, and
// re-arms the timer for the earliest connect still in flight.
func (p *connPoller) expire() {
	var late []*connOp
	p.mu.Lock()
	now := int64(time.Since(p.epoch))
	for len(p.heap) > 0 {
		top := p.heap[0]
		op := (*connOp)(nil)
		if int(top.fd) < len(p.ops) {
			op = p.ops[top.fd]
		}
		inFlight := op != nil && op.gen == top.gen
		if inFlight && top.at > now {
			break
		}
		p.heap.pop()
		if inFlight {
			p.ops[top.fd] = nil
			late = append(late, op)
		}
	}
	next := int64(-1)
	if len(p.heap) > 0 {
		next = p.heap[0].at
	}
	p.arm(next)
	p.mu.Unlock()
	for _, op := range late {
		op.done(op, os.ErrDeadlineExceeded)
	}
}

// failAll finishes every connect with err; the poller is broken (which
// should never happen) and later starts fail too.
func (p *connPoller) failAll(err error) {
	p.mu.Lock()
	var all []*connOp
	for fd, op := range p.ops {
		if op != nil {
			all = append(all, op)
			p.ops[fd] = nil
		}
	}
	p.heap = p.heap[:0]
	p.broken = err
	p.mu.Unlock()
	for _, op := range all {
		op.done(op, err)
	}
}

// deadlines is a binary min-heap of connect deadlines. Entries of finished
// connects stay until they reach the top.
type deadlines []deadlineAt

type deadlineAt struct {
	at  int64
	fd  int32
	gen uint32
}

func (h *deadlines) push(d deadlineAt) {
	*h = append(*h, d)
	s := *h
	i := len(s) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if s[parent].at <= d.at {
			break
		}
		s[i] = s[parent]
		i = parent
	}
	s[i] = d
}

func (h *deadlines) pop() {
	s := *h
	n := len(s) - 1
	last := s[n]
	*h = s[:n]
	s = s[:n]
	if n == 0 {
		return
	}
	i := 0
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && s[r].at < s[c].at {
			c = r
		}
		if last.at <= s[c].at {
			break
		}
		s[i] = s[c]
		i = c
	}
	s[i] = last
}
