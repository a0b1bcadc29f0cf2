package ipvsnl

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// drainWait bounds reading the acks still queued after a receive-buffer
// overrun; the kernel queued all of them before sendmsg returned.
const drainWait = 200 * time.Millisecond

// Header sizes used to bound a batch's bytes.
const (
	nlmsgHdrLen = 16
	genlHdrLen  = 4
)

// Apply performs the writes in order, many per sendmsg, and returns nil when
// every op succeeded, otherwise a slice of len(ops) with each op's error (nil
// where it succeeded). A failed op does not stop the others. Each error is
// an *OpError; those from the kernel unwrap to a *KernelError and its
// syscall.Errno.
func (c *Client) Apply(ctx context.Context, ops []Op) []error {
	if len(ops) == 0 {
		return nil
	}
	var errs []error // allocated at the first failure
	fail := func(i int, err error) {
		if errs == nil {
			errs = make([]error, len(ops))
		}
		errs[i] = &OpError{Index: i, Op: ops[i], Err: err}
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	var lost []lostOp
	batch := make([]netlink.Message, 0, min(c.batchSize, len(ops)))
	index := make([]int, 0, cap(batch))
	// Requests are appended to one buffer; each message's Data is a
	// capped slice of it, so later appends never touch earlier requests.
	buf := make([]byte, 0, c.batchBytes)
	for i := 0; i < len(ops); {
		if err := ctx.Err(); err != nil {
			for ; i < len(ops); i++ {
				fail(i, fmt.Errorf("not sent: %w", err))
			}
			break
		}
		if err := c.ready(); err != nil {
			for ; i < len(ops); i++ {
				fail(i, fmt.Errorf("not sent: %w", err))
			}
			break
		}
		batch, index, buf = batch[:0], index[:0], buf[:0]
		size := 0
		for i < len(ops) && len(batch) < c.batchSize {
			start := len(buf)
			w := attrWriter{b: append(buf, uint8(ops[i].Cmd), genlVersion, 0, 0)}
			if err := appendOp(&w, ops[i]); err != nil {
				fail(i, err)
				i++
				continue
			}
			n := nlmsgHdrLen + len(w.b) - start
			if len(batch) > 0 && size+n > c.batchBytes {
				break // op i starts the next batch
			}
			buf = w.b
			batch = append(batch, netlink.Message{
				Header: netlink.Header{Type: netlink.HeaderType(c.family)},
				Data:   buf[start:len(buf):len(buf)],
			})
			index = append(index, i)
			size += n
			i++
		}
		if len(batch) == 0 {
			continue
		}
		for k, r := range c.sendBatch(ctx, batch) {
			op := index[k]
			switch {
			case r.lost:
				lost = append(lost, lostOp{index: op, cause: r.err})
			case r.err != nil:
				fail(op, withHint(ops[op], r.err))
			}
		}
	}
	if len(lost) > 0 {
		c.resolveLost(ctx, ops, lost, fail)
	}
	return errs
}

// OpError is the error of one op of [Client.Apply].
type OpError struct {
	Index int // position in the ops slice
	Op    Op
	Err   error
}

func (e *OpError) Error() string {
	return fmt.Sprintf("ipvsnl: op %d (%s): %v", e.Index, e.Op, e.Err)
}

func (e *OpError) Unwrap() error { return e.Err }

type result struct {
	done bool
	lost bool // no ack arrived; the kernel may have applied the op
	err  error
}

type lostOp struct {
	index int
	cause error
}

// sendBatch sends msgs in one sendmsg and collects one result per message,
// matching replies by sequence number. Must be called with c.mu held.
//
// Unless the client acks every request, only the last request of the batch
// asks for an ack: the kernel still answers every failed request with an
// error carrying its sequence number, handles the requests of one sendmsg
// in order before sendmsg returns, and queues its answers in that order, so
// once the last request is answered every earlier one without an error has
// succeeded. This spares a datagram and a recvmsg per request. If the
// kernel dropped replies meanwhile (ENOBUFS), silence proves nothing and the
// unanswered requests count as lost.
func (c *Client) sendBatch(ctx context.Context, msgs []netlink.Message) []result {
	res := make([]result, len(msgs))
	n := uint32(len(msgs))
	last := n - 1
	first := c.nextSeqs(len(msgs))
	for k := range msgs {
		msgs[k].Header.Sequence = first + uint32(k)
		msgs[k].Header.Flags = netlink.Request | netlink.Acknowledge
		if !c.ackEach && uint32(k) != last {
			msgs[k].Header.Flags = netlink.Request
		}
	}

	disarm := c.arm(ctx)
	defer disarm()

	if _, err := c.conn.SendMessages(msgs); err != nil {
		// A netlink datagram is taken whole or not at all: nothing ran.
		for k := range res {
			res[k] = result{done: true, err: fmt.Errorf("sending batch of %d: %w", len(msgs), err)}
		}
		return res
	}

	pending := len(msgs)
	overrun, lastSeen := false, false
	for pending > 0 && !(lastSeen && !c.ackEach) {
		var sockErr error
		// Each answer is a datagram of its own; an error comes back as an
		// error carrying its sequence number.
		for m, err := range c.conn.ReceiveIter() {
			var k uint32
			var kerr error
			switch ke := kernelErr(err); {
			case err == nil && m.Header.Type == netlink.Error:
				k = m.Header.Sequence - first
			case ke != nil:
				var oe *netlink.OpError
				errors.As(err, &oe)
				k, kerr = oe.Sequence-first, ke
			case err != nil:
				sockErr = err
				continue
			default:
				continue // not an answer to a write
			}
			if k >= n || res[k].done {
				continue // stale, from an earlier exchange
			}
			res[k] = result{done: true, err: kerr}
			pending--
			lastSeen = lastSeen || k == last
		}
		if sockErr == nil {
			continue
		}
		if errors.Is(sockErr, unix.ENOBUFS) && !overrun {
			// Some answers were dropped. The rest are already queued:
			// read them for a short while; the missing ones are lost.
			overrun = true
			_ = c.conn.SetReadDeadline(time.Now().Add(drainWait))
			continue
		}
		c.dirty = true
		cause := sockErr
		switch {
		case ctx.Err() != nil:
			cause = ctx.Err()
		case overrun:
			cause = fmt.Errorf("socket receive buffer overrun (ENOBUFS)")
		}
		for k := range res {
			if !res[k].done {
				res[k] = result{done: true, lost: true, err: cause}
			}
		}
		break
	}
	if lastSeen && !c.ackEach {
		for k := range res {
			switch {
			case res[k].done:
			case overrun:
				res[k] = result{done: true, lost: true, err: fmt.Errorf("socket receive buffer overrun (ENOBUFS)")}
			default:
				res[k].done = true // no error before the last answer: success
			}
		}
	}
	if overrun {
		old := c.batchSize
		c.batchSize = max(c.batchSize/2, minBatchSize)
		c.log.Warn("ipvsnl: kernel dropped replies (receive buffer overrun); shrinking batches", "batch", len(msgs), "from", old, "to", c.batchSize)
	}
	return res
}

// resolveLost re-issues ops whose ack was lost, one at a time and
// idempotently, so that the kernel ends up as requested whether or not the
// first attempt ran. An op is re-issued only if no later op of the same call
// touches the same object: re-running it after them could undo their work.
func (c *Client) resolveLost(ctx context.Context, ops []Op, lost []lostOp, fail func(int, error)) {
	lastSvc := map[svcKey]int{}
	lastDest := map[destKey]int{}
	for i, op := range ops {
		sk := keyOf(op.Service)
		if op.Cmd.isDest() {
			lastDest[destKey{sk, op.Dest.Address, op.Dest.Port}] = i
		} else {
			lastSvc[sk] = i
		}
	}
	for _, l := range lost {
		op := ops[l.index]
		sk := keyOf(op.Service)
		later := lastSvc[sk] > l.index
		if op.Cmd.isDest() && lastDest[destKey{sk, op.Dest.Address, op.Dest.Port}] > l.index {
			later = true
		}
		if ctx.Err() != nil || later || c.ready() != nil {
			fail(l.index, fmt.Errorf("%w (%v)", ErrAckLost, l.cause))
			continue
		}
		if err := c.reissue(ctx, op); err != nil {
			fail(l.index, withHint(op, err))
		}
	}
}

// reissue sends one op again, mapping "already there" on adds to a set and
// "already gone" on deletes to success.
func (c *Client) reissue(ctx context.Context, op Op) error {
	err := c.sendOne(ctx, op)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST) && op.Cmd == CmdNewService:
		op.Cmd = CmdSetService
		return c.sendOne(ctx, op)
	case errors.Is(err, unix.EEXIST) && op.Cmd == CmdNewDest:
		op.Cmd = CmdSetDest
		return c.sendOne(ctx, op)
	case (errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)) && (op.Cmd == CmdDelService || op.Cmd == CmdDelDest):
		return nil
	}
	return err
}

