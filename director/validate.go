package director

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Kernel limits the director checks before writing, so that bad input fails
// with a message naming the field instead of a bare EINVAL from netlink.
const (
	maxWeight      = 65535
	maxNameLen     = 15 // IP_VS_SCHEDNAME_MAXLEN / IP_VS_PENAME_MAXLEN minus NUL
	knownSvcFlags  = FlagPersistent | FlagOnePacket | FlagSchedSH1 | FlagSchedSH2 | FlagSchedSH3
	maxTimeoutSecs = (1<<32 - 1) / 1000 // the kernel keeps seconds × HZ (≤ 1000) in 32 bits
)

// Validate reports what is wrong with a service key, or nil.
func (k ServiceKey) Validate() error {
	if k.Family != IPv4 && k.Family != IPv6 {
		return fmt.Errorf("family %s: want ipv4 or ipv6", k.Family)
	}
	if k.FWMark != 0 {
		if k.Protocol != 0 || k.Address.IsValid() || k.Port != 0 {
			return fmt.Errorf("fwmark %d service must not have a protocol, address or port (got %s %s port %d)",
				k.FWMark, k.Protocol, k.Address, k.Port)
		}
		return nil
	}
	switch k.Protocol {
	case TCP, UDP, SCTP:
	default:
		return fmt.Errorf("protocol %s: want tcp, udp or sctp (or a fwmark)", k.Protocol)
	}
	if err := checkAddr(k.Address); err != nil {
		return fmt.Errorf("virtual address: %w", err)
	}
	if f := FamilyOf(k.Address); f != k.Family {
		return fmt.Errorf("address %s is %s but the service family is %s", k.Address, f, k.Family)
	}
	return nil
}

func checkAddr(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return errors.New("missing")
	case a.Is4In6():
		return fmt.Errorf("%s is an IPv4-mapped IPv6 address; write it as %s", a, a.Unmap())
	case a.Zone() != "":
		return fmt.Errorf("%s has a zone, which IPVS cannot use", a)
	case a.IsUnspecified():
		return fmt.Errorf("%s is unspecified", a)
	}
	return nil
}

// Validate reports what is wrong with a service, naming the field, or nil.
// FlagHashed is ignored: the kernel sets it.
func (s Service) Validate() error {
	if err := s.Key.Validate(); err != nil {
		return err
	}
	if s.Scheduler == "" {
		return errors.New("scheduler is empty")
	}
	if len(s.Scheduler) > maxNameLen {
		return fmt.Errorf("scheduler %q is longer than %d bytes", s.Scheduler, maxNameLen)
	}
	if len(s.PEName) > maxNameLen {
		return fmt.Errorf("persistence engine %q is longer than %d bytes", s.PEName, maxNameLen)
	}
	if extra := s.Flags &^ (knownSvcFlags | FlagHashed); extra != 0 {
		return fmt.Errorf("unknown service flags %#x", extra)
	}
	persistent := s.Flags&FlagPersistent != 0
	switch {
	case s.Timeout < 0:
		return fmt.Errorf("persistence timeout %s is negative", s.Timeout)
	case s.Timeout%time.Second != 0:
		// The kernel keeps whole seconds; a fraction would read back different forever.
		return fmt.Errorf("persistence timeout %s is not a whole number of seconds", s.Timeout)
	case s.Timeout/time.Second > maxTimeoutSecs:
		return fmt.Errorf("persistence timeout %s is too large", s.Timeout)
	case persistent && s.Timeout == 0:
		return errors.New("persistent service needs a persistence timeout above 0")
	}
	if s.Key.FWMark == 0 && s.Key.Port == 0 && !persistent {
		return errors.New("port 0 is only allowed for persistent services")
	}
	switch s.Key.Family {
	case IPv4:
		if s.PersistenceBits < 0 || s.PersistenceBits > 32 {
			return fmt.Errorf("persistence granularity /%d out of range 0..32 for ipv4", s.PersistenceBits)
		}
	case IPv6:
		if s.PersistenceBits < 1 || s.PersistenceBits > 128 {
			return fmt.Errorf("persistence granularity /%d out of range 1..128 for ipv6", s.PersistenceBits)
		}
	}
	return nil
}

