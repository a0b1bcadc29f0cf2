//go:build lab

package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/api"
)

// opsCheck gives the web service a TCP health check, so status shows health.
const opsCheck = `
  [service.check]
  type = "tcp"
  port = 80
  interval = "2s"
  timeout = "1500ms"
  rise = 1
  fall = 3
`

// opsLab is haLab with health checks and a third real server (rs3,
// 198.18.0.23) that only a runtime `backend add` brings in.
func newOpsLab(t *testing.T) *haLab {
	t.Helper()
	l := newHALab(t, true)
	rs3 := l.tp.Host("rs3", "198.18.0.23/24")
	rs3.AddLoopbackVIP(haVIP)
	rs3.ServeIdentify(":80")
	l.writeConfigs(500, "")
	return l
}

// writeConfigs writes both directors' configs with the given persistence
// timeout and extra services.
func (l *haLab) writeConfigs(persistence int, extra string) {
	l.t.Helper()
	for _, x := range []struct {
		d          *lvsd
		self, peer string
		prio       int
	}{{l.a, "198.18.0.11", "198.18.0.12", 150}, {l.b, "198.18.0.12", "198.18.0.11", 100}} {
		cfg := haConfig(x.self, x.peer, x.prio, l.sync, opsCheck+extra)
		cfg = strings.Replace(cfg, `persistence = "500s"`, fmt.Sprintf(`persistence = "%ds"`, persistence), 1)
		x.d.writeConfig("eth0", cfg)
	}
}

// opsState is what an lvsctl command could change: both directors' IPVS
// tables and, from their status, group states and backend settings.
type opsState struct {
	ipvs   [2]map[string][]string
	groups [2][]string
	backs  [2][]string
}

func (l *haLab) state() opsState {
	l.t.Helper()
	var s opsState
	for i, d := range []*lvsd{l.a, l.b} {
		s.ipvs[i] = ipvsTable(ipvsadm(l.t, d.host))
		st := d.status()
		for _, g := range st.Groups {
			s.groups[i] = append(s.groups[i], fmt.Sprintf("%s %s owner=%s prio=%d", g.Name, g.State, g.Owner, g.Priority))
		}
		for _, svc := range st.Services {
			for _, b := range svc.Backends {
				s.backs[i] = append(s.backs[i], fmt.Sprintf("%s/%s admin=%q origin=%s weight=%d in_kernel=%v", svc.Name, b.Address, b.Admin, b.Origin, b.Weight, b.InKernel))
			}
		}
	}
	return s
}

func (s opsState) equal(o opsState) bool {
	for i := range 2 {
		if !maps.EqualFunc(s.ipvs[i], o.ipvs[i], slices.Equal) || !slices.Equal(s.groups[i], o.groups[i]) || !slices.Equal(s.backs[i], o.backs[i]) {
			return false
		}
	}
	return true
}

func (s opsState) String() string {
	var b strings.Builder
	for i, n := range []string{"dir-a", "dir-b"} {
		fmt.Fprintf(&b, "%s ipvsadm:\n%sgroups: %v\nbackends:\n  %s\n", n, formatTable(s.ipvs[i]), s.groups[i], strings.Join(s.backs[i], "\n  "))
	}
	return b.String()
}

