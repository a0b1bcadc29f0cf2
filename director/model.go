// Package director keeps the kernel's IPVS table equal to the desired state
// built from config, health and operator actions. It owns the pure model and
// diff, and depends on a Dataplane it defines; kernel and test implementations
// live in sub-packages.
package director

import (
	"fmt"
	"net/netip"
	"time"
)

// Family is an address family, numbered as in the kernel (AF_INET, AF_INET6).
type Family uint16

const (
	IPv4 Family = 2
	IPv6 Family = 10
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return fmt.Sprintf("family(%d)", uint16(f))
}

// FamilyOf returns the family of a valid address.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() || a.Is4In6() {
		return IPv4
	}
	return IPv6
}

// Protocol is an IP protocol number (IPPROTO_*); 0 for firewall-mark services.
type Protocol uint16

const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	case 0:
		return "none"
	}
	return fmt.Sprintf("proto(%d)", uint16(p))
}

// Forward is the forwarding method of a destination, numbered as the kernel's
// IP_VS_CONN_F_FWD_MASK values.
type Forward uint32

const (
	ForwardNAT    Forward = 0 // masquerading
	ForwardTunnel Forward = 2 // ipip
	ForwardDR     Forward = 3 // direct routing ("Route" in ipvsadm -L)
)

func (f Forward) String() string {
	switch f {
	case ForwardNAT:
		return "nat"
	case ForwardTunnel:
		return "tunnel"
	case ForwardDR:
		return "dr"
	}
	return fmt.Sprintf("forward(%d)", uint32(f))
}

// TunnelType is a tunnel destination's encapsulation, numbered as the
// kernel's IP_VS_CONN_F_TUNNEL_TYPE_* (Linux 5.3+ for GUE, 5.4+ for GRE).
type TunnelType uint8

const (
	TunnelIPIP TunnelType = 0
	TunnelGUE  TunnelType = 1
	TunnelGRE  TunnelType = 2
)

func (t TunnelType) String() string {
	switch t {
	case TunnelIPIP:
		return "ipip"
	case TunnelGUE:
		return "gue"
	case TunnelGRE:
		return "gre"
	}
	return fmt.Sprintf("tunnel(%d)", uint8(t))
}

// Tunnel checksum flags (IP_VS_TUNNEL_ENCAP_FLAG_*): none is 0.
const (
	TunnelCsum    uint16 = 1 << 0
	TunnelRemCsum uint16 = 1 << 1 // GUE only
)

// Service flags as the kernel defines them (IP_VS_SVC_F_*).
const (
	FlagPersistent uint32 = 0x0001
	FlagHashed     uint32 = 0x0002 // set by the kernel; ignored when comparing
	FlagOnePacket  uint32 = 0x0004
	FlagSchedSH1   uint32 = 0x0008 // sh-fallback / mh-fallback
	FlagSchedSH2   uint32 = 0x0010 // sh-port / mh-port
	FlagSchedSH3   uint32 = 0x0020
)

// ServiceKey identifies a virtual service in the kernel. A firewall-mark
// service has FWMark set and a zero Protocol, Address and Port; Family is then
// still required because the kernel keys fwmark services by family too.
type ServiceKey struct {
	Family   Family
	Protocol Protocol
	Address  netip.Addr
	Port     uint16
	FWMark   uint32
}

func (k ServiceKey) String() string {
	if k.FWMark != 0 {
		return fmt.Sprintf("fwm:%d/%s", k.FWMark, k.Family)
	}
	return fmt.Sprintf("%s:%s", k.Protocol, netip.AddrPortFrom(k.Address, k.Port))
}

// Service is the kernel-visible configuration of a virtual service.
type Service struct {
	Key       ServiceKey
	Scheduler string
	// Flags holds IP_VS_SVC_F_* bits other than FlagHashed.
	Flags uint32
	// Timeout is the persistence timeout; meaningful with FlagPersistent.
	Timeout time.Duration
	// PersistenceBits is the persistence granularity as a prefix length:
	// 0..32 for IPv4 (32 = per client address), 1..128 for IPv6.
	PersistenceBits int
	// PEName is the persistence engine (e.g. "sip"); empty for none.
	PEName string
}

// DestKey identifies a destination within a service.
type DestKey struct {
	Address netip.Addr
	Port    uint16
}

func (k DestKey) String() string { return netip.AddrPortFrom(k.Address, k.Port).String() }

