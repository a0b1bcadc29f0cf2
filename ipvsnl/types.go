package ipvsnl

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
)

// Address families, as the kernel numbers them.
const (
	AFInet  uint16 = 2  // AF_INET
	AFInet6 uint16 = 10 // AF_INET6
)

// IP protocols of virtual services.
const (
	ProtoTCP  uint16 = 6
	ProtoUDP  uint16 = 17
	ProtoSCTP uint16 = 132
)

// Service flags (IP_VS_SVC_F_*).
const (
	FlagPersistent uint32 = 0x0001
	FlagHashed     uint32 = 0x0002 // set by the kernel; never sent
	FlagOnePacket  uint32 = 0x0004
	FlagSched1     uint32 = 0x0008 // sh-fallback, mh-fallback
	FlagSched2     uint32 = 0x0010 // sh-port, mh-port
	FlagSched3     uint32 = 0x0020
)

// Forwarding methods of destinations (IP_VS_CONN_F_* under the FWD mask).
const (
	ForwardMasq   uint32 = 0 // NAT
	ForwardTunnel uint32 = 2 // IP-in-IP (or GUE/GRE with TunnelType)
	ForwardRoute  uint32 = 3 // direct routing
)

// Tunnel types for ForwardTunnel destinations (IP_VS_CONN_F_TUNNEL_TYPE_*).
const (
	TunnelIPIP uint8 = 0
	TunnelGUE  uint8 = 1
	TunnelGRE  uint8 = 2
)

// Netmask is a service's persistence granularity as the kernel stores it.
// For IPv4 it is the mask as a number (0xFFFFFF00 for a /24); on the wire it
// is sent in network byte order. For IPv6 it is a prefix length, 1..128.
type Netmask uint32

// NetmaskFromPrefix returns the netmask for a prefix length: IPv4 0..32 (0
// puts every client into one persistence entry), IPv6 1..128.
func NetmaskFromPrefix(family uint16, prefixLen int) (Netmask, error) {
	switch family {
	case AFInet:
		if prefixLen < 0 || prefixLen > 32 {
			return 0, fmt.Errorf("IPv4 persistence prefix length %d out of range 0..32", prefixLen)
		}
		if prefixLen == 0 {
			return 0, nil
		}
		return Netmask(^uint32(0) << (32 - prefixLen)), nil
	case AFInet6:
		if prefixLen < 1 || prefixLen > 128 {
			return 0, fmt.Errorf("IPv6 persistence prefix length %d out of range 1..128", prefixLen)
		}
		return Netmask(prefixLen), nil
	}
	return 0, fmt.Errorf("address family %d is neither AF_INET nor AF_INET6", family)
}

// PrefixLen returns the prefix length the netmask stands for; ok is false
// when an IPv4 mask is not contiguous or an IPv6 length is out of range.
func (m Netmask) PrefixLen(family uint16) (n int, ok bool) {
	switch family {
	case AFInet:
		ones := bits.LeadingZeros32(^uint32(m))
		if uint32(m)<<ones != 0 {
			return 0, false
		}
		return ones, true
	case AFInet6:
		if m < 1 || m > 128 {
			return 0, false
		}
		return int(m), true
	}
	return 0, false
}

// Format shows an IPv4 mask dotted, as ipvsadm does ("255.255.255.0"),
// and an IPv6 one as its prefix length ("64").
func (m Netmask) Format(family uint16) string {
	if family == AFInet6 {
		return fmt.Sprint(uint32(m))
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(m))
	return netip.AddrFrom4(b).String()
}

// Stats are a service's or destination's counters. The kernel refreshes
// the rate estimates about every 2 s, so all of them lag.
type Stats struct {
	Conns    uint64 // connections scheduled
	InPkts   uint64
	OutPkts  uint64
	InBytes  uint64
	OutBytes uint64
	CPS      uint64 // current connection rate
	InPPS    uint64
	OutPPS   uint64
	InBPS    uint64
	OutBPS   uint64
}

// Service is a virtual service. A firewall-mark service has FWMark set and
// no Protocol, Address or Port; Family is still required.
type Service struct {
	Family   uint16
	Protocol uint16
	Address  netip.Addr
	Port     uint16
	FWMark   uint32

	Scheduler string
	// Flags holds IP_VS_SVC_F_* bits; FlagHashed is reported by dumps and
	// stripped on writes.
	Flags uint32
	// Timeout is the persistence timeout in seconds.
	Timeout uint32
	Netmask Netmask
	// PEName is the persistence engine ("sip"), empty for none.
	PEName string

	// Stats is filled by dumps and ignored on writes.
	Stats Stats
}