// ctlJSON runs lvsctl --json and decodes its answer into v.
func ctlJSON(t *testing.T, d *lvsd, v any, args ...string) {
	t.Helper()
	out := d.mustCtl(append([]string{"--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("lvsctl --json %s on %s: not JSON of a %T: %v\n%s", strings.Join(args, " "), d.name, v, err, out)
	}
}

// weightsEverywhere waits until both directors' ipvsadm -Ln show addr
// with weight w (-1: absent).
func (l *haLab) weightsEverywhere(addr string, w int) {
	l.t.Helper()
	for _, d := range []*lvsd{l.a, l.b} {
		eventually(l.t, 30*time.Second, fmt.Sprintf("%s's ipvsadm shows %s with weight %d", d.name, addr, w), func() bool {
			return destWeight(ipvsadm(l.t, d.host), addr) == w
		})
	}
}

// ownerIs waits until d owns the web group in both directors' status.
func (l *haLab) ownerIs(d *lvsd) {
	l.t.Helper()
	p := l.peer(d)
	eventually(l.t, 30*time.Second, d.name+" owns web, seen by both", func() bool {
		return groupState(d) == "master" && groupState(p) == "backup"
	})
}

// TestOpsLvsctl runs every lvsctl command, human and --json, against two
// real lvsd in the lab and checks the effect in both directors' IPVS
// (ipvsadm -Ln) and status; then bad arguments, each refused with a clear
// error and no change anywhere.
func TestOpsLvsctl(t *testing.T) {
	l := newOpsLab(t)
	l.start()
	for _, d := range []*lvsd{l.a, l.b} {
		eventually(t, 30*time.Second, d.name+" sees both backends healthy", func() bool {
			st := d.status()
			return backendOf(t, st, haService, rs1Addr+":0").Health == "up" && backendOf(t, st, haService, rs2Addr+":0").Health == "up"
		})
	}
	hc := hold(t, l.client, haVIP+":80")
	heldAddr := rsAddr(hc.server) + ":0"

	t.Run("status", func(t *testing.T) {
		out := l.a.mustCtl("status")
		t.Logf("lvsctl status on dir-a:\n%s", out)
		mustMatch(t, out,
			`Node dir-a \(cluster\)`,
			`(?m)^Members:`, `dir-a\s+198\.18\.0\.11:7946\s+self`, `dir-b\s+198\.18\.0\.12:7946\s+alive`,
			`(?m)^VIP groups:`, `web\s+MASTER\s+dir-a\s+150\s+eth0\s+198\.18\.0\.100/32`,
			`Connection sync: master\+backup on eth0, syncid 7`,
			`Prot LocalAddress:Port\s+Scheduler Flags`,
			`RemoteAddress:Port\s+Forward\s+Weight\s+ActiveConn\s+InActConn\s+Health`,
			`TCP  198\.18\.0\.100:0\s+rr persistent 500 (mask /32 )?\[web, group web\]`,
			`-> 198\.18\.0\.21:0\s+Route\s+1\s+\d+\s+\d+\s+up\s+-\s+`,
			`-> 198\.18\.0\.22:0\s+Route\s+1\s+\d+\s+\d+\s+up\s+-\s+`,
			`-> `+regexp.QuoteMeta(heldAddr)+`\s+Route\s+1\s+[1-9]\d*\s+`, // the held connection
		)
		mustMatch(t, l.b.mustCtl("status"), `Node dir-b \(cluster\)`, `web\s+BACKUP\s+dir-a\s+100\s+`, `dir-a\s+198\.18\.0\.11:7946\s+alive`)

		var st api.Status
		ctlJSON(t, l.a, &st, "status")
		if st.Node != "dir-a" || st.Mode != "cluster" || len(st.Members) != 2 || !st.Members[1].Alive {
			t.Fatalf("status --json: node %q mode %q members %+v", st.Node, st.Mode, st.Members)
		}
		if len(st.Groups) != 1 || st.Groups[0].State != "master" || st.Groups[0].Owner != "dir-a" || st.Groups[0].Priority != 150 {
			t.Fatalf("status --json: groups %+v", st.Groups)
		}
		if st.Sync == nil || !st.Sync.Master || !st.Sync.Backup || st.Sync.SyncID != 7 {
			t.Fatalf("status --json: conn_sync %+v", st.Sync)
		}
		if len(st.Services) != 1 || !st.Services[0].InKernel || !st.Services[0].Persistent || st.Services[0].Timeout != "8m20s" {
			t.Fatalf("status --json: services %+v", st.Services)
		}
		if b := backendOf(t, st, haService, heldAddr); b.ActiveConns < 1 || b.Weight != 1 || b.Health != "up" || !b.InKernel {
			t.Fatalf("status --json: held connection's backend %+v, want >= 1 active connection, weight 1, up", b)
		}
	})

	t.Run("events", func(t *testing.T) {
		out := l.a.mustCtl("events")
		t.Logf("lvsctl events on dir-a:\n%s", out)
		mustMatch(t, out, `TIME\s+KIND\s+SUBJECT\s+CHANGE\s+REASON`, `election\s+web\s+backup -> master`)
		var ev []api.Event
		ctlJSON(t, l.a, &ev, "events", "--since", "1h", "--limit", "5")
		if len(ev) == 0 || len(ev) > 5 {
			t.Fatalf("events --json --limit 5: %d events", len(ev))
		}
		for _, e := range ev {
			if e.Time.IsZero() || e.Kind == "" {
				t.Fatalf("events --json: incomplete event %+v", e)
			}
		}
	})

	// Backend actions, each once human and once --json, issued on either
	// director; both directors' IPVS follow.
	t.Run("backend", func(t *testing.T) {
		for _, asJSON := range []bool{false, true} {
			run := func(d *lvsd, args ...string) api.Backend {
				t.Helper()
				var b api.Backend
				if asJSON {
					ctlJSON(t, d, &b, append([]string{"backend"}, args...)...)
				} else {
					out := d.mustCtl(append([]string{"backend"}, args...)...)
					if args[0] == "remove" {
						mustMatch(t, out, `^remove: web/\S+ removed\s*$`)
					} else {
						mustMatch(t, out, `^`+args[0]+`: web/\S+ admin=\S+ weight=-?\d+ health=\S+`)
					}
				}
				return b
			}
			b := run(l.b, "drain", haService, rs1Addr)
			if asJSON && (b.Admin != "drained" || b.Weight != 0) {
				t.Fatalf("drain --json answered %+v", b)
			}
			l.weightsEverywhere(rs1Addr, 0)
			if got := backendOf(t, l.a.status(), haService, rs1Addr+":0").Admin; got != "drained" {
				t.Fatalf("owner's status of a drained backend: admin %q", got)
			}
			run(l.a, "undrain", haService, rs1Addr)
			l.weightsEverywhere(rs1Addr, 1)

			run(l.a, "disable", haService, rs1Addr+":0")
			l.weightsEverywhere(rs1Addr, -1)
			b = run(l.b, "enable", haService, rs1Addr)
			if asJSON && (b.Admin != "" || b.Weight != 1) {
				t.Fatalf("enable --json answered %+v", b)
			}
			l.weightsEverywhere(rs1Addr, 1)

			b = run(l.b, "add", haService, "198.18.0.23", "--weight", "3")
			if asJSON && (b.Origin != "runtime" || b.Weight != 3) {
				t.Fatalf("add --json answered %+v", b)
			}
			l.weightsEverywhere("198.18.0.23", 3)
			mustMatch(t, l.a.mustCtl("status"), `-> 198\.18\.0\.23:0\s+Route\s+3\s+\d+\s+\d+\s+\S+\s+added`)
			run(l.a, "remove", haService, "198.18.0.23")
			l.weightsEverywhere("198.18.0.23", -1)
		}
		mustMatch(t, l.a.mustCtl("events"), `operator\s+web/198\.18\.0\.21:0\s+drained\s+replicated from dir-b`,
			`operator\s+web/198\.18\.0\.23:0\s+removed\s+remove on dir-a`)
		hc.echo("after the backend actions")
	})

	// Ownership: failover, demote, promote, clear, human and --json.
	t.Run("ownership", func(t *testing.T) {
		group := func(d *lvsd, asJSON bool, action string) api.Group {
			t.Helper()
			var g api.Group
			if asJSON {
				ctlJSON(t, d, &g, action, haGroup)
				if g.Name != haGroup {
					t.Fatalf("%s --json answered %+v", action, g)
				}
			} else {
				mustMatch(t, d.mustCtl(action, haGroup), `^`+action+`: group web is now \w+ here \(owner \S+\)`)
			}
			return g
		}
		mustMatch(t, l.a.mustCtl("failover", haGroup), `failover: group web is now backup here \(owner dir-b\)`)
		l.ownerIs(l.b)
		mustMatch(t, l.a.mustCtl("status"), `web\s+BACKUP\s+dir-b\s+1 \(base 150\).*override: demote`)
		group(l.a, true, "clear")
		l.ownerIs(l.a)
		group(l.a, false, "demote")
		l.ownerIs(l.b)
		if g := group(l.a, true, "promote"); g.State != "master" {
			t.Fatalf("promote --json answered %+v, want master", g)
		}
		l.ownerIs(l.a)
		group(l.a, false, "clear")
		group(l.b, false, "promote")
		l.ownerIs(l.b)
		// A second promote would tie with dir-b's: refused, nothing moves.
		if code, _, stderr := l.a.ctl("promote", haGroup); code != 1 {
			t.Fatalf("promote on dir-a while dir-b holds one: exit %d, want 1\n%s", code, stderr)
		} else {
			mustMatch(t, stderr, `dir-b holds a promote of group web`, "hint: run `lvsctl clear web` on dir-b first")
		}
		l.ownerIs(l.b)
		if g := group(l.b, true, "demote"); g.State != "backup" {
			t.Fatalf("demote --json answered %+v, want backup", g)
		}
		l.ownerIs(l.a)
		group(l.b, true, "clear")
		if g := group(l.a, true, "failover"); g.State != "backup" || g.Owner != "dir-b" {
			t.Fatalf("failover --json answered %+v, want backup, owner dir-b", g)
		}
		l.ownerIs(l.b)
		// The 3 a.m. round trip: failover away from dir-a (patch it), then
		// away from dir-b without clearing dir-a. The one demoted last gives
		// way: the VIP returns to dir-a and stays there.
		mustMatch(t, l.b.mustCtl("failover", haGroup), `failover: group web is now backup here \(owner dir-a\)`)
		l.ownerIs(l.a)
		before := len(electionEvents(t, l.a)) + len(electionEvents(t, l.b))
		time.Sleep(time.Second)
		if after := len(electionEvents(t, l.a)) + len(electionEvents(t, l.b)); after != before {
			t.Fatalf("both directors demoted: %d election transitions in 1 s after settling, want none\ndir-a:\n%s\ndir-b:\n%s",
				after-before, formatEvents(electionEvents(t, l.a)), formatEvents(electionEvents(t, l.b)))
		}
		// A demotion is kept across a restart: dir-b, restarted, stays backup.
		l.b.stop()
		l.b.start()
		l.ownerIs(l.a)
		mustMatch(t, l.b.mustCtl("status"), `web\s+BACKUP\s+dir-a\s+1 \(base \d+\).*override: demote`)
		group(l.b, false, "clear")
		group(l.a, false, "clear")
		l.ownerIs(l.a)
		hc.echo("after the ownership changes")
	})

	// Reload and check-config: a drain survives a reload that changes the
	// service (persistence 500 -> 600) and adds another.
	t.Run("reload", func(t *testing.T) {
		l.a.mustCtl("backend", "drain", haService, rs2Addr)
		l.weightsEverywhere(rs2Addr, 0)
		l.writeConfigs(600, `
[[service]]
name = "web-8080"
group = "web"
address = "198.18.0.100"
port = 8080
scheduler = "wlc"
  [[service.backend]]
  address = "198.18.0.21"
`)
		mustMatch(t, l.a.mustCtl("check-config"), `check-config: \S+lvsd\.toml is valid`)
		var res api.CheckResult
		ctlJSON(t, l.b, &res, "check-config")
		if !res.OK || len(res.Errors) != 0 {
			t.Fatalf("check-config --json: %+v", res)
		}
		out := l.a.mustCtl("reload")
		mustMatch(t, out, `reload: \S+lvsd\.toml is valid`, `service web changed`, `service web-8080 added`)
		res = api.CheckResult{}
		ctlJSON(t, l.b, &res, "reload")
		if !res.OK || len(res.Changes) < 2 {
			t.Fatalf("reload --json: %+v", res)
		}
		for _, d := range []*lvsd{l.a, l.b} {
			out := ipvsadm(t, d.host)
			mustMatch(t, out, `TCP\s+198\.18\.0\.100:0 rr persistent 600`, `TCP\s+198\.18\.0\.100:8080 wlc`)
			if w := destWeight(out, rs2Addr); w != 0 {
				t.Fatalf("%s: the drain of rs2 did not survive the reload (weight %d)", d.name, w)
			}
		}
		mustMatch(t, l.a.mustCtl("reload"), `no changes`)
		res = api.CheckResult{}
		ctlJSON(t, l.a, &res, "reload")
		if !res.OK || len(res.Changes) != 0 {
			t.Fatalf("second reload --json: %+v, want no changes", res)
		}
		l.b.mustCtl("backend", "undrain", haService, rs2Addr)
		l.weightsEverywhere(rs2Addr, 1)
		hc.echo("after the reload")
	})

	t.Run("bad-arguments", func(t *testing.T) {
		before := l.state()
		for _, c := range []struct {
			d    *lvsd
			args []string
			code int
			errs []string // patterns on stderr
		}{
			{l.b, []string{"backend", "drain", "nosuch", rs1Addr}, 1, []string{`lvsctl: unknown service "nosuch"`, `hint: lvsctl status lists the services`}},
			{l.a, []string{"--json", "backend", "disable", "nosuch", rs1Addr}, 1, []string{`unknown service "nosuch"`}},
			{l.a, []string{"backend", "drain", haService, "198.18.0.300"}, 2, []string{`"198\.18\.0\.300" is not ADDRESS or ADDRESS:PORT`}},
			{l.a, []string{"backend", "add", haService, "rs1:80"}, 2, []string{`is not ADDRESS or ADDRESS:PORT`}},
			{l.b, []string{"backend", "drain", haService, "198.18.0.99"}, 1, []string{`service web has no backend 198\.18\.0\.99:0`, `hint: lvsctl status lists the backends of web`}},
			{l.a, []string{"backend", "remove", haService, "198.18.0.99"}, 1, []string{`service web has no backend`}},
			{l.a, []string{"backend", "add", haService, "198.18.0.24:80"}, 1, []string{`dr forwarding cannot change the port`, `hint: use port 0 or omit it`}},
			{l.a, []string{"backend", "add", haService, "2001:db8::24"}, 1, []string{`backend 2001:db8::24 is ipv6 but service web is ipv4`}},
			{l.a, []string{"backend", "add", haService, rs1Addr}, 1, []string{`service web already has backend 198\.18\.0\.21:0`}},
			{l.a, []string{"backend", "undrain", haService, rs1Addr}, 1, []string{`is not drained`, `hint: it is in normal service already`}},
			{l.b, []string{"backend", "enable", haService, rs1Addr}, 1, []string{`is not disabled`}},
			{l.a, []string{"backend", "add", haService, "198.18.0.24", "--weight", "70000"}, 2, []string{`--weight must be 0\.\.65535`}},
			{l.a, []string{"backend", "drain", haService, rs1Addr, "--weight", "2"}, 2, []string{`--weight applies to backend add only`}},
			{l.a, []string{"backend", "drain", haService}, 2, []string{`backend drain takes SERVICE and BACKEND`}},
			{l.a, []string{"backend", "frob", haService, rs1Addr}, 2, []string{`unknown backend action "frob"`}},
			{l.a, []string{"failover", "nosuch"}, 1, []string{`unknown VIP group "nosuch"`, `hint: lvsctl status lists the VIP groups`}},
			{l.b, []string{"--json", "demote", "nosuch"}, 1, []string{`unknown VIP group "nosuch"`}},
			{l.a, []string{"promote", "nosuch"}, 1, []string{`unknown VIP group "nosuch"`}},
			{l.b, []string{"clear", "nosuch"}, 1, []string{`unknown VIP group "nosuch"`}},
			{l.a, []string{"failover"}, 2, []string{`failover takes one VIP group name`}},
			{l.a, []string{"status", "extra"}, 2, []string{`status takes no arguments`}},
			{l.a, []string{"events", "--limit", "0"}, 2, []string{`--limit must be 1\.\.10000`}},
			{l.a, []string{"events", "--since", "yesterday"}, 2, []string{`neither a duration`}},
			{l.a, []string{"frobnicate"}, 2, []string{`unknown command "frobnicate"`}},
			{l.a, []string{"--socket", "/nonexistent/lvsd.sock", "status"}, 1, []string{`cannot reach lvsd at /nonexistent/lvsd\.sock`, `hint: is lvsd running\?`}},
		} {
			code, out, errs := c.d.ctl(c.args...)
			t.Logf("lvsctl %s (on %s): exit %d: %s", strings.Join(c.args, " "), c.d.name, code, strings.TrimSpace(strings.SplitN(errs, "\n\n", 2)[0]))
			if code != c.code {
				t.Errorf("lvsctl %s: exit %d, want %d\n%s%s", strings.Join(c.args, " "), code, c.code, out, errs)
				continue
			}
			if out != "" {
				t.Errorf("lvsctl %s: printed %q on stdout on error", strings.Join(c.args, " "), out)
			}
			mustMatch(t, errs, c.errs...)
		}

		// An invalid config: reload and check-config say what is wrong,
		// where, and that nothing changed.
		good, err := os.ReadFile(l.a.path())
		if err != nil {
			t.Fatal(err)
		}
		bad := strings.Replace(string(good), `scheduler = "rr"`, `scheduler = "bogus"`, 1)
		bad = strings.Replace(bad, `address = "198.18.0.22"`, `address = "198.18.0.300"`, 1)
		if err := os.WriteFile(l.a.path(), []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"reload"}, {"check-config"}} {
			code, out, errs := l.a.ctl(args...)
			t.Logf("lvsctl %s with an invalid config: exit %d\n%s%s", args[0], code, out, errs)
			if code != 1 {
				t.Fatalf("lvsctl %s with an invalid config: exit %d, want 1", args[0], code)
			}
			mustMatch(t, out, args[0]+`: \S+lvsd\.toml is invalid; nothing was changed`, `lvsd\.toml:\d+:\d+: .*bogus`, `lvsd\.toml:\d+:\d+: .*198\.18\.0\.300`)
			var res api.CheckResult
			code, out, _ = l.a.ctl("--json", args[0])
			if code != 1 || json.Unmarshal([]byte(out), &res) != nil || res.OK || len(res.Errors) != 2 {
				t.Fatalf("lvsctl --json %s with an invalid config: exit %d, %+v\n%s", args[0], code, res, out)
			}
		}
		mustMatch(t, l.a.mustCtl("events"), `reload\s+\S+lvsd\.toml\s+rejected\s+2 error\(s\); running config unchanged`)
		if err := os.WriteFile(l.a.path(), good, 0o600); err != nil {
			t.Fatal(err)
		}
		mustMatch(t, l.a.mustCtl("check-config"), `is valid`)

		if after := l.state(); !after.equal(before) {
			t.Fatalf("bad arguments changed state:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if !reflect.DeepEqual(before.groups[0], []string{"web master owner=dir-a prio=150"}) {
			t.Fatalf("unexpected group state %v", before.groups[0])
		}
		hc.echo("after the bad arguments")
	})
}
