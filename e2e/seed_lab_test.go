//go:build lab

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/lab/topo"
)

// seedLab is the seed's experiment mapped into 198.18.0.0/15: two clients,
// one director and two DR real servers holding the VIP on lo.
//
// The seed's addresses map as 192.168.1.63 (VIP) -> 198.18.0.100,
// .65 -> 198.18.0.21 (rs1), .66 -> 198.18.0.22 (rs2); the director is
// 198.18.0.11, the clients 198.18.0.10 and .13.
type seedLab struct {
	tp              *topo.Topo
	client, client2 *topo.Host
	dir, rs1, rs2   *topo.Host
	lvsd            *lvsd
}

const vip = "198.18.0.100"

func newSeedLab(t *testing.T, ports ...string) *seedLab {
	t.Helper()
	tp := topo.New(t)
	l := &seedLab{tp: tp}
	l.client = tp.Host("client", "198.18.0.10/24")
	l.client2 = tp.Host("client2", "198.18.0.13/24")
	l.dir = tp.Host("dir-a", "198.18.0.11/24")
	l.rs1 = tp.Host("rs1", "198.18.0.21/24")
	l.rs2 = tp.Host("rs2", "198.18.0.22/24")
	for _, rs := range []*topo.Host{l.rs1, l.rs2} {
		rs.AddLoopbackVIP(vip)
		for _, p := range ports {
			rs.ServeIdentify(":" + p)
		}
	}
	l.lvsd = newLVSD(t, l.dir, "dir-a")
	return l
}

// ipvsadm returns `ipvsadm -Ln` (plus args) in the director's namespace.
func (l *seedLab) ipvsadm(t *testing.T, args ...string) string {
	t.Helper()
	return ipvsadm(t, l.dir, args...)
}

// viaDirector fails unless the client resolved the VIP to the director's
// MAC: a real server answering ARP for the VIP would let traffic skip the
// director while stickiness checks still passed.
func (l *seedLab) viaDirector(t *testing.T, clients ...*topo.Host) {
	t.Helper()
	want := l.dir.MAC("").String()
	for _, c := range clients {
		mac, ok := c.Neighbor(vip)
		if !ok {
			t.Fatalf("%s has no neighbour entry for the VIP", c.Name())
		}
		if mac.String() != want {
			t.Fatalf("%s resolved the VIP to %s, not the director's %s: traffic skipped the director", c.Name(), mac, want)
		}
	}
}

// ipvsadm returns `ipvsadm -Ln` (plus args) in h's namespace.
func ipvsadm(t *testing.T, h *topo.Host, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := h.Run(ctx, "ipvsadm", append([]string{"-Ln"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ipvsTable parses `ipvsadm -Ln` into service line -> sorted destination
// lines, single-spaced and without the connection counters, e.g.
// "TCP 198.18.0.100:0 rr persistent 500" -> ["-> 198.18.0.21:0 Route 1", ...].
func ipvsTable(out string) map[string][]string {
	table := map[string][]string{}
	svc := ""
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0, f[0] == "IP", f[0] == "Prot", len(f) > 1 && f[1] == "RemoteAddress:Port":
		case f[0] == "->":
			table[svc] = append(table[svc], strings.Join(f[:min(len(f), 4)], " "))
			slices.Sort(table[svc])
		default:
			svc = strings.Join(f, " ")
			table[svc] = []string{}
		}
	}
	return table
}

func formatTable(table map[string][]string) string {
	var b strings.Builder
	for _, svc := range slices.Sorted(maps.Keys(table)) {
		fmt.Fprintf(&b, "%s\n", svc)
		for _, d := range table[svc] {
			fmt.Fprintf(&b, "  %s\n", d)
		}
	}
	return b.String()
}

// wantTable fails unless `ipvsadm -Ln` output holds exactly want's services
// and destinations (forwarding method and weight; counters ignored).
func wantTable(t *testing.T, out string, want map[string][]string) {
	t.Helper()
	for _, d := range want {
		slices.Sort(d)
	}
	got := ipvsTable(out)
	if !maps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("ipvsadm -Ln:\n%s\ngot table:\n%s\nwant:\n%s", out, formatTable(got), formatTable(want))
	}
}

// ipvsConns reads `ipvsadm -Ln --stats --exact`: the total connection
// counter of every service ("TCP 198.18.0.100:0") and destination
// ("TCP 198.18.0.100:0 -> 198.18.0.21:0").
func ipvsConns(t *testing.T, h *topo.Host) map[string]uint64 {
	t.Helper()
	conns := map[string]uint64{}
	for k, v := range ipvsStats(t, h) {
		conns[k] = v[0]
	}
	return conns
}

// ipvsStats reads `ipvsadm -Ln --stats --exact`, keyed as ipvsConns:
// Conns, InPkts, OutPkts, InBytes, OutBytes.
func ipvsStats(t *testing.T, h *topo.Host) map[string][5]uint64 {
	t.Helper()
	out := ipvsadm(t, h, "--stats", "--exact")
	stats := map[string][5]uint64{}
	svc := ""
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || f[0] == "IP" || f[0] == "Prot" {
			continue
		}
		key := f[0] + " " + f[1]
		if f[0] == "->" {
			key = svc + " -> " + f[1]
		} else {
			svc = key
		}
		var v [5]uint64
		for i := range v {
			n, err := strconv.ParseUint(f[2+i], 10, 64)
			if err != nil {
				t.Fatalf("ipvsadm --stats: bad counter in %q: %v\n%s", line, err, out)
			}
			v[i] = n
		}
		stats[key] = v
	}
	return stats
}

