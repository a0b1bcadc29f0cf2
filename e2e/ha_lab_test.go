//go:build lab

package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/api"
	"github.com/lvsd/lvsd/lab/topo"
)

// haLab is issue 6's lab: two directors (dir-a, priority 150, and dir-b,
// priority 100) in one cluster, two DR real servers holding the VIP on lo,
// and two clients, all on one bridge in 198.18.0.0/24. The clients have
// spare addresses so one host can act as several clients.
type haLab struct {
	t               *testing.T
	tp              *topo.Topo
	sync            bool
	client, client2 *topo.Host
	dirA, dirB      *topo.Host
	rs1, rs2        *topo.Host
	a, b            *lvsd
}

const (
	haVIP     = "198.18.0.100"
	haService = "web"
	haGroup   = "web"
	rs1Addr   = "198.18.0.21"
	rs2Addr   = "198.18.0.22"
)

// haClientAddrs are client addresses besides the clients' own (.10, .13).
var haClientAddrs = []string{"198.18.0.14", "198.18.0.15", "198.18.0.16", "198.18.0.17"}

func newHALab(t *testing.T, sync bool) *haLab {
	t.Helper()
	tp := topo.New(t)
	l := &haLab{t: t, tp: tp, sync: sync}
	l.client = tp.Host("client", "198.18.0.10/24")
	l.client2 = tp.Host("client2", "198.18.0.13/24")
	for _, a := range haClientAddrs {
		l.client.AddAddr("eth0", a+"/24")
	}
	l.dirA = tp.Host("dir-a", "198.18.0.11/24")
	l.dirB = tp.Host("dir-b", "198.18.0.12/24")
	l.rs1 = tp.Host("rs1", rs1Addr+"/24")
	l.rs2 = tp.Host("rs2", rs2Addr+"/24")
	for _, rs := range []*topo.Host{l.rs1, l.rs2} {
		rs.AddLoopbackVIP(haVIP)
		rs.ServeIdentify(":80")
	}
	l.a = newLVSD(t, l.dirA, "dir-a")
	l.b = newLVSD(t, l.dirB, "dir-b")
	l.a.writeConfig("eth0", haConfig("198.18.0.11", "198.18.0.12", 150, sync, ""))
	l.b.writeConfig("eth0", haConfig("198.18.0.12", "198.18.0.11", 100, sync, ""))
	return l
}

// haConfig is one director's config: the cluster (generous heartbeat
// timing: the VM is slow and shared), the VIP group, the connection sync
// daemon when sync is set, and the persistent port-0 DR service. extra is
// appended (more services).
func haConfig(self, peer string, prio int, sync bool, extra string) string {
	return fmt.Sprintf(`
[ipvs.sync]
enabled = %t
interface = "eth0"
sync_id = 7

[cluster]
bind = "%s:7946"
peers = ["%s:7946"]
insecure = true
heartbeat_interval = "100ms"
dead_after = "1500ms"

[[vip_group]]
name = "web"
addresses = ["198.18.0.100/32"]
priority = %d
garp_interval = "50ms"

[[service]]
name = "web"
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
%s`, sync, self, peer, prio, extra)
}

// start runs both lvsd and waits until dir-a owns the group, dir-b is its
// backup and each sees the other alive.
func (l *haLab) start() {
	l.t.Helper()
	l.a.start()
	l.b.start()
	l.waitOwner(l.a, l.dirA)
	for _, d := range []*lvsd{l.a, l.b} {
		eventually(l.t, 30*time.Second, d.name+" sees its peer alive", func() bool {
			for _, m := range d.status().Members {
				if !m.Self && m.Alive {
					return true
				}
			}
			return false
		})
	}
}

func (l *haLab) peer(d *lvsd) *lvsd {
	if d == l.a {
		return l.b
	}
	return l.a
}

// groupState is d's state of the web group (master, backup, ...).
func groupState(d *lvsd) string {
	d.t.Helper()
	for _, g := range d.status().Groups {
		if g.Name == haGroup {
			return g.State
		}
	}
	d.t.Fatalf("%s has no group %s", d.name, haGroup)
	return ""
}

// waitOwner waits until d is master, its peer (if running) backup, and
// the clients resolve the VIP to d's host's MAC (gratuitous ARP).
func (l *haLab) waitOwner(d *lvsd, h *topo.Host) time.Duration {
	l.t.Helper()
	p := l.peer(d)
	took := eventually(l.t, 30*time.Second, d.name+" owns group web", func() bool {
		if groupState(d) != "master" {
			return false
		}
		return p.proc == nil || p.proc.Exited() || groupState(p) != "master"
	})
	want := h.MAC("").String()
	for _, c := range []*topo.Host{l.client, l.client2} {
		eventually(l.t, 30*time.Second, c.Name()+" resolves the VIP to "+d.name, func() bool {
			mac, ok := c.Neighbor(haVIP)
			// No entry yet is fine: the next connection resolves it afresh.
			return !ok || mac.String() == want
		})
	}
	return took
}

