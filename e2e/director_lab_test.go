//go:build lab

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
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

// natLab: two clients in 198.18.0.0/24, the director (198.18.0.1 there,
// 198.18.2.1 on the real servers' subnet, ip_forward on), real servers
// 198.18.2.11 and .12 routing everything back through the director, VIPs
// in 198.18.1.0/24. All share one bridge; the subnets keep them apart.
type natLab struct {
	client, client2 *topo.Host
	dir, rs1, rs2   *topo.Host
	lvsd            *lvsd
}

func newNATLab(t *testing.T, port string) *natLab {
	t.Helper()
	tp := topo.New(t)
	l := &natLab{}
	l.client = tp.Host("client", "198.18.0.10/24")
	l.client2 = tp.Host("client2", "198.18.0.13/24")
	for _, c := range []*topo.Host{l.client, l.client2} {
		c.AddRoute("198.18.1.0/24", "198.18.0.1")
	}
	l.dir = tp.Host("dir-a", "198.18.0.1/24", "198.18.2.1/24")
	l.dir.Sysctl("net.ipv4.ip_forward", "1")
	// Replies leave through the interface they came in on: no redirects,
	// or real servers would learn to skip the director.
	l.dir.Sysctl("net.ipv4.conf.all.send_redirects", "0")
	l.dir.Sysctl("net.ipv4.conf.eth0.send_redirects", "0")
	l.rs1 = tp.Host("rs1", "198.18.2.11/24")
	l.rs2 = tp.Host("rs2", "198.18.2.12/24")
	for _, rs := range []*topo.Host{l.rs1, l.rs2} {
		rs.AddRoute("default", "198.18.2.1")
		rs.ServeIdentify(":" + port)
	}
	l.lvsd = newLVSD(t, l.dir, "dir-a")
	return l
}

// TestDirectorNAT: the seed's persistence with forward = "nat" and port
// translation (VIP port 80 to real servers' 8080): a client keeps its real
// server, different clients are spread, and a non-persistent NAT service
// alternates.
func TestDirectorNAT(t *testing.T) {
	l := newNATLab(t, "8080")
	l.lvsd.writeConfig("eth0", `
[[vip_group]]
name = "web"
addresses = ["198.18.1.100/32", "198.18.1.101/32"]

[[service]]
name = "nat-sticky"
group = "web"
address = "198.18.1.100"
port = 80
scheduler = "rr"
persistence = "500s"
forward = "nat"
  [[service.backend]]
  address = "198.18.2.11"
  port = 8080
  [[service.backend]]
  address = "198.18.2.12"
  port = 8080

[[service]]
name = "nat-plain"
group = "web"
address = "198.18.1.101"
port = 80
scheduler = "rr"
forward = "nat"
  [[service.backend]]
  address = "198.18.2.11"
  port = 8080
  [[service.backend]]
  address = "198.18.2.12"
  port = 8080
`)
	l.lvsd.start()
	dests := []string{"-> 198.18.2.11:8080 Masq 1", "-> 198.18.2.12:8080 Masq 1"}
	wantTable(t, ipvsadm(t, l.dir), map[string][]string{
		"TCP 198.18.1.100:80 rr persistent 500": dests,
		"TCP 198.18.1.101:80 rr":                dests,
	})

	const n = 5
	first := sticky(t, l.client, "", "198.18.1.100:80", n)
	second := sticky(t, l.client2, "", "198.18.1.100:80", n)
	if first == second {
		t.Fatalf("both clients on %s: rr must spread different clients", first)
	}
	var got []string
	for i := 0; i < 6; i++ {
		got = append(got, whoFrom(t, l.client, "", "198.18.1.101:80"))
	}
	for i := 1; i < len(got); i++ {
		if got[i] == got[i-1] {
			t.Fatalf("non-persistent rr NAT service did not alternate: %v", got)
		}
	}
	// NAT: replies pass the director too (under DR OutPkts stays 0).
	eventually(t, 30*time.Second, "IPVS counters of both NAT services, replies included", func() bool {
		st := ipvsStats(t, l.dir)
		p, q := st["TCP 198.18.1.100:80"], st["TCP 198.18.1.101:80"]
		return p[0] >= 2*n && q[0] >= 6 && p[2] > 0 && q[2] > 0
	})
	t.Logf("persistent: client %s, client2 %s; plain: %v", first, second, got)
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
