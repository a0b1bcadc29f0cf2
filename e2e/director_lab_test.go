//go:build lab

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/lab/topo"
)

// heldConn is a long-lived client connection through a VIP to an identify
// server (which echoes every line).
type heldConn struct {
	t      *testing.T
	c      net.Conn
	r      *bufio.Reader
	server string // the real server that answered
	n      int
}

// hold connects from h to addr and keeps the connection until the test
// ends.
func hold(t *testing.T, h *topo.Host, addr string) *heldConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := h.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	hc := &heldConn{t: t, c: c, r: bufio.NewReader(c)}
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	line, err := hc.r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s -> %s: read the server's name: %v", h.Name(), addr, err)
	}
	hc.server = strings.TrimSpace(line)
	hc.echo("connected")
	return hc
}

// echo sends a line and fails the test unless it comes back. The deadline
// is generous: while lvsd restarts the VIP may be away for a moment, and
// TCP retransmits.
func (hc *heldConn) echo(when string) {
	hc.t.Helper()
	hc.n++
	msg := fmt.Sprintf("line %d (%s)", hc.n, when)
	hc.c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := fmt.Fprintln(hc.c, msg); err != nil {
		hc.t.Fatalf("long-lived connection to %s, %s: write: %v", hc.server, when, err)
	}
	got, err := hc.r.ReadString('\n')
	if err != nil {
		hc.t.Fatalf("long-lived connection to %s, %s: read: %v (reset or lost)", hc.server, when, err)
	}
	if strings.TrimSpace(got) != msg {
		hc.t.Fatalf("long-lived connection to %s, %s: echoed %q, want %q", hc.server, when, got, msg)
	}
}

// natLab: two clients in 198.18.0.0/24 and 2001:db8::/64, the director
// (198.18.0.1 and 2001:db8::1 there, 198.18.2.1 and 2001:db8:2::1 on the
// real servers' subnet, forwarding on), real servers 198.18.2.11/.12 and
// 2001:db8:2::11/::12 routing everything back through the director, VIPs
// in 198.18.1.0/24 and 2001:db8:1::/64. All share one bridge; the subnets
// keep them apart.
type natLab struct {
	client, client2 *topo.Host
	dir, rs1, rs2   *topo.Host
	lvsd            *lvsd
}

func newNATLab(t *testing.T, port string) *natLab {
	t.Helper()
	tp := topo.New(t)
	l := &natLab{}
	l.client = tp.Host("client", "198.18.0.10/24", "2001:db8::10/64")
	l.client2 = tp.Host("client2", "198.18.0.13/24", "2001:db8::13/64")
	for _, c := range []*topo.Host{l.client, l.client2} {
		c.AddRoute("198.18.1.0/24", "198.18.0.1")
		c.AddRoute("2001:db8:1::/64", "2001:db8::1")
	}
	l.dir = tp.Host("dir-a", "198.18.0.1/24", "198.18.2.1/24", "2001:db8::1/64", "2001:db8:2::1/64")
	l.dir.Sysctl("net.ipv4.ip_forward", "1")
	l.dir.Sysctl("net.ipv6.conf.all.forwarding", "1")
	// Replies leave through the interface they came in on: no redirects,
	// or real servers would learn to skip the director.
	l.dir.Sysctl("net.ipv4.conf.all.send_redirects", "0")
	l.dir.Sysctl("net.ipv4.conf.eth0.send_redirects", "0")
	l.rs1 = tp.Host("rs1", "198.18.2.11/24", "2001:db8:2::11/64")
	l.rs2 = tp.Host("rs2", "198.18.2.12/24", "2001:db8:2::12/64")
	for _, rs := range []*topo.Host{l.rs1, l.rs2} {
		rs.AddRoute("default", "198.18.2.1")
		rs.AddRoute("::/0", "2001:db8:2::1")
		// IPv6 has no send_redirects knob on the director: refuse them here.
		rs.Sysctl("net.ipv6.conf.all.accept_redirects", "0")
		rs.Sysctl("net.ipv6.conf.eth0.accept_redirects", "0")
		rs.ServeIdentify(":" + port)
	}
	l.lvsd = newLVSD(t, l.dir, "dir-a")
	return l
}

