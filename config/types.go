package config

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config is a loaded, defaulted and validated lvsd configuration. Treat it as
// read-only: a Loader shares unchanged parts (services of unchanged files are
// the same *Service pointers) between successive loads, which makes reload
// diffs cheap (pointer-equal services are unchanged).
type Config struct {
	// File is the main config file; Files lists every file read, main first.
	File  string
	Files []string

	Node    Node
	IPVS    IPVS
	Cluster *Cluster // nil: standalone, this node owns every vip_group
	Control Control
	Metrics Metrics

	TrackScripts []*TrackScript
	VIPGroups    []*VIPGroup
	Services     []*Service

	// loaded: made by Load, so Services never changes and Service can
	// index them (on first use, so a reload that needs no lookup pays
	// nothing). Otherwise Service scans.
	loaded     bool
	byNameOnce sync.Once
	byName     map[string]*Service
}

// NeedsIPVS reports whether the config needs the kernel's IPVS at all: a
// config without services (and without connection sync) runs VRRP-only.
func (c *Config) NeedsIPVS() bool { return len(c.Services) > 0 || c.IPVS.Sync.Enabled }

// Service returns the service with the given name, or nil. It is a map
// lookup in a loaded Config.
func (c *Config) Service(name string) *Service {
	if c.loaded {
		c.byNameOnce.Do(func() {
			c.byName = make(map[string]*Service, len(c.Services))
			for _, s := range c.Services {
				if _, dup := c.byName[s.Name]; !dup {
					c.byName[s.Name] = s
				}
			}
		})
		return c.byName[name]
	}
	for _, s := range c.Services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// VIPGroup returns the vip group with the given name, or nil.
func (c *Config) VIPGroup(name string) *VIPGroup {
	for _, g := range c.VIPGroups {
		if g.Name == name {
			return g
		}
	}
	return nil
}

// Node is [node].
type Node struct {
	Name      string // default: the host name
	Interface string // default interface for VIPs, GARP and sync; default ""
	StateDir  string // default "/var/lib/lvsd"
}

// IPVS is [ipvs].
type IPVS struct {
	ExpireNodestConn        bool          // default true
	ExpireQuiescentTemplate bool          // default true
	ResyncInterval          time.Duration // default 30s; 0 disables the periodic resync
	Sync                    IPVSSync
}

// IPVSSync is [ipvs.sync], the kernel's connection sync daemon.
type IPVSSync struct {
	Enabled   bool   // default false
	Interface string // default: node.interface; required when enabled
	SyncID    uint8  // default 0
}

// Cluster is [cluster]. Its presence turns on the gossip election.
type Cluster struct {
	Bind      netip.AddrPort // required, ip:port
	Advertise netip.AddrPort // default: Bind (required when Bind is a wildcard)
	Peers     []HostPort
	// KeyFile is the gossip key file (resolved against the config file's
	// directory) and Key its 32 bytes, read at load time. Both are empty
	// when Insecure.
	KeyFile           string
	Key               []byte        `json:"-"`
	Insecure          bool          // default false; tests only
	Members           []string      // expected members; quorum is a majority of these
	Witnesses         []string      // subset of Members that hold no VIP
	HeartbeatInterval time.Duration // default 20ms
	DeadAfter         time.Duration // default 100ms; must exceed HeartbeatInterval
	// RealtimePriority runs lvsd with SCHED_RR at this priority (1..99), as
	// keepalived's vrrp_rt_priority, so a loaded host cannot starve the
	// heartbeats; 0 keeps normal scheduling. Default 10.
	RealtimePriority int
	Pos              Pos
}

// HostPort is a peer address: an IP and a port (names are refused: the
// election dials addresses).
type HostPort struct {
	Host string
	Port uint16
}

func (h HostPort) String() string {
	if a, err := netip.ParseAddr(h.Host); err == nil {
		return netip.AddrPortFrom(a, h.Port).String()
	}
	return h.Host + ":" + strconv.Itoa(int(h.Port))
}

// Control is [control].
type Control struct {
	Socket    string         // default "/run/lvsd/lvsd.sock"
	Listen    netip.AddrPort // TCP control API; invalid (zero) = off, the default
	TokenFile string         // required when Listen is set; resolved against the config file's directory
}

// Metrics is [metrics].
type Metrics struct {
	Listen netip.AddrPort // Prometheus /metrics; zero = off, the default
	// PerBackend exports the per-backend series (IPVS counters, health,
	// weight and checks of every backend); default true. false keeps the
	// per-service, election, cluster and reconcile series only.
	PerBackend bool
}

// TrackScript is one [[track_script]].
type TrackScript struct {
	Name     string
	Command  []string      // required; argv, no shell
	Interval time.Duration // default 1s
	Timeout  time.Duration // default Interval/2; must be below Interval
	Weight   int           // -253..253, default 0 (= fault while failing)
	Rise     int           // default 1
	Fall     int           // default 1
	Pos      Pos
}

// VIPGroup is one [[vip_group]]: addresses that move together.
type VIPGroup struct {
	Name         string
	Interface    string         // default node.interface; required
	Addresses    []netip.Prefix // address with prefix length, e.g. 198.18.0.100/32
	Priority     int            // 1..254, default 100
	Preempt      bool           // default true
	PreemptDelay time.Duration  // default 0; only with Preempt
	GARPCount    int            // default 5
	GARPInterval time.Duration  // default 20ms
	GARPRefresh  time.Duration  // default 10s; 0 disables the periodic refresh

	TrackInterfaces []TrackRef // Weight default 0 (= fault when down)
	TrackScripts    []TrackRef // Weight default: the script's weight
	TrackServices   []TrackRef // Weight default 0 (= fault on quorum loss)

	NotifyMaster, NotifyBackup, NotifyFault, NotifyStop []string
	NotifyTimeout                                       time.Duration // default 5s

	Pos Pos
	at  positions
}

// TrackRef names a tracked interface, script or service and the priority
// change while it is down (0 = fault).
type TrackRef struct {
	Name   string
	Weight int
	Pos    Pos
}

// Family is an address family: "ipv4" or "ipv6".
type Family string

const (
	IPv4 Family = "ipv4"
	IPv6 Family = "ipv6"
)

func familyOf(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// Protocol is "tcp", "udp" or "sctp"; empty for firewall-mark services.
type Protocol string

const (
	TCP  Protocol = "tcp"
	UDP  Protocol = "udp"
	SCTP Protocol = "sctp"
)

// Forward is a forwarding method: "dr", "nat" or "tunnel".
type Forward string

const (
	ForwardDR     Forward = "dr"
	ForwardNAT    Forward = "nat"
	ForwardTunnel Forward = "tunnel"
)

// OnFailure says what happens to a backend whose check fails.
type OnFailure string

const (
	OnFailureRemove  OnFailure = "remove"  // delete the destination
	OnFailureInhibit OnFailure = "inhibit" // keep it with weight 0
)

// Service is one [[service]]: a virtual service and its backends.
type Service struct {
	Name  string
	Group string // vip_group the service follows; "" = none

	// Address+Port+Protocol identify a normal service; FWMark (with Family)
	// a firewall-mark service, which has no address, port or protocol.
	Family   Family
	Protocol Protocol   // default "tcp"; "" for fwmark services
	Address  netip.Addr // invalid for fwmark services
	Port     uint16
	FWMark   uint32

	Scheduler      string   // default "wlc", as ipvsadm
	SchedulerFlags []string // sh-fallback sh-port (sh) / mh-fallback mh-port (mh)

	// Persistence is the persistence timeout, 0 when not persistent (the
	// default). persistent = true alone gives 360s, as ipvsadm -p.
	Persistence time.Duration
	// PersistenceBits is the persistence granularity as a prefix length:
	// default 32 (IPv4) or 128 (IPv6).
	PersistenceBits int
	OnePacket       bool // default false; udp only

	Forward          Forward        // default "dr"; default for backends
	OnFailure        OnFailure      // default "remove"
	SorryServer      netip.AddrPort // zero = none; port defaults to the service port
	Quorum           int            // default 0 (off)
	QuorumHysteresis int            // default 0
	Alpha            bool           // default false
	Omega            bool           // default false

	Mark     *Mark  // fwmark services only: traffic lvsd marks with FWMark
	Check    *Check // never nil; Type "none" when no [service.check]
	Backends []*Backend

	Pos Pos // the [[service]] header
	at  positions
}

// Persistent reports whether the service has persistence.
func (s *Service) Persistent() bool { return s.Persistence > 0 }

// Key is the service's stable identity in the kernel, for diffing reloads.
func (s *Service) Key() VirtualKey {
	return VirtualKey{Family: s.Family, Protocol: s.Protocol, Address: s.Address, Port: s.Port, FWMark: s.FWMark}
}

// PosOf returns the position of one of the service's own keys ("port",
// "scheduler", ...), or the service's position when the key is not set.
func (s *Service) PosOf(key string) Pos { return s.at.get(key, s.Pos) }

// PosOf returns the position of one of the group's own keys.
func (g *VIPGroup) PosOf(key string) Pos { return g.at.get(key, g.Pos) }

// VirtualKey identifies a virtual service: family, protocol, address and
// port, or family and firewall mark.
type VirtualKey struct {
	Family   Family
	Protocol Protocol
	Address  netip.Addr
	Port     uint16
	FWMark   uint32
}

func (k VirtualKey) String() string {
	if k.FWMark != 0 {
		return fmt.Sprintf("fwmark %d (%s)", k.FWMark, k.Family)
	}
	return fmt.Sprintf("%s %s", k.Protocol, netip.AddrPortFrom(k.Address, k.Port))
}

// Mark is [service.mark]: lvsd's nftables rule that sets the service's mark.
type Mark struct {
	Protocol    Protocol     // default "tcp"
	Ports       []uint16     // destination ports; empty = every port
	Destination netip.Prefix // required; a bare address means a single-address prefix
	Pos         Pos
}

// Backend is one [[service.backend]].
type Backend struct {
	Address        netip.Addr
	Port           uint16  // default: the service port
	Weight         int     // 0..65535, default 1
	Forward        Forward // default: the service's forward
	UpperThreshold uint32  // default 0 (no limit)
	LowerThreshold uint32  // default 0
	// Tunnel encapsulation, forward = "tunnel" only: "ipip" (the default),
	// "gue" (needs TunnelPort) or "gre"; TunnelChecksum "none" (default),
	// "csum" or "remcsum" (gue only).
	TunnelType     string
	TunnelPort     uint16
	TunnelChecksum string
	Check          *Check // the service's check, or its per-backend override
	Pos            Pos
}

// Key is the backend's stable identity within its service.
func (b *Backend) Key() netip.AddrPort { return netip.AddrPortFrom(b.Address, b.Port) }

// CheckType is a health check kind.
type CheckType string

const (
	CheckNone  CheckType = "none"
	CheckTCP   CheckType = "tcp"
	CheckHTTP  CheckType = "http"
	CheckHTTPS CheckType = "https"
	CheckExec  CheckType = "exec"
	CheckDNS   CheckType = "dns"
	CheckGRPC  CheckType = "grpc" // grpc.health.v1
)

// Check is [service.check] (or a backend's override of it).
type Check struct {
	Type         CheckType     // required in a check table; "none" without one
	Interval     time.Duration // default 1s
	Timeout      time.Duration // default Interval/2; must be below Interval
	Rise         int           // default 2
	Fall         int           // default 3
	RetryDelay   time.Duration // default 0 = the interval; delay between checks while failing
	InitialDelay time.Duration // default Interval: random delay up to this before the first check
	Source       netip.Addr    // default: none (kernel picks)
	Port         uint16        // default 0 = the backend's port

	// http and https
	Method     string            // default "GET"
	Path       string            // default "/"
	Host       string            // Host header; default the backend address
	Headers    map[string]string // extra request headers
	Status     []StatusRange     // default 200-299
	BodyRegex  *regexp.Regexp    // nil = not checked
	BodySHA256 []byte            // 32 bytes, nil = not checked

	// https
	SNI       string
	TLSVerify bool   // default true
	CAFile    string // resolved against the config file's directory

	// exec: ${ADDRESS} and ${PORT} in Command are substituted
	Command []string
	Dynamic bool // exit code 2..255 => weight code-2 (keepalived's misc_dynamic)

	// dns
	QueryName string // fully qualified (a trailing dot is added)
	QueryType uint16 // DNS type number; default A
	RCode     int    // expected rcode; default NOERROR (0)
	Answer    string // expected in the answer section; "" = any

	// grpc: grpc.health.v1 Check over HTTP/2, plain or TLS
	GRPCService string // service name asked about; "" = the whole server
	TLS         bool   // default false; sni, tls_verify and ca_file apply

	Pos Pos
	at  positions
}

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ Lo, Hi int }

// positions remembers where a table's own keys are.
type positions []keyPos

type keyPos struct {
	key string
	pos Pos
}

func (p positions) get(key string, def Pos) Pos {
	for _, kp := range p {
		if kp.key == key {
			return kp.pos
		}
	}
	return def
}

// PosOf returns the position of one of the check's own keys ("timeout",
// "status[1]" points at "status"), or the check's position when unset.
func (c *Check) PosOf(key string) Pos {
	if i := strings.IndexByte(key, '['); i >= 0 {
		key = key[:i]
	}
	return c.at.get(key, c.Pos)
}
