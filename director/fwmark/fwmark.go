// Package fwmark installs the nftables rules that give packets the firewall
// mark of an IPVS firewall-mark service (e.g. ports 80 and 443 of a VIP get
// mark 8, so that both are one persistent service). A mark's destination is a
// prefix: a single address (/32, /128) or a network such as 198.18.1.0/28.
//
// lvsd owns one table, "inet lvsd", with two base chains at mangle priority
// (-150), ahead of IPVS: "prerouting" (type filter) for traffic arriving from
// clients and "output" (type route, so a changed mark can reroute) for
// clients on the director itself. Each mark is one rule in each chain,
// identified by its comment, so that an Apply changes only what differs.
// A single-address destination is an exact compare ("ip daddr 198.18.1.100"),
// a shorter prefix a masked one ("ip daddr 198.18.1.0/28").
// No other table is ever read for changes or written.
package fwmark

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/lvsd/lvsd/director"
)

// TableName is the name of lvsd's table in the inet family.
const TableName = "lvsd"

// commentPrefix marks (and versions) the rules lvsd writes; a rule in lvsd's
// table without it, or with another version, is replaced.
const commentPrefix = "lvsd/1 "

// Mark is the traffic one firewall-mark service covers: packets to an
// address in Destination with protocol Protocol and a destination port in
// Ports get Mark.
type Mark struct {
	Mark     uint32
	Protocol director.Protocol // TCP, UDP or SCTP
	Ports    []uint16
	// Destination is a masked prefix; a single address is a full-length
	// prefix (198.18.1.100/32, 2001:db8::100/128).
	Destination netip.Prefix
}

func (m Mark) String() string {
	return fmt.Sprintf("mark %d for %s %s dport %s", m.Mark, m.Protocol, dstString(m.Destination), joinPorts(m.sortedPorts()))
}

// dstString writes a destination as nft(8) prints it: a full-length prefix
// as its address, a shorter one in CIDR notation.
func dstString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// Validate reports what is wrong with the mark, or nil.
func (m Mark) Validate() error {
	switch {
	case m.Mark == 0:
		return errors.New("mark 0 is not a firewall mark")
	case m.Protocol != director.TCP && m.Protocol != director.UDP && m.Protocol != director.SCTP:
		return fmt.Errorf("protocol %s: want tcp, udp or sctp", m.Protocol)
	case len(m.Ports) == 0:
		return errors.New("no ports")
	}
	if err := validateDestination(m.Destination); err != nil {
		return err
	}
	ports := m.sortedPorts()
	for i, p := range ports {
		if p == 0 {
			return errors.New("port 0 cannot be matched")
		}
		if i > 0 && ports[i-1] == p {
			return fmt.Errorf("port %d listed twice", p)
		}
	}
	return nil
}

func validateDestination(p netip.Prefix) error {
	a := p.Addr()
	switch {
	case !a.IsValid():
		return errors.New("no destination address")
	case !p.IsValid():
		return fmt.Errorf("destination %s: prefix length out of range (0..%d)", a, a.BitLen())
	case a.Is4In6():
		if p.Bits() >= 96 {
			return fmt.Errorf("destination %s is an IPv4-mapped prefix; write it as %s",
				p, netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked())
		}
		return fmt.Errorf("destination %s is an IPv4-mapped prefix; write IPv4 destinations as IPv4", p)
	case a.Zone() != "": // netip.Prefix strips zones; kept in case that changes
		return fmt.Errorf("destination %s has a zone", a)
	case p.Bits() == 0:
		return fmt.Errorf("destination %s is a default route: it would mark traffic to every address", p)
	case p.Masked() != p:
		return fmt.Errorf("destination %s has host bits set: write the network %s, or %s for the one address", p, p.Masked(), a)
	case p.IsSingleIP() && a.IsUnspecified():
		return fmt.Errorf("destination %s is unspecified", a)
	}
	return nil
}

func (m Mark) sortedPorts() []uint16 {
	p := slices.Clone(m.Ports)
	slices.Sort(p)
	return p
}

func joinPorts(ports []uint16) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

// comment is the rule's identity: every field in canonical form, the
// destination as nft prints it (a single address bare, so that rules written
// before destinations were prefixes keep their identity; a network with its
// length). nft limits comments to 128 bytes, so a long port list is replaced
// by its digest.
func (m Mark) comment() string {
	ports := joinPorts(m.sortedPorts())
	dst := dstString(m.Destination)
	c := fmt.Sprintf("%smark %d %s daddr %s dport %s", commentPrefix, m.Mark, m.Protocol, dst, ports)
	if len(c) > 120 {
		sum := sha256.Sum256([]byte(ports))
		c = fmt.Sprintf("%smark %d %s daddr %s dport sha256:%s", commentPrefix, m.Mark, m.Protocol, dst, hex.EncodeToString(sum[:8]))
	}
	return c
}

