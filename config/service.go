package config

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Service defaults.
const (
	DefaultScheduler   = "wlc" // ipvsadm's default
	DefaultPersistence = 360 * time.Second
	DefaultProtocol    = TCP
	DefaultForward     = ForwardDR
	DefaultWeight      = 1
)

// Schedulers lists the IPVS schedulers lvsd accepts.
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}

// schedulerFlags maps each scheduler flag to the scheduler it belongs to.
var schedulerFlags = map[string]string{
	"sh-fallback": "sh", "sh-port": "sh",
	"mh-fallback": "mh", "mh-port": "mh",
}

// maxPersistence is the largest timeout the kernel keeps exactly: it
// stores seconds × HZ in 32 bits, so above this (with HZ up to 1000) the
// value read back differs from the one written and every resync would
// "repair" it.
const maxPersistence = math.MaxUint32 / 1000 * time.Second

func (d *decoder) service(r *reader) *Service {
	s := &Service{Pos: r.tablePos(), at: make(positions, 0, 8)}
	at := func(key string) { // remember where set keys are, for PosOf
		if r.has(key) {
			s.at = append(s.at, keyPos{key, r.pos(key)})
		}
	}

	s.Name = d.requiredName(r, "service")
	at("name")
	if g, ok := r.str("group"); ok {
		s.Group = g
		at("group")
	}
	label := serviceLabel(s.Name)

	// Identity: address+port+protocol, or fwmark+family.
	addr, hasAddr := r.str("address")
	mark, hasMark := r.integer("fwmark", 0, math.MaxUint32)
	fam, hasFam := r.str("family")
	proto, hasProto := r.str("protocol")
	port, hasPort := r.integer("port", 0, 65535)
	for _, k := range []string{"address", "fwmark", "family", "protocol", "port"} {
		at(k)
	}
	if hasFam && fam != string(IPv4) && fam != string(IPv6) {
		d.e.at(r.pos("family"), "service.family: %q is not ipv4 or ipv6", fam)
		hasFam = false
	}
	s.FWMark = uint32(mark)
	switch {
	case hasMark && mark > 0:
		if hasAddr {
			d.e.at(r.pos("address"), "%s: an fwmark service has no address (the mark selects its traffic): drop address or fwmark", label)
		}
		if hasPort {
			d.e.at(r.pos("port"), "%s: an fwmark service has no port: drop port (use [service.mark] ports)", label)
		}
		if hasProto {
			d.e.at(r.pos("protocol"), "%s: an fwmark service has no protocol: set it in [service.mark]", label)
		}
		s.Family = IPv4
		if hasFam {
			s.Family = Family(fam)
		}
	case r.has("fwmark") && !hasMark:
		// bad fwmark already reported
	case !hasAddr:
		if !r.has("address") {
			d.e.at(s.Pos, "%s needs an address (or an fwmark)", label)
		}
	default:
		a, err := netip.ParseAddr(addr)
		switch {
		case err != nil:
			d.e.at(r.pos("address"), "service.address: %q is not an IP address", addr)
		case a.Zone() != "" || a.IsUnspecified() || a.IsMulticast():
			d.e.at(r.pos("address"), "service.address: %s cannot be a virtual service address", addr)
		default:
			s.Address = a.Unmap()
			s.Family = familyOf(s.Address)
			if hasFam && Family(fam) != s.Family {
				d.e.at(r.pos("family"), "%s: family %s does not match address %s (%s)", label, fam, s.Address, s.Family)
			}
		}
		s.Protocol = DefaultProtocol
		if hasProto {
			if p, ok := parseProtocol(proto); ok {
				s.Protocol = p
			} else {
				d.e.at(r.pos("protocol"), "service.protocol: %q is not tcp, udp or sctp", proto)
			}
		}
		s.Port = uint16(port)
	}
	isFWM := s.FWMark > 0

	// Scheduler.
	s.Scheduler = DefaultScheduler
	if v, ok := r.str("scheduler"); ok {
		if slices.Contains(Schedulers, v) {
			s.Scheduler = v
		} else {
			d.e.at(r.pos("scheduler"), "service.scheduler: unknown scheduler %q (one of %s)", v, strings.Join(Schedulers, " "))
		}
	}
	at("scheduler")
	if flags, ok := r.strs("scheduler_flags"); ok {
		for _, f := range flags {
			owner, known := schedulerFlags[f]
			switch {
			case !known:
				d.e.at(r.pos("scheduler_flags"), "service.scheduler_flags: unknown flag %q (sh-fallback sh-port mh-fallback mh-port)", f)
			case owner != s.Scheduler:
				d.e.at(r.pos("scheduler_flags"), "service.scheduler_flags: %q needs scheduler %q, not %q", f, owner, s.Scheduler)
			case slices.Contains(s.SchedulerFlags, f):
				d.e.at(r.pos("scheduler_flags"), "service.scheduler_flags: duplicate flag %q", f)
			default:
				s.SchedulerFlags = append(s.SchedulerFlags, f)
			}
		}
	}

	// Persistence.
	pers, hasPers := r.duration("persistence")
	persistent := r.boolean("persistent", false)
	at("persistence")
	switch {
	case hasPers && r.has("persistent") && !persistent:
		d.e.at(r.pos("persistent"), "%s: persistent = false conflicts with persistence = %q", label, pers)
	case hasPers && (pers < time.Second || pers%time.Second != 0 || pers > maxPersistence):
		d.e.at(r.pos("persistence"), "service.persistence: %s must be a whole number of seconds from 1s to %s (the kernel counts seconds, in 32-bit jiffies)", pers, maxPersistence)
	case hasPers:
		s.Persistence = pers
	case persistent:
		s.Persistence = DefaultPersistence
	}
	// Intent, not outcome: a bad persistence value is reported once, not
	// again as "port 0 needs persistence".
	persWanted := r.has("persistence") || persistent
	s.PersistenceBits = 32
	if s.Family == IPv6 {
		s.PersistenceBits = 128
	}
	if v := r.get("persistence_granularity"); v != nil {
		if !persWanted {
			d.e.at(r.pos("persistence_granularity"), "%s: persistence_granularity needs persistence", label)
		}
		if bits, ok := d.granularity(v, s.Family); ok {
			s.PersistenceBits = bits
		}
	}

	// Port 0 is a "catch all ports" service; ipvsadm only allows it with persistence.
	if !isFWM && s.Address.IsValid() && s.Port == 0 && !persWanted && (hasPort || !r.has("port")) {
		p := r.pos("port")
		if !hasPort {
			p = s.Pos
		}
		d.e.at(p, "%s: port 0 (all ports) needs persistence, as ipvsadm requires: set persistence or a port", label)
	}

	s.OnePacket = r.boolean("one_packet", false)

	s.Forward = DefaultForward
	if v, ok := r.str("forward"); ok {
		if f, ok := parseForward(v); ok {
			s.Forward = f
		} else {
			d.e.at(r.pos("forward"), "service.forward: %q is not dr, nat or tunnel", v)
		}
	}
	s.OnFailure = OnFailureRemove
	if v, ok := r.str("on_failure"); ok {
		switch OnFailure(v) {
		case OnFailureRemove, OnFailureInhibit:
			s.OnFailure = OnFailure(v)
		default:
			d.e.at(r.pos("on_failure"), "service.on_failure: %q is not remove or inhibit", v)
		}
	}
	if v, ok := r.str("sorry_server"); ok && v != "" {
		s.SorryServer = d.sorryServer(r, s, v)
	}
	s.Quorum = int(r.intOr("quorum", 0, math.MaxInt32, 0))
	s.QuorumHysteresis = int(r.intOr("quorum_hysteresis", 0, math.MaxInt32, 0))
	if s.QuorumHysteresis > s.Quorum {
		d.e.at(r.pos("quorum_hysteresis"), "service.quorum_hysteresis (%d) must not exceed quorum (%d)", s.QuorumHysteresis, s.Quorum)
	}
	s.Alpha = r.boolean("alpha", false)
	s.Omega = r.boolean("omega", false)

	if mr := r.sub("mark"); mr.t != nil {
		if !isFWM {
			d.e.at(mr.tablePos(), "%s: [service.mark] is only for fwmark services (set fwmark)", label)
		}
		s.Mark = d.mark(&mr, s.Family)
	}
	if s.OnePacket {
		udp := s.Protocol == UDP || (isFWM && s.Mark != nil && s.Mark.Protocol == UDP) || (isFWM && s.Mark == nil)
		if !udp {
			d.e.at(r.pos("one_packet"), "%s: one_packet only affects udp services", label)
		}
	}

	cr := r.sub("check")
	checkTable := cr.t
	n := len(d.e.list)
	s.Check = d.check(&cr, nil)
	// Backends' overrides inherit the service check's keys, and would
	// report its problems again.
	svcCheck := checkErrs{pos: cr.tablePos(), list: slices.Clone(d.e.list[n:])}

	// The backends of a service are allocated together.
	tables := r.tables("backend")
	slab := make([]Backend, len(tables))
	s.Backends = make([]*Backend, len(tables))
	d.seen.reset()
	for i, v := range tables {
		br := r.at("backend", v)
		d.backend(&br, &slab[i], s, label, checkTable, &svcCheck)
		s.Backends[i] = &slab[i]
	}
	r.done()
	if s.Name == "" {
		return nil
	}
	return s
}

