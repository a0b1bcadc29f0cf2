package vrrp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// StateDelegate lets the daemon replicate its runtime state through
// memberlist's push-pull anti-entropy (full state exchanged on join and
// periodically).
type StateDelegate interface {
	LocalState() []byte
	MergeRemoteState(buf []byte)
}

// MemberInfo is memberlist's view of one member.
type MemberInfo struct {
	Name  string
	Addr  string
	State string // alive, suspect, dead, left
}

// cluster wraps memberlist: encrypted transport for heartbeats (best-effort
// UDP), gossip broadcasts, push-pull state, and re-joining after partitions.
type cluster struct {
	ml      *memberlist.Memberlist
	log     *slog.Logger
	self    netip.AddrPort
	peers   []*memberlist.Node // built from configured addresses, not membership
	queue   *memberlist.TransmitLimitedQueue
	state   *atomic.Pointer[StateDelegate] // the Node's; set at any time
	onMsg   func(kind byte, payload []byte, at time.Time)
	rejoin  time.Duration
	sendErr rateLimiter
	// maxBroadcast is the longest user broadcast (kind byte included) that
	// fits one gossip packet; memberlist never sends a longer one and never
	// drops it from the queue either.
	maxBroadcast int

	mu      sync.Mutex
	closed  bool
	syncing map[string]bool // peer -> a state exchange is due again after the running one
	wg      sync.WaitGroup  // running state exchanges
}

// Gossip packet budget: memberlist packs broadcasts into UDPBufferSize bytes
// less its compound header (2), the encryption overhead (version, nonce and
// tag: 29 bytes; protocol version 1 pads too: 45) and, per user message, the
// compound entry length (2) and the user message type (1).
const (
	mlCompoundHeader = 2
	mlEncrypt        = 1 + 12 + 16
	mlEncryptPadded  = mlEncrypt + 16
	mlPerUserMsg     = 2 + 1
)

// maxQueuedBroadcasts bounds the gossip queue while no peer takes from it
// (a partition): the oldest messages go first; the digest exchange repairs
// what they carried once the peer is back.
const maxQueuedBroadcasts = 1024

// newCluster starts memberlist. onMsg receives heartbeats and user messages
// (payload without the kind byte); it must not block and must copy what it
// keeps.
func newCluster(c *ClusterSpec, name string, lg *slog.Logger, state *atomic.Pointer[StateDelegate],
	onMsg func(byte, []byte, time.Time)) (*cluster, error) {
	bindIP, bindPort, err := splitHostPort(c.Bind)
	if err != nil {
		return nil, fmt.Errorf("cluster.bind %q: %w", c.Bind, err)
	}
	adv := c.Advertise
	if adv == "" {
		adv = c.Bind
	}
	advIP, advPort, err := splitHostPort(adv)
	if err != nil {
		return nil, fmt.Errorf("cluster.advertise %q: %w", adv, err)
	}
	cl := &cluster{log: lg, onMsg: onMsg, rejoin: c.RejoinInterval, state: state,
		self: netip.AddrPortFrom(advIP, advPort), sendErr: rateLimiter{every: 10 * time.Second},
		syncing: map[string]bool{}}
	for i, p := range c.Peers {
		ip, port, err := splitHostPort(p)
		if err != nil {
			return nil, fmt.Errorf("cluster.peers[%d] %q: %w", i, p, err)
		}
		if netip.AddrPortFrom(ip, port) == cl.self || (ip == bindIP && port == bindPort) {
			continue // our own address in a shared peer list
		}
		cl.peers = append(cl.peers, &memberlist.Node{Addr: net.IP(ip.AsSlice()), Port: port})
	}

	mc := memberlist.DefaultLANConfig()
	mc.Name = name
	mc.BindAddr, mc.BindPort = bindIP.String(), int(bindPort)
	mc.AdvertiseAddr, mc.AdvertisePort = advIP.String(), int(advPort)
	// Liveness for the election comes from heartbeats; memberlist only has to
	// keep gossip flowing, but it should still notice changes within seconds.
	mc.ProbeInterval = 500 * time.Millisecond
	mc.ProbeTimeout = 250 * time.Millisecond
	mc.SuspicionMult = 3
	mc.GossipInterval = 100 * time.Millisecond
	mc.GossipToTheDeadTime = 5 * time.Second
	mc.PushPullInterval = 15 * time.Second
	mc.TCPTimeout = time.Second
	mc.DeadNodeReclaimTime = time.Second // a restarted node may come back on a new address
	mc.EnableCompression = false         // heartbeats are tiny; save the CPU
	mc.Delegate = &mlDelegate{c: cl}
	mc.Logger = log.New(newMLLogWriter(lg), "", 0)
	cl.maxBroadcast = mc.UDPBufferSize - mlCompoundHeader - mlPerUserMsg
	if c.Insecure {
		lg.Warn("GOSSIP ENCRYPTION DISABLED (cluster.insecure = true): any host that reaches " + c.Bind +
			" can join the cluster and steal the VIPs; use this only in tests")
	} else {
		key := c.Key
		if len(key) == 0 {
			if key, err = LoadKey(c.KeyFile); err != nil {
				return nil, fmt.Errorf("cluster.key_file: %w", err)
			}
		}
		if len(key) != KeySize {
			return nil, fmt.Errorf("cluster key: %d bytes, want %d", len(key), KeySize)
		}
		mc.SecretKey = append([]byte(nil), key...)
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
		cl.maxBroadcast -= mlEncrypt
		if mc.ProtocolVersion < 2 {
			cl.maxBroadcast -= mlEncryptPadded - mlEncrypt
		}
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("starting memberlist on %s: %w", c.Bind, err)
	}
	cl.ml = ml
	cl.queue = &memberlist.TransmitLimitedQueue{NumNodes: ml.NumMembers, RetransmitMult: 3}
	return cl, nil
}