// Manager applies marks to lvsd's table. Safe for concurrent use.
type Manager struct {
	log   *slog.Logger
	netns int // -1: the caller's namespace
	mu    sync.Mutex
}

// Option configures a Manager.
type Option func(*Manager)

// WithNetNS makes the Manager work in the network namespace open as fd
// instead of the current one (tests; a director serving another namespace).
func WithNetNS(fd int) Option { return func(m *Manager) { m.netns = fd } }

// New returns a Manager.
func New(log *slog.Logger, opts ...Option) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{log: log, netns: -1}
	for _, o := range opts {
		o(m)
	}
	return m
}

func (m *Manager) conn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if m.netns >= 0 {
		opts = append(opts, nftables.WithNetNSFd(m.netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	return c, nil
}

var (
	table = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	// chains are lvsd's base chains, both at mangle priority so that marks
	// are set before IPVS looks up firewall-mark services.
	chains = []*nftables.Chain{
		{Name: "prerouting", Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle},
		{Name: "output", Table: table, Type: nftables.ChainTypeRoute,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle},
	}
)

// Apply makes lvsd's table hold exactly the rules for marks, in one atomic
// nftables transaction, changing only rules that differ; nothing is written
// when the table already matches. With no marks the table is removed.
// Invalid marks fail the call with every problem and nothing written.
func (m *Manager) Apply(ctx context.Context, marks []Mark) error {
	if err := validateMarks(marks); err != nil {
		return fmt.Errorf("fwmark: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fwmark: %w", err)
	}
	if len(marks) == 0 {
		return m.Remove(ctx)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.conn()
	if err != nil {
		return fmt.Errorf("fwmark: %w", err)
	}
	exists, err := tableExists(c)
	if err != nil {
		return fmt.Errorf("fwmark: %w", err)
	}
	want := make(map[string]Mark, len(marks))
	for _, mk := range marks {
		want[mk.comment()] = mk
	}
	var added, deleted int
	rebuild := !exists
	if exists {
		ok, err := chainsAsExpected(c)
		if err != nil {
			return fmt.Errorf("fwmark: %w", err)
		}
		if !ok {
			// Someone changed lvsd's chains: replace the whole table in the
			// same transaction, so packets see the old or the new rules.
			m.log.Warn("nftables table inet lvsd has unexpected chains or sets; replacing it")
			c.DelTable(table)
			rebuild = true
		}
	}
	if rebuild {
		c.AddTable(table)
		for _, ch := range chains {
			c.AddChain(ch)
		}
	}
	for _, ch := range chains {
		have := map[string]bool{}
		if !rebuild {
			rules, err := c.GetRules(table, ch)
			if err != nil {
				return fmt.Errorf("fwmark: list rules of chain %s: %w", ch.Name, err)
			}
			for _, r := range rules {
				cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
				if _, ok := want[cm]; ok && !have[cm] {
					have[cm] = true
					continue
				}
				if err := c.DelRule(r); err != nil {
					return fmt.Errorf("fwmark: delete stale rule %q in chain %s: %w", cm, ch.Name, err)
				}
				deleted++
			}
		}
		for _, mk := range sortedMarks(want) {
			if have[mk.comment()] {
				continue
			}
			if err := addRule(c, ch, mk); err != nil {
				return fmt.Errorf("fwmark: add rule for %s: %w", mk, err)
			}
			added++
		}
	}
	if !rebuild && added == 0 && deleted == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("fwmark: apply %d rule additions and %d deletions to table inet %s: %w", added, deleted, TableName, err)
	}
	m.log.Info("nftables firewall marks applied", "table", "inet "+TableName, "marks", len(want),
		"rules_added", added, "rules_deleted", deleted, "table_created", rebuild)
	return nil
}

// Remove deletes lvsd's table, if present. Other tables are not touched.
func (m *Manager) Remove(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fwmark: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.conn()
	if err != nil {
		return fmt.Errorf("fwmark: %w", err)
	}
	exists, err := tableExists(c)
	if err != nil {
		return fmt.Errorf("fwmark: %w", err)
	}
	if !exists {
		return nil
	}
	c.DelTable(table)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("fwmark: delete table inet %s: %w", TableName, err)
	}
	m.log.Info("nftables table removed", "table", "inet "+TableName)
	return nil
}

func tableExists(c *nftables.Conn) (bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list inet tables: %w", err)
	}
	return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName }), nil
}

