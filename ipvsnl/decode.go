package ipvsnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
)

// decodeNested finds the first-level attribute typ in a reply payload and
// runs fn on its nested attributes.
func decodeNested(payload []byte, typ uint16, what string, fn func(*netlink.AttributeDecoder) error) error {
	ad, err := netlink.NewAttributeDecoder(payload)
	if err != nil {
		return fmt.Errorf("decoding %s reply: %w", what, err)
	}
	found := false
	for ad.Next() {
		if ad.Type() == typ {
			found = true
			ad.Nested(fn)
		}
	}
	if err := ad.Err(); err != nil {
		return fmt.Errorf("decoding %s reply: %w", what, err)
	}
	if !found {
		return fmt.Errorf("decoding %s reply: attribute %d missing", what, typ)
	}
	return nil
}

// addrFrom reads an nf_inet_addr attribute: the kernel always sends 16
// bytes, of which IPv4 uses the first 4.
func addrFrom(family uint16, b []byte) (netip.Addr, error) {
	switch {
	case family == AFInet && len(b) >= 4:
		return netip.AddrFrom4([4]byte(b[:4])), nil
	case family == AFInet6 && len(b) >= 16:
		return netip.AddrFrom16([16]byte(b[:16])), nil
	}
	return netip.Addr{}, fmt.Errorf("address attribute of %d bytes for family %d", len(b), family)
}

func beUint16(b []byte) (uint16, error) {
	if len(b) != 2 {
		return 0, fmt.Errorf("port attribute of %d bytes, want 2", len(b))
	}
	return binary.BigEndian.Uint16(b), nil
}

// decodeService reads the attributes nested in cmdAttrService. The address
// needs the family, which may come after it, so it is resolved at the end.
func decodeService(ad *netlink.AttributeDecoder) (Service, error) {
	var s Service
	var rawAddr, rawMask, stats32 []byte
	var have64 bool
	for ad.Next() {
		switch ad.Type() {
		case svcAttrAF:
			s.Family = ad.Uint16()
		case svcAttrProtocol:
			s.Protocol = ad.Uint16()
		case svcAttrAddr:
			rawAddr = ad.Bytes()
		case svcAttrPort:
			ad.Do(func(b []byte) (err error) { s.Port, err = beUint16(b); return })
		case svcAttrFWMark:
			s.FWMark = ad.Uint32()
		case svcAttrSchedName:
			s.Scheduler = ad.String()
		case svcAttrPEName:
			s.PEName = ad.String()
		case svcAttrFlags:
			ad.Do(func(b []byte) error {
				if len(b) < 4 {
					return fmt.Errorf("flags attribute of %d bytes", len(b))
				}
				s.Flags = binary.NativeEndian.Uint32(b)
				return nil
			})
		case svcAttrTimeout:
			s.Timeout = ad.Uint32()
		case svcAttrNetmask:
			rawMask = ad.Bytes()
		case svcAttrStats:
			stats32 = ad.Bytes() // decoded only if the 64-bit nest is absent
		case svcAttrStats64:
			have64 = true
			ad.Nested(func(nad *netlink.AttributeDecoder) error { s.Stats = decodeStats(nad, true); return nad.Err() })
		}
	}
	if err := ad.Err(); err != nil {
		return s, err
	}
	if !have64 && stats32 != nil {
		st, err := decodeStatsBytes(stats32)
		if err != nil {
			return s, err
		}
		s.Stats = st
	}
	if s.Family != AFInet && s.Family != AFInet6 {
		return s, fmt.Errorf("service with address family %d", s.Family)
	}
	if s.FWMark == 0 {
		a, err := addrFrom(s.Family, rawAddr)
		if err != nil {
			return s, fmt.Errorf("service address: %w", err)
		}
		s.Address = a
	}
	if rawMask != nil {
		if len(rawMask) != 4 {
			return s, fmt.Errorf("netmask attribute of %d bytes, want 4", len(rawMask))
		}
		if s.Family == AFInet6 {
			s.Netmask = Netmask(binary.NativeEndian.Uint32(rawMask))
		} else {
			s.Netmask = Netmask(binary.BigEndian.Uint32(rawMask))
		}
	}
	return s, nil
}

