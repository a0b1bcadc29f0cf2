package ipvsnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// validateServiceKey checks the fields that identify a service.
func validateServiceKey(s Service) error {
	switch s.Family {
	case AFInet, AFInet6:
	default:
		return fmt.Errorf("service address family %d is neither AF_INET (2) nor AF_INET6 (10)", s.Family)
	}
	if s.FWMark != 0 {
		if s.Address.IsValid() || s.Port != 0 || s.Protocol != 0 {
			return fmt.Errorf("firewall-mark service %d must have no protocol, address or port", s.FWMark)
		}
		return nil
	}
	switch s.Protocol {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
	default:
		return fmt.Errorf("service protocol %d is not TCP (6), UDP (17) or SCTP (132)", s.Protocol)
	}
	return checkAddr("service address", s.Family, s.Address)
}

func checkAddr(what string, family uint16, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("%s is missing", what)
	case a.Zone() != "":
		return fmt.Errorf("%s %s has a zone, which IPVS cannot use", what, a)
	case family == AFInet && !a.Unmap().Is4():
		return fmt.Errorf("%s %s is not IPv4 but the family is AF_INET", what, a)
	case family == AFInet6 && !a.Is6():
		return fmt.Errorf("%s %s is not IPv6 but the family is AF_INET6", what, a)
	}
	return nil
}

// validateService checks a service for NEW/SET.
func validateService(s Service) error {
	if err := validateServiceKey(s); err != nil {
		return err
	}
	if s.Scheduler == "" {
		return errors.New("service scheduler is empty")
	}
	if len(s.Scheduler) >= schedNameMax {
		return fmt.Errorf("service scheduler %q is longer than %d bytes", s.Scheduler, schedNameMax-1)
	}
	if len(s.PEName) >= peNameMax {
		return fmt.Errorf("persistence engine %q is longer than %d bytes", s.PEName, peNameMax-1)
	}
	if s.Family == AFInet6 && (s.Netmask < 1 || s.Netmask > 128) {
		return fmt.Errorf("IPv6 persistence netmask %d is not a prefix length 1..128", uint32(s.Netmask))
	}
	return nil
}

// validateDest checks a destination; full is false for DEL_DEST, which only
// needs the address and port.
func validateDest(svc Service, d Destination, full bool) error {
	fam := destFamily(d)
	if fam != AFInet && fam != AFInet6 {
		if d.Family == 0 {
			return errors.New("destination address is missing")
		}
		return fmt.Errorf("destination address family %d is neither AF_INET (2) nor AF_INET6 (10)", d.Family)
	}
	if err := checkAddr("destination address", fam, d.Address); err != nil {
		return err
	}
	if !full {
		return nil
	}
	switch d.Forward {
	case ForwardMasq, ForwardTunnel, ForwardRoute:
	default:
		return fmt.Errorf("destination forwarding method %d is not masq (0), tunnel (2) or route (3)", d.Forward)
	}
	if fam != svc.Family && d.Forward != ForwardTunnel {
		return fmt.Errorf("destination %s is of another address family than the service; only tunnel forwarding allows that", d)
	}
	if d.Weight < 0 {
		return fmt.Errorf("destination weight %d is negative", d.Weight)
	}
	if d.LowerThreshold > d.UpperThreshold {
		return fmt.Errorf("destination lower threshold %d is above the upper threshold %d", d.LowerThreshold, d.UpperThreshold)
	}
	if d.TunnelType > TunnelGRE {
		return fmt.Errorf("destination tunnel type %d is not ipip (0), gue (1) or gre (2)", d.TunnelType)
	}
	return nil
}

// destFamily is the destination's family, derived from its address unless
// set explicitly.
func destFamily(d Destination) uint16 {
	switch {
	case d.Family != 0:
		return d.Family
	case d.Address.Unmap().Is4():
		return AFInet
	case d.Address.Is6():
		return AFInet6
	}
	return 0
}

// encodeServiceKey writes the attributes that identify a service.
func encodeServiceKey(w *attrWriter, s Service) {
	w.u16(svcAttrAF, s.Family)
	if s.FWMark != 0 {
		w.u32(svcAttrFWMark, s.FWMark)
		return
	}
	w.u16(svcAttrProtocol, s.Protocol)
	w.addr(svcAttrAddr, s.Family, s.Address)
	w.be16(svcAttrPort, s.Port)
}

// encodeService writes a full service entry (NEW/SET).
func encodeService(w *attrWriter, s Service) {
	encodeServiceKey(w, s)
	w.str(svcAttrSchedName, s.Scheduler)
	if s.PEName != "" {
		w.str(svcAttrPEName, s.PEName)
	}
	// struct ip_vs_flags {flags, mask}: the mask covers every bit, so a SET
	// replaces the flags. HASHED must never be sent: a new service carrying
	// it is silently left unhashed.
	w.header(svcAttrFlags, 8)
	w.b = binary.NativeEndian.AppendUint32(w.b, s.Flags&^FlagHashed)
	w.b = binary.NativeEndian.AppendUint32(w.b, ^uint32(0))
	w.u32(svcAttrTimeout, s.Timeout)
	// IPv4: the mask's bytes in network order; IPv6: a prefix length in
	// host order. The kernel copies the four bytes as they come.
	w.header(svcAttrNetmask, 4)
	if s.Family == AFInet6 {
		w.b = binary.NativeEndian.AppendUint32(w.b, uint32(s.Netmask))
	} else {
		w.b = binary.BigEndian.AppendUint32(w.b, uint32(s.Netmask))
	}
}