// send delivers b (kind byte included) to every configured peer over
// memberlist's encrypted packet path. It addresses peers by their configured
// address, so it works even while memberlist thinks them dead (partitions).
func (c *cluster) send(b []byte) {
	for _, p := range c.peers {
		if err := c.ml.SendBestEffort(p, b); err != nil && c.sendErr.allow(p.Address()) {
			c.log.Debug("heartbeat send failed", "peer", p.Address(), "err", err)
		}
	}
}

// broadcast queues a user message for gossip to all members. A message
// that cannot fit one gossip packet is refused: memberlist would keep it
// queued forever without ever sending it.
func (c *cluster) broadcast(b []byte) error {
	if len(b) > c.maxBroadcast-1 {
		return fmt.Errorf("vrrp: broadcast of %d bytes, at most %d fit a gossip packet", len(b), c.maxBroadcast-1)
	}
	msg := append([]byte{msgUser}, b...)
	c.queue.QueueBroadcast(userBroadcast(msg))
	c.queue.Prune(maxQueuedBroadcasts)
	return nil
}

// MaxBroadcast is the longest message Broadcast accepts (0 without a
// cluster): 1,365 bytes with a key, 1,394 without. Larger state goes through
// ExchangeState.
func (n *Node) MaxBroadcast() int {
	if cl := n.cl.Load(); cl != nil {
		return cl.maxBroadcast - 1
	}
	return 0
}

// QueuedBroadcasts is the number of messages waiting in the gossip queue.
func (n *Node) QueuedBroadcasts() int {
	if cl := n.cl.Load(); cl != nil {
		return cl.queue.NumQueued()
	}
	return 0
}

// ExchangeState starts a push-pull with the named peer: both sides send their
// full StateDelegate state over memberlist's encrypted TCP and merge the
// other's. It returns at once; one exchange per peer runs at a time (a
// request while one runs makes it run once more). It fails if memberlist
// does not see the peer: the periodic re-join exchanges state with it then.
func (n *Node) ExchangeState(peer string) error {
	cl := n.cl.Load()
	if cl == nil {
		return errors.New("vrrp: state exchange: no cluster (standalone, or not running)")
	}
	return cl.exchangeState(peer)
}

