package ipvsnl

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
)

// attrMap splits a payload into first-level attributes and the attributes
// nested in each, using the netlink library's plain parser.
func attrMap(t *testing.T, payload []byte) map[uint16]map[uint16][]byte {
	t.Helper()
	top, err := netlink.UnmarshalAttributes(payload)
	if err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	out := map[uint16]map[uint16][]byte{}
	for _, a := range top {
		if a.Type&netlink.Nested == 0 {
			t.Errorf("attribute %d is not flagged nested", a.Type)
		}
		inner, err := netlink.UnmarshalAttributes(a.Data)
		if err != nil {
			t.Fatalf("unmarshal nested %d: %v", a.Type, err)
		}
		m := map[uint16][]byte{}
		for _, b := range inner {
			m[b.Type] = b.Data
		}
		out[a.Type&^netlink.Nested] = m
	}
	return out
}

func ne32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
func ne16(v uint16) []byte { return binary.NativeEndian.AppendUint16(nil, v) }

func TestEncodePCCService(t *testing.T) {
	// The seed's PCC: ipvsadm -A -t 198.18.1.100:0 -s rr -p 500 -M 255.255.255.0
	svc := Service{Family: AFInet, Protocol: ProtoTCP, Address: netip.MustParseAddr("198.18.1.100"),
		Scheduler: "rr", Flags: FlagPersistent | FlagHashed, Timeout: 500, Netmask: 0xFFFFFF00}
	p, err := encodeOp(Op{Cmd: CmdNewService, Service: svc})
	if err != nil {
		t.Fatal(err)
	}
	s := attrMap(t, p)[cmdAttrService]
	want := map[uint16][]byte{
		svcAttrAF:        ne16(2),
		svcAttrProtocol:  ne16(6),
		svcAttrAddr:      {198, 18, 1, 100},
		svcAttrPort:      {0, 0},
		svcAttrSchedName: []byte("rr\x00"),
		// flags without HASHED, mask all ones
		svcAttrFlags:   append(ne32(1), 0xff, 0xff, 0xff, 0xff),
		svcAttrTimeout: ne32(500),
		// the mask's bytes in network order, whatever the host's order
		svcAttrNetmask: {255, 255, 255, 0},
	}
	for typ, w := range want {
		if got := s[typ]; !bytes.Equal(got, w) {
			t.Errorf("attribute %d = % x, want % x", typ, got, w)
		}
	}
	if _, ok := s[svcAttrFWMark]; ok {
		t.Error("an address service carries a fwmark attribute")
	}
	if len(s) != len(want) {
		t.Errorf("%d attributes, want %d", len(s), len(want))
	}
}

func TestEncodePortBigEndian(t *testing.T) {
	svc := tcpService(1)
	svc.Port = 443
	p, err := encodeOp(Op{Cmd: CmdNewDest, Service: svc, Dest: Destination{
		Address: netip.MustParseAddr("198.19.0.1"), Port: 8443, Forward: ForwardMasq, Weight: 7, UpperThreshold: 100, LowerThreshold: 10}})
	if err != nil {
		t.Fatal(err)
	}
	m := attrMap(t, p)
	if got := m[cmdAttrService][svcAttrPort]; !bytes.Equal(got, []byte{0x01, 0xbb}) {
		t.Errorf("service port = % x, want 01 bb", got)
	}
	d := m[cmdAttrDest]
	want := map[uint16][]byte{
		destAttrAddr:       {198, 19, 0, 1},
		destAttrPort:       {0x20, 0xfb},
		destAttrAddrFamily: ne16(2),
		destAttrFwdMethod:  ne32(0),
		destAttrWeight:     ne32(7),
		destAttrUThresh:    ne32(100),
		destAttrLThresh:    ne32(10),
	}
	for typ, w := range want {
		if got := d[typ]; !bytes.Equal(got, w) {
			t.Errorf("dest attribute %d = % x, want % x", typ, got, w)
		}
	}
	if len(d) != len(want) {
		t.Errorf("%d dest attributes, want %d (no tunnel attributes unless set)", len(d), len(want))
	}
}

