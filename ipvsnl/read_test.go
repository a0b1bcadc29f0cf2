package ipvsnl

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The builders below lay out replies the way net/netfilter/ipvs/ip_vs_ctl.c
// fills them: 16-byte addresses, flags with an all-ones mask, both the
// 32-bit and the 64-bit (padded) stats nests.

func kernelStats(ae *netlink.AttributeEncoder, typ uint16, s Stats, wide bool) {
	ae.Nested(typ, func(n *netlink.AttributeEncoder) error {
		put := func(t uint16, v uint64) {
			if wide {
				n.Uint64(t, v)
			} else {
				n.Uint32(t, uint32(v))
			}
		}
		put(statsAttrConns, s.Conns)
		put(statsAttrInPkts, s.InPkts)
		put(statsAttrOutPkts, s.OutPkts)
		n.Uint64(statsAttrInBytes, s.InBytes)
		n.Uint64(statsAttrOutBytes, s.OutBytes)
		put(statsAttrCPS, s.CPS)
		put(statsAttrInPPS, s.InPPS)
		put(statsAttrOutPPS, s.OutPPS)
		put(statsAttrInBPS, s.InBPS)
		put(statsAttrOutBPS, s.OutBPS)
		if wide {
			n.Bytes(11, nil) // IPVS_STATS_ATTR_PAD
		}
		return nil
	})
}

func kernelService(s Service) genetlink.Message {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(cmdAttrService, func(n *netlink.AttributeEncoder) error {
		n.Uint16(svcAttrAF, s.Family)
		if s.FWMark != 0 {
			n.Uint32(svcAttrFWMark, s.FWMark)
		} else {
			n.Uint16(svcAttrProtocol, s.Protocol)
			a := s.Address.As16()
			if s.Family == AFInet {
				a = [16]byte{}
				v4 := s.Address.As4()
				copy(a[:], v4[:])
			}
			n.Bytes(svcAttrAddr, a[:])
			n.Bytes(svcAttrPort, bePort(s.Port))
		}
		n.String(svcAttrSchedName, s.Scheduler)
		if s.PEName != "" {
			n.String(svcAttrPEName, s.PEName)
		}
		n.Bytes(svcAttrFlags, append(ne32(s.Flags), 0xff, 0xff, 0xff, 0xff))
		n.Uint32(svcAttrTimeout, s.Timeout)
		n.Bytes(svcAttrNetmask, kernelNetmask(s.Family, s.Netmask))
		// 32-bit counters truncated, as the kernel does
		kernelStats(n, svcAttrStats, s.Stats, false)
		kernelStats(n, svcAttrStats64, s.Stats, true)
		return nil
	})
	b, _ := ae.Encode()
	return genetlink.Message{Header: genetlink.Header{Command: 1 /* NEW_SERVICE, as the kernel tags dumps */, Version: 1}, Data: b}
}

func kernelDest(d Destination) genetlink.Message {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(cmdAttrDest, func(n *netlink.AttributeEncoder) error {
		a := d.Address.As16()
		if d.Family == AFInet {
			a = [16]byte{}
			v4 := d.Address.As4()
			copy(a[:], v4[:])
		}
		n.Bytes(destAttrAddr, a[:])
		n.Bytes(destAttrPort, bePort(d.Port))
		n.Uint32(destAttrFwdMethod, d.Forward)
		n.Uint32(destAttrWeight, uint32(d.Weight))
		n.Uint8(destAttrTunType, d.TunnelType)
		n.Bytes(destAttrTunPort, bePort(d.TunnelPort))
		n.Uint16(destAttrTunFlags, d.TunnelFlags)
		n.Uint32(destAttrUThresh, d.UpperThreshold)
		n.Uint32(destAttrLThresh, d.LowerThreshold)
		n.Uint32(destAttrActiveConns, d.ActiveConns)
		n.Uint32(destAttrInactConns, d.InactiveConns)
		n.Uint32(destAttrPersistConns, d.PersistentConns)
		n.Uint16(destAttrAddrFamily, d.Family)
		kernelStats(n, destAttrStats, d.Stats, false)
		kernelStats(n, destAttrStats64, d.Stats, true)
		return nil
	})
	b, _ := ae.Encode()
	return genetlink.Message{Header: genetlink.Header{Command: 5, Version: 1}, Data: b}
}