// serviceLabel names a service in messages (`service "web"`, or `service`
// before its name is known). It is formatted only when a message is made.
type serviceLabel string

func (l serviceLabel) String() string {
	if l == "" {
		return "service"
	}
	return fmt.Sprintf("service %q", string(l))
}

func parseProtocol(s string) (Protocol, bool) {
	switch Protocol(s) {
	case TCP, UDP, SCTP:
		return Protocol(s), true
	}
	return "", false
}

// tunnel reads a tunnel backend's encapsulation (keepalived's tunnel_type,
// tunnel_port, tunnel_checksum). Errors point at the key concerned.
func (d *decoder) tunnel(r *reader, b *Backend, label serviceLabel) {
	typ, hasType := r.str("tunnel_type")
	port, hasPort := r.integer("tunnel_port", 1, 65535)
	sum, hasSum := r.str("tunnel_checksum")
	if !hasType && !hasPort && !hasSum && !r.has("tunnel_type") && !r.has("tunnel_port") && !r.has("tunnel_checksum") {
		return
	}
	if b.Forward != ForwardTunnel {
		key := "tunnel_type"
		for _, k := range []string{"tunnel_type", "tunnel_port", "tunnel_checksum"} {
			if r.has(k) {
				key = k
				break
			}
		}
		d.e.at(r.pos(key), "%s: service.backend.%s needs forward = \"tunnel\" (backend %s forwards by %s)", label, key, b.Address, b.Forward)
		return
	}
	b.TunnelType = "ipip"
	if hasType {
		switch typ {
		case "ipip", "gue", "gre":
			b.TunnelType = typ
		default:
			d.e.at(r.pos("tunnel_type"), "service.backend.tunnel_type: %q is not ipip, gue or gre", typ)
			return
		}
	}
	switch {
	case b.TunnelType == "gue" && !hasPort && !r.has("tunnel_port"):
		d.e.at(r.pos("tunnel_type"), "%s: a gue tunnel to %s needs tunnel_port (the real server's GUE UDP port)", label, b.Address)
	case b.TunnelType != "gue" && hasPort:
		d.e.at(r.pos("tunnel_port"), "service.backend.tunnel_port: only a gue tunnel has a port (tunnel_type is %s)", b.TunnelType)
	case hasPort:
		b.TunnelPort = uint16(port)
	}
	b.TunnelChecksum = "none"
	if hasSum {
		switch {
		case sum != "none" && sum != "csum" && sum != "remcsum":
			d.e.at(r.pos("tunnel_checksum"), "service.backend.tunnel_checksum: %q is not none, csum or remcsum", sum)
		case sum == "remcsum" && b.TunnelType != "gue":
			d.e.at(r.pos("tunnel_checksum"), "service.backend.tunnel_checksum: remcsum (remote checksum offload) is for gue tunnels only")
		case sum != "none" && b.TunnelType == "ipip":
			d.e.at(r.pos("tunnel_checksum"), "service.backend.tunnel_checksum: ipip tunnels carry no checksum (use gue or gre)")
		default:
			b.TunnelChecksum = sum
		}
	}
}

