//go:build lab

package e2e

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/lvsd/lvsd/lab/topo"
)

// seedLab is the seed's experiment mapped into 198.18.0.0/15: two clients,
// one director and two DR real servers holding the VIP on lo.
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
	out, err := l.dir.Run(context.Background(), "ipvsadm", append([]string{"-Ln"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// who asks the real server answering at VIP:port, on a new connection.
func who(t *testing.T, h *topo.Host, port string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	name, err := h.Identify(ctx, vip+":"+port)
	if err != nil {
		t.Fatalf("%s -> %s:%s: %v", h.Name(), vip, port, err)
	}
	return name
}

func mustMatch(t *testing.T, text string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(text) {
			t.Errorf("output does not match %q:\n%s", p, text)
		}
	}
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
	mustMatch(t, l.ipvsadm(t),
		`TCP\s+198\.18\.0\.100:0 rr persistent 500`,
		`->\s+198\.18\.0\.21:0\s+Route\s+1\s`,
		`->\s+198\.18\.0\.22:0\s+Route\s+1\s`)

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
}
