package fwmark

import (
	"context"
	"net/netip"
	"os"
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
	vip := netip.MustParseAddr("198.18.1.100")
	ok := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{80, 443}, Destination: vip}
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
		{"mapped", []Mark{{Mark: 8, Protocol: director.TCP, Ports: []uint16{80}, Destination: netip.MustParseAddr("::ffff:198.18.1.100")}}, "write it as 198.18.1.100"},
		{"overlap", []Mark{ok, {Mark: 9, Protocol: director.TCP, Ports: []uint16{443}, Destination: vip}}, "mark 9 (entry 1): tcp 198.18.1.100 port 443 is already marked 8"},
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
}

func TestCommentIsCanonicalAndBounded(t *testing.T) {
	vip := netip.MustParseAddr("2001:db8:1::100")
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

// observer builds a foreign table "inet observe" with counting rules that
// run after lvsd's chains (priority 0) and see the mark they set.
func observer(t *testing.T, fd int) {
	t.Helper()
	c := conn(t, fd)
	tab := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "observe"})
	in := c.AddChain(&nftables.Chain{Name: "in", Table: tab, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	out := c.AddChain(&nftables.Chain{Name: "out", Table: tab, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	count := func(ch *nftables.Chain, name string, mark uint32, port uint16) {
		c.AddRule(&nftables.Rule{Table: tab, Chain: ch, UserData: userdata.AppendString(nil, userdata.TypeComment, name),
			Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
				&expr.Counter{},
			}})
	}
	count(in, "in mark8 80", 8, 80)
	count(in, "in mark8 443", 8, 443)
	count(in, "in mark0 8080", 0, 8080)
	count(in, "in mark8 8080", 8, 8080)
	count(out, "out mark8 80", 8, 80)
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
	observer(t, fd)
	foreignBefore := rules(t, fd, "observe", "in")

	m := New(nil, WithNetNS(fd))
	v4 := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{443, 80}, Destination: netip.MustParseAddr("198.18.1.100")}
	v6 := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{80, 443}, Destination: netip.MustParseAddr("2001:db8:1::100")}
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
	dns := Mark{Mark: 9, Protocol: director.UDP, Ports: []uint16{53}, Destination: netip.MustParseAddr("198.18.1.100")}
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
	mk := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{80, 443}, Destination: netip.MustParseAddr("198.18.1.100")}
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