// TestDirectorNAT: the seed's persistence with forward = "nat" and port
// translation (VIP port 80 to real servers' 8080), over IPv4 and IPv6: a
// client keeps its real server, different clients are spread, a
// non-persistent NAT service alternates, and with an IPv6 persistence
// granularity of /64 both clients (one /64) share a real server.
func TestDirectorNAT(t *testing.T) {
	l := newNATLab(t, "8080")
	var cfg strings.Builder
	cfg.WriteString(`
[[vip_group]]
name = "web"
addresses = ["198.18.1.100/32", "198.18.1.101/32", "2001:db8:1::100/128", "2001:db8:1::101/128", "2001:db8:1::102/128"]
`)
	for _, s := range []struct{ name, addr, extra, rs1, rs2 string }{
		{"nat-sticky", "198.18.1.100", `persistence = "500s"`, "198.18.2.11", "198.18.2.12"},
		{"nat-plain", "198.18.1.101", "", "198.18.2.11", "198.18.2.12"},
		{"nat6-sticky", "2001:db8:1::100", `persistence = "500s"`, "2001:db8:2::11", "2001:db8:2::12"},
		{"nat6-net", "2001:db8:1::101", "persistent = true\npersistence_granularity = 64", "2001:db8:2::11", "2001:db8:2::12"},
		{"nat6-plain", "2001:db8:1::102", "", "2001:db8:2::11", "2001:db8:2::12"},
	} {
		fmt.Fprintf(&cfg, `
[[service]]
name = %q
group = "web"
address = %q
port = 80
scheduler = "rr"
forward = "nat"
%s
  [[service.backend]]
  address = %q
  port = 8080
  [[service.backend]]
  address = %q
  port = 8080
`, s.name, s.addr, s.extra, s.rs1, s.rs2)
	}
	l.lvsd.writeConfig("eth0", cfg.String())
	l.lvsd.start()
	dests := []string{"-> 198.18.2.11:8080 Masq 1", "-> 198.18.2.12:8080 Masq 1"}
	dests6 := []string{"-> [2001:db8:2::11]:8080 Masq 1", "-> [2001:db8:2::12]:8080 Masq 1"}
	wantTable(t, ipvsadm(t, l.dir), map[string][]string{
		"TCP 198.18.1.100:80 rr persistent 500":              dests,
		"TCP 198.18.1.101:80 rr":                             dests,
		"TCP [2001:db8:1::100]:80 rr persistent 500":         dests6,
		"TCP [2001:db8:1::101]:80 rr persistent 360 mask 64": dests6,
		"TCP [2001:db8:1::102]:80 rr":                        dests6,
	})

	const n = 5
	for _, vip := range []string{"198.18.1.100:80", "[2001:db8:1::100]:80"} {
		first := sticky(t, l.client, "", vip, n)
		second := sticky(t, l.client2, "", vip, n)
		if first == second {
			t.Fatalf("%s: both clients on %s: rr must spread different clients", vip, first)
		}
		t.Logf("%s persistent: client %s, client2 %s", vip, first, second)
	}
	net1 := sticky(t, l.client, "", "[2001:db8:1::101]:80", n)
	if got := sticky(t, l.client2, "", "[2001:db8:1::101]:80", n); got != net1 {
		t.Fatalf("persistence_granularity 64: client on %s, client2 (same /64) on %s", net1, got)
	}
	var got []string
	for _, vip := range []string{"198.18.1.101:80", "[2001:db8:1::102]:80"} {
		got = got[:0]
		for i := 0; i < 6; i++ {
			got = append(got, whoFrom(t, l.client, "", vip))
		}
		for i := 1; i < len(got); i++ {
			if got[i] == got[i-1] {
				t.Fatalf("%s: non-persistent rr NAT service did not alternate: %v", vip, got)
			}
		}
	}
	// NAT: replies pass the director too (under DR OutPkts stays 0).
	eventually(t, 30*time.Second, "IPVS counters of the NAT services, replies included", func() bool {
		st := ipvsStats(t, l.dir)
		p, q, r := st["TCP 198.18.1.100:80"], st["TCP 198.18.1.101:80"], st["TCP [2001:db8:1::100]:80"]
		return p[0] >= 2*n && q[0] >= 6 && r[0] >= 2*n && p[2] > 0 && q[2] > 0 && r[2] > 0
	})
	t.Logf("plain: %v", got)
}