func TestEncodeIPv6PrefixNetmask(t *testing.T) {
	svc := Service{Family: AFInet6, Protocol: ProtoUDP, Address: netip.MustParseAddr("2001:db8::100"), Port: 53,
		Scheduler: "sh", Flags: FlagPersistent | FlagSched1, Timeout: 60, Netmask: 64}
	p, err := encodeOp(Op{Cmd: CmdSetService, Service: svc})
	if err != nil {
		t.Fatal(err)
	}
	s := attrMap(t, p)[cmdAttrService]
	if got := s[svcAttrNetmask]; !bytes.Equal(got, ne32(64)) {
		t.Errorf("IPv6 netmask = % x, want the prefix length 64 in host order", got)
	}
	if got := s[svcAttrAddr]; !bytes.Equal(got, netip.MustParseAddr("2001:db8::100").AsSlice()) {
		t.Errorf("IPv6 address = % x", got)
	}
	if got := s[svcAttrFlags]; !bytes.Equal(got[:4], ne32(FlagPersistent|FlagSched1)) {
		t.Errorf("flags = % x", got)
	}
}

func TestEncodeFWMarkService(t *testing.T) {
	svc := Service{Family: AFInet, FWMark: 8, Scheduler: "rr", Flags: FlagPersistent, Timeout: 360, Netmask: 0xFFFFFFFF}
	p, err := encodeOp(Op{Cmd: CmdNewService, Service: svc})
	if err != nil {
		t.Fatal(err)
	}
	s := attrMap(t, p)[cmdAttrService]
	if got := s[svcAttrFWMark]; !bytes.Equal(got, ne32(8)) {
		t.Errorf("fwmark = % x", got)
	}
	for _, typ := range []uint16{svcAttrProtocol, svcAttrAddr, svcAttrPort} {
		if _, ok := s[typ]; ok {
			t.Errorf("fwmark service carries attribute %d", typ)
		}
	}
}

func TestEncodeDelDestKeyOnly(t *testing.T) {
	p, err := encodeOp(Op{Cmd: CmdDelDest, Service: tcpService(3), Dest: Destination{Address: netip.MustParseAddr("2001:db8::5"), Port: 80}})
	if err != nil {
		t.Fatal(err)
	}
	m := attrMap(t, p)
	if len(m[cmdAttrService]) != 4 {
		t.Errorf("del-dest service part has %d attributes, want the 4 key ones", len(m[cmdAttrService]))
	}
	d := m[cmdAttrDest]
	if len(d) != 3 || !bytes.Equal(d[destAttrAddrFamily], ne16(10)) || len(d[destAttrAddr]) != 16 {
		t.Errorf("del-dest attributes %v: want address (16 bytes), port and family 10", d)
	}
}

func TestEncodeTunnelDest(t *testing.T) {
	svc := tcpService(1)
	p, err := encodeOp(Op{Cmd: CmdNewDest, Service: svc, Dest: Destination{
		Address: netip.MustParseAddr("2001:db8::7"), Port: 80, Forward: ForwardTunnel, Weight: 1,
		TunnelType: TunnelGUE, TunnelPort: 6080, TunnelFlags: 1}})
	if err != nil {
		t.Fatal(err)
	}
	d := attrMap(t, p)[cmdAttrDest]
	if !bytes.Equal(d[destAttrTunType], []byte{1}) || !bytes.Equal(d[destAttrTunPort], []byte{0x17, 0xc0}) || !bytes.Equal(d[destAttrTunFlags], ne16(1)) {
		t.Errorf("tunnel attributes: type % x port % x flags % x", d[destAttrTunType], d[destAttrTunPort], d[destAttrTunFlags])
	}
}

