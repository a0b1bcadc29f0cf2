package fwmark

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/lab/topo"
)

func TestValidateNamesTheProblem(t *testing.T) {
	vip := netip.MustParsePrefix("198.18.1.100/32")
	pfx := netip.MustParsePrefix
	ok := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{80, 443}, Destination: vip}
	net28 := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{80, 443}, Destination: pfx("198.18.1.96/28")}
	in28 := Mark{Mark: 9, Protocol: director.TCP, Ports: []uint16{443}, Destination: vip} // 198.18.1.100 is in .96/28
	dst := func(p netip.Prefix) []Mark {
		return []Mark{{Mark: 8, Protocol: director.TCP, Ports: []uint16{80}, Destination: p}}
	}
	cases := []struct {
		name  string
		marks []Mark
		msg   string
	}{
		{"zero mark", []Mark{{Protocol: director.TCP, Ports: []uint16{80}, Destination: vip}}, "mark 0 (entry 0): mark 0 is not a firewall mark"},
		{"protocol", []Mark{{Mark: 8, Ports: []uint16{80}, Destination: vip}}, "protocol none: want tcp, udp or sctp"},
		{"no ports", []Mark{{Mark: 8, Protocol: director.UDP, Destination: vip}}, "no ports"},
		{"port 0", []Mark{{Mark: 8, Protocol: director.UDP, Ports: []uint16{0}, Destination: vip}}, "port 0 cannot be matched"},
		{"dup port", []Mark{{Mark: 8, Protocol: director.UDP, Ports: []uint16{53, 53}, Destination: vip}}, "port 53 listed twice"},
		{"no destination", []Mark{{Mark: 8, Protocol: director.TCP, Ports: []uint16{80}}}, "no destination address"},
		{"length out of range", dst(netip.PrefixFrom(netip.MustParseAddr("198.18.1.100"), 33)), "destination 198.18.1.100: prefix length out of range (0..32)"},
		{"mapped", dst(pfx("::ffff:198.18.1.100/128")), "is an IPv4-mapped prefix; write it as 198.18.1.100/32"},
		{"mapped network", dst(pfx("::ffff:198.18.1.0/124")), "write it as 198.18.1.0/28"},
		{"mapped short", dst(pfx("::ffff:0:0/80")), "write IPv4 destinations as IPv4"},
		{"default v4", dst(pfx("0.0.0.0/0")), "destination 0.0.0.0/0 is a default route"},
		{"default v6", dst(pfx("::/0")), "destination ::/0 is a default route"},
		{"unmasked", dst(pfx("198.18.1.5/28")), "mark 8 (entry 0): destination 198.18.1.5/28 has host bits set: write the network 198.18.1.0/28, or 198.18.1.5 for the one address"},
		{"unmasked v6", dst(pfx("2001:db8:1::5/64")), "write the network 2001:db8:1::/64"},
		{"unspecified", dst(pfx("0.0.0.0/32")), "destination 0.0.0.0 is unspecified"},
		{"unspecified v6", dst(pfx("::/128")), "destination :: is unspecified"},
		{"overlap", []Mark{ok, {Mark: 9, Protocol: director.TCP, Ports: []uint16{443}, Destination: vip}}, "mark 9 (entry 1): tcp 198.18.1.100 port 443 is already marked 8"},
		{"address in network", []Mark{net28, in28}, "mark 9 (entry 1): tcp 198.18.1.100 port 443 is already marked 8 (198.18.1.96/28)"},
		{"network around address", []Mark{in28, net28}, "mark 8 (entry 1): tcp 198.18.1.96/28 port 443 is already marked 9 (198.18.1.100)"},
		{"nested v6 networks", []Mark{
			{Mark: 8, Protocol: director.UDP, Ports: []uint16{53}, Destination: pfx("2001:db8:1::/48")},
			{Mark: 9, Protocol: director.UDP, Ports: []uint16{53}, Destination: pfx("2001:db8:1:2::/64")},
		}, "mark 9 (entry 1): udp 2001:db8:1:2::/64 port 53 is already marked 8 (2001:db8:1::/48)"},
	}
	m := New(nil, WithNetNS(-2)) // never reaches the kernel: validation fails first
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := m.Apply(context.Background(), c.marks)
			if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("want error containing %q, got %v", c.msg, err)
			}
		})
	}
	if err := validateMarks([]Mark{ok}); err != nil {
		t.Fatalf("valid mark rejected: %v", err)
	}

	// Every problem is reported, each port of an overlap once.
	err := validateMarks([]Mark{net28, {Mark: 9, Protocol: director.TCP, Ports: []uint16{443, 80, 8080}, Destination: pfx("198.18.1.100/31")}, dst(pfx("198.18.1.5/28"))[0]})
	if err == nil || strings.Count(err.Error(), "\n") != 2 || !strings.Contains(err.Error(), "port 80 is already") ||
		!strings.Contains(err.Error(), "port 443 is already") || !strings.Contains(err.Error(), "host bits") {
		t.Fatalf("want three problems, got %v", err)
	}

	// Marks that share no address, protocol or port do not conflict.
	for name, marks := range map[string][]Mark{
		"adjacent networks": {net28, {Mark: 9, Protocol: director.TCP, Ports: []uint16{80}, Destination: pfx("198.18.1.112/28")}},
		"address outside":   {net28, {Mark: 9, Protocol: director.TCP, Ports: []uint16{80}, Destination: pfx("198.18.1.95/32")}},
		"other port":        {net28, {Mark: 9, Protocol: director.TCP, Ports: []uint16{8080}, Destination: vip}},
		"other protocol":    {net28, {Mark: 9, Protocol: director.UDP, Ports: []uint16{443}, Destination: vip}},
		"other family":      {net28, {Mark: 9, Protocol: director.TCP, Ports: []uint16{443}, Destination: pfx("2001:db8:1::/64")}},
		"single-address v6": {{Mark: 9, Protocol: director.TCP, Ports: []uint16{443}, Destination: pfx("2001:db8:1::100/128")}},
	} {
		if err := validateMarks(marks); err != nil {
			t.Errorf("%s: rejected: %v", name, err)
		}
	}
}