// reloadConfig is a non-persistent DR service on port 80; backends lists
// its real servers.
func reloadConfig(backends ...string) string {
	var b strings.Builder
	b.WriteString(`
[[vip_group]]
name = "web"
addresses = ["198.18.0.100/32"]

[[service]]
name = "web"
group = "web"
address = "198.18.0.100"
port = 80
scheduler = "rr"
forward = "dr"
`)
	for _, a := range backends {
		fmt.Fprintf(&b, "  [[service.backend]]\n  address = %q\n", a)
	}
	return b.String()
}

// TestDirectorReload: removing a backend by SIGHUP leaves a long-lived
// connection to the other one untouched (never reset, the service not
// recreated); adding it back makes it receive new clients; an invalid
// config on reload changes nothing.
func TestDirectorReload(t *testing.T) {
	l := newSeedLab(t, "80")
	addr := map[string]string{"rs1": "198.18.0.21", "rs2": "198.18.0.22"}
	l.lvsd.writeConfig("eth0", reloadConfig(addr["rs1"], addr["rs2"]))
	l.lvsd.start()
	both := []string{"-> 198.18.0.21:80 Route 1", "-> 198.18.0.22:80 Route 1"}
	wantTable(t, l.ipvsadm(t), map[string][]string{"TCP 198.18.0.100:80 rr": both})

	hc := hold(t, l.client, vip+":80")
	kept := hc.server
	other := map[string]string{"rs1": "rs2", "rs2": "rs1"}[kept]
	if other == "" {
		t.Fatalf("long-lived connection reached %q, want rs1 or rs2", kept)
	}
	const svc = "TCP 198.18.0.100:80"
	var before uint64
	eventually(t, 30*time.Second, "the held connection in IPVS counters", func() bool {
		before = ipvsConns(t, l.dir)[svc]
		return before >= 1
	})

	// Remove the other backend.
	l.lvsd.writeConfig("eth0", reloadConfig(addr[kept]))
	l.lvsd.hup()
	eventually(t, 30*time.Second, other+" gone from IPVS after reload", func() bool {
		return !strings.Contains(l.ipvsadm(t), addr[other]+":")
	})
	wantTable(t, l.ipvsadm(t), map[string][]string{svc + " rr": {"-> " + addr[kept] + ":80 Route 1"}})
	hc.echo("after removing " + other)
	for i := 0; i < 3; i++ {
		if got := who(t, l.client2, "80"); got != kept {
			t.Fatalf("new connection %d reached %s, which the reload removed", i, got)
		}
	}
	if now := ipvsConns(t, l.dir)[svc]; now < before {
		t.Fatalf("service connection counter fell from %d to %d: the reload recreated the service", before, now)
	}

	// Add it back: it receives new clients (rr alternates).
	l.lvsd.writeConfig("eth0", reloadConfig(addr["rs1"], addr["rs2"]))
	l.lvsd.hup()
	eventually(t, 30*time.Second, other+" back in IPVS after reload", func() bool {
		return strings.Contains(l.ipvsadm(t), addr[other]+":80")
	})
	reached := false
	var got []string
	for i := 0; i < 4 && !reached; i++ {
		g := who(t, l.client2, "80")
		got = append(got, g)
		reached = g == other
	}
	if !reached {
		t.Fatalf("re-added %s received none of the new connections: %v", other, got)
	}
	hc.echo("after adding " + other + " back")

	// An invalid config on reload is rejected and changes nothing.
	l.lvsd.writeConfig("eth0", reloadConfig(addr[kept])+"  weight = 70000\n")
	l.lvsd.hup()
	eventually(t, 30*time.Second, "lvsd to reject the invalid config", func() bool {
		return strings.Contains(l.lvsd.proc.Output(), "reload rejected")
	})
	wantTable(t, l.ipvsadm(t), map[string][]string{svc + " rr": both})
	hc.echo("after a rejected reload")
	if l.lvsd.proc.Exited() {
		t.Fatal("lvsd exited on an invalid config")
	}
}