// who asks the real server answering at VIP:port, on a new connection.
func who(t *testing.T, h *topo.Host, port string) string {
	t.Helper()
	return whoFrom(t, h, "", vip+":"+port)
}

// whoFrom asks the identify server answering at addr, on a new connection
// from h with source address src ("" for the default): one host can so act
// as several clients.
func whoFrom(t *testing.T, h *topo.Host, src, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if src == "" {
		name, err := h.Identify(ctx, addr)
		if err != nil {
			t.Fatalf("%s -> %s: %v", h.Name(), addr, err)
		}
		return name
	}
	var c net.Conn
	err := h.Do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("%s -> %s: %v", src, addr, err)
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%s -> %s: read: %v", src, addr, err)
	}
	return strings.TrimSpace(line)
}

func mustMatch(t *testing.T, text string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(text) {
			t.Errorf("output does not match %q:\n%s", p, text)
		}
	}
}

// sticky connects n times from h (source src) to addr and fails unless
// every connection reached the same real server, which it returns.
func sticky(t *testing.T, h *topo.Host, src, addr string, n int) string {
	t.Helper()
	first := whoFrom(t, h, src, addr)
	for i := 1; i < n; i++ {
		if got := whoFrom(t, h, src, addr); got != first {
			t.Fatalf("%s (source %q) connection %d to %s reached %s, not %s: persistence must keep a client on one real server",
				h.Name(), src, i, addr, got, first)
		}
	}
	return first
}

// TestSeedPCC: the seed's port-0 service with -p 500: every connection of a
// client, to any port, goes to one real server; another client is spread.
func TestSeedPCC(t *testing.T) {
	l := newSeedLab(t, "80", "22")
	l.lvsd.writeConfig("eth0", `
[[vip_group]]
name = "web"
addresses = ["198.18.0.100/32"]

[[service]]
name = "web-pcc"
group = "web"
address = "198.18.0.100"
port = 0
scheduler = "rr"
persistence = "500s"
forward = "dr"
  [[service.backend]]
  address = "198.18.0.21"
  [[service.backend]]
  address = "198.18.0.22"
`)
	l.lvsd.start()
	// The seed's table: ipvsadm -At VIP:0 -s rr -p 500; -at VIP:0 -r RS -g.
	wantTable(t, l.ipvsadm(t), map[string][]string{
		"TCP 198.18.0.100:0 rr persistent 500": {"-> 198.18.0.21:0 Route 1", "-> 198.18.0.22:0 Route 1"},
	})

	first := who(t, l.client, "80")
	for i := 0; i < 6; i++ {
		for _, port := range []string{"80", "22"} {
			if got := who(t, l.client, port); got != first {
				t.Fatalf("connection %d to port %s reached %s, not %s: PCC must keep a client on one real server", i, port, got, first)
			}
		}
	}
	second := who(t, l.client2, "22")
	if second == first {
		t.Fatalf("both clients on %s: rr must spread different clients", first)
	}
	if got := who(t, l.client2, "80"); got != second {
		t.Fatalf("client2 moved from %s to %s between ports", second, got)
	}
	l.viaDirector(t, l.client, l.client2)

	// Why does the client land there? lvsctl conns shows the template.
	rsAddr := map[string]string{"rs1": "198.18.0.21", "rs2": "198.18.0.22"}[first]
	mustMatch(t, l.lvsd.mustCtl("conns", "--client", "198.18.0.10"),
		`198\.18\.0\.10:0 sticks to `+regexp.QuoteMeta(rsAddr)+`:0 through web-pcc: persistence template, \d+s left`,
		`web-pcc\s+TCP\s+198\.18\.0\.10:\d+\s+198\.18\.0\.100:(80|22)\s+`+regexp.QuoteMeta(rsAddr)+`:(80|22)\s`)
}