// at asks which real server answers a new connection from client address
// src to the VIP.
func (l *haLab) at(src string) string {
	l.t.Helper()
	h := l.client
	if src == "198.18.0.13" {
		h = l.client2
	}
	return whoFrom(l.t, h, src, haVIP+":80")
}

// viaDirector fails unless the clients' neighbour entry for the VIP (if
// any) is h's MAC: traffic goes through that director, not around it.
func (l *haLab) viaDirector(h *topo.Host) {
	l.t.Helper()
	want := h.MAC("").String()
	for _, c := range []*topo.Host{l.client, l.client2} {
		if mac, ok := c.Neighbor(haVIP); ok && mac.String() != want {
			l.t.Fatalf("%s resolved the VIP to %s, not %s's %s", c.Name(), mac, h.Name(), want)
		}
	}
}

func rsAddr(name string) string {
	switch name {
	case "rs1":
		return rs1Addr
	case "rs2":
		return rs2Addr
	}
	panic("unknown real server " + name)
}

func otherRS(name string) string {
	if name == "rs1" {
		return "rs2"
	}
	return "rs1"
}

// destWeight returns the weight of real server addr (port 0) under the
// web service in `ipvsadm -Ln` output, or -1 when it is absent.
func destWeight(out, addr string) int {
	in := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && (f[0] == "TCP" || f[0] == "UDP" || f[0] == "FWM"):
			in = f[1] == haVIP+":0"
		case in && len(f) >= 4 && f[0] == "->" && f[1] == addr+":0":
			w, err := strconv.Atoi(f[3])
			if err != nil {
				return -2
			}
			return w
		}
	}
	return -1
}

// connEntries returns the `ipvsadm -Lnc` lines from client address src
// (any port) to the VIP.
func connEntries(t *testing.T, h *topo.Host, src string) []string {
	t.Helper()
	var out []string
	re := regexp.MustCompile(`\s` + regexp.QuoteMeta(src) + `:\d+\s+` + regexp.QuoteMeta(haVIP) + `:\d+\s`)
	for _, line := range strings.Split(ipvsadm(t, h, "-c"), "\n") {
		if re.MatchString(line + " ") {
			out = append(out, strings.Join(strings.Fields(line), " "))
		}
	}
	return out
}

// template returns the persistence template (client port 0 to VIP port
// 0; its state reads NONE or ASSURED) of client address src in h's IPVS,
// or "".
func template(t *testing.T, h *topo.Host, src string) string {
	t.Helper()
	for _, e := range connEntries(t, h, src) {
		f := strings.Fields(e)
		if len(f) == 6 && f[3] == src+":0" && f[4] == haVIP+":0" {
			return e
		}
	}
	return ""
}

// electionEvents returns d's election events (lvsctl events --json).
func electionEvents(t *testing.T, d *lvsd) []api.Event {
	t.Helper()
	var all, out []api.Event
	if err := json.Unmarshal([]byte(d.mustCtl("--json", "events", "--limit", "1000")), &all); err != nil {
		t.Fatalf("lvsctl events --json on %s: %v", d.name, err)
	}
	for _, e := range all {
		if e.Kind == "election" {
			out = append(out, e)
		}
	}
	return out
}

func formatEvents(evs []api.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  %s %s %s %s -> %s (%s)\n", e.Time.Format("15:04:05.000"), e.Kind, e.Subject, e.From, e.To, e.Reason)
	}
	return b.String()
}