func TestEncodeDaemon(t *testing.T) {
	p, err := encodeDaemon(SyncDaemon{State: DaemonBackup, Interface: "eth1", SyncID: 7, MaxLen: 1400,
		Group: netip.MustParseAddr("239.1.2.3"), Port: 8848, TTL: 2})
	if err != nil {
		t.Fatal(err)
	}
	d := attrMap(t, p)[cmdAttrDaemon]
	want := map[uint16][]byte{
		daemonAttrState:      ne32(2),
		daemonAttrMcastIfn:   []byte("eth1\x00"),
		daemonAttrSyncID:     ne32(7),
		daemonAttrSyncMaxLen: ne16(1400),
		daemonAttrMcastGroup: {239, 1, 2, 3},
		daemonAttrMcastPort:  ne16(8848),
		daemonAttrMcastTTL:   {2},
	}
	for typ, w := range want {
		if got := d[typ]; !bytes.Equal(got, w) {
			t.Errorf("daemon attribute %d = % x, want % x", typ, got, w)
		}
	}
	p, err = encodeDaemon(SyncDaemon{State: DaemonMaster, Interface: "eth0", Group: netip.MustParseAddr("ff02::81")})
	if err != nil {
		t.Fatal(err)
	}
	d = attrMap(t, p)[cmdAttrDaemon]
	if len(d[daemonAttrMcastGrp6]) != 16 || d[daemonAttrMcastGroup] != nil {
		t.Errorf("IPv6 group not sent as MCAST_GROUP6: %v", d)
	}
	if len(d) != 4 {
		t.Errorf("%d daemon attributes, want state, ifname, syncid, group6", len(d))
	}
}

func TestValidationErrors(t *testing.T) {
	good := tcpService(1)
	v6 := Service{Family: AFInet6, Protocol: ProtoTCP, Address: netip.MustParseAddr("2001:db8::1"), Port: 80, Scheduler: "rr", Netmask: 128}
	d := routeDest(1)
	with := func(f func(*Service)) Service { s := good; f(&s); return s }
	withD := func(f func(*Destination)) Destination { x := d; f(&x); return x }
	cases := []struct {
		name string
		op   Op
		want string
	}{
		{"family", Op{Cmd: CmdNewService, Service: with(func(s *Service) { s.Family = 7 })}, "address family 7"},
		{"protocol", Op{Cmd: CmdNewService, Service: with(func(s *Service) { s.Protocol = 1 })}, "protocol 1"},
		{"no address", Op{Cmd: CmdNewService, Service: with(func(s *Service) { s.Address = netip.Addr{} })}, "service address is missing"},
		{"v6 address in v4", Op{Cmd: CmdNewService, Service: with(func(s *Service) { s.Address = netip.MustParseAddr("2001:db8::1") })}, "is not IPv4"},
		{"zone", Op{Cmd: CmdDelService, Service: Service{Family: AFInet6, Protocol: ProtoTCP, Address: netip.MustParseAddr("fe80::1%eth0")}}, "has a zone"},
		{"fwmark with address", Op{Cmd: CmdNewService, Service: with(func(s *Service) { s.FWMark = 8 })}, "firewall-mark service 8 must have no protocol"},
		{"no scheduler", Op{Cmd: CmdNewService, Service: with(func(s *Service) { s.Scheduler = "" })}, "scheduler is empty"},
		{"long scheduler", Op{Cmd: CmdSetService, Service: with(func(s *Service) { s.Scheduler = "abcdefghijklmnopq" })}, "longer than 15"},
		{"v6 netmask 0", Op{Cmd: CmdNewService, Service: func() Service { s := v6; s.Netmask = 0; return s }()}, "not a prefix length 1..128"},
		{"v6 netmask 129", Op{Cmd: CmdNewService, Service: func() Service { s := v6; s.Netmask = 129; return s }()}, "not a prefix length 1..128"},
		{"dest missing", Op{Cmd: CmdNewDest, Service: good, Dest: Destination{Port: 80}}, "destination address is missing"},
		{"dest forward", Op{Cmd: CmdNewDest, Service: good, Dest: withD(func(x *Destination) { x.Forward = 1 })}, "forwarding method 1"},
		{"dest weight", Op{Cmd: CmdSetDest, Service: good, Dest: withD(func(x *Destination) { x.Weight = -5 })}, "weight -5 is negative"},
		{"dest thresholds", Op{Cmd: CmdNewDest, Service: good, Dest: withD(func(x *Destination) { x.LowerThreshold = 5 })}, "lower threshold 5 is above the upper threshold 0"},
		{"dest mixed family", Op{Cmd: CmdNewDest, Service: good, Dest: withD(func(x *Destination) { x.Address = netip.MustParseAddr("2001:db8::2") })}, "only tunnel forwarding"},
		{"dest family mismatch", Op{Cmd: CmdNewDest, Service: good, Dest: withD(func(x *Destination) { x.Family = AFInet6 })}, "is not IPv6"},
		{"dest tunnel type", Op{Cmd: CmdNewDest, Service: good, Dest: withD(func(x *Destination) { x.Forward = ForwardTunnel; x.TunnelType = 9 })}, "tunnel type 9"},
		{"command", Op{Cmd: 4, Service: good}, "unknown command 4"},
	}
	for _, c := range cases {
		_, err := encodeOp(c.op)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	// What the kernel accepts, the encoder does too.
	for _, op := range []Op{
		{Cmd: CmdNewService, Service: good},
		{Cmd: CmdNewService, Service: v6},
		{Cmd: CmdNewService, Service: Service{Family: AFInet6, FWMark: 9, Scheduler: "wlc", Netmask: 128}},
		{Cmd: CmdNewDest, Service: good, Dest: withD(func(x *Destination) { x.Address = netip.MustParseAddr("2001:db8::2"); x.Forward = ForwardTunnel })},
		{Cmd: CmdNewDest, Service: good, Dest: withD(func(x *Destination) { x.UpperThreshold = 10; x.LowerThreshold = 5 })},
		{Cmd: CmdDelDest, Service: good, Dest: Destination{Address: d.Address, Port: 80, Weight: -1}},
	} {
		if _, err := encodeOp(op); err != nil {
			t.Errorf("%s: %v", op, err)
		}
	}
}

func TestDaemonValidation(t *testing.T) {
	for _, c := range []struct {
		d    SyncDaemon
		want string
	}{
		{SyncDaemon{State: 3, Interface: "eth0"}, "state 3"},
		{SyncDaemon{State: DaemonMaster}, "interface is empty"},
		{SyncDaemon{State: DaemonMaster, Interface: "a-very-long-ifname"}, "longer than 15"},
		{SyncDaemon{State: DaemonMaster, Interface: "eth0", SyncID: 256}, "syncid 256"},
		{SyncDaemon{State: DaemonMaster, Interface: "eth0", Group: netip.MustParseAddr("198.18.0.1")}, "not a multicast"},
	} {
		if _, err := encodeDaemon(c.d); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.d, err, c.want)
		}
	}
	if _, err := encodeDaemonStop(0); err == nil {
		t.Error("stopping state 0 accepted")
	}
}