// TestDirectorRestart: with a long-lived connection open, SIGTERM lvsd and
// start it again, then kill -9 it and start it again. The IPVS service
// stays in the kernel while lvsd is down, the connection keeps echoing,
// persistence templates survive (the client keeps its real server), and
// there is no flush: the connection counters only grow, and adoption at
// start-up writes nothing. A restart with a backend gone from the config
// removes just that destination.
func TestDirectorRestart(t *testing.T) {
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
	table := map[string][]string{
		"TCP 198.18.0.100:0 rr persistent 500": {"-> 198.18.0.21:0 Route 1", "-> 198.18.0.22:0 Route 1"},
	}
	wantTable(t, l.ipvsadm(t), table)

	hc := hold(t, l.client, vip+":80")
	kept := sticky(t, l.client, "", vip+":22", 3)
	if kept != hc.server {
		t.Fatalf("PCC: client's port 22 on %s, its held port-80 connection on %s", kept, hc.server)
	}
	other := sticky(t, l.client2, "", vip+":80", 2)
	if other == kept {
		t.Fatalf("both clients on %s: rr must spread different clients", kept)
	}
	const svc = "TCP 198.18.0.100:0"
	const made = 6 // 1 held + 3 + 2
	var counters map[string]uint64
	eventually(t, 30*time.Second, fmt.Sprintf("%d connections in IPVS counters", made), func() bool {
		counters = ipvsConns(t, l.dir)
		return counters[svc] >= made
	})

	for _, restart := range []struct {
		name string
		stop func()
	}{
		{"SIGTERM", l.lvsd.stop},
		{"kill -9", l.lvsd.kill9},
	} {
		restart.stop()
		if !l.lvsd.proc.Exited() {
			t.Fatalf("lvsd still running after %s", restart.name)
		}
		// lvsd is down: its service and destinations stay in the kernel.
		wantTable(t, l.ipvsadm(t), table)
		if restart.name == "kill -9" {
			// The VIP stays too: the kernel keeps forwarding on its own.
			hc.echo("while lvsd is killed")
		}
		l.lvsd.start()
		hc.echo("after restart from " + restart.name)
		wantTable(t, l.ipvsadm(t), table)
		now := ipvsConns(t, l.dir)
		for k, v := range counters {
			if now[k] < v {
				t.Fatalf("after restart from %s, %s connection counter fell from %d to %d: the service was flushed or recreated", restart.name, k, v, now[k])
			}
		}
		counters = now
		if !strings.Contains(l.lvsd.proc.Output(), "adopted kernel IPVS state") {
			t.Fatalf("lvsd did not log its adoption at start:\n%s", l.lvsd.proc.Output())
		}
		mustMatch(t, l.lvsd.proc.Output(), `adopted kernel IPVS state.* writes=0 `)
		// Persistence templates survived: both clients keep their servers.
		if got := who(t, l.client, "22"); got != kept {
			t.Fatalf("after restart from %s, client moved from %s to %s", restart.name, kept, got)
		}
		if got := who(t, l.client2, "22"); got != other {
			t.Fatalf("after restart from %s, client2 moved from %s to %s", restart.name, other, got)
		}
	}

	// lvsd down while its config loses client2's real server: the restart
	// removes that destination alone. The service is not recreated, the
	// held connection and the client's template live on, and client2 is
	// rescheduled rather than black-holed.
	l.lvsd.kill9()
	addr := map[string]string{"rs1": "198.18.0.21", "rs2": "198.18.0.22"}
	l.lvsd.writeConfig("eth0", fmt.Sprintf(`
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
  address = %q
`, addr[kept]))
	l.lvsd.start()
	wantTable(t, l.ipvsadm(t), map[string][]string{
		"TCP 198.18.0.100:0 rr persistent 500": {"-> " + addr[kept] + ":0 Route 1"},
	})
	hc.echo("after a restart that removed " + other)
	if now := ipvsConns(t, l.dir)[svc]; now < counters[svc] {
		t.Fatalf("after a restart with a changed config, the service connection counter fell from %d to %d: the service was recreated", counters[svc], now)
	}
	mustMatch(t, l.lvsd.proc.Output(), `adopted kernel IPVS state.* writes=1 `)
	if got := who(t, l.client, "22"); got != kept {
		t.Fatalf("after the restart client moved from %s to %s", kept, got)
	}
	if got := who(t, l.client2, "22"); got != kept {
		t.Fatalf("client2, whose real server %s was removed, reached %s", other, got)
	}
	hc.echo("at the end")
}