// decodeDest reads the attributes nested in cmdAttrDest. svcFamily is used
// when the kernel does not report the destination's own family (before 4.x).
func decodeDest(ad *netlink.AttributeDecoder, svcFamily uint16) (Destination, error) {
	var d Destination
	var rawAddr, stats32 []byte
	var have64 bool
	for ad.Next() {
		switch ad.Type() {
		case destAttrAddr:
			rawAddr = ad.Bytes()
		case destAttrPort:
			ad.Do(func(b []byte) (err error) { d.Port, err = beUint16(b); return })
		case destAttrFwdMethod:
			d.Forward = ad.Uint32()
		case destAttrWeight:
			d.Weight = ad.Int32()
		case destAttrUThresh:
			d.UpperThreshold = ad.Uint32()
		case destAttrLThresh:
			d.LowerThreshold = ad.Uint32()
		case destAttrActiveConns:
			d.ActiveConns = ad.Uint32()
		case destAttrInactConns:
			d.InactiveConns = ad.Uint32()
		case destAttrPersistConns:
			d.PersistentConns = ad.Uint32()
		case destAttrAddrFamily:
			d.Family = ad.Uint16()
		case destAttrTunType:
			d.TunnelType = ad.Uint8()
		case destAttrTunPort:
			ad.Do(func(b []byte) (err error) { d.TunnelPort, err = beUint16(b); return })
		case destAttrTunFlags:
			d.TunnelFlags = ad.Uint16()
		case destAttrStats:
			stats32 = ad.Bytes()
		case destAttrStats64:
			have64 = true
			ad.Nested(func(nad *netlink.AttributeDecoder) error { d.Stats = decodeStats(nad, true); return nad.Err() })
		}
	}
	if err := ad.Err(); err != nil {
		return d, err
	}
	if !have64 && stats32 != nil {
		st, err := decodeStatsBytes(stats32)
		if err != nil {
			return d, err
		}
		d.Stats = st
	}
	if d.Family == 0 {
		d.Family = svcFamily
	}
	a, err := addrFrom(d.Family, rawAddr)
	if err != nil {
		return d, fmt.Errorf("destination address: %w", err)
	}
	d.Address = a
	return d, nil
}

// decodeStatsBytes reads the 32-bit stats nest, sent by kernels before 4.x
// without the 64-bit one.
func decodeStatsBytes(b []byte) (Stats, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return Stats{}, fmt.Errorf("stats: %w", err)
	}
	st := decodeStats(ad, false)
	if err := ad.Err(); err != nil {
		return Stats{}, fmt.Errorf("stats: %w", err)
	}
	return st, nil
}

// decodeStats reads a stats nest: in the 32-bit one only the byte counters
// are 64 bits wide.
func decodeStats(ad *netlink.AttributeDecoder, wide bool) Stats {
	var s Stats
	num := func() uint64 {
		if wide {
			return ad.Uint64()
		}
		return uint64(ad.Uint32())
	}
	for ad.Next() {
		switch ad.Type() {
		case statsAttrConns:
			s.Conns = num()
		case statsAttrInPkts:
			s.InPkts = num()
		case statsAttrOutPkts:
			s.OutPkts = num()
		case statsAttrInBytes:
			s.InBytes = ad.Uint64()
		case statsAttrOutBytes:
			s.OutBytes = ad.Uint64()
		case statsAttrCPS:
			s.CPS = num()
		case statsAttrInPPS:
			s.InPPS = num()
		case statsAttrOutPPS:
			s.OutPPS = num()
		case statsAttrInBPS:
			s.InBPS = num()
		case statsAttrOutBPS:
			s.OutBPS = num()
		}
	}
	return s
}

func decodeDaemon(ad *netlink.AttributeDecoder) (SyncDaemon, error) {
	var d SyncDaemon
	for ad.Next() {
		switch ad.Type() {
		case daemonAttrState:
			d.State = DaemonState(ad.Uint32())
		case daemonAttrMcastIfn:
			d.Interface = ad.String()
		case daemonAttrSyncID:
			d.SyncID = ad.Uint32()
		case daemonAttrSyncMaxLen:
			d.MaxLen = ad.Uint16()
		case daemonAttrMcastGroup:
			ad.Do(func(b []byte) error {
				if len(b) != 4 {
					return fmt.Errorf("IPv4 group attribute of %d bytes", len(b))
				}
				d.Group = netip.AddrFrom4([4]byte(b))
				return nil
			})
		case daemonAttrMcastGrp6:
			ad.Do(func(b []byte) error {
				if len(b) != 16 {
					return fmt.Errorf("IPv6 group attribute of %d bytes", len(b))
				}
				d.Group = netip.AddrFrom16([16]byte(b))
				return nil
			})
		case daemonAttrMcastPort:
			d.Port = ad.Uint16() // host order, unlike service ports
		case daemonAttrMcastTTL:
			d.TTL = ad.Uint8()
		}
	}
	if err := ad.Err(); err != nil {
		return d, err
	}
	if d.State == 0 {
		return d, errors.New("sync daemon without a state")
	}
	return d, nil
}

func decodeInfo(payload []byte) (Info, error) {
	var in Info
	ad, err := netlink.NewAttributeDecoder(payload)
	if err != nil {
		return in, fmt.Errorf("decoding info reply: %w", err)
	}
	for ad.Next() {
		switch ad.Type() {
		case infoAttrVersion:
			in.Version = ad.Uint32()
		case infoAttrConnTabSize:
			in.ConnTableSize = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return in, fmt.Errorf("decoding info reply: %w", err)
	}
	if in.Version == 0 {
		return in, errors.New("decoding info reply: no version attribute")
	}
	return in, nil
}