func TestDumpServicesAndDests(t *testing.T) {
	big := Stats{Conns: 5_000_000_000, InPkts: 7, OutPkts: 8, InBytes: 1 << 40, OutBytes: 3, CPS: 1, InPPS: 2, OutPPS: 3, InBPS: 4, OutBPS: 5}
	svcs := []Service{
		{Family: AFInet, Protocol: ProtoTCP, Address: netip.MustParseAddr("198.18.1.100"), Port: 0, Scheduler: "rr",
			Flags: FlagPersistent | FlagHashed, Timeout: 500, Netmask: 0xFFFFFF00, Stats: big},
		{Family: AFInet6, Protocol: ProtoUDP, Address: netip.MustParseAddr("2001:db8::100"), Port: 53, Scheduler: "sh",
			Flags: FlagHashed | FlagSched1, Netmask: 64, PEName: "sip"},
		{Family: AFInet, FWMark: 8, Scheduler: "wlc", Flags: FlagPersistent | FlagHashed, Timeout: 360, Netmask: 0xFFFFFFFF},
	}
	dests := []Destination{
		{Family: AFInet, Address: netip.MustParseAddr("198.18.2.1"), Port: 0, Forward: ForwardRoute, Weight: 1,
			ActiveConns: 3, InactiveConns: 4, PersistentConns: 5, Stats: big},
		{Family: AFInet6, Address: netip.MustParseAddr("2001:db8::7"), Port: 80, Forward: ForwardTunnel, Weight: 65535,
			UpperThreshold: 100, LowerThreshold: 50, TunnelType: TunnelGUE, TunnelPort: 6080, TunnelFlags: 1},
	}
	k := newFakeKernel(t)
	var asked []Service
	k.dumpReplies = func(cmd uint8, payload []byte) []genetlink.Message {
		switch cmd {
		case cmdGetService:
			var out []genetlink.Message
			for _, s := range svcs {
				out = append(out, kernelService(s))
			}
			return out
		case cmdGetDest:
			err := decodeNested(payload, cmdAttrService, "request", func(ad *netlink.AttributeDecoder) error {
				s, err := decodeService(ad)
				asked = append(asked, s)
				return err
			})
			if err != nil {
				t.Errorf("GET_DEST request: %v", err)
			}
			return []genetlink.Message{kernelDest(dests[0]), kernelDest(dests[1])}
		}
		return nil
	}
	c := k.client(10)
	got, err := c.Services(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, svcs) {
		t.Errorf("services:\n got %+v\nwant %+v", got, svcs)
	}
	gotD, err := c.Destinations(context.Background(), svcs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotD, dests) {
		t.Errorf("destinations:\n got %+v\nwant %+v", gotD, dests)
	}
	if len(asked) != 1 || keyOf(asked[0]) != keyOf(Service{Family: AFInet, Protocol: ProtoTCP, Address: netip.MustParseAddr("198.18.1.100")}) {
		t.Errorf("GET_DEST asked for %+v", asked)
	}
}

func TestDestinationsOfMissingService(t *testing.T) {
	k := newFakeKernel(t) // answers empty dumps and ESRCH to GET_SERVICE
	_, err := k.client(10).Destinations(context.Background(), tcpService(1))
	if !errors.Is(err, unix.ESRCH) {
		t.Fatalf("error %v, want ESRCH", err)
	}
	if want := "no such service"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q lacks %q", err, want)
	}
}

func TestDestinationsEmptyService(t *testing.T) {
	k := newFakeKernel(t)
	k.dumpReplies = func(cmd uint8, _ []byte) []genetlink.Message {
		if cmd == cmdGetService {
			return []genetlink.Message{kernelService(tcpService(1))}
		}
		return nil
	}
	d, err := k.client(10).Destinations(context.Background(), tcpService(1))
	if err != nil || len(d) != 0 {
		t.Fatalf("Destinations = %v, %v; want none and no error", d, err)
	}
}