// addr writes an address as the kernel's nf_inet_addr wants it: 4 bytes
// for IPv4, 16 for IPv6.
func (w *attrWriter) addr(typ uint16, family uint16, a netip.Addr) {
	if family == AFInet {
		b := a.Unmap().As4()
		w.bytes(typ, b[:])
		return
	}
	b := a.As16()
	w.bytes(typ, b[:])
}

func encodeDest(w *attrWriter, d Destination, full bool) {
	fam := destFamily(d)
	w.addr(destAttrAddr, fam, d.Address)
	w.be16(destAttrPort, d.Port)
	w.u16(destAttrAddrFamily, fam)
	if !full {
		return
	}
	w.u32(destAttrFwdMethod, d.Forward)
	w.u32(destAttrWeight, uint32(d.Weight))
	w.u32(destAttrUThresh, d.UpperThreshold)
	w.u32(destAttrLThresh, d.LowerThreshold)
	// Tunnel attributes exist since Linux 5.3; send them only when used.
	if d.TunnelType != 0 {
		w.u8(destAttrTunType, d.TunnelType)
	}
	if d.TunnelPort != 0 {
		w.be16(destAttrTunPort, d.TunnelPort)
	}
	if d.TunnelFlags != 0 {
		w.u16(destAttrTunFlags, d.TunnelFlags)
	}
}

// appendOp validates an op and appends its attributes to w. On error w is
// left as it was.
func appendOp(w *attrWriter, op Op) error {
	switch op.Cmd {
	case CmdNewService, CmdSetService:
		if err := validateService(op.Service); err != nil {
			return err
		}
		at := w.nest(cmdAttrService)
		encodeService(w, op.Service)
		w.end(at)
	case CmdDelService:
		if err := validateServiceKey(op.Service); err != nil {
			return err
		}
		at := w.nest(cmdAttrService)
		encodeServiceKey(w, op.Service)
		w.end(at)
	case CmdNewDest, CmdSetDest, CmdDelDest:
		full := op.Cmd != CmdDelDest
		if err := validateServiceKey(op.Service); err != nil {
			return err
		}
		if err := validateDest(op.Service, op.Dest, full); err != nil {
			return err
		}
		at := w.nest(cmdAttrService)
		encodeServiceKey(w, op.Service)
		w.end(at)
		at = w.nest(cmdAttrDest)
		encodeDest(w, op.Dest, full)
		w.end(at)
	default:
		return fmt.Errorf("unknown command %d", uint8(op.Cmd))
	}
	return nil
}

// encodeOp returns an op's attributes (the generic-netlink payload).
func encodeOp(op Op) ([]byte, error) {
	var w attrWriter
	if err := appendOp(&w, op); err != nil {
		return nil, err
	}
	return w.b, nil
}

// encodeServiceKeyOnly is the payload of requests naming one service
// (GET_SERVICE, GET_DEST dump, ZERO).
func encodeServiceKeyOnly(s Service) ([]byte, error) {
	if err := validateServiceKey(s); err != nil {
		return nil, err
	}
	var w attrWriter
	at := w.nest(cmdAttrService)
	encodeServiceKey(&w, s)
	w.end(at)
	return w.b, nil
}

func validateDaemon(d SyncDaemon) error {
	if d.State != DaemonMaster && d.State != DaemonBackup {
		return fmt.Errorf("sync daemon state %d is neither master (1) nor backup (2)", uint32(d.State))
	}
	if d.Interface == "" {
		return errors.New("sync daemon interface is empty")
	}
	if len(d.Interface) >= ifNameMax {
		return fmt.Errorf("sync daemon interface %q is longer than %d bytes", d.Interface, ifNameMax-1)
	}
	if d.SyncID > 255 {
		return fmt.Errorf("sync daemon syncid %d out of range 0..255", d.SyncID)
	}
	if d.Group.IsValid() && !d.Group.IsMulticast() {
		return fmt.Errorf("sync daemon group %s is not a multicast address", d.Group)
	}
	return nil
}

func encodeDaemon(d SyncDaemon) ([]byte, error) {
	if err := validateDaemon(d); err != nil {
		return nil, err
	}
	var w attrWriter
	at := w.nest(cmdAttrDaemon)
	w.u32(daemonAttrState, uint32(d.State))
	w.str(daemonAttrMcastIfn, d.Interface)
	w.u32(daemonAttrSyncID, d.SyncID)
	if d.MaxLen != 0 {
		w.u16(daemonAttrSyncMaxLen, d.MaxLen)
	}
	if d.Group.IsValid() {
		if g := d.Group.Unmap(); g.Is4() {
			b := g.As4()
			w.bytes(daemonAttrMcastGroup, b[:])
		} else {
			b := g.As16()
			w.bytes(daemonAttrMcastGrp6, b[:])
		}
	}
	if d.Port != 0 {
		// Unlike service ports, the kernel reads this one in host order.
		w.u16(daemonAttrMcastPort, d.Port)
	}
	if d.TTL != 0 {
		w.u8(daemonAttrMcastTTL, d.TTL)
	}
	w.end(at)
	return w.b, nil
}

func encodeDaemonStop(state DaemonState) ([]byte, error) {
	if state != DaemonMaster && state != DaemonBackup {
		return nil, fmt.Errorf("sync daemon state %d is neither master (1) nor backup (2)", uint32(state))
	}
	var w attrWriter
	at := w.nest(cmdAttrDaemon)
	w.u32(daemonAttrState, uint32(state))
	w.end(at)
	return w.b, nil
}