func TestNetmask(t *testing.T) {
	for _, c := range []struct {
		fam  uint16
		bits int
		mask Netmask
		text string
	}{
		{AFInet, 32, 0xFFFFFFFF, "255.255.255.255"},
		{AFInet, 24, 0xFFFFFF00, "255.255.255.0"},
		{AFInet, 1, 0x80000000, "128.0.0.0"},
		{AFInet, 0, 0, "0.0.0.0"},
		{AFInet6, 64, 64, "64"},
		{AFInet6, 128, 128, "128"},
	} {
		m, err := NetmaskFromPrefix(c.fam, c.bits)
		if err != nil || m != c.mask {
			t.Errorf("NetmaskFromPrefix(%d, %d) = %#x, %v; want %#x", c.fam, c.bits, uint32(m), err, uint32(c.mask))
		}
		if n, ok := m.PrefixLen(c.fam); !ok || n != c.bits {
			t.Errorf("%#x.PrefixLen(%d) = %d, %v; want %d", uint32(m), c.fam, n, ok, c.bits)
		}
		if got := m.Format(c.fam); got != c.text {
			t.Errorf("%#x.Format(%d) = %q, want %q", uint32(m), c.fam, got, c.text)
		}
	}
	for _, c := range []struct {
		fam  uint16
		bits int
	}{{AFInet, 33}, {AFInet, -1}, {AFInet6, 0}, {AFInet6, 129}, {3, 8}} {
		if _, err := NetmaskFromPrefix(c.fam, c.bits); err == nil {
			t.Errorf("NetmaskFromPrefix(%d, %d) accepted", c.fam, c.bits)
		}
	}
	if _, ok := Netmask(0xFF00FF00).PrefixLen(AFInet); ok {
		t.Error("a non-contiguous mask reads as a prefix")
	}
	if _, ok := Netmask(0).PrefixLen(AFInet6); ok {
		t.Error("IPv6 netmask 0 reads as a prefix")
	}
}