// TestDaddrExprsAsNftEncodesThem compares the address match with what
// `nft --debug=netlink add rule inet t c ip daddr ...` (nft 1.0.6) sends:
// an exact compare for a single address, a masked compare for a network.
func TestDaddrExprsAsNftEncodesThem(t *testing.T) {
	v4 := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
	}
	v6 := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
	}
	cmp := func(b ...byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b} }
	and := func(mask ...byte) *expr.Bitwise {
		return &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(mask)), Mask: mask, Xor: make([]byte, len(mask))}
	}
	v6net := []byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	for _, c := range []struct {
		dst  string
		want []expr.Any
	}{
		// [ cmp eq reg 1 0x640112c6 ]
		{"198.18.1.100/32", append(slices.Clone(v4), cmp(198, 18, 1, 100))},
		// [ bitwise reg 1 = ( reg 1 & 0xf0ffffff ) ^ 0x00000000 ] [ cmp eq reg 1 0x000112c6 ]
		{"198.18.1.0/28", append(slices.Clone(v4), and(0xff, 0xff, 0xff, 0xf0), cmp(198, 18, 1, 0))},
		{"2001:db8:1::100/128", append(slices.Clone(v6), cmp(netip.MustParseAddr("2001:db8:1::100").AsSlice()...))},
		// [ bitwise reg 1 = ( reg 1 & 0xffffffff 0xf0ffffff 0x00000000 0x00000000 ) ^ 0 ... ]
		{"2001:db8:1::/60", append(slices.Clone(v6), and(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0, 0, 0, 0, 0), cmp(v6net...))},
		// nft itself loads only the 8 prefix bytes for a byte-aligned length;
		// the full-width masked compare matches the same packets.
		{"2001:db8:1::/64", append(slices.Clone(v6), and(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0), cmp(v6net...))},
	} {
		if got := daddrExprs(netip.MustParsePrefix(c.dst)); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\ngot  %s\nwant %s", c.dst, dump(got), dump(c.want))
		}
	}
}

func dump(es []expr.Any) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "%T%+v ", e, e)
	}
	return b.String()
}