// String names the service the way ipvsadm -Ln does, e.g. "TCP
// 198.18.1.100:80" or "FWM 8 (ipv6)".
func (s Service) String() string {
	fam := "ipv4"
	if s.Family == AFInet6 {
		fam = "ipv6"
	}
	if s.FWMark != 0 {
		return fmt.Sprintf("FWM %d (%s)", s.FWMark, fam)
	}
	proto := fmt.Sprintf("proto(%d)", s.Protocol)
	switch s.Protocol {
	case ProtoTCP:
		proto = "TCP"
	case ProtoUDP:
		proto = "UDP"
	case ProtoSCTP:
		proto = "SCTP"
	}
	return fmt.Sprintf("%s %s", proto, netip.AddrPortFrom(s.Address, s.Port))
}

// Destination is a real server of a virtual service.
type Destination struct {
	// Family is the address family of Address; zero means "derive it from
	// Address". Only tunnel destinations may differ from the service.
	Family  uint16
	Address netip.Addr
	Port    uint16
	// Forward is ForwardMasq, ForwardTunnel or ForwardRoute.
	Forward        uint32
	Weight         int32
	UpperThreshold uint32
	LowerThreshold uint32
	// Tunnel settings, meaningful with ForwardTunnel; sent only when set.
	TunnelType  uint8
	TunnelPort  uint16
	TunnelFlags uint16

	// Filled by dumps, ignored on writes.
	ActiveConns     uint32
	InactiveConns   uint32
	PersistentConns uint32
	Stats           Stats
}

func (d Destination) String() string {
	return netip.AddrPortFrom(d.Address, d.Port).String()
}

// Command is an IPVS generic-netlink write command usable in an [Op].
type Command uint8

// Commands, numbered as in include/uapi/linux/ip_vs.h.
const (
	CmdNewService Command = 1
	CmdSetService Command = 2
	CmdDelService Command = 3
	CmdNewDest    Command = 5
	CmdSetDest    Command = 6
	CmdDelDest    Command = 7
)

func (c Command) String() string {
	switch c {
	case CmdNewService:
		return "new-service"
	case CmdSetService:
		return "set-service"
	case CmdDelService:
		return "del-service"
	case CmdNewDest:
		return "new-dest"
	case CmdSetDest:
		return "set-dest"
	case CmdDelDest:
		return "del-dest"
	}
	return fmt.Sprintf("command(%d)", uint8(c))
}

func (c Command) isDest() bool { return c == CmdNewDest || c == CmdSetDest || c == CmdDelDest }

// Op is one IPVS write. Dest is used only by the destination commands; for
// them, and for CmdDelService, only the service's key fields matter.
type Op struct {
	Cmd     Command
	Service Service
	Dest    Destination
}

func (o Op) String() string {
	if o.Cmd.isDest() {
		return fmt.Sprintf("%s %s in %s", o.Cmd, o.Dest, o.Service)
	}
	return fmt.Sprintf("%s %s", o.Cmd, o.Service)
}

// DaemonState selects the sync daemon role (IP_VS_STATE_*).
type DaemonState uint32

const (
	DaemonMaster DaemonState = 1
	DaemonBackup DaemonState = 2
)

func (s DaemonState) String() string {
	switch s {
	case DaemonMaster:
		return "master"
	case DaemonBackup:
		return "backup"
	}
	return fmt.Sprintf("state(%d)", uint32(s))
}

// SyncDaemon is the configuration of one connection sync daemon. The zero
// values of the optional fields leave the kernel defaults (max length from
// the interface MTU, group 224.0.0.81, port 8848, TTL 1).
type SyncDaemon struct {
	State     DaemonState
	Interface string
	// SyncID tells apart director pairs on one network: 0..255.
	SyncID uint32
	// Optional.
	MaxLen uint16     // UDP payload size of sync messages
	Group  netip.Addr // IPv4 or IPv6 multicast group
	Port   uint16
	TTL    uint8
}

// Info is what GET_INFO reports.
type Info struct {
	// Version is the IPVS version code, 0x010201 for 1.2.1.
	Version uint32
	// ConnTableSize is the size of the connection hash table.
	ConnTableSize uint32
}

// VersionString formats the version as ipvsadm does ("1.2.1").
func (i Info) VersionString() string {
	return fmt.Sprintf("%d.%d.%d", i.Version>>16&0xff, i.Version>>8&0xff, i.Version&0xff)
}