func (c *Client) sendOne(ctx context.Context, op Op) error {
	payload, err := encodeOp(op)
	if err != nil {
		return err
	}
	r := c.sendBatch(ctx, []netlink.Message{c.message(uint8(op.Cmd), payload, 0)})[0]
	if r.lost {
		return fmt.Errorf("%w (%v)", ErrAckLost, r.err)
	}
	return r.err
}

// svcKey and destKey identify kernel objects for the re-issue check.
type svcKey struct {
	family, protocol uint16
	addr             netip.Addr
	port             uint16
	fwmark           uint32
}

type destKey struct {
	svc  svcKey
	addr netip.Addr
	port uint16
}

func keyOf(s Service) svcKey {
	return svcKey{s.Family, s.Protocol, s.Address, s.Port, s.FWMark}
}

// withHint adds what an errno usually means for the op, when known.
func withHint(op Op, err error) error {
	var kerr *KernelError
	if !errors.As(err, &kerr) || kerr.Hint != "" {
		return err
	}
	h := hint(op, kerr.Errno)
	if h == "" {
		return err
	}
	cp := *kerr
	cp.Hint = h
	return &cp
}

func hint(op Op, errno error) string {
	switch {
	case errno == unix.ESRCH && op.Cmd != CmdNewService:
		return "no such service"
	case errno == unix.ENOENT && (op.Cmd == CmdSetDest || op.Cmd == CmdDelDest):
		return "no such destination"
	case errno == unix.ENOENT && (op.Cmd == CmdNewService || op.Cmd == CmdSetService):
		return fmt.Sprintf("scheduler %q or persistence engine %q unknown to the kernel (module missing?)", op.Service.Scheduler, op.Service.PEName)
	case errno == unix.EEXIST:
		return "already exists"
	case errno == unix.EINVAL && (op.Cmd == CmdNewDest || op.Cmd == CmdSetDest) && destFamily(op.Dest) == AFInet:
		return "the kernel rejects IPv4 destinations it has no route type for; in a fresh network namespace bring lo up first"
	case errno == unix.ERANGE && op.Cmd.isDest():
		return "lower threshold above upper threshold"
	}
	return ""
}