func TestDaemonsAndInfo(t *testing.T) {
	k := newFakeKernel(t)
	k.dumpReplies = func(cmd uint8, _ []byte) []genetlink.Message {
		switch cmd {
		case cmdGetDaemon:
			var out []genetlink.Message
			for _, d := range []struct {
				state   uint32
				ifn     string
				group   []byte
				groupAt uint16
			}{{1, "eth0", []byte{224, 0, 0, 81}, daemonAttrMcastGroup}, {2, "eth1", netip.MustParseAddr("ff02::81").AsSlice(), daemonAttrMcastGrp6}} {
				ae := netlink.NewAttributeEncoder()
				ae.Nested(cmdAttrDaemon, func(n *netlink.AttributeEncoder) error {
					n.Uint32(daemonAttrState, d.state)
					n.String(daemonAttrMcastIfn, d.ifn)
					n.Uint32(daemonAttrSyncID, 9)
					n.Uint16(daemonAttrSyncMaxLen, 1472)
					n.Uint16(daemonAttrMcastPort, 8848)
					n.Uint8(daemonAttrMcastTTL, 1)
					n.Bytes(d.groupAt, d.group)
					return nil
				})
				b, _ := ae.Encode()
				out = append(out, genetlink.Message{Header: genetlink.Header{Command: cmdNewDaemon, Version: 1}, Data: b})
			}
			return out
		case cmdGetInfo:
			ae := netlink.NewAttributeEncoder()
			ae.Uint32(infoAttrVersion, 0x010201)
			ae.Uint32(infoAttrConnTabSize, 4096)
			b, _ := ae.Encode()
			return []genetlink.Message{{Header: genetlink.Header{Command: cmdSetInfo, Version: 1}, Data: b}}
		}
		return nil
	}
	c := k.client(10)
	ds, err := c.Daemons(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []SyncDaemon{
		{State: DaemonMaster, Interface: "eth0", SyncID: 9, MaxLen: 1472, Group: netip.MustParseAddr("224.0.0.81"), Port: 8848, TTL: 1},
		{State: DaemonBackup, Interface: "eth1", SyncID: 9, MaxLen: 1472, Group: netip.MustParseAddr("ff02::81"), Port: 8848, TTL: 1},
	}
	if !reflect.DeepEqual(ds, want) {
		t.Errorf("daemons:\n got %+v\nwant %+v", ds, want)
	}
	in, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if in.VersionString() != "1.2.1" || in.ConnTableSize != 4096 {
		t.Errorf("info = %+v (%s)", in, in.VersionString())
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	// A service dump entry without a family cannot be interpreted.
	ae := netlink.NewAttributeEncoder()
	ae.Nested(cmdAttrService, func(n *netlink.AttributeEncoder) error {
		n.Uint16(svcAttrProtocol, 6)
		return nil
	})
	b, _ := ae.Encode()
	err := decodeNested(b, cmdAttrService, "service", func(ad *netlink.AttributeDecoder) error {
		_, err := decodeService(ad)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "address family 0") {
		t.Errorf("error %v, want one about the missing family", err)
	}
	// A 3-byte port.
	ae = netlink.NewAttributeEncoder()
	ae.Nested(cmdAttrDest, func(n *netlink.AttributeEncoder) error {
		n.Bytes(destAttrAddr, make([]byte, 16))
		n.Bytes(destAttrPort, []byte{1, 2, 3})
		return nil
	})
	b, _ = ae.Encode()
	err = decodeNested(b, cmdAttrDest, "destination", func(ad *netlink.AttributeDecoder) error {
		_, err := decodeDest(ad, AFInet)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "port attribute of 3 bytes") {
		t.Errorf("error %v, want one about the port", err)
	}
	if err := decodeNested(nil, cmdAttrDest, "destination", func(*netlink.AttributeDecoder) error { return nil }); err == nil {
		t.Error("a reply without the nest decoded")
	}
}

func bePort(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// kernelNetmask is IPVS_SVC_ATTR_NETMASK as the kernel dumps it: the raw
// __be32 it stores (IPv4 mask bytes, or the IPv6 prefix length as a host
// integer).
func kernelNetmask(family uint16, m Netmask) []byte {
	if family == AFInet6 {
		return binary.NativeEndian.AppendUint32(nil, uint32(m))
	}
	return binary.BigEndian.AppendUint32(nil, uint32(m))
}

// Kernels before 4.x send only the 32-bit stats nest.
func TestDecodeStats32Only(t *testing.T) {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(cmdAttrDest, func(n *netlink.AttributeEncoder) error {
		n.Bytes(destAttrAddr, make([]byte, 16))
		n.Bytes(destAttrPort, bePort(80))
		kernelStats(n, destAttrStats, Stats{Conns: 7, InPkts: 9, InBytes: 1 << 33}, false)
		return nil
	})
	b, _ := ae.Encode()
	var d Destination
	err := decodeNested(b, cmdAttrDest, "destination", func(ad *netlink.AttributeDecoder) (err error) {
		d, err = decodeDest(ad, AFInet)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if d.Stats.Conns != 7 || d.Stats.InPkts != 9 || d.Stats.InBytes != 1<<33 || d.Family != AFInet || d.Port != 80 {
		t.Errorf("decoded %+v", d)
	}
}