// TestSeedPPC: the seed's per-port services (-p without a timeout: 360 s),
// port 22 with rs1 alone as in the seed. Each port is sticky on its own: a
// client on rs2 for port 80 still reaches rs1 on port 22. Then rs2 joins
// port 22 by reload, and port 22 spreads new clients too.
func TestSeedPPC(t *testing.T) {
	l := newSeedLab(t, "80", "22")
	// Two more client addresses for the second phase.
	l.client.AddAddr("eth0", "198.18.0.14/24")
	l.client2.AddAddr("eth0", "198.18.0.15/24")
	const ppc = `
[[vip_group]]
name = "web"
addresses = ["198.18.0.100/32"]

[[service]]
name = "ppc-ssh"
group = "web"
address = "198.18.0.100"
port = 22
scheduler = "rr"
persistent = true
  [[service.backend]]
  address = "198.18.0.21"
%s
[[service]]
name = "ppc-http"
group = "web"
address = "198.18.0.100"
port = 80
scheduler = "rr"
persistent = true
  [[service.backend]]
  address = "198.18.0.21"
  [[service.backend]]
  address = "198.18.0.22"
`
	l.lvsd.writeConfig("eth0", fmt.Sprintf(ppc, ""))
	l.lvsd.start()
	// The seed's table (its "-at VIP:20" typo aside, it lists 22 -> .65).
	wantTable(t, l.ipvsadm(t), map[string][]string{
		"TCP 198.18.0.100:22 rr persistent 360": {"-> 198.18.0.21:22 Route 1"},
		"TCP 198.18.0.100:80 rr persistent 360": {"-> 198.18.0.21:80 Route 1", "-> 198.18.0.22:80 Route 1"},
	})

	const n = 4
	http1 := sticky(t, l.client, "", vip+":80", n)
	http2 := sticky(t, l.client2, "", vip+":80", n)
	if http1 == http2 {
		t.Fatalf("both clients on %s for port 80: rr must spread different clients", http1)
	}
	for _, c := range []*topo.Host{l.client, l.client2} {
		if got := sticky(t, c, "", vip+":22", n); got != "rs1" {
			t.Fatalf("%s reached %s on port 22, which only rs1 serves", c.Name(), got)
		}
	}
	// One of the clients is on rs2 for port 80 and on rs1 for port 22: the
	// ports are sticky independently (under PCC both would be rs2).
	t.Logf("port 80: client %s, client2 %s; port 22: rs1 for both", http1, http2)
	l.viaDirector(t, l.client, l.client2)

	// rs2 joins port 22 by reload; port 22 now spreads new clients, each
	// sticky, while port 80 keeps its clients.
	l.lvsd.writeConfig("eth0", fmt.Sprintf(ppc, "  [[service.backend]]\n  address = \"198.18.0.22\"\n"))
	l.lvsd.hup()
	eventually(t, 30*time.Second, "rs2 on port 22 after reload", func() bool {
		return strings.Contains(l.ipvsadm(t), "198.18.0.22:22")
	})
	ssh3 := sticky(t, l.client, "198.18.0.14", vip+":22", n)
	ssh4 := sticky(t, l.client2, "198.18.0.15", vip+":22", n)
	if ssh3 == ssh4 {
		t.Fatalf("two new clients both on %s for port 22 with two real servers: rr must spread them", ssh3)
	}
	if got := sticky(t, l.client, "", vip+":80", 2); got != http1 {
		t.Fatalf("client moved from %s to %s on port 80 after a reload that changed port 22 only", http1, got)
	}
	wantTable(t, l.ipvsadm(t), map[string][]string{
		"TCP 198.18.0.100:22 rr persistent 360": {"-> 198.18.0.21:22 Route 1", "-> 198.18.0.22:22 Route 1"},
		"TCP 198.18.0.100:80 rr persistent 360": {"-> 198.18.0.21:80 Route 1", "-> 198.18.0.22:80 Route 1"},
	})
}

// fwmConfig is the seed's FWM service with the given marked ports, or
// without the service when ports is empty.
func fwmConfig(ports string) string {
	cfg := `
[[vip_group]]
name = "web"
addresses = ["198.18.0.100/32"]
`
	if ports == "" {
		return cfg
	}
	return cfg + `
[[service]]
name = "fwm-web"
group = "web"
fwmark = 8
scheduler = "rr"
persistent = true
  [service.mark]
  protocol = "tcp"
  ports = [` + ports + `]
  destination = "198.18.0.100"
  [[service.backend]]
  address = "198.18.0.21"
  [[service.backend]]
  address = "198.18.0.22"
`
}

