package vrrp

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// Defaults applied by Validate to zero-valued fields. Preempt and GARPRefresh
// are taken literally (false / 0 are meaningful), so the caller maps them.
const (
	DefaultHeartbeatInterval = 20 * time.Millisecond
	DefaultDeadAfter         = 100 * time.Millisecond
	DefaultGARPCount         = 5
	DefaultGARPInterval      = 20 * time.Millisecond
	DefaultGARPRefresh       = 10 * time.Second
	DefaultNotifyTimeout     = 5 * time.Second
	DefaultScriptInterval    = time.Second
	DefaultRejoinInterval    = time.Second
	DefaultRealtime          = 10
	KeySize                  = 32
	maxNameLen               = 64
	maxGroups                = 64
)

// Spec is everything a Node needs. Names mirror the [node], [cluster],
// [[vip_group]] and [[track_script]] sections of docs/DESIGN.md.
type Spec struct {
	Node         NodeSpec
	Cluster      *ClusterSpec // nil: standalone, this node owns every group
	Groups       []GroupSpec
	TrackScripts []TrackScriptSpec
	// Witness makes this node a voting member that holds no VIP
	// (`lvsd witness`). Groups must be empty.
	Witness bool
	// ServiceUp is the quorum of tracked services when the node starts
	// (later changes come through SetServiceQuorum); a service missing here
	// counts as up until it is reported.
	ServiceUp map[string]bool
}

// NodeSpec is [node].
type NodeSpec struct {
	Name      string
	Interface string // default interface for groups that name none
}

// ClusterSpec is [cluster].
type ClusterSpec struct {
	Bind      string   // host:port for gossip and heartbeats
	Advertise string   // default: Bind
	Peers     []string // host:port of the other members
	// Key is the 32-byte gossip key; when empty it is read from KeyFile
	// (raw 32 bytes or base64).
	Key               []byte
	KeyFile           string
	Insecure          bool     // no encryption; tests only, logged loudly
	Members           []string // expected member names, self included
	Witnesses         []string // subset of Members that only vote
	HeartbeatInterval time.Duration
	DeadAfter         time.Duration
	// RejoinInterval is how often configured peers that memberlist thinks
	// dead are joined again (memberlist does not re-merge after a partition).
	RejoinInterval time.Duration
	// Realtime is the SCHED_RR priority (1..99) of the process, like
	// keepalived's vrrp_rt_priority; 0 means DefaultRealtime, -1 normal
	// scheduling. Under a CPU hog on both cores, normal scheduling let
	// heartbeats stall past dead_after (6 false failovers in 150 s), SCHED_RR
	// none (bench/failover -stability).
	Realtime int
}

// GroupSpec is one [[vip_group]].
type GroupSpec struct {
	Name           string
	Interface      string
	Addresses      []netip.Prefix
	Priority       int // 1..254
	Preempt        bool
	PreemptDelay   time.Duration
	GARPCount      int
	GARPInterval   time.Duration
	GARPRefresh    time.Duration // 0 disables the periodic refresh
	TrackInterface []TrackInterface
	TrackScript    []TrackRef
	TrackService   []TrackRef
	NotifyMaster   []string
	NotifyBackup   []string
	NotifyFault    []string
	NotifyStop     []string
	NotifyTimeout  time.Duration
	// Override and OverrideSince restore an operator's standing override
	// (demote, promote) from before a restart.
	Override      Override
	OverrideSince time.Time
}

// TrackInterface lowers the priority by Weight (negative) while the link is
// down; Weight 0 puts the group into fault.
type TrackInterface struct {
	Name   string
	Weight int
}

// TrackRef names a [[track_script]] or a service. Weight nil means the
// script's own weight (for services: 0, i.e. fault).
type TrackRef struct {
	Name   string
	Weight *int
}

// TrackScriptSpec is one [[track_script]]. A negative Weight is added while
// failing, a positive one while succeeding (keepalived's convention), 0 means
// fault while failing.
type TrackScriptSpec struct {
	Name     string
	Command  []string
	Interval time.Duration
	Timeout  time.Duration
	Weight   int
	Rise     int
	Fall     int
}

