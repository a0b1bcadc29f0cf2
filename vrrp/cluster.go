package vrrp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
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
}

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
		self: netip.AddrPortFrom(advIP, advPort), sendErr: rateLimiter{every: 10 * time.Second}}
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
	mc.Logger = log.New(&mlLogWriter{log: lg, limit: rateLimiter{every: 10 * time.Second}}, "", 0)
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

// broadcast queues a user message for gossip to all members.
func (c *cluster) broadcast(b []byte) {
	msg := append([]byte{msgUser}, b...)
	c.queue.QueueBroadcast(userBroadcast(msg))
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
	if err := c.ml.Leave(timeout); err != nil {
		c.log.Debug("memberlist leave", "err", err)
	}
	if err := c.ml.Shutdown(); err != nil {
		c.log.Debug("memberlist shutdown", "err", err)
	}
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

// mlLogWriter maps memberlist's "[LEVEL] memberlist: ..." lines onto slog and
// rate-limits repeats (a node with the wrong key triggers a decrypt error
// per packet).
type mlLogWriter struct {
	log   *slog.Logger
	limit rateLimiter
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
	if level > slog.LevelDebug && !w.limit.allow(line) {
		return len(p), nil
	}
	w.log.Log(context.Background(), level, line, "component", "memberlist")
	return len(p), nil
}

var _ io.Writer = (*mlLogWriter)(nil)

// rateLimiter lets one event per key through per period.
type rateLimiter struct {
	every time.Duration
	mu    sync.Mutex
	last  map[string]time.Time
}

func (r *rateLimiter) allow(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.last == nil || len(r.last) > 256 {
		r.last = map[string]time.Time{}
	}
	if t, ok := r.last[key]; ok && now.Sub(t) < r.every {
		return false
	}
	r.last[key] = now
	return true
}
