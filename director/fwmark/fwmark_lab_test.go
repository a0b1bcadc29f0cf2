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
// kernel: lvsd's rule marks ports 80 and 443 of the VIP's /28 with 8, an IPVS
// service "-f 8 -s rr -p" with two direct-routing real servers takes them,
// and one client's connections to both ports land on the same real server.
// An address just outside the /28, set up exactly like the VIP, is not
// marked; without the rule the VIP's traffic never reaches IPVS either.
func TestFWMServiceReceivesMarkedTraffic(t *testing.T) {
	if !vm.InVM() {
		t.Skip("needs the lab VM (IPVS): go run ./cmd/lvslab test ./director/fwmark")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const vip, outside = "198.18.1.100", "198.18.1.112" // in 198.18.1.96/28; first of the next /28

	tp := topo.New(t)
	dir := tp.Host("dir", "198.18.0.1/24")
	client := tp.Host("client", "198.18.0.10/24")
	rs := []*topo.Host{tp.Host("rs1", "198.18.0.21/24"), tp.Host("rs2", "198.18.0.22/24")}
	for _, a := range []string{vip, outside} {
		dir.AddAddr("lo", a+"/32")
		client.AddRoute(a+"/32", "198.18.0.1")
	}
	for _, h := range rs {
		h.AddLoopbackVIP(vip)
		h.AddLoopbackVIP(outside)
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
	mark := Mark{Mark: 8, Protocol: director.TCP, Ports: []uint16{80, 443}, Destination: netip.MustParsePrefix("198.18.1.96/28")}
	if err := m.Apply(ctx, []Mark{mark}); err != nil {
		t.Fatal(err)
	}

	getFrom := func(addr string, port int) (string, error) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		who, err := client.HTTPGet(rctx, "http://"+addr+":"+strconv.Itoa(port)+"/")
		return strings.TrimSpace(who), err
	}
	get := func(port int) (string, error) { return getFrom(vip, port) }
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
	// The kernel (6.1) folds its per-CPU counters into the totals ipvsadm
	// reads only on the 2s estimator tick: poll past one tick.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		stats := ipvsadm("-Ln", "--stats")
		if m := regexp.MustCompile(`FWM\s+8\s+(\d+)`).FindStringSubmatch(stats); m != nil && m[1] != "0" {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("FWM 8 counted no connections:\n%s", stats)
		}
	}

	// Outside the /28 the packets stay unmarked: the director's own stack,
	// with no listener, refuses them instead of IPVS sending them on.
	if who, err := getFrom(outside, 80); err == nil {
		t.Fatalf("%s:80, outside the marked /28, was served by %q", outside, who)
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