// Validate applies defaults to zero-valued fields and reports every problem,
// each naming the section and field.
func (s *Spec) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if err := checkName(s.Node.Name); err != nil {
		bad("node.name: %v", err)
	}
	if s.Witness {
		if len(s.Groups) > 0 {
			bad("witness: must have no vip_group (has %d)", len(s.Groups))
		}
		if s.Cluster == nil {
			bad("witness: needs a [cluster] section")
		}
	}
	scripts := map[string]*TrackScriptSpec{}
	for i := range s.TrackScripts {
		ts := &s.TrackScripts[i]
		where := fmt.Sprintf("track_script[%d] %q", i, ts.Name)
		if err := checkName(ts.Name); err != nil {
			bad("%s: name: %v", where, err)
		} else if scripts[ts.Name] != nil {
			bad("%s: duplicate name", where)
		}
		scripts[ts.Name] = ts
		if len(ts.Command) == 0 || ts.Command[0] == "" {
			bad("%s: command is empty", where)
		}
		if ts.Interval == 0 {
			ts.Interval = DefaultScriptInterval
		}
		if ts.Timeout == 0 {
			ts.Timeout = ts.Interval
		}
		if ts.Interval < 0 || ts.Timeout < 0 {
			bad("%s: interval and timeout must be positive", where)
		}
		if ts.Timeout > ts.Interval {
			bad("%s: timeout %v longer than interval %v", where, ts.Timeout, ts.Interval)
		}
		if ts.Rise == 0 {
			ts.Rise = 1
		}
		if ts.Fall == 0 {
			ts.Fall = 1
		}
		if ts.Rise < 0 || ts.Fall < 0 {
			bad("%s: rise and fall must be positive", where)
		}
		if ts.Weight < -253 || ts.Weight > 253 {
			bad("%s: weight %d out of range -253..253", where, ts.Weight)
		}
	}
	groups := map[string]bool{}
	vips := map[netip.Addr]string{}
	for i := range s.Groups {
		g := &s.Groups[i]
		where := fmt.Sprintf("vip_group[%d] %q", i, g.Name)
		if err := checkName(g.Name); err != nil {
			bad("%s: name: %v", where, err)
		} else if groups[g.Name] {
			bad("%s: duplicate name", where)
		}
		groups[g.Name] = true
		if g.Interface == "" {
			g.Interface = s.Node.Interface
		}
		if g.Interface == "" {
			bad("%s: interface: none given and node.interface is empty", where)
		}
		if len(g.Addresses) == 0 {
			bad("%s: addresses: empty", where)
		}
		for _, p := range g.Addresses {
			if !p.IsValid() {
				bad("%s: addresses: invalid prefix", where)
				continue
			}
			if other, dup := vips[p.Addr()]; dup {
				bad("%s: address %s already in vip_group %q", where, p.Addr(), other)
			}
			vips[p.Addr()] = g.Name
		}
		if g.Priority < 1 || g.Priority > 254 {
			bad("%s: priority %d out of range 1..254", where, g.Priority)
		}
		if g.PreemptDelay < 0 {
			bad("%s: preempt_delay is negative", where)
		}
		if g.GARPCount == 0 {
			g.GARPCount = DefaultGARPCount
		}
		if g.GARPInterval == 0 {
			g.GARPInterval = DefaultGARPInterval
		}
		if g.GARPCount < 0 || g.GARPCount > 100 {
			bad("%s: garp_count %d out of range 1..100", where, g.GARPCount)
		}
		if g.GARPInterval < 0 || g.GARPRefresh < 0 {
			bad("%s: garp_interval and garp_refresh must not be negative", where)
		}
		if g.NotifyTimeout == 0 {
			g.NotifyTimeout = DefaultNotifyTimeout
		}
		if g.NotifyTimeout < 0 {
			bad("%s: notify_timeout is negative", where)
		}
		for j, ti := range g.TrackInterface {
			if ti.Name == "" {
				bad("%s: track_interface[%d]: name is empty", where, j)
			}
			if ti.Weight < -253 || ti.Weight > 0 {
				bad("%s: track_interface[%d] %q: weight %d out of range -253..0", where, j, ti.Name, ti.Weight)
			}
		}
		for j, tr := range g.TrackScript {
			if scripts[tr.Name] == nil {
				bad("%s: track_script[%d]: no [[track_script]] named %q", where, j, tr.Name)
			}
			if tr.Weight != nil && (*tr.Weight < -253 || *tr.Weight > 253) {
				bad("%s: track_script[%d] %q: weight %d out of range -253..253", where, j, tr.Name, *tr.Weight)
			}
		}
		for j, tr := range g.TrackService {
			if tr.Name == "" {
				bad("%s: track_service[%d]: name is empty", where, j)
			}
			if tr.Weight != nil && (*tr.Weight < -253 || *tr.Weight > 0) {
				bad("%s: track_service[%d] %q: weight %d out of range -253..0", where, j, tr.Name, *tr.Weight)
			}
		}
	}
	if c := s.Cluster; c != nil {
		errs = append(errs, c.validate(s.Node.Name)...)
		if size := s.heartbeatSize(); size > maxHeartbeat {
			bad("vip_group: %d groups need a %d-byte heartbeat (names, votes, demotion stamps), at most %d fit one packet: use fewer groups or shorter group and node names", len(s.Groups), size, maxHeartbeat)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("vrrp: invalid spec: %w", errors.Join(errs...))
	}
	return nil
}