// Destination is the kernel-visible configuration of a real server.
type Destination struct {
	Key            DestKey
	Weight         int
	Forward        Forward
	UpperThreshold uint32
	LowerThreshold uint32
	// Tunnel encapsulation (ForwardTunnel only): a zero value is plain
	// IP-in-IP. TunnelPort is GUE's UDP port; TunnelFlags its checksums.
	TunnelType  TunnelType
	TunnelPort  uint16
	TunnelFlags uint16
}

// DesiredService is one virtual service with all destinations that should be
// present in the kernel. Destinations that should receive no new connections
// but keep existing ones are present with Weight 0.
type DesiredService struct {
	Service      Service
	Destinations []Destination
}

// OpKind is the kind of one IPVS write.
type OpKind uint8

const (
	OpAddService OpKind = iota + 1
	OpUpdateService
	OpDelService
	OpAddDest
	OpUpdateDest
	OpDelDest
)

func (k OpKind) String() string {
	names := [...]string{"?", "add-service", "update-service", "del-service", "add-dest", "update-dest", "del-dest"}
	if int(k) >= len(names) || k == 0 {
		return fmt.Sprintf("op(%d)", uint8(k))
	}
	return names[k]
}

// Op is one IPVS write. Dest is meaningful only for destination ops.
type Op struct {
	Kind    OpKind
	Service Service
	Dest    Destination
}

// Compare orders service keys by family, fwmark, protocol, address and port,
// so that ops and logs come out in a stable order.
func (k ServiceKey) Compare(o ServiceKey) int {
	switch {
	case k.Family != o.Family:
		return cmpInt(int(k.Family), int(o.Family))
	case k.FWMark != o.FWMark:
		return cmpInt(int(k.FWMark), int(o.FWMark))
	case k.Protocol != o.Protocol:
		return cmpInt(int(k.Protocol), int(o.Protocol))
	}
	if c := k.Address.Compare(o.Address); c != 0 {
		return c
	}
	return cmpInt(int(k.Port), int(o.Port))
}

// Compare orders destination keys by address, then port.
func (k DestKey) Compare(o DestKey) int {
	if c := k.Address.Compare(o.Address); c != 0 {
		return c
	}
	return cmpInt(int(k.Port), int(o.Port))
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// numOpKinds sizes arrays indexed by OpKind.
const numOpKinds = int(OpDelDest) + 1

// OpCounts counts writes by kind; index it with an OpKind.
type OpCounts [numOpKinds]uint64

// Total is the sum over all kinds.
func (c OpCounts) Total() uint64 {
	var n uint64
	for _, v := range c {
		n += v
	}
	return n
}

func (c OpCounts) String() string {
	s := ""
	for k := OpAddService; k <= OpDelDest; k++ {
		if c[k] == 0 {
			continue
		}
		if s != "" {
			s += " "
		}
		s += fmt.Sprintf("%s=%d", k, c[k])
	}
	if s == "" {
		return "none"
	}
	return s
}

// String describes the write for logs and errors, e.g.
// "update-dest 198.18.2.1:80 (weight 2, dr) in tcp:198.18.1.100:80".
func (o Op) String() string {
	switch o.Kind {
	case OpAddService, OpUpdateService:
		return fmt.Sprintf("%s %s (%s)", o.Kind, o.Service.Key, o.Service.describe())
	case OpDelService:
		return fmt.Sprintf("%s %s", o.Kind, o.Service.Key)
	case OpAddDest, OpUpdateDest:
		fwd := o.Dest.Forward.String()
		if o.Dest.TunnelType != TunnelIPIP {
			fwd += " " + o.Dest.TunnelType.String()
		}
		return fmt.Sprintf("%s %s (weight %d, %s) in %s", o.Kind, o.Dest.Key, o.Dest.Weight, fwd, o.Service.Key)
	case OpDelDest:
		return fmt.Sprintf("%s %s in %s", o.Kind, o.Dest.Key, o.Service.Key)
	}
	return fmt.Sprintf("op(%d) %s", uint8(o.Kind), o.Service.Key)
}

func (s Service) describe() string {
	d := "scheduler " + s.Scheduler
	if s.Flags&FlagPersistent != 0 {
		d += fmt.Sprintf(", persistent %s", s.Timeout)
	}
	if s.Flags&FlagOnePacket != 0 {
		d += ", one-packet"
	}
	return d
}