func TestCommentIsCanonicalAndBounded(t *testing.T) {
	vip := netip.MustParsePrefix("2001:db8:1::100/128")
	a := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{443, 80}, Destination: vip}
	b := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{80, 443}, Destination: vip}
	if a.comment() != b.comment() || a.comment() != "lvsd/1 mark 8 tcp daddr 2001:db8:1::100 dport 80,443" {
		t.Fatalf("comments %q %q", a.comment(), b.comment())
	}
	many := Mark{Mark: 8, Protocol: director.TCP, Destination: vip}
	for p := uint16(10000); p < 10060; p++ {
		many.Ports = append(many.Ports, p)
	}
	if c := many.comment(); len(c) > 128 || !strings.Contains(c, "sha256:") {
		t.Fatalf("long comment %d bytes: %q", len(c), c)
	}
	// A network keeps its length; a single address is written bare, as nft
	// prints it (and as lvsd named such rules before destinations were prefixes).
	for dst, want := range map[string]string{
		"198.18.1.96/28":  "lvsd/1 mark 8 udp daddr 198.18.1.96/28 dport 53",
		"198.18.1.100/32": "lvsd/1 mark 8 udp daddr 198.18.1.100 dport 53",
		"2001:db8:1::/64": "lvsd/1 mark 8 udp daddr 2001:db8:1::/64 dport 53",
	} {
		mk := Mark{Mark: 8, Protocol: director.UDP, Ports: []uint16{53}, Destination: netip.MustParsePrefix(dst)}
		if c := mk.comment(); c != want {
			t.Errorf("comment %q, want %q", c, want)
		}
		if s, w := mk.String(), strings.Replace(strings.TrimPrefix(want, commentPrefix), " udp daddr", " for udp", 1); s != w {
			t.Errorf("String %q, want %q", s, w)
		}
	}
	// The longest destination and mark still fit.
	longest := Mark{Mark: 1<<32 - 1, Protocol: director.SCTP, Ports: many.Ports,
		Destination: netip.MustParsePrefix("2001:db8:ffff:ffff:ffff:ffff:ffff:fffe/127")}
	if c := longest.comment(); len(c) > 128 {
		t.Fatalf("longest comment %d bytes: %q", len(c), c)
	}
}

// nsFD opens a topology host's namespace for nftables.WithNetNSFd.
func nsFD(t *testing.T, h *topo.Host) int {
	t.Helper()
	f, err := os.Open(h.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func conn(t *testing.T, fd int) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// counter is one counting rule of the observer table: TCP packets to port
// (and, if valid, to the single address dst) that carry mark.
type counter struct {
	chain, name string // chain "in" or "out"
	mark        uint32
	port        uint16
	dst         netip.Addr
}

// observer builds a foreign table "inet observe" with counting rules that
// run after lvsd's chains (priority 0) and see the mark they set. Its
// address match is written out here, independent of lvsd's.
func observer(t *testing.T, fd int, counters ...counter) {
	t.Helper()
	c := conn(t, fd)
	tab := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "observe"})
	chains := map[string]*nftables.Chain{
		"in": c.AddChain(&nftables.Chain{Name: "in", Table: tab, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter}),
		"out": c.AddChain(&nftables.Chain{Name: "out", Table: tab, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter}),
	}
	for _, ct := range counters {
		var exprs []expr.Any
		if ct.dst.IsValid() {
			nfproto, offset := byte(unix.NFPROTO_IPV4), uint32(16)
			if ct.dst.Is6() {
				nfproto, offset = unix.NFPROTO_IPV6, 24
			}
			exprs = append(exprs,
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(ct.dst.BitLen() / 8)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ct.dst.AsSlice()})
		}
		exprs = append(exprs,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(ct.port)},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(ct.mark)},
			&expr.Counter{},
		)
		c.AddRule(&nftables.Rule{Table: tab, Chain: chains[ct.chain], Exprs: exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, ct.name)})
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("build observer table: %v", err)
	}
}

// rules returns comment -> (handle, packets) for the rules of one chain.
func rules(t *testing.T, fd int, table string, chain string) map[string][2]uint64 {
	t.Helper()
	c := conn(t, fd)
	rs, err := c.GetRules(&nftables.Table{Family: nftables.TableFamilyINet, Name: table}, &nftables.Chain{Name: chain})
	if err != nil {
		t.Fatalf("list %s/%s: %v", table, chain, err)
	}
	out := map[string][2]uint64{}
	for _, r := range rs {
		cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		var pkts uint64
		for _, e := range r.Exprs {
			if ct, ok := e.(*expr.Counter); ok {
				pkts = ct.Packets
			}
		}
		out[cm] = [2]uint64{r.Handle, pkts}
	}
	return out
}

