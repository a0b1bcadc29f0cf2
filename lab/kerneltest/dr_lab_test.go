//go:build lab

package kerneltest

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"github.com/lvsd/lvsd/lab/topo"
)

// TestDRTrafficGoesThroughTheDirector proves the DR pitfalls are handled by
// topo's helpers: real servers hold the VIP on lo without answering ARP for
// it, so the client resolves the VIP to the director's MAC, the director
// forwards to a real server, and persistence keeps the client there.
func TestDRTrafficGoesThroughTheDirector(t *testing.T) {
	requireVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const vip = "198.18.0.100"
	tp := topo.New(t)
	client := tp.Host("client", "198.18.0.10/24")
	dir := tp.Host("dir", "198.18.0.1/24", vip+"/32")
	var rss []*topo.Host
	for i, addr := range []string{"198.18.0.21", "198.18.0.22"} {
		rs := tp.Host("rs"+string(rune('1'+i)), addr+"/24")
		rs.AddLoopbackVIP(vip)
		rs.ServeHTTP(":80")
		rss = append(rss, rs)
	}
	ih := handle(t, dir)
	svc := &ipvs.Service{
		AddressFamily: unix.AF_INET, Protocol: unix.IPPROTO_TCP, Address: net.ParseIP(vip).To4(), Port: 80,
		SchedName: "rr", Flags: flagPersistent, Timeout: 300, Netmask: netmaskV4(32),
	}
	if err := ih.NewService(svc); err != nil {
		t.Fatal(err)
	}
	for _, rs := range []string{"198.18.0.21", "198.18.0.22"} {
		d := &ipvs.Destination{Address: net.ParseIP(rs).To4(), Port: 80, Weight: 1,
			ConnectionFlags: ipvs.ConnectionFlagDirectRoute, AddressFamily: unix.AF_INET}
		if err := ih.NewDestination(svc, d); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for i := 0; i < 5; i++ {
		who, err := client.HTTPGet(ctx, "http://"+vip+"/")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		got = append(got, who)
	}
	for _, g := range got {
		if g != got[0] {
			t.Errorf("persistent DR service: client reached %v, want one real server", got)
			break
		}
	}
	mac, ok := client.Neighbor(vip)
	if !ok {
		t.Fatal("client has no neighbour entry for the VIP")
	}
	if want := dir.MAC(""); mac.String() != want.String() {
		for _, rs := range rss {
			if mac.String() == rs.MAC("").String() {
				t.Fatalf("client resolved the VIP to %s's MAC %s: the real server answered ARP, traffic skipped the director", rs.Name(), mac)
			}
		}
		t.Fatalf("client resolved the VIP to %s, want the director's %s", mac, want)
	}
	// The director saw the connections (DR: inbound only).
	out, err := dir.Run(ctx, "ipvsadm", "-Lnc")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Fields(out), "198.18.0.10:0") {
		t.Errorf("director has no persistence template for the client:\n%s", out)
	}
	t.Logf("client -> %v via director %s\n%s", got, mac, out)
}
