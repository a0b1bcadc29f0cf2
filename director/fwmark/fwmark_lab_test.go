//go:build lab

package fwmark

import (
	"context"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/lab/topo"
	"github.com/lvsd/lvsd/lab/vm"
)

// TestFWMServiceReceivesMarkedTraffic is the seed's third model on a real
// kernel: lvsd's rule marks ports 80 and 443 of the VIP with 8, an IPVS
// service "-f 8 -s rr -p" with two direct-routing real servers takes them,
// and one client's connections to both ports land on the same real server.
// Without the rule the same traffic never reaches IPVS.
func TestFWMServiceReceivesMarkedTraffic(t *testing.T) {
	if !vm.InVM() {
		t.Skip("needs the lab VM (IPVS): go run ./cmd/lvslab test ./director/fwmark")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const vip = "198.18.1.100"

	tp := topo.New(t)
	dir := tp.Host("dir", "198.18.0.1/24")
	client := tp.Host("client", "198.18.0.10/24")
	rs := []*topo.Host{tp.Host("rs1", "198.18.0.21/24"), tp.Host("rs2", "198.18.0.22/24")}
	dir.AddAddr("lo", vip+"/32")
	client.AddRoute(vip+"/32", "198.18.0.1")
	for _, h := range rs {
		h.AddLoopbackVIP(vip)
		h.ServeHTTP(":80")
		h.ServeHTTP(":443")
	}
	ipvsadm := func(args ...string) string {
		t.Helper()
		out, err := dir.Run(ctx, "ipvsadm", args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	ipvsadm("-A", "-f", "8", "-s", "rr", "-p")
	ipvsadm("-a", "-f", "8", "-r", "198.18.0.21", "-g")
	ipvsadm("-a", "-f", "8", "-r", "198.18.0.22", "-g")

	m := New(nil, WithNetNS(nsFD(t, dir)))
	mark := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{80, 443}, Destination: netip.MustParseAddr(vip)}
	if err := m.Apply(ctx, []Mark{mark}); err != nil {
		t.Fatal(err)
	}

	get := func(port int) (string, error) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		who, err := client.HTTPGet(rctx, "http://"+vip+":"+strconv.Itoa(port)+"/")
		return strings.TrimSpace(who), err
	}
	var first string
	for i, port := range []int{80, 443, 80, 443} {
		who, err := get(port)
		if err != nil {
			t.Fatalf("request %d to port %d: %v", i, port, err)
		}
		if who != "rs1" && who != "rs2" {
			t.Fatalf("port %d answered by %q", port, who)
		}
		if first == "" {
			first = who
		} else if who != first {
			t.Fatalf("port %d went to %s, an earlier request to %s: one client must stick to one real server across 80 and 443", port, who, first)
		}
	}

	// ipvsadm shows the seed's table, and the service counted the connections.
	out := ipvsadm("-Ln")
	if !regexp.MustCompile(`FWM\s+8 rr persistent 360`).MatchString(out) ||
		!regexp.MustCompile(`->\s+198\.18\.0\.21:0\s+Route\s+1`).MatchString(out) {
		t.Fatalf("ipvsadm -Ln:\n%s", out)
	}
	stats := ipvsadm("-Ln", "--stats")
	if m := regexp.MustCompile(`FWM\s+8\s+(\d+)`).FindStringSubmatch(stats); m == nil || m[1] == "0" {
		t.Fatalf("FWM 8 counted no connections:\n%s", stats)
	}

	// Without lvsd's rule the VIP is just a local address with no listener:
	// the mark is what sends the traffic to IPVS.
	if err := m.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if who, err := get(80); err == nil {
		t.Fatalf("port 80 still served by %q after the mark rule was removed", who)
	}
}