func (c *cluster) exchangeState(peer string) error {
	var addr string
	for _, m := range c.ml.Members() {
		if m.Name == peer && m.State != memberlist.StateDead && m.State != memberlist.StateLeft {
			addr = m.Address()
		}
	}
	if addr == "" {
		return fmt.Errorf("vrrp: state exchange: %s is not a live memberlist member", peer)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("vrrp: state exchange: cluster closed")
	}
	if _, running := c.syncing[peer]; running {
		c.syncing[peer] = true
		return nil
	}
	c.syncing[peer] = false
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			// Join is memberlist's only exported push-pull with one node; for a
			// member it already knows it only exchanges and merges state.
			if _, err := c.ml.Join([]string{addr}); err != nil && c.sendErr.allow("exchange "+peer) {
				c.log.Info("state exchange with peer failed; the periodic push-pull retries", "peer", peer, "addr", addr, "err", err)
			}
			c.mu.Lock()
			if again := c.syncing[peer]; !again || c.closed {
				delete(c.syncing, peer)
				c.mu.Unlock()
				return
			}
			c.syncing[peer] = false
			c.mu.Unlock()
		}
	}()
	return nil
}

// run re-joins configured peers that memberlist does not see alive, until
// ctx ends. memberlist never re-merges a healed partition on its own.
func (c *cluster) run(ctx context.Context) {
	t := time.NewTicker(c.rejoin)
	defer t.Stop()
	failing := map[string]bool{}
	for {
		alive := map[string]bool{}
		for _, m := range c.ml.Members() {
			if m.State == memberlist.StateAlive {
				alive[m.Address()] = true
			}
		}
		for _, p := range c.peers {
			addr := p.Address()
			if alive[addr] {
				delete(failing, addr)
				continue
			}
			if _, err := c.ml.Join([]string{addr}); err != nil {
				if !failing[addr] {
					c.log.Info("joining peer failed; will retry", "peer", addr, "err", err)
				}
				failing[addr] = true
			} else {
				if failing[addr] {
					c.log.Info("joined peer", "peer", addr)
				}
				delete(failing, addr)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *cluster) members() []MemberInfo {
	var out []MemberInfo
	for _, m := range c.ml.Members() {
		out = append(out, MemberInfo{Name: m.Name, Addr: m.Address(), State: memberState(m.State)})
	}
	return out
}

func memberState(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	}
	return fmt.Sprintf("state(%d)", s)
}

// close leaves the cluster (bounded by timeout) and stops memberlist.
func (c *cluster) close(timeout time.Duration) {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	if err := c.ml.Leave(timeout); err != nil {
		c.log.Debug("memberlist leave", "err", err)
	}
	if err := c.ml.Shutdown(); err != nil {
		c.log.Debug("memberlist shutdown", "err", err)
	}
	c.wg.Wait() // bounded by memberlist's TCP timeout
}

type mlDelegate struct{ c *cluster }

func (d *mlDelegate) NodeMeta(int) []byte { return nil }

func (d *mlDelegate) NotifyMsg(b []byte) {
	if len(b) == 0 {
		return
	}
	d.c.onMsg(b[0], b[1:], time.Now())
}

func (d *mlDelegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.c.queue.GetBroadcasts(overhead, limit)
}

func (d *mlDelegate) LocalState(bool) []byte {
	if sd := d.c.state.Load(); sd != nil {
		return (*sd).LocalState()
	}
	return nil
}

func (d *mlDelegate) MergeRemoteState(buf []byte, _ bool) {
	if sd := d.c.state.Load(); sd != nil && len(buf) > 0 {
		(*sd).MergeRemoteState(buf)
	}
}

type userBroadcast []byte

func (b userBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b userBroadcast) Message() []byte                       { return b }
func (b userBroadcast) Finished()                             {}

// mlLogWriter maps memberlist's "[LEVEL] memberlist: ..." lines onto slog.
// Anyone who reaches the gossip port can make memberlist log (every packet
// that fails to decrypt or decode is a line naming its source), so the
// writer limits lines twice: once per message with its addresses and numbers
// blanked (one line per kind of failure per period, whatever the sender),
// and by a token bucket over all lines; what it drops it counts and reports
// in one summary line per period.
type mlLogWriter struct {
	log   *slog.Logger
	every time.Duration // per message kind, and the summary period
	rate  float64       // lines per second overall...
	burst float64       // ...after a burst of this many

	mu         sync.Mutex
	last       map[string]time.Time // message kind -> last logged
	tokens     float64
	refilled   time.Time
	suppressed int
	summary    *time.Timer // pending summary of the suppressed lines
}

// maxLogKinds bounds the per-kind map; a line of a new kind while it is
// full (after dropping stale kinds) counts as suppressed.
const maxLogKinds = 256

func newMLLogWriter(lg *slog.Logger) *mlLogWriter {
	return &mlLogWriter{log: lg, every: 10 * time.Second, rate: 1, burst: 20}
}

func (w *mlLogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(bytes.TrimRight(p, "\n")))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo,
		"[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if strings.HasPrefix(line, prefix) {
			level, line = l, strings.TrimSpace(strings.TrimPrefix(line, prefix))
			break
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	if !w.log.Enabled(context.Background(), level) || !w.allow(logKind(line), time.Now()) {
		return len(p), nil
	}
	w.log.Log(context.Background(), level, line, "component", "memberlist")
	return len(p), nil
}

func (w *mlLogWriter) allow(kind string, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.last == nil {
		w.last, w.tokens, w.refilled = map[string]time.Time{}, w.burst, now
	}
	w.tokens = min(w.burst, w.tokens+now.Sub(w.refilled).Seconds()*w.rate)
	w.refilled = now
	if t, ok := w.last[kind]; ok && now.Sub(t) < w.every {
		return w.suppressLocked()
	}
	if _, ok := w.last[kind]; !ok && len(w.last) >= maxLogKinds {
		for k, t := range w.last {
			if now.Sub(t) >= w.every {
				delete(w.last, k)
			}
		}
		if len(w.last) >= maxLogKinds {
			return w.suppressLocked()
		}
	}
	if w.tokens < 1 {
		return w.suppressLocked()
	}
	w.tokens--
	w.last[kind] = now
	return true
}

// suppressLocked counts a dropped line and makes sure a summary follows.
func (w *mlLogWriter) suppressLocked() bool {
	w.suppressed++
	if w.summary == nil {
		w.summary = time.AfterFunc(w.every, w.flush)
	}
	return false
}

// flush logs how many lines were dropped since the last summary.
func (w *mlLogWriter) flush() {
	w.mu.Lock()
	n := w.suppressed
	w.suppressed, w.summary = 0, nil
	w.mu.Unlock()
	if n > 0 {
		w.log.Warn("memberlist log lines suppressed (repeats, or more than the overall rate)",
			"component", "memberlist", "suppressed", n, "period", w.every.String(),
			"rate_per_sec", strconv.FormatFloat(w.rate, 'g', -1, 64))
	}
}

var (
	logIPv6Re   = regexp.MustCompile(`\[[0-9A-Za-z:.%_-]*\]|(?:[0-9A-Fa-f]{0,4}:){2,}[0-9A-Fa-f.]*(?:%[0-9A-Za-z_.-]+)?`)
	logDigitsRe = regexp.MustCompile(`[0-9]+`)
)

// logKind is the line with the things that vary by sender blanked:
// addresses, ports, sizes and other numbers.
func logKind(line string) string {
	k := logDigitsRe.ReplaceAllString(logIPv6Re.ReplaceAllString(line, "ADDR"), "N")
	if len(k) > 200 {
		k = k[:200]
	}
	return k
}

var _ io.Writer = (*mlLogWriter)(nil)

// rateLimiter lets one event per key through per period. Its keys are few
// (configured peers); past 256 it refuses new keys until old ones expire.
type rateLimiter struct {
	every time.Duration
	mu    sync.Mutex
	last  map[string]time.Time
}

func (r *rateLimiter) allow(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.last == nil {
		r.last = map[string]time.Time{}
	}
	if t, ok := r.last[key]; ok && now.Sub(t) < r.every {
		return false
	}
	if _, ok := r.last[key]; !ok && len(r.last) >= 256 {
		for k, t := range r.last {
			if now.Sub(t) >= r.every {
				delete(r.last, k)
			}
		}
		if len(r.last) >= 256 {
			return false
		}
	}
	r.last[key] = now
	return true
}