func tableNames(t *testing.T, fd int) []string {
	t.Helper()
	ts, err := conn(t, fd).ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range ts {
		names = append(names, tb.Name)
	}
	slices.Sort(names)
	return names
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and nftables")
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// dialAll connects to each address (a refused connection still sends a SYN
// through the hooks) and reports the ones that did not answer at all.
func dialAll(t *testing.T, ctx context.Context, h *topo.Host, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := h.Dial(dctx, "tcp", a)
		cancel()
		if err == nil {
			c.Close()
		} else if !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("%s: %v", a, err)
		}
	}
}

func TestMarksTrafficAndLeavesOtherTablesAlone(t *testing.T) {
	requireRoot(t)
	ctx := ctxT(t)
	tp := topo.New(t)
	dir := tp.Host("dir", "198.18.0.1/24", "2001:db8::1/64")
	client := tp.Host("client", "198.18.0.10/24", "2001:db8::10/64")
	dir.AddAddr("lo", "198.18.1.100/32")
	dir.AddAddr("lo", "2001:db8:1::100/128")
	client.AddRoute("198.18.1.100/32", "198.18.0.1")
	client.AddRoute("2001:db8:1::100/128", "2001:db8::1")
	fd := nsFD(t, dir)
	observer(t, fd,
		counter{chain: "in", name: "in mark8 80", mark: 8, port: 80},
		counter{chain: "in", name: "in mark8 443", mark: 8, port: 443},
		counter{chain: "in", name: "in mark0 8080", mark: 0, port: 8080},
		counter{chain: "in", name: "in mark8 8080", mark: 8, port: 8080},
		counter{chain: "out", name: "out mark8 80", mark: 8, port: 80},
	)
	foreignBefore := rules(t, fd, "observe", "in")

	m := New(nil, WithNetNS(fd))
	v4 := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{443, 80}, Destination: netip.MustParsePrefix("198.18.1.100/32")}
	v6 := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{80, 443}, Destination: netip.MustParsePrefix("2001:db8:1::100/128")}
	if err := m.Apply(ctx, []Mark{v4, v6}); err != nil {
		t.Fatal(err)
	}
	if got := tableNames(t, fd); !slices.Equal(got, []string{"lvsd", "observe"}) {
		t.Fatalf("tables %v", got)
	}

	// What nft(8) makes of it: the rule an operator would have written.
	if out, err := dir.Run(ctx, "nft", "list", "table", "inet", "lvsd"); err == nil {
		for _, re := range []string{
			`type filter hook prerouting priority mangle; policy accept;`,
			`type route hook output priority mangle; policy accept;`,
			`ip daddr 198\.18\.1\.100 tcp dport \{ 80, 443 \} counter packets \d+ bytes \d+ meta mark set 0x00000008 comment "lvsd/1 mark 8 tcp daddr 198\.18\.1\.100 dport 80,443"`,
			`ip6 daddr 2001:db8:1::100 tcp dport \{ 80, 443 \} counter packets \d+ bytes \d+ meta mark set 0x00000008`,
		} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("nft list lacks %s:\n%s", re, out)
			}
		}
	} else if !strings.Contains(err.Error(), "executable file not found") {
		t.Fatal(err)
	}

	// Packets from the client to 80 and 443 arrive marked 8; 8080 does not.
	dialAll(t, ctx, client, "198.18.1.100:80", "198.18.1.100:443", "198.18.1.100:8080", "[2001:db8:1::100]:443")
	// Locally originated traffic is marked in output.
	dialAll(t, ctx, dir, "198.18.1.100:80")
	in := rules(t, fd, "observe", "in")
	if in["in mark8 80"][1] == 0 || in["in mark8 443"][1] < 2 || in["in mark0 8080"][1] == 0 || in["in mark8 8080"][1] != 0 {
		t.Fatalf("input counters (handle, packets): %v", in)
	}
	if out := rules(t, fd, "observe", "out"); out["out mark8 80"][1] == 0 {
		t.Fatalf("output counters: %v", out)
	}

	// Idempotent: the same marks change nothing (same rule handles).
	before := rules(t, fd, TableName, "prerouting")
	if err := m.Apply(ctx, []Mark{v6, v4}); err != nil {
		t.Fatal(err)
	}
	after := rules(t, fd, TableName, "prerouting")
	if len(after) != 2 || after[v4.comment()][0] != before[v4.comment()][0] || after[v6.comment()][0] != before[v6.comment()][0] {
		t.Fatalf("re-apply changed rules: before %v after %v", before, after)
	}

	// Minimal change: v4 stays, v6 goes, a UDP mark comes.
	dns := Mark{Mark: 9, Protocol: director.UDP, Ports: []uint16{53}, Destination: netip.MustParsePrefix("198.18.1.100/32")}
	if err := m.Apply(ctx, []Mark{v4, dns}); err != nil {
		t.Fatal(err)
	}
	for _, chain := range []string{"prerouting", "output"} {
		got := rules(t, fd, TableName, chain)
		if len(got) != 2 || got[dns.comment()][0] == 0 {
			t.Fatalf("%s rules after change: %v", chain, got)
		}
		if chain == "prerouting" && got[v4.comment()][0] != before[v4.comment()][0] {
			t.Fatalf("unchanged mark's rule was replaced: before %v after %v", before, got)
		}
	}

	// Remove takes lvsd's table only; the foreign one keeps its rules.
	if err := m.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if got := tableNames(t, fd); !slices.Equal(got, []string{"observe"}) {
		t.Fatalf("tables after remove %v", got)
	}
	foreignAfter := rules(t, fd, "observe", "in")
	for cm, hp := range foreignBefore {
		if foreignAfter[cm][0] != hp[0] {
			t.Fatalf("foreign rule %q changed: before %v after %v", cm, foreignBefore, foreignAfter)
		}
	}
}

