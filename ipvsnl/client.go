package ipvsnl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ErrUnavailable is returned by [Open] when the kernel has no IPVS, even
// after trying to load the module.
var ErrUnavailable = errors.New("IPVS not available in this kernel")

var errClosed = errors.New("client is closed")

// ErrAckLost marks an op whose acknowledgement never arrived (receive-buffer
// overrun, timeout or cancellation) and that could not be safely re-issued:
// the kernel may or may not have applied it.
var ErrAckLost = errors.New("acknowledgement lost; outcome unknown")

// DefaultBatchSize is the number of requests sent per sendmsg when
// [Options.BatchSize] is zero. The lab measured 1,000 per send at 0.06 of
// ipvsadm -R.
const DefaultBatchSize = 1000

const (
	// recvBufSize is the user buffer for each recvmsg. The kernel sizes dump
	// chunks after the largest buffer it has seen, up to 32 KiB.
	recvBufSize = 32 << 10
	// wantRcvBuf is the socket receive buffer requested with
	// SO_RCVBUFFORCE (the kernel doubles it): every ack of a batch is queued
	// before sendmsg returns, each costing up to ackBudget bytes.
	wantRcvBuf = 4 << 20
	ackBudget  = 1024
	wantSndBuf = 1 << 20
	// maxBatchBytes bounds one sendmsg; the kernel refuses datagrams larger
	// than the send buffer.
	maxBatchBytes = 256 << 10
	minBatchSize  = 16
)

// Options configure [Open].
type Options struct {
	// NetNSPath opens the client in the network namespace at this path
	// (/run/netns/NAME, /proc/PID/ns/net); empty means the caller's.
	NetNSPath string
	// BatchSize bounds the requests per sendmsg; 0 means DefaultBatchSize.
	BatchSize int
	// Logger receives debug and warning records; nil discards them.
	Logger *slog.Logger
	// LoadModule runs when the IPVS generic-netlink family is missing;
	// nil means `modprobe ip_vs`.
	LoadModule func(ctx context.Context) error
	// AckEach asks the kernel to acknowledge every request of a batch, not
	// only the last one (see [Client.Apply]). Slower: one more datagram and
	// recvmsg per request. The result is the same.
	AckEach bool
}

// Client talks to the kernel's IPVS over one generic-netlink socket. Its
// methods are safe for concurrent use but serialized: a long dump delays
// writes, so callers that read and write concurrently should open two.
type Client struct {
	log    *slog.Logger
	family uint16 // generic-netlink family ID of IPVS
	nsFile *os.File
	// dial opens a fresh socket; it replaces one left with unread replies.
	dial func() (*netlink.Conn, error)

	mu         sync.Mutex
	conn       *netlink.Conn
	closed     bool
	dirty      bool // replies of an interrupted exchange may still be queued
	seq        uint32
	batchSize  int
	batchBytes int // bound of one sendmsg, within the send buffer
	ackEach    bool
}

// Open opens a client, loading the ip_vs module if the IPVS family is
// missing. Keep the client: the family lookup and the module check are done
// once.
func Open(ctx context.Context, opts Options) (*Client, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var nsFile *os.File
	nsFD := 0
	if opts.NetNSPath != "" {
		f, err := os.Open(opts.NetNSPath)
		if err != nil {
			return nil, fmt.Errorf("ipvsnl: opening network namespace: %w", err)
		}
		nsFile, nsFD = f, int(f.Fd())
	}
	dial := func() (*netlink.Conn, error) {
		conn, err := netlink.Dial(unix.NETLINK_GENERIC, &netlink.Config{NetNS: nsFD, MessageBufferSize: recvBufSize})
		if err != nil {
			return nil, fmt.Errorf("ipvsnl: opening generic netlink socket: %w", err)
		}
		tuneSocket(conn, log)
		return conn, nil
	}
	conn, err := dial()
	if err != nil {
		closeFile(nsFile)
		return nil, err
	}
	load := opts.LoadModule
	if load == nil {
		load = modprobe
	}
	gc := genetlink.NewConn(conn)
	fam, err := lookupFamily(ctx, func() (genetlink.Family, error) { return gc.GetFamily(genlName) }, load)
	if err != nil {
		_ = conn.Close()
		closeFile(nsFile)
		return nil, fmt.Errorf("ipvsnl: %w", err)
	}
	c := newClient(conn, fam.ID, opts.BatchSize, log)
	c.ackEach = opts.AckEach
	c.nsFile = nsFile
	c.dial = dial
	c.fitBatchToBuffer()
	log.Debug("ipvsnl: opened", "family", fam.ID, "netns", opts.NetNSPath, "batch", c.batchSize)
	return c, nil
}