// TestDirectorForeignAndDrift: lvsd never touches IPVS services or nftables
// tables it does not own (at start, reload, resync and stop), and its
// periodic resync repairs drift: a deleted destination, a changed
// scheduler, even `ipvsadm -C`.
func TestDirectorForeignAndDrift(t *testing.T) {
	l := newSeedLab(t, "80", "443")
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := l.dir.Run(ctx, name, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	// Another tool's IPVS services and nftables table, there before lvsd.
	addForeign := func() {
		t.Helper()
		run("ipvsadm", "-A", "-t", "198.18.0.200:80", "-s", "wlc")
		run("ipvsadm", "-a", "-t", "198.18.0.200:80", "-r", "198.18.0.21:80", "-g", "-w", "3")
		run("ipvsadm", "-A", "-f", "99", "-s", "sh")
	}
	addForeign()
	run("nft", "add table inet foreign")
	run("nft", "add chain inet foreign pre { type filter hook prerouting priority -150 ; }")
	run("nft", "add rule inet foreign pre tcp dport 9999 meta mark set 99")
	foreignRules := run("nft", "list", "table", "inet", "foreign")

	config := func(weight int) string {
		return fmt.Sprintf(`
[ipvs]
resync_interval = "1s"

[[vip_group]]
name = "web"
addresses = ["198.18.0.100/32"]

[[service]]
name = "web"
group = "web"
address = "198.18.0.100"
port = 80
scheduler = "rr"
  [[service.backend]]
  address = "198.18.0.21"
  [[service.backend]]
  address = "198.18.0.22"
  weight = %d

[[service]]
name = "tls"
group = "web"
fwmark = 8
persistent = true
  [service.mark]
  ports = [443]
  destination = "198.18.0.100"
  [[service.backend]]
  address = "198.18.0.21"
  [[service.backend]]
  address = "198.18.0.22"
`, weight)
	}
	foreign := map[string][]string{
		"TCP 198.18.0.200:80 wlc": {"-> 198.18.0.21:80 Route 3"},
		"FWM 99 sh":               {},
	}
	table := func(weight int, withForeign bool) map[string][]string {
		tb := map[string][]string{
			"TCP 198.18.0.100:80 rr":   {"-> 198.18.0.21:80 Route 1", fmt.Sprintf("-> 198.18.0.22:80 Route %d", weight)},
			"FWM 8 wlc persistent 360": {"-> 198.18.0.21:0 Route 1", "-> 198.18.0.22:0 Route 1"},
		}
		if withForeign {
			maps.Copy(tb, foreign)
		}
		return tb
	}
	checkForeignNFT := func(when string) {
		t.Helper()
		if got := run("nft", "list", "table", "inet", "foreign"); got != foreignRules {
			t.Fatalf("%s: the foreign nftables table changed:\n%s\nwas:\n%s", when, got, foreignRules)
		}
	}

	l.lvsd.writeConfig("eth0", config(1))
	l.lvsd.start()
	wantTable(t, l.ipvsadm(t), table(1, true))
	checkForeignNFT("after start")

	l.lvsd.writeConfig("eth0", config(2))
	l.lvsd.hup()
	eventually(t, 30*time.Second, "weight 2 after reload", func() bool {
		return maps.EqualFunc(ipvsTable(l.ipvsadm(t)), table(2, true), slices.Equal)
	})
	checkForeignNFT("after reload")

	// Drift, repaired by the resync (every second here).
	repaired := func(what string) {
		t.Helper()
		eventually(t, 30*time.Second, "resync to repair "+what, func() bool {
			return maps.EqualFunc(ipvsTable(l.ipvsadm(t)), table(2, true), slices.Equal)
		})
	}
	run("ipvsadm", "-d", "-t", vip+":80", "-r", "198.18.0.22:80")
	repaired("a deleted destination")
	run("ipvsadm", "-E", "-t", vip+":80", "-s", "wlc")
	repaired("a changed scheduler")
	run("ipvsadm", "-e", "-f", "8", "-r", "198.18.0.21", "-g", "-w", "7")
	repaired("a changed weight")
	run("ipvsadm", "-C")
	addForeign() // the foreign tool restores its own
	repaired("ipvsadm -C")
	if !strings.Contains(l.lvsd.proc.Output(), "IPVS drift repaired") {
		t.Errorf("lvsd did not log the drift it repaired")
	}
	for i := 0; i < 4; i++ {
		who(t, l.client, "80") // traffic flows after the repair
	}

	l.lvsd.stop()
	wantTable(t, l.ipvsadm(t), table(2, true))
	checkForeignNFT("after stop")
}