// TestHADrainOnStandby: a drain issued on the standby reaches the owner's
// IPVS (measured, printed, asserted within the 1 s plus slack for
// the slow VM); a long-lived connection to the drained real server keeps
// working while new clients, and new connections of its own sticky
// client, avoid it. The undrain on the owner reaches the standby back.
func TestHADrainOnStandby(t *testing.T) {
	l := newHALab(t, true)
	l.start()
	hc := hold(t, l.client, haVIP+":80")
	drained := hc.server
	addr := rsAddr(drained)
	other := otherRS(drained)
	for _, h := range []*topo.Host{l.dirA, l.dirB} {
		if w := destWeight(ipvsadm(t, h), addr); w != 1 {
			t.Fatalf("%s: weight of %s is %d before the drain, want 1", h.Name(), addr, w)
		}
	}

	// Drain on the standby, then poll the owner's IPVS. An ipvsadm exec
	// costs 100 ms to seconds in the slow, shared VM, so the time is taken
	// with a netlink read of the same table every 5 ms; ipvsadm -Ln then
	// confirms it.
	probe := newIPVSProbe(t, l.dirA, haVIP, 0)
	start := time.Now()
	out := l.b.mustCtl("backend", "drain", haService, addr)
	ctlTook := time.Since(start)
	mustMatch(t, out, `drain: web/`+regexp.QuoteMeta(addr)+`:0 admin=drained weight=0`)
	var seen time.Duration
	for {
		s := time.Since(start)
		if probe.weight(addr) == 0 {
			seen = s
			break
		}
		if s > 30*time.Second {
			t.Fatalf("owner's weight of %s is still not 0 %v after the drain on the standby", addr, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if w := destWeight(ipvsadm(t, l.dirA), addr); w != 0 {
		t.Fatalf("owner's ipvsadm -Ln shows weight %d for %s, want 0 (drained on the standby)", w, addr)
	}
	t.Logf("DRAIN PROPAGATION: lvsctl backend drain on the standby dir-b -> weight 0 in the owner dir-a's IPVS: %v "+
		"(from the start of the command; lvsctl returned after %v); confirmed by ipvsadm -Ln",
		seen.Round(time.Millisecond), ctlTook.Round(time.Millisecond))
	// The bound is 1 s; the assertion allows 1 s more for the slow
	// VM shared with other work (the figure above is what to read).
	if seen > 2*time.Second {
		t.Errorf("drain on the standby took %v to reach the owner, want about 1 s at most", seen)
	}
	if w := destWeight(ipvsadm(t, l.dirB), addr); w != 0 {
		t.Fatalf("standby's own weight of %s is %d, want 0", addr, w)
	}

	// The owner shows the drain as replicated from dir-b.
	st := l.a.status()
	if b := backendOf(t, st, haService, addr+":0"); b.Admin != "drained" || b.Weight != 0 {
		t.Fatalf("owner's status of %s: admin %q weight %d, want drained/0", addr, b.Admin, b.Weight)
	}
	mustMatch(t, l.a.mustCtl("events"), `operator\s+web/`+regexp.QuoteMeta(addr)+`:0\s+drained\s+replicated from dir-b`)

	// The long-lived connection to the drained server keeps working ...
	for i := 0; i < 3; i++ {
		hc.echo(fmt.Sprintf("after the drain, %d", i))
	}
	// ... while new clients avoid it, and so does its own client's next
	// connection (expire_quiescent_template).
	for _, src := range append([]string{"198.18.0.13", "198.18.0.10"}, haClientAddrs...) {
		if got := l.at(src); got != other {
			t.Fatalf("new connection from %s reached %s after %s was drained, want %s", src, got, drained, other)
		}
	}
	hc.echo("after new clients")
	if got := hc.server; got != drained {
		t.Fatalf("held connection is on %s, want %s", got, drained)
	}

	// Undrain on the owner reaches the standby.
	probeB := newIPVSProbe(t, l.dirB, haVIP, 0)
	start = time.Now()
	l.a.mustCtl("backend", "undrain", haService, addr)
	eventually(t, 30*time.Second, "undrain on the owner reaches the standby", func() bool {
		return probeB.weight(addr) == 1
	})
	t.Logf("undrain on the owner dir-a -> weight 1 in the standby dir-b's IPVS: %v", time.Since(start).Round(time.Millisecond))
	if w := destWeight(ipvsadm(t, l.dirB), addr); w != 1 {
		t.Fatalf("standby's ipvsadm -Ln shows weight %d for %s after undrain, want 1", w, addr)
	}
	if w := destWeight(ipvsadm(t, l.dirA), addr); w != 1 {
		t.Fatalf("owner's weight of %s is %d after undrain, want 1", addr, w)
	}
	hc.echo("at the end")
}

// backendOf finds a backend in a status.
func backendOf(t *testing.T, st api.Status, service, addr string) api.Backend {
	t.Helper()
	for _, s := range st.Services {
		if s.Name != service {
			continue
		}
		for _, b := range s.Backends {
			if b.Address == addr {
				return b
			}
		}
	}
	t.Fatalf("status of %s has no backend %s in %s", st.Node, addr, service)
	return api.Backend{}
}

// TestHAStickyFailover: a client sticky to rs2 stays on rs2 when the VIP
// moves to the standby with connection sync on (the standby holds the
// synced persistence template), whether the move is `lvsctl failover` or
// the owner's link going down. With sync off the standby has no template:
// the client is scheduled afresh, and with rr and the client order below
// it lands on rs1.
func TestHAStickyFailover(t *testing.T) {
	for _, tc := range []struct {
		name string
		sync bool
		move string
	}{
		{"sync-on/failover", true, "failover"},
		{"sync-on/linkdown", true, "linkdown"},
		{"sync-off/failover", false, "failover"},
		{"sync-off/linkdown", false, "linkdown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newHALab(t, tc.sync)
			l.start()
			// rr alternates: of two new clients, one lands on rs2.
			first, second := l.at("198.18.0.10"), l.at("198.18.0.14")
			if first == second {
				t.Fatalf("two new clients both on %s: rr must alternate", first)
			}
			src := "198.18.0.10"
			if second == "rs2" {
				src = "198.18.0.14"
			}
			if got := sticky(t, l.client, src, haVIP+":80", 3); got != "rs2" {
				t.Fatalf("client %s on %s, want rs2", src, got)
			}
			l.viaDirector(l.dirA)
			tmplA := template(t, l.dirA, src)
			if tmplA == "" {
				t.Fatalf("owner dir-a has no persistence template for %s:\n%s", src, ipvsadm(t, l.dirA, "-c"))
			}
			t.Logf("owner dir-a: %s", tmplA)
			if tc.sync {
				var tmpl string
				eventually(t, 30*time.Second, "dir-b holds the synced template of "+src, func() bool {
					tmpl = template(t, l.dirB, src)
					return tmpl != ""
				})
				t.Logf("standby dir-b (synced): %s", tmpl)
				if !strings.HasSuffix(tmpl, rs2Addr+":0") {
					t.Fatalf("standby's synced template of %s points elsewhere: %s", src, tmpl)
				}
			} else if e := connEntries(t, l.dirB, src); len(e) != 0 {
				t.Fatalf("sync is off, yet dir-b has entries for %s: %v", src, e)
			}

			switch tc.move {
			case "failover":
				out := l.a.mustCtl("failover", haGroup)
				mustMatch(t, out, `failover: group web is now backup here \(owner dir-b\)`)
			case "linkdown":
				l.dirA.LinkDown()
			}
			took := l.waitOwner(l.b, l.dirB)
			t.Logf("%s: dir-b owns the group after %v; its election events:\n%s", tc.move, took.Round(time.Millisecond), formatEvents(electionEvents(t, l.b)))

			// dir-b's rr has scheduled nobody yet. Fresh clients take the next
			// rr slots until the next one is rs1; then the sticky client
			// connects: without a template it would land on rs1.
			decoys := []string{"198.18.0.15", "198.18.0.16"}
			for i := 0; ; i++ {
				got := l.at(decoys[i])
				t.Logf("fresh client %s on dir-b -> %s", decoys[i], got)
				if got == "rs2" {
					break // rr's next pick is rs1
				}
				if i == len(decoys)-1 {
					t.Fatalf("fresh clients never reached rs2 through dir-b")
				}
			}
			got := l.at(src)
			l.viaDirector(l.dirB)
			t.Logf("sync %v, %s: the client sticky to rs2 now reaches %s", tc.sync, tc.move, got)
			if tc.sync && got != "rs2" {
				t.Fatalf("with connection sync the client must stay on rs2 after the VIP moved; it reached %s\ndir-b ipvsadm -Lnc:\n%s", got, ipvsadm(t, l.dirB, "-c"))
			}
			if !tc.sync && got != "rs1" {
				t.Fatalf("without sync dir-b has no template, so rr (next pick rs1) must reschedule the client; it reached %s", got)
			}
			if again := sticky(t, l.client, src, haVIP+":80", 2); again != got {
				t.Fatalf("client moved from %s to %s on dir-b", got, again)
			}
		})
	}
}

// TestHAKillRestart: kill -9 of the owner's lvsd and a restart. Two
// long-lived connections (one per real server) keep echoing throughout:
// while lvsd is dead (the kernel keeps forwarding), while the standby
// owns the VIP (it holds the synced connections), and after the restarted
// dir-a takes the group back. IPVS on dir-a is never flushed (same table,
// the held connections' entries survive, adoption writes nothing), and
// ownership settles without flapping: each director makes only the
// transitions the story needs, then none for a quiet period.
func TestHAKillRestart(t *testing.T) {
	l := newHALab(t, true)
	l.start()
	h1 := hold(t, l.client, haVIP+":80")
	h2 := hold(t, l.client2, haVIP+":80")
	if h1.server == h2.server {
		t.Fatalf("both held connections on %s: rr must alternate", h1.server)
	}
	held := []*heldConn{h1, h2}
	echoAll := func(when string) {
		t.Helper()
		for _, hc := range held {
			hc.echo(when)
		}
	}
	for i := 0; i < 3; i++ {
		echoAll("before the kill")
	}
	// The standby has the held connections from the sync daemon.
	for _, src := range []string{"198.18.0.10", "198.18.0.13"} {
		eventually(t, 30*time.Second, "dir-b holds the synced connection of "+src, func() bool {
			for _, e := range connEntries(t, l.dirB, src) {
				if strings.Contains(e, "ESTABLISHED") {
					return true
				}
			}
			return false
		})
	}
	table := ipvsTable(ipvsadm(t, l.dirA))
	entriesA := map[string][]string{}
	for _, src := range []string{"198.18.0.10", "198.18.0.13"} {
		entriesA[src] = connEntries(t, l.dirA, src)
	}

	killedAt := time.Now()
	l.a.kill9()
	echoAll("lvsd on dir-a killed")
	wantTable(t, ipvsadm(t, l.dirA), table)
	l.waitOwner(l.b, l.dirB)
	t.Logf("dir-b took the group %v after dir-a's lvsd was killed", time.Since(killedAt).Round(time.Millisecond))
	echoAll("dir-b owns the VIP")
	if got := l.at("198.18.0.10"); got != h1.server {
		t.Fatalf("client moved from %s to %s when dir-b took over", h1.server, got)
	}
	l.viaDirector(l.dirB)

	restartedAt := time.Now()
	l.a.start()
	mustMatch(t, l.a.proc.Output(), `adopted kernel IPVS state.* writes=0 `)
	l.waitOwner(l.a, l.dirA)
	t.Logf("restarted dir-a took the group back %v after its start", time.Since(restartedAt).Round(time.Millisecond))
	echoAll("dir-a restarted and owns the VIP")
	wantTable(t, ipvsadm(t, l.dirA), table)
	for src, before := range entriesA {
		if len(before) == 0 {
			t.Fatalf("dir-a had no connection entries for %s before the kill", src)
		}
		now := strings.Join(connEntries(t, l.dirA, src), "\n")
		for _, e := range before {
			f := strings.Fields(e)
			// Match on client, VIP and real server: timers and states move.
			if !strings.Contains(now, f[3]+" "+f[4]+" "+f[5]) {
				t.Fatalf("dir-a lost connection entry %q across the kill and restart (flushed?); now:\n%s", e, now)
			}
		}
	}

	// Settled: a quiet period with no election transition anywhere.
	countA, countB := len(electionEvents(t, l.a)), len(electionEvents(t, l.b))
	for i := 0; i < 5; i++ {
		time.Sleep(time.Second)
		echoAll(fmt.Sprintf("quiet period, %d s", i+1))
	}
	evA, evB := electionEvents(t, l.a), electionEvents(t, l.b)
	t.Logf("election events of the restarted dir-a:\n%s", formatEvents(evA))
	t.Logf("election events of dir-b:\n%s", formatEvents(evB))
	if len(evA) != countA || len(evB) != countB {
		t.Fatalf("ownership did not settle: election transitions during the quiet period (dir-a %d -> %d, dir-b %d -> %d)", countA, len(evA), countB, len(evB))
	}
	if groupState(l.a) != "master" || groupState(l.b) != "backup" {
		t.Fatalf("after settling: dir-a %s, dir-b %s; want master, backup", groupState(l.a), groupState(l.b))
	}
	// dir-b since the kill: backup -> master (dir-a dead), master -> backup
	// (dir-a back, preempting). Anything more is a flap.
	var sinceKill []api.Event
	for _, e := range evB {
		if e.Time.After(killedAt) {
			sinceKill = append(sinceKill, e)
		}
	}
	if len(sinceKill) != 2 || sinceKill[0].To != "master" || sinceKill[1].To != "backup" {
		t.Fatalf("dir-b's transitions since the kill are not exactly master then backup:\n%s", formatEvents(sinceKill))
	}
	// The restarted dir-a: to master once, after at most one initial state.
	masters := 0
	for _, e := range evA {
		if e.To == "master" {
			masters++
		}
	}
	if masters != 1 || len(evA) > 3 || evA[len(evA)-1].To != "master" {
		t.Fatalf("restarted dir-a flapped (want at most an initial state, then master once):\n%s", formatEvents(evA))
	}
	if got := l.at("198.18.0.10"); got != h1.server {
		t.Fatalf("client moved from %s to %s after dir-a took the group back", h1.server, got)
	}
	echoAll("at the end")
}