// newClient wraps an open netlink connection; tests pass a fake one.
func newClient(conn *netlink.Conn, family uint16, batch int, log *slog.Logger) *Client {
	if batch <= 0 {
		batch = DefaultBatchSize
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{log: log, family: family, conn: conn, batchSize: batch, batchBytes: maxBatchBytes, seq: 1}
}

func closeFile(f *os.File) {
	if f != nil {
		_ = f.Close()
	}
}

// Close releases the socket and the namespace handle.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	err := c.conn.Close()
	closeFile(c.nsFile)
	c.nsFile = nil
	return err
}

// lookupFamily resolves the IPVS family, loading the module once if the
// family is missing.
func lookupFamily(ctx context.Context, get func() (genetlink.Family, error), load func(context.Context) error) (genetlink.Family, error) {
	fam, err := get()
	if err == nil {
		return fam, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return fam, fmt.Errorf("looking up generic netlink family %q: %w", genlName, err)
	}
	if lerr := load(ctx); lerr != nil {
		return fam, fmt.Errorf("%w: generic netlink family %q is missing and loading ip_vs failed: %v", ErrUnavailable, genlName, lerr)
	}
	fam, err = get()
	if err != nil {
		return fam, fmt.Errorf("%w: generic netlink family %q is still missing after loading ip_vs: %v", ErrUnavailable, genlName, err)
	}
	return fam, nil
}

func modprobe(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "modprobe", "ip_vs").CombinedOutput()
	if err != nil {
		if msg := bytes.TrimSpace(out); len(msg) > 0 {
			return fmt.Errorf("modprobe ip_vs: %w: %s", err, msg)
		}
		return fmt.Errorf("modprobe ip_vs: %w", err)
	}
	return nil
}

// tuneSocket enlarges the buffers so a batch's acks fit (SO_*BUFFORCE needs
// CAP_NET_ADMIN, which IPVS writes need anyway) and asks for small acks with
// the kernel's error messages. All of it is best effort: the batch size is
// fitted to whatever receive buffer results.
func tuneSocket(conn *netlink.Conn, log *slog.Logger) {
	if rc, err := conn.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, wantRcvBuf); err != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, wantRcvBuf)
			}
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, wantSndBuf); err != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, wantSndBuf)
			}
		})
	}
	for _, o := range []netlink.ConnOption{netlink.CapAcknowledge, netlink.ExtendedAcknowledge} {
		if err := conn.SetOption(o, true); err != nil {
			log.Debug("ipvsnl: socket option unavailable", "option", o, "err", err)
		}
	}
}

// fitBatchToBuffer bounds a batch so that its replies fit the receive
// buffer even if every request fails, and its bytes the send buffer (the
// kernel refuses a datagram larger than that).
func (c *Client) fitBatchToBuffer() {
	if n, err := c.conn.ReadBuffer(); err == nil && n > 0 {
		if limit := max(n/ackBudget, minBatchSize); c.batchSize > limit {
			c.log.Warn("ipvsnl: batch size limited by the socket receive buffer", "requested", c.batchSize, "limit", limit, "rcvbuf", n)
			c.batchSize = limit
		}
	}
	if n, err := c.conn.WriteBuffer(); err == nil && n > 0 {
		c.batchBytes = min(maxBatchBytes, n/2)
	}
}