// TestSeedFWM: the seed's firewall-mark service (-f 8 -p), with lvsd
// installing the mark itself from [service.mark]: no manual nft or iptables
// rule. Ports 80 and 443 of one client reach the same real server; another
// client is spread; unmarked ports are not balanced. A kill -9 and restart
// neither duplicates the rule nor loses clients; a reload changes the
// marked ports; removing the service removes the mark, and so does stopping
// lvsd.
func TestSeedFWM(t *testing.T) {
	l := newSeedLab(t, "80", "443", "8080")
	l.lvsd.writeConfig("eth0", fwmConfig("80, 443"))
	l.lvsd.start()
	table := map[string][]string{
		"FWM 8 rr persistent 360": {"-> 198.18.0.21:0 Route 1", "-> 198.18.0.22:0 Route 1"},
	}
	wantTable(t, l.ipvsadm(t), table)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	nft := func(args ...string) string {
		t.Helper()
		out, err := l.dir.Run(ctx, "nft", args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	rules := nft("list", "ruleset")
	mustMatch(t, rules, `table inet lvsd`, `mark set 0x0*8`, `dport \{ 80, 443 \}`)
	nRules := strings.Count(rules, "mark set")

	first := who(t, l.client, "80")
	for i := 0; i < 4; i++ {
		for _, port := range []string{"443", "80"} {
			if got := who(t, l.client, port); got != first {
				t.Fatalf("connection %d to port %s reached %s, not %s: one client's marked ports must share a real server", i, port, got, first)
			}
		}
	}
	second := who(t, l.client2, "443")
	if second == first {
		t.Fatalf("both clients on %s: rr must spread different clients", first)
	}
	if got := who(t, l.client2, "80"); got != second {
		t.Fatalf("client2 moved from %s to %s between marked ports", second, got)
	}
	l.viaDirector(t, l.client, l.client2)
	// Port 8080 is not marked: the director itself answers it (nothing
	// listens there, so the connection is refused), no real server does.
	refused := func(port string) {
		t.Helper()
		if c, err := l.client.Dial(ctx, "tcp", vip+":"+port); err == nil {
			c.Close()
			t.Fatalf("port %s reached a real server: it carries no mark", port)
		}
	}
	refused("8080")

	// kill -9 leaves the table; the restarted lvsd keeps it as it is.
	l.lvsd.kill9()
	l.lvsd.start()
	if got := strings.Count(nft("list", "ruleset"), "mark set"); got != nRules {
		t.Fatalf("after kill -9 and restart: %d mark rules, want %d:\n%s", got, nRules, nft("list", "ruleset"))
	}
	wantTable(t, l.ipvsadm(t), table)
	if got := who(t, l.client, "443"); got != first {
		t.Fatalf("after restart client moved from %s to %s", first, got)
	}

	// Reload: only port 80 stays marked.
	l.lvsd.writeConfig("eth0", fwmConfig("80"))
	l.lvsd.hup()
	eventually(t, 30*time.Second, "the mark rule for port 80 alone", func() bool {
		return !strings.Contains(nft("list", "table", "inet", "lvsd"), "443")
	})
	refused("443")
	if got := who(t, l.client, "80"); got != first {
		t.Fatalf("after the ports reload client moved from %s to %s", first, got)
	}
	wantTable(t, l.ipvsadm(t), table)

	// Reload without the service: its IPVS service and its mark go.
	l.lvsd.writeConfig("eth0", fwmConfig(""))
	l.lvsd.hup()
	eventually(t, 30*time.Second, "FWM 8 and its mark gone", func() bool {
		return !strings.Contains(l.ipvsadm(t), "FWM") && !strings.Contains(nft("list", "ruleset"), "mark set")
	})
	refused("80")

	// Back by reload, then lvsd stops: the mark goes with it.
	l.lvsd.writeConfig("eth0", fwmConfig("80, 443"))
	l.lvsd.hup()
	eventually(t, 30*time.Second, "FWM 8 back", func() bool {
		_, ok := ipvsTable(l.ipvsadm(t))["FWM 8 rr persistent 360"]
		return ok && strings.Contains(nft("list", "ruleset"), "mark set")
	})
	if a, b := who(t, l.client, "443"), who(t, l.client, "80"); a != b {
		t.Fatalf("after re-adding the service client's ports 443 and 80 reached %s and %s", a, b)
	}
	l.lvsd.stop()
	if tables := nft("list", "tables"); strings.Contains(tables, "lvsd") {
		t.Fatalf("lvsd's nftables table is still there after lvsd stopped:\n%s", tables)
	}
}