// chainsAsExpected reports whether lvsd's table holds exactly its two chains
// with the right type, hook and priority, and no named sets.
func chainsAsExpected(c *nftables.Conn) (bool, error) {
	all, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list inet chains: %w", err)
	}
	var ours []*nftables.Chain
	for _, ch := range all {
		if ch.Table != nil && ch.Table.Name == TableName {
			ours = append(ours, ch)
		}
	}
	if len(ours) != len(chains) {
		return false, nil
	}
	for _, want := range chains {
		i := slices.IndexFunc(ours, func(ch *nftables.Chain) bool { return ch.Name == want.Name })
		if i < 0 {
			return false, nil
		}
		got := ours[i]
		if got.Type != want.Type || got.Hooknum == nil || *got.Hooknum != *want.Hooknum ||
			got.Priority == nil || *got.Priority != *want.Priority {
			return false, nil
		}
	}
	sets, err := c.GetSets(table)
	if err != nil {
		return false, fmt.Errorf("list sets of table inet %s: %w", TableName, err)
	}
	for _, s := range sets {
		if !s.Anonymous && !strings.HasPrefix(s.Name, "__set") {
			return false, nil
		}
	}
	return true, nil
}

func sortedMarks(want map[string]Mark) []Mark {
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]Mark, len(keys))
	for i, k := range keys {
		out[i] = want[k]
	}
	return out
}

// daddrExprs matches the destination address against the (masked) prefix p,
// as nft encodes "ip daddr 198.18.1.100" (payload, cmp) and
// "ip daddr 198.18.1.0/28" (payload, bitwise and with the mask, cmp with the
// network):
//
//	meta nfproto ipv4 ip daddr 198.18.1.0/28
func daddrExprs(p netip.Prefix) []expr.Any {
	nfproto, offset := byte(unix.NFPROTO_IPV4), uint32(16) // IPv4 daddr offset
	if p.Addr().Is6() {
		nfproto, offset = unix.NFPROTO_IPV6, 24
	}
	addr := p.Addr().AsSlice()
	n := uint32(len(addr))
	exprs := []expr.Any{
		// An inet chain sees both families: check the family before reading the address.
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n},
	}
	if !p.IsSingleIP() {
		exprs = append(exprs, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n,
			Mask: net.CIDRMask(p.Bits(), len(addr)*8), Xor: make([]byte, n)})
	}
	return append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr})
}

// addRule queues the rule for one mark in one chain:
//
//	meta nfproto ipv4 ip daddr D meta l4proto P th dport {PORTS} counter meta mark set N
func addRule(c *nftables.Conn, ch *nftables.Chain, mk Mark) error {
	exprs := append(daddrExprs(mk.Destination),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(mk.Protocol)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	)
	ports := mk.sortedPorts()
	if len(ports) == 1 {
		exprs = append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(ports[0])})
	} else {
		set := &nftables.Set{Table: table, Anonymous: true, Constant: true, KeyType: nftables.TypeInetService}
		elems := make([]nftables.SetElement, len(ports))
		for i, p := range ports {
			elems[i] = nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)}
		}
		if err := c.AddSet(set, elems); err != nil {
			return fmt.Errorf("port set: %w", err)
		}
		exprs = append(exprs, &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID})
	}
	exprs = append(exprs,
		&expr.Counter{},
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(mk.Mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	)
	c.AddRule(&nftables.Rule{
		Table:    table,
		Chain:    ch,
		Exprs:    exprs,
		UserData: userdata.AppendString(nil, userdata.TypeComment, mk.comment()),
	})
	return nil
}

// validateMarks checks each mark and that no two marks claim an address
// (their destination prefixes overlap) with the same protocol and port: a
// packet there would get whichever mark the last rule sets.
func validateMarks(marks []Mark) error {
	var errs []error
	type slot struct {
		proto director.Protocol
		port  uint16
	}
	type claim struct {
		dst  netip.Prefix
		mark uint32
	}
	claimed := map[slot][]claim{}
	for i, mk := range marks {
		if err := mk.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("mark %d (entry %d): %w", mk.Mark, i, err))
			continue
		}
		for _, p := range mk.Ports {
			s := slot{mk.Protocol, p}
			j := slices.IndexFunc(claimed[s], func(c claim) bool { return c.dst.Overlaps(mk.Destination) })
			if j < 0 {
				claimed[s] = append(claimed[s], claim{mk.Destination, mk.Mark})
				continue
			}
			other := claimed[s][j]
			by := ""
			if other.dst != mk.Destination {
				by = " (" + dstString(other.dst) + ")"
			}
			errs = append(errs, fmt.Errorf("mark %d (entry %d): %s %s port %d is already marked %d%s",
				mk.Mark, i, mk.Protocol, dstString(mk.Destination), p, other.mark, by))
		}
	}
	return errors.Join(errs...)
}