func (c *ClusterSpec) validate(self string) []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("cluster."+format, a...)) }
	if _, _, err := splitHostPort(c.Bind); err != nil {
		bad("bind %q: %v", c.Bind, err)
	}
	if c.Advertise != "" {
		if _, _, err := splitHostPort(c.Advertise); err != nil {
			bad("advertise %q: %v", c.Advertise, err)
		}
	}
	for i, p := range c.Peers {
		if _, _, err := splitHostPort(p); err != nil {
			bad("peers[%d] %q: %v", i, p, err)
		}
	}
	if !c.Insecure && len(c.Key) == 0 && c.KeyFile == "" {
		bad("key_file: required unless insecure = true")
	}
	if len(c.Key) != 0 && len(c.Key) != KeySize {
		bad("key: %d bytes, want %d", len(c.Key), KeySize)
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.DeadAfter == 0 {
		c.DeadAfter = DefaultDeadAfter
	}
	if c.RejoinInterval == 0 {
		c.RejoinInterval = DefaultRejoinInterval
	}
	if c.HeartbeatInterval < time.Millisecond {
		bad("heartbeat_interval %v: must be at least 1ms", c.HeartbeatInterval)
	}
	if c.DeadAfter < 2*c.HeartbeatInterval {
		bad("dead_after %v: must be at least twice heartbeat_interval (%v)", c.DeadAfter, c.HeartbeatInterval)
	}
	if c.Realtime == 0 {
		c.Realtime = DefaultRealtime
	}
	if c.Realtime < -1 || c.Realtime > 99 {
		bad("realtime %d: out of range 1..99 (0: default, -1: off)", c.Realtime)
	}
	members := map[string]bool{}
	for i, m := range c.Members {
		if err := checkName(m); err != nil {
			bad("members[%d]: %v", i, err)
		}
		if members[m] {
			bad("members[%d] %q: duplicate", i, m)
		}
		members[m] = true
	}
	if len(c.Members) > 0 && !members[self] {
		bad("members: does not list this node (%q)", self)
	}
	for i, w := range c.Witnesses {
		if !members[w] {
			bad("witnesses[%d] %q: not in members", i, w)
		}
	}
	if len(c.Witnesses) > 0 && len(c.Members) < 3 {
		bad("witnesses: need at least 3 members for a majority, have %d", len(c.Members))
	}
	return errs
}

// heartbeatSize is the largest heartbeat this node's own groups make: every
// group demoted (stamped), with an 8-byte digest, and with witnesses (only
// then are votes sent) a vote for the longest member name. (Votes for
// groups only peers hold come on top; a witness holds none.)
func (s *Spec) heartbeatSize() int {
	vote := 0
	if len(s.Cluster.Witnesses) > 0 {
		vote = len(s.Node.Name)
		for _, m := range s.Cluster.Members {
			vote = max(vote, len(m))
		}
	}
	size := 3 + 8 + 8 + 1 + len(s.Node.Name) + 1 + 1 + 8 // kind, version, flags, boot, seq, name, group count, digest
	for _, g := range s.Groups {
		size += 1 + len(g.Name) + 2 + 1 + vote + 8
	}
	return size
}

func checkName(n string) error {
	switch {
	case n == "":
		return errors.New("empty")
	case len(n) > maxNameLen:
		return fmt.Errorf("%q longer than %d bytes", n, maxNameLen)
	case strings.ContainsAny(n, " \t\r\n\x00"):
		return fmt.Errorf("%q contains white space", n)
	}
	return nil
}

func splitHostPort(s string) (netip.Addr, uint16, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("want ip:port: %w", err)
	}
	if ap.Port() == 0 {
		return netip.Addr{}, 0, errors.New("port 0")
	}
	return ap.Addr().Unmap(), ap.Port(), nil
}

// LoadKey reads a gossip key file: exactly 32 raw bytes, or their base64
// encoding (surrounding white space ignored).
func LoadKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading gossip key: %w", err)
	}
	if len(b) == KeySize {
		return b, nil
	}
	s := strings.TrimSpace(string(b))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding} {
		if k, err := enc.DecodeString(s); err == nil && len(k) == KeySize {
			return k, nil
		}
	}
	return nil, fmt.Errorf("gossip key %s: want %d raw bytes or their base64, got %d bytes", path, KeySize, len(b))
}

// hostPort is used where net APIs want a string.
func hostPort(a netip.Addr, p uint16) string { return net.JoinHostPort(a.String(), fmt.Sprint(p)) }