func parseForward(s string) (Forward, bool) {
	switch Forward(s) {
	case ForwardDR, ForwardNAT, ForwardTunnel:
		return Forward(s), true
	}
	return "", false
}

// granularity reads persistence_granularity: a prefix length, or for IPv4 a
// contiguous dotted netmask such as "255.255.255.0".
func (d *decoder) granularity(v *value, fam Family) (int, bool) {
	p := d.src.pos(v.keyOff)
	switch v.kind {
	case kInt:
		lo, hi := int64(0), int64(32)
		if fam == IPv6 {
			lo, hi = 1, 128
		}
		if v.num < lo || v.num > hi {
			d.e.at(p, "service.persistence_granularity: %d is out of range %d..%d for %s", v.num, lo, hi, fam)
			return 0, false
		}
		return int(v.num), true
	case kString:
		m, err := netip.ParseAddr(v.str)
		if err != nil || !m.Is4() {
			d.e.at(p, "service.persistence_granularity: %q is not a prefix length or an IPv4 netmask", v.str)
			return 0, false
		}
		if fam == IPv6 {
			d.e.at(p, "service.persistence_granularity: IPv6 services take a prefix length (1..128), not a netmask")
			return 0, false
		}
		b := m.As4()
		n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		ones := 0
		for n&(1<<31) != 0 {
			ones++
			n <<= 1
		}
		if n != 0 {
			d.e.at(p, "service.persistence_granularity: netmask %s is not contiguous", v.str)
			return 0, false
		}
		return ones, true
	}
	d.e.at(p, "service.persistence_granularity: want a prefix length or a netmask string, got %s", v.kind)
	return 0, false
}