// Validate reports what is wrong with a destination of a service of the
// given family, or nil.
func (d Destination) Validate(family Family) error {
	if err := checkAddr(d.Key.Address); err != nil {
		return fmt.Errorf("address: %w", err)
	}
	switch d.Forward {
	case ForwardNAT, ForwardTunnel, ForwardDR:
	default:
		return fmt.Errorf("forwarding method %s: want nat, tunnel or dr", d.Forward)
	}
	// The kernel accepts a destination of the other family only through a tunnel.
	if f := FamilyOf(d.Key.Address); f != family && d.Forward != ForwardTunnel {
		return fmt.Errorf("%s destination in an %s service needs tunnel forwarding, not %s", f, family, d.Forward)
	}
	if d.Weight < 0 || d.Weight > maxWeight {
		return fmt.Errorf("weight %d out of range 0..%d", d.Weight, maxWeight)
	}
	if d.LowerThreshold > d.UpperThreshold {
		return fmt.Errorf("lower threshold %d is above upper threshold %d", d.LowerThreshold, d.UpperThreshold)
	}
	tunneled := d.TunnelType != TunnelIPIP || d.TunnelPort != 0 || d.TunnelFlags != 0
	switch {
	case tunneled && d.Forward != ForwardTunnel:
		return fmt.Errorf("tunnel settings need tunnel forwarding, not %s", d.Forward)
	case d.TunnelType > TunnelGRE:
		return fmt.Errorf("%s: want ipip, gue or gre", d.TunnelType)
	case d.TunnelType == TunnelGUE && d.TunnelPort == 0:
		return errors.New("a gue tunnel needs a port")
	case d.TunnelType != TunnelGUE && d.TunnelPort != 0:
		return fmt.Errorf("tunnel port %d: only gue has one", d.TunnelPort)
	case d.TunnelFlags&^(TunnelCsum|TunnelRemCsum) != 0:
		return fmt.Errorf("unknown tunnel flags %#x", d.TunnelFlags)
	case d.TunnelFlags&TunnelRemCsum != 0 && d.TunnelType != TunnelGUE:
		return errors.New("remote checksum offload (remcsum) is gue only")
	case d.TunnelFlags != 0 && d.TunnelType == TunnelIPIP:
		return errors.New("ipip tunnels take no checksum flags")
	}
	return nil
}

// Validate reports every problem with a desired service, each naming the
// service and destination concerned, or nil.
func (d *DesiredService) Validate() error {
	key := d.Service.Key
	if err := d.Service.Validate(); err != nil {
		return fmt.Errorf("service %s: %w", key, err)
	}
	var errs []error
	for i := range d.Destinations {
		if err := d.Destinations[i].Validate(key.Family); err != nil {
			errs = append(errs, fmt.Errorf("service %s: destination %s: %w", key, d.Destinations[i].Key, err))
		}
	}
	if len(d.Destinations) > 1 {
		// Duplicates are neighbours in key order. Destinations usually come
		// sorted (the daemon sorts them), and then need no copy.
		ds := d.Destinations
		if !slices.IsSortedFunc(ds, destKeyOrder) {
			ds = slices.Clone(ds)
			slices.SortFunc(ds, destKeyOrder)
		}
		for i := 1; i < len(ds); i++ {
			if k := ds[i].Key; k == ds[i-1].Key && (i == 1 || ds[i-2].Key != k) {
				errs = append(errs, fmt.Errorf("service %s: destination %s listed more than once", key, k))
			}
		}
	}
	return errors.Join(errs...)
}

func destKeyOrder(a, b Destination) int { return a.Key.Compare(b.Key) }