func TestApplyRepairsTamperedTable(t *testing.T) {
	requireRoot(t)
	ctx := ctxT(t)
	tp := topo.New(t)
	dir := tp.Host("dir", "198.18.0.1/24")
	fd := nsFD(t, dir)
	m := New(nil, WithNetNS(fd))
	mk := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{80, 443}, Destination: netip.MustParsePrefix("198.18.1.100/32")}
	if err := m.Apply(ctx, []Mark{mk}); err != nil {
		t.Fatal(err)
	}

	// A stray rule in lvsd's chain is deleted; lvsd's own rule stays.
	c := conn(t, fd)
	tab := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	c.AddRule(&nftables.Rule{Table: tab, Chain: &nftables.Chain{Name: "prerouting"}, Exprs: []expr.Any{&expr.Counter{}}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	before := rules(t, fd, TableName, "prerouting")
	if len(before) != 2 {
		t.Fatalf("stray rule not added: %v", before)
	}
	if err := m.Apply(ctx, []Mark{mk}); err != nil {
		t.Fatal(err)
	}
	after := rules(t, fd, TableName, "prerouting")
	if len(after) != 1 || after[mk.comment()][0] != before[mk.comment()][0] {
		t.Fatalf("after repair %v (before %v)", after, before)
	}

	// A deleted chain makes Apply rebuild the table.
	c = conn(t, fd)
	c.FlushChain(&nftables.Chain{Name: "output", Table: tab})
	c.DelChain(&nftables.Chain{Name: "output", Table: tab})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := m.Apply(ctx, []Mark{mk}); err != nil {
		t.Fatal(err)
	}
	for _, chain := range []string{"prerouting", "output"} {
		if got := rules(t, fd, TableName, chain); len(got) != 1 || got[mk.comment()][0] == 0 {
			t.Fatalf("%s after rebuild: %v", chain, got)
		}
	}

	// No marks: no table.
	if err := m.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got := tableNames(t, fd); len(got) != 0 {
		t.Fatalf("tables after empty apply: %v", got)
	}
}

// TestPrefixMarksOnlyAddressesInside sends real packets to addresses inside
// and just outside an IPv4 /28 and an IPv6 /64 mark and counts, after lvsd's
// chains, which of them carry the mark.
func TestPrefixMarksOnlyAddressesInside(t *testing.T) {
	requireRoot(t)
	ctx := ctxT(t)
	tp := topo.New(t)
	dir := tp.Host("dir", "198.18.0.1/24", "2001:db8::1/64")
	client := tp.Host("client", "198.18.0.10/24", "2001:db8::10/64")
	in4, out4 := netip.MustParseAddr("198.18.2.14"), netip.MustParseAddr("198.18.2.16") // last of .0/28, first of .16/28
	in6, out6 := netip.MustParseAddr("2001:db8:2::ffff"), netip.MustParseAddr("2001:db8:2:1::1")
	for _, a := range []netip.Addr{in4, out4, in6, out6} {
		dir.AddAddr("lo", netip.PrefixFrom(a, a.BitLen()).String())
	}
	client.AddRoute("198.18.2.0/24", "198.18.0.1")
	client.AddRoute("2001:db8:2::/48", "2001:db8::1")
	fd := nsFD(t, dir)
	var counters []counter
	for _, a := range []netip.Addr{in4, out4, in6, out6} {
		for _, mark := range []uint32{0, 10} {
			counters = append(counters, counter{chain: "in", name: fmt.Sprintf("mark%d %s", mark, a), mark: mark, port: 80, dst: a})
		}
	}
	observer(t, fd, counters...)

	m := New(nil, WithNetNS(fd))
	v4 := Mark{Mark: 10, Protocol: director.TCP, Ports: []uint16{80}, Destination: netip.MustParsePrefix("198.18.2.0/28")}
	v6 := Mark{Mark: 10, Protocol: director.TCP, Ports: []uint16{80}, Destination: netip.MustParsePrefix("2001:db8:2::/64")}
	if err := m.Apply(ctx, []Mark{v4, v6}); err != nil {
		t.Fatal(err)
	}

	// nft reads the masked compare back as the prefix an operator would write.
	if out, err := dir.Run(ctx, "nft", "list", "table", "inet", "lvsd"); err == nil {
		for _, re := range []string{
			`ip daddr 198\.18\.2\.0/28 tcp dport 80 counter packets \d+ bytes \d+ meta mark set 0x0000000a comment "lvsd/1 mark 10 tcp daddr 198\.18\.2\.0/28 dport 80"`,
			`ip6 daddr 2001:db8:2::/64 tcp dport 80 counter packets \d+ bytes \d+ meta mark set 0x0000000a comment "lvsd/1 mark 10 tcp daddr 2001:db8:2::/64 dport 80"`,
		} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("nft list lacks %s:\n%s", re, out)
			}
		}
	} else if !strings.Contains(err.Error(), "executable file not found") {
		t.Fatal(err)
	}

	// The kernel holds the mask lvsd sent.
	rs, err := conn(t, fd).GetRules(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}, &nftables.Chain{Name: "prerouting"})
	if err != nil {
		t.Fatal(err)
	}
	masks := map[string]string{}
	for _, r := range rs {
		cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		for _, e := range r.Exprs {
			if b, ok := e.(*expr.Bitwise); ok {
				masks[cm] = fmt.Sprintf("%x", b.Mask)
			}
		}
	}
	if masks[v4.comment()] != "fffffff0" || masks[v6.comment()] != "ffffffffffffffff0000000000000000" {
		t.Errorf("masks in the kernel: %v", masks)
	}

	dialAll(t, ctx, client, netip.AddrPortFrom(in4, 80).String(), netip.AddrPortFrom(out4, 80).String(),
		netip.AddrPortFrom(in6, 80).String(), netip.AddrPortFrom(out6, 80).String())
	got := rules(t, fd, "observe", "in")
	for _, a := range []netip.Addr{in4, in6} {
		if got[fmt.Sprintf("mark10 %s", a)][1] == 0 || got[fmt.Sprintf("mark0 %s", a)][1] != 0 {
			t.Errorf("%s is inside the mark's prefix: want its packets marked 10 (counters %v)", a, got)
		}
	}
	for _, a := range []netip.Addr{out4, out6} {
		if got[fmt.Sprintf("mark0 %s", a)][1] == 0 || got[fmt.Sprintf("mark10 %s", a)][1] != 0 {
			t.Errorf("%s is outside the mark's prefix: want its packets unmarked (counters %v)", a, got)
		}
	}

	// Re-applying keeps the rules: the prefix round-trips as their identity.
	before := rules(t, fd, TableName, "prerouting")
	if err := m.Apply(ctx, []Mark{v6, v4}); err != nil {
		t.Fatal(err)
	}
	after := rules(t, fd, TableName, "prerouting")
	if len(after) != 2 || after[v4.comment()][0] != before[v4.comment()][0] || after[v6.comment()][0] != before[v6.comment()][0] {
		t.Fatalf("re-apply changed rules: before %v after %v", before, after)
	}

	// Narrowing the prefix replaces its rule.
	v4.Destination = netip.MustParsePrefix("198.18.2.0/29")
	if err := m.Apply(ctx, []Mark{v4, v6}); err != nil {
		t.Fatal(err)
	}
	after = rules(t, fd, TableName, "prerouting")
	if len(after) != 2 || after[v4.comment()][0] == 0 || after[v6.comment()][0] != before[v6.comment()][0] {
		t.Fatalf("after narrowing: before %v after %v", before, after)
	}
}