// BatchSize is the current number of requests per sendmsg; it shrinks when
// the kernel drops acks.
func (c *Client) BatchSize() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.batchSize
}

// arm applies ctx's deadline and cancellation to the socket; the returned
// func undoes it. Must be called with c.mu held.
func (c *Client) arm(ctx context.Context) (disarm func()) {
	conn := c.conn
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = conn.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	return func() {
		if !stop() {
			<-fired // never leave a late deadline behind
		}
		_ = conn.SetDeadline(time.Time{})
	}
}

// ready replaces the socket if an earlier exchange was interrupted, so no
// stale reply can be taken for a new one. Must be called with c.mu held.
func (c *Client) ready() error {
	if c.closed {
		return errClosed
	}
	if !c.dirty {
		return nil
	}
	if c.dial == nil {
		return errors.New("socket has unread replies and cannot be reopened")
	}
	conn, err := c.dial()
	if err != nil {
		return err
	}
	_ = c.conn.Close()
	c.conn, c.dirty = conn, false
	c.log.Debug("ipvsnl: reopened socket after an interrupted exchange")
	return nil
}

// nextSeqs reserves n consecutive non-zero sequence numbers.
func (c *Client) nextSeqs(n int) uint32 {
	if c.seq == 0 || uint64(c.seq)+uint64(n) > 1<<32-1 {
		c.seq = 1
	}
	first := c.seq
	c.seq += uint32(n)
	return first
}

// message wraps a generic-netlink payload for the IPVS family.
func (c *Client) message(cmd uint8, payload []byte, flags netlink.HeaderFlags) netlink.Message {
	data := make([]byte, 4+len(payload))
	data[0], data[1] = cmd, genlVersion
	copy(data[4:], payload)
	return netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(c.family), Flags: flags}, Data: data}
}

// execute runs one request/reply exchange (a dump when flags has Dump) and
// returns the generic-netlink replies, acks left out.
func (c *Client) execute(ctx context.Context, cmd uint8, payload []byte, flags netlink.HeaderFlags) ([]genetlink.Message, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := c.ready(); err != nil {
		return nil, err
	}
	disarm := c.arm(ctx)
	defer disarm()
	req := c.message(cmd, payload, flags)
	req.Header.Sequence = c.nextSeqs(1)
	msgs, err := c.conn.Execute(req)
	if err != nil {
		if kerr := kernelErr(err); kerr != nil {
			return nil, kerr
		}
		c.dirty = true
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		return nil, err
	}
	out := make([]genetlink.Message, 0, len(msgs))
	for _, m := range msgs {
		if m.Header.Type == netlink.Error || m.Header.Type == netlink.Done {
			continue
		}
		var gm genetlink.Message
		if err := gm.UnmarshalBinary(m.Data); err != nil {
			return nil, fmt.Errorf("decoding reply: %w", err)
		}
		out = append(out, gm)
	}
	return out, nil
}

// KernelError is an error the kernel returned for one request.
type KernelError struct {
	Errno syscall.Errno
	// Message is the kernel's extended-ack text, if any.
	Message string
	// Hint says what the errno usually means for IPVS, if known.
	Hint string
}

func (e *KernelError) Error() string {
	s := fmt.Sprintf("%s (%s)", e.Errno.Error(), unix.ErrnoName(e.Errno))
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Hint != "" {
		s += "; " + e.Hint
	}
	return s
}

func (e *KernelError) Unwrap() error { return e.Errno }

// kernelErr extracts the error of a netlink error message; nil when err is
// not one (a socket error instead).
func kernelErr(err error) *KernelError {
	var oe *netlink.OpError
	if !errors.As(err, &oe) {
		return nil
	}
	var se *os.SyscallError
	if errors.As(oe.Err, &se) {
		return nil
	}
	var errno syscall.Errno
	if !errors.As(oe.Err, &errno) {
		return nil
	}
	return &KernelError{Errno: errno, Message: oe.Message}
}
