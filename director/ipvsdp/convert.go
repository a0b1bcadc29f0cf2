package ipvsdp

import (
	"fmt"
	"math"
	"time"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/ipvsnl"
)

// The director's model numbers families, protocols, flags and forwarding
// methods as the kernel does, so the conversions below are field copies
// plus the two representations that differ: the persistence timeout
// (Duration vs seconds) and the granularity (prefix length vs netmask).

func toNLService(s director.Service) (ipvsnl.Service, error) {
	k := s.Key
	out := ipvsnl.Service{
		Family:    uint16(k.Family),
		Protocol:  uint16(k.Protocol),
		Address:   k.Address,
		Port:      k.Port,
		FWMark:    k.FWMark,
		Scheduler: s.Scheduler,
		Flags:     s.Flags &^ director.FlagHashed,
		PEName:    s.PEName,
	}
	if s.Timeout < 0 || s.Timeout%time.Second != 0 || s.Timeout/time.Second > math.MaxUint32 {
		return out, fmt.Errorf("persistence timeout %s is not a whole number of seconds in 0..%d", s.Timeout, uint32(math.MaxUint32))
	}
	out.Timeout = uint32(s.Timeout / time.Second)
	m, err := ipvsnl.NetmaskFromPrefix(uint16(k.Family), s.PersistenceBits)
	if err != nil {
		return out, fmt.Errorf("persistence granularity: %w", err)
	}
	out.Netmask = m
	return out, nil
}

// serviceKeyOnly is enough for ops that name a service (deletes, dest ops).
func serviceKeyOnly(k director.ServiceKey) ipvsnl.Service {
	return ipvsnl.Service{Family: uint16(k.Family), Protocol: uint16(k.Protocol), Address: k.Address, Port: k.Port, FWMark: k.FWMark}
}

// fromNLService converts a dumped service. A granularity that is no prefix
// (a non-contiguous IPv4 mask set by another tool) reads as -1, which never
// equals a valid desired value, so the reconciler rewrites owned services.
func fromNLService(s ipvsnl.Service) director.Service {
	bits, ok := s.Netmask.PrefixLen(s.Family)
	if !ok {
		bits = -1
	}
	return director.Service{
		Key: director.ServiceKey{
			Family:   director.Family(s.Family),
			Protocol: director.Protocol(s.Protocol),
			Address:  s.Address,
			Port:     s.Port,
			FWMark:   s.FWMark,
		},
		Scheduler:       s.Scheduler,
		Flags:           s.Flags &^ director.FlagHashed,
		Timeout:         time.Duration(s.Timeout) * time.Second,
		PersistenceBits: bits,
		PEName:          s.PEName,
	}
}

func toNLDest(d director.Destination) (ipvsnl.Destination, error) {
	if d.Weight < 0 || d.Weight > math.MaxInt32 {
		return ipvsnl.Destination{}, fmt.Errorf("destination weight %d out of range 0..%d", d.Weight, math.MaxInt32)
	}
	return ipvsnl.Destination{
		Address:        d.Key.Address,
		Port:           d.Key.Port,
		Forward:        uint32(d.Forward),
		Weight:         int32(d.Weight),
		UpperThreshold: d.UpperThreshold,
		LowerThreshold: d.LowerThreshold,
		TunnelType:     uint8(d.TunnelType),
		TunnelPort:     d.TunnelPort,
		TunnelFlags:    d.TunnelFlags,
	}, nil
}

func fromNLDest(d ipvsnl.Destination) director.Destination {
	return director.Destination{
		Key:            director.DestKey{Address: d.Address, Port: d.Port},
		Weight:         int(d.Weight),
		Forward:        director.Forward(d.Forward),
		UpperThreshold: d.UpperThreshold,
		LowerThreshold: d.LowerThreshold,
		TunnelType:     director.TunnelType(d.TunnelType),
		TunnelPort:     d.TunnelPort,
		TunnelFlags:    d.TunnelFlags,
	}
}

func toNLOp(op director.Op) (ipvsnl.Op, error) {
	switch op.Kind {
	case director.OpAddService, director.OpUpdateService:
		s, err := toNLService(op.Service)
		if err != nil {
			return ipvsnl.Op{}, err
		}
		cmd := ipvsnl.CmdNewService
		if op.Kind == director.OpUpdateService {
			cmd = ipvsnl.CmdSetService
		}
		return ipvsnl.Op{Cmd: cmd, Service: s}, nil
	case director.OpDelService:
		return ipvsnl.Op{Cmd: ipvsnl.CmdDelService, Service: serviceKeyOnly(op.Service.Key)}, nil
	case director.OpAddDest, director.OpUpdateDest:
		d, err := toNLDest(op.Dest)
		if err != nil {
			return ipvsnl.Op{}, err
		}
		cmd := ipvsnl.CmdNewDest
		if op.Kind == director.OpUpdateDest {
			cmd = ipvsnl.CmdSetDest
		}
		return ipvsnl.Op{Cmd: cmd, Service: serviceKeyOnly(op.Service.Key), Dest: d}, nil
	case director.OpDelDest:
		return ipvsnl.Op{Cmd: ipvsnl.CmdDelDest, Service: serviceKeyOnly(op.Service.Key),
			Dest: ipvsnl.Destination{Address: op.Dest.Key.Address, Port: op.Dest.Key.Port}}, nil
	}
	return ipvsnl.Op{}, fmt.Errorf("unknown op kind %d", uint8(op.Kind))
}