// sorryServer reads the sorry server, a destination forwarded as the
// service's backends are by default: the port rules of backends apply.
func (d *decoder) sorryServer(r *reader, s *Service, v string) netip.AddrPort {
	p := r.pos("sorry_server")
	ap, err := netip.ParseAddrPort(v)
	hasPort := err == nil
	if err != nil {
		a, aerr := netip.ParseAddr(v)
		if aerr != nil {
			d.e.at(p, "service.sorry_server: %q is not an address or address:port", v)
			return netip.AddrPort{}
		}
		ap = netip.AddrPortFrom(a, s.Port)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if s.Family != "" && familyOf(ap.Addr()) != s.Family {
		d.e.at(p, "service.sorry_server: %s is %s but the service is %s", ap.Addr(), familyOf(ap.Addr()), s.Family)
	}
	isFWM := s.FWMark > 0
	switch {
	case s.Forward == ForwardNAT && !isFWM && s.Address.IsValid() && s.Port == 0 && ap.Port() == 0:
		d.e.at(p, "service.sorry_server: nat sorry server %s needs a port because the service port is 0 (address:port)", ap.Addr())
	case s.Forward != ForwardNAT && hasPort && ap.Port() != s.Port:
		what := "the service port (" + strconv.Itoa(int(s.Port)) + "), or leave the port out"
		if isFWM {
			what = "none (fwmark services keep the packet's port): give the address alone"
		}
		d.e.at(p, "service.sorry_server: %s sorry servers cannot change the port: port must be %s", s.Forward, what)
	}
	return ap
}

func (d *decoder) mark(r *reader, fam Family) *Mark {
	m := &Mark{Pos: r.tablePos(), Protocol: TCP}
	if v, ok := r.str("protocol"); ok {
		if p, ok := parseProtocol(v); ok {
			m.Protocol = p
		} else {
			d.e.at(r.pos("protocol"), "service.mark.protocol: %q is not tcp, udp or sctp", v)
		}
	}
	if vals, ok := r.elems("ports"); ok {
		for i, v := range vals {
			p := d.src.pos(v.off)
			switch {
			case v.kind != kInt:
				d.e.at(p, "service.mark.ports[%d]: want an integer, got %s", i, v.kind)
			case v.num < 1 || v.num > 65535:
				d.e.at(p, "service.mark.ports[%d]: %d is out of range 1..65535", i, v.num)
			case slices.Contains(m.Ports, uint16(v.num)):
				d.e.at(p, "service.mark.ports[%d]: duplicate port %d", i, v.num)
			default:
				m.Ports = append(m.Ports, uint16(v.num))
			}
		}
	}
	if v, ok := r.str("destination"); ok {
		pfx, err := netip.ParsePrefix(v)
		if err != nil {
			a, aerr := netip.ParseAddr(v)
			if aerr != nil {
				d.e.at(r.pos("destination"), "service.mark.destination: %q is not an address or prefix", v)
			} else {
				a = a.Unmap()
				pfx = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if pfx.IsValid() {
			pfx = pfx.Masked()
			if familyOf(pfx.Addr()) != fam {
				d.e.at(r.pos("destination"), "service.mark.destination: %s is %s but the service family is %s", v, familyOf(pfx.Addr()), fam)
			}
			m.Destination = pfx
		}
	} else if !r.has("destination") {
		d.e.at(m.Pos, "service.mark needs a destination (the VIP whose traffic gets the mark)")
	}
	r.done()
	return m
}

// backend decodes one backend of s into b.
func (d *decoder) backend(r *reader, b *Backend, s *Service, label serviceLabel, checkTable *table, svcCheck *checkErrs) {
	*b = Backend{Pos: r.tablePos(), Weight: DefaultWeight, Forward: s.Forward}
	isFWM := s.FWMark > 0
	addr, ok := r.str("address")
	if ok {
		a, err := netip.ParseAddr(addr)
		switch {
		case err != nil:
			d.e.at(r.pos("address"), "service.backend.address: %q is not an IP address", addr)
			ok = false
		case a.Zone() != "" || a.IsUnspecified() || a.IsMulticast():
			d.e.at(r.pos("address"), "service.backend.address: %s cannot be a real server", addr)
			ok = false
		default:
			b.Address = a.Unmap()
			if s.Family != "" && familyOf(b.Address) != s.Family {
				d.e.at(r.pos("address"), "%s: backend %s is %s but the service is %s", label, b.Address, familyOf(b.Address), s.Family)
			}
		}
	} else if !r.has("address") {
		d.e.at(b.Pos, "%s: backend needs an address", label)
	}
	port, hasPort := r.integer("port", 0, 65535)
	b.Port = s.Port
	if hasPort {
		b.Port = uint16(port)
	}
	if v, has := r.str("forward"); has {
		if f, ok := parseForward(v); ok {
			b.Forward = f
		} else {
			d.e.at(r.pos("forward"), "service.backend.forward: %q is not dr, nat or tunnel", v)
		}
	}
	switch {
	case b.Forward == ForwardNAT && !isFWM && s.Address.IsValid() && s.Port == 0 && b.Port == 0:
		d.e.at(b.Pos, "%s: nat backend %s needs a port because the service port is 0", label, b.Address)
	case b.Forward != ForwardNAT && hasPort && b.Port != s.Port:
		what := "the service port (" + strconv.Itoa(int(s.Port)) + ")"
		if isFWM {
			what = "none (fwmark services keep the packet's port)"
		}
		d.e.at(r.pos("port"), "%s: %s backends cannot change the port: port must be %s", label, b.Forward, what)
	}
	b.Weight = int(r.intOr("weight", 0, 65535, DefaultWeight))
	upper, _ := r.integer("upper_threshold", 0, math.MaxUint32)
	lower, _ := r.integer("lower_threshold", 0, math.MaxUint32)
	b.UpperThreshold, b.LowerThreshold = uint32(upper), uint32(lower)
	switch {
	case lower > 0 && upper == 0:
		d.e.at(r.pos("lower_threshold"), "service.backend.lower_threshold needs upper_threshold")
	case lower > upper:
		d.e.at(r.pos("lower_threshold"), "service.backend.lower_threshold (%d) must not exceed upper_threshold (%d)", lower, upper)
	}

	d.tunnel(r, b, label)

	b.Check = s.Check
	if v := r.get("check"); v != nil {
		if v.kind != kTable {
			r.typeErr("check", v, "a table")
		} else {
			mr := r.child("check", mergeTables(checkTable, v.tab), v.off)
			n := len(d.e.list)
			b.Check = d.check(&mr, v.tab)
			d.e.list = append(d.e.list[:n], d.overrideErrs(d.e.list[n:], mr.tablePos(), checkTable, v.tab, svcCheck)...)
		}
	}
	if ok && b.Address.IsValid() {
		k := b.Key()
		if first, dup := d.seen.add(k, r.pos("address")); dup {
			d.e.at(r.pos("address"), "%s: duplicate backend %s (first at %s)", label, k, first)
		}
		if b.Check.needsPort() && b.Check.Port == 0 && b.Port == 0 {
			d.e.at(b.Pos, "%s: backend %s has no port and check.port is not set: its %s check needs a port", label, b.Address, b.Check.Type)
		}
		if b.Check.Source.IsValid() && familyOf(b.Check.Source) != familyOf(b.Address) {
			d.e.at(b.Check.at.get("source", b.Check.Pos), "%s: check.source %s is %s but backend %s is %s",
				label, b.Check.Source, familyOf(b.Check.Source), b.Address, familyOf(b.Address))
		}
	}
	r.done()
}

// backendSet finds duplicate backends of one service: a scan while the
// service has few, a map beyond, so the usual ten backends of each of
// 10,000 services cost no map.
type backendSet struct {
	list []seenBackend
	m    map[netip.AddrPort]Pos
}

type seenBackend struct {
	key netip.AddrPort
	pos Pos
}

func (bs *backendSet) reset() {
	clear(bs.list) // drop the file names the positions hold
	bs.list, bs.m = bs.list[:0], nil
}

// add records k at p, or returns where k was first seen.
func (bs *backendSet) add(k netip.AddrPort, p Pos) (Pos, bool) {
	if bs.m != nil {
		if first, dup := bs.m[k]; dup {
			return first, true
		}
		bs.m[k] = p
		return Pos{}, false
	}
	for _, sb := range bs.list {
		if sb.key == k {
			return sb.pos, true
		}
	}
	bs.list = append(bs.list, seenBackend{k, p})
	if len(bs.list) > 32 {
		bs.m = make(map[netip.AddrPort]Pos, 2*len(bs.list))
		for _, sb := range bs.list {
			bs.m[sb.key] = sb.pos
		}
	}
	return Pos{}, false
}

// checkErrs are the errors of a service's [service.check] table, at pos.
type checkErrs struct {
	pos  Pos
	list Errors
}

// overrideErrs keeps, of the errors found in a backend's check override
// (at pos; own keys over the service's base table), each problem once and
// in the backend's table: an error the service check already reported (the
// same message about the same inherited key, or the same missing key) is
// dropped; one that an inherited key only has with the backend's own keys
// moves to the override's header, saying where the inherited key is.
func (d *decoder) overrideErrs(list Errors, pos Pos, base, own *table, svc *checkErrs) Errors {
	if base == nil {
		return list
	}
	out := list[:0]
	for _, e := range list {
		same := strings.ReplaceAll(e.Msg, "service.backend.check.", "service.check.")
		at := e.Pos()
		if at == pos {
			at = svc.pos
		}
		if slices.ContainsFunc(svc.list, func(se Error) bool { return se.Pos() == at && se.Msg == same }) {
			continue
		}
		for i, k := range base.keys {
			if own.get(k) == nil && d.src.pos(base.vals[i].keyOff) == e.Pos() {
				e.Msg += fmt.Sprintf(" (%s is inherited from [service.check] at %s)", k, e.Pos())
				e.File, e.Line, e.Col = pos.File, pos.Line, pos.Col
				break
			}
		}
		out = append(out, e)
	}
	return out
}

// mergeTables overlays a backend's check table on the service's.
func mergeTables(base, over *table) *table {
	if base == nil {
		return over
	}
	m := newTable(hClosed)
	for _, k := range base.keys {
		if over.get(k) == nil {
			m.set(k, base.get(k))
		}
	}
	for i, k := range over.keys {
		m.set(k, over.vals[i])
	}
	return m
}
